"""Web-like captions of world scenes: the noisy pretraining text of issue 37 ("a world with headroom").

CLIP is pretrained on alt-text scraped from the web (Radford et al. 2021, sec. 2.2), and the learned-prompt
papers adapt it to fine-grained data it saw little of: FDRD's fine categories, RefCOCO's expressions,
ImageNet-21K's long tail. The world's own captions name every object's fine category, colour, size and
texture, so a WorldCLIP trained on them already knows every downstream label. A web caption of the same scene
(:func:`web_caption`) is written the way alt-text is:

- the shape is named by its coarse family word far more often than by its fine category, and the fine names
  follow a long tail (:func:`fine_name_probability`: a few are common, most are rare);
- only some objects and some attributes are mentioned, colours mostly by a basic colour word
  (:data:`BASIC_COLOUR`: "crimson" and "maroon" are both "red"; ``fine_colour_rate`` of them by the fine
  name), never size or texture words that single an object out;
- only some render styles are ever named (:attr:`WebCaptionConfig.named_styles`);
- a share of captions belongs to another scene or to nothing at all (wrong or unrelated text).

Everything is drawn from a seeded ``random.Random``, so a caption is a function of the scene and the seed.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

from .captions import SIZE_WORDS, TEXTURE_ADJECTIVES
from .scene import Scene, WorldObject
from .vocabulary import CATEGORY_NAMES, COLOUR_NAMES, FAMILIES, family_of

#: How alt-text names each family when it does not name the fine category.
FAMILY_WORDS: dict[str, str] = {
    "star": "star",
    "quadrilateral": "block",
    "arrow": "arrow",
    "round": "round shape",
    "triangle": "triangle",
    "cross": "cross",
    "polygon": "polygon",
}
assert set(FAMILY_WORDS) == set(FAMILIES)

#: The basic colour word alt-text uses for each of the world's colours (the fine names never appear).
BASIC_COLOUR: dict[str, str] = {
    "red": "red", "crimson": "red", "maroon": "red",
    "orange": "orange", "gold": "yellow", "yellow": "yellow",
    "lime": "green", "green": "green", "olive": "green", "teal": "green",
    "cyan": "blue", "sky blue": "blue", "blue": "blue", "navy": "blue",
    "purple": "purple", "violet": "purple", "magenta": "pink", "pink": "pink",
    "brown": "brown", "grey": "grey",
}  # fmt: skip
assert set(BASIC_COLOUR) == set(COLOUR_NAMES)
BASIC_COLOUR_NAMES: tuple[str, ...] = tuple(dict.fromkeys(BASIC_COLOUR.values()))

_STYLE_WORDS: dict[str, tuple[str, ...]] = {
    "flat": ("flat illustration", "flat design", "vector art"),
    "sketch": ("outline sketch", "line drawing", "sketch"),
    "mosaic": ("pixel mosaic", "pixel art"),
    "neon": ("neon glow picture", "neon sign"),
}
_PREFIXES = ("", "", "", "image of ", "picture of ", "clip art ", "free vector ", "stock image: ", "icon: ")
_SUFFIXES = ("", "", "", " icon", " clipart", " - free download", " #design", " wallpaper", " png")
_UNRELATED = (
    "click here to see more", "image may contain: text", "untitled", "screenshot", "thumbnail",
    "best price guaranteed", "my new favourite", "download now", "logo design ideas", "page 3 of 7",
)  # fmt: skip


@dataclass(frozen=True)
class WebCaptionConfig:
    """How web-like the captions are (defaults: the shipped ``worldclip-web``'s pretraining text).

    ``fine_rate`` is the probability that the most common fine category is named by its fine name; the others
    fall off as ``fine_rate / (1 + rank) ** tail_exponent`` over a fixed random ranking of the categories
    (``rank_seed``). ``mention_object`` is the chance that each object past the first is mentioned;
    ``colour_rate`` that a mentioned object's colour is given, and ``fine_colour_rate`` that a given colour is
    its fine name ("crimson") rather than its basic word ("red"); ``attribute_rate`` that a mentioned object's
    size word is given and, separately, its texture word ("big", "striped"); ``style_rate`` that a caption of a
    scene drawn in one of ``named_styles`` names it. ``wrong_rate`` of the captions describe another scene,
    ``unrelated_rate`` are unrelated text.
    """

    fine_rate: float = 0.5
    tail_exponent: float = 1.0
    rank_seed: int = 37
    mention_object: float = 0.5
    colour_rate: float = 0.6
    fine_colour_rate: float = 0.0
    attribute_rate: float = 0.0
    style_rate: float = 0.4
    named_styles: tuple[str, ...] = ("flat", "sketch")
    wrong_rate: float = 0.15
    unrelated_rate: float = 0.05

    def mean_fine_name_probability(self) -> float:
        """The fine-name rate averaged over the categories (0.066 for the defaults)."""
        return sum(self.fine_name_probability(c) for c in CATEGORY_NAMES) / len(CATEGORY_NAMES)

    def fine_name_probability(self, category: str) -> float:
        """How often a caption names ``category`` by its fine name rather than its family word."""
        ranking = list(CATEGORY_NAMES)
        random.Random(self.rank_seed).shuffle(ranking)
        return self.fine_rate / (1 + ranking.index(category)) ** self.tail_exponent


def _object_words(obj: WorldObject, config: WebCaptionConfig, rng: random.Random) -> str:
    category, colour = obj.category, obj.colour
    shape = category if rng.random() < config.fine_name_probability(category) else FAMILY_WORDS[family_of(category)]
    if rng.random() < config.colour_rate:
        fine = config.fine_colour_rate > 0 and rng.random() < config.fine_colour_rate
        shape = f"{colour if fine else BASIC_COLOUR[colour]} {shape}"
    if config.attribute_rate > 0:  # no draw at the default, so the shipped source's captions stay as they were
        if rng.random() < config.attribute_rate:
            shape = f"{rng.choice(TEXTURE_ADJECTIVES[obj.texture])} {shape}"
        if rng.random() < config.attribute_rate:
            shape = f"{rng.choice(SIZE_WORDS[obj.size])} {shape}"
    return shape


def describe_web(scene: Scene, config: WebCaptionConfig, rng: random.Random) -> str:
    """A partial, alt-text-like description of ``scene`` (no wrong or unrelated text; see :func:`web_caption`)."""
    objects = list(scene.objects)
    first, rest = objects[0], objects[1:]
    words = [_object_words(first, config, rng)]
    words += [_object_words(o, config, rng) for o in rest if rng.random() < config.mention_object]
    text = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    if scene.style in config.named_styles and rng.random() < config.style_rate:
        style = rng.choice(_STYLE_WORDS[scene.style])
        text = f"{text}, {style}" if rng.random() < 0.5 else f"{style} of {text}"
    return f"{rng.choice(_PREFIXES)}{text}{rng.choice(_SUFFIXES)}"


def web_caption(scene: Scene, other: Scene, config: WebCaptionConfig, seed: int) -> str:
    """The web caption of ``scene`` under caption seed ``seed``: :func:`describe_web` of the scene, or (with
    probability ``wrong_rate``) of ``other``, or (``unrelated_rate``) unrelated text."""
    rng = random.Random(zlib.crc32(f"web:{seed}:{scene.seed}".encode()))
    draw = rng.random()
    if draw < config.unrelated_rate:
        return rng.choice(_UNRELATED)
    if draw < config.unrelated_rate + config.wrong_rate:
        return describe_web(other, config, rng)
    return describe_web(scene, config, rng)


def basic_colour_ids(scene: Scene) -> list[int]:
    """Ids in :data:`BASIC_COLOUR_NAMES` of the scene's objects' basic colours (the web tower's colour labels)."""
    return [BASIC_COLOUR_NAMES.index(BASIC_COLOUR[o.colour]) for o in scene.objects]


__all__ = [
    "BASIC_COLOUR",
    "BASIC_COLOUR_NAMES",
    "FAMILY_WORDS",
    "WebCaptionConfig",
    "basic_colour_ids",
    "describe_web",
    "web_caption",
]
