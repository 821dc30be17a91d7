"""RPP training data: POMP's class-subset sampling (:func:`sample_class_subset`) and a class folder from user files
(:class:`FolderClassSource`, a :class:`~..core.data.ClassSource`). The procedural world's class sources are in
:mod:`promptweave.prompt_modules.world.sources` (``WorldClassSource``, ``world_classes``)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

from ..core.data import ClassBatch, list_images, load_image


def sample_class_subset(
    labels: torch.Tensor, n_classes: int, k: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """POMP's local contrast: the batch's classes plus random others, ``max(k, #batch classes)`` in all.

    Returns ``(subset, local_labels)``: class ids ``[K]`` (batch classes first, in sorted order) and the batch
    labels as indices into ``subset``. ``k <= 0`` or ``k >= n_classes`` keeps all classes.
    """
    labels = labels.cpu()
    if k <= 0 or k >= n_classes:
        return torch.arange(n_classes), labels
    present = labels.unique()
    missing = k - len(present)
    if missing > 0:
        mask = torch.ones(n_classes, dtype=torch.bool)
        mask[present] = False
        others = mask.nonzero().squeeze(1)
        picks = others[torch.randperm(len(others), generator=generator)[:missing]]
        subset = torch.cat([present, picks])
    else:
        subset = present
    lookup = torch.full((n_classes,), -1, dtype=torch.long)
    lookup[subset] = torch.arange(len(subset))
    return subset, lookup[labels]



class FolderClassSource:
    """A folder with one sub-folder of images per class; the class name is the sub-folder's name with ``_``
    and ``-`` read as spaces. Batches draw images uniformly."""

    def __init__(self, root: str | os.PathLike[str], size: int = 64) -> None:
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"dataset folder {root} does not exist")
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        items: list[tuple[Path, int]] = []
        names: list[str] = []
        for folder in folders:
            images = list_images(folder)
            if not images:
                continue
            items += [(p, len(names)) for p in images]
            names.append(folder.name.replace("_", " ").replace("-", " ").strip())
        if len(names) < 2:
            raise ValueError(
                f"{root} holds {len(names)} class folder(s) with images; need at least 2 sub-folders "
                "(one per class, named after the class) with images in them"
            )
        self.class_names, self.items, self.size = names, items, size

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, seed: int, step: int, batch_size: int) -> ClassBatch:
        rng = random.Random(seed * 1_000_003 + step)
        chosen = [self.items[rng.randrange(len(self.items))] for _ in range(batch_size)]
        images = torch.stack([load_image(p, self.size) for p, _ in chosen])
        return ClassBatch(images, torch.tensor([c for _, c in chosen], dtype=torch.long))

