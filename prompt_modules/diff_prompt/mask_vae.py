"""Stage 1 of Diff-Prompt: the Mask-VAE that compresses binary masks to small latents (paper sec. 3.1).

A diffusers ``AutoencoderKL`` with one input and one output channel and small blocks. Masks in ``{0, 1}``
(float ``[B, 1, S, S]``) are scaled to ``[-1, 1]``; the loss is the paper's eq. 3,
``MSE(x_hat, x) + kl_weight * KL(q(z | x) || N(0, I))`` (sum over latent elements, mean over the batch, as
``DiagonalGaussianDistribution.kl`` computes it) against the per-pixel MSE (:func:`~.losses.mask_vae_loss`).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from torch import nn

from ..core.distributed import SINGLE_PROCESS, DataParallel
from .config import MaskVAEConfig
from .losses import mask_vae_loss


class MaskVAE(nn.Module):
    """``AutoencoderKL`` for 1-channel masks; ``encode`` returns latents, ``decode`` mask probabilities."""

    def __init__(self, config: MaskVAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MaskVAEConfig()
        n = len(config.block_out_channels)
        self.vae = AutoencoderKL(
            in_channels=1,
            out_channels=1,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=config.block_out_channels,
            layers_per_block=config.layers_per_block,
            latent_channels=config.latent_channels,
            norm_num_groups=config.norm_num_groups,
            sample_size=config.mask_size,
        )

    def _check(self, masks: torch.Tensor) -> torch.Tensor:
        size = self.config.mask_size
        if masks.ndim == 3:
            masks = masks.unsqueeze(1)
        if masks.ndim != 4 or masks.shape[1] != 1 or tuple(masks.shape[-2:]) != (size, size):
            raise ValueError(f"the Mask-VAE takes masks [B, 1, {size}, {size}], got {tuple(masks.shape)}")
        return masks.float()

    def posterior(self, masks: torch.Tensor):
        """``q(z | mask)``: a diffusers ``DiagonalGaussianDistribution`` for masks in 0..1."""
        return self.vae.encode(self._check(masks) * 2.0 - 1.0).latent_dist

    def encode(self, masks: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Latents ``[B, C, s, s]`` (the posterior mean, or a sample)."""
        dist = self.posterior(masks)
        return dist.sample() if sample else dist.mean

    def decode_raw(self, latents: torch.Tensor) -> torch.Tensor:
        """The decoder output in the ``[-1, 1]`` mask scale (not clamped)."""
        return self.vae.decode(latents).sample

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Mask probabilities ``[B, 1, S, S]`` in 0..1."""
        return ((self.decode_raw(latents) + 1.0) / 2.0).clamp(0.0, 1.0)

    def loss(
        self, masks: torch.Tensor, parallel: DataParallel = SINGLE_PROCESS
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Paper eq. 3: reconstruction MSE + ``kl_weight`` x KL; returns the loss and its parts. The latent is
        the posterior's sample (``mean + std * eps``, as ``DiagonalGaussianDistribution.sample``); under
        ``parallel`` ``masks`` are this rank's part and ``eps`` its rows of the whole batch's draw."""
        x = self._check(masks) * 2.0 - 1.0
        dist = self.vae.encode(x).latent_dist
        eps = parallel.randn(dist.mean.shape, dtype=dist.parameters.dtype, device=dist.parameters.device)
        recon = self.vae.decode(dist.mean + dist.std * eps).sample
        return mask_vae_loss(recon, x, dist, self.config.kl_weight)

    @torch.no_grad()
    def iou(self, masks: torch.Tensor) -> float:
        """Mean IoU of the thresholded reconstruction (posterior mean) against ``masks``."""
        target = self._check(masks) > 0.5
        pred = self.decode(self.encode(masks)) > 0.5
        inter = (pred & target).flatten(1).sum(1).float()
        union = (pred | target).flatten(1).sum(1).float().clamp(min=1)
        return float((inter / union).mean())
