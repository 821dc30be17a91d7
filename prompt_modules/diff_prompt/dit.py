"""Stage 2 of Diff-Prompt: the prompt generator, a DiT that denoises Mask-VAE latents (paper sec. 3.2).

A Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers"): the latent is cut
into ``patch x patch`` patches (patchify), embedded with fixed 2-D sin-cos positions, and run through
adaLN-Zero blocks whose shift/scale/gate come from the condition vector; a zero-initialised adaLN final layer
un-patchifies the epsilon prediction.

**Condition** (paper sec. 3.2): ``c = [W_i f_img + e(t) ; W_c f_cap + e(t)]``, the concatenation of the frozen
VLM's image feature and caption (referring expression) feature, each projected to the hidden width and added
to the timestep embedding ``e(t)``; every block's modulation is ``Linear(SiLU(c))`` (adaLN-Zero: the gates start
at zero, so each block starts as the identity).

**Diffusion** (DDPM, Ho et al. 2020): linear beta schedule over ``T`` steps, epsilon prediction, loss
``|| eps - eps_theta(sqrt(a_t) z_0 + sqrt(1 - a_t) eps, t, c) ||^2``; an EMA copy of the weights samples.
**Sampling** is DDIM (Song et al. 2021, eq. 12 with eta = 0) over ``S`` evenly spaced timesteps;
:func:`ddim_sample` keeps, at chosen step indices, either the DDIM state ``z_{t-1}`` or the clean latent
``z_0_hat`` the DiT predicts there: these intermediate latents become the per-layer prompts of stage 3.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.distributed import SINGLE_PROCESS, DataParallel
from .config import DiTConfig
from .losses import epsilon_loss


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (integer or float) timesteps ``[B]`` -> ``[B, dim]`` (as in DiT / ADM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positional embedding ``[grid * grid, dim]`` (MAE / DiT)."""
    coords = torch.arange(grid, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    quarter = dim // 4
    omega = 1.0 / 10_000 ** (torch.arange(quarter, dtype=torch.float32) / max(quarter, 1))

    def emb(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    pe = torch.cat([emb(yy), emb(xx)], dim=1)
    return F.pad(pe, (0, dim - pe.shape[1]))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class DiTBlock(nn.Module):
    """Self-attention + MLP with adaLN-Zero conditioning (DiT paper, fig. 3)."""

    def __init__(self, hidden: int, heads: int, cond: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cond, 6 * hidden))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)
        h = modulate(self.norm1(x), shift1, scale1)
        x = x + gate1.unsqueeze(1) * self.attn(h, h, h, need_weights=False)[0]
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """``eps_theta(z_t, t, f_img, f_cap)`` on latents ``[B, C, s, s]`` (see the module docstring)."""

    def __init__(self, config: DiTConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or DiTConfig()
        p, h = cfg.patch_size, cfg.hidden
        self.patch_embed = nn.Conv2d(cfg.latent_channels, h, kernel_size=p, stride=p)
        self.register_buffer("pos_embed", sincos_2d(h, cfg.latent_size // p).unsqueeze(0), persistent=False)
        self.t_embed = nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Linear(h, h))
        self.image_proj = nn.Linear(cfg.cond_dim, h)
        self.caption_proj = nn.Linear(cfg.cond_dim, h)
        cond = 2 * h
        self.blocks = nn.ModuleList(DiTBlock(h, cfg.heads, cond, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(cond, 2 * h))
        self.final = nn.Linear(h, p * p * cfg.latent_channels)
        for layer in (self.final_ada[1], self.final):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        betas = torch.linspace(cfg.beta_start, cfg.beta_end, cfg.num_timesteps, dtype=torch.float64)
        betas = (betas * 1000.0 / cfg.num_timesteps).clamp(max=0.999)
        self.register_buffer("alphas_cumprod", torch.cumprod(1.0 - betas, dim=0).float(), persistent=False)

    def condition(self, t: torch.Tensor, image_features: torch.Tensor, caption_features: torch.Tensor) -> torch.Tensor:
        """``[W_i f_img + e(t) ; W_c f_cap + e(t)]`` ``[B, 2 * hidden]``."""
        e = self.t_embed(timestep_embedding(t, self.config.hidden))
        return torch.cat([self.image_proj(image_features) + e, self.caption_proj(caption_features) + e], dim=1)

    def forward(
        self, z: torch.Tensor, t: torch.Tensor, image_features: torch.Tensor, caption_features: torch.Tensor
    ) -> torch.Tensor:
        cfg = self.config
        if z.ndim != 4 or z.shape[1:] != (cfg.latent_channels, cfg.latent_size, cfg.latent_size):
            raise ValueError(
                f"the DiT takes latents [B, {cfg.latent_channels}, {cfg.latent_size}, {cfg.latent_size}], "
                f"got {tuple(z.shape)}"
            )
        for name, f in (("image", image_features), ("caption", caption_features)):
            if f.ndim != 2 or f.shape != (z.shape[0], cfg.cond_dim):
                raise ValueError(f"{name} features must be [{z.shape[0]}, {cfg.cond_dim}], got {tuple(f.shape)}")
        c = self.condition(t.to(z.device).expand(z.shape[0]), image_features, caption_features)
        x = self.patch_embed(z).flatten(2).transpose(1, 2) + self.pos_embed
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.final_ada(c).chunk(2, dim=1)
        x = self.final(modulate(self.final_norm(x), shift, scale))  # [B, N, p*p*C]
        return self.unpatchify(x)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        p, g, c = cfg.patch_size, cfg.latent_size // cfg.patch_size, cfg.latent_channels
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    # ----- training ---------------------------------------------------------------------------------------
    def q_sample(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps`` (DDPM eq. 4)."""
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return a.sqrt() * z0 + (1 - a).sqrt() * noise

    def loss(
        self,
        z0: torch.Tensor,
        image_features: torch.Tensor,
        caption_features: torch.Tensor,
        generator: torch.Generator | None = None,
        parallel: DataParallel = SINGLE_PROCESS,
    ) -> torch.Tensor:
        """The simple epsilon-prediction loss (DDPM eq. 14) at uniformly drawn timesteps
        (:func:`~.losses.epsilon_loss`; under ``parallel`` on this rank's part of the batch)."""
        return epsilon_loss(
            lambda z_t, t: self(z_t, t, image_features, caption_features),
            self.q_sample,
            z0,
            self.config.num_timesteps,
            generator,
            parallel,
        )


class EMA:
    """Exponential moving average of a module's weights (``shadow = d * shadow + (1 - d) * weights``)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        # warm-up as in common EMA implementations: early averages follow the weights faster
        decay = self.decay if step is None else min(self.decay, (1 + step) / (10 + step))
        for s, p in zip(self.module.parameters(), model.parameters(), strict=True):
            s.mul_(decay).add_(p.detach(), alpha=1 - decay)
        for s, b in zip(self.module.buffers(), model.buffers(), strict=True):
            s.copy_(b)


@dataclass
class DDIMResult:
    """``final`` ``[B, C, s, s]``: the sampled clean latent; ``kept`` ``[K, B, C, s, s]``: the latents kept at
    ``steps`` (DDIM step indices); ``timesteps``: the diffusion timestep of every DDIM step."""

    final: torch.Tensor
    kept: torch.Tensor
    steps: tuple[int, ...]
    timesteps: tuple[int, ...]


def ddim_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """``steps`` descending diffusion timesteps from ``T - 1`` to 0, evenly spaced."""
    if steps < 1:
        raise ValueError("DDIM needs at least one step")
    steps = min(steps, num_timesteps)
    return sorted({round(x) for x in torch.linspace(num_timesteps - 1, 0, steps).tolist()}, reverse=True)


@torch.no_grad()
def ddim_sample(
    model: DiT,
    image_features: torch.Tensor,
    caption_features: torch.Tensor,
    *,
    steps: int = 25,
    keep: Sequence[int] = (),
    kept: str = "pred_x0",
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    stop_when_kept: bool = False,
) -> DDIMResult:
    """Deterministic DDIM (eta = 0) from ``noise`` (or fresh Gaussian noise) to a clean latent.

    ``keep`` lists DDIM step indices (0 = the first, noisiest step); at each, ``kept="pred_x0"`` stores the
    clean latent predicted there (``(z_t - sqrt(1 - a_t) eps) / sqrt(a_t)``), ``kept="latent"`` the DDIM state
    after the step (``z_{t_prev}``). Latents are in the DiT's (scaled) space. With ``stop_when_kept`` the loop
    ends at the last kept step (``final`` is then the state after it): what a caller that needs only the kept
    latents saves.
    """
    cfg = model.config
    b = image_features.shape[0]
    shape = (b, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    device = image_features.device
    if noise is None:
        noise = torch.randn(shape, generator=generator)
    z = noise.to(device, torch.float32)
    ts = ddim_timesteps(cfg.num_timesteps, steps)
    keep = tuple(int(k) for k in keep)
    if any(k < 0 or k >= len(ts) for k in keep):
        raise ValueError(f"keep steps {keep} are outside the {len(ts)} DDIM steps")
    ab = model.alphas_cumprod.to(device)
    stored: dict[int, torch.Tensor] = {}
    for i, t in enumerate(ts):
        a_t = ab[t]
        a_prev = ab[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), device=device)
        eps = model(z, torch.full((b,), t, device=device, dtype=torch.long), image_features, caption_features)
        x0 = (z - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        z = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        if i in keep:
            stored[i] = x0 if kept == "pred_x0" else z
            if stop_when_kept and len(stored) == len(set(keep)):
                break
    kept_t = torch.stack([stored[k] for k in keep]) if keep else z.new_zeros((0, *shape))
    return DDIMResult(final=z, kept=kept_t, steps=keep, timesteps=tuple(ts))
