"""Training pairs: a folder of ``name.png`` + ``name.txt`` files, and targets/labels for prompts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .targets import TextEmbedder
from .vocabulary import Vocabulary

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def load_pair_folder(folder: str | os.PathLike[str], size: int = 64) -> tuple[torch.Tensor, list[str]]:
    """Images ``[N, 3, size, size]`` (RGB, centre-cropped, resized) and their prompts from ``folder``.

    Every image needs a ``.txt`` file of the same stem holding its prompt; images without one are skipped;
    a folder without any pair is an error.
    """
    from PIL import Image

    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"dataset folder {root} does not exist")
    images, texts = [], []
    for path in sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        caption = path.with_suffix(".txt")
        if not caption.is_file():
            continue
        text = caption.read_text(encoding="utf-8", errors="replace").strip()
        if not text:
            continue
        with Image.open(path) as im:
            im = im.convert("RGB")
            side = min(im.size)
            left, top = (im.width - side) // 2, (im.height - side) // 2
            im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
            images.append(np.asarray(im, dtype=np.uint8))
        texts.append(text)
    if not images:
        raise ValueError(f"dataset folder {root} has no image.png + image.txt pairs")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0, texts


def prompt_targets(
    texts: Sequence[str], vocabulary: Vocabulary, embedder: TextEmbedder
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(MiniLM embeddings [N, 384], multi-hot vocabulary labels [N, V])`` of the prompts."""
    return embedder(list(texts)).float(), vocabulary.encode(list(texts))
