"""The losses of Diff-Prompt's three stages (Yan et al., ICLR 2025, arXiv 2504.21423).

1. :func:`mask_vae_loss` - the Mask-VAE's reconstruction + KL loss (paper eq. 3), used by
   :meth:`~.mask_vae.MaskVAE.loss`.
2. :func:`epsilon_loss` - the DiT's simple epsilon-prediction loss (DDPM eq. 14, Ho et al. 2020) at uniformly
   drawn timesteps, used by :meth:`~.dit.DiT.loss`.
3. :func:`grounding_loss` - the grounding head's loss (ours; the paper reads GLIP's own box head): BCE + Dice on
   the mask, L1 + GIoU (:func:`generalized_box_iou`, Rezatofighi et al. 2019) on the normalised box.

Pure functions of tensors; the modules call them (no import of the models here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from ..core.distributed import SINGLE_PROCESS, DataParallel


# ----- stage 1: Mask-VAE ------------------------------------------------------------------------------------------
def mask_vae_loss(
    reconstruction: torch.Tensor, target: torch.Tensor, posterior: Any, kl_weight: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Paper eq. 3: ``MSE(x_hat, x) + kl_weight * KL(q(z | x) || N(0, I))`` for masks in the ``[-1, 1]`` scale;
    ``posterior`` is a diffusers ``DiagonalGaussianDistribution`` (its ``kl()`` sums over the latent elements,
    the mean is over the batch). Returns the loss and its parts."""
    mse = F.mse_loss(reconstruction, target)
    kl = posterior.kl().mean()
    loss = mse + kl_weight * kl
    return loss, {"mse": float(mse.detach()), "kl": float(kl.detach())}


# ----- stage 2: DiT -----------------------------------------------------------------------------------------------
def epsilon_loss(
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    q_sample: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    num_timesteps: int,
    generator: torch.Generator | None = None,
    parallel: DataParallel = SINGLE_PROCESS,
) -> torch.Tensor:
    """DDPM eq. 14: ``|| eps - eps_theta(sqrt(a_t) z_0 + sqrt(1 - a_t) eps, t) ||^2`` with ``t`` uniform in
    ``[0, num_timesteps)`` and ``eps`` Gaussian (drawn in this order from ``generator``, or torch's global RNG).

    ``q_sample(z0, t, noise)`` is the forward process (DDPM eq. 4) and ``denoiser(z_t, t)`` the conditioned
    epsilon prediction. Under ``parallel`` ``z0`` is this rank's part of the batch: ``t`` and ``eps`` are drawn
    for the whole batch and the rank keeps its rows (:meth:`~..core.distributed.DataParallel.randn`)."""
    t = parallel.randint(num_timesteps, z0.shape[0], generator=generator).to(z0.device)
    noise = parallel.randn(z0.shape, generator=generator).to(z0.device, z0.dtype)
    return F.mse_loss(denoiser(q_sample(z0, t, noise), t), noise)


# ----- stage 3: grounding -----------------------------------------------------------------------------------------
class GroundingPrediction(Protocol):
    """What :func:`grounding_loss` reads of a grounder's output (e.g. :class:`~.model.GroundingOutput`)."""

    mask_logits: torch.Tensor
    boxes: torch.Tensor


def _area(x: torch.Tensor) -> torch.Tensor:
    return (x[:, 2:] - x[:, :2]).clamp(min=0).prod(-1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of paired boxes ``[B, 4]`` (``x0, y0, x1, y1``, any consistent unit)."""
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (_area(a) + _area(b) - inter).clamp(min=1e-9)


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GIoU of paired boxes (Rezatofighi et al. 2019)."""
    iou = box_iou(a, b)
    lt, rb = torch.minimum(a[:, :2], b[:, :2]), torch.maximum(a[:, 2:], b[:, 2:])
    hull = (rb - lt).clamp(min=0).prod(-1).clamp(min=1e-9)
    lt2, rb2 = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb2 - lt2).clamp(min=0).prod(-1)
    union = _area(a) + _area(b) - inter
    return iou - (hull - union) / hull


def grounding_loss(
    out: GroundingPrediction,
    masks: torch.Tensor,
    boxes: torch.Tensor,
    *,
    mask_weight: float = 1.0,
    box_weight: float = 2.0,
) -> torch.Tensor:
    """BCE + Dice on the mask (targets ``[B, S, S]`` in 0..1) and L1 + GIoU on normalised boxes ``[B, 4]``."""
    target = masks.float().to(out.mask_logits.device)
    bce = F.binary_cross_entropy_with_logits(out.mask_logits, target)
    prob = out.mask_logits.sigmoid().flatten(1)
    t = target.flatten(1)
    dice = 1 - (2 * (prob * t).sum(1) + 1) / (prob.sum(1) + t.sum(1) + 1)
    boxes = boxes.to(out.boxes)
    l1 = (out.boxes - boxes).abs().sum(-1)
    giou = 1 - generalized_box_iou(out.boxes, boxes)
    return mask_weight * (bce + dice.mean()) + box_weight * (l1.mean() + giou.mean())


__all__ = [
    "GroundingPrediction",
    "box_iou",
    "epsilon_loss",
    "generalized_box_iou",
    "grounding_loss",
    "mask_vae_loss",
]
