"""The procedural world: scenes, captions, masks and splits (issue 3).

A deterministic, seed-addressed generator of small vision-language scenes whose content is known
exactly: 1-4 shapes from 27 fine-grained categories in 7 confusable families, 20 named colours, sizes,
textures and positions, rendered at 64 or 128 pixels in four styles, with captions, per-object masks and
boxes, unique referring expressions, category-swap hard negatives, optional label noise, disjoint seed
splits and a compositional split of held-out (category, colour) pairs.  Pure numpy/PIL/torch.

Quick start::

    from promptweave.prompt_modules.world import WorldDataset, sample_scene
    scene = sample_scene(0)                      # Scene: image, masks, boxes, caption, ...
    ds = WorldDataset("train", n=10_000, style="mixed")
"""

from .captions import (
    NUM_HARD_NEGATIVES,
    RELATIONS,
    Caption,
    HardNegative,
    ReferringExpression,
    describe,
    hard_negatives,
    matching,
    referring_expressions,
    relation_holds,
    resolve,
)
from .dataset import (
    MIXED,
    WorldDataset,
    collate_world,
    render_batch,
    scene_to_item,
    scenes_per_second,
    style_for_seed,
)
from .render import Placement, paint, rasterise, render, shape_template, texture_template
from .scene import (
    HELD_OUT_COMBINATIONS,
    SPLITS,
    Scene,
    WorldObject,
    contains_held_out,
    is_held_out,
    sample_layout,
    sample_scene,
    split_of_seed,
    split_seed_range,
)
from .vocabulary import (
    BACKGROUNDS,
    CATEGORIES,
    CATEGORY_IDS,
    CATEGORY_NAMES,
    COLOUR_IDS,
    COLOUR_NAMES,
    COLOURS,
    FAMILIES,
    FAMILY_IDS,
    FAMILY_MEMBERS,
    IMAGE_SIZES,
    MAX_OBJECTS,
    POSITIONS,
    SIZES,
    STYLE_PHRASES,
    STYLES,
    TEXTURES,
    Category,
    family_of,
    siblings,
)

__all__ = [
    "BACKGROUNDS",
    "CATEGORIES",
    "CATEGORY_IDS",
    "CATEGORY_NAMES",
    "COLOURS",
    "COLOUR_IDS",
    "COLOUR_NAMES",
    "FAMILIES",
    "FAMILY_IDS",
    "FAMILY_MEMBERS",
    "HELD_OUT_COMBINATIONS",
    "IMAGE_SIZES",
    "MAX_OBJECTS",
    "MIXED",
    "NUM_HARD_NEGATIVES",
    "POSITIONS",
    "RELATIONS",
    "SIZES",
    "SPLITS",
    "STYLE_PHRASES",
    "STYLES",
    "TEXTURES",
    "Caption",
    "Category",
    "HardNegative",
    "Placement",
    "ReferringExpression",
    "Scene",
    "WorldDataset",
    "WorldObject",
    "collate_world",
    "contains_held_out",
    "describe",
    "family_of",
    "hard_negatives",
    "is_held_out",
    "matching",
    "paint",
    "rasterise",
    "referring_expressions",
    "relation_holds",
    "render",
    "render_batch",
    "resolve",
    "sample_layout",
    "sample_scene",
    "scene_to_item",
    "scenes_per_second",
    "shape_template",
    "siblings",
    "split_of_seed",
    "split_seed_range",
    "style_for_seed",
    "texture_template",
]
