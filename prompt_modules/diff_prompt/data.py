"""Grounding data for Diff-Prompt from the user's files and tensors.

A source returns :class:`~..core.data.GroundingBatch` es (images, target masks, normalised boxes, one referring
expression per image) for ``(seed, step)`` (:class:`~..core.data.GroundingSource`):

- :class:`TensorGroundingSource` - tensors, e.g. from a ComfyUI graph;
- :class:`FolderGroundingSource` - a folder of ``name.png`` + ``name_mask.png`` + ``name.txt``.

The procedural world provides its own source (:mod:`promptweave.prompt_modules.world.sources`); this package
never imports the world.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

import torch

from ..core.data import (
    IMAGE_EXTENSIONS,
    GroundingBatch,
    boxes_from_masks,
    load_image,
    load_mask,
    resize_masks,
    square_images,
)

MASK_SUFFIX = "_mask"


class TensorGroundingSource:
    """Samples from tensors: images ``[N, 3, H, W]`` (0..1), masks ``[N, H, W]`` of the same size, expressions.

    Raises ``ValueError`` for a mask of another size than its image, a count mismatch or an empty expression.
    """

    def __init__(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        texts: Sequence[str],
        size: int = 64,
        names: Sequence[str] | None = None,
    ) -> None:
        texts = list(texts)
        names = list(names) if names is not None else [f"sample {i}" for i in range(len(texts))]
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
            raise ValueError(f"images must be a non-empty [N, 3, H, W] batch, got {tuple(images.shape)}")
        if masks.ndim == 2:
            masks = masks.unsqueeze(0)
        if masks.ndim != 3:
            raise ValueError(f"masks must be [N, H, W], got {tuple(masks.shape)}")
        if tuple(masks.shape[-2:]) != tuple(images.shape[-2:]):
            raise ValueError(
                f"the masks are {masks.shape[-1]}x{masks.shape[-2]} but the images {images.shape[-1]}x"
                f"{images.shape[-2]}: each mask must have its image's size"
            )
        if not (masks.shape[0] == images.shape[0] == len(texts)):
            raise ValueError(
                f"{images.shape[0]} images, {masks.shape[0]} masks and {len(texts)} expressions: give one mask and "
                "one expression per image"
            )
        empty = [names[i] for i, t in enumerate(texts) if not t.strip()]
        if empty:
            raise ValueError(f"empty referring expression for {empty[:5]}")
        self.images = square_images(images, size)
        self.masks = resize_masks(masks.float(), size)
        if bool((self.masks.flatten(1).sum(1) == 0).any()):
            bad = [names[i] for i in torch.nonzero(self.masks.flatten(1).sum(1) == 0).flatten().tolist()]
            raise ValueError(f"empty mask for {bad[:5]}: every sample needs a non-empty mask")
        self.boxes = boxes_from_masks(self.masks)
        self.texts = [t.strip() for t in texts]

    def __len__(self) -> int:
        return len(self.texts)

    def batch(self, seed: int, step: int, batch_size: int) -> GroundingBatch:
        rng = random.Random(seed * 1_000_003 + step)
        n = len(self.texts)
        picks = rng.sample(range(n), batch_size) if batch_size <= n else [rng.randrange(n) for _ in range(batch_size)]
        idx = torch.tensor(picks)
        return GroundingBatch(self.images[idx], self.masks[idx], self.boxes[idx], [self.texts[i] for i in picks])


class FolderGroundingSource(TensorGroundingSource):
    """A folder of ``name.png`` (image) + ``name_mask.png`` (white = the object) + ``name.txt`` (the referring
    expression, first non-empty line). Images may have any size; each mask must have its image's size."""

    def __init__(self, folder: str | os.PathLike[str], size: int = 64) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"dataset folder {folder} does not exist")
        images = sorted(
            p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.stem.endswith(MASK_SUFFIX)
        )
        if not images:
            raise ValueError(f"{folder} holds no images (expected name.png + name{MASK_SUFFIX}.png + name.txt)")
        rows_i, rows_m, texts = [], [], []
        for path in images:
            masks = [path.with_name(path.stem + MASK_SUFFIX + ext) for ext in IMAGE_EXTENSIONS]
            mask_path = next((m for m in masks if m.is_file()), None)
            if mask_path is None:
                raise ValueError(f"{path.name} has no mask: add {path.stem}{MASK_SUFFIX}.png next to it")
            text_path = path.with_suffix(".txt")
            if not text_path.is_file():
                raise ValueError(f"{path.name} has no referring expression: add {text_path.name}")
            lines = [ln.strip() for ln in text_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            if not lines:
                raise ValueError(f"{text_path.name} is empty: write the referring expression in it")
            image, mask = load_image(path), load_mask(mask_path)  # both at the file's own size
            if tuple(mask.shape) != tuple(image.shape[-2:]):
                raise ValueError(
                    f"the mask {mask_path.name} is {mask.shape[1]}x{mask.shape[0]} but its image {path.name} is "
                    f"{image.shape[2]}x{image.shape[1]}: each mask must have its image's size"
                )
            rows_i.append(square_images(image[None], size)[0])
            rows_m.append(resize_masks(mask[None], size)[0])
            texts.append(lines[0])
        super().__init__(torch.stack(rows_i), torch.stack(rows_m), texts, size=size, names=[p.name for p in images])


__all__ = ["MASK_SUFFIX", "FolderGroundingSource", "TensorGroundingSource"]
