"""Training pairs: a folder of ``name.png`` + ``name.txt`` files, and targets/labels for prompts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ..core.data import list_images, load_image
from .targets import TextEmbedder
from .vocabulary import Vocabulary


def load_pair_folder(folder: str | os.PathLike[str], size: int = 64) -> tuple[torch.Tensor, list[str]]:
    """Images ``[N, 3, size, size]`` (RGB, short side resized and centre-cropped by
    :func:`~promptweave.prompt_modules.core.data.load_image`) and their prompts from ``folder``.

    Every image needs a ``.txt`` file of the same stem holding its prompt; images without one are skipped;
    a folder without any pair is an error.
    """
    images, texts = [], []
    for path in list_images(folder):
        caption = path.with_suffix(".txt")
        if not caption.is_file():
            continue
        text = caption.read_text(encoding="utf-8", errors="replace").strip()
        if not text:
            continue
        images.append(load_image(path, size))
        texts.append(text)
    if not images:
        raise ValueError(f"dataset folder {Path(folder)} has no image.png + image.txt pairs")
    return torch.stack(images), texts


def prompt_targets(
    texts: Sequence[str], vocabulary: Vocabulary, embedder: TextEmbedder
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(MiniLM embeddings [N, 384], multi-hot vocabulary labels [N, V])`` of the prompts."""
    return embedder(list(texts)).float(), vocabulary.encode(list(texts))
