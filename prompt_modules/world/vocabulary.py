"""The world's closed vocabulary: shape categories and their families, colours, textures, sizes, styles.

Everything the generator can put in a scene is listed here, with stable integer ids (the position in
each tuple), so that captions, labels and benchmarks all speak the same language.  Categories are
grouped into *families* of visually confusable shapes (a five-point star and a six-point star are both
stars); the families drive the fine-grained hard negatives.  Colours come with exact RGB values and
include deliberate near pairs (red/crimson/maroon, blue/navy, yellow/gold, purple/violet, ...).
"""

from __future__ import annotations

from typing import NamedTuple


class Category(NamedTuple):
    """A fine-grained shape category and the confusable family it belongs to."""

    name: str
    family: str


#: Fine-grained shape categories, grouped by family (the tuple order defines the category ids).
CATEGORIES: tuple[Category, ...] = (
    Category("five-point star", "star"),
    Category("six-point star", "star"),
    Category("four-point star", "star"),
    Category("burst", "star"),
    Category("square", "quadrilateral"),
    Category("diamond", "quadrilateral"),
    Category("rectangle", "quadrilateral"),
    Category("trapezoid", "quadrilateral"),
    Category("parallelogram", "quadrilateral"),
    Category("left arrow", "arrow"),
    Category("right arrow", "arrow"),
    Category("up arrow", "arrow"),
    Category("down arrow", "arrow"),
    Category("circle", "round"),
    Category("ellipse", "round"),
    Category("ring", "round"),
    Category("crescent", "round"),
    Category("triangle", "triangle"),
    Category("inverted triangle", "triangle"),
    Category("right-angled triangle", "triangle"),
    Category("plus", "cross"),
    Category("diagonal cross", "cross"),
    Category("latin cross", "cross"),
    Category("t-shape", "cross"),
    Category("pentagon", "polygon"),
    Category("hexagon", "polygon"),
    Category("octagon", "polygon"),
)

CATEGORY_NAMES: tuple[str, ...] = tuple(c.name for c in CATEGORIES)
CATEGORY_IDS: dict[str, int] = {name: i for i, name in enumerate(CATEGORY_NAMES)}

#: Family names, in order of first appearance in :data:`CATEGORIES` (defines the family ids).
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(c.family for c in CATEGORIES))
FAMILY_IDS: dict[str, int] = {name: i for i, name in enumerate(FAMILIES)}
FAMILY_MEMBERS: dict[str, tuple[str, ...]] = {
    fam: tuple(c.name for c in CATEGORIES if c.family == fam) for fam in FAMILIES
}
_FAMILY_OF: dict[str, str] = {c.name: c.family for c in CATEGORIES}

#: Named object colours with their exact RGB values (the dict order defines the colour ids).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "crimson": (200, 20, 70),
    "maroon": (128, 0, 0),
    "orange": (255, 140, 0),
    "gold": (215, 170, 30),
    "yellow": (250, 225, 30),
    "lime": (150, 230, 40),
    "green": (30, 140, 50),
    "olive": (120, 120, 20),
    "teal": (0, 128, 128),
    "cyan": (0, 215, 225),
    "sky blue": (110, 180, 240),
    "blue": (30, 60, 225),
    "navy": (20, 30, 110),
    "purple": (115, 40, 165),
    "violet": (175, 115, 235),
    "magenta": (225, 30, 195),
    "pink": (255, 150, 190),
    "brown": (135, 80, 35),
    "grey": (128, 128, 128),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
COLOUR_IDS: dict[str, int] = {name: i for i, name in enumerate(COLOUR_NAMES)}

#: Background colours (names never clash with object colours, so captions stay unambiguous).
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "cream": (245, 238, 215),
    "light grey": (205, 205, 205),
    "pale blue": (215, 230, 245),
    "pale green": (220, 240, 215),
    "charcoal": (45, 45, 50),
}
BACKGROUND_NAMES: tuple[str, ...] = tuple(BACKGROUNDS)

#: Surface textures; non-solid textures paint a pattern in a lighter/darker shade of the object colour.
TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted", "checkered")
TEXTURE_IDS: dict[str, int] = {name: i for i, name in enumerate(TEXTURES)}

#: Object sizes and the side of the object's square template in pixels at 64x64 (scaled for 128).
SIZES: dict[str, int] = {"small": 14, "medium": 20, "large": 28}
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)
SIZE_IDS: dict[str, int] = {name: i for i, name in enumerate(SIZE_NAMES)}

#: Coarse positions: the 3x3 cell of the image that holds the object's centre (row-major).
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip

#: Render styles. "flat" is the default (source) domain; the others change rendering only.
STYLES: tuple[str, ...] = ("flat", "sketch", "mosaic", "neon")
STYLE_IDS: dict[str, int] = {name: i for i, name in enumerate(STYLES)}
#: How a caption names a render style (WorldCLIP learns these phrases, so that a domain can be named in text).
STYLE_PHRASES: dict[str, str] = {
    "flat": "a flat illustration",
    "sketch": "an outline sketch",
    "mosaic": "a pixel mosaic",
    "neon": "a neon glow picture",
}

#: Image sizes the renderer supports (the layout is always computed on the 64-pixel grid).
IMAGE_SIZES: tuple[int, ...] = (64, 128)
BASE_SIZE = 64
MAX_OBJECTS = 4


def family_of(category: str) -> str:
    """The family a fine-grained category belongs to (``KeyError`` for unknown names)."""
    return _FAMILY_OF[category]


def siblings(category: str) -> tuple[str, ...]:
    """The other members of ``category``'s family (its most confusable alternatives)."""
    return tuple(c for c in FAMILY_MEMBERS[_FAMILY_OF[category]] if c != category)
