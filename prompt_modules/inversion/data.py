"""Training pairs: a folder of ``name.png`` + ``name.txt`` files (:func:`load_pair_folder`), a JSONL / JSON / CSV /
parquet manifest of (image path, prompt) rows such as DiffusionDB's ``metadata.parquet`` or a Hugging Face
``imagefolder`` ``metadata.jsonl`` (:func:`load_pair_manifest`), and targets/labels for prompts. Images load at the
image encoder's resolution, the ``size`` the caller passes."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.data import IMAGE_EXTENSIONS, list_images, load_image
from .targets import TextEmbedder
from .vocabulary import Vocabulary


def load_pair_folder(folder: str | os.PathLike[str], size: int = 64, *, recursive: bool = True
                     ) -> tuple[torch.Tensor, list[str]]:
    """Images ``[N, 3, size, size]`` (RGB, short side resized and centre-cropped by
    :func:`~promptweave.prompt_modules.core.data.load_image`) and their prompts from ``folder`` and, with
    ``recursive``, its sub-folders (the layout :func:`~.caption.caption_folder` writes and LoRA trainers read).

    Every image needs a ``.txt`` file of the same stem holding its prompt; images without one are skipped;
    a folder without any pair is an error.
    """
    pairs = read_pair_folder(folder, recursive=recursive)
    return load_pair_images(pairs, size), [p.prompt for p in pairs]


def read_pair_folder(folder: str | os.PathLike[str], *, recursive: bool = True) -> list[ManifestPair]:
    """The (image file, prompt) pairs :func:`load_pair_folder` loads, without loading images (``where`` is the
    image's path relative to ``folder``)."""
    pairs = []
    for path in list_images(folder, recursive=recursive):
        caption = path.with_suffix(".txt")
        if not caption.is_file():
            continue
        text = caption.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            pairs.append(ManifestPair(path, text, path.relative_to(folder).as_posix()))
    if not pairs:
        raise ValueError(f"dataset folder {Path(folder)} has no image.png + image.txt pairs")
    return pairs


def load_pair_images(
    pairs: Sequence[ManifestPair], size: int, manifest: str | os.PathLike[str] | None = None
) -> torch.Tensor:
    """The images ``[N, 3, size, size]`` of ``pairs`` (:func:`~..core.data.load_image`); an unreadable one is a
    ``ValueError`` naming the file (and, for a ``manifest``'s pairs, the manifest and its row)."""
    images = []
    for pair in pairs:
        try:
            images.append(load_image(pair.path, size))
        except ValueError as exc:
            if manifest is None:
                raise
            raise ValueError(f"manifest {Path(manifest)}, {pair.where}: {exc}") from None
    return torch.stack(images)


# ----- manifests (JSONL / JSON / CSV / parquet) -------------------------------------------------------------------
#: Accepted image-column names, in order of preference (``image_name``: DiffusionDB's metadata; ``file_name``:
#: Hugging Face ``imagefolder``'s ``metadata.jsonl`` / ``metadata.csv``).
IMAGE_COLUMNS = ("image", "image_name", "file_name", "path")
#: Accepted prompt-column names, in order of preference (``prompt``: DiffusionDB; ``text``: ``imagefolder``).
PROMPT_COLUMNS = ("prompt", "text", "caption")
#: Manifest formats by file suffix.
MANIFEST_SUFFIXES = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"
}


#: ``(where, row)`` pairs of a manifest: ``where`` is ``"line 3"`` / ``"row 3"`` / ``"entry 3"``, or ``"header"``
#: for the column names (CSV and parquet only; the row's values are then ``None``).
Rows = Generator[tuple[str, dict[str, Any]], None, None]


@dataclass
class ManifestPair:
    """One usable manifest row: the resolved image file, its prompt and where it came from (``"line 3"``,
    ``"row 3"``, ``"entry 3"``)."""

    path: Path
    prompt: str
    where: str


def _pick_column(columns: Sequence[str], explicit: str | None, accepted: tuple[str, ...], what: str,
                 at: str) -> str:
    """The ``what`` column: ``explicit``, else the first ``accepted`` name in ``columns``; ``at`` names the place."""
    if explicit is not None:
        if explicit not in columns:
            raise ValueError(f"{at}: no {what} column {explicit!r}; the columns are {list(columns)}")
        return explicit
    for name in accepted:
        if name in columns:
            return name
    raise ValueError(
        f"{at}: no {what} column: expected one of {list(accepted)}, found {list(columns)}; "
        f"name yours with {what}_column="
    )


def _jsonl_rows(manifest: Path) -> Rows:
    with manifest.open(encoding="utf-8-sig") as fh:
        try:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"line {number}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"manifest {manifest}, {where}: not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(
                        f"manifest {manifest}, {where}: a JSONL line must be an object such as "
                        f'{{"image": "a.png", "prompt": "..."}}, got {type(row).__name__}'
                    )
                yield where, row
        except UnicodeDecodeError as exc:
            raise ValueError(f"manifest {manifest} is not UTF-8 text: {exc}") from None


def _json_rows(manifest: Path) -> Rows:
    """A JSON list of row objects, or DiffusionDB's per-part file ``part-000001.json``:
    ``{"<image_name>": {"p": prompt, "se": seed, "c": cfg, "st": steps, "sa": sampler}}``."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"manifest {manifest} is not valid JSON: {exc}") from None
    if isinstance(data, list):
        for number, row in enumerate(data, start=1):
            if not isinstance(row, dict):
                raise ValueError(f"manifest {manifest}, entry {number}: must be an object, got {type(row).__name__}")
            yield f"entry {number}", row
        return
    if not isinstance(data, dict):
        raise ValueError(f"manifest {manifest} must be a JSON list of objects or DiffusionDB's {{image: {{'p': ...}}}}")
    for name, value in data.items():
        if not isinstance(value, dict) or "p" not in value:
            raise ValueError(
                f"manifest {manifest}, entry {name!r}: a DiffusionDB part file maps each image name to an object "
                f'with its prompt "p", got {value!r}'
            )
        yield f"entry {name!r}", {"image_name": name, "prompt": value["p"]}


def _csv_rows(manifest: Path, delimiter: str) -> Rows:
    with manifest.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter, strict=True)  # strict: a stray or unclosed quote is an error
        try:
            header = next(reader, None)
            if header is None:
                raise ValueError(f"manifest {manifest} is empty: it needs a header row such as 'image,prompt'")
            header = [h.strip() for h in header]
            if len(set(header)) != len(header):
                raise ValueError(f"manifest {manifest}: the header {header} names a column twice")
            yield "header", {h: None for h in header}
            for fields in reader:
                where = f"line {reader.line_num}"
                if not any(f.strip() for f in fields):
                    continue
                if len(fields) != len(header):
                    hint = " (an unquoted comma in a prompt? quote the field)" if len(fields) > len(header) else ""
                    raise ValueError(
                        f"manifest {manifest}, {where}: {len(fields)} fields, the header has {len(header)}{hint}"
                    )
                yield where, dict(zip(header, fields, strict=True))
        except csv.Error as exc:
            raise ValueError(f"manifest {manifest}, line {reader.line_num}: malformed CSV ({exc})") from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"manifest {manifest} is not UTF-8 text: {exc}") from None


def _parquet_rows(manifest: Path, wanted: Callable[[Sequence[str]], list[str]]
                  ) -> Rows:
    """Rows of a parquet file (only the ``wanted(columns)`` columns are read), by pyarrow, else by pandas."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        pq = None
    if pq is not None:
        try:
            file = pq.ParquetFile(manifest)
            columns = wanted(file.schema_arrow.names)
            yield "header", {c: None for c in file.schema_arrow.names}
            number = 0
            for batch in file.iter_batches(columns=columns, batch_size=4096):
                for row in batch.to_pylist():
                    number += 1
                    yield f"row {number}", row
        except (OSError, ValueError) as exc:
            if isinstance(exc, ValueError) and str(exc).startswith(f"manifest {manifest}"):
                raise
            raise ValueError(f"cannot read parquet manifest {manifest}: {exc}") from None
        return
    try:
        import pandas as pd

        frame = pd.read_parquet(manifest)
    except ImportError:
        raise ImportError(
            f"reading the parquet manifest {manifest} needs pyarrow: pip install pyarrow (or convert the manifest "
            "to JSONL or CSV)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read parquet manifest {manifest}: {exc}") from None
    columns = wanted(list(frame.columns))
    yield "header", {c: None for c in frame.columns}
    for number, row in enumerate(frame[columns].to_dict("records"), start=1):
        yield f"row {number}", row


def read_pair_manifest(
    manifest: str | os.PathLike[str],
    *,
    image_root: str | os.PathLike[str] | None = None,
    image_column: str | None = None,
    prompt_column: str | None = None,
    limit: int | None = None,
    skip_missing: bool = False,
) -> list[ManifestPair]:
    """The (image file, prompt) rows of a JSONL, JSON, CSV/TSV or parquet manifest, without loading images.

    Format by suffix (:data:`MANIFEST_SUFFIXES`): JSONL, one JSON object a line (blank lines skipped); JSON, a list
    of such objects or DiffusionDB's per-part ``part-000001.json`` (``{image_name: {"p": prompt, ...}}``); CSV or
    TSV with a header row (UTF-8, an Excel BOM is fine); parquet (DiffusionDB's ``metadata.parquet``: columns
    ``image_name``, ``prompt``, ``part_id``, ...) through pyarrow, else pandas (neither is a dependency: without
    both, an ``ImportError`` says to ``pip install pyarrow``). Columns: the first of :data:`IMAGE_COLUMNS`
    (``image``, ``image_name``, ``file_name``, ``path``) and of :data:`PROMPT_COLUMNS` (``prompt``, ``text``,
    ``caption``) present, or the ``image_column`` / ``prompt_column`` given; other columns are ignored.

    A relative image path is resolved against ``image_root``, else the manifest's folder; where that file does not
    exist and the row has DiffusionDB's ``part_id``, ``<root>/part-<part_id:06d>/<image>`` is tried too (the layout
    of DiffusionDB's unzipped parts). Rows with an empty prompt are skipped (as :func:`load_pair_folder` skips
    empty ``.txt`` files); a missing image file is an error, or skipped with ``skip_missing`` (a manifest of a
    whole data set next to some of its parts). ``limit``: stop after that many usable rows (large manifests are
    read lazily). A malformed file or row is a ``ValueError`` naming the manifest and the line (JSONL, CSV) or
    row (parquet, 1-based) or entry (JSON).
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ValueError(f"manifest {manifest} does not exist (or is not a file)")
    kind = MANIFEST_SUFFIXES.get(manifest.suffix.lower())
    if kind is None:
        raise ValueError(
            f"manifest {manifest}: unknown format {manifest.suffix or '(no suffix)'}; use one of "
            f"{sorted(MANIFEST_SUFFIXES)}"
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    root = Path(image_root) if image_root is not None else manifest.parent
    if not root.is_dir():
        raise ValueError(f"image_root {root} does not exist")
    chosen: dict[str, str] = {}

    def choose(columns: Sequence[str], at: str = f"manifest {manifest}") -> list[str]:
        chosen["image"] = _pick_column(columns, image_column, IMAGE_COLUMNS, "image", at)
        chosen["prompt"] = _pick_column(columns, prompt_column, PROMPT_COLUMNS, "prompt", at)
        return [chosen["image"], chosen["prompt"]] + (["part_id"] if "part_id" in columns else [])

    if kind == "jsonl":
        rows: Rows = _jsonl_rows(manifest)
    elif kind == "json":
        rows = _json_rows(manifest)
    elif kind in ("csv", "tsv"):
        rows = _csv_rows(manifest, "," if kind == "csv" else "\t")
    else:
        rows = _parquet_rows(manifest, choose)
    try:
        pairs = _usable_pairs(rows, kind, choose, chosen, manifest, root, image_root is not None, limit, skip_missing)
    finally:
        rows.close()  # the file of a manifest read only up to ``limit``
    if not pairs:
        raise ValueError(f"manifest {manifest} has no usable (image, prompt) rows")
    return pairs


def _usable_pairs(rows: Rows, kind: str, choose: Callable[..., list[str]], chosen: dict[str, str], manifest: Path,
                  root: Path, explicit_root: bool, limit: int | None, skip_missing: bool) -> list[ManifestPair]:
    """The checked rows of :func:`read_pair_manifest` with their image files resolved under ``root``."""
    pairs: list[ManifestPair] = []
    for where, row in rows:
        if where == "header":
            if kind in ("csv", "tsv"):
                choose(list(row))
            continue
        at = f"manifest {manifest}, {where}"
        if not chosen:  # JSON(L): the columns of the first object
            choose(list(row), at)
        for what in ("image", "prompt"):
            if chosen[what] not in row:
                raise ValueError(f"{at}: no {chosen[what]!r} field (the {what} column of the first row)")
        image, prompt = row[chosen["image"]], row[chosen["prompt"]]
        if isinstance(image, dict) and isinstance(image.get("path"), str):  # a datasets Image struct {bytes, path}
            image = image["path"]
        if not isinstance(image, str) or not image.strip():
            raise ValueError(f"{at}: the image {chosen['image']!r} must be a file path, got {image!r}")
        if prompt is None:
            prompt = ""
        if not isinstance(prompt, str):
            raise ValueError(f"{at}: the prompt {chosen['prompt']!r} must be text, got {prompt!r}")
        prompt = prompt.strip()
        if not prompt:
            continue
        path = Path(os.path.expanduser(image.strip()))
        if not path.is_absolute():
            path = root / path
        if not path.is_file() and row.get("part_id") not in (None, ""):
            try:
                part = root / f"part-{int(row['part_id']):06d}" / image.strip()
            except (TypeError, ValueError):
                raise ValueError(f"{at}: part_id {row['part_id']!r} is not an integer") from None
            path = part if part.is_file() else path
        if not path.is_file():
            if skip_missing:
                continue
            raise ValueError(
                f"{at}: image {path} does not exist; image paths are relative to "
                f"{'image_root' if explicit_root else 'the manifest folder'} {root} (pass image_root=, "
                "or skip_missing=True to leave out rows without their image)"
            )
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise ValueError(f"{at}: {path} is not an image file (expected one of {IMAGE_EXTENSIONS})")
        pairs.append(ManifestPair(path, prompt, where))
        if limit is not None and len(pairs) >= limit:
            break
    return pairs


def load_pair_manifest(
    manifest: str | os.PathLike[str],
    size: int,
    *,
    image_root: str | os.PathLike[str] | None = None,
    image_column: str | None = None,
    prompt_column: str | None = None,
    limit: int | None = None,
    skip_missing: bool = False,
) -> tuple[torch.Tensor, list[str]]:
    """Images ``[N, 3, size, size]`` and prompts of a JSONL / JSON / CSV / parquet manifest (:func:`read_pair_manifest`
    for the format and the options), as :func:`load_pair_folder` returns them. ``size`` is the image encoder's
    resolution (``vlm.image_size``): short side resized, centre-cropped (:func:`~..core.data.load_image`). An
    unreadable image is a ``ValueError`` naming the row and the file."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int (the image encoder's resolution), got {size!r}")
    pairs = read_pair_manifest(manifest, image_root=image_root, image_column=image_column,
                               prompt_column=prompt_column, limit=limit, skip_missing=skip_missing)
    return load_pair_images(pairs, size, manifest), [p.prompt for p in pairs]


def load_pairs(
    source: str | os.PathLike[str], size: int, **manifest_options: Any
) -> tuple[torch.Tensor, list[str]]:
    """Training pairs from a folder of ``name.png`` + ``name.txt`` (:func:`load_pair_folder`) or a manifest file
    (:func:`load_pair_manifest`, with ``manifest_options``), images at ``size``."""
    source = Path(os.path.expanduser(str(source)))
    if source.is_file():
        return load_pair_manifest(source, size, **manifest_options)
    if manifest_options:
        raise ValueError(f"{source} is not a manifest file; {sorted(manifest_options)} apply to manifests only")
    return load_pair_folder(source, size)


def read_pairs(source: str | os.PathLike[str], **manifest_options: Any) -> list[ManifestPair]:
    """The (image file, prompt) pairs :func:`load_pairs` loads, without loading images: a reader loads a part of
    them with :func:`load_pair_images` (one process's shard under torchrun)."""
    source = Path(os.path.expanduser(str(source)))
    if source.is_file():
        return read_pair_manifest(source, **manifest_options)
    if manifest_options:
        raise ValueError(f"{source} is not a manifest file; {sorted(manifest_options)} apply to manifests only")
    return read_pair_folder(source)


def prompt_targets(
    texts: Sequence[str], vocabulary: Vocabulary, embedder: TextEmbedder
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(MiniLM embeddings [N, 384], multi-hot vocabulary labels [N, V])`` of the prompts."""
    return embedder(list(texts)).float(), vocabulary.encode(list(texts))
