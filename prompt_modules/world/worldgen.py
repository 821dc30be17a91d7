"""WorldGen: the world's small text-conditional image generator, built like latent diffusion.

Two parts, as in Stable Diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
Diffusion Models"):

* :class:`AutoEncoder`: a small KL-regularised convolutional autoencoder that maps a 64x64 image (0..1) to a
  compact latent ``[latent_channels, 8, 8]`` and back. It is a VAE with a *light* KL term (Kingma & Welling
  2014; the "KL-reg" first stage of Rombach et al.): the encoder predicts a mean and a log-variance, training
  decodes a sample of the posterior (so the decoder learns to tolerate the small errors a diffusion model
  makes), :meth:`AutoEncoder.encode` returns the posterior mean (deterministic). ``latent_shift`` and
  ``latent_scale`` (measured after training, like SD's 0.18215) bring the latents to zero mean and unit
  standard deviation for the diffusion model. Trained on flat-style scenes only; the other styles stay unseen.
  The decoder is a plain ``nn.Module`` of ``Conv2d`` layers with stable names (``decoder.conv_in``,
  ``decoder.mid.conv1``, ``decoder.up.0.conv``, ...) that PEFT LoRA can target.
* :class:`LatentUNet`: an epsilon-predicting denoiser over the latent (Ho et al. 2020, "Denoising Diffusion
  Probabilistic Models"), an SD-style U-Net (ResBlocks with a timestep embedding, transformer blocks with
  self-attention ``attn1`` and cross-attention ``attn2`` to the WorldCLIP text token features
  :meth:`~promptweave.prompt_modules.core.vlm.VisionLanguageModel.text_token_features`). An attention-pooled
  summary of the same token features is added to the timestep embedding (as SDXL adds a pooled text
  embedding); it needs no extra input. :meth:`LatentUNet.encode_features` exposes the encoder half (down path
  plus middle block) for white-box uses such as prompt inversion.

Sampling (:meth:`WorldGen.sample`) uses DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models";
deterministic, eta=0, "trailing" timestep spacing) with classifier-free guidance (Ho & Salimans 2022): the
unconditional prediction uses the token features of the empty caption ``""``, the caption that training
substitutes for ~10% of captions. Noise comes from a ``torch.Generator`` seeded by ``seed``, so a call is
deterministic for a seed.

Files: :func:`save_worldgen` / :func:`load_worldgen` write/read ONE safetensors file (fp16 storage by
default, cast back to fp32 on load) with metadata ``promptweave.method = "worldgen"``, the backbone (name of
the WorldCLIP the denoiser is conditioned on), the config JSON and the version. Loading or sampling with a
VLM of another name or token width raises :class:`~promptweave.prompt_modules.core.artifacts.BackboneMismatchError`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.artifacts import (
    ArtifactError,
    BackboneMismatchError,
    base_metadata,
    check_method,
    config_from_dict,
    meta_field,
    read_safetensors,
    save_safetensors_atomic,
)

METHOD = "worldgen"
NULL_CAPTION = ""  # the caption classifier-free guidance drops to (Ho & Salimans 2022)
#: Classifier-free guidance scale of :meth:`WorldGen.sample`, the ``PWWorldGenSample`` node and the ``world``
#: bench, chosen on the val split (caption prompts, 20 DDIM steps, 200 single-object scenes, seed 0). WorldGen 2
#: judged by WorldCLIP 2, gen_category_agreement at guidance 3 / 5 / 7.5 / 10: 0.465 / 0.475 / 0.465 / 0.430,
#: colour 0.865 / 0.860 / 0.860 / 0.800. (WorldGen 1 judged by WorldCLIP 1 at 1 / 3 / 5 / 7.5 / 10 / 15: 0.105 /
#: 0.205 / 0.260 / 0.275 / 0.270 / 0.255.)
DEFAULT_GUIDANCE = 5.0


@dataclass(frozen=True)
class WorldGenConfig:
    """Shape of a WorldGen model (the JSON stored in the file's metadata).

    ``ae_channels``: autoencoder widths at 1/2, 1/4, ... of the image size; the latent side is
    ``image_size / 2**len(ae_channels)``. ``unet_channels``: denoiser widths per latent resolution level.
    ``context_dim`` is the token width of the conditioning VLM; ``backbone`` the name of its text space
    (``VisionLanguageModel.text_space``: WorldCLIP 2 carries WorldCLIP's text tower). The noise schedule
    defaults to latent diffusion's ``scaled_linear`` betas 0.00085..0.012 over T = 1000 (Rombach et al. 2022);
    DDPM's ``linear`` 1e-4..0.02 (Ho et al. 2020) destroys an 8x8 latent long before t = T, wasting steps.
    ``scale_shift_norm``: the U-Net's ResBlocks use adaptive group norm (scale and shift from the timestep
    plus pooled-text embedding). ``context_proj_dim``: the context is projected once to this width
    (``context_proj``) and every cross-attention reads keys and values from it; on CPU the per-block
    key/value projections of 77 context tokens were the largest cost. ``text_adapter_layers``: trainable
    bidirectional transformer layers over the projected context (the frozen text tower is causal and was
    trained for contrastive retrieval, not generation; cf. the trainable text layers of Imagen/eDiff-I).
    """

    name: str = "worldgen"
    backbone: str = "none"
    image_size: int = 64
    latent_channels: int = 4
    ae_channels: tuple[int, ...] = (32, 64, 128)
    latent_shift: float = 0.0
    latent_scale: float = 1.0
    unet_channels: tuple[int, ...] = (64, 128)
    unet_res_blocks: int = 1
    head_dim: int = 32
    context_dim: int = 128
    context_proj_dim: int = 64
    pooled_text: bool = True
    scale_shift_norm: bool = True
    text_adapter_layers: int = 1
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_channels", tuple(int(c) for c in self.ae_channels))
        object.__setattr__(self, "unet_channels", tuple(int(c) for c in self.unet_channels))
        if self.image_size % (2 ** len(self.ae_channels)):
            raise ValueError(f"image_size {self.image_size} is not divisible by 2**{len(self.ae_channels)}")
        if self.beta_schedule not in ("linear", "scaled_linear"):
            raise ValueError(f"unknown beta_schedule {self.beta_schedule!r}; expected 'linear' or 'scaled_linear'")
        for c in self.unet_channels:
            if c % self.head_dim:
                raise ValueError(f"unet channel count {c} is not a multiple of head_dim {self.head_dim}")
        if self.latent_scale <= 0:
            raise ValueError("latent_scale must be positive")

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** len(self.ae_channels)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.latent_size, self.latent_size)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["ae_channels"] = list(self.ae_channels)
        data["unet_channels"] = list(self.unet_channels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorldGenConfig:
        return config_from_dict(cls, data)


#: Named configurations: ``default`` is the shipped model, ``tiny`` is for unit tests.
WORLDGEN_PRESETS: dict[str, WorldGenConfig] = {
    "default": WorldGenConfig(),
    "tiny": WorldGenConfig(
        name="worldgen-tiny",
        ae_channels=(8, 16, 16),
        unet_channels=(16, 32),
        head_dim=8,
        context_dim=64,
        context_proj_dim=16,
    ),
}


# ----- building blocks --------------------------------------------------------------------------------------
def _norm(channels: int) -> nn.GroupNorm:
    groups = 32 if channels % 32 == 0 and channels >= 64 else (8 if channels % 8 == 0 else 1)
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice with a residual path, conditioned on an embedding ``temb`` (optional).

    ``scale_shift``: adaptive group norm, ``norm2(h) * (1 + scale) + shift`` with (scale, shift) projected
    from ``temb`` (Dhariwal & Nichol 2021); else ``temb`` is projected and added (Ho et al. 2020).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        temb_dim: int | None = None,
        zero_out: bool = False,
        scale_shift: bool = False,
    ) -> None:
        super().__init__()
        self.scale_shift = scale_shift and bool(temb_dim)
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, out_ch * (2 if self.scale_shift else 1)) if temb_dim else None
        self.norm2 = _norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None
        if zero_out:
            nn.init.zeros_(self.conv2.weight)
            nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.temb_proj is not None and temb is not None:
            emb = self.temb_proj(F.silu(temb))[:, :, None, None]
            if self.scale_shift:
                scale, shift = emb.chunk(2, dim=1)
                h = self.norm2(h) * (1.0 + scale) + shift
            else:
                h = self.norm2(h + emb)
        else:
            h = self.norm2(h)
        h = self.conv2(F.silu(h))
        return (x if self.skip is None else self.skip(x)) + h


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 convolution (no transposed-convolution checkerboards)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Downsample(nn.Module):
    """A strided 4x4 convolution halving the resolution."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


# ----- autoencoder ------------------------------------------------------------------------------------------
class Encoder(nn.Module):
    """Image ``[B, 3, H, W]`` in -1..1 -> posterior mean and log-variance ``[B, 2*C, H/2**L, W/2**L]``."""

    def __init__(self, channels: Sequence[int], latent_channels: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, channels[0], 4, stride=2, padding=1)
        self.blocks = nn.ModuleList()
        self.down = nn.ModuleList()
        for i, ch in enumerate(channels):
            self.blocks.append(ResBlock(ch, ch))
            if i + 1 < len(channels):
                self.down.append(Downsample(ch, channels[i + 1]))
        self.norm_out = _norm(channels[-1])
        self.conv_out = nn.Conv2d(channels[-1], 2 * latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i < len(self.down):
                h = self.down[i](h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent ``[B, C, h, w]`` -> image ``[B, 3, h*2**L, w*2**L]`` in -1..1 (unclamped).

    Module names are stable for PEFT targeting: ``conv_in``, ``mid.conv1``/``mid.conv2``,
    ``blocks.<i>.conv1``/``conv2``, ``up.<i>.conv`` and ``conv_out`` (all ``nn.Conv2d``).
    """

    def __init__(self, channels: Sequence[int], latent_channels: int) -> None:
        super().__init__()
        rev = list(reversed(channels))
        self.conv_in = nn.Conv2d(latent_channels, rev[0], 3, padding=1)
        self.mid = ResBlock(rev[0], rev[0])
        self.blocks = nn.ModuleList()
        self.up = nn.ModuleList()
        for i, ch in enumerate(rev):
            self.blocks.append(ResBlock(ch, ch))
            self.up.append(Upsample(ch, rev[i + 1] if i + 1 < len(rev) else max(ch // 2, 8)))
        out_ch = max(rev[-1] // 2, 8)  # the full-resolution layer is the costliest: half width
        self.norm_out = _norm(out_ch)
        self.conv_out = nn.Conv2d(out_ch, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for block, up in zip(self.blocks, self.up, strict=True):
            h = up(block(h))
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoEncoder(nn.Module):
    """The first stage: a light-KL VAE between images in 0..1 and raw (unscaled) latents."""

    def __init__(self, config: WorldGenConfig) -> None:
        super().__init__()
        self.encoder = Encoder(config.ae_channels, config.latent_channels)
        self.decoder = Decoder(config.ae_channels, config.latent_channels)

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z | image) for images ``[B, 3, H, W]`` in 0..1."""
        mean, logvar = self.encoder(images * 2.0 - 1.0).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latent -> unclamped image in -1..1 (the training target space)."""
        return self.decoder(z)


# ----- denoiser ---------------------------------------------------------------------------------------------
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps ``[B]`` -> ``[B, dim]`` (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Attention(nn.Module):
    """Multi-head attention with ``to_q``/``to_k``/``to_v``/``to_out`` linear layers (SD naming).

    Plain matmul-softmax: on CPU it is faster than ``scaled_dot_product_attention`` for these tiny heads.
    """

    def __init__(self, dim: int, context_dim: int | None, head_dim: int) -> None:
        super().__init__()
        self.heads = dim // head_dim
        self.scale = head_dim**-0.5
        kv_dim = context_dim or dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(kv_dim, dim, bias=False)
        self.to_v = nn.Linear(kv_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        ctx = x if context is None else context
        b, n, d = x.shape
        q = self.to_q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k = self.to_k(ctx).view(b, ctx.shape[1], self.heads, -1).transpose(1, 2)
        v = self.to_v(ctx).view(b, ctx.shape[1], self.heads, -1).transpose(1, 2)
        weights = torch.softmax((q @ k.transpose(-1, -2)) * self.scale, dim=-1)
        return self.to_out((weights @ v).transpose(1, 2).reshape(b, n, d))


class TextAdapterLayer(nn.Module):
    """A pre-LN bidirectional transformer layer (``attn``, ``ff``) over the projected text context."""

    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, None, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ff(self.norm2(x))


class TransformerBlock(nn.Module):
    """SD's spatial transformer: GroupNorm, 1x1 in, self-attn ``attn1``, cross-attn ``attn2``, GELU MLP, 1x1 out."""

    def __init__(self, dim: int, context_dim: int, head_dim: int) -> None:
        super().__init__()
        self.norm = _norm(dim)
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, None, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, context_dim, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.proj_out = nn.Conv2d(dim, dim, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        y = y + self.attn1(self.norm1(y))
        y = y + self.attn2(self.norm2(y), context)
        y = y + self.ff(self.norm3(y))
        return x + self.proj_out(y.transpose(1, 2).reshape(b, c, h, w))


class LatentUNet(nn.Module):
    """Epsilon-prediction U-Net over scaled latents, cross-attending to text token features.

    ``forward(z_t, t, context)``: ``z_t`` ``[B, C, h, w]``, integer or float timesteps ``t`` ``[B]``,
    ``context`` ``[B, L, context_dim]`` (WorldCLIP :meth:`text_token_features`, usually L = 77).
    Layout per level: ``down.<level>.res.<k>``/``down.<level>.attn.<k>`` (+ ``down.<level>.downsample``),
    ``mid_res1``/``mid_attn``/``mid_res2``, ``up.<level>.res.<k>``/``up.<level>.attn.<k>`` (+ ``upsample``).
    """

    def __init__(self, config: WorldGenConfig) -> None:
        super().__init__()
        chs = config.unet_channels
        self.config = config
        self.temb_dim = temb = 4 * chs[0]
        self.time_embed = nn.Sequential(nn.Linear(chs[0], temb), nn.SiLU(), nn.Linear(temb, temb))
        self.context_proj = nn.Linear(config.context_dim, config.context_proj_dim)
        adapter_head = min(config.head_dim, config.context_proj_dim)
        self.text_adapter = nn.ModuleList(
            TextAdapterLayer(config.context_proj_dim, adapter_head) for _ in range(config.text_adapter_layers)
        )
        if config.pooled_text:
            self.text_pool_score = nn.Linear(config.context_dim, 1)
            self.text_pool_proj = nn.Linear(config.context_dim, temb)
        self.conv_in = nn.Conv2d(config.latent_channels, chs[0], 3, padding=1)
        n_res, cdim, hd = config.unet_res_blocks, config.context_proj_dim, config.head_dim
        ss = config.scale_shift_norm
        self.down = nn.ModuleList()
        skip_chs = [chs[0]]
        ch = chs[0]
        for level, out_ch in enumerate(chs):
            stage = nn.Module()
            stage.res = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(n_res):
                stage.res.append(ResBlock(ch, out_ch, temb, zero_out=True, scale_shift=ss))
                stage.attn.append(TransformerBlock(out_ch, cdim, hd))
                ch = out_ch
                skip_chs.append(ch)
            if level + 1 < len(chs):
                stage.downsample = Downsample(ch, ch)
                skip_chs.append(ch)
            self.down.append(stage)
        self.mid_res1 = ResBlock(ch, ch, temb, zero_out=True, scale_shift=ss)
        self.mid_attn = TransformerBlock(ch, cdim, hd)
        self.mid_res2 = ResBlock(ch, ch, temb, zero_out=True, scale_shift=ss)
        self.up = nn.ModuleList()
        for level, out_ch in reversed(list(enumerate(chs))):
            stage = nn.Module()
            stage.res = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(n_res + 1):
                stage.res.append(ResBlock(ch + skip_chs.pop(), out_ch, temb, zero_out=True, scale_shift=ss))
                stage.attn.append(TransformerBlock(out_ch, cdim, hd))
                ch = out_ch
            if level > 0:
                stage.upsample = Upsample(ch, ch)
            self.up.append(stage)
        self.norm_out = _norm(ch)
        self.conv_out = nn.Conv2d(ch, config.latent_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def embed(self, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Timestep embedding plus (if configured) the attention-pooled text summary."""
        temb = self.time_embed(timestep_embedding(t, self.config.unet_channels[0]))
        if self.config.pooled_text:
            weights = torch.softmax(self.text_pool_score(context).squeeze(-1), dim=-1)
            temb = temb + self.text_pool_proj((weights.unsqueeze(-1) * context).sum(dim=1))
        return temb

    def project_context(self, context: torch.Tensor) -> torch.Tensor:
        """Text token features ``[B, L, context_dim]`` -> the cross-attention keys/values source."""
        context = self.context_proj(context)
        for layer in self.text_adapter:
            context = layer(context)
        return context

    def _down(self, z: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> list[torch.Tensor]:
        h = self.conv_in(z)
        skips = [h]
        for stage in self.down:
            for res, attn in zip(stage.res, stage.attn, strict=True):
                h = attn(res(h, temb), context)
                skips.append(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
                skips.append(h)
        return skips

    def _mid(self, h: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.mid_res2(self.mid_attn(self.mid_res1(h, temb), context), temb)

    def encode_features(self, z: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> list[torch.Tensor]:
        """The encoder half: every down-path activation (skip connections) followed by the middle block output.

        For white-box prompt inversion (Croitoru et al. 2023 feed the U-Net encoder the clean latent at t=0
        and the caption as context). The last element is the mid-block output ``[B, C_last, h/2**(L-1), ...]``.
        """
        t = self._timesteps(t, z)
        context = context.to(z.dtype)
        temb = self.embed(t, context)
        context = self.project_context(context)
        skips = self._down(z, temb, context)
        return [*skips, self._mid(skips[-1], temb, context)]

    @staticmethod
    def _timesteps(t: torch.Tensor | int | float, z: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=z.device)
        return t.expand(z.shape[0]) if t.ndim == 0 else t

    def forward(self, z: torch.Tensor, t: torch.Tensor | int, context: torch.Tensor) -> torch.Tensor:
        t = self._timesteps(t, z)
        context = context.to(z.dtype)
        temb = self.embed(t, context)
        context = self.project_context(context)
        skips = self._down(z, temb, context)
        h = self._mid(skips[-1], temb, context)
        for stage in self.up:
            for res, attn in zip(stage.res, stage.attn, strict=True):
                h = attn(res(torch.cat([h, skips.pop()], dim=1), temb), context)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ----- noise schedule ---------------------------------------------------------------------------------------
def make_alphas_cumprod(config: WorldGenConfig) -> torch.Tensor:
    """``alpha_bar_t`` for t = 0..T-1: DDPM linear betas (Ho et al. 2020) or SD's ``scaled_linear``."""
    n = config.num_train_timesteps
    if config.beta_schedule == "linear":
        betas = torch.linspace(config.beta_start, config.beta_end, n, dtype=torch.float64)
    else:
        betas = torch.linspace(config.beta_start**0.5, config.beta_end**0.5, n, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def ddim_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """``steps`` timesteps, high to low, "trailing" spacing (the first step starts at T-1)."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in 1..{num_train_timesteps}, got {steps}")
    ratio = num_train_timesteps / steps
    return [int(round(num_train_timesteps - 1 - i * ratio)) for i in range(steps)]


# ----- the model --------------------------------------------------------------------------------------------
class WorldGen(nn.Module):
    """Autoencoder (``self.autoencoder``) + latent denoiser (``self.unet``) + schedule; see the module docstring."""

    def __init__(self, config: WorldGenConfig | str = "default", seed: int | None = 0) -> None:
        super().__init__()
        if isinstance(config, str):
            try:
                config = WORLDGEN_PRESETS[config]
            except KeyError:
                raise ValueError(f"unknown WorldGen preset {config!r}; known: {sorted(WORLDGEN_PRESETS)}") from None
        self.config = config
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self.autoencoder = AutoEncoder(config)
            self.unet = LatentUNet(config)
        self.register_buffer("alphas_cumprod", make_alphas_cumprod(config), persistent=False)
        self._null_cache: tuple[int, torch.Tensor] | None = None
        self.eval()

    # ----- description -----------------------------------------------------------------------------------
    @property
    def backbone(self) -> str:
        return self.config.backbone

    @property
    def device(self) -> torch.device:
        return self.unet.conv_in.weight.device

    def set_latent_stats(self, shift: float, scale: float) -> None:
        """Record the latent normalisation measured after autoencoder training (config is frozen: replaced)."""
        self.config = dataclasses.replace(self.config, latent_shift=float(shift), latent_scale=float(scale))

    def check_vlm(self, vlm: Any) -> None:
        """Refuse a VLM whose text space (its own name, or the model whose text tower it carries) or token
        width differs from the one the denoiser was trained with."""
        text_space = getattr(vlm, "text_space", vlm.name)
        if text_space != self.config.backbone or vlm.token_width != self.config.context_dim:
            raise BackboneMismatchError(
                f"this WorldGen is conditioned on '{self.config.backbone}' text features "
                f"(token width {self.config.context_dim}); got VLM '{vlm.name}' with '{text_space}' text features "
                f"(token width {vlm.token_width})"
            )

    # ----- autoencoder -----------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in 0..1 -> normalised latents ``[B, C, h, w]`` (posterior mean)."""
        images = images.to(self.device, torch.float32)
        if images.shape[-1] != self.config.image_size or images.shape[-2] != self.config.image_size:
            size = self.config.image_size
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        mean, _ = self.autoencoder.posterior(images)
        return (mean - self.config.latent_shift) * self.config.latent_scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> images ``[B, 3, image_size, image_size]`` clamped to 0..1."""
        z = latents.to(self.device) / self.config.latent_scale + self.config.latent_shift
        return ((self.autoencoder.decode_raw(z) + 1.0) * 0.5).clamp(0.0, 1.0)

    # ----- text conditioning ---------------------------------------------------------------------------
    def text_context(self, texts: str | Sequence[str] | torch.Tensor, vlm: Any) -> torch.Tensor:
        """WorldCLIP token features ``[B, 77, context_dim]`` of captions (or ids / token embeddings)."""
        self.check_vlm(vlm)
        return vlm.text_token_features(texts).to(self.device, torch.float32)

    def null_context(self, vlm: Any) -> torch.Tensor:
        """Token features of the empty caption ``[1, 77, context_dim]`` (the unconditional input; cached)."""
        key = id(vlm)
        if self._null_cache is None or self._null_cache[0] != key:
            with torch.no_grad():
                self._null_cache = (key, self.text_context([NULL_CAPTION], vlm))
        return self._null_cache[1]

    # ----- diffusion -------------------------------------------------------------------------------------
    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward process q(z_t | z_0) = N(sqrt(a_t) z_0, (1 - a_t) I)."""
        a = self.alphas_cumprod.to(latents.device)[t].view(-1, 1, 1, 1)
        return a.sqrt() * latents + (1.0 - a).sqrt() * noise

    def predict_noise(
        self, z: torch.Tensor, t: int, context: torch.Tensor, null: torch.Tensor | None, guidance: float
    ) -> torch.Tensor:
        """Epsilon with classifier-free guidance ``eps_u + guidance * (eps_c - eps_u)`` (one batched call)."""
        ts = torch.full((z.shape[0],), t, device=z.device, dtype=torch.long)
        if null is None or guidance == 1.0:
            return self.unet(z, ts, context)
        uncond = null.expand(z.shape[0], -1, -1)
        eps = self.unet(torch.cat([z, z]), torch.cat([ts, ts]), torch.cat([uncond, context]))
        eps_u, eps_c = eps.chunk(2)
        return eps_u + guidance * (eps_c - eps_u)

    def sample_latents(
        self,
        context: torch.Tensor,
        null: torch.Tensor | None = None,
        *,
        steps: int = 20,
        guidance: float = DEFAULT_GUIDANCE,
        seed: int = 0,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Deterministic DDIM (eta = 0; Song et al. 2021) from Gaussian noise to normalised latents.

        ``noise`` overrides the starting latent (else drawn from ``torch.Generator().manual_seed(seed)``).
        Gradients flow if called outside ``no_grad`` (e.g. for prompt learning through a few steps).
        """
        b = context.shape[0]
        if noise is None:
            gen = torch.Generator().manual_seed(int(seed))
            noise = torch.randn((b, *self.config.latent_shape), generator=gen)
        z = noise.to(self.device, torch.float32)
        ac = self.alphas_cumprod.to(z.device)
        timesteps = ddim_timesteps(self.config.num_train_timesteps, steps)
        for i, t in enumerate(timesteps):
            eps = self.predict_noise(z, t, context, null, guidance)
            a_t = ac[t]
            a_prev = ac[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.ones((), device=z.device)
            z0 = (z - (1.0 - a_t).sqrt() * eps) / a_t.sqrt()
            z = a_prev.sqrt() * z0 + (1.0 - a_prev).sqrt() * eps
        return z

    @torch.no_grad()
    def sample(
        self,
        texts: str | Sequence[str],
        vlm: Any,
        *,
        steps: int = 20,
        guidance: float = DEFAULT_GUIDANCE,
        seed: int = 0,
    ) -> torch.Tensor:
        """Images ``[B, 3, image_size, image_size]`` in 0..1 for captions (deterministic for ``seed``)."""
        if isinstance(texts, str):
            texts = [texts]
        context = self.text_context(list(texts), vlm)
        null = self.null_context(vlm) if guidance != 1.0 else None
        latents = self.sample_latents(context, null, steps=steps, guidance=guidance, seed=seed)
        return self.decode(latents)


# ----- files ------------------------------------------------------------------------------------------------
def save_worldgen(
    gen: WorldGen, path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float16, stages: Sequence[str] = ()
) -> Path:
    """One safetensors file: all weights (``dtype`` storage, fp16 by default) + config/backbone metadata."""
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in gen.state_dict().items()}
    metadata = base_metadata(
        METHOD,
        gen.config.backbone,
        config=gen.config.to_dict(),
        token_width=gen.config.context_dim,
        latent_shape=list(gen.config.latent_shape),
        stages=list(stages),
    )
    return save_safetensors_atomic(path, tensors, metadata)


def read_worldgen_config(path: str | os.PathLike[str]) -> tuple[WorldGenConfig, dict[str, str]]:
    """Config and raw metadata of a WorldGen file (raises :class:`ArtifactError` for anything else)."""
    path = Path(path)
    tensors, metadata = read_safetensors(path)
    del tensors
    return _config_from_metadata(metadata, path), metadata


def _config_from_metadata(metadata: dict[str, str], path: Path) -> WorldGenConfig:
    check_method(metadata, METHOD, path)
    raw = meta_field(metadata, "config")
    if not isinstance(raw, dict):
        raise ArtifactError(f"{path}: missing promptweave.config metadata")
    try:
        return WorldGenConfig.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: bad promptweave.config metadata: {exc}") from None


def load_worldgen(path: str | os.PathLike[str], vlm: Any | None = None, device: str | torch.device = "cpu") -> WorldGen:
    """Load a :func:`save_worldgen` file (weights cast back to fp32).

    With ``vlm``, refuses (:class:`BackboneMismatchError`) a VLM of another name or token width than the
    backbone recorded in the file.
    """
    path = Path(path)
    tensors, metadata = read_safetensors(path)
    config = _config_from_metadata(metadata, path)
    gen = WorldGen(config, seed=None)
    if vlm is not None:
        try:
            gen.check_vlm(vlm)
        except BackboneMismatchError as exc:
            raise BackboneMismatchError(f"{path}: {exc}") from None
    tensors = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    try:
        missing, unexpected = gen.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:
        raise ArtifactError(f"{path} does not fit its WorldGen config: {exc}") from None
    if missing or unexpected:
        raise ArtifactError(
            f"{path} does not fit its WorldGen config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return gen.to(device).eval()


def copy_module(module: nn.Module) -> nn.Module:
    """A frozen deep copy (for EMA weights)."""
    clone = copy.deepcopy(module)
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone
