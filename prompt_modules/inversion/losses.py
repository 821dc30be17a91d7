"""The Reverse Stable Diffusion loss: cosine embedding + 0.1 * BCE(vocabulary) + Huber."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def inversion_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    vocab_logits: torch.Tensor | None = None,
    vocab_labels: torch.Tensor | None = None,
    *,
    vocab_weight: float = 0.1,
    huber_weight: float = 1.0,
    reduction: str = "mean",
) -> tuple[torch.Tensor, dict[str, float]]:
    """``CosineEmbeddingLoss(pred, target, +1) + vocab_weight * BCEWithLogits + huber_weight * Huber``.

    ``pred`` is the L2-normalised prediction ``[B, D]``; ``reduction="none"`` gives per-sample losses ``[B]``.
    Returns the loss and the value of each term (floats, for logging).
    """
    cos = 1.0 - F.cosine_similarity(pred, target, dim=-1)
    huber = F.huber_loss(pred, target, reduction="none").mean(dim=-1)
    total = cos + huber_weight * huber
    parts = {"cosine": float(cos.detach().mean()), "huber": float(huber.detach().mean())}
    if vocab_logits is not None and vocab_labels is not None and vocab_weight > 0 and vocab_logits.shape[-1] > 0:
        bce = F.binary_cross_entropy_with_logits(vocab_logits, vocab_labels, reduction="none").mean(dim=-1)
        total = total + vocab_weight * bce
        parts["bce"] = float(bce.detach().mean())
    parts["total"] = float(total.detach().mean())
    return (total.mean() if reduction == "mean" else total), parts
