"""Torch access to the world: a map-style dataset, a batch renderer and a throughput benchmark.

Items are plain dicts of tensors and strings.  Per-object fields are padded to
:data:`~.vocabulary.MAX_OBJECTS` (ids and boxes with -1, masks with False) so that items stack; use
:func:`collate_world` as the ``DataLoader`` collate function to keep string lists intact.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .captions import NUM_HARD_NEGATIVES
from .scene import Scene, sample_scene, split_of_seed, split_seed_range
from .vocabulary import (
    COLOUR_IDS,
    FAMILY_IDS,
    MAX_OBJECTS,
    SIZE_IDS,
    STYLE_IDS,
    STYLES,
    TEXTURE_IDS,
)

#: Pass as ``style`` to draw each scene's style from ``styles`` (deterministically by seed).
MIXED = "mixed"


def style_for_seed(seed: int, styles: Sequence[str] = STYLES) -> str:
    """The style a mixed-style dataset uses for ``seed`` (independent of the scene's content)."""
    return styles[zlib.crc32(f"style:{seed}".encode()) % len(styles)]


def _object_arrays(scene: Scene) -> dict[str, np.ndarray]:
    """Per-object ids padded to MAX_OBJECTS with -1, plus padded boxes."""
    n = len(scene.objects)
    out = {k: np.full(MAX_OBJECTS, -1, dtype=np.int64) for k in ("category", "family", "colour", "size", "texture")}
    for i, o in enumerate(scene.objects):
        out["category"][i] = scene.category_ids[i]
        out["family"][i] = FAMILY_IDS[o.family]
        out["colour"][i] = COLOUR_IDS[o.colour]
        out["size"][i] = SIZE_IDS[o.size]
        out["texture"][i] = TEXTURE_IDS[o.texture]
    boxes = np.full((MAX_OBJECTS, 4), -1, dtype=np.int64)
    boxes[:n] = scene.boxes
    out["boxes"] = boxes
    return out


def scene_to_item(scene: Scene, include_image: bool = True) -> dict[str, Any]:
    """The dict form of a scene (``image`` float [3, H, W] in 0..1, left out if not ``include_image``).

    Keys: ``image``, ``caption``, ``clean_caption``, ``hard_negatives`` (list of
    :data:`~.captions.NUM_HARD_NEGATIVES` strings), ``ref_text``/``ref_index``/``ref_mask`` (the first
    referring expression; empty text, -1 and an empty mask when there is none), ``masks`` bool
    [MAX_OBJECTS, H, W], ``boxes`` long [MAX_OBJECTS, 4], ``category_ids``, ``family_ids``,
    ``colour_ids``, ``size_ids``, ``texture_ids`` long [MAX_OBJECTS], ``n_objects``, ``is_noisy``,
    ``held_out``, ``style``, ``style_id``, ``seed``.
    """
    h = scene.size
    arrays = _object_arrays(scene)
    masks = torch.zeros((MAX_OBJECTS, h, h), dtype=torch.bool)
    masks[: len(scene.objects)] = torch.from_numpy(scene.masks)
    ref_index, ref_text = scene.referring[0] if scene.referring else (-1, "")
    ref_mask = masks[ref_index] if ref_index >= 0 else torch.zeros((h, h), dtype=torch.bool)
    item: dict[str, Any] = {}
    if include_image:
        item["image"] = torch.from_numpy(scene.image).permute(2, 0, 1).float().div_(255.0)
    item.update(
        {
            "caption": scene.caption,
            "clean_caption": scene.clean_caption,
            "hard_negatives": list(scene.hard_negatives),
            "ref_text": ref_text,
            "ref_index": ref_index,
            "ref_mask": ref_mask,
            "masks": masks,
            "boxes": torch.from_numpy(arrays["boxes"]),
            "category_ids": torch.from_numpy(arrays["category"]),
            "family_ids": torch.from_numpy(arrays["family"]),
            "colour_ids": torch.from_numpy(arrays["colour"]),
            "size_ids": torch.from_numpy(arrays["size"]),
            "texture_ids": torch.from_numpy(arrays["texture"]),
            "n_objects": len(scene.objects),
            "is_noisy": scene.is_noisy,
            "held_out": scene.held_out,
            "style": scene.style,
            "style_id": STYLE_IDS[scene.style],
            "seed": scene.seed,
        }
    )
    return item


def collate_world(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, turn numbers into tensors and keep strings (and string lists) as lists."""
    out: dict[str, Any] = {}
    for key, first in batch[0].items():
        values = [item[key] for item in batch]
        if isinstance(first, torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(first, bool):
            out[key] = torch.tensor(values, dtype=torch.bool)
        elif isinstance(first, int):
            out[key] = torch.tensor(values, dtype=torch.long)
        else:
            out[key] = values
    return out


class WorldDataset(Dataset):
    """``n`` scenes of ``split`` (seeds ``split_seed_range(split).start + base_seed + i``).

    ``style`` is one of :data:`~.vocabulary.STYLES`, or ``"mixed"`` to pick each scene's style from
    ``styles`` (default: all styles) by seed.  Scenes are generated on the fly (no caching), so the
    dataset is cheap to create and safe to use from several DataLoader workers.
    """

    def __init__(
        self,
        split: str = "train",
        n: int = 10_000,
        size: int = 64,
        style: str = "flat",
        styles: Sequence[str] | None = None,
        noise_fraction: float = 0.0,
        base_seed: int = 0,
    ) -> None:
        r = split_seed_range(split)
        if base_seed < 0 or base_seed + n > len(r):
            raise ValueError(f"seeds base_seed..base_seed+n must fit in the {split!r} range of {len(r)} seeds")
        self.styles = tuple(styles) if styles is not None else STYLES
        for s in (*self.styles, *(() if style == MIXED else (style,))):
            if s not in STYLES:
                raise ValueError(f"unknown style {s!r}; expected one of {STYLES} or {MIXED!r}")
        self.split, self.n, self.size, self.style = split, n, size, style
        self.noise_fraction, self.base_seed = noise_fraction, base_seed
        self.start = r.start + base_seed

    def __len__(self) -> int:
        return self.n

    def seed(self, index: int) -> int:
        if not 0 <= index < self.n:
            raise IndexError(index)
        return self.start + index

    def style_of(self, seed: int) -> str:
        return style_for_seed(seed, self.styles) if self.style == MIXED else self.style

    def scene(self, index: int) -> Scene:
        """The full :class:`~.scene.Scene` behind item ``index``."""
        seed = self.seed(index)
        return sample_scene(
            seed, size=self.size, style=self.style_of(seed), split=self.split, noise_fraction=self.noise_fraction
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        return scene_to_item(self.scene(index))


def render_batch(
    seeds: Sequence[int],
    *,
    size: int = 64,
    style: str | Sequence[str] = "flat",
    noise_fraction: float = 0.0,
) -> dict[str, Any]:
    """Render the scenes of ``seeds`` straight into one batch (as :func:`collate_world` would return).

    ``style`` is one style, ``"mixed"`` (by seed over all styles) or one style per seed.  Images are
    written into a single uint8 buffer and converted to float once.  ``scenes`` holds the Scene objects.
    """
    seeds = list(seeds)
    if isinstance(style, str):
        styles = [style_for_seed(s) if style == MIXED else style for s in seeds]
    else:
        styles = list(style)
        if len(styles) != len(seeds):
            raise ValueError("one style per seed is needed")
    buf = np.empty((len(seeds), size, size, 3), dtype=np.uint8)
    scenes = []
    for k, (seed, st) in enumerate(zip(seeds, styles, strict=True)):
        sc = sample_scene(seed, size=size, style=st, split=split_of_seed(seed), noise_fraction=noise_fraction)
        buf[k] = sc.image
        scenes.append(sc)
    images = torch.from_numpy(buf).permute(0, 3, 1, 2).float().div_(255.0)
    batch = {"image": images, **collate_world([scene_to_item(sc, include_image=False) for sc in scenes])}
    batch["scenes"] = scenes
    return batch


def scenes_per_second(n: int = 2000, size: int = 64, style: str = "flat", threads: int = 1) -> float:
    """Benchmark: scenes generated per second by :func:`~.scene.sample_scene` on ``threads`` torch threads
    (all of content, language, rendering, masks and boxes)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        sample_scene(0, size=size, style=style)  # warm the template caches
        t0 = time.perf_counter()
        for seed in range(n):
            sample_scene(seed, size=size, style=style)
        return n / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)


__all__ = [
    "MIXED",
    "NUM_HARD_NEGATIVES",
    "WorldDataset",
    "collate_world",
    "render_batch",
    "scene_to_item",
    "scenes_per_second",
    "split_seed_range",
    "style_for_seed",
]
