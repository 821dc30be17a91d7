"""Data every method reads: image/mask loading at a model's resolution, folder listing, and the batch types
and ``Source`` protocols the trainers draw from.

A *source* is any object with ``batch(seed, step, batch_size)`` returning the method's batch type; the batch
depends on ``(seed, step)`` only, so training is deterministic and resumable. Sources for files live with the
method that reads them (or here when shared); the procedural benchmark world provides its own sources
(:mod:`promptweave.prompt_modules.world.sources`), and no method imports the world.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .distributed import SINGLE_PROCESS, DataParallel

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


# ----- files ----------------------------------------------------------------------------------------------------
def list_images(folder: str | os.PathLike[str], what: str = "dataset folder", *, recursive: bool = False
                ) -> list[Path]:
    """The image files in ``folder``, sorted by name; a missing folder is a ``ValueError``. ``recursive``: its
    sub-folders too, sorted by path relative to ``folder`` (hidden ``.name`` folders and symlinked folders are
    not entered, so a link loop or a link out of the dataset is never walked)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{what} {folder} does not exist")
    if not recursive:
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    found = []
    for root, dirs, files in os.walk(folder):  # followlinks=False: symlinked folders are listed, not entered
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root) / f for f in files if Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    return sorted((p for p in found if p.is_file()), key=lambda p: p.relative_to(folder).parts)


#: How :func:`load_image` brings an image to ``size x size``: ``"crop"`` resizes the short side and takes the
#: centre (CLIP's preprocessing), ``"stretch"`` resizes the whole image (what box and mask annotations need).
FITS = ("crop", "stretch")


#: Bounds every image reader checks from the file's header, before anything is decoded or scaled: at most 64
#: megapixels (PIL's decompression-bomb guard starts near 90), and a long side at most 16 times the short one (a
#: 100,000 x 1 strip scaled to a 224 px short side would need gigabytes).
MAX_IMAGE_PIXELS = 64 * 2**20
MAX_IMAGE_ASPECT = 16


def _open_checked(path: Path):
    """``PIL.Image.open(path)`` with its size checked against the bounds; any failure a ``ValueError`` naming the
    file (PIL raises OSError, SyntaxError, ValueError or its DecompressionBombError for broken or hostile files)."""
    from PIL import Image

    try:
        im = Image.open(path)
        width, height = im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None
    problem = None
    if width < 1 or height < 1:
        problem = f"it is {width}x{height} pixels"
    elif width * height > MAX_IMAGE_PIXELS:
        problem = f"it is {width}x{height} pixels, more than {MAX_IMAGE_PIXELS // 2**20} megapixels"
    elif max(width, height) > MAX_IMAGE_ASPECT * min(width, height):
        problem = f"it is {width}x{height} pixels, longer than {MAX_IMAGE_ASPECT} times its width"
    if problem:
        im.close()
        raise ValueError(f"cannot use image {path}: {problem}; resize or crop it, or remove it from the dataset")
    return im


#: PIL modes of 16- and 32-bit grey images, whose own conversion to RGB clips every value above 255 to white.
_WIDE_GREY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def rgb_image(im):
    """A PIL image of any mode as 8-bit RGB: 16-bit grey scaled down (not clipped to white as PIL's own
    ``convert`` does), and transparency (RGBA, LA, PA, a palette's or a colour key's) composited on white, so a
    cut-out reads as an object on a white ground whatever colour its transparent pixels hold."""
    from PIL import Image

    if im.mode in _WIDE_GREY_MODES:
        grey = np.asarray(im).astype(np.float32) / 257.0  # 0..65535 -> 0..255
        return Image.fromarray(np.clip(grey + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def load_image(path: str | os.PathLike[str], size: int | None = None, *, fit: str = "crop") -> torch.Tensor:
    """An RGB image ``[3, H, W]`` in 0..1 (:func:`rgb_image`: alpha on white, 16-bit scaled): at its own size
    without ``size``; with ``size``, brought to ``size x size`` by ``fit`` (:data:`FITS`): ``"crop"`` resizes the
    short side (bicubic) and centre-crops, the way CLIP preprocesses; ``"stretch"`` resizes the whole image
    (bilinear; a large JPEG is decoded at a reduced scale that is still at least ``size``, so big photos load fast).
    The size is checked from the header first (:data:`MAX_IMAGE_PIXELS`, :data:`MAX_IMAGE_ASPECT`); an unreadable
    or out-of-bounds file is a ``ValueError`` naming it."""
    from PIL import Image

    if fit not in FITS:
        raise ValueError(f"unknown fit {fit!r}; expected one of {FITS}")
    path = Path(path)
    try:
        with _open_checked(path) as im:
            if size is not None and fit == "stretch" and im.format == "JPEG":
                im.draft("RGB", (size, size))
            im = rgb_image(im)
            if size is not None and fit == "crop":
                scale = size / min(im.size)
                w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
                im = im.resize((w, h), Image.BICUBIC)
                left, top = (w - size) // 2, (h - size) // 2
                im = im.crop((left, top, left + size, top + size))
            elif size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            array = np.asarray(im, dtype=np.float32) / 255.0
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:  # a truncated file fails on decoding
        raise ValueError(f"cannot read image {path}: {exc}") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def image_file_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of an image file, read from its header and checked against the bounds; an unreadable
    or out-of-bounds file is a ``ValueError`` naming it."""
    with _open_checked(Path(path)) as im:
        return im.size


def files_fingerprint(*paths: str | os.PathLike[str] | None) -> str | None:
    """A digest of the files at ``paths`` (each a file or a folder, walked recursively): every file's relative
    name, size and modification time. A training run keyed by it never resumes from a checkpoint of other data
    (a folder whose images were replaced keeps its file count, not its fingerprint). ``None`` when no path is
    given; a path that does not exist counts as such."""
    import hashlib

    given = [Path(p) for p in paths if p]
    if not given:
        return None
    digest = hashlib.sha1()
    for root in given:
        digest.update(f"\0root:{root}".encode("utf-8", "surrogatepass"))
        files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else []
        for file in files:
            try:
                stat = file.stat()
            except OSError:
                continue
            name = file.name if file == root else file.relative_to(root).as_posix()
            digest.update(f"\0{name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:16]


def read_text_file(path: str | os.PathLike[str], what: str = "text file", encoding: str = "utf-8") -> str:
    """The text of a caption, expression or annotation file; a missing, unreadable or non-UTF-8 file is a
    ``ValueError`` that names it (and the byte where the encoding breaks)."""
    path = Path(path)
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        raise ValueError(f"the {what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start}): save it as UTF-8"
                         ) from None
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def load_mask(path: str | os.PathLike[str]) -> torch.Tensor:
    """A mask ``[H, W]`` in 0..1 at the file's size: the alpha channel where it varies (ComfyUI-style masks),
    else the grey levels. An unreadable or out-of-bounds file (the image bounds) is a ``ValueError`` naming it."""
    from PIL import Image

    path = Path(path)
    try:
        with _open_checked(path) as im:
            if "A" in im.getbands() and im.mode != "L":
                array = np.asarray(im.getchannel("A"), dtype=np.float32) / 255.0
                if array.min() == array.max():
                    array = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
            else:
                array = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read mask {path}: {exc}") from None
    return torch.from_numpy(array)


def square_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` resized (bilinear, antialiased) to ``size x size`` and clamped to 0..1."""
    if tuple(images.shape[-2:]) == (size, size):
        return images.float().clamp(0, 1)
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.clamp(0, 1)


def resize_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    """Masks ``[B, H, W]`` resized to ``size x size`` and binarised at 0.5."""
    if tuple(masks.shape[-2:]) == (size, size):
        return (masks > 0.5).float()
    return (
        F.interpolate(masks.float().unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False)[:, 0] > 0.5
    ).float()


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """Normalised tight boxes ``[B, 4]`` of masks ``[B, H, W]`` (an empty mask gives a zero box)."""
    b, h, w = masks.shape
    out = torch.zeros(b, 4)
    for i in range(b):
        ys, xs = torch.nonzero(masks[i] > 0.5, as_tuple=True)
        if len(ys):
            out[i] = torch.tensor([xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h])
    return out


# ----- batches and sources ----------------------------------------------------------------------------------------
@dataclass
class RetrievalBatch:
    """Image-text pairs (dual prompts, DCAR): images ``[B, 3, H, W]`` in 0..1, their captions, hard negatives
    per image with weights ``[B, K]``, and (when known) the fine categories and families of each image."""

    images: torch.Tensor
    positives: list[str]
    negatives: list[list[str]] = field(default_factory=list)
    negative_weights: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0))
    categories: list[tuple[str, ...]] | None = None
    families: list[tuple[str, ...]] | None = None


class RetrievalSource(Protocol):
    def batch(self, seed: int, step: int, batch_size: int) -> RetrievalBatch: ...


@dataclass
class ClassBatch:
    """Class-labelled images (prompt pretraining): images ``[B, 3, H, W]`` in 0..1 and class ids ``[B]``
    (indices into the source's ``class_names``)."""

    images: torch.Tensor
    labels: torch.Tensor


class ClassSource(Protocol):
    class_names: list[str]

    def batch(self, seed: int, step: int, batch_size: int) -> ClassBatch: ...


@dataclass
class GroundingBatch:
    """Referring expressions with masks (Diff-Prompt): ``images`` ``[B, 3, S, S]`` in 0..1, ``masks``
    ``[B, S, S]`` in {0, 1}, ``boxes`` ``[B, 4]`` normalised ``x0, y0, x1, y1``, one expression per image."""

    images: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor
    texts: list[str]


class GroundingSource(Protocol):
    def batch(self, seed: int, step: int, batch_size: int) -> GroundingBatch: ...


# ----- a rank's part of a global batch (training under torchrun) ----------------------------------------------------
def cut_batch(batch: Any, part: slice) -> Any:
    """The rows ``part`` of a batch dataclass (every tensor and list field cut along its first dimension)."""
    rows = {}
    for item in dataclasses.fields(batch):
        value = getattr(batch, item.name)
        rows[item.name] = value[part] if isinstance(value, (torch.Tensor, list, tuple)) else value
    return dataclasses.replace(batch, **rows)


def read_part(source: Any, seed: int, step: int, batch_size: int, parallel: DataParallel = SINGLE_PROCESS) -> Any:
    """This rank's part (:meth:`~.distributed.DataParallel.part`) of the global batch ``source.batch(seed, step,
    batch_size)``. A source with ``batch_part(seed, step, batch_size, part)`` reads only those samples (it draws the
    whole batch's choices, then loads or renders its rows); any other source makes the whole batch, which is cut.
    In one process: ``source.batch(...)`` itself."""
    if not parallel.active:
        return source.batch(seed, step, batch_size)
    part = parallel.part(batch_size)
    reader = getattr(source, "batch_part", None)
    if reader is not None:
        return reader(seed, step, batch_size, part)
    return cut_batch(source.batch(seed, step, batch_size), part)
