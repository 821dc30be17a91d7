"""DCAR's two levels as functions (package docstring: the formulas and why).

Attribute level: the mutual-information estimate ``I_t = log K - H(softmax_j(s <e_t, v_j>))`` of each word token
and the per-token weights ``w_t = I_t / sum I``. Category level: the in-batch category-match weights and the
symmetric InfoNCE with weighted negatives (a weight ``w`` adds ``log w`` to its logit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


# ----- attribute level: mutual-information token weights -----------------------------------------------------
def token_mutual_information(token_features: torch.Tensor, bank: torch.Tensor, scale: float | torch.Tensor):
    """``I_t = log K - H(softmax_j(scale <e_t, v_j>))`` for normalised token features ``[..., D]`` and a
    normalised reference bank ``[K, D]``; returns ``[...]`` in ``[0, log K]`` (see the module docstring)."""
    logits = float(scale) * token_features @ bank.T
    logp = torch.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return (math.log(bank.shape[0]) - entropy).clamp_min(0.0)


def mi_token_weights(
    token_features: torch.Tensor, content_mask: torch.Tensor, bank: torch.Tensor | None, scale
) -> torch.Tensor:
    """Per-token weights ``[B, L]`` summing to 1 over each caption's word tokens (uniform without a bank)."""
    mask = content_mask.to(token_features.dtype)
    if bank is None or bank.shape[0] < 2:
        weights = mask
    else:
        weights = token_mutual_information(token_features, bank, scale) * mask + 1e-6 * mask
    return weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)


# ----- category level: weighted contrastive loss ---------------------------------------------------------------
def category_match_weights(
    categories: Sequence[Sequence[str]],
    families: Sequence[Sequence[str]],
    *,
    same_family: float = 1.5,
    same_category: float = 1.0,
) -> torch.Tensor:
    """``[B, B]`` weights of in-batch pairs: ``same_category`` when both hold the same categories,
    ``same_family`` when the families match but the fine categories do not, else 1 (diagonal 1)."""
    cats = [tuple(sorted(c)) for c in categories]
    fams = [tuple(sorted(f)) for f in families]
    n = len(cats)
    weights = torch.ones(n, n)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            if cats[i] == cats[j]:
                weights[i, j] = same_category
            elif fams[i] == fams[j]:
                weights[i, j] = same_family
    return weights


def category_aware_contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    scale: torch.Tensor | float,
    *,
    match_weights: torch.Tensor | None = None,
    negative_features: torch.Tensor | None = None,
    negative_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over matched pairs ``[B, D]`` with weighted negatives.

    ``match_weights`` ``[B, B]`` weight in-batch negatives (row: image, column: text; the transpose is used
    text->image); ``negative_features`` ``[B, K, D]`` are extra captions of each image's hard negatives with
    ``negative_weights`` ``[B, K]`` (image->text only). Weight ``w`` enters as ``+log w`` in the log-sum-exp.
    """
    logits = float(scale) * image_features @ text_features.T
    n = logits.shape[0]
    positive = logits.diagonal()
    log_w = torch.zeros_like(logits)
    if match_weights is not None:
        log_w = torch.log(match_weights.to(logits)).masked_fill(torch.eye(n, dtype=torch.bool), 0.0)
    i2t = logits + log_w
    if negative_features is not None and negative_features.shape[1] > 0:
        neg = float(scale) * torch.einsum("bd,bkd->bk", image_features, negative_features)
        if negative_weights is not None:
            neg = neg + torch.log(negative_weights.to(neg))
        i2t = torch.cat([i2t, neg], dim=1)
    loss_i2t = (torch.logsumexp(i2t, dim=1) - positive).mean()
    loss_t2i = (torch.logsumexp(logits.T + log_w.T, dim=1) - positive).mean()
    return 0.5 * (loss_i2t + loss_t2i)
