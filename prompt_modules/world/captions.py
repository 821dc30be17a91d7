"""Language for the world: scene captions, referring expressions and category-swap hard negatives.

All text is generated from the scene's structured content with a seeded :class:`random.Random`, so it is
exact by construction:

* :func:`describe` writes a caption from varied templates (object order, word order, synonyms for sizes,
  textures and positions, optional attributes).  Colour and fine category of every object are always
  named; category names are never paraphrased.  The caption records where each object's category name
  sits in the string.
* :func:`hard_negatives` swaps exactly one category name for another (preferably a member of the same
  family), leaving every other character untouched (FDRD-style fine-grained negatives).
* :func:`referring_expressions` describes single objects with the fewest attributes that single them
  out, adding the coarse position or a spatial relation to another uniquely described object when the
  attributes alone are ambiguous; :func:`resolve` checks which objects an expression denotes.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from .vocabulary import CATEGORY_NAMES, family_of, siblings

#: Number of hard negatives generated per scene.
NUM_HARD_NEGATIVES = 6
#: At most this many of the hard negatives swap within the family (the rest swap to other families).
MAX_SAME_FAMILY = 4
#: Minimum centre distance (64-grid pixels) for a spatial relation to hold.
RELATION_MARGIN = 4.0
#: Spatial relations between object centres, with the phrases that express them.
RELATIONS: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above",),
    "below": ("below", "under"),
}
#: The intrinsic attributes a referring expression may use (besides the category, always used).
REFERRING_ATTRIBUTES: tuple[str, ...] = ("size", "texture", "colour", "position")


class Describable(Protocol):
    """What the language generator needs of an object (see :class:`~.scene.WorldObject`)."""

    category: str
    colour: str
    size: str
    texture: str

    @property
    def position(self) -> str: ...

    @property
    def center(self) -> tuple[float, float]: ...


class Caption(NamedTuple):
    """A caption and, for each object (scene order), the ``(start, end)`` span of its category name."""

    text: str
    spans: tuple[tuple[int, int], ...]


class HardNegative(NamedTuple):
    """A caption identical to the positive except that ``text[start:start+len(replacement)]`` names
    ``replacement`` where the positive named ``original`` (at ``start:end``) for object ``object_index``."""

    text: str
    object_index: int
    original: str
    replacement: str
    start: int
    end: int


class ReferringExpression(NamedTuple):
    """A phrase denoting exactly one object, with the structured content it was generated from.

    ``attributes`` always holds ``category`` plus a subset of :data:`REFERRING_ATTRIBUTES`; when
    ``relation`` is set, the referent is the object matching ``attributes`` that stands in ``relation``
    to the single object matching ``anchor_attributes`` (object ``anchor_index``).
    """

    object_index: int
    text: str
    attributes: dict[str, str]
    relation: str | None = None
    anchor_index: int | None = None
    anchor_attributes: dict[str, str] | None = None


# ------------------------------------------------------------------------------------------ wording

_SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny"),
    "medium": ("medium", "medium-sized", "mid-sized"),
    "large": ("large", "big"),
}
_TEXTURE_ADJECTIVES: dict[str, tuple[str, ...]] = {
    "solid": ("solid", "plain"),
    "striped": ("striped", "stripy"),
    "dotted": ("dotted", "spotted", "polka-dot"),
    "checkered": ("checkered", "chequered", "checked"),
}
#: The size and texture adjectives captions use (also the words web-like captions borrow, :mod:`.web_captions`).
SIZE_WORDS, TEXTURE_ADJECTIVES = _SIZE_WORDS, _TEXTURE_ADJECTIVES
_TEXTURE_NOUNS: dict[str, tuple[str, ...]] = {
    "striped": ("stripes", "a striped pattern"),
    "dotted": ("dots", "polka dots"),
    "checkered": ("a checkered pattern", "checks"),
}
_POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("at the top left", "in the top-left corner", "in the upper left"),
    "top": ("at the top", "near the top"),
    "top right": ("at the top right", "in the top-right corner", "in the upper right"),
    "left": ("on the left", "at the left"),
    "center": ("in the center", "in the middle"),
    "right": ("on the right", "at the right"),
    "bottom left": ("at the bottom left", "in the bottom-left corner", "in the lower left"),
    "bottom": ("at the bottom", "near the bottom"),
    "bottom right": ("at the bottom right", "in the bottom-right corner", "in the lower right"),
}
#: Scene templates as (prefix, suffix); ``{bg}`` is the background colour name.
_SCENE_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("", "."),
    ("a picture of ", "."),
    ("an image showing ", "."),
    ("", " on a {bg} background."),
    ("a {bg} background with ", "."),
    ("a scene with ", "."),
    ("an image of ", " against a {bg} background."),
    ("on a {bg} background: ", "."),
)


def article(word: str) -> str:
    """'a' or 'an' for the word that follows (all vocabulary words are pronounced as spelled)."""
    return "an" if word[:1] in "aeiou" else "a"


def _object_phrase(o: Describable, rng: random.Random) -> tuple[str, int, int]:
    """An indefinite noun phrase for ``o`` and the span of its category name inside it."""
    size = rng.choice(_SIZE_WORDS[o.size]) if rng.random() < 0.5 else ""
    with_texture = rng.random() < (0.25 if o.texture == "solid" else 0.7)
    texture = rng.choice(_TEXTURE_ADJECTIVES[o.texture]) if with_texture else ""
    position = rng.choice(_POSITION_PHRASES[o.position]) if rng.random() < 0.35 else ""
    form = rng.randrange(3)
    tail = ""
    if form == 1 and texture and o.texture != "solid":  # "a crimson star with stripes"
        words = [size, o.colour]
        tail = " with " + rng.choice(_TEXTURE_NOUNS[o.texture])
    elif form == 2 and (size or texture):  # "a small striped star in crimson"
        words = [size, texture]
        tail = " in " + o.colour
    else:  # "a small striped crimson star"
        words = [size, texture, o.colour]
    pre = " ".join(w for w in words if w)  # never empty: no article directly before a category name
    text = article(pre) + " " + pre + " "
    start = len(text)
    text += o.category
    end = len(text)
    text += tail + (" " + position if position else "")
    return text, start, end


def describe(objects: Sequence[Describable], background: str, rng: random.Random) -> Caption:
    """A caption naming every object (colour and fine category always, other attributes optionally)."""
    n = len(objects)
    order = list(range(n))
    rng.shuffle(order)
    phrases = [_object_phrase(objects[i], rng) for i in order]
    oxford = rng.random() < 0.3
    prefix, suffix = rng.choice(_SCENE_TEMPLATES)
    text = prefix.format(bg=background)
    spans: list[tuple[int, int]] = [(0, 0)] * n
    for k, (i, (phrase, s, e)) in enumerate(zip(order, phrases, strict=True)):
        if k > 0:
            text += (", and " if oxford else " and ") if k == n - 1 else ", "
        spans[i] = (len(text) + s, len(text) + e)
        text += phrase
    text += suffix.format(bg=background)
    return Caption(text, tuple(spans))


_ARTICLE_BEFORE = re.compile(r"(?:^|\s)(an?) $")
_SIBLINGS: dict[str, tuple[str, ...]] = {c: siblings(c) for c in CATEGORY_NAMES}
_STRANGERS: dict[str, tuple[str, ...]] = {
    c: tuple(d for d in CATEGORY_NAMES if family_of(d) != family_of(c)) for c in CATEGORY_NAMES
}


def hard_negatives(
    caption: Caption,
    objects: Sequence[Describable],
    rng: random.Random,
    k: int = NUM_HARD_NEGATIVES,
) -> list[HardNegative]:
    """``k`` captions that differ from ``caption`` only in one object's category name.

    Up to :data:`MAX_SAME_FAMILY` swap to a sibling in the same family (the hardest negatives); the rest
    swap to categories of other families.  Captions never put a category name right after an article;
    should one do so, only replacements taking the same 'a'/'an' are used, so grammar never gives a
    negative away.
    """
    text = caption.text
    same: list[tuple[int, str]] = []
    other: list[tuple[int, str]] = []
    for i, o in enumerate(objects):
        s = caption.spans[i][0]
        m = _ARTICLE_BEFORE.search(text, 0, s)
        needed = m.group(1) if m else None
        for c in _SIBLINGS[o.category]:
            if needed is None or article(c) == needed:
                same.append((i, c))
        for c in _STRANGERS[o.category]:
            if needed is None or article(c) == needed:
                other.append((i, c))
    picks = rng.sample(same, min(len(same), MAX_SAME_FAMILY, k))
    picks += rng.sample(other, min(len(other), k - len(picks)))
    if len(picks) < k:  # tiny vocabularies only: fill with the remaining same-family swaps
        rest = [p for p in same if p not in picks]
        picks += rest[: k - len(picks)]
    out = []
    for i, c in picks:
        s, e = caption.spans[i]
        out.append(HardNegative(text[:s] + c + text[e:], i, objects[i].category, c, s, e))
    return out


# ------------------------------------------------------------------------------ referring expressions


def attribute_value(o: Describable, key: str) -> str:
    """The value of a referable attribute (``category``, ``size``, ``texture``, ``colour``, ``position``)."""
    return o.position if key == "position" else getattr(o, key)


def matching(objects: Sequence[Describable], attributes: dict[str, str]) -> list[int]:
    """Indices of the objects whose attributes all equal ``attributes``."""
    return [i for i, o in enumerate(objects) if all(attribute_value(o, k) == v for k, v in attributes.items())]


def relation_holds(relation: str, a: Describable, b: Describable) -> bool:
    """Whether ``a`` is ``relation`` ``b``: the centres are at least :data:`RELATION_MARGIN` apart along
    the relation's axis, and that offset is at least as large as the offset along the other axis."""
    (ax, ay), (bx, by) = a.center, b.center
    dx, dy = bx - ax, by - ay  # offset from a to b
    if relation == "left of":
        return dx >= RELATION_MARGIN and dx >= abs(dy)
    if relation == "right of":
        return -dx >= RELATION_MARGIN and -dx >= abs(dy)
    if relation == "above":
        return dy >= RELATION_MARGIN and dy >= abs(dx)
    if relation == "below":
        return -dy >= RELATION_MARGIN and -dy >= abs(dx)
    raise ValueError(f"unknown relation {relation!r}")


def resolve(objects: Sequence[Describable], expr: ReferringExpression) -> list[int]:
    """Indices of the objects ``expr`` denotes (a valid expression denotes exactly one)."""
    candidates = matching(objects, expr.attributes)
    if expr.relation is None:
        return candidates
    anchors = matching(objects, expr.anchor_attributes or {})
    if len(anchors) != 1:
        return []
    a = anchors[0]
    return [i for i in candidates if i != a and relation_holds(expr.relation, objects[i], objects[a])]


def _intrinsic(
    objects: Sequence[Describable], i: int, rng: random.Random, decorate: float
) -> tuple[dict[str, str], list[int]]:
    """Greedy attribute choice for object ``i``: category, then size/texture/colour in random order when
    they narrow the candidates (or, with probability ``decorate``, anyway), then position if still
    ambiguous.  Returns the attributes and the objects they match."""
    o = objects[i]
    attrs = {"category": o.category}
    cands = matching(objects, attrs)
    keys = ["size", "texture", "colour"]
    rng.shuffle(keys)
    for key in keys:
        trial = {**attrs, key: attribute_value(o, key)}
        new = matching(objects, trial)
        bonus = decorate * (2.0 if key == "colour" else 1.0)
        if len(new) < len(cands) or rng.random() < bonus:
            attrs, cands = trial, new
    if len(cands) > 1:
        trial = {**attrs, "position": o.position}
        new = matching(objects, trial)
        if len(new) < len(cands):
            attrs, cands = trial, new
    return attrs, cands


def _noun_phrase(attrs: dict[str, str], rng: random.Random) -> str:
    words = ["the"]
    if "size" in attrs:
        words.append(rng.choice(_SIZE_WORDS[attrs["size"]]))
    if "texture" in attrs:
        words.append(rng.choice(_TEXTURE_ADJECTIVES[attrs["texture"]]))
    if "colour" in attrs:
        words.append(attrs["colour"])
    words.append(attrs["category"])
    if "position" in attrs:
        words.append(rng.choice(_POSITION_PHRASES[attrs["position"]]))
    return " ".join(words)


def referring_expressions(
    objects: Sequence[Describable], rng: random.Random, relation_rate: float = 0.35
) -> list[ReferringExpression]:
    """At most one expression per object that denotes it uniquely (objects that cannot be singled out,
    e.g. exact duplicates side by side with no usable anchor, get none).  With probability
    ``relation_rate`` an already unique description is extended by a relation for variety."""
    out: list[ReferringExpression] = []
    n = len(objects)
    for i in range(n):
        attrs, cands = _intrinsic(objects, i, rng, decorate=0.3)
        want_relation = n > 1 and (len(cands) > 1 or rng.random() < relation_rate)
        found = None
        if want_relation:
            anchors = [j for j in range(n) if j != i]
            rng.shuffle(anchors)
            for a in anchors:
                a_attrs, a_cands = _intrinsic(objects, a, rng, decorate=0.1)
                if a_cands != [a]:
                    continue
                rels = list(RELATIONS)
                rng.shuffle(rels)
                for rel in rels:
                    referents = [j for j in cands if j != a and relation_holds(rel, objects[j], objects[a])]
                    if referents == [i]:
                        found = (rel, a, a_attrs)
                        break
                if found:
                    break
        if found:
            rel, a, a_attrs = found
            text = f"{_noun_phrase(attrs, rng)} {rng.choice(RELATIONS[rel])} {_noun_phrase(a_attrs, rng)}"
            out.append(ReferringExpression(i, text, attrs, rel, a, a_attrs))
        elif len(cands) == 1:
            out.append(ReferringExpression(i, _noun_phrase(attrs, rng), attrs))
    return out


__all__ = [
    "NUM_HARD_NEGATIVES",
    "RELATIONS",
    "RELATION_MARGIN",
    "Caption",
    "HardNegative",
    "ReferringExpression",
    "article",
    "attribute_value",
    "describe",
    "hard_negatives",
    "matching",
    "referring_expressions",
    "relation_holds",
    "resolve",
]
