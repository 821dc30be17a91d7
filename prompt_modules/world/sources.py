"""Data sources on the procedural world for the methods' trainers.

The methods read batches through the ``Source`` protocols of :mod:`..core.data` and never import the world; the
world provides sources for them here. Each batch depends on ``(seed, step)`` only (deterministic, resumable).
"""

from __future__ import annotations

import json
import os
import random
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..core.artifacts import read_safetensors, save_safetensors_atomic
from ..core.data import ClassBatch, GroundingBatch, RetrievalBatch
from ..dual_prompt.config import DualPromptConfig
from .dataset import render_batch
from .render import render
from .scene import Scene, WorldObject, is_held_out, sample_scene, split_seed_range
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
from .worldgen import DEFAULT_GUIDANCE, WorldGen


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
        generated: GeneratedGroundingPool | None = None,
        generated_fraction: float = 0.5,
        same_family: bool = False,
    ) -> None:
        """``roundtrip`` (e.g. a generator's encode-then-decode) replaces a ``roundtrip_fraction`` of each training
        batch's images by their round trip: the masks stay aligned while the images take on the generator's look,
        so that a grounder trained on rendered scenes also grounds generated ones.

        ``generated`` (a :class:`GeneratedGroundingPool` of WorldGen images with colour-segmented masks) replaces
        ``round(generated_fraction * batch_size)`` rows of each batch (rows and pool samples drawn from
        ``(seed, step)``) by pool samples; the other rows are the rendered batch's, unchanged.

        ``same_family`` keeps only referents that share their shape family with another object of the scene, as
        RefCOCO keeps only images with two or more objects of the referent's category (Yu et al. 2016, sec. 3):
        the expression must then tell a five-point star from a six-point star, not a star from a circle. A scene
        without such a referent is replaced by the next scene of the split that has one."""
        if not 0.0 <= roundtrip_fraction <= 1.0:
            raise ValueError(f"roundtrip_fraction must be in [0, 1], got {roundtrip_fraction}")
        if not 0.0 <= generated_fraction <= 1.0:
            raise ValueError(f"generated_fraction must be in [0, 1], got {generated_fraction}")
        if generated is not None:
            if len(generated) == 0:
                raise ValueError("the generated pool is empty")
            if generated.size != size:
                raise ValueError(f"the generated pool's images are {generated.size} pixels, the source's {size}")
        self.range = split_seed_range(split)
        self.size, self.style = size, style
        self.roundtrip, self.roundtrip_fraction = roundtrip, roundtrip_fraction
        self.generated, self.generated_fraction = generated, generated_fraction
        self.same_family = same_family

    def seeds(self, seed: int, step: int, batch_size: int) -> list[int]:
        base = (seed * 100_003_331 + step * batch_size) % (len(self.range) - batch_size)
        return [self.range.start + base + k for k in range(batch_size)]

    def batch(self, seed: int, step: int, batch_size: int) -> GroundingBatch:
        data = self.from_seeds(self.seeds(seed, step, batch_size), pick_seed=seed * 1_000_003 + step)
        data = self._roundtrip(data, seed, step, batch_size)
        if self.generated is None or self.generated_fraction == 0.0:
            return data
        rows, picks = self.generated_rows(seed, step, batch_size)
        if not len(rows):
            return data
        sample = self.generated.take(picks)
        images, masks, boxes, texts = data.images.clone(), data.masks.clone(), data.boxes.clone(), list(data.texts)
        images[rows], masks[rows], boxes[rows] = sample.images, sample.masks, sample.boxes
        for row, text in zip(rows.tolist(), sample.texts, strict=True):
            texts[row] = text
        return GroundingBatch(images, masks, boxes, texts)

    def generated_rows(self, seed: int, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows of batch ``(seed, step)`` taken from the generated pool and the pool indices they take."""
        if self.generated is None:
            raise ValueError("this source has no generated pool")
        k = round(self.generated_fraction * batch_size)
        g = torch.Generator().manual_seed((seed * 1_000_003 + step) * 2 + 1)  # apart from the round trip's draw
        rows = torch.randperm(batch_size, generator=g)[:k].sort().values
        return rows, torch.randint(len(self.generated), (k,), generator=g)

    def _roundtrip(self, data: GroundingBatch, seed: int, step: int, batch_size: int) -> GroundingBatch:
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

    def substitute_seed(self, seed: int) -> int:
        """The scene tried after ``seed`` when it has no usable referent: the next one, or with ``same_family`` a
        far one (a hashed jump), so that neighbouring seeds of one batch do not all land on the same scene."""
        step = 1 if not self.same_family else 1 + (seed * 2_654_435_761) % 1_000_003
        return self.range.start + (seed + step - self.range.start) % len(self.range)

    def options(self, scene: Scene) -> list[tuple[int, str]]:
        """The ``(object index, expression)`` pairs of ``scene`` this source may sample."""
        return same_family_referring(scene) if self.same_family else scene.referring

    def from_seeds(self, seeds: Sequence[int], pick_seed: int = 0, prefer_held_out: bool = False) -> GroundingBatch:
        """The batch of these scenes (the expression of each is drawn with ``pick_seed``; with
        ``prefer_held_out`` an object of a held-out category-colour pair is chosen where there is one)."""
        seeds = list(seeds)
        data = render_batch(seeds, size=self.size, style=self.style)
        images, scenes = data["image"], list(data["scenes"])
        for k, scene in enumerate(scenes):
            probe = seeds[k]
            while not self.options(scene):  # no usable referent (rare unless same_family): another scene that has one
                probe = self.substitute_seed(probe)
                substitute = render_batch([probe], size=self.size, style=self.style)
                scene, images[k] = substitute["scenes"][0], substitute["image"][0]
            scenes[k] = scene
        rng = random.Random(pick_seed)
        masks, boxes, texts = [], [], []
        for scene in scenes:
            options = self.options(scene)
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


def same_family_referring(scene: Scene) -> list[tuple[int, str]]:
    """The referring expressions of ``scene`` whose referent shares its shape family with another of its objects."""
    families = [o.family for o in scene.objects]
    return [(i, text) for i, text in scene.referring if families.count(families[i]) > 1]


def evaluation_set(split: str, n: int, size: int = 64, same_family: bool = False) -> GroundingBatch:
    """The first ``n`` scenes of ``split`` with one expression each (fixed for every seed); on the compositional
    split the expression refers to an object of a held-out category-colour pair where one is describable.
    ``same_family``: the first ``n`` scenes with a referent that has a same-family distractor
    (:class:`WorldGroundingSource`)."""
    source = WorldGroundingSource(split, size=size, same_family=same_family)
    seeds = iter(source.range)
    if same_family:
        chosen = []
        while len(chosen) < n:
            seed = next(seeds)
            if source.options(sample_scene(seed, size=size, style=source.style)):
                chosen.append(seed)
    else:
        chosen = [next(seeds) for _ in range(n)]
    return source.from_seeds(chosen, pick_seed=12345, prefer_held_out=split == "compositional")


# ----- generated grounding samples (Diff-Prompt on WorldGen's images) ---------------------------------------------
#: Least RGB distance (Euclidean, 0..255 per channel) between the named object's colour and every other colour of its
#: scene (the other objects', the background's, and the generated image's border colour) for a generated sample.
#: WorldGen draws a colour only roughly (blurred edges, shifted hues), so near pairs of the palette must not meet:
#: 90 keeps red/crimson (50), olive/brown (45), orange/gold (58), gold/yellow (65), navy/charcoal (66),
#: pink/light grey (75), green/teal (84), maroon/brown (87) and gold/lime (89) apart; the next pair is 92 away.
MIN_COLOUR_SEPARATION = 90.0
#: A pixel of the mask is at most this far from the object's colour (and nearer to it than to any other colour of
#: the scene): a drawn colour may stray this far, a blend of two other colours at an edge seldom lands this near.
MAX_PIXEL_DISTANCE = 80.0
#: Fewer mask pixels than this and the generated sample is skipped (the object was not drawn).
MIN_MASK_PIXELS = 8
#: The mask's area over the rendered object's visible area must lie in this range, else the sample is skipped
#: (WorldGen drew the colour as background, several times, or only as an edge).
AREA_RATIO_RANGE = (0.25, 4.0)
#: The mask is the largest 8-connected piece of the colour's pixels; when it holds less than this fraction of them
#: the sample is skipped (the colour is scattered over several blobs: which one is the object is unknown).
MIN_LARGEST_PIECE = 0.75
#: At least this fraction of the mask must lie in 3x3 squares of it (:func:`square_opening`), else the sample is
#: skipped: the colour is only the blend along the edge of a shape of other colours (an outline), not a shape.
MIN_SOLID_FRACTION = 0.6
#: Skip reasons counted by :func:`generate_grounding_pool`.
SKIP_REASONS = ("no_unique_colour", "border_colour", "tiny", "scattered", "thin", "area")


def border_colour(image: torch.Tensor) -> tuple[float, float, float]:
    """The median RGB (0..255) of an image's outermost ring of pixels ``image [3, H, W]`` in 0..255: the background
    WorldGen actually drew, which can differ from the caption's (or the caption names none)."""
    ring = torch.cat([image[:, 0], image[:, -1], image[:, 1:-1, 0], image[:, 1:-1, -1]], dim=1)
    return tuple(float(v) for v in ring.float().median(dim=1).values)


def colour_mask(
    image: torch.Tensor,
    target: Sequence[float],
    others: Sequence[Sequence[float]],
    max_distance: float = MAX_PIXEL_DISTANCE,
    opening: bool = True,
) -> torch.Tensor:
    """Colour segmentation: the pixels of ``image`` ``[3, H, W]`` (uint8, or float in 0..1) nearer to ``target``
    (RGB 0..255) than to every colour of ``others`` and within ``max_distance`` of it, as bool ``[H, W]``.

    With ``opening`` (an opening by reconstruction) only the 8-connected pieces that hold a full 3x3 square are kept,
    whole: where two other colours blend at an edge (a blue shape on white) the blend can be near the target
    (violet) along a line one or two pixels thin, which goes, while a drawn shape keeps its thin tips."""
    pixels = image.float() * (255.0 if image.is_floating_point() else 1.0)
    colours = torch.tensor([list(target), *[list(c) for c in others]], dtype=torch.float32)
    distance = (pixels.permute(1, 2, 0)[:, :, None, :] - colours).norm(dim=-1)  # [H, W, 1 + len(others)]
    mask = (distance.argmin(dim=-1) == 0) & (distance[..., 0] <= max_distance)
    if opening:
        m = mask.float()[None, None]
        kept = square_opening(mask).float()[None, None]
        while True:  # grow it back inside the mask: the whole pieces that hold a core
            grown = F.max_pool2d(kept, 3, stride=1, padding=1) * m
            if torch.equal(grown, kept):
                break
            kept = grown
        mask = kept[0, 0] > 0.5
    return mask


def square_opening(mask: torch.Tensor) -> torch.Tensor:
    """The morphological opening of a bool mask ``[H, W]`` by a 3x3 square: the pixels of the 3x3 squares that fit
    in it (outside the image counts as in the mask)."""
    m = mask.float()[None, None]
    core = -F.max_pool2d(-m, 3, stride=1, padding=1)
    return (F.max_pool2d(core, 3, stride=1, padding=1) * m)[0, 0] > 0.5


def largest_piece(mask: torch.Tensor) -> torch.Tensor:
    """The largest 8-connected piece of a bool mask ``[H, W]`` (empty for an empty mask)."""
    if not mask.any():
        return mask.clone()
    h, w = mask.shape
    ids = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, 1, h, w) * mask
    while True:  # propagate the largest id through each piece
        grown = F.max_pool2d(ids, 3, stride=1, padding=1) * mask
        if torch.equal(grown, ids):
            break
        ids = grown
    labels = ids.view(-1).long()
    counts = torch.bincount(labels, minlength=h * w + 1)
    counts[0] = 0
    return (ids[0, 0] == float(counts.argmax())) & mask


def colour_separation(scene: Scene, index: int) -> float:
    """The RGB distance from object ``index``'s colour to the nearest other colour of the scene (other objects
    and the background)."""
    target = np.array(scene.objects[index].rgb, dtype=float)
    others = [o.rgb for k, o in enumerate(scene.objects) if k != index] + [scene.background_rgb]
    return float(min(np.linalg.norm(target - np.array(c, dtype=float)) for c in others))


def unique_colour_referents(scene: Scene, min_separation: float = MIN_COLOUR_SEPARATION) -> list[tuple[int, str]]:
    """The ``(object index, referring expression)`` pairs of ``scene`` whose object's colour is unique in it: at least
    ``min_separation`` (:data:`MIN_COLOUR_SEPARATION`) from every other object's colour and the background's, so that
    colour segmentation finds the object in a generated image of the scene."""
    return [(i, t) for i, t in scene.referring if colour_separation(scene, i) >= min_separation]


def box_of_mask(mask: torch.Tensor) -> torch.Tensor:
    """The normalised box ``x0/s, y0/s, (x1+1)/s, (y1+1)/s`` of a non-empty mask ``[s, s]`` (as ``from_seeds``)."""
    ys, xs = mask.nonzero(as_tuple=True)
    s = mask.shape[-1]
    return torch.tensor([int(xs.min()) / s, int(ys.min()) / s, (int(xs.max()) + 1) / s, (int(ys.max()) + 1) / s])


@dataclass
class GeneratedGroundingPool:
    """Generated grounding samples (Diff-Prompt on WorldGen's own images): ``images`` uint8 ``[N, 3, S, S]``,
    ``masks`` bool ``[N, S, S]`` (colour segmentation of the named object), ``boxes`` ``[N, 4]`` normalised as in
    :meth:`WorldGroundingSource.from_seeds`, one referring expression per sample, the scene seed of each sample and
    ``info`` (how the pool was made, with its skip counts)."""

    images: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor
    texts: list[str]
    scene_seeds: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def take(self, indices: torch.Tensor | Sequence[int]) -> GroundingBatch:
        """The samples ``indices`` as a :class:`GroundingBatch` (images float in 0..1, masks float in {0, 1})."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return GroundingBatch(self.images[idx].float() / 255.0, self.masks[idx].float(), self.boxes[idx].clone(),
                              [self.texts[int(i)] for i in idx])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the pool as safetensors (atomically; texts and info in the metadata as JSON)."""
        tensors = {"images": self.images, "masks": self.masks.to(torch.uint8), "boxes": self.boxes.float(),
                   "scene_seeds": self.scene_seeds.long()}
        metadata = {"promptweave.method": "generated_grounding_pool", "promptweave.texts": json.dumps(self.texts),
                    "promptweave.info": json.dumps(self.info)}
        return save_safetensors_atomic(path, tensors, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GeneratedGroundingPool:
        tensors, metadata = read_safetensors(path)
        if metadata.get("promptweave.method") != "generated_grounding_pool":
            raise ValueError(f"{path} is not a generated grounding pool")
        texts, info = json.loads(metadata["promptweave.texts"]), json.loads(metadata["promptweave.info"])
        return cls(tensors["images"], tensors["masks"].bool(), tensors["boxes"], texts, tensors["scene_seeds"], info)


def segment_generated(scene: Scene, index: int, image: torch.Tensor) -> tuple[torch.Tensor | None, str]:
    """The mask of object ``index`` of ``scene`` in a generated image of it (uint8 ``[3, S, S]``) and ``"kept"``, or
    ``None`` and the reason to skip it: :func:`colour_mask` of the object's colour against the other objects', the
    background's and the image's border colour (:func:`border_colour`), cut to its :func:`largest_piece`; skipped
    where the border colour is near the object's, the mask is under :data:`MIN_MASK_PIXELS`, holds under
    :data:`MIN_LARGEST_PIECE` of the colour's pixels, is thin (:data:`MIN_SOLID_FRACTION`) or lies outside
    :data:`AREA_RATIO_RANGE` of the rendered object's visible area."""
    target = scene.objects[index].rgb
    border = border_colour(image)
    if np.linalg.norm(np.array(target, dtype=float) - np.array(border)) < MIN_COLOUR_SEPARATION:
        return None, "border_colour"
    others = [o.rgb for k, o in enumerate(scene.objects) if k != index] + [scene.background_rgb, border]
    pixels = colour_mask(image, target, others)
    mask = largest_piece(pixels)
    area, rendered = int(mask.sum()), int(scene.masks[index].sum())
    if area < MIN_MASK_PIXELS:
        return None, "tiny"
    if area < MIN_LARGEST_PIECE * int(pixels.sum()):
        return None, "scattered"
    if int(square_opening(mask).sum()) < MIN_SOLID_FRACTION * area:
        return None, "thin"
    if not AREA_RATIO_RANGE[0] <= area / max(rendered, 1) <= AREA_RATIO_RANGE[1]:
        return None, "area"
    return mask, "kept"


def _noise(shape: Sequence[int], seed: int) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed))


def _pool_seed(seed: int, scene_seed: int, what: str) -> int:
    return zlib.crc32(f"generated-grounding|{what}|{seed}|{scene_seed}".encode())


@torch.no_grad()
def generate_grounding_pool(
    gen: WorldGen,
    vlm: Any,
    n: int,
    *,
    seed: int = 0,
    split: str = "train",
    steps: int = 20,
    guidance: float = DEFAULT_GUIDANCE,
    batch_size: int = 32,
    callback: Callable[[int, int, int], None] | None = None,
    max_scenes: int | None = None,
) -> GeneratedGroundingPool:
    """``n`` grounding samples on WorldGen's images of ``split`` scenes, for Diff-Prompt training on generated images.

    Scenes are taken in seed order from a start fixed by ``seed``. A scene is used when one of its objects has a
    unique colour (:func:`unique_colour_referents`; one is drawn per scene); WorldGen samples its caption (DDIM
    ``steps``, ``guidance``, starting noise seeded by ``(seed, scene seed)``: a sample does not depend on the batch
    it was generated in, up to float rounding) and :func:`segment_generated` finds the object's mask by its colour
    or skips the scene (skips counted by reason in ``info["skipped"]``; ``info["scenes_tried"]`` scenes gave the
    ``n`` samples).
    ``callback(kept, scenes, n)`` after each generated batch; ``ValueError`` when ``max_scenes`` (default ``50 * n +
    100``) scenes give fewer than ``n`` samples (a generator that draws no colour right)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    max_scenes = 50 * n + 100 if max_scenes is None else max_scenes
    r = split_seed_range(split)
    probe = r.start + zlib.crc32(f"generated-grounding|{seed}".encode()) % len(r)
    null = gen.null_context(vlm) if guidance != 1.0 else None
    size = gen.config.image_size
    images, masks, boxes, texts, seeds = [], [], [], [], []
    events: list[str] = []  # per scene in seed order: "kept" or its skip reason
    generated, last, t0 = 0, -1, time.perf_counter()
    while len(texts) < n:
        if len(events) >= max_scenes:
            raise ValueError(f"{len(events)} scenes gave only {len(texts)} of {n} generated grounding samples")
        chosen: list[tuple[int, Scene, int, str]] = []  # (position in events, scene, object index, expression)
        while len(chosen) < batch_size:
            scene = sample_scene(probe, size=size)
            probe = r.start + (probe + 1 - r.start) % len(r)
            options = unique_colour_referents(scene)
            events.append("" if options else "no_unique_colour")
            if options:
                index, text = options[random.Random(_pool_seed(seed, scene.seed, "pick")).randrange(len(options))]
                chosen.append((len(events) - 1, scene, index, text))
        noise = torch.stack([_noise(gen.config.latent_shape, _pool_seed(seed, c[1].seed, "z")) for c in chosen])
        context = gen.text_context([c[1].caption for c in chosen], vlm)
        latents = gen.sample_latents(context, null, steps=steps, guidance=guidance, noise=noise)
        batch = (gen.decode(latents).cpu() * 255.0).round().to(torch.uint8)
        generated += len(chosen)
        for (position, scene, index, text), image in zip(chosen, batch, strict=True):
            mask, events[position] = segment_generated(scene, index, image)
            if mask is not None and len(texts) < n:
                images.append(image)
                masks.append(mask)
                boxes.append(box_of_mask(mask))
                texts.append(text)
                seeds.append(scene.seed)
                last = position
        if callback is not None:
            callback(len(texts), len(events), n)
    events = events[: last + 1]  # the scenes the pool used (the last batch may have given more than needed)
    info = {"n": n, "seed": seed, "split": split, "steps": steps, "guidance": guidance, "image_size": size,
            "worldgen": gen.config.name, "scenes_tried": len(events),
            "skipped": {reason: events.count(reason) for reason in SKIP_REASONS}, "images_generated": generated,
            "seconds": round(time.perf_counter() - t0, 1),
            "min_colour_separation": MIN_COLOUR_SEPARATION, "max_pixel_distance": MAX_PIXEL_DISTANCE,
            "min_mask_pixels": MIN_MASK_PIXELS, "min_largest_piece": MIN_LARGEST_PIECE,
            "min_solid_fraction": MIN_SOLID_FRACTION, "area_ratio_range": list(AREA_RATIO_RANGE)}
    pool = GeneratedGroundingPool(torch.stack(images), torch.stack(masks), torch.stack(boxes), texts,
                                  torch.tensor(seeds, dtype=torch.long), info)
    pool.info["mean_mask_pixels"] = round(float(pool.masks.flatten(1).sum(1).float().mean()), 1)
    return pool


def load_or_generate_pool(
    path: str | os.PathLike[str],
    gen: WorldGen | Callable[[], WorldGen],
    vlm: Any,
    n: int,
    **kwargs: Any,
) -> GeneratedGroundingPool:
    """The pool at ``path`` if it was made with the same ``n`` and settings (seed, split, steps, guidance), else
    :func:`generate_grounding_pool` (``gen`` may be a loader, called only then), saved to ``path``."""
    path = Path(path)
    wanted = {"n": n, "seed": kwargs.get("seed", 0), "split": kwargs.get("split", "train"),
              "steps": kwargs.get("steps", 20), "guidance": kwargs.get("guidance", DEFAULT_GUIDANCE)}
    if path.is_file():
        pool = GeneratedGroundingPool.load(path)
        if all(pool.info.get(k) == v for k, v in wanted.items()):
            return pool
    model = gen if isinstance(gen, WorldGen) else gen()
    pool = generate_grounding_pool(model, vlm, n, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    pool.save(path)
    return pool
