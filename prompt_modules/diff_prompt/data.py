"""Grounding data for Diff-Prompt from the user's files and tensors.

A source returns :class:`~..core.data.GroundingBatch` es (images, target masks, normalised boxes, one referring
expression per image) for ``(seed, step)`` (:class:`~..core.data.GroundingSource`):

- :class:`TensorGroundingSource` - tensors, e.g. from a ComfyUI graph;
- :class:`FolderGroundingSource` - a folder of ``name.png`` + ``name_mask.png`` + ``name.txt``;
- :func:`read_refcoco` - COCO-style ``instances.json`` + refs as JSON / JSONL (RefCOCO, RefCOCO+, RefCOCOg
  after conversion from the refer toolkit's ``refs(unc).p``), polygon or RLE masks;
- :func:`read_grounding_jsonl` - one JSON object per line: image, expression, bbox, optional mask file.

The two readers return a :class:`ReferringGroundingSource`, which loads the images of each batch lazily (at the
requested ``size``, nothing cached), so datasets of any size fit in memory.

The procedural world provides its own source (:mod:`promptweave.prompt_modules.world.sources`); this package
never imports the world.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core.data import (
    IMAGE_EXTENSIONS,
    GroundingBatch,
    boxes_from_masks,
    image_file_size,
    load_image,
    load_mask,
    read_text_file,
    resize_masks,
    square_images,
)

MASK_SUFFIX = "_mask"


class TensorGroundingSource:
    """Samples from tensors: images ``[N, 3, H, W]`` (0..1), masks ``[N, H, W]`` of the same size, expressions.

    Raises ``ValueError`` for a mask of another size than its image, a count mismatch or an empty expression.
    """

    def __init__(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        texts: Sequence[str],
        size: int = 64,
        names: Sequence[str] | None = None,
    ) -> None:
        texts = list(texts)
        names = list(names) if names is not None else [f"sample {i}" for i in range(len(texts))]
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
            raise ValueError(f"images must be a non-empty [N, 3, H, W] batch, got {tuple(images.shape)}")
        if masks.ndim == 2:
            masks = masks.unsqueeze(0)
        if masks.ndim != 3:
            raise ValueError(f"masks must be [N, H, W], got {tuple(masks.shape)}")
        if tuple(masks.shape[-2:]) != tuple(images.shape[-2:]):
            raise ValueError(
                f"the masks are {masks.shape[-1]}x{masks.shape[-2]} but the images {images.shape[-1]}x"
                f"{images.shape[-2]}: each mask must have its image's size"
            )
        if not (masks.shape[0] == images.shape[0] == len(texts)):
            raise ValueError(
                f"{images.shape[0]} images, {masks.shape[0]} masks and {len(texts)} expressions: give one mask and "
                "one expression per image"
            )
        empty = [names[i] for i, t in enumerate(texts) if not t.strip()]
        if empty:
            raise ValueError(f"empty referring expression for {empty[:5]}")
        self.images = square_images(images, size)
        self.masks = resize_masks(masks.float(), size)
        if bool((self.masks.flatten(1).sum(1) == 0).any()):
            bad = [names[i] for i in torch.nonzero(self.masks.flatten(1).sum(1) == 0).flatten().tolist()]
            raise ValueError(f"empty mask for {bad[:5]}: every sample needs a non-empty mask")
        self.boxes = boxes_from_masks(self.masks)
        self.texts = [t.strip() for t in texts]

    def __len__(self) -> int:
        return len(self.texts)

    def batch(self, seed: int, step: int, batch_size: int) -> GroundingBatch:
        return self.batch_part(seed, step, batch_size, slice(None))

    def batch_part(self, seed: int, step: int, batch_size: int, part: slice) -> GroundingBatch:
        """The rows ``part`` of :meth:`batch` (one rank's part under torchrun:
        :func:`~..core.data.read_part`)."""
        rng = random.Random(seed * 1_000_003 + step)
        n = len(self.texts)
        picks = rng.sample(range(n), batch_size) if batch_size <= n else [rng.randrange(n) for _ in range(batch_size)]
        picks = picks[part]
        idx = torch.tensor(picks, dtype=torch.long)
        return GroundingBatch(self.images[idx], self.masks[idx], self.boxes[idx], [self.texts[i] for i in picks])


class FolderGroundingSource(TensorGroundingSource):
    """A folder of ``name.png`` (image) + ``name_mask.png`` (white = the object) + ``name.txt`` (the referring
    expression, first non-empty line). Images may have any size; each mask must have its image's size."""

    def __init__(self, folder: str | os.PathLike[str], size: int = 64) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"dataset folder {folder} does not exist")
        images = sorted(
            p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.stem.endswith(MASK_SUFFIX)
        )
        if not images:
            raise ValueError(f"{folder} holds no images (expected name.png + name{MASK_SUFFIX}.png + name.txt)")
        rows_i, rows_m, texts = [], [], []
        for path in images:
            masks = [path.with_name(path.stem + MASK_SUFFIX + ext) for ext in IMAGE_EXTENSIONS]
            mask_path = next((m for m in masks if m.is_file()), None)
            if mask_path is None:
                raise ValueError(f"{path.name} has no mask: add {path.stem}{MASK_SUFFIX}.png next to it")
            text_path = path.with_suffix(".txt")
            if not text_path.is_file():
                raise ValueError(f"{path.name} has no referring expression: add {text_path.name}")
            lines = [ln.strip() for ln in read_text_file(text_path, "expression file").splitlines() if ln.strip()]
            if not lines:
                raise ValueError(f"{text_path.name} is empty: write the referring expression in it")
            image, mask = load_image(path), load_mask(mask_path)  # both at the file's own size
            if tuple(mask.shape) != tuple(image.shape[-2:]):
                raise ValueError(
                    f"the mask {mask_path.name} is {mask.shape[1]}x{mask.shape[0]} but its image {path.name} is "
                    f"{image.shape[2]}x{image.shape[1]}: each mask must have its image's size"
                )
            rows_i.append(square_images(image[None], size)[0])
            rows_m.append(resize_masks(mask[None], size)[0])
            texts.append(lines[0])
        super().__init__(torch.stack(rows_i), torch.stack(rows_m), texts, size=size, names=[p.name for p in images])


# ----- referring expressions: COCO-style refs (RefCOCO / RefCOCO+ / RefCOCOg) and a simple JSONL ----------------------
#: Suffixes of Python pickles (the refer toolkit's ``refs(unc).p``): refused, never unpickled.
PICKLE_SUFFIXES = (".p", ".pkl", ".pickle")
#: How far (pixels) a box may reach past its image's border before it is refused (COCO boxes are floats).
BOX_TOLERANCE = 1.0
#: ``per`` of :class:`ReferringGroundingSource`: one sample per sentence, or per referred object.
SAMPLE_MODES = ("sentence", "ref")


@dataclass(frozen=True)
class ReferringSample:
    """One referred object: its image file and size in pixels, its box ``x, y, w, h`` (pixels, COCO's
    convention), its expressions, and where its mask comes from: ``segmentation`` (COCO polygons or RLE),
    ``mask_path`` (a mask file of the image's size) or neither (the box, filled)."""

    image: Path
    width: int
    height: int
    bbox: tuple[float, float, float, float]
    texts: tuple[str, ...]
    segmentation: Any = None
    mask_path: Path | None = None
    name: str = ""

    def mask(self) -> np.ndarray:
        """The mask ``[height, width]`` (bool) at the image's size; an empty segmentation or mask file gives
        the box, as a sample without one does."""
        if self.mask_path is not None:
            mask = load_mask(self.mask_path).numpy() > 0.5
        elif self.segmentation is not None:
            mask = segmentation_mask(self.segmentation, self.height, self.width)
        else:
            mask = None
        if mask is None or not mask.any():
            mask = box_mask(self.bbox, self.height, self.width)
        return mask

    def normalized_box(self) -> torch.Tensor:
        """The box as ``x0, y0, x1, y1`` in 0..1 of the image's width and height (:class:`GroundingBatch`)."""
        x, y, w, h = self.bbox
        box = torch.tensor([x / self.width, y / self.height, (x + w) / self.width, (y + h) / self.height])
        return box.clamp(0, 1)


class ReferringGroundingSource:
    """Referring-expression samples read lazily: each :meth:`batch` loads its images from disk, resized to
    ``size x size`` (the whole image, like :class:`FolderGroundingSource`, so boxes stay valid;
    :func:`~..core.data.load_image` with ``fit="stretch"``), and builds their masks at the image's size before
    resizing. Nothing is cached, so a dataset of any size fits in memory.

    ``per="sentence"`` (default): every expression is one sample (``len`` = number of expressions, as RefCOCO
    training usually counts); ``per="ref"``: every object is one sample and each batch picks one of its
    sentences with the batch's generator, so the choice depends on ``(seed, step)`` only.
    """

    def __init__(
        self, samples: Sequence[ReferringSample], size: int = 224, per: str = "sentence", name: str = "dataset"
    ) -> None:
        if per not in SAMPLE_MODES:
            raise ValueError(f"per must be one of {list(SAMPLE_MODES)}, got {per!r}")
        if not samples:
            raise ValueError(f"{name} holds no samples")
        if size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        self.samples = list(samples)
        self.size = int(size)
        self.per = per
        self.name = name
        if per == "sentence":
            self._items = [(i, j) for i, s in enumerate(self.samples) for j in range(len(s.texts))]
        else:
            self._items = [(i, -1) for i in range(len(self.samples))]

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"ReferringGroundingSource({self.name}, {len(self.samples)} objects, {len(self)} samples per {self.per})"

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Object ``index``'s image ``[3, S, S]``, mask ``[S, S]`` and normalised box ``[4]`` at ``size``."""
        sample = self.samples[index]
        image, (width, height) = load_image(sample.image, self.size, fit="stretch"), image_file_size(sample.image)
        if (height, width) != (sample.height, sample.width):
            raise ValueError(
                f"{sample.image} is {width}x{height} but {self.name} ({sample.name}) gives it as "
                f"{sample.width}x{sample.height}: the annotations do not describe this image file (check image_root "
                "and that the annotation file belongs to these images)"
            )
        mask = torch.from_numpy(sample.mask()).float()
        return image, _mask_to_size(mask, self.size), sample.normalized_box()

    def batch(self, seed: int, step: int, batch_size: int) -> GroundingBatch:
        return self.batch_part(seed, step, batch_size, slice(None))

    def batch_part(self, seed: int, step: int, batch_size: int, part: slice) -> GroundingBatch:
        """The rows ``part`` of :meth:`batch`, loading only their images (one rank's part under torchrun:
        :func:`~..core.data.read_part`); the sentence choices of every row are drawn, so the rows are the whole
        batch's."""
        rng = random.Random(seed * 1_000_003 + step)
        n = len(self._items)
        picks = rng.sample(range(n), batch_size) if batch_size <= n else [rng.randrange(n) for _ in range(batch_size)]
        wanted = range(len(picks))[part]
        images, masks, boxes, texts = [], [], [], []
        for row, k in enumerate(picks):
            i, j = self._items[k]
            sample = self.samples[i]
            text = sample.texts[j if j >= 0 else rng.randrange(len(sample.texts))]
            if row not in wanted:
                continue
            image, mask, box = self.load(i)
            images.append(image)
            masks.append(mask)
            boxes.append(box)
            texts.append(text)
        return GroundingBatch(torch.stack(images), torch.stack(masks), torch.stack(boxes), texts)


def _mask_to_size(mask: torch.Tensor, size: int) -> torch.Tensor:
    """A mask ``[H, W]`` resized to ``size x size`` (binarised at 0.5); an object too small to survive that keeps
    the pixels it touches (max pooling), so no sample ends up with an empty mask."""
    resized = resize_masks(mask[None], size)[0]
    if not bool(resized.any()) and bool(mask.any()):
        resized = (F.adaptive_max_pool2d(mask[None, None], size)[0, 0] > 0).float()
    return resized


# ----- masks: COCO RLE (uncompressed and compressed), polygons, boxes -------------------------------------------------
def rle_counts_from_string(counts: str) -> list[int]:
    """Decode COCO's compressed RLE string (pycocotools ``maskApi.c``, ``rleFrString``) into run lengths.

    Each count is a little-endian run of 5-bit chunks, one character each (value + 48); bit ``0x20`` says another
    chunk follows, bit ``0x10`` of the last chunk is the sign. From the fourth count on, the value stored is the
    difference to the count two places before."""
    out: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("the compressed RLE string ends in the middle of a count")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {counts[p]!r} at {p} is not a compressed RLE character ('0' to 'o')")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def rle_decode(counts: str | Sequence[int], height: int, width: int) -> np.ndarray:
    """A COCO RLE (``counts`` uncompressed, a list of run lengths, or the compressed string) as a bool mask
    ``[height, width]``. Runs alternate background / object, starting with background, over the pixels in
    column-major (Fortran) order, as pycocotools stores them."""
    if isinstance(counts, str):
        counts = rle_counts_from_string(counts)
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
        raise ValueError("RLE counts must be whole numbers")
    runs = np.asarray(counts, dtype=np.int64)
    if runs.size and runs.min() < 0:
        raise ValueError("RLE counts must not be negative")
    if int(runs.sum()) != height * width:
        raise ValueError(
            f"the RLE counts add up to {int(runs.sum())} pixels but its size [{height}, {width}] has {height * width}"
        )
    flat = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
    return np.ascontiguousarray(flat.reshape(width, height).T)


def polygon_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """COCO polygons (each ``[x1, y1, x2, y2, ...]`` in pixels) as one bool mask ``[height, width]`` (their union).

    Rasterised with PIL ``ImageDraw`` at twice the size and sampled at pixel centres: a pixel belongs to the mask
    when its centre lies inside the polygon, so a polygon's pixel count is close to its area, as COCO's ``area``
    (pycocotools' ``rleFrPoly`` differs on boundary pixels only)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (2 * width, 2 * height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        draw.polygon([(2.0 * float(x), 2.0 * float(y)) for x, y in zip(poly[0::2], poly[1::2], strict=False)], fill=1)
    return np.asarray(canvas, dtype=bool)[1::2, 1::2].copy()


def box_mask(bbox: Sequence[float], height: int, width: int) -> np.ndarray:
    """A box ``x, y, w, h`` (pixels) as a filled bool mask ``[height, width]``: the pixels whose centres lie in
    the box (at least one pixel)."""
    x, y, w, h = (float(v) for v in bbox)
    c0, c1 = math.ceil(x - 0.5), math.floor(x + w - 0.5)
    r0, r1 = math.ceil(y - 0.5), math.floor(y + h - 0.5)
    c0, r0 = min(max(c0, 0), width - 1), min(max(r0, 0), height - 1)
    c1, r1 = min(max(c1, c0), width - 1), min(max(r1, r0), height - 1)
    mask = np.zeros((height, width), dtype=bool)
    mask[r0 : r1 + 1, c0 : c1 + 1] = True
    return mask


def segmentation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (a list of polygons, or an RLE ``{"counts", "size"}``) as a bool mask."""
    if isinstance(segmentation, dict):
        return rle_decode(segmentation["counts"], height, width)
    return polygon_mask(segmentation, height, width)


# ----- file checks shared by the readers ------------------------------------------------------------------------------
def _refuse_pickle(path: Path, what: str) -> None:
    """Refuse a Python pickle, by its suffix or its first byte (protocols 2+ start with 0x80), with the fix."""
    is_pickle = path.suffix.lower() in PICKLE_SUFFIXES
    if not is_pickle and path.is_file():
        with open(path, "rb") as f:
            is_pickle = f.read(1) == b"\x80"
    if is_pickle:
        target = path.with_suffix(".json")
        raise ValueError(
            f"{path} is a Python pickle (like the refer toolkit's refs(unc).p); PromptWeave never unpickles data "
            "files (loading a pickle can run any code). Convert it to JSON once, in a Python you trust with this "
            f"file: python -c \"import json, pickle; json.dump(pickle.load(open('{path}', 'rb')), "
            f"open('{target}', 'w'))\" and pass {target.name} as the {what}"
        )


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise ValueError(f"the {what} {path} does not exist")
    _refuse_pickle(path, what)
    return read_text_file(path, what)


def _parse_jsonl(path: Path, text: str) -> list[tuple[str, Any]]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((f"line {n}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path}, line {n}: not valid JSON ({exc.msg}, column {exc.colno}): write one JSON object per line"
            ) from None
    return rows


def _parse_json(path: Path, text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}): fix the {what}"
        ) from None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _missing(entry: Any, keys: Sequence[str], where: str, example: str) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{where} is a {type(entry).__name__}, not a JSON object: write it as {example}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise ValueError(f"{where} has no {', '.join(repr(k) for k in missing)}: write it as {example}")


def _check_bbox(bbox: Any, width: int, height: int, where: str) -> tuple[float, float, float, float]:
    """A valid box ``x, y, w, h`` inside its ``width x height`` image (within :data:`BOX_TOLERANCE`), clipped."""
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_number(v) for v in bbox)):
        raise ValueError(f"{where}: bbox {bbox!r} is not four numbers [x, y, width, height] (pixels)")
    x, y, w, h = (float(v) for v in bbox)
    t = BOX_TOLERANCE
    if w <= 0 or h <= 0 or x < -t or y < -t or x + w > width + t or y + h > height + t:
        raise ValueError(
            f"{where}: the box [x, y, w, h] = {list(bbox)} lies outside its {width}x{height} image (or is empty): "
            "boxes are [x, y, width, height] in pixels of the image, not [x0, y0, x1, y1] and not normalised"
        )
    x0, y0 = max(x, 0.0), max(y, 0.0)
    return x0, y0, min(x + w, float(width)) - x0, min(y + h, float(height)) - y0


def _image_size(path: Path, where: str) -> tuple[int, int]:
    """``(width, height)`` from the file's header (the pixels are not read); errors name ``where``."""
    try:
        return image_file_size(path)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _find_file(name: Any, roots: Sequence[Path], where: str, what: str) -> Path:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: {what!r} must be a file path, got {name!r}")
    path = Path(name)
    candidates = [path] if path.is_absolute() else [root / path for root in roots]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = " or ".join(str(c) for c in candidates)
    raise ValueError(
        f"{where}: the {what} file {name} does not exist (looked for {looked}): fix the path or image_root"
    )


# ----- COCO-style referring expressions -------------------------------------------------------------------------------
_REF_EXAMPLE = '{"ref_id": 0, "ann_id": 1719310, "image_id": 581857, "split": "train", "sentences": [{"sent": "..."}]}'
_ANN_EXAMPLE = '{"id": 1719310, "image_id": 581857, "bbox": [x, y, w, h], "segmentation": [[x1, y1, ...]]}'
_IMAGE_EXAMPLE = '{"id": 581857, "file_name": "COCO_train2014_000000581857.jpg", "width": 640, "height": 480}'


def _sentences(value: Any, where: str) -> tuple[str, ...]:
    """A ref's expressions: ``{"sent": ...}`` (the refer toolkit's), ``{"raw": ...}``, ``{"tokens": [...]}`` or
    plain strings."""
    if not isinstance(value, list) or not value:
        raise ValueError(f'{where}: \'sentences\' must be a non-empty list of {{"sent": "..."}}')
    texts = []
    for k, sentence in enumerate(value):
        text: Any = sentence
        if isinstance(sentence, dict):
            if isinstance(sentence.get("sent"), str):
                text = sentence["sent"]
            elif isinstance(sentence.get("raw"), str):
                text = sentence["raw"]
            elif isinstance(sentence.get("tokens"), list):
                text = " ".join(str(t) for t in sentence["tokens"])
            else:
                raise ValueError(
                    f"{where}, sentences[{k}] has no 'sent', 'raw' or 'tokens': write {{\"sent\": \"...\"}}"
                )
        if not isinstance(text, str):
            raise ValueError(f'{where}, sentences[{k}] is a {type(text).__name__}: write {{"sent": "..."}}')
        text = " ".join(text.split())
        if not text:
            raise ValueError(
                f"{where}, sentences[{k}] is an empty expression: write the expression or drop the sentence"
            )
        texts.append(text)
    return tuple(texts)


def _check_segmentation(segmentation: Any, height: int, width: int, where: str) -> Any:
    """A COCO segmentation checked against its image (``None`` when there is none: the box is used)."""
    if segmentation is None or (isinstance(segmentation, list) and not segmentation):
        return None
    if isinstance(segmentation, dict):
        if "counts" not in segmentation or "size" not in segmentation:
            raise ValueError(f"{where}: an RLE segmentation needs 'counts' and 'size' ([height, width])")
        size = segmentation["size"]
        if not isinstance(size, (list, tuple)) or list(size) != [height, width]:
            raise ValueError(
                f"{where}: the RLE size {size!r} is not its image's [height, width] = [{height}, {width}]: the RLE "
                "belongs to another image (or has height and width swapped)"
            )
        counts = segmentation["counts"]
        if not isinstance(counts, (str, list)):
            raise ValueError(f"{where}: RLE counts must be a list of run lengths or COCO's compressed string")
        try:
            rle_decode(counts, height, width) if isinstance(counts, list) else _check_counts(counts, height, width)
        except ValueError as exc:
            raise ValueError(f"{where}: bad RLE segmentation: {exc}") from None
        return {"counts": counts, "size": [height, width]}
    if isinstance(segmentation, list) and all(isinstance(p, list) for p in segmentation):
        for k, poly in enumerate(segmentation):
            if len(poly) < 6 or len(poly) % 2 or not all(_number(v) for v in poly):
                raise ValueError(
                    f"{where}: polygon {k} is not a list of 3 or more points [x1, y1, x2, y2, x3, y3, ...]"
                )
        return segmentation
    raise ValueError(
        f'{where}: segmentation must be polygons [[x1, y1, ...], ...] or an RLE {{"counts": ..., "size": [h, w]}}'
    )


def _check_counts(counts: str, height: int, width: int) -> None:
    total = sum(rle_counts_from_string(counts))
    if total != height * width:
        raise ValueError(f"the counts add up to {total} pixels but the size [{height}, {width}] has {height * width}")


def _read_refs(path: Path) -> list[tuple[str, Any]]:
    """Refs from a JSON list (or an object with a ``"refs"`` list), or from JSONL (one ref per line)."""
    text = _read_text(path, "refs file")
    if path.suffix.lower() == ".jsonl":
        return _parse_jsonl(path, text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # several JSON values: one ref per line
            return _parse_jsonl(path, text)
        raise ValueError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}): fix the refs file"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("refs"), list):
        data = data["refs"]
    if not isinstance(data, list):
        raise ValueError(
            f"{path} holds a JSON {type(data).__name__}, not a list of refs: write [ref, ref, ...] or one ref per "
            f"line, each like {_REF_EXAMPLE}"
        )
    return [(f"entry {i}", ref) for i, ref in enumerate(data)]


def read_refcoco(
    instances: str | os.PathLike[str],
    refs: str | os.PathLike[str],
    image_root: str | os.PathLike[str],
    *,
    split: str | Sequence[str] | None = "train",
    size: int = 224,
    per: str = "sentence",
) -> ReferringGroundingSource:
    """Referring expressions in the refer toolkit's layout (RefCOCO, RefCOCO+, RefCOCOg; Yu et al. 2016,
    Mao et al. 2016) after its ``refs(unc).p`` is converted to JSON.

    - ``instances``: COCO ``instances.json``: ``images`` ``[{id, file_name, width, height}]``, ``annotations``
      ``[{id, image_id, bbox [x, y, w, h], segmentation, category_id}]``; ``segmentation`` is polygons, an
      uncompressed RLE or COCO's compressed RLE string; an annotation without one uses its box, filled.
    - ``refs``: a JSON list of refs or JSONL (one per line), each ``{ann_id, image_id, split, sentences:
      [{"sent": ...}]}`` (``raw`` / ``tokens`` sentences are read too). A ``.p`` / ``.pkl`` pickle is refused with
      the command that converts it.
    - ``image_root``: the folder of the images' ``file_name`` s (e.g. COCO's ``train2014``).
    - ``split``: the refs to keep (``"train"``, ``"val"``, ``"testA"``, ... or several); ``None`` keeps all.
    - ``size``: the image side the batches have (the VLM's resolution, ``vlm.image_size``); ``per``: see
      :class:`ReferringGroundingSource`.

    Everything the refs use is checked here (keys, boxes inside their image, RLE sizes and counts, image files
    present); a problem is a ``ValueError`` naming the file, the entry and the fix. Image pixels are read per batch.
    """
    instances, refs, image_root = Path(instances), Path(refs), Path(image_root)
    ref_rows = _read_refs(refs)
    data = _parse_json(instances, _read_text(instances, "instances file"), "instances file")
    if not (
        isinstance(data, dict) and isinstance(data.get("images"), list) and isinstance(data.get("annotations"), list)
    ):
        raise ValueError(
            f"{instances} is not a COCO instances file: expected an object with 'images' and 'annotations' lists "
            "(the refer toolkit's instances.json of the same dataset as the refs)"
        )
    if not image_root.is_dir():
        raise ValueError(f"image_root {image_root} is not a folder: pass the folder that holds the images' file_name")
    images: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(data["images"]):
        where = f"{instances}, images[{i}]"
        _missing(entry, ("id", "file_name", "width", "height"), where, _IMAGE_EXAMPLE)
        if not all(isinstance(entry[k], int) and entry[k] > 0 for k in ("width", "height")):
            raise ValueError(f"{where}: width and height must be positive whole numbers of pixels")
        images[str(entry["id"])] = entry
    annotations: dict[str, tuple[int, dict[str, Any]]] = {}
    for i, entry in enumerate(data["annotations"]):
        _missing(entry, ("id", "image_id", "bbox"), f"{instances}, annotations[{i}]", _ANN_EXAMPLE)
        annotations[str(entry["id"])] = (i, entry)

    wanted = None if split is None else ({split} if isinstance(split, str) else set(split))
    samples: list[ReferringSample] = []
    splits_seen: set[str] = set()
    for where_ref, ref in ref_rows:
        where = f"{refs}, {where_ref}"
        _missing(
            ref, ("ann_id", "sentences") if wanted is None else ("ann_id", "sentences", "split"), where, _REF_EXAMPLE
        )
        if wanted is not None:
            splits_seen.add(str(ref["split"]))
            if ref["split"] not in wanted:
                continue
        found = annotations.get(str(ref["ann_id"]))
        if found is None:
            raise ValueError(
                f"{where}: ann_id {ref['ann_id']} is not an annotation of {instances}: the refs and the instances "
                "file must come from the same dataset folder (e.g. refcoco/instances.json with refcoco/refs(unc))"
            )
        i, ann = found
        where_ann = f"{instances}, annotations[{i}] (id {ann['id']})"
        if "image_id" in ref and str(ref["image_id"]) != str(ann["image_id"]):
            raise ValueError(
                f"{where}: image_id {ref['image_id']} but its annotation {ann['id']} is on image {ann['image_id']}: "
                "the refs and the instances file do not match"
            )
        image = images.get(str(ann["image_id"]))
        if image is None:
            raise ValueError(f"{where_ann}: image_id {ann['image_id']} is not in {instances}'s images")
        width, height = image["width"], image["height"]
        path = image_root / str(image["file_name"])
        if not path.is_file():
            raise ValueError(
                f"{where}: its image {image['file_name']} (image {image['id']}) is not in {image_root}: pass the "
                "image_root that holds it (COCO train2014 for RefCOCO / RefCOCO+ / RefCOCOg)"
            )
        bbox = _check_bbox(ann["bbox"], width, height, where_ann)
        segmentation = _check_segmentation(ann.get("segmentation"), height, width, where_ann)
        texts = _sentences(ref["sentences"], where)
        name = f"ref {ref.get('ref_id', where_ref)}, annotation {ann['id']}"
        samples.append(ReferringSample(path, width, height, bbox, texts, segmentation, None, name))
    if not samples:
        if wanted is not None:
            raise ValueError(
                f"{refs} holds no refs of split {sorted(wanted)}; its splits are {sorted(splits_seen)}: pass one of "
                "them as split (or split=None for all)"
            )
        raise ValueError(f"{refs} holds no refs: expected refs like {_REF_EXAMPLE}")
    return ReferringGroundingSource(samples, size=size, per=per, name=str(refs))


# ----- a simple JSONL -------------------------------------------------------------------------------------------------
_JSONL_EXAMPLE = (
    '{"image": "img/001.jpg", "expression": "the dog on the left", "bbox": [x, y, w, h], "mask": "m/001.png"}'
)


def read_grounding_jsonl(
    path: str | os.PathLike[str],
    image_root: str | os.PathLike[str] | None = None,
    *,
    size: int = 224,
) -> ReferringGroundingSource:
    """One sample per line: ``{"image": path, "expression": str, "bbox": [x, y, w, h], "mask": path}``.

    ``bbox`` is in pixels of the image; ``mask`` (optional) is a mask file of the image's size (white or alpha =
    the object), else the box is the mask. Relative paths are looked up under ``image_root`` (when given) and then
    the JSONL's folder. Image and mask headers are read here to check boxes and mask sizes; pixels are read per
    batch. ``size``: the image side of the batches (``vlm.image_size``). Problems are ``ValueError`` s naming the
    file, the line and the fix."""
    path = Path(path)
    text = _read_text(path, "JSONL file")
    roots = ([Path(image_root)] if image_root is not None else []) + [path.parent]
    samples = []
    for where_line, row in _parse_jsonl(path, text):
        where = f"{path}, {where_line}"
        _missing(row, ("image", "expression", "bbox"), where, _JSONL_EXAMPLE)
        image = _find_file(row["image"], roots, where, "image")
        width, height = _image_size(image, where)
        expression = row["expression"]
        if not isinstance(expression, str) or not expression.strip():
            raise ValueError(f"{where}: the expression is empty: write the referring expression")
        bbox = _check_bbox(row["bbox"], width, height, where)
        mask_path = None
        if row.get("mask") is not None:
            mask_path = _find_file(row["mask"], roots, where, "mask")
            mask_w, mask_h = _image_size(mask_path, where)
            if (mask_w, mask_h) != (width, height):
                raise ValueError(
                    f"{where}: the mask {mask_path.name} is {mask_w}x{mask_h} but its image {image.name} is "
                    f"{width}x{height}: each mask must have its image's size"
                )
        text_ = " ".join(expression.split())
        samples.append(ReferringSample(image, width, height, bbox, (text_,), None, mask_path, where_line))
    if not samples:
        raise ValueError(f"{path} holds no samples: write one JSON object per line, like {_JSONL_EXAMPLE}")
    return ReferringGroundingSource(samples, size=size, name=str(path))


__all__ = [
    "BOX_TOLERANCE",
    "MASK_SUFFIX",
    "PICKLE_SUFFIXES",
    "SAMPLE_MODES",
    "FolderGroundingSource",
    "ReferringGroundingSource",
    "ReferringSample",
    "TensorGroundingSource",
    "box_mask",
    "polygon_mask",
    "read_grounding_jsonl",
    "read_refcoco",
    "rle_counts_from_string",
    "rle_decode",
    "segmentation_mask",
]
