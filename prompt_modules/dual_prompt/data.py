"""DCAR training data from user files: FDRD-style JSON (:func:`read_fdrd_json`, :class:`FDRDSource`) and a folder
of captioned images (:class:`FolderSource`). Both are :class:`~..core.data.RetrievalSource`s; the procedural world's
source is :class:`promptweave.prompt_modules.world.sources.WorldSource`."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.data import RetrievalBatch, list_images, load_image
from .config import FDRD_NEGATIVES, DualPromptConfig


@dataclass
class FDRDEntry:
    file_name: str
    positive: str
    negatives: list[str]
    path: Path


def read_fdrd_json(path: str | os.PathLike[str], image_root: str | os.PathLike[str] | None = None,
                   n_negatives: int = FDRD_NEGATIVES, check_files: bool = True) -> list[FDRDEntry]:
    """Read an FDRD-style JSON list of ``{file_name, positive, negative: [4 captions]}``.

    Images are looked up relative to ``image_root`` (default: the JSON's folder). A top-level object with a
    single list under ``data``/``annotations``/``entries`` is accepted too. Raises ``ValueError`` naming the
    file (and entry) for malformed JSON, missing keys, a wrong number of negatives or a missing image.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"FDRD JSON not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a UTF-8 text file") from None
    if isinstance(data, dict):
        lists = [data[k] for k in ("data", "annotations", "entries") if isinstance(data.get(k), list)]
        if len(lists) != 1:
            raise ValueError(f"{path}: expected a JSON list of {{file_name, positive, negative}} entries")
        data = lists[0]
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list of {{file_name, positive, negative}} entries")
    root = Path(image_root) if image_root else path.parent
    entries = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: entry {i} is a {type(item).__name__}, not an object")
        missing = [k for k in ("file_name", "positive", "negative") if k not in item]
        if missing:
            raise ValueError(f"{path}: entry {i} lacks the key(s) {missing} (needs file_name, positive, negative)")
        negatives = item["negative"]
        if not isinstance(negatives, list) or not all(isinstance(n, str) for n in negatives):
            raise ValueError(f"{path}: entry {i}: 'negative' must be a list of {n_negatives} captions")
        if len(negatives) != n_negatives:
            raise ValueError(f"{path}: entry {i} has {len(negatives)} negatives, expected {n_negatives}")
        if not isinstance(item["positive"], str) or not item["positive"].strip():
            raise ValueError(f"{path}: entry {i}: 'positive' must be a non-empty caption")
        image_path = root / str(item["file_name"])
        if check_files and not image_path.is_file():
            raise ValueError(f"{path}: entry {i}: image file {image_path} does not exist")
        entries.append(FDRDEntry(str(item["file_name"]), item["positive"], list(negatives), image_path))
    return entries


class FDRDSource:
    """Training batches from an FDRD-style JSON (the 4 category-swap negatives are weighted as siblings)."""

    def __init__(self, json_path: str | os.PathLike[str], image_root=None, size: int = 64,
                 config: DualPromptConfig | None = None) -> None:
        self.entries = read_fdrd_json(json_path, image_root)
        self.size = size
        self.config = config or DualPromptConfig()

    def __len__(self) -> int:
        return len(self.entries)

    def batch(self, seed: int, step: int, batch_size: int) -> RetrievalBatch:
        rng = random.Random(seed * 1_000_003 + step)
        picks = rng.sample(range(len(self.entries)), min(batch_size, len(self.entries)))
        chosen = [self.entries[i] for i in picks]
        return RetrievalBatch(
            images=torch.stack([load_image(e.path, self.size) for e in chosen]),
            positives=[e.positive for e in chosen],
            negatives=[list(e.negatives) for e in chosen],
            negative_weights=torch.full((len(chosen), FDRD_NEGATIVES), self.config.same_family_weight),
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
        self.items = [(p, p.with_suffix(".txt").read_text(encoding="utf-8").strip()) for p in images]
        self.size = size

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, seed: int, step: int, batch_size: int) -> RetrievalBatch:
        rng = random.Random(seed * 1_000_003 + step)
        chosen = [self.items[i] for i in rng.sample(range(len(self.items)), min(batch_size, len(self.items)))]
        return RetrievalBatch(
            images=torch.stack([load_image(p, self.size) for p, _ in chosen]), positives=[c for _, c in chosen]
        )

