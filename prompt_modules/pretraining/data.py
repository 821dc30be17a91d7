"""RPP training data: POMP's class-subset sampling (:func:`sample_class_subset`) and an ImageFolder class layout from
user files (:class:`FolderClassSource`, a :class:`~..core.data.ClassSource`, with an optional WordNet-id -> name
mapping, :func:`read_class_map`, and a fixed number of shots per class). The procedural world's class sources are in
:mod:`promptweave.prompt_modules.world.sources` (``WorldClassSource``, ``world_classes``)."""

from __future__ import annotations

import json
import os
import random
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from ..core.data import ClassBatch, list_images, load_image, read_text_file


def sample_class_subset(
    labels: torch.Tensor, n_classes: int, k: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """POMP's local contrast: the batch's classes plus random others, ``max(k, #batch classes)`` in all.

    Returns ``(subset, local_labels)``: class ids ``[K]`` (batch classes first, in sorted order) and the batch
    labels as indices into ``subset``. ``k <= 0`` or ``k >= n_classes`` keeps all classes.
    """
    labels = labels.cpu()
    if k <= 0 or k >= n_classes:
        return torch.arange(n_classes), labels
    present = labels.unique()
    missing = k - len(present)
    if missing > 0:
        mask = torch.ones(n_classes, dtype=torch.bool)
        mask[present] = False
        others = mask.nonzero().squeeze(1)
        picks = others[torch.randperm(len(others), generator=generator)[:missing]]
        subset = torch.cat([present, picks])
    else:
        subset = present
    lookup = torch.full((n_classes,), -1, dtype=torch.long)
    lookup[subset] = torch.arange(len(subset))
    return subset, lookup[labels]


# ----- class folders ---------------------------------------------------------------------------------------------
#: A WordNet synset id as ImageNet names its class folders (``n01440764``).
_WNID = re.compile(r"[a-z]\d{8}")


def _first_name(value: object, where: str) -> str:
    """The first name of a mapping value: a string holds comma-separated synonyms (WordNet's ``words.txt`` form,
    ``"tench, Tinca tinca"``), a list holds names; ``_`` reads as a space (WordNet lemma spelling)."""
    if isinstance(value, str):
        name = value.split(",")[0]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        name = value[0]
    else:
        raise ValueError(f"{where}: the class name must be a string or a list of strings, got {value!r}")
    name = " ".join(name.replace("_", " ").split())
    if not name:
        raise ValueError(f"{where}: the class name is empty")
    return name


def read_class_map(path: str | os.PathLike[str]) -> dict[str, str]:
    """A class-name mapping file: folder id (a WordNet id such as ``n01440764``, as ImageNet / ImageNet-21K name
    their class folders) -> class name. The first name is the class name; ``_`` reads as a space.

    Accepted forms (a ``.json`` suffix means JSON, anything else text):

    - text, one class a line: ``n01440764 tench, Tinca tinca`` (ImageNet's ``LOC_synset_mapping.txt``) or
      ``n01440764<TAB>tench, Tinca tinca`` (WordNet / ImageNet-21K ``words.txt``): the id, white space, then
      comma-separated synonyms. Blank lines and lines starting with ``#`` are skipped.
    - JSON ``{"n01440764": "tench, Tinca tinca"}`` (a string is a synonym list as above) or
      ``{"n01440764": ["tench", "Tinca tinca"]}``; also Keras' ``imagenet_class_index.json``
      ``{"0": ["n01440764", "tench"]}`` (index -> [id, name]).

    A malformed line or entry, or an id given twice with different names, is a ``ValueError`` naming the file and
    the line or id.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"class-name mapping file {path} does not exist")
    text = read_text_file(path, "class-name mapping file", encoding="utf-8-sig")
    mapping: dict[str, str] = {}

    def add(key: str, name: str, where: str) -> None:
        if mapping.get(key, name) != name:
            raise ValueError(f"{where}: id {key!r} is mapped twice ({mapping[key]!r} and {name!r})")
        mapping[key] = name

    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"class-name mapping {path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not data:
            raise ValueError(
                f"class-name mapping {path} must be a non-empty JSON object {{id: name}} or {{id: [names]}}, "
                f"got {type(data).__name__}"
            )
        keras = all(
            k.isdigit() and isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v)
            and _WNID.fullmatch(v[0].strip()) is not None
            for k, v in data.items()
        )
        for key, value in data.items():
            where = f"class-name mapping {path}, entry {key!r}"
            if keras:  # {"0": ["n01440764", "tench"]}
                add(value[0].strip(), _first_name(value[1], where), where)
            else:
                add(key.strip(), _first_name(value, where), where)
        return mapping
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"class-name mapping {path}, line {number}"
        parts = line.split(None, 1)
        if len(parts) < 2:
            raise ValueError(
                f"{where}: {line!r} has an id but no name; write 'n01440764 tench, Tinca tinca' or "
                "'n01440764<TAB>tench' (id, white space, names)"
            )
        add(parts[0], _first_name(parts[1], where), where)
    if not mapping:
        raise ValueError(f"class-name mapping {path} holds no 'id name' lines")
    return mapping


class FolderClassSource:
    """An ImageFolder class layout (``root/<class>/<image>``, as torchvision's ``ImageFolder`` and ImageNet /
    ImageNet-21K): one sub-folder of images per class, classes in sorted folder order. Batches draw images
    uniformly, loaded at ``size`` (callers pass the VLM's ``image_size``).

    Class names: without ``class_map`` the sub-folder's name with ``_`` and ``-`` read as spaces; with one (a file
    for :func:`read_class_map`, or a dict) the mapped name of the folder's id (``n01440764`` -> ``tench``); a
    folder the mapping lacks is a ``ValueError`` naming it. Names need not be unique (ImageNet has two "crane"s).

    Shots (POMP / RPP use 16-shot ImageNet-21K): ``shots=K`` keeps ``K`` images per class; ``0`` keeps all. The
    ``K`` are the first in sorted file-name order, or with ``shot_seed`` a seeded random choice
    (``random.Random(f"{shot_seed}|{folder}")``: the same files for the same seed and folder, independent of the
    other folders). A class with fewer than ``K`` images is used with all it has and reported: listed in
    :attr:`short_classes` (folder -> image count) and in a ``UserWarning``. Sub-folders without images are
    skipped; fewer than two classes is an error.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        size: int = 64,
        *,
        class_map: str | os.PathLike[str] | Mapping[str, str] | None = None,
        shots: int = 0,
        shot_seed: int | None = None,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"dataset folder {root} does not exist")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"image size must be a positive int (the VLM's image_size), got {size!r}")
        if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
            raise ValueError(f"shots must be an int >= 0 (0: all images of each class), got {shots!r}")
        mapping: Mapping[str, str] | None
        if class_map is None or isinstance(class_map, Mapping):
            mapping = class_map
            map_name = "the class-name mapping"
        else:
            mapping = read_class_map(class_map)
            map_name = f"class-name mapping {Path(class_map)}"
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        items: list[tuple[Path, int]] = []
        names: list[str] = []
        kept: list[str] = []
        short: dict[str, int] = {}
        for folder in folders:
            images = list_images(folder)
            if not images:
                continue
            if mapping is not None:
                if folder.name not in mapping:
                    raise ValueError(
                        f"{map_name} has no entry for class folder {folder} (id {folder.name!r}); add a line "
                        f"'{folder.name} <class name>' to it, or remove the folder"
                    )
                name = _first_name(mapping[folder.name], f"{map_name}, entry {folder.name!r}")
            else:
                name = folder.name.replace("_", " ").replace("-", " ").strip()
            if shots:
                if len(images) < shots:
                    short[folder.name] = len(images)
                elif shot_seed is not None:
                    images = sorted(random.Random(f"{shot_seed}|{folder.name}").sample(images, shots))
                else:
                    images = images[:shots]
            items += [(p, len(names)) for p in images]
            names.append(name)
            kept.append(folder.name)
        if len(names) < 2:
            raise ValueError(
                f"{root} holds {len(names)} class folder(s) with images; need at least 2 sub-folders "
                "(one per class, named after the class) with images in them"
            )
        if short:
            listed = ", ".join(f"{k} ({v})" for k, v in list(short.items())[:10]) + (" ..." if len(short) > 10 else "")
            warnings.warn(
                f"{len(short)} class folder(s) of {root} have fewer than {shots} images and are used with all they "
                f"have: {listed}",
                stacklevel=2,
            )
        self.class_names, self.items, self.size = names, items, size
        self.class_folders: list[str] = kept
        self.shots, self.shot_seed = shots, shot_seed
        self.short_classes: dict[str, int] = short

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, seed: int, step: int, batch_size: int) -> ClassBatch:
        rng = random.Random(seed * 1_000_003 + step)
        chosen = [self.items[rng.randrange(len(self.items))] for _ in range(batch_size)]
        images = torch.stack([load_image(p, self.size) for p, _ in chosen])
        return ClassBatch(images, torch.tensor([c for _, c in chosen], dtype=torch.long))
