"""Fine-tuning the generator's U-Net on prompt inversion, then reusing it for text-to-image (Croitoru et al. 2023).

The paper's second finding: the white-box inverter's U-Net encoder, fine-tuned on the inversion task and put
back into the diffusion model, generates images that follow their prompts better. Here for WorldGen: the
encoder half of its denoiser (:func:`~promptweave.prompt_modules.inversion.model.worldgen_features` on the latent
code at t=0, empty-caption context, as the white-box nodes use it) and a
:class:`~promptweave.prompt_modules.inversion.PromptInverter` head are trained together on the
inversion loss (cosine + ``vocab_weight`` BCE + Huber, eq. of sec. 3). The encoder half is shared with the
denoising path, and the paper does not say how the decoder half is kept matched to the changed encoder, so the
standard denoising loss on the same pairs is kept alongside (``denoise_weight``; with ``inversion_weight=0``
the same loop is the control: as much extra denoising training and no inversion task).

It fine-tunes WorldGen, a world backbone, so it lives with the world (methods never import the world);
``python -m promptweave.bench inversion_unet`` measures it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..inversion.losses import inversion_loss
from ..inversion.model import PromptInverter, worldgen_features
from .gen_training import diffusion_loss


@dataclass
class UNetFinetuneConfig:
    """Steps, batch and AdamW rate of the joint fine-tuning (the paper's optimiser: AdamW 1e-4)."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-4
    inversion_weight: float = 1.0
    denoise_weight: float = 1.0
    vocab_weight: float = 0.1
    cond_drop: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError("steps must be >= 1 and batch_size >= 2 (the head's BatchNorm)")
        if self.inversion_weight < 0 or self.denoise_weight < 0 or self.inversion_weight + self.denoise_weight == 0:
            raise ValueError("inversion_weight and denoise_weight must be >= 0 and not both 0")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def finetune_worldgen_unet(
    gen: nn.Module,
    vlm,
    latents: torch.Tensor,
    context: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor,
    head: PromptInverter,
    config: UNetFinetuneConfig | None = None,
) -> tuple[nn.Module, PromptInverter, list[float]]:
    """``(copy of gen with the fine-tuned U-Net, fine-tuned copy of head, losses)``; ``gen`` and ``head`` are
    left as they are; sample from the returned generator as from ``gen``.

    ``latents`` ``[N, C, h, w]`` are the images' latent codes (``gen.encode``), ``context`` ``[N, L, W]`` their
    captions' token features (``gen.text_context``, the denoising loss's conditioning), ``targets`` ``[N, 384]``
    and ``labels`` ``[N, V]`` the prompts' MiniLM embeddings and vocabulary labels; ``head`` a white-box inverter
    trained on the frozen features (its ``feature_dim`` must match).
    """
    config = config or UNetFinetuneConfig()
    n = latents.shape[0]
    if not n == context.shape[0] == targets.shape[0] == labels.shape[0]:
        raise ValueError(
            f"{n} latents, {context.shape[0]} contexts, {targets.shape[0]} targets and {labels.shape[0]} label rows"
        )
    if n < config.batch_size:
        raise ValueError(f"{n} pairs are fewer than one batch of {config.batch_size}")
    tuned = copy.deepcopy(gen)
    tuned.autoencoder.requires_grad_(False)
    unet, head = tuned.unet.train().requires_grad_(True), copy.deepcopy(head).train().requires_grad_(True)
    optimizer = torch.optim.AdamW([*unet.parameters(), *head.parameters()], lr=config.lr, weight_decay=0.0)
    null = gen.null_context(vlm).float()
    steps_t = gen.config.num_train_timesteps
    g = torch.Generator().manual_seed(config.seed)
    losses: list[float] = []
    with torch.inference_mode(False), torch.enable_grad():
        for _ in range(config.steps):
            idx = torch.randint(0, n, (config.batch_size,), generator=g)
            z = latents[idx].float()
            loss = torch.zeros(())
            if config.inversion_weight > 0:
                features = worldgen_features(unet, z, null.expand(len(idx), -1, -1))
                emb, logits = head(features)
                inv, _ = inversion_loss(emb, targets[idx], logits, labels[idx], vocab_weight=config.vocab_weight)
                loss = loss + config.inversion_weight * inv
            if config.denoise_weight > 0:
                t = torch.randint(0, steps_t, (len(idx),), generator=g)
                noise = torch.randn(z.shape, generator=g)
                drop = torch.rand(len(idx), generator=g) < config.cond_drop
                ctx = torch.where(drop[:, None, None], null.to(context.dtype), context[idx]).float()
                loss = loss + config.denoise_weight * diffusion_loss(tuned, z, ctx, t, noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
    unet.eval().requires_grad_(False)
    return tuned.eval(), head.eval().requires_grad_(False), losses
