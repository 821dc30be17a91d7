"""Data sources on the procedural world for the methods' trainers.

The methods read batches through the ``Source`` protocols of :mod:`..core.data` and never import the world; the
world provides sources for them here. Each batch depends on ``(seed, step)`` only (deterministic, resumable).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from ..core.data import ClassBatch, GroundingBatch, RetrievalBatch
from ..dual_prompt.config import DualPromptConfig
from .dataset import render_batch
from .render import render
from .scene import WorldObject, is_held_out, split_seed_range
from .vocabulary import (
    BACKGROUND_NAMES,
    BACKGROUNDS,
    BASE_SIZE,
    CATEGORY_NAMES,
    COLOUR_NAMES,
    SIZE_NAMES,
    SIZES,
    TEXTURES,
    family_of,
)


# ----- retrieval (DCAR dual prompts) ------------------------------------------------------------------------------
class WorldSource:
    """Scenes of the procedural world (train split by default) with their category-swap hard negatives
    (:class:`~..core.data.RetrievalSource` for :func:`~..dual_prompt.train.train_dual_prompt`)."""

    def __init__(self, split: str = "train", size: int = 64, style: str = "flat",
                 config: DualPromptConfig | None = None) -> None:
        self.range = split_seed_range(split)
        self.size, self.style = size, style
        self.config = config or DualPromptConfig()

    def seeds(self, seed: int, step: int, batch_size: int) -> list[int]:
        base = (seed * 100_003_331 + step * batch_size) % (len(self.range) - batch_size)
        return [self.range.start + base + k for k in range(batch_size)]

    def batch(self, seed: int, step: int, batch_size: int) -> RetrievalBatch:
        data = render_batch(self.seeds(seed, step, batch_size), size=self.size, style=self.style)
        cfg = self.config
        negatives, weights = [], []
        for scene in data["scenes"]:
            edits = scene.hard_negative_edits
            same = [h for h in edits if family_of(h.replacement) == family_of(h.original)]
            other = [h for h in edits if family_of(h.replacement) != family_of(h.original)]
            k = cfg.max_negatives
            # both views: sibling swaps first, then (at least) one swap to another family when there is one
            chosen = same[: max(k - 1, 0)] + other[:1] if other and k > 0 else same[:k]
            chosen += [h for h in edits if h not in chosen][: k - len(chosen)]
            negatives.append([h.text for h in chosen])
            weights.append([
                cfg.same_family_weight if family_of(h.replacement) == family_of(h.original)
                else cfg.other_family_weight
                for h in chosen
            ])
        k = min(len(w) for w in weights)
        return RetrievalBatch(
            images=data["image"],
            positives=list(data["caption"]),
            negatives=[n[:k] for n in negatives],
            negative_weights=torch.tensor([w[:k] for w in weights], dtype=torch.float32),
            categories=[tuple(o.category for o in s.objects) for s in data["scenes"]],
            families=[tuple(o.family for o in s.objects) for s in data["scenes"]],
        )


# ----- class label spaces (RPP prompt pretraining) ----------------------------------------------------------------
class WorldClass(NamedTuple):
    """A class of the world's label space: a fine category in one colour."""

    category: str
    colour: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.category}"


def world_classes(categories: Sequence[str] | None = None, *, held_out: bool | None = False) -> list[WorldClass]:
    """(category, colour) classes of the world in vocabulary order, for ``categories`` (default: all 27).

    ``held_out=False`` leaves out the compositional split's held-out pairs (the classes one may train on),
    ``True`` keeps only them, ``None`` keeps every pair.
    """
    chosen = CATEGORY_NAMES if categories is None else tuple(categories)
    unknown = [c for c in chosen if c not in CATEGORY_NAMES]
    if unknown:
        raise ValueError(f"unknown world categories {unknown}; known: {list(CATEGORY_NAMES)}")
    return [WorldClass(c, k) for c in chosen for k in COLOUR_NAMES if held_out is None or is_held_out(c, k) == held_out]


def render_class_sample(cls: WorldClass, sample_seed: int, size: int = 64, style: str = "flat") -> torch.Tensor:
    """One image ``[3, size, size]`` of a single object of class ``cls`` with a random (seeded) size, texture,
    position and background, rendered as the world renders scenes."""
    rng = random.Random(sample_seed)
    background = rng.choice(BACKGROUND_NAMES)
    size_name = rng.choice(SIZE_NAMES)
    side = SIZES[size_name]
    x0, y0 = rng.randint(1, BASE_SIZE - 1 - side), rng.randint(1, BASE_SIZE - 1 - side)
    obj = WorldObject(cls.category, cls.colour, size_name, rng.choice(TEXTURES), x0, y0)
    image, _ = render([obj.placement], [obj.rgb], BACKGROUNDS[background], size=size, style=style)
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


class WorldClassSource:
    """Single-object renders of world classes: ``shots`` fixed samples per class (the same for every seed),
    batches of uniformly drawn (class, shot) pairs derived from ``(seed, step)``
    (:class:`~..core.data.ClassSource` for :func:`~..pretraining.train.pretrain_prompts`)."""

    def __init__(
        self, classes: Sequence[WorldClass] | None = None, shots: int = 16, size: int = 64, style: str = "flat"
    ) -> None:
        self.classes = list(world_classes() if classes is None else classes)
        if len(self.classes) < 2:
            raise ValueError(f"need at least 2 classes, got {len(self.classes)}")
        if shots < 1:
            raise ValueError(f"shots must be >= 1, got {shots}")
        self.class_names = [c.name for c in self.classes]
        self.shots, self.size, self.style = shots, size, style

    def __len__(self) -> int:
        return len(self.classes) * self.shots

    def sample_seed(self, cls: WorldClass, shot: int) -> int:
        return zlib.crc32(f"rpp-shot|{cls.category}|{cls.colour}|{shot}".encode())

    def _draws(self, seed: int, step: int, batch_size: int) -> tuple[list[int], list[int]]:
        rng = random.Random(seed * 1_000_003 + step)
        labels = [rng.randrange(len(self.classes)) for _ in range(batch_size)]
        shots = [rng.randrange(self.shots) for _ in range(batch_size)]
        return labels, shots

    def batch_labels(self, seed: int, step: int, batch_size: int) -> torch.Tensor:
        """The labels of :meth:`batch`'s whole batch, without rendering any image."""
        return torch.tensor(self._draws(seed, step, batch_size)[0], dtype=torch.long)

    def batch_part(self, seed: int, step: int, batch_size: int, part: slice) -> ClassBatch:
        """The rows ``part`` of :meth:`batch` (the whole batch's draws, only these rows rendered)."""
        labels, shots = self._draws(seed, step, batch_size)
        labels, shots = labels[part], shots[part]
        images = torch.stack(
            [
                render_class_sample(self.classes[c], self.sample_seed(self.classes[c], s), self.size, self.style)
                for c, s in zip(labels, shots, strict=True)
            ]
        )
        return ClassBatch(images, torch.tensor(labels, dtype=torch.long))

    def batch(self, seed: int, step: int, batch_size: int) -> ClassBatch:
        return self.batch_part(seed, step, batch_size, slice(0, batch_size))


# ----- referring-expression grounding (Diff-Prompt) ---------------------------------------------------------------
class WorldGroundingSource:
    """Scenes of one world split; each sample is one object of a scene and its unique referring expression
    (:class:`~..core.data.GroundingSource` for :func:`~..diff_prompt.train.train_diff_prompt`)."""

    def __init__(
        self,
        split: str = "train",
        size: int = 64,
        style: str = "flat",
        *,
        roundtrip: Callable[[torch.Tensor], torch.Tensor] | None = None,
        roundtrip_fraction: float = 0.5,
    ) -> None:
        """``roundtrip`` (e.g. a generator's encode-then-decode) replaces a ``roundtrip_fraction`` of each training
        batch's images by their round trip: the masks stay aligned while the images take on the generator's look,
        so that a grounder trained on rendered scenes also grounds generated ones."""
        if not 0.0 <= roundtrip_fraction <= 1.0:
            raise ValueError(f"roundtrip_fraction must be in [0, 1], got {roundtrip_fraction}")
        self.range = split_seed_range(split)
        self.size, self.style = size, style
        self.roundtrip, self.roundtrip_fraction = roundtrip, roundtrip_fraction

    def seeds(self, seed: int, step: int, batch_size: int) -> list[int]:
        base = (seed * 100_003_331 + step * batch_size) % (len(self.range) - batch_size)
        return [self.range.start + base + k for k in range(batch_size)]

    def batch(self, seed: int, step: int, batch_size: int) -> GroundingBatch:
        data = self.from_seeds(self.seeds(seed, step, batch_size), pick_seed=seed * 1_000_003 + step)
        if self.roundtrip is None or self.roundtrip_fraction == 0.0:
            return data
        chosen = torch.rand(batch_size, generator=torch.Generator().manual_seed(seed * 1_000_003 + step))
        rows = (chosen < self.roundtrip_fraction).nonzero().flatten()
        if len(rows):
            images = data.images.clone()
            with torch.no_grad():
                images[rows] = self.roundtrip(images[rows]).to(images.dtype).cpu()
            data = GroundingBatch(images, data.masks, data.boxes, data.texts)
        return data

    def from_seeds(self, seeds: Sequence[int], pick_seed: int = 0, prefer_held_out: bool = False) -> GroundingBatch:
        """The batch of these scenes (the expression of each is drawn with ``pick_seed``; with
        ``prefer_held_out`` an object of a held-out category-colour pair is chosen where there is one)."""
        seeds = list(seeds)
        data = render_batch(seeds, size=self.size, style=self.style)
        images, scenes = data["image"], list(data["scenes"])
        for k, scene in enumerate(scenes):
            probe = seeds[k]
            while not scene.referring:  # rare: no object can be picked out uniquely; use the next scene that can
                probe = self.range.start + (probe + 1 - self.range.start) % len(self.range)
                substitute = render_batch([probe], size=self.size, style=self.style)
                scene, images[k] = substitute["scenes"][0], substitute["image"][0]
            scenes[k] = scene
        rng = random.Random(pick_seed)
        masks, boxes, texts = [], [], []
        for scene in scenes:
            options = scene.referring
            if prefer_held_out:
                held = [(i, t) for i, t in options if is_held_out(scene.objects[i].category, scene.objects[i].colour)]
                options = held or options
            index, text = options[rng.randrange(len(options))]
            masks.append(torch.from_numpy(scene.masks[index]).float())
            x0, y0, x1, y1 = (int(v) for v in scene.boxes[index])
            s = scene.size
            boxes.append(torch.tensor([x0 / s, y0 / s, (x1 + 1) / s, (y1 + 1) / s]))
            texts.append(text)
        return GroundingBatch(images, torch.stack(masks), torch.stack(boxes), texts)


def evaluation_set(split: str, n: int, size: int = 64) -> GroundingBatch:
    """The first ``n`` scenes of ``split`` with one expression each (fixed for every seed); on the compositional
    split the expression refers to an object of a held-out category-colour pair where one is describable."""
    start = split_seed_range(split).start
    return WorldGroundingSource(split, size=size).from_seeds(
        range(start, start + n), pick_seed=12345, prefer_held_out=split == "compositional"
    )
