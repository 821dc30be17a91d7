"""Scenes of the procedural world: sampling, splits and held-out combinations.

A scene is a pure function of its integer seed.  :func:`sample_scene` draws the content (background,
1-4 objects with category, colour, size, texture and position) on a fixed 64-pixel layout grid, writes
the language (caption, referring expressions, hard negatives) and renders the image at the requested
size and style.  Design choices:

* **Content vs. rendering.**  Content depends only on the seed (and split), never on ``size`` or
  ``style``: the same seed gives the same objects, caption and (up to scaling) masks in every style and
  at 64 or 128 pixels.  Styles are pure domain shifts for adaptation experiments.  One exception keeps
  captions true: a style that paints the background far lighter or darker than its colour (neon: near
  black; sketch: charcoal as grey paper) has the caption name the colour drawn (``charcoal``,
  ``light grey``; :func:`~.render.background_name_as_drawn`). ``Scene.background`` keeps the content's.
* **Occlusion.**  Objects are drawn in list order; later ones cover earlier ones.  Masks hold the
  *visible* pixels only.  Placement is rejection-sampled so that every object keeps at least
  :data:`MIN_VISIBLE` of its area visible and no two centres are closer than a quarter of the two
  objects' summed template sides (an object that cannot be placed is dropped).
* **Splits** are disjoint seed ranges (:data:`SPLITS`); the split is inferred from the seed.
* **Held-out combinations.**  A (category, colour) pair is held out when
  ``zlib.crc32(f"{category}|{colour}") % 10 == 0`` (about 10% of the pairs, fixed forever, listed in
  :data:`HELD_OUT_COMBINATIONS`).  Train, val and test scenes never contain one (colours are drawn from
  each category's allowed colours); every ``compositional`` scene contains exactly one (one object is
  drawn from the held-out list).  :func:`contains_held_out` checks a scene or object list.
* **Label noise.**  With ``noise_fraction`` > 0 a seeded coin (independent of the content) replaces the
  caption by the caption of another scene of the same split; the scene is flagged ``is_noisy``,
  ``noise_source`` names that scene's seed and ``clean_caption`` keeps the true caption.  Hard negatives
  and referring expressions always describe the true content (they derive from ``clean_caption``).
* **Referring expressions are unique by construction**: each one is built from the attributes (and at
  most one spatial relation to a uniquely described anchor) that match exactly its object among the
  scene's objects; :func:`~.captions.resolve` re-checks this.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field

import numpy as np

from .captions import (
    Caption,
    HardNegative,
    ReferringExpression,
    describe,
    hard_negatives,
    referring_expressions,
)
from .render import Placement, background_name_as_drawn, boxes_from_masks, masks_from_label, render, shape_template
from .vocabulary import (
    BACKGROUND_NAMES,
    BACKGROUNDS,
    BASE_SIZE,
    CATEGORY_IDS,
    CATEGORY_NAMES,
    COLOUR_IDS,
    COLOUR_NAMES,
    COLOURS,
    FAMILY_IDS,
    MAX_OBJECTS,
    POSITIONS,
    SIZE_NAMES,
    SIZES,
    STYLES,
    TEXTURES,
    family_of,
)

#: Disjoint seed ranges of the splits.
SPLITS: dict[str, range] = {
    "train": range(0, 1_000_000_000),
    "val": range(1_000_000_000, 1_010_000_000),
    "test": range(2_000_000_000, 2_010_000_000),
    "compositional": range(3_000_000_000, 3_010_000_000),
}
#: Fraction of an object's area that must stay visible after later objects are drawn over it.
MIN_VISIBLE = 0.6
HELD_OUT_BUCKETS = 10


def is_held_out(category: str, colour: str) -> bool:
    """Whether the (category, colour) pair is reserved for the compositional split."""
    return zlib.crc32(f"{category}|{colour}".encode()) % HELD_OUT_BUCKETS == 0


#: The held-out (category, colour) pairs, in vocabulary order.
HELD_OUT_COMBINATIONS: tuple[tuple[str, str], ...] = tuple(
    (c, k) for c in CATEGORY_NAMES for k in COLOUR_NAMES if is_held_out(c, k)
)
_ALLOWED_COLOURS: dict[str, tuple[str, ...]] = {
    c: tuple(k for k in COLOUR_NAMES if not is_held_out(c, k)) for c in CATEGORY_NAMES
}


def split_seed_range(split: str) -> range:
    """The seeds that belong to ``split`` (``train``, ``val``, ``test`` or ``compositional``)."""
    try:
        return SPLITS[split]
    except KeyError:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLITS)}") from None


def split_of_seed(seed: int) -> str:
    """The split whose seed range holds ``seed`` (``ValueError`` if none does)."""
    for name, r in SPLITS.items():
        if seed in r:
            return name
    raise ValueError(f"seed {seed} lies in no split's range")


def _unit(tag: str, seed: int) -> float:
    """A deterministic uniform number in [0, 1) for (tag, seed), independent of the content stream."""
    return zlib.crc32(f"{tag}:{seed}".encode()) / 2**32


@dataclass(frozen=True)
class WorldObject:
    """One object: its content attributes and its template's top-left corner on the 64-pixel grid."""

    category: str
    colour: str
    size: str
    texture: str
    x0: int
    y0: int

    @property
    def family(self) -> str:
        return family_of(self.category)

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLOURS[self.colour]

    @property
    def side(self) -> int:
        """Template side in pixels on the 64-pixel grid."""
        return SIZES[self.size]

    @property
    def center(self) -> tuple[float, float]:
        """Centre of the shape's template on the 64-pixel grid (used by positions and relations)."""
        half = self.side / 2
        return (self.x0 + half, self.y0 + half)

    @property
    def position(self) -> str:
        """The 3x3 cell of the image holding the centre (one of :data:`~.vocabulary.POSITIONS`)."""
        cx, cy = self.center
        col = min(2, int(cx * 3 // BASE_SIZE))
        row = min(2, int(cy * 3 // BASE_SIZE))
        return POSITIONS[3 * row + col]

    @property
    def placement(self) -> Placement:
        return Placement(self.category, self.size, self.texture, self.x0, self.y0)

    def attributes(self) -> dict[str, str]:
        """The object's describable attributes by name."""
        return {
            "category": self.category,
            "family": self.family,
            "colour": self.colour,
            "size": self.size,
            "texture": self.texture,
            "position": self.position,
        }


@dataclass
class Scene:
    """A rendered scene with everything known about it.

    ``image`` is uint8 (H, W, 3); ``masks`` (N, H, W) bool are the visible pixels of each object;
    ``boxes`` (N, 4) int are ``x0, y0, x1, y1`` of the masks with inclusive maxima.  ``referring`` lists
    ``(object_index, text)`` pairs (structured forms in ``referring_specs``); ``hard_negatives`` are
    category-swapped versions of ``clean_caption`` (details in ``hard_negative_edits``).
    """

    seed: int
    split: str
    size: int
    style: str
    background: str
    objects: list[WorldObject]
    image: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    caption: str
    clean_caption: str
    caption_spans: tuple[tuple[int, int], ...]
    referring_specs: list[ReferringExpression]
    hard_negative_edits: list[HardNegative]
    is_noisy: bool = False
    noise_source: int | None = None
    label: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int8), repr=False)

    @property
    def referring(self) -> list[tuple[int, str]]:
        return [(r.object_index, r.text) for r in self.referring_specs]

    @property
    def hard_negatives(self) -> list[str]:
        return [h.text for h in self.hard_negative_edits]

    @property
    def attributes(self) -> list[dict[str, str]]:
        return [o.attributes() for o in self.objects]

    @property
    def category_ids(self) -> list[int]:
        return [CATEGORY_IDS[o.category] for o in self.objects]

    @property
    def family_ids(self) -> list[int]:
        return [FAMILY_IDS[o.family] for o in self.objects]

    @property
    def colour_ids(self) -> list[int]:
        return [COLOUR_IDS[o.colour] for o in self.objects]

    @property
    def background_rgb(self) -> tuple[int, int, int]:
        return BACKGROUNDS[self.background]

    @property
    def held_out(self) -> bool:
        return contains_held_out(self)


def contains_held_out(scene_or_objects: Scene | list[WorldObject]) -> bool:
    """Whether a scene (or object list) contains a held-out (category, colour) combination."""
    objects = scene_or_objects.objects if isinstance(scene_or_objects, Scene) else scene_or_objects
    return any(is_held_out(o.category, o.colour) for o in objects)


def _sample_specs(rng: random.Random, split: str) -> list[tuple[str, str, str, str]]:
    n = rng.randint(1, MAX_OBJECTS)
    forced = rng.randrange(n) if split == "compositional" else -1
    specs = []
    for k in range(n):
        if k == forced:
            category, colour = rng.choice(HELD_OUT_COMBINATIONS)
        else:
            category = rng.choice(CATEGORY_NAMES)
            colour = rng.choice(_ALLOWED_COLOURS[category])
        specs.append((category, colour, rng.choice(SIZE_NAMES), rng.choice(TEXTURES)))
    return specs


def sample_layout(rng: random.Random, split: str) -> tuple[str, list[WorldObject]]:
    """Draw the background and the placed objects (occlusion-checked on the 64-pixel grid)."""
    background = rng.choice(BACKGROUND_NAMES)
    specs = _sample_specs(rng, split)
    forced = next((k for k, s in enumerate(specs) if is_held_out(s[0], s[1])), -1)
    forced = forced if split == "compositional" else -1
    label = np.full((BASE_SIZE, BASE_SIZE), -1, dtype=np.int8)
    placed: list[WorldObject] = []
    areas: list[int] = []
    visible: list[int] = []
    for k, (category, colour, size, texture) in enumerate(specs):
        mask = shape_template(category, size, 1)
        side = mask.shape[0]
        for _attempt in range(30):
            x0 = rng.randint(1, BASE_SIZE - 1 - side)
            y0 = rng.randint(1, BASE_SIZE - 1 - side)
            cx, cy = x0 + side / 2, y0 + side / 2
            if any(
                (cx - q.x0 - q.side / 2) ** 2 + (cy - q.y0 - q.side / 2) ** 2 < ((side + q.side) / 4) ** 2
                for q in placed
            ):
                continue  # no near-concentric stacks: centres at least a quarter of the summed sides apart
            under = label[y0 : y0 + side, x0 : x0 + side][mask]
            if placed:
                covered = np.bincount(under.astype(np.intp) + 1, minlength=len(placed) + 1)[1:]
                after = [v - int(c) for v, c in zip(visible, covered, strict=True)]
                if any(a < MIN_VISIBLE * ar for a, ar in zip(after, areas, strict=True)):
                    continue
                visible = after
            break
        else:
            if k != forced:
                continue  # drop an object that does not fit
            # the held-out object must appear: start over with it alone (always fits)
            label[:] = -1
            placed, areas, visible = [], [], []
            x0 = rng.randint(1, BASE_SIZE - 1 - side)
            y0 = rng.randint(1, BASE_SIZE - 1 - side)
        label[y0 : y0 + side, x0 : x0 + side][mask] = len(placed)
        area = int(mask.sum())
        placed.append(WorldObject(category, colour, size, texture, x0, y0))
        areas.append(area)
        visible.append(area)
    return background, placed


def _content(seed: int, split: str, style: str = "flat") -> tuple[random.Random, str, list[WorldObject], Caption]:
    rng = random.Random(seed)
    background, objects = sample_layout(rng, split)
    # the caption names the background as the style draws it (neon: near black); the random draws stay the same
    caption = describe(objects, background_name_as_drawn(background, style, BACKGROUNDS), rng)
    return rng, background, objects, caption


def sample_scene(
    seed: int,
    *,
    size: int = 64,
    style: str = "flat",
    split: str | None = None,
    noise_fraction: float = 0.0,
) -> Scene:
    """Generate the scene of ``seed``: content, language and rendering (deterministic).

    ``split`` defaults to the split whose seed range holds ``seed``; passing a split the seed does not
    belong to is an error.  ``size`` is 64 or 128, ``style`` one of :data:`~.vocabulary.STYLES`, and
    ``noise_fraction`` the probability that the caption is replaced by another scene's (flagged).
    """
    inferred = split_of_seed(seed)
    if split is not None and split != inferred:
        raise ValueError(f"seed {seed} belongs to split {inferred!r}, not {split!r}")
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
    split = inferred
    rng, background, objects, caption = _content(seed, split, style)
    referring = referring_expressions(objects, rng)
    negatives = hard_negatives(caption, objects, rng)

    text, is_noisy, source = caption.text, False, None
    if noise_fraction > 0.0 and _unit("noise", seed) < noise_fraction:
        r = SPLITS[split]
        source = r.start + zlib.crc32(f"noise-source:{seed}".encode()) % len(r)
        if source == seed:
            source = r.start + (source - r.start + 1) % len(r)
        text, is_noisy = _content(source, split, style)[3].text, True

    image, label = render(
        [o.placement for o in objects],
        [o.rgb for o in objects],
        BACKGROUNDS[background],
        size=size,
        style=style,
    )
    masks = masks_from_label(label, len(objects))
    return Scene(
        seed=seed,
        split=split,
        size=size,
        style=style,
        background=background,
        objects=objects,
        image=image,
        masks=masks,
        boxes=boxes_from_masks(masks),
        caption=text,
        clean_caption=caption.text,
        caption_spans=caption.spans,
        referring_specs=referring,
        hard_negative_edits=negatives,
        is_noisy=is_noisy,
        noise_source=source,
        label=label,
    )


__all__ = [
    "HELD_OUT_COMBINATIONS",
    "MIN_VISIBLE",
    "SPLITS",
    "Scene",
    "WorldObject",
    "contains_held_out",
    "is_held_out",
    "sample_layout",
    "sample_scene",
    "split_of_seed",
    "split_seed_range",
]
