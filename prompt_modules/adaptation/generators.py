"""Pluggable generators for IPL adaptation: what is adapted (LoRA targets), what the mapper reads, how to draw.

A generator maps a per-image *code* to an image in 0..1 and exposes:

* ``sample_codes(n, seed)``: a batch of codes (deterministic for ``seed``);
* ``latent_code(codes)``: ``[B, latent_dim]``, the vector the latent mapper reads (IPL's ``w``);
* ``generate(codes)``: images ``[B, 3, H, W]`` in 0..1 through the generator *with its LoRA adapters as they
  currently are* (the trainer switches them off for the frozen source generator ``G_s`` and on for ``G_t``);
* ``lora_root`` / ``lora_targets``: the module PEFT injects into and the names of the layers it adapts;
* ``name``: a fingerprint of the base weights of those layers (stored in every exported LoRA).

Two generators ship:

:class:`WorldGenGenerator` -- the paper's StyleGAN-like setting: WorldGen's autoencoder *decoder* (latent -> image)
is the generator, its every ``Conv2d`` gets a LoRA, and the code is the normalised latent itself (``[4, 8, 8]``
-> 256 numbers), drawn from a pool of latents that WorldGen's denoiser sampled from source-domain captions
(:func:`sample_worldgen_latents`) or that its encoder made from source-domain images
(:func:`encode_worldgen_latents`).

:class:`StableDiffusionGenerator` -- the diffusion port of methods.md sec. 2: the code is the **starting noise**
``x_T`` (``[4, H/8, W/8]``). Our choice, documented here: with a deterministic DDIM sampler (eta = 0) and a
fixed prompt, the image is a function of ``x_T`` alone, exactly as a StyleGAN image is a function of its
latent, so ``x_T`` is the per-image latent code the mapper should read. The mapper reads it average-pooled to
``code_grid x code_grid`` (rescaled to unit variance; identity for 64 px images) so that its width does not
grow with the resolution. Images come from ``sample_steps`` DDIM steps ("trailing" spacing, SD's
``scaled_linear`` schedule, optional classifier-free guidance) conditioned on the source text, decoded by the
VAE decoder; gradients flow through every step. The LoRA sits on the U-Net's attention projections
(``attn1``/``attn2`` ``to_q``, ``to_k``, ``to_v``, ``to_out.0``). The U-Net call and the decoder are passed in,
so the same class serves a diffusers ``UNet2DConditionModel`` (:func:`sd_generator_from_diffusers`) and
ComfyUI's LDM ``UNetModel`` (the node layer). SDXL's extra conditioning (its pooled text embedding and size ids)
travels as ``added_cond``: tensors with a batch axis of 1 that every U-Net call receives, expanded to the batch,
as keyword arguments (diffusers' ``added_cond_kwargs``, ComfyUI's ``y``).
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.distributed import SINGLE_PROCESS, DataParallel

#: LoRA targets of an SD U-Net: self- and cross-attention projections (diffusers and LDM names agree here).
SD_ATTENTION_PATTERN = re.compile(r"(^|\.)attn[12]\.(to_q|to_k|to_v|to_out\.0)$")


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with ordinary (non-inference) tensors and ``requires_grad=False`` everywhere.

    ComfyUI builds its models inside ``torch.inference_mode()``; autograd cannot save such tensors for the
    backward pass, so every weight a gradient flows *through* must be cloned outside inference mode.
    """
    with torch.inference_mode(False):
        clone = copy.deepcopy(module)
        for p in clone.parameters():
            p.data = p.data.clone()
            p.requires_grad_(False)
        for name, buf in list(clone.named_buffers()):
            owner = clone.get_submodule(name.rsplit(".", 1)[0]) if "." in name else clone
            setattr(owner, name.rsplit(".", 1)[-1], buf.clone())
    return clone.eval()


def weights_fingerprint(root: nn.Module, names: Sequence[str], length: int = 16) -> str:
    """sha256 of the (fp16-rounded) base weights of the named layers, their names and shapes (hex prefix)."""
    digest = hashlib.sha256()
    for name in sorted(names):
        module = root.get_submodule(name)
        module = getattr(module, "base_layer", module)  # a PEFT wrapper: hash the frozen base layer
        weight = module.weight.detach()
        digest.update(name.encode())
        digest.update(str(tuple(weight.shape)).encode())
        digest.update(weight.to("cpu", torch.float16).contiguous().numpy().tobytes())
    return digest.hexdigest()[:length]


def _seeded_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) % (2**63))


class AdaptableGenerator:
    """Interface of a generator the IPL trainer can adapt (see the module docstring)."""

    lora_root: nn.Module
    lora_targets: list[str]
    latent_dim: int
    kind: str = "generator"

    @property
    def name(self) -> str:
        return f"{self.kind}:{weights_fingerprint(self.lora_root, self.lora_targets)}"

    def sample_codes(self, n: int, seed: int) -> torch.Tensor:
        raise NotImplementedError

    def latent_code(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def generate(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.lora_root.parameters()).device


# ----- WorldGen ---------------------------------------------------------------------------------------------
class WorldGenGenerator(AdaptableGenerator):
    """WorldGen's decoder (latent -> image) as the adapted generator; codes are normalised latents.

    ``pool``: source-domain latents ``[N, C, h, w]`` to draw codes from (sampled or encoded, see the module
    docstring); without a pool, codes are standard Gaussian latents. The decoder is copied, so adapting never
    changes ``gen`` itself.
    """

    kind = "worldgen-decoder"

    def __init__(self, gen: Any, pool: torch.Tensor | None = None) -> None:
        self.config = gen.config
        self.lora_root = frozen_copy(gen.autoencoder.decoder)
        self.lora_targets = [n for n, m in self.lora_root.named_modules() if isinstance(m, nn.Conv2d)]
        self.latent_shape = tuple(gen.config.latent_shape)
        self.latent_dim = int(torch.Size(self.latent_shape).numel())
        if pool is not None and tuple(pool.shape[1:]) != self.latent_shape:
            raise ValueError(
                f"latent pool must be [N, {', '.join(map(str, self.latent_shape))}], got {tuple(pool.shape)}"
            )
        self.pool = None if pool is None else pool.detach().float().cpu()
        self._name: str | None = None

    @property
    def name(self) -> str:
        if self._name is None:  # the base weights never change: hash once
            self._name = f"{self.kind}:{self.config.name}:{weights_fingerprint(self.lora_root, self.lora_targets)}"
        return self._name

    def sample_codes(self, n: int, seed: int) -> torch.Tensor:
        gen = _seeded_generator(seed)
        if self.pool is None:
            return torch.randn((n, *self.latent_shape), generator=gen)
        index = torch.randint(0, self.pool.shape[0], (n,), generator=gen)
        return self.pool[index].clone()

    def latent_code(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.flatten(1).float()

    def generate(self, codes: torch.Tensor) -> torch.Tensor:
        z = codes.to(self.device, torch.float32) / self.config.latent_scale + self.config.latent_shift
        return ((self.lora_root(z) + 1.0) * 0.5).clamp(0.0, 1.0)


@torch.no_grad()
def sample_worldgen_latents(
    gen: Any,
    vlm: Any,
    captions: Sequence[str],
    *,
    steps: int = 20,
    guidance: float = 3.0,
    seed: int = 0,
    batch_size: int = 64,
    parallel: DataParallel = SINGLE_PROCESS,
) -> torch.Tensor:
    """Latents WorldGen's denoiser samples for ``captions`` (DDIM; batch ``k`` uses seed ``seed + k``). Under
    ``parallel`` each rank samples its shard of the batches and every rank gets all the latents (the same as one
    process samples)."""
    out = []
    null = gen.null_context(vlm) if guidance != 1.0 else None
    batches = list(enumerate(range(0, len(captions), batch_size)))
    for k, start in batches[parallel.shard(len(batches))]:
        context = gen.text_context(list(captions[start : start + batch_size]), vlm)
        out.append(gen.sample_latents(context, null, steps=steps, guidance=guidance, seed=seed + k).cpu())
    return parallel.gather_shards(torch.cat(out) if out else None)


@torch.no_grad()
def encode_worldgen_latents(gen: Any, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Normalised latents of images ``[B, 3, H, W]`` in 0..1 (WorldGen's encoder, posterior mean)."""
    return torch.cat([gen.encode(images[i : i + batch_size]).cpu() for i in range(0, len(images), batch_size)])


# ----- Stable Diffusion -------------------------------------------------------------------------------------
def sd_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012):
    """SD1.x/SDXL's ``scaled_linear`` schedule: ``alpha_bar_t`` for t = 0..T-1."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def trailing_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """``steps`` DDIM timesteps, high to low, "trailing" spacing (the first step starts at T-1)."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"sample_steps must be in 1..{num_train_timesteps}, got {steps}")
    ratio = num_train_timesteps / steps
    return [int(round(num_train_timesteps - 1 - i * ratio)) for i in range(steps)]


UNetCall = Callable[..., torch.Tensor]  # (unet, x, t, context, **added_cond) -> prediction
#: What an SD U-Net predicts: the noise (SD1.x, SD2.x base) or v (SD2.x 768-v).
PREDICTION_TYPES = ("epsilon", "v_prediction")
DecodeCall = Callable[[nn.Module, torch.Tensor], torch.Tensor]


class StableDiffusionGenerator(AdaptableGenerator):
    """An SD-shaped latent diffusion model as an adaptable generator (see the module docstring).

    ``unet`` is called as ``unet_call(unet, x, t, context)`` -> its prediction (``t`` a float tensor ``[B]``): the
    noise for ``prediction_type="epsilon"`` (SD1.x, SD2.x base), ``v = sqrt(a) eps - sqrt(1 - a) x0`` for
    ``"v_prediction"`` (SD2.x 768-v; Salimans & Ho 2022, eq. 9). The U-Net keeps its own dtype (fp16 / bf16 models
    stay half precision): latents and context are cast to it for each call and the prediction back to fp32; the
    LoRA that PEFT injects is kept in fp32 (:class:`~.model.LoRAAdapter`).
    ``decoder`` as ``decode_call(decoder, x0)`` -> images in 0..1 from model-space latents (``x0`` as the U-Net
    sees it, i.e. already multiplied by the VAE scale factor). ``context`` is the source-text conditioning
    ``[1, L, D]``; ``null_context`` (optional) the unconditional one for guidance ``guidance``. Both modules are
    copied (frozen, ordinary tensors) unless ``copy_modules=False``.
    """

    kind = "sd-unet"

    def __init__(
        self,
        unet: nn.Module,
        unet_call: UNetCall,
        decoder: nn.Module,
        decode_call: DecodeCall,
        context: torch.Tensor,
        *,
        latent_size: tuple[int, int] = (8, 8),
        latent_channels: int = 4,
        sample_steps: int = 2,
        guidance: float = 1.0,
        null_context: torch.Tensor | None = None,
        code_grid: int = 8,
        naming: str = "diffusers",
        num_res_blocks: Sequence[int] | None = None,
        alphas_cumprod: torch.Tensor | None = None,
        copy_modules: bool = True,
        target_pattern: re.Pattern[str] = SD_ATTENTION_PATTERN,
        label: str = "sd",
        prediction_type: str = "epsilon",
        added_cond: Mapping[str, torch.Tensor] | None = None,
        null_added_cond: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if naming not in ("diffusers", "ldm"):
            raise ValueError("naming must be 'diffusers' (diffusers UNet2DConditionModel) or 'ldm' (ComfyUI UNet)")
        if naming == "ldm" and num_res_blocks is None:
            raise ValueError("an LDM-named U-Net needs num_res_blocks (per level) to export diffusers names")
        self.lora_root = frozen_copy(unet) if copy_modules else unet
        self.decoder = frozen_copy(decoder) if copy_modules else decoder
        self.unet_call, self.decode_call = unet_call, decode_call
        with torch.inference_mode(False):
            self.context = context.detach().clone().float()
            self.null_context = None if null_context is None else null_context.detach().clone().float()
        self.latent_size = (int(latent_size[0]), int(latent_size[1]))
        self.latent_channels = int(latent_channels)
        self.sample_steps, self.guidance, self.code_grid = int(sample_steps), float(guidance), int(code_grid)
        self.timesteps = trailing_timesteps(1000, self.sample_steps)
        self.alphas_cumprod = (sd_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod.float()).clone()
        self.naming, self.num_res_blocks, self.label = naming, (list(num_res_blocks or [])), label
        self.prediction_type = prediction_type
        with torch.inference_mode(False):
            self.added_cond = {k: v.detach().clone() for k, v in (added_cond or {}).items()}
            self.null_added_cond = {k: v.detach().clone() for k, v in (null_added_cond or self.added_cond).items()}
        weights = [p for p in self.lora_root.parameters() if p.is_floating_point()]
        self.unet_dtype = weights[0].dtype if weights else torch.float32
        self.lora_targets = [
            n for n, m in self.lora_root.named_modules() if target_pattern.search(n) and isinstance(m, nn.Linear)
        ]
        if not self.lora_targets:
            raise ValueError("no attention projections (attn1/attn2 to_q/to_k/to_v/to_out.0) found in the U-Net")
        grid = min(self.code_grid, *self.latent_size)
        self.code_grid = grid
        self.latent_dim = self.latent_channels * grid * grid
        self._name: str | None = None

    @property
    def name(self) -> str:
        if self._name is None:
            self._name = f"{self.kind}:{self.label}:{weights_fingerprint(self.lora_root, self.lora_targets)}"
        return self._name

    def sample_codes(self, n: int, seed: int) -> torch.Tensor:
        return torch.randn((n, self.latent_channels, *self.latent_size), generator=_seeded_generator(seed))

    def latent_code(self, codes: torch.Tensor) -> torch.Tensor:
        h, w = codes.shape[-2:]
        pooled = F.adaptive_avg_pool2d(codes.float(), self.code_grid)
        gain = ((h * w) / (self.code_grid * self.code_grid)) ** 0.5  # back to unit variance
        return (pooled * gain).flatten(1)

    def _predict(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """The U-Net's (guided) prediction at ``x``, ``t``, called in its own dtype, returned in fp32."""
        b, dtype = x.shape[0], self.unet_dtype
        ts = torch.full((b,), float(t), device=x.device)
        context = self.context.to(x.device, dtype).expand(b, -1, -1)

        def added(cond: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v.to(x.device, dtype).expand(b, *v.shape[1:]) for k, v in cond.items()}

        if self.null_context is None or self.guidance == 1.0:
            return self.unet_call(self.lora_root, x.to(dtype), ts, context, **added(self.added_cond)).float()
        null = self.null_context.to(x.device, dtype).expand(b, -1, -1)
        both = torch.cat([x, x]).to(dtype)
        cond = added(self.added_cond)
        extra = {k: torch.cat([v, cond[k]]) for k, v in added(self.null_added_cond).items()}
        pred = self.unet_call(self.lora_root, both, torch.cat([ts, ts]), torch.cat([null, context]), **extra).float()
        pred_u, pred_c = pred.chunk(2)
        return pred_u + self.guidance * (pred_c - pred_u)

    def sample_latents(self, codes: torch.Tensor) -> torch.Tensor:
        """Deterministic DDIM (eta = 0) from the starting noise ``codes`` to model-space ``x0`` (Song et al. 2021,
        eq. 12), reading the U-Net's output as noise or as v (``x0 = sqrt(a) x - sqrt(1 - a) v``,
        ``eps = sqrt(a) v + sqrt(1 - a) x``) by ``prediction_type``."""
        x = codes.to(self.device, torch.float32)
        ac = self.alphas_cumprod.to(x.device)
        for i, t in enumerate(self.timesteps):
            pred = self._predict(x, t)
            a_t = ac[t]
            a_prev = ac[self.timesteps[i + 1]] if i + 1 < len(self.timesteps) else torch.ones((), device=x.device)
            if self.prediction_type == "v_prediction":
                x0 = a_t.sqrt() * x - (1.0 - a_t).sqrt() * pred
                eps = a_t.sqrt() * pred + (1.0 - a_t).sqrt() * x
            else:
                eps = pred
                x0 = (x - (1.0 - a_t).sqrt() * eps) / a_t.sqrt()
            x = a_prev.sqrt() * x0 + (1.0 - a_prev).sqrt() * eps
        return x

    def generate(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decode_call(self.decoder, self.sample_latents(codes)).float().clamp(0.0, 1.0)


def sd_generator_from_diffusers(
    unet: nn.Module, vae: nn.Module, context: torch.Tensor, *, image_size: int = 64, **kwargs: Any
) -> StableDiffusionGenerator:
    """A :class:`StableDiffusionGenerator` over a diffusers ``UNet2DConditionModel`` and ``AutoencoderKL`` (any
    dtype; pass ``prediction_type`` and ``alphas_cumprod`` from the pipeline's scheduler, and for SDXL
    ``added_cond={"text_embeds": pooled, "time_ids": ids}``, the U-Net's ``added_cond_kwargs``)."""
    scale = float(getattr(getattr(vae, "config", None), "scaling_factor", 0.18215))

    def unet_call(m: nn.Module, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, **added: torch.Tensor):
        return m(x, t, encoder_hidden_states=c, added_cond_kwargs=added or None).sample

    def decode_call(m: nn.Module, x0: torch.Tensor) -> torch.Tensor:
        return (m.decode((x0 / scale).to(m.dtype)).sample.float() + 1.0) * 0.5

    side = image_size // 8
    channels = int(getattr(getattr(unet, "config", None), "in_channels", 4))
    return StableDiffusionGenerator(
        unet,
        unet_call,
        vae,
        decode_call,
        context,
        latent_size=(side, side),
        latent_channels=channels,
        naming="diffusers",
        **kwargs,
    )
