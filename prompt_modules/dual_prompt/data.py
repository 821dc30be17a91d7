"""DCAR training data from user files: FDRD JSON (:func:`read_fdrd_json`, :class:`FDRDSource`) and a folder of
captioned images (:class:`FolderSource`). Both are :class:`~..core.data.RetrievalSource`s; the procedural world's
source is :class:`promptweave.prompt_modules.world.sources.WorldSource`.

**FDRD as published** (DCAR authors' repository, ``FDRD/test/*_test.json`` and ``FDRD/inter_*_{train,test}.json``):
a JSON object keyed by image id, each value ``{"file_name", "file_path", "positive", "negative", ["class_name"]}``.
``file_name`` may lack the extension (``"Sphynx_43"``), ``file_path`` is a path on the authors' machine
(``/root/autodl-tmp/.../Sphynx_43.jpg``) or a placeholder (``"YOUR_IMAGE_PATH"``), test entries carry 4
category-swap ``negative`` captions and train entries ``"negative": []``. A JSON list of the same entries (the
earlier PromptWeave form) is read too.

**Finding the images** under ``image_root`` (default: the JSON's folder, then its ``images/`` subfolder), first hit
wins: ``file_name`` as written (when it has an image extension), a relative ``file_path``, the base name of
``file_path``, ``file_name`` plus each of :data:`~..core.data.IMAGE_EXTENSIONS` (lower and upper case; when it has
none), the same names inside a ``<class_name>/`` subfolder (the DTD / ImageFolder layout), and last an absolute
``file_path`` itself if it happens to exist. The authors' absolute path is never required.

**Class names.** ``class_name`` fills the batch's ``categories``; an FDRD file covers one fine-grained domain
(pets, aircraft, textures ...), so all its classes are siblings of one family (the view the published swaps are
weighted with): in-batch pairs of two other classes count ``batch_family_weight``, of the same class
``batch_same_category_weight``, pairs with an entry without a class name 1.

**Category-swap negatives for entries without any** (the published train files): every occurrence of the entry's
class name in its caption (case-insensitive, whole words, ``_`` and space alike) is replaced by another class name
of the file; up to ``generated_negatives`` (4, as the published test files) other classes are drawn uniformly
without replacement from the batch's ``(seed, step)`` random stream (the authors' files also swap in random classes
of the set, not only near ones), so batches stay deterministic. They are weighted like the published swaps
(``same_family_weight``). A negative identical to the positive (a caption that does not name its class; the
published pets and flower test files hold a few hundred such negatives) gets weight 0, as do the pads that give
every row of a batch the same count.
Without negatives and class names the source trains with in-batch negatives only, like :class:`FolderSource`.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.data import IMAGE_EXTENSIONS, RetrievalBatch, list_images, load_image, read_text_file
from .config import FDRD_NEGATIVES, DualPromptConfig

_WRAPPER_KEYS = ("data", "annotations", "entries")
_ENTRY_KEYS = "{file_name, file_path, positive, negative[4 or none], class_name}"


@dataclass
class FDRDEntry:
    """One FDRD entry: the image's ``path`` (found under the image root), its caption, the published category-swap
    negatives (may be empty), the class name when the file gives one and the entry's id (key or list index)."""

    file_name: str
    positive: str
    negatives: list[str]
    path: Path
    class_name: str | None = None
    id: str = ""


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise ValueError(f"FDRD JSON not found: {path}")
    try:
        return json.loads(read_text_file(path, "FDRD JSON file"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a UTF-8 text file") from None


def _labelled_items(path: Path, data: Any) -> list[tuple[str, str, Any]]:
    """``(id, label, item)`` of a list (``entry 3``) or an object keyed by image id (``entry 'Sphynx_43'``)."""
    if isinstance(data, dict):
        lists = [data[k] for k in _WRAPPER_KEYS if isinstance(data.get(k), list)]
        if len(lists) == 1:
            data = lists[0]
        else:
            if not data:
                raise ValueError(f"{path}: expected a non-empty JSON list of entries or an object keyed by image id "
                                 f"(the published FDRD files), each entry {_ENTRY_KEYS}")
            bad = next((k for k, v in data.items() if not isinstance(v, dict)), None)
            if bad is not None:
                raise ValueError(
                    f"{path}: expected a JSON list of entries or an object keyed by image id whose values are "
                    f"entries {_ENTRY_KEYS}; the value of {bad!r} is a {type(data[bad]).__name__}, not an object")
            return [(str(k), f"entry {k!r}", v) for k, v in data.items()]
    if not isinstance(data, list) or not data:
        what = "an empty list" if data == [] else f"a {type(data).__name__}"
        raise ValueError(f"{path}: expected a non-empty JSON list of {{file_name, positive, negative}} entries or an "
                         f"object keyed by image id, not {what}")
    return [(str(i), f"entry {i}", item) for i, item in enumerate(data)]


def _base_name(file_path: str) -> str:
    """The last component of a POSIX or Windows path (the authors' paths are from another machine)."""
    return re.split(r"[\\/]", file_path.rstrip("\\/"))[-1]


def _is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def image_candidates(root: Path, file_name: str, file_path: str = "", class_name: str | None = None) -> list[Path]:
    """Where an FDRD entry's image may be under ``root``, in the order they are tried (module docstring)."""
    relative = file_path if file_path and not Path(file_path).is_absolute() and _is_image_name(file_path) else ""
    base = _base_name(file_path) if file_path else ""
    names = [n for n in (file_name, relative, base) if n and _is_image_name(n)]
    if file_name and not _is_image_name(file_name):
        names += [file_name + ext for ext in IMAGE_EXTENSIONS] + [file_name + ext.upper() for ext in IMAGE_EXTENSIONS]
    folders = [root] + ([root / class_name] if class_name and _base_name(class_name) == class_name else [])
    out: list[Path] = []
    for candidate in [folder / name for folder in folders for name in names]:
        if candidate not in out:
            out.append(candidate)
    if file_path and Path(file_path).is_absolute() and _is_image_name(file_path):
        out.append(Path(file_path))  # the authors' own path: used only if it happens to exist here
    return out


def _text(path: Path, label: str, key: str, value: Any, what: str = "a non-empty caption") -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{path}: {label}: '{key}' must be {what}, got {json.dumps(value)[:60]}")
    return value


def read_fdrd_json(path: str | os.PathLike[str], image_root: str | os.PathLike[str] | None = None,
                   n_negatives: int = FDRD_NEGATIVES, check_files: bool = True) -> list[FDRDEntry]:
    """Read an FDRD JSON file: the published object keyed by image id, or a list of the same entries.

    Entries are ``{file_name and/or file_path, positive, negative: [n_negatives captions] or [], class_name?}``.
    Images are looked up under ``image_root`` (default: the JSON's folder, then its ``images/`` subfolder) by the
    rules of the module docstring. Raises ``ValueError`` naming the file (and entry) for a file that is not JSON,
    a wrong top-level type, missing keys, empty captions, a wrong number of negatives or a missing image.
    """
    path = Path(path)
    items = _labelled_items(path, _load_json(path))
    roots = [Path(image_root)] if image_root else [path.parent, path.parent / "images"]
    entries = []
    for entry_id, label, item in items:
        if not isinstance(item, dict):
            raise ValueError(f"{path}: {label} is a {type(item).__name__}, not an object")
        missing = [k for k in ("positive", "negative") if k not in item]
        if "file_name" not in item and "file_path" not in item:
            missing.insert(0, "file_name")
        if missing:
            raise ValueError(f"{path}: {label} lacks the key(s) {missing} (needs file_name or file_path, positive, "
                             "negative; use \"negative\": [] for an entry without negatives)")
        file_name = item.get("file_name", "")
        file_path = item.get("file_path", "")
        for key, value in (("file_name", file_name), ("file_path", file_path)):
            if not isinstance(value, str):
                raise ValueError(f"{path}: {label}: '{key}' must be a string, got {type(value).__name__}")
        if not file_name.strip() and not _is_image_name(_base_name(file_path)):
            raise ValueError(f"{path}: {label}: 'file_name' is empty and 'file_path' names no image file")
        positive = _text(path, label, "positive", item["positive"])
        negatives = item["negative"]
        if not isinstance(negatives, list) or not all(isinstance(n, str) for n in negatives):
            raise ValueError(f"{path}: {label}: 'negative' must be a list of {n_negatives} captions (or [] for none)")
        if negatives and len(negatives) != n_negatives:
            raise ValueError(f"{path}: {label} has {len(negatives)} negatives, expected {n_negatives} "
                             "(or [] for none)")
        for k, negative in enumerate(negatives):
            _text(path, label, f"negative[{k}]", negative)
        class_name = item.get("class_name")
        if class_name is not None:
            class_name = _text(path, label, "class_name", class_name, "a non-empty class name").strip()
        candidates = [c for root in roots for c in image_candidates(root, file_name, file_path, class_name)]
        image_path = next((c for c in candidates if c.is_file()), None) if check_files else candidates[0]
        if image_path is None:
            shown = ", ".join(str(c.relative_to(roots[0])) if c.is_relative_to(roots[0]) else str(c)
                              for c in candidates[:6])
            more = f" and {len(candidates) - 6} more" if len(candidates) > 6 else ""
            name = file_name or _base_name(file_path)
            raise ValueError(
                f"{path}: {label}: image file {name} does not exist under {' or '.join(map(str, roots))} "
                f"(tried {shown}{more}); pass image_root=<the folder that holds the images> (the authors' "
                "file_path is not needed)")
        entries.append(FDRDEntry(file_name or _base_name(file_path), positive, list(negatives), image_path,
                                 class_name, entry_id))
    return entries


def _class_pattern(class_name: str) -> re.Pattern[str]:
    """Whole-word, case-insensitive match of a class name, ``_`` and spaces alike (``Maine_Coon`` ~ ``maine coon``)."""
    words = [re.escape(w) for w in re.split(r"[_\s]+", class_name.strip()) if w]
    return re.compile(r"(?<!\w)" + r"[_\s]+".join(words) + r"(?!\w)", re.IGNORECASE)


def category_swap_negatives(caption: str, class_name: str, others: list[str], n: int,
                            rng: random.Random) -> list[str]:
    """Up to ``n`` captions with every mention of ``class_name`` replaced by another class of ``others`` (drawn
    uniformly without replacement by ``rng``); a caption that never names its class comes back unchanged (the
    source gives those weight 0). Underscores of the new name become spaces unless the caption wrote the class
    name with them."""
    pattern = _class_pattern(class_name)
    pool = [c for c in others if c.casefold() != class_name.casefold()]
    swaps = rng.sample(pool, min(n, len(pool)))
    out = []
    for other in swaps:
        out.append(pattern.sub(lambda m, o=other: o if "_" in m.group(0) else o.replace("_", " "), caption))
    return out


class FDRDSource:
    """Training batches from an FDRD JSON (module docstring): the published category-swap negatives, or swaps
    generated from the class names, weighted as siblings; images at ``size`` (pass ``vlm.image_size``)."""

    def __init__(self, json_path: str | os.PathLike[str], image_root=None, size: int = 64,
                 config: DualPromptConfig | None = None, *, generated_negatives: int = FDRD_NEGATIVES) -> None:
        self.entries = read_fdrd_json(json_path, image_root)
        self.size = size
        self.config = config or DualPromptConfig()
        self.generated_negatives = generated_negatives
        self.class_names = sorted({e.class_name for e in self.entries if e.class_name})
        self.family = Path(json_path).stem

    def __len__(self) -> int:
        return len(self.entries)

    def _negatives(self, entry: FDRDEntry, rng: random.Random) -> list[str]:
        if entry.negatives:
            return list(entry.negatives)
        if entry.class_name and len(self.class_names) > 1 and self.generated_negatives > 0:
            return category_swap_negatives(entry.positive, entry.class_name, self.class_names,
                                           self.generated_negatives, rng)
        return []

    def batch(self, seed: int, step: int, batch_size: int) -> RetrievalBatch:
        rng = random.Random(seed * 1_000_003 + step)
        picks = rng.sample(range(len(self.entries)), min(batch_size, len(self.entries)))
        chosen = [self.entries[i] for i in picks]
        rows = [self._negatives(e, rng) for e in chosen]
        k = max((len(r) for r in rows), default=0)
        negatives: list[list[str]] = []
        weights = torch.zeros(len(chosen), k)
        for i, (entry, row) in enumerate(zip(chosen, rows, strict=True)):
            same = " ".join(entry.positive.split()).casefold()
            for j, caption in enumerate(row):
                if " ".join(caption.split()).casefold() != same:
                    weights[i, j] = self.config.same_family_weight
            negatives.append(row + [row[0] if row else entry.positive] * (k - len(row)))  # pads: weight 0
        categories = families = None
        if self.class_names:
            categories = [(e.class_name,) if e.class_name else (f"#{e.id}",) for e in chosen]
            families = [(self.family,) if e.class_name else (f"#{e.id}",) for e in chosen]
        return RetrievalBatch(
            images=torch.stack([load_image(e.path, self.size) for e in chosen]),
            positives=[e.positive for e in chosen],
            negatives=negatives if k else [],
            negative_weights=weights if k else torch.zeros(0, 0),
            categories=categories,
            families=families,
        )


class FolderSource:
    """Images with same-named ``.txt`` captions in a folder (in-batch negatives only)."""

    def __init__(self, folder: str | os.PathLike[str], size: int = 64) -> None:
        folder = Path(folder)
        images = list_images(folder)
        if len(images) < 2:
            raise ValueError(f"{folder} holds {len(images)} images; need at least 2 images with .txt captions")
        missing = [p.name for p in images if not p.with_suffix(".txt").is_file()]
        if missing:
            raise ValueError(f"{folder}: images without a same-named .txt caption: {missing[:5]}")
        self.items = [(p, read_text_file(p.with_suffix(".txt"), "caption").strip()) for p in images]
        self.size = size

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, seed: int, step: int, batch_size: int) -> RetrievalBatch:
        rng = random.Random(seed * 1_000_003 + step)
        chosen = [self.items[i] for i in rng.sample(range(len(self.items)), min(batch_size, len(self.items)))]
        return RetrievalBatch(
            images=torch.stack([load_image(p, self.size) for p, _ in chosen]), positives=[c for _, c in chosen]
        )

