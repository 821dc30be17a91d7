"""Curriculum learning against noisy image/prompt pairs (Croitoru et al. 2023, sec. 3.3).

A first model is trained on all data; each training sample's cosine score is recorded after every epoch.
The scores are averaged with weights that grow with the epoch (we use weight ``e`` for epoch ``e = 1..E``: late
epochs reflect what the model really learned, early ones mostly its initialisation), sorted from easy (high
cosine) to hard, and a fresh model is trained on the easiest 1/4, then 1/3, then 1/2, then all of the data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def weighted_scores(history: torch.Tensor) -> torch.Tensor:
    """``history`` ``[E, N]`` per-epoch cosine scores -> ``[N]`` weighted mean (epoch e weighs e)."""
    if history.ndim != 2 or history.shape[0] < 1:
        raise ValueError(f"history must be [epochs, samples], got {tuple(history.shape)}")
    w = torch.arange(1, history.shape[0] + 1, dtype=torch.float32)
    return (history.float() * w[:, None]).sum(0) / w.sum()


def curriculum_subsets(
    scores: torch.Tensor, fractions: Sequence[float] = (1 / 4, 1 / 3, 1 / 2, 1.0)
) -> list[torch.Tensor]:
    """Index sets of the easiest ``fraction`` of samples for each stage (each a superset of the one before)."""
    order = torch.argsort(scores, descending=True, stable=True)
    n = scores.numel()
    return [order[: max(1, round(f * n))] for f in fractions]
