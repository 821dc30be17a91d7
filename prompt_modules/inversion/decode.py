"""From a predicted prompt embedding to text: keywords, nearest bank prompts and a composed prompt.

* keywords: the vocabulary head's sigmoid scores after temperature/bias calibration (Platt scaling fitted on
  held-out data, :func:`fit_calibration`);
* prompt bank: texts with their MiniLM embeddings; nearest prompts by exact cosine search (default), or through
  :class:`IVFIndex` (inverted file: a k-means coarse quantiser, search in the ``nprobe`` nearest lists) for
  banks of millions;
* composed prompt: the nearest bank prompt followed by the confident keywords it does not already contain
  (keywords alone when there is no bank).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .dakl import kmeans
from .vocabulary import words


def fit_calibration(logits: torch.Tensor, labels: torch.Tensor, iters: int = 100) -> tuple[float, float]:
    """Platt scaling shared by all words: ``sigmoid(a * logit + b)`` minimising BCE on held-out data."""
    a = torch.ones((), requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([a, b], lr=0.5, max_iter=iters)
    logits, labels = logits.detach().float(), labels.detach().float()

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(a * logits + b, labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return float(a.detach()), float(b.detach())


def keywords(
    probs: torch.Tensor, vocab_words: Sequence[str], *, top_k: int = 10, threshold: float = 0.0
) -> list[list[tuple[str, float]]]:
    """Per row of calibrated probabilities ``[B, V]``: up to ``top_k`` ``(word, score)`` with score >= threshold."""
    out = []
    k = min(top_k, probs.shape[-1])
    for row in probs:
        values, index = row.topk(k) if k else (row[:0], row[:0].long())
        out.append([(vocab_words[int(i)], float(v)) for v, i in zip(values, index, strict=True) if v >= threshold])
    return out


class IVFIndex:
    """Inverted-file index for cosine search: k-means coarse quantiser, exact search inside ``nprobe`` lists."""

    def __init__(self, embeddings: torch.Tensor, n_lists: int | None = None, seed: int = 0) -> None:
        x = F.normalize(embeddings.float(), dim=-1)
        n = x.shape[0]
        n_lists = n_lists or max(1, int(n**0.5))
        sample = x[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: max(n_lists * 40, 1)]]
        self.centroids = kmeans(sample, n_lists, seed=seed)
        assign = torch.cat([(x[i : i + 65536] @ self.centroids.T).argmax(1) for i in range(0, n, 65536)])
        order = torch.argsort(assign, stable=True)
        self.ids = order
        self.vectors = x[order]
        counts = torch.bincount(assign, minlength=self.centroids.shape[0])
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])

    def search(self, queries: torch.Tensor, k: int = 5, nprobe: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores [B, k], ids [B, k])``; ids are -1 (score -inf) where fewer than k candidates were seen."""
        q = F.normalize(queries.float(), dim=-1)
        probe = (q @ self.centroids.T).topk(min(nprobe, self.centroids.shape[0]), dim=1).indices
        scores = torch.full((q.shape[0], k), float("-inf"))
        ids = torch.full((q.shape[0], k), -1, dtype=torch.long)
        for row in range(q.shape[0]):
            spans = [torch.arange(self.offsets[c], self.offsets[c + 1]) for c in probe[row].tolist()]
            cand = torch.cat(spans)
            if cand.numel() == 0:
                continue
            sims = self.vectors[cand] @ q[row]
            kk = min(k, cand.numel())
            v, i = sims.topk(kk)
            scores[row, :kk], ids[row, :kk] = v, self.ids[cand[i]]
        return scores, ids


@dataclass
class PromptBank:
    """Prompt texts and their (normalised) embeddings; exact search unless an :class:`IVFIndex` is built."""

    texts: list[str]
    embeddings: torch.Tensor
    index: IVFIndex | None = None

    def __post_init__(self) -> None:
        if len(self.texts) != self.embeddings.shape[0]:
            raise ValueError(f"{len(self.texts)} texts but {self.embeddings.shape[0]} embeddings")
        self.embeddings = F.normalize(self.embeddings.float(), dim=-1)

    @classmethod
    def from_texts(cls, texts: Sequence[str], embedder, ivf_lists: int | None = None) -> PromptBank:
        texts = list(dict.fromkeys(texts))  # unique, order kept
        bank = cls(texts, embedder(texts))
        if ivf_lists:
            bank.build_index(ivf_lists)
        return bank

    def build_index(self, n_lists: int | None = None) -> None:
        self.index = IVFIndex(self.embeddings, n_lists)

    def search(self, queries: torch.Tensor, k: int = 5, nprobe: int = 8) -> list[list[tuple[str, float]]]:
        """Nearest prompts ``[(text, cosine), ...]`` per query row."""
        if self.index is not None:
            scores, ids = self.index.search(queries, k, nprobe)
        else:
            sims = F.normalize(queries.float(), dim=-1) @ self.embeddings.T
            scores, ids = sims.topk(min(k, sims.shape[1]), dim=1)
        return [
            [(self.texts[int(i)], float(s)) for s, i in zip(srow, irow, strict=True) if int(i) >= 0]
            for srow, irow in zip(scores, ids, strict=True)
        ]


def confident_keywords(kw: Sequence[tuple[str, float]], threshold: float = 0.5) -> list[str]:
    """The keywords scoring at least ``threshold``, or the best three when none does."""
    return [w for w, s in kw if s >= threshold] or [w for w, _ in kw[:3]]


def compose_prompt(nearest: str | None, kw: Sequence[tuple[str, float]], threshold: float = 0.5) -> str:
    """Nearest bank prompt plus the confident keywords it lacks; the keywords alone without a bank prompt."""
    confident = confident_keywords(kw, threshold)
    if nearest:
        present = set(words(nearest))
        extra = [w for w in confident if w not in present]
        return nearest if not extra else f"{nearest.rstrip('. ')}, {', '.join(extra)}"
    return ", ".join(confident)
