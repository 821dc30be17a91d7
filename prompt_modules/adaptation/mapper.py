"""IPL's latent mapper F: latent code -> ``n_ctx`` image-specific prompt vectors (Guo et al. 2023, sec. 3.2).

Exactly the official network (``mapper/latent_mappers.py`` of the IPL code, itself StyleGAN2's mapping-network
building blocks, Karras et al. 2020): :class:`PixelNorm`, then ``layers`` (3) :class:`EqualLinear` layers
``hidden -> hidden`` (the first one reads the latent code of width ``latent_dim``) and one :class:`EqualLinear`
``hidden -> n_ctx * token_width``, every one with learning-rate multiplier 0.01 and the fused leaky ReLU
(slope 0.2, gain sqrt(2)), the output layer included as in the official code. The output is reshaped to
``[B, n_ctx, token_width]``: vectors in the token-embedding space of the VLM's text tower.

Equalised learning rate (Karras et al. 2018, sec. 4.1): weights are stored as ``N(0, 1) / lr_mul`` and scaled
by ``lr_mul / sqrt(fan_in)`` at run time, so an optimiser step of size ``lr`` moves the effective weights by
about ``lr * lr_mul``: with Adam's lr 0.05 the mapper effectively learns at 5e-4.

Files: :func:`~.io.save_mapper` / :func:`~.io.load_mapper`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.artifacts import BackboneMismatchError


class PixelNorm(nn.Module):
    """``x / sqrt(mean(x ** 2) + 1e-8)`` over the feature dimension (StyleGAN's input normalisation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate and an optional fused leaky ReLU (StyleGAN2's ``EqualLinear``)."""

    def __init__(self, in_dim: int, out_dim: int, lr_mul: float = 1.0, activation: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = (1.0 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        if self.activation:
            out = F.leaky_relu(out, 0.2) * math.sqrt(2.0)
        return out


class LatentMapper(nn.Module):
    """F(w): ``[B, latent_dim]`` latent codes -> ``[B, n_ctx, token_width]`` prompt vectors."""

    def __init__(
        self,
        latent_dim: int,
        token_width: int,
        n_ctx: int = 4,
        hidden: int = 512,
        layers: int = 3,
        lr_mul: float = 0.01,
    ) -> None:
        super().__init__()
        if min(latent_dim, token_width, n_ctx, hidden, layers) < 1:
            raise ValueError("latent_dim, token_width, n_ctx, hidden and layers must all be >= 1")
        self.latent_dim, self.token_width, self.n_ctx = latent_dim, token_width, n_ctx
        self.hidden, self.layers, self.lr_mul = hidden, layers, lr_mul
        blocks: list[nn.Module] = [PixelNorm()]
        width = latent_dim
        for _ in range(layers):
            blocks.append(EqualLinear(width, hidden, lr_mul=lr_mul))
            width = hidden
        blocks.append(EqualLinear(width, n_ctx * token_width, lr_mul=lr_mul))
        self.mapping = nn.Sequential(*blocks)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.ndim != 2 or codes.shape[1] != self.latent_dim:
            raise ValueError(f"latent codes must be [B, {self.latent_dim}], got {tuple(codes.shape)}")
        return self.mapping(codes).view(codes.shape[0], self.n_ctx, self.token_width)

    def shape_dict(self) -> dict[str, Any]:
        return {
            "latent_dim": self.latent_dim,
            "token_width": self.token_width,
            "n_ctx": self.n_ctx,
            "hidden": self.hidden,
            "layers": self.layers,
            "lr_mul": self.lr_mul,
        }


class TrainedMapper:
    """A mapper plus what it was trained for: VLM name, generator fingerprint, texts and config."""

    def __init__(self, mapper: LatentMapper, backbone: str, generator: str, config: dict[str, Any]) -> None:
        self.mapper, self.backbone, self.generator, self.config = mapper, backbone, generator, dict(config)

    @property
    def token_width(self) -> int:
        return self.mapper.token_width

    @property
    def latent_dim(self) -> int:
        return self.mapper.latent_dim

    def check_vlm(self, vlm: Any) -> None:
        """Refuse a VLM of another name or token width than the one the mapper was trained with."""
        if vlm.token_width != self.token_width or vlm.name != self.backbone:
            raise BackboneMismatchError(
                f"this latent mapper makes prompt vectors for VLM '{self.backbone}' (token width "
                f"{self.token_width}); the VLM is '{vlm.name}' (token width {vlm.token_width})"
            )

    def check_generator(self, latent_dim: int) -> None:
        if latent_dim != self.latent_dim:
            raise BackboneMismatchError(
                f"this latent mapper reads latent codes of width {self.latent_dim}; the generator's codes have "
                f"width {latent_dim} (another model or image size)"
            )
