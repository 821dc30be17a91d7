"""Stage 3 of Diff-Prompt: generated deep prompts for a frozen VLM, and a light grounding head (paper sec. 3.3).

For an image and a referring expression the frozen VLM gives a pooled image feature and an expression feature;
the frozen DiT (EMA weights) samples a mask latent from them with DDIM and *keeps* the latents of chosen
intermediate steps (:func:`~.dit.ddim_sample`), one per prompted layer; the frozen Mask-VAE decodes each to a
mask. Per modality, a small conv adapter (:class:`MaskAdapter`, a shared trunk and one linear head per layer)
turns mask ``i`` into ``n_generated`` prompt tokens for layer ``i``; ``n_global`` learnable global tokens per
layer and tower follow them (:class:`GlobalPrompts`). The ``n_generated + n_global`` tokens are injected as
deep prompts into *both* towers of the VLM through the shared :mod:`~promptweave.prompt_modules.core.deep_prompts`
primitive: the prompt positions exist because :class:`PromptSlots` declares them, and its ``layer_fn`` writes the
per-sample tokens of layer ``i`` into them before block ``i`` runs (VPT-deep replacement, generalised to
per-sample prompts). The VLM stays frozen.

The grounding head (:class:`GroundingHead`, ours: the paper reads GLIP's own box head) runs on the prompted dense
features, the last visual block's patch tokens through ``ln_post`` and the projection (MaskCLIP-style), together
with the prompted expression feature: FiLM by the expression, a per-patch cosine map and two coordinate channels
go through two 3x3 convs to mask logits on the patch grid (upsampled to the mask size), and an attention-pooled
feature plus the soft centroid and spread of the mask predicts the box. Loss: BCE + Dice on the mask, L1 + GIoU on
the box (:func:`~.losses.grounding_loss`). Only the adapters, the global prompts and the head train.

:class:`StaticPromptGrounder` is the same head on static :class:`~..deep_prompts.DeepPrompts` (the CoOp and VPT
baselines) and :func:`zero_shot_ground` the training-free baseline (the best-matching crop by VLM similarity).
:func:`init_diff_prompt_from_bundle` starts the global prompts from RPP pretrained prompts (:mod:`..pretraining`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.artifacts import BackboneMismatchError
from ..core.deep_prompts import (
    DeepPromptConfig,
    DeepPrompts,
    LayerContext,
    default_layer_fn,
    encode_image_prompted,
    encode_text_prompted,
)
from ..core.distributed import SINGLE_PROCESS, DataParallel
from ..core.vlm import VisionLanguageModel
from ..pretraining.io import PretrainedPromptBundle, as_bundle, copy_prompt_tensors
from ..pretraining.model import layer_input_from_storage
from .config import DiTConfig, MaskVAEConfig, PromptConfig
from .dit import DiT, ddim_sample
from .losses import grounding_loss
from .mask_vae import MaskVAE


# ----- per-sample prompt tokens through the deep-prompt primitive --------------------------------------------
class PromptSlots:
    """Per-sample deep prompts for :func:`~..deep_prompts.encode_text_prompted` / ``encode_image_prompted``.

    ``text[i]`` ``[B, n, text_width]`` and ``visual[i]`` ``[B, n, vision_width]`` are the tokens of layer ``i``.
    The primitive inserts ``n`` placeholder positions (after the start / class token); :meth:`layer_fn`
    overwrites them with layer ``i``'s tokens right before block ``i`` for ``i < depth``; after that they flow.
    """

    def __init__(self, text: Sequence[torch.Tensor], visual: Sequence[torch.Tensor], keep_positions: bool = True):
        self.text, self.visual = list(text), list(visual)
        n_text = self.text[0].shape[1] if self.text else 0
        n_visual = self.visual[0].shape[1] if self.visual else 0
        self.config = DeepPromptConfig(
            n_text=n_text,
            n_visual=n_visual,
            text_depth=len(self.text),
            visual_depth=len(self.visual),
            keep_positions=keep_positions,
        )

    @property
    def n_text(self) -> int:
        return self.config.n_text if self.config.text_active else 0

    @property
    def n_visual(self) -> int:
        return self.config.n_visual if self.config.visual_active else 0

    def text_prompt(self, layer: int) -> torch.Tensor | None:
        if layer == 0 and self.n_text:
            return self.text[0].new_zeros(self.text[0].shape[1:])
        return None

    def visual_prompt(self, layer: int) -> torch.Tensor | None:
        if layer == 0 and self.n_visual:
            return self.visual[0].new_zeros(self.visual[0].shape[1:])
        return None

    def layer_fn(self, block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None, ctx: LayerContext):
        tokens = self.text if ctx.tower == "text" else self.visual
        if ctx.layer < len(tokens):
            s = ctx.prompt_slice
            x = torch.cat([x[:, : s.start], tokens[ctx.layer].to(x.dtype), x[:, s.stop :]], dim=1)
        return default_layer_fn(block, x, attn_mask, ctx)


def dense_image_features(vlm: VisionLanguageModel, images: torch.Tensor, prompts=None, layer_fn=None) -> torch.Tensor:
    """Prompted patch features ``[B, grid * grid, embed_dim]``: the last visual block's patch tokens through
    ``ln_post`` and the projection (prompts are dropped). ``prompts`` is ``None``, a DeepPrompts or PromptSlots."""
    inner = layer_fn or default_layer_fn
    last = len(vlm.visual.transformer.resblocks) - 1
    captured: dict[str, torch.Tensor] = {}

    def capture(block, x, mask, ctx):
        out = inner(block, x, mask, ctx)
        if ctx.tower == "visual" and ctx.layer == last:
            captured["x"] = out
        return out

    encode_image_prompted(vlm, images, prompts, normalize=False, layer_fn=capture)
    n = prompts.n_visual if prompts is not None else 0
    v = vlm.visual
    return v.ln_post(captured["x"][:, 1 + n :]) @ v.proj


# ----- trainable pieces -----------------------------------------------------------------------------------------
class MaskAdapter(nn.Module):
    """Conv adapter of one modality: mask ``i`` -> ``n`` prompt tokens of layer ``i`` (shared trunk, a linear head
    per layer)."""

    def __init__(self, *, channels: int, features: int, n_tokens: int, width: int, n_layers: int) -> None:
        super().__init__()
        c = channels
        self.n_tokens, self.width = n_tokens, width
        self.trunk = nn.Sequential(
            nn.Conv2d(1, c, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(2 * c * 16, features),
            nn.GELU(),
        )
        self.heads = nn.ModuleList(nn.Linear(features, n_tokens * width) for _ in range(n_layers))
        for head in self.heads:
            nn.init.normal_(head.weight, std=0.02 / features**0.5)
            nn.init.zeros_(head.bias)

    def forward(self, masks: torch.Tensor) -> list[torch.Tensor]:
        """``masks`` ``[K, B, 1, S, S]`` in 0..1 (the first ``K`` layers' masks) -> ``K`` tensors
        ``[B, n_tokens, width]``."""
        k, b = masks.shape[:2]
        feats = self.trunk(masks.reshape(k * b, *masks.shape[2:]) * 2.0 - 1.0).view(k, b, -1)
        return [self.heads[i](feats[i]).view(b, self.n_tokens, self.width) for i in range(k)]

    @torch.no_grad()
    def set_bias(self, layer: int, tokens: torch.Tensor) -> None:
        self.heads[layer].bias.copy_(tokens.reshape(-1).to(self.heads[layer].bias))


class GlobalPrompts(nn.Module):
    """``n`` learnable tokens per prompted layer of each tower (shared by all samples)."""

    def __init__(
        self,
        n: int,
        text_width: int,
        vision_width: int,
        text_depth: int,
        visual_depth: int,
        init_std: float = 0.02,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.n = n
        self.text = nn.ParameterList(
            nn.Parameter(torch.randn(n, text_width, generator=generator) * init_std)
            for _ in range(text_depth if n else 0)
        )
        self.visual = nn.ParameterList(
            nn.Parameter(torch.randn(n, vision_width, generator=generator) * init_std)
            for _ in range(visual_depth if n else 0)
        )


class GroundingHead(nn.Module):
    """Mask and box for an expression from prompted patch features (see the module docstring)."""

    def __init__(self, embed_dim: int, hidden: int) -> None:
        super().__init__()
        h = hidden
        self.patch = nn.Linear(embed_dim, h)
        self.text = nn.Linear(embed_dim, h)
        self.film = nn.Linear(embed_dim, 2 * h)
        self.conv = nn.Sequential(
            nn.Conv2d(2 * h + 3, h, 3, padding=1), nn.GELU(), nn.Conv2d(h, h, 3, padding=1), nn.GELU()
        )
        self.mask_out = nn.Conv2d(h, 1, 1)
        self.box = nn.Sequential(nn.Linear(2 * h + 4, h), nn.GELU(), nn.Linear(h, 4))
        self.sim_scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, patches: torch.Tensor, text: torch.Tensor, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``patches`` ``[B, G*G, E]``, ``text`` ``[B, E]`` -> mask logits ``[B, S, S]``, boxes ``[B, 4]``
        (normalised ``x0, y0, x1, y1`` in 0..1)."""
        b, n, _ = patches.shape
        g = int(round(n**0.5))
        if g * g != n:
            raise ValueError(f"{n} patch tokens do not form a square grid")
        p, t = self.patch(patches), self.text(text)
        gamma, beta = self.film(text).chunk(2, dim=-1)
        cos = (F.normalize(patches, dim=-1) * F.normalize(text, dim=-1).unsqueeze(1)).sum(-1, keepdim=True)
        coords = torch.linspace(-1.0, 1.0, g, device=patches.device)
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")
        pos = torch.stack([xx, yy], dim=-1).reshape(1, n, 2).expand(b, -1, -1)
        x = torch.cat(
            [p * (1 + gamma.unsqueeze(1)) + beta.unsqueeze(1), p * t.unsqueeze(1), cos * self.sim_scale, pos], dim=-1
        )
        x = self.conv(x.transpose(1, 2).reshape(b, -1, g, g))
        logits = self.mask_out(x)  # [B, 1, g, g]
        w = logits.flatten(1).softmax(dim=1)  # [B, n]
        feats = x.flatten(2)  # [B, h, n]
        pooled = (feats * w.unsqueeze(1)).sum(-1)
        unit = (pos[0] + 1.0) / 2.0  # patch centres in 0..1 (approximately)
        centre = w @ unit  # [B, 2]
        spread = (w @ unit.pow(2) - centre.pow(2)).clamp(min=1e-6).sqrt()
        out = self.box(torch.cat([pooled, t, centre, spread], dim=-1))
        cx = (centre[:, 0] + 0.5 * torch.tanh(out[:, 0])).clamp(0, 1)
        cy = (centre[:, 1] + 0.5 * torch.tanh(out[:, 1])).clamp(0, 1)
        bw, bh = torch.sigmoid(out[:, 2]), torch.sigmoid(out[:, 3])
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1).clamp(0, 1)
        mask = F.interpolate(logits, size=(out_size, out_size), mode="bilinear", align_corners=False)[:, 0]
        return mask, boxes


# ----- outputs --------------------------------------------------------------------------------------------------
@dataclass
class GroundingOutput:
    """``mask_logits`` ``[B, S, S]``; ``boxes`` ``[B, 4]`` normalised ``x0, y0, x1, y1``; for Diff-Prompt also the
    generated masks ``[K, B, 1, S, S]`` and the per-layer prompt tokens of each tower."""

    mask_logits: torch.Tensor
    boxes: torch.Tensor
    generated_masks: torch.Tensor | None = None
    text_tokens: list[torch.Tensor] | None = None
    visual_tokens: list[torch.Tensor] | None = None

    def masks_at(self, height: int, width: int, threshold: float = 0.5, within_box: bool = True) -> torch.Tensor:
        """Binary masks ``[B, height, width]`` (float 0/1, CPU): ``sigmoid(mask_logits)`` resized bilinearly to the
        image's size, then ``> threshold``; e.g. the ``mask_image`` of a diffusers inpainting pipeline.

        With ``within_box`` the mask is kept inside the predicted box (:meth:`box_masks_at`): the box head is the
        more accurate of the two on the world (val, 500 samples, full grounding recipe: box accuracy at IoU 0.5
        81.0%; mean mask IoU 0.499 unclipped, 0.527 clipped to the box), and clipping removes stray blobs on
        other objects."""
        prob = self.mask_logits.detach().float().cpu().sigmoid().unsqueeze(1)
        if tuple(prob.shape[-2:]) != (height, width):
            prob = F.interpolate(prob, size=(height, width), mode="bilinear", align_corners=False)
        mask = (prob[:, 0] > threshold).float()
        return mask * self.box_masks_at(height, width) if within_box else mask

    def box_masks_at(self, height: int, width: int) -> torch.Tensor:
        """The predicted boxes as filled masks ``[B, height, width]`` (float 0/1, CPU)."""
        ys = (torch.arange(height).float() + 0.5) / height
        xs = (torch.arange(width).float() + 0.5) / width
        b = self.boxes.detach().float().cpu()
        inside_y = (ys[None] >= b[:, 1:2]) & (ys[None] < b[:, 3:4])
        inside_x = (xs[None] >= b[:, 0:1]) & (xs[None] < b[:, 2:3])
        return (inside_y[:, :, None] & inside_x[:, None, :]).float()


def _check_batch(images: torch.Tensor, texts: Sequence[str]) -> list[str]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W] in 0..1, got {tuple(images.shape)}")
    if len(texts) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(texts)} referring expressions: give one per image")
    if any(not t.strip() for t in texts):
        raise ValueError("a referring expression is empty")
    return texts


def _square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (stretch) to ``size x size`` so that masks map back onto the whole image exactly."""
    if tuple(images.shape[-2:]) == (size, size):
        return images.float()
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)


# ----- the grounders --------------------------------------------------------------------------------------------
class DiffPrompt(nn.Module):
    """The whole Diff-Prompt model: frozen ``vae`` and ``dit`` (stages 1-2) plus the stage-3 prompt learner.

    Built for one VLM (``backbone``, widths and layer counts are checked by :meth:`check_vlm`). ``config`` is the
    prompt config with the depths resolved for that VLM (:meth:`~.config.PromptConfig.resolved`); a plan that
    does not fit it (depths, DDIM steps) raises :class:`~..core.artifacts.ConfigError` naming the field.
    """

    def __init__(
        self,
        vae_config: MaskVAEConfig,
        dit_config: DiTConfig,
        prompt_config: PromptConfig,
        *,
        backbone: str,
        text_width: int,
        vision_width: int,
        text_layers: int,
        vision_layers: int,
        embed_dim: int,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if dit_config.cond_dim != embed_dim:
            raise BackboneMismatchError(
                f"the DiT was trained on {dit_config.cond_dim}-d VLM features, the VLM has embed_dim {embed_dim}"
            )
        if (dit_config.latent_channels, dit_config.latent_size) != (vae_config.latent_channels, vae_config.latent_size):
            raise ValueError("the DiT's latent shape does not match the Mask-VAE's")
        self.vae = MaskVAE(vae_config).requires_grad_(False).eval()
        self.dit = DiT(dit_config).requires_grad_(False).eval()
        # the depths resolved for this VLM (automatic ones included), so that the bundle records them
        self.config = cfg = prompt_config.resolved(text_layers, vision_layers)
        self.backbone, self.embed_dim = backbone, embed_dim
        self.text_width, self.vision_width = text_width, vision_width
        self.text_layers, self.vision_layers = text_layers, vision_layers
        self.text_depth, self.visual_depth = cfg.text_depth, cfg.visual_depth
        self.n_kept = max(self.text_depth, self.visual_depth) if cfg.n_generated else 0
        self.keep_steps = cfg.resolved_keep_steps(self.n_kept)
        self.text_adapter = self.visual_adapter = None
        if cfg.n_generated and self.text_depth:
            self.text_adapter = MaskAdapter(
                channels=cfg.adapter_channels,
                features=cfg.adapter_features,
                n_tokens=cfg.n_generated,
                width=text_width,
                n_layers=self.text_depth,
            )
        if cfg.n_generated and self.visual_depth:
            self.visual_adapter = MaskAdapter(
                channels=cfg.adapter_channels,
                features=cfg.adapter_features,
                n_tokens=cfg.n_generated,
                width=vision_width,
                n_layers=self.visual_depth,
            )
        self.global_prompts = GlobalPrompts(
            cfg.n_global, text_width, vision_width, self.text_depth, self.visual_depth, cfg.init_std, generator
        )
        self.head = GroundingHead(embed_dim, cfg.head_hidden)

    @classmethod
    def for_vlm(
        cls, vlm: VisionLanguageModel, vae: MaskVAE, dit: DiT, config: PromptConfig | None = None, seed: int = 0
    ) -> DiffPrompt:
        """A stage-3 model around trained ``vae`` and ``dit`` (their weights are copied in)."""
        with torch.random.fork_rng(devices=[]):  # deterministic initialisation for a seed
            torch.manual_seed(seed)
            model = cls(
                vae.config,
                dit.config,
                config or PromptConfig(),
                backbone=vlm.name,
                text_width=vlm.token_width,
                vision_width=vlm.vision_width,
                text_layers=len(vlm.text_blocks),
                vision_layers=len(vlm.visual.transformer.resblocks),
                embed_dim=vlm.embed_dim,
                generator=torch.Generator().manual_seed(seed),
            )
        model.vae.load_state_dict(vae.state_dict())
        model.dit.load_state_dict(dit.state_dict())
        return model.to(vlm.device)

    # ----- bookkeeping --------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> DiffPrompt:
        super().train(mode)
        self.vae.eval()
        self.dit.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Adapters, global prompts and head (the VAE and the DiT stay frozen)."""
        mods = [m for m in (self.text_adapter, self.visual_adapter, self.global_prompts, self.head) if m is not None]
        return [p for m in mods for p in m.parameters()]

    def check_vlm(self, vlm: VisionLanguageModel) -> None:
        """Refuse a VLM other than the one the bundle was trained for."""
        mine = (self.backbone, self.text_width, self.vision_width, self.embed_dim)
        theirs = (vlm.name, vlm.token_width, vlm.vision_width, vlm.embed_dim)
        if mine != theirs:
            raise BackboneMismatchError(
                f"the Diff-Prompt bundle was trained for the VLM '{self.backbone}' (widths text {self.text_width}, "
                f"vision {self.vision_width}, embed {self.embed_dim}), not '{vlm.name}' (widths {theirs[1:]}): "
                "use the VLM it was trained with, or train a bundle for this one"
            )
        if len(vlm.text_blocks) < self.text_depth or len(vlm.visual.transformer.resblocks) < self.visual_depth:
            raise BackboneMismatchError(f"the VLM '{vlm.name}' has fewer layers than the bundle's prompt depth")

    @property
    def mask_size(self) -> int:
        return self.vae.config.mask_size

    # ----- stage-3 pieces -----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        vlm: VisionLanguageModel,
        images: torch.Tensor,
        texts: Sequence[str],
        *,
        generator: torch.Generator | None = None,
        steps: int | None = None,
        layers: int | None = None,
        parallel: DataParallel = SINGLE_PROCESS,
    ) -> torch.Tensor:
        """The generated intermediate masks ``[K, B, 1, S, S]`` (0..1), one per prompted layer (frozen path); with
        ``layers`` only the first ``layers`` of them, and DDIM stops at the last step they need. Under ``parallel``
        (training) the images are this rank's part of the batch and the starting noise its rows of the whole
        batch's draw."""
        images = _square(images, vlm.image_size)
        f_img = vlm.encode_image(images)
        f_txt = vlm.encode_text(list(texts))
        cfg = self.config
        steps = steps or cfg.ddim_steps
        if not self.n_kept:
            s = self.mask_size
            return f_img.new_zeros((0, images.shape[0], 1, s, s))
        keep = (
            self.keep_steps
            if steps == cfg.ddim_steps
            else dataclasses.replace(cfg, ddim_steps=steps, keep_steps=None).resolved_keep_steps(self.n_kept)
        )
        if layers is not None:
            keep = keep[:layers]
        noise = None
        if parallel.active:  # what ddim_sample draws for the whole batch, this rank's rows
            dit_cfg = self.dit.config
            shape = (images.shape[0], dit_cfg.latent_channels, dit_cfg.latent_size, dit_cfg.latent_size)
            noise = parallel.randn(shape, generator=generator)
        result = ddim_sample(self.dit, f_img, f_txt, steps=steps, keep=keep, kept=cfg.kept, generator=generator,
                             stop_when_kept=layers is not None, noise=noise)
        k, b = result.kept.shape[:2]
        latents = result.kept.reshape(k * b, *result.kept.shape[2:]) / self.dit.config.scaling_factor
        masks = self.vae.decode(latents)
        return masks.view(k, b, *masks.shape[1:])

    def prompt_tokens(self, masks: torch.Tensor, batch: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-layer prompt tokens ``[B, n_generated + n_global, width]`` of the text and the image tower."""
        out = []
        for adapter, globals_, depth in (
            (self.text_adapter, self.global_prompts.text, self.text_depth),
            (self.visual_adapter, self.global_prompts.visual, self.visual_depth),
        ):
            generated = adapter(masks[:depth]) if adapter is not None else [None] * depth
            layers = []
            for i in range(depth):
                parts = [] if generated[i] is None else [generated[i]]
                if len(globals_):
                    parts.append(globals_[i].unsqueeze(0).expand(batch, -1, -1))
                if parts:
                    layers.append(torch.cat(parts, dim=1))
            out.append(layers)
        return out[0], out[1]

    def forward(
        self,
        vlm: VisionLanguageModel,
        images: torch.Tensor,
        texts: Sequence[str],
        *,
        generator: torch.Generator | None = None,
        steps: int | None = None,
        parallel: DataParallel = SINGLE_PROCESS,
    ) -> GroundingOutput:
        """Ground ``texts[i]`` in ``images[i]`` (float ``[B, 3, H, W]`` in 0..1, resized to the VLM's square);
        ``parallel``: :meth:`generate`'s."""
        texts = _check_batch(images, texts)
        images = _square(images, vlm.image_size)
        masks = self.generate(vlm, images, texts, generator=generator, steps=steps, parallel=parallel)
        text_tokens, visual_tokens = self.prompt_tokens(masks, images.shape[0])
        slots = PromptSlots(text_tokens, visual_tokens, keep_positions=self.config.keep_positions)
        patches = dense_image_features(vlm, images, slots, layer_fn=slots.layer_fn)
        text = encode_text_prompted(vlm, texts, slots, normalize=False, layer_fn=slots.layer_fn)
        mask_logits, boxes = self.head(patches, text, self.mask_size)
        return GroundingOutput(mask_logits, boxes, masks, text_tokens, visual_tokens)

    def loss(self, out: GroundingOutput, masks: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return grounding_loss(
            out, masks, boxes, mask_weight=self.config.mask_loss_weight, box_weight=self.config.box_loss_weight
        )

    @torch.no_grad()
    def text_prompt_token_ids(
        self,
        vlm: VisionLanguageModel,
        images: torch.Tensor,
        texts: Sequence[str],
        *,
        generator: torch.Generator | None = None,
        steps: int | None = None,
    ) -> torch.Tensor:
        """The generated + global *input-layer* text prompt tokens of each sample read as their nearest
        vocabulary tokens (cosine, in the VLM's token embedding; never start/end of text): ids ``[B, n]``.

        This is what can reach a Stable Diffusion text encoder (its own embeddings of these ids, a hard prompt as
        in PEZ): the VLM's token space is not CLIP-L's, and deeper-layer and image prompts do not transfer.
        """
        texts = _check_batch(images, texts)
        images = _square(images, vlm.image_size)
        batch = images.shape[0]
        if not self.text_depth:
            return torch.zeros(batch, 0, dtype=torch.long)
        # only the input layer's tokens are read: its mask (the first kept DDIM step; the rest is never sampled),
        # its adapter head and its global prompts
        parts = []
        if self.text_adapter is not None:
            masks = self.generate(vlm, images, texts, generator=generator, steps=steps, layers=1)
            parts.extend(self.text_adapter(masks))  # one tensor: the input layer's generated tokens
        if len(self.global_prompts.text):
            parts.append(self.global_prompts.text[0].unsqueeze(0).expand(batch, -1, -1))
        if not parts:
            return torch.zeros(batch, 0, dtype=torch.long)
        sims = F.normalize(torch.cat(parts, dim=1).float(), dim=-1) @ self._unit_token_table(vlm).T
        sims[..., [49406, 49407]] = -2.0
        return sims.argmax(dim=-1).cpu()

    def _unit_token_table(self, vlm: VisionLanguageModel) -> torch.Tensor:
        """The VLM's token embeddings at unit length, computed once per table (49,408 rows: a few ms each time)."""
        weight = vlm.token_embedding.weight
        key = (weight.data_ptr(), weight._version, tuple(weight.shape), weight.device)
        if getattr(self, "_token_table_key", None) != key:
            self._token_table = F.normalize(weight.detach().float(), dim=-1)
            self._token_table_key = key
        return self._token_table

    @torch.no_grad()
    def init_from_vlm(
        self,
        vlm: VisionLanguageModel,
        texts: Sequence[str],
        images: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> None:
        """Start close to the unprompted model: global prompts and the adapters' per-layer biases become the mean
        hidden states the prompt positions have without replacement (measured with
        :meth:`~..deep_prompts.DeepPrompts.init_from_vlm`); visual layer 0 starts as class-token copies."""
        cfg = self.config
        n = cfg.n_tokens
        if not n:
            return
        probe = DeepPrompts.for_vlm(
            vlm,
            DeepPromptConfig(
                n_text=n,
                n_visual=n,
                text_depth=self.text_depth,
                visual_depth=self.visual_depth,
                keep_positions=cfg.keep_positions,
                init_std=cfg.init_std,
            ),
            generator=generator,
        )
        probe.init_from_vlm(vlm, texts=list(texts), images=_square(images, vlm.image_size), generator=generator)
        for tower, depth, adapter, globals_ in (
            ("text", self.text_depth, self.text_adapter, self.global_prompts.text),
            ("visual", self.visual_depth, self.visual_adapter, self.global_prompts.visual),
        ):
            for i in range(depth):
                target = (probe.text_prompt(i) if tower == "text" else probe.visual_prompt(i)).detach()
                if adapter is not None:
                    adapter.set_bias(i, target[: cfg.n_generated])
                if len(globals_):
                    globals_[i].copy_(target[cfg.n_generated :])


@torch.no_grad()
def init_diff_prompt_from_bundle(
    model: DiffPrompt, bundle: PretrainedPromptBundle | str | os.PathLike[str], vlm: VisionLanguageModel
) -> dict[str, int]:
    """Initialise a Diff-Prompt model's learnable global prompts from an RPP pretrained prompt bundle (what
    ``PromptConfig(init_from=path)`` does in :func:`~.train.train_prompts`): layer ``i``'s global tokens of each
    tower start as the bundle's shared-token equivalents of layer ``i``, as the block sees them
    (:func:`~..pretraining.model.layer_input_from_storage`); overlapping tokens and layers only. The generated
    tokens come from the mask adapters and keep their own initialisation. Returns the number of layers copied per
    tower."""
    bundle = as_bundle(bundle, vlm)
    if bundle.backbone != model.backbone or vlm.name != model.backbone:
        raise BackboneMismatchError(
            f"the pretrained prompts were made for the VLM '{bundle.backbone}', the Diff-Prompt model is for "
            f"'{model.backbone}' (VLM given: '{vlm.name}'): pretrain prompts on this model"
        )
    if model.config.n_global == 0:
        raise ValueError(
            "the Diff-Prompt model has no global prompts (n_global=0), so there is nothing to start from the "
            "pretrained prompts: use n_global > 0 or leave init_from empty"
        )
    done = {}
    for tower, targets in (("text", model.global_prompts.text), ("visual", model.global_prompts.visual)):
        stored = getattr(bundle.layer_tokens, tower)
        sources = [layer_input_from_storage(vlm, tower, i, t) for i, t in enumerate(stored)]
        done[tower] = copy_prompt_tensors(list(targets), sources, f"{tower} global prompt")
    return done


class StaticPromptGrounder(nn.Module):
    """The baselines' grounder: the same head on static deep prompts (``None`` config: no prompts at all).

    CoOp: text context tokens only (``n_visual = 0``, depth 1); VPT: deep static prompts in both towers.
    """

    def __init__(
        self,
        vlm: VisionLanguageModel,
        prompt_config: DeepPromptConfig | None,
        head_hidden: int = 64,
        mask_size: int = 64,
        seed: int = 0,
        init_images: torch.Tensor | None = None,
        init_texts: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.mask_size = mask_size
        self.prompts = None
        if prompt_config is not None:
            self.prompts = DeepPrompts.for_vlm(vlm, prompt_config, generator=generator).to(vlm.device)
            if init_images is not None:
                self.prompts.init_from_vlm(
                    vlm,
                    texts=list(init_texts or []) or None,
                    images=_square(init_images, vlm.image_size),
                    generator=generator,
                )
        with torch.random.fork_rng(devices=[]):  # deterministic initialisation for a seed
            torch.manual_seed(seed)
            self.head = GroundingHead(vlm.embed_dim, head_hidden).to(vlm.device)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def forward(self, vlm: VisionLanguageModel, images: torch.Tensor, texts: Sequence[str], **_: object):
        texts = _check_batch(images, texts)
        images = _square(images, vlm.image_size)
        patches = dense_image_features(vlm, images, self.prompts)
        text = encode_text_prompted(vlm, texts, self.prompts, normalize=False)
        mask_logits, boxes = self.head(patches, text, self.mask_size)
        return GroundingOutput(mask_logits, boxes)

    def loss(self, out: GroundingOutput, masks: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return grounding_loss(out, masks, boxes)


@torch.no_grad()
def candidate_boxes(grid: int, sizes: Sequence[int] = (2, 3, 4, 5)) -> torch.Tensor:
    """Sliding windows on a ``grid x grid`` patch layout, normalised ``x0, y0, x1, y1`` ``[N, 4]``."""
    boxes = [
        (x / grid, y / grid, (x + s) / grid, (y + s) / grid)
        for s in sizes
        if s <= grid
        for y in range(grid - s + 1)
        for x in range(grid - s + 1)
    ]
    return torch.tensor(boxes)


@torch.no_grad()
def zero_shot_ground(
    vlm: VisionLanguageModel,
    images: torch.Tensor,
    texts: Sequence[str],
    mask_size: int = 64,
    sizes: Sequence[int] = (2, 3, 4, 5),
    chunk: int = 256,
) -> GroundingOutput:
    """Training-free baseline: the sliding-window crop whose VLM image feature best matches the expression
    (ReCLIP-style "crop and score"); its box is the prediction and the filled box the mask."""
    texts = _check_batch(images, texts)
    images = _square(images, vlm.image_size)
    size = images.shape[-1]
    grid = size // vlm.config.patch_size
    cands = candidate_boxes(grid, sizes)
    text = vlm.encode_text(texts)  # [B, E]
    best = []
    for b in range(images.shape[0]):
        crops = []
        for x0, y0, x1, y1 in (cands * size).round().long().tolist():
            crop = images[b : b + 1, :, y0:y1, x0:x1]
            crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False))
        crops = torch.cat(crops)
        feats = torch.cat([vlm.encode_image(crops[i : i + chunk]) for i in range(0, len(crops), chunk)])
        best.append(int((feats @ text[b]).argmax()))
    boxes = cands[best].to(images.device)
    coords = (torch.arange(mask_size, device=images.device).float() + 0.5) / mask_size
    inside_x = (coords[None] >= boxes[:, 0:1]) & (coords[None] < boxes[:, 2:3])
    inside_y = (coords[None] >= boxes[:, 1:2]) & (coords[None] < boxes[:, 3:4])
    mask = (inside_y[:, :, None] & inside_x[:, None, :]).float()
    return GroundingOutput(mask * 20.0 - 10.0, boxes)
