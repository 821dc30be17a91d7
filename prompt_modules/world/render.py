"""Rasterisation of the world: shape templates, textures and render styles (numpy only, no Python pixel loops).

Every shape is defined by a vectorised inside-test on normalised coordinates ``u, v`` in ``[-1, 1]``
(``v`` points down).  The test is evaluated once per (category, size, scale) on the pixel centres of a
square template and cached, so placing an object costs one boolean slice assignment.  Textures are
object-local patterns defined on the 64-pixel grid, so a 128x128 render shows the same pattern at twice
the resolution.

Rendering is split in two steps so that styles can never change content:

1. :func:`rasterise` turns placements into a *label map* (``-1`` background, ``k`` = object ``k``; later
   objects overwrite earlier ones, so the map holds exactly the visible pixels) and a *pattern map*
   (pixels painted in the texture's secondary shade).
2. :func:`paint` turns the label and pattern maps into RGB in one of :data:`~.vocabulary.STYLES`.
   The per-object masks are taken from the label map, hence identical across styles.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import cache
from typing import NamedTuple

import numpy as np

from .vocabulary import BASE_SIZE, CATEGORY_NAMES, IMAGE_SIZES, SIZES, STYLES, TEXTURES

#: Side of a mosaic tile in pixels at 64x64 (doubled at 128x128).
MOSAIC_BLOCK = 3

Inside = Callable[[np.ndarray, np.ndarray], np.ndarray]
RGB = tuple[int, int, int]


class Placement(NamedTuple):
    """What the rasteriser needs of one object: shape, size, texture and its template's top-left corner
    on the 64-pixel grid."""

    category: str
    size: str
    texture: str
    x0: int
    y0: int


# --------------------------------------------------------------------------------------------- shapes


def _polygon(vertices: Sequence[tuple[float, float]], centre: bool = True) -> Inside:
    """Inside-test of a simple polygon (even-odd crossing rule, vectorised over pixels)."""
    pts = np.asarray(vertices, dtype=np.float64)
    if centre:  # centre the bounding box so every shape sits in the middle of its template
        pts = pts - (pts.min(0) + pts.max(0)) / 2
    xs, ys = pts[:, 0], pts[:, 1]

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        result = np.zeros(u.shape, dtype=bool)
        n = len(xs)
        for i in range(n):  # loop over edges (a handful), never over pixels
            x1, y1, x2, y2 = xs[i], ys[i], xs[(i + 1) % n], ys[(i + 1) % n]
            if y1 == y2:
                continue
            crosses = (y1 > v) != (y2 > v)
            x_at = x1 + (v - y1) * (x2 - x1) / (y2 - y1)
            result ^= crosses & (u < x_at)
        return result

    return inside


def _star(points: int, inner: float, outer: float = 0.97) -> Inside:
    verts = []
    for k in range(2 * points):
        a = -math.pi / 2 + k * math.pi / points
        r = outer if k % 2 == 0 else inner
        verts.append((r * math.cos(a), r * math.sin(a)))
    return _polygon(verts)


def _regular(sides: int, phase: float, radius: float = 0.97) -> Inside:
    verts = [
        (radius * math.cos(phase + 2 * math.pi * k / sides), radius * math.sin(phase + 2 * math.pi * k / sides))
        for k in range(sides)
    ]
    return _polygon(verts)


_ARROW_RIGHT = [(-0.95, -0.22), (0.1, -0.22), (0.1, -0.68), (0.95, 0.0), (0.1, 0.68), (0.1, 0.22), (-0.95, 0.22)]


def _arrow(direction: str) -> Inside:
    turn = {
        "right": lambda x, y: (x, y),
        "left": lambda x, y: (-x, y),
        "up": lambda x, y: (y, -x),
        "down": lambda x, y: (-y, x),
    }[direction]
    return _polygon([turn(x, y) for x, y in _ARROW_RIGHT])


def _circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 0.95**2


def _ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u / 0.97) ** 2 + (v / 0.55) ** 2 <= 1.0


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    return (r2 <= 0.95**2) & (r2 >= 0.55**2)


def _crescent(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u * u + v * v <= 0.95**2) & ((u - 0.42) ** 2 + (v + 0.12) ** 2 > 0.72**2)


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(u) <= 0.78) & (np.abs(v) <= 0.78)


def _diamond(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.abs(u) + np.abs(v) <= 0.98


def _rectangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(u) <= 0.95) & (np.abs(v) <= 0.48)


def _plus(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))


def _diagonal_cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    a, b = np.abs(u + v) / math.sqrt(2), np.abs(u - v) / math.sqrt(2)
    box = (np.abs(u) <= 0.92) & (np.abs(v) <= 0.92)
    return box & ((a <= 0.25) | (b <= 0.25))


def _latin_cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    stem = (np.abs(u) <= 0.22) & (np.abs(v) <= 0.97)
    bar = (np.abs(v + 0.35) <= 0.2) & (np.abs(u) <= 0.68)
    return stem | bar


def _t_shape(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    bar = (v >= -0.9) & (v <= -0.45) & (np.abs(u) <= 0.92)
    stem = (np.abs(u) <= 0.24) & (v >= -0.9) & (v <= 0.95)
    return bar | stem


#: Inside-test of every category (keys are exactly :data:`~.vocabulary.CATEGORY_NAMES`).
SHAPES: dict[str, Inside] = {
    "five-point star": _star(5, 0.42),
    "six-point star": _star(6, 0.52),
    "four-point star": _star(4, 0.3),
    "burst": _star(12, 0.66),
    "square": _square,
    "diamond": _diamond,
    "rectangle": _rectangle,
    "trapezoid": _polygon([(-0.42, -0.58), (0.42, -0.58), (0.97, 0.58), (-0.97, 0.58)]),
    "parallelogram": _polygon([(-0.45, -0.5), (0.97, -0.5), (0.45, 0.5), (-0.97, 0.5)]),
    "left arrow": _arrow("left"),
    "right arrow": _arrow("right"),
    "up arrow": _arrow("up"),
    "down arrow": _arrow("down"),
    "circle": _circle,
    "ellipse": _ellipse,
    "ring": _ring,
    "crescent": _crescent,
    "triangle": _polygon([(0.0, -0.97), (0.97, 0.72), (-0.97, 0.72)]),
    "inverted triangle": _polygon([(0.0, 0.97), (0.97, -0.72), (-0.97, -0.72)]),
    "right-angled triangle": _polygon([(-0.92, -0.92), (-0.92, 0.92), (0.92, 0.92)]),
    "plus": _plus,
    "diagonal cross": _diagonal_cross,
    "latin cross": _latin_cross,
    "t-shape": _t_shape,
    "pentagon": _regular(5, -math.pi / 2),
    "hexagon": _regular(6, 0.0),
    "octagon": _regular(8, math.pi / 8),
}
assert tuple(SHAPES) == CATEGORY_NAMES


def _scale_of(size: int) -> int:
    if size not in IMAGE_SIZES:
        raise ValueError(f"image size must be one of {IMAGE_SIZES}, got {size}")
    return size // BASE_SIZE


@cache
def shape_template(category: str, size: str, scale: int = 1) -> np.ndarray:
    """Boolean (S, S) mask of ``category`` at ``size`` (S = side at 64 px times ``scale``); cached."""
    side = SIZES[size] * scale
    c = (np.arange(side, dtype=np.float64) + 0.5) / side * 2.0 - 1.0
    u, v = np.meshgrid(c, c)
    mask = SHAPES[category](u, v)
    mask.setflags(write=False)
    return mask


@cache
def texture_template(texture: str, size: str, scale: int = 1) -> np.ndarray:
    """Boolean (S, S) map of the pixels a texture paints in its secondary shade (object-local; cached).

    Patterns are defined in 64-grid units (stripes 2 px wide, dots on a 4 px lattice, 3 px checks), so
    they look the same at 64 and 128 pixels.
    """
    side = SIZES[size] * scale
    c = (np.arange(side, dtype=np.float64) + 0.5) / scale  # pixel centres in 64-grid units
    x, y = np.meshgrid(c, c)
    if texture == "solid":
        pat = np.zeros((side, side), dtype=bool)
    elif texture == "striped":
        pat = np.floor((x + y) / 2.0) % 2 == 1
    elif texture == "dotted":
        pat = ((x % 4.0) - 2.0) ** 2 + ((y % 4.0) - 2.0) ** 2 <= 1.1**2
    elif texture == "checkered":
        pat = (np.floor(x / 3.0) + np.floor(y / 3.0)) % 2 == 1
    else:
        raise KeyError(texture)
    pat.setflags(write=False)
    return pat


@cache
def _painted(category: str, size: str, texture: str, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """The template mask and the texture values at its True pixels (ready for one masked assignment)."""
    mask = shape_template(category, size, scale)
    pat = texture_template(texture, size, scale)[mask]
    pat.setflags(write=False)
    return mask, pat


def template_area(category: str, size: str) -> int:
    """Pixel count of a shape template on the 64-pixel grid."""
    return int(_area(category, size))


@cache
def _area(category: str, size: str) -> int:
    return int(shape_template(category, size, 1).sum())


def secondary_shade(rgb: RGB) -> RGB:
    """The texture's second colour: a darker shade of light colours, a lighter tint of dark ones."""
    r, g, b = rgb
    if 0.299 * r + 0.587 * g + 0.114 * b > 140:
        return (int(r * 0.55), int(g * 0.55), int(b * 0.55))
    return (int(r * 0.45 + 140), int(g * 0.45 + 140), int(b * 0.45 + 140))


# ----------------------------------------------------------------------------------------- rasterise


def rasterise(placements: Sequence[Placement], size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Label map (int8, -1 = background, k = visible pixel of object k) and pattern map (bool) at ``size``.

    Objects are drawn in order, so a later object covers earlier ones.
    """
    scale = _scale_of(size)
    label = np.full((size, size), -1, dtype=np.int8)
    pattern = np.zeros((size, size), dtype=bool)
    for k, p in enumerate(placements):
        mask, pat = _painted(p.category, p.size, p.texture, scale)
        side = mask.shape[0]
        ys, xs = p.y0 * scale, p.x0 * scale
        label[ys : ys + side, xs : xs + side][mask] = k
        pattern[ys : ys + side, xs : xs + side][mask] = pat
    return label, pattern


# --------------------------------------------------------------------------------------------- paint


def _boundary(label: np.ndarray, width: int) -> np.ndarray:
    """Object pixels within ``width`` pixels (4-neighbourhood steps) of a different label."""
    edge = np.zeros(label.shape, dtype=bool)
    for d in range(1, width + 1):
        diff_h = label[:, d:] != label[:, :-d]
        edge[:, d:] |= diff_h
        edge[:, :-d] |= diff_h
        diff_v = label[d:, :] != label[:-d, :]
        edge[d:, :] |= diff_v
        edge[:-d, :] |= diff_v
    return edge & (label >= 0)


@cache
def _glow_kernel(scale: int) -> tuple[float, ...]:
    """1-D glow kernel: a box of radius 2*scale convolved with a box of radius scale (sums to 1)."""
    k = np.convolve(np.ones(4 * scale + 1), np.ones(2 * scale + 1))
    return tuple(float(x) for x in k / k.sum())


def _blur(img: np.ndarray, kernel: Sequence[float]) -> np.ndarray:
    """Separable blur of an (H, W, C) float32 image with zero padding (shifted weighted sums)."""
    r = len(kernel) // 2
    h, w, c = img.shape
    pad = np.zeros((h + 2 * r, w, c), dtype=np.float32)
    pad[r : r + h] = img
    out = np.zeros((h, w + 2 * r, c), dtype=np.float32)
    mid = out[:, r : r + w]
    for i, k in enumerate(kernel):
        mid += k * pad[i : i + h]
    res = np.zeros((h, w, c), dtype=np.float32)
    for i, k in enumerate(kernel):
        res += k * out[:, i : i + w]
    return res


@cache
def _grain(size: int) -> np.ndarray:
    """Fixed paper grain for the sketch style (same for every scene, so it carries no information)."""
    g = np.random.default_rng(1234).integers(-7, 8, size=(size, size, 1)).astype(np.int16)
    g.setflags(write=False)
    return g


@cache
def _grout(size: int, block: int) -> np.ndarray:
    """Boolean map of the gaps between mosaic tiles (last row/column of each tile, 2 px at 128)."""
    idx = np.arange(size) % block >= block - max(1, block // MOSAIC_BLOCK)
    g = idx[:, None] | idx[None, :]
    g.setflags(write=False)
    return g


def paint(
    label: np.ndarray,
    pattern: np.ndarray,
    colours: Sequence[RGB],
    background: RGB,
    style: str = "flat",
) -> np.ndarray:
    """Turn a label/pattern map into a uint8 (H, W, 3) image in ``style``; content stays the same.

    * ``flat``: exact object colours (texture pixels in :func:`secondary_shade`) on the background.
    * ``sketch``: coloured outlines of the visible regions on a pale paper version of the background,
      textures as light hatching, fixed paper grain.
    * ``mosaic``: the flat image averaged over square tiles (:data:`MOSAIC_BLOCK` px) with darker grout.
    * ``neon``: glowing outlines on a darkened background, faint fills.
    """
    n = len(colours)
    prim = np.empty((n + 1, 3), dtype=np.float32)
    prim[0] = background
    prim[1:] = np.asarray(colours, dtype=np.float32).reshape(n, 3)
    idx = label.astype(np.intp) + 1
    size = label.shape[0]
    scale = max(1, size // BASE_SIZE)

    if style == "flat" or style == "mosaic":
        sec = np.empty_like(prim)
        sec[0] = background
        sec[1:] = [secondary_shade(c) for c in colours]
        img = prim.astype(np.uint8)[idx]
        if pattern.any():
            img[pattern] = sec.astype(np.uint8)[idx[pattern]]
        if style == "flat":
            return img
        block = MOSAIC_BLOCK * scale
        h = -(-size // block)
        padded = np.pad(img, ((0, h * block - size), (0, h * block - size), (0, 0)), mode="edge")
        tiles = padded.reshape(h, block, h, block, 3).mean(axis=(1, 3), dtype=np.float32)
        out = np.repeat(np.repeat(tiles, block, axis=0), block, axis=1)[:size, :size]
        out[_grout(size, block)] *= 0.8
        return (out + 0.5).astype(np.uint8)

    if style == "sketch":
        paper = prim[0] * 0.3 + 255.0 * 0.7
        pal = prim.copy()
        pal[0] = paper
        fill = np.empty_like(prim)
        fill[0] = paper
        fill[1:] = paper * 0.55 + prim[1:] * 0.45
        img = np.broadcast_to(paper, (size, size, 3)).astype(np.float32)
        if pattern.any():
            img[pattern] = fill[idx[pattern]]
        edge = _boundary(label, scale)
        img[edge] = pal[idx[edge]] * 0.85
        out = img.astype(np.int16) + _grain(size)
        return np.clip(out, 0, 255).astype(np.uint8)

    if style == "neon":
        dark = prim[0] * 0.12 + 8.0
        fills = np.empty_like(prim)
        fills[0] = dark
        fills[1:] = dark * 0.6 + prim[1:] * 0.22
        img = fills[idx]
        if pattern.any():
            img[pattern] = (dark * 0.4 + prim * 0.5)[idx[pattern]]
        edge = _boundary(label, scale)
        glow_src = np.zeros((size, size, 3), dtype=np.float32)
        glow_src[edge] = prim[idx[edge]]
        glow = _blur(glow_src, _glow_kernel(scale))
        core = np.zeros_like(glow_src)
        core[edge] = prim[idx[edge]] * 0.6 + 110.0
        out = img + 2.2 * glow + core
        return np.clip(out, 0, 255).astype(np.uint8)

    raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")


#: How far (0..255) the lightness of a painted background may be from its named colour before a caption must
#: name another colour: neon darkens every background to near black, sketch paper lightens charcoal to grey.
BACKGROUND_LIGHTNESS_TOLERANCE = 60.0


def _lightness(rgb: Sequence[float]) -> float:
    r, g, b = (float(c) for c in rgb)
    return 0.299 * r + 0.587 * g + 0.114 * b


@cache
def painted_background(background: RGB, style: str) -> RGB:
    """The colour ``style`` paints an empty part of the image with ``background`` (median over a 64 px image)."""
    empty = np.full((BASE_SIZE, BASE_SIZE), -1, dtype=np.int8)
    image = paint(empty, np.zeros(empty.shape, dtype=bool), [(0, 0, 0)], background, style)  # no object pixel
    return tuple(int(c) for c in np.median(image.reshape(-1, 3), axis=0))  # type: ignore[return-value]


def background_name_as_drawn(name: str, style: str, named: dict[str, RGB]) -> str:
    """The name of ``named`` (colour name -> RGB) a caption gives a scene's background ``name`` in ``style``:
    ``name`` itself while the painted colour is about as light as that colour, else the named colour nearest
    to the painted one (neon's near-black background is "charcoal", whatever the scene's colour)."""
    drawn = painted_background(named[name], style)
    if abs(_lightness(drawn) - _lightness(named[name])) <= BACKGROUND_LIGHTNESS_TOLERANCE:
        return name
    return min(named, key=lambda other: sum((a - b) ** 2 for a, b in zip(named[other], drawn, strict=True)))


def render(
    placements: Sequence[Placement],
    colours: Sequence[RGB],
    background: RGB,
    *,
    size: int = 64,
    style: str = "flat",
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise and paint: returns the uint8 (H, W, 3) image and the int8 label map."""
    label, pattern = rasterise(placements, size)
    return paint(label, pattern, colours, background, style), label


def masks_from_label(label: np.ndarray, n: int) -> np.ndarray:
    """(n, H, W) boolean masks of the visible pixels of objects ``0..n-1``."""
    return label[None, :, :] == np.arange(n, dtype=np.int8)[:, None, None]


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """(n, 4) int boxes ``x0, y0, x1, y1`` with inclusive maxima (as ``torchvision.ops.masks_to_boxes``);
    all -1 for an empty mask."""
    n, h, w = masks.shape
    cols = masks.any(axis=1)
    rows = masks.any(axis=2)
    boxes = np.full((n, 4), -1, dtype=np.int64)
    has = cols.any(axis=1)
    boxes[has, 0] = cols[has].argmax(axis=1)
    boxes[has, 2] = w - 1 - cols[has, ::-1].argmax(axis=1)
    boxes[has, 1] = rows[has].argmax(axis=1)
    boxes[has, 3] = h - 1 - rows[has, ::-1].argmax(axis=1)
    return boxes


__all__ = [
    "Placement",
    "SHAPES",
    "TEXTURES",
    "boxes_from_masks",
    "masks_from_label",
    "paint",
    "rasterise",
    "render",
    "secondary_shade",
    "shape_template",
    "template_area",
    "texture_template",
]
