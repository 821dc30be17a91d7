"""Safetensors artifacts with PromptWeave metadata: atomic writes, safe reads, backbone checks.

Every learned artifact PromptWeave writes is a single ``.safetensors`` file whose header metadata carries
``promptweave.method``, ``promptweave.backbone``, ``promptweave.version`` and the dimensions that must match
at load time. Files are written to a temporary name in the target folder and renamed into place, so a crash
never leaves half a file under the real name. Nothing here ever unpickles.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
import re
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save

from .. import __version__

META_PREFIX = "promptweave."
#: The weights shipped as package data of the pack (world backbones, demo inverters): ``<pack>/weights``.
#: The pack's top package is ``promptweave`` when installed, and any folder name under ComfyUI's custom_nodes.
SHIPPED_WEIGHTS_DIR = Path(str(importlib.resources.files(sys.modules[__name__.rsplit(".", 3)[0]]))) / "weights"


class ConfigError(ValueError):
    """A config value that cannot work. ``field`` names the config field it is about (as data: callers such as
    the ComfyUI nodes map it to their input without reading the message)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class ArtifactError(ValueError):
    """A weights file is missing, unreadable, not safetensors, or not the artifact that was expected."""


class WriteError(OSError):
    """A file could not be written (disk full, permissions, a name too long): the message names the file."""


class UnsafeNameError(ArtifactError):
    """A file name from user input would leave its folder or is not a portable file name."""


class BackboneMismatchError(ArtifactError):
    """An artifact was trained for another backbone (or another token width) than the one it is used with."""


def base_metadata(method: str, backbone: str, **fields: object) -> dict[str, str]:
    """Metadata every artifact carries; extra ``fields`` (dimensions, config) are stored as strings/JSON."""
    meta = {
        f"{META_PREFIX}method": method,
        f"{META_PREFIX}backbone": backbone,
        f"{META_PREFIX}version": __version__,
    }
    for key, value in fields.items():
        meta[f"{META_PREFIX}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return meta


def meta_field(metadata: Mapping[str, str], key: str, default: object = None) -> object:
    """Read ``promptweave.<key>`` back, decoding JSON where the value was stored as JSON."""
    raw = metadata.get(f"{META_PREFIX}{key}")
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


_UMASK_LOCK = threading.Lock()


def _current_umask() -> int:
    """The process's umask. Reading it means setting it for a moment, so concurrent writers (Caption Folder
    writes from several threads) take turns: otherwise one could read the other's temporary value."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_RESERVED_NAMES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def safe_child_path(folder: str | os.PathLike[str], name: str, suffix: str = ".safetensors") -> Path:
    """``folder / name`` (with ``suffix`` added if missing), refusing names that could escape ``folder``.

    Refused: empty names, absolute paths, drive letters, backslashes, ``..`` and ``.`` components, NUL and
    other control characters, and names reserved on Windows (``CON``, ``NUL``, ``COM1`` ...). Sub-folders
    (``styles/neon``) are allowed; the resolved path must stay inside ``folder`` even through symlinks.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnsafeNameError("the file name is empty")
    if any(ord(ch) < 32 or ch == "\x7f" for ch in name):
        raise UnsafeNameError(f"the file name {name!r} contains control characters")
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeNameError(f"the file name {name!r} must be relative, with '/' between sub-folders")
    parts = name.split("/")
    for part in parts:
        stem = part.split(".")[0].strip().lower()
        if part in ("", ".", "..") or part != part.strip() or stem in _RESERVED_NAMES:
            raise UnsafeNameError(f"the file name {name!r} has an unsafe part {part!r}")
    if suffix and not name.endswith(suffix):
        name += suffix
    root = Path(folder).resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise UnsafeNameError(f"the file name {name!r} leads outside {root}")
    return path


#: Our temporary files: ``.<final name>.<mkstemp's 8 characters>.tmp`` (atomic writes) and the write probes of the
#: nodes (``.pw-write-test.<8>``). A process killed mid-save leaves one behind; the next save into that folder
#: removes those older than :data:`STALE_TEMP_SECONDS` (a younger one may be another writer's, still at work).
TEMP_FILE_PATTERN = re.compile(r"^\.(.+\.[a-z0-9_]{8}\.tmp|pw-write-test\.[a-z0-9_]{8})$")
STALE_TEMP_SECONDS = 600.0


def remove_stale_temp_files(folder: str | os.PathLike[str], older_than: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Remove our own temporary files (:data:`TEMP_FILE_PATTERN`) older than ``older_than`` seconds from
    ``folder``; returns what was removed. Other files are never touched."""
    removed, now = [], time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        try:
            if (TEMP_FILE_PATTERN.match(entry.name) and entry.is_file(follow_symlinks=False)
                    and now - entry.stat(follow_symlinks=False).st_mtime > older_than):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


#: When each folder was last swept for stale temporary files by this process (``time.monotonic()``).
_last_sweep: dict[str, float] = {}
#: A folder is swept on this process's first write into it, then at most once per this many seconds: listing a
#: folder of thousands of files before every write (a captioned dataset) would cost more than the writes.
SWEEP_INTERVAL_SECONDS = 60.0


def _sweep_now_and_then(folder: Path) -> None:
    """:func:`remove_stale_temp_files` on ``folder`` unless this process swept it in the last
    :data:`SWEEP_INTERVAL_SECONDS`. A killed save's leftovers come from another (killed) process, so the first
    write of each process into a folder finds them; later sweeps catch those that were not yet stale then."""
    key, now = os.fspath(folder), time.monotonic()
    if now - _last_sweep.get(key, -SWEEP_INTERVAL_SECONDS) >= SWEEP_INTERVAL_SECONDS:
        _last_sweep[key] = now
        remove_stale_temp_files(folder)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename (stale
    temporary files of earlier, killed saves into the folder are removed first, see :func:`_sweep_now_and_then`).
    A failed write leaves ``path``
    as it was and raises :class:`WriteError` naming it."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise ArtifactError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ArtifactError(f"cannot write {path}: folder {folder} is not writable")
    _sweep_now_and_then(folder)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise WriteError(exc.errno, f"could not write {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except OSError as exc:
        Path(tmp_name).unlink(missing_ok=True)
        raise WriteError(exc.errno, f"could not write {path}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def save_safetensors_atomic(
    path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> Path:
    """Save ``tensors`` with string ``metadata`` as safetensors, atomically."""
    contiguous = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    return atomic_write_bytes(path, save(contiguous, metadata=dict(metadata)))


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_header(path: Path) -> None:
    """Reject files that are not well-formed safetensors before handing them to the parser: a clear
    :class:`ArtifactError` naming the file for a pickle, a bad length, a header of another structure (the format:
    a JSON object of tensor entries ``{"dtype": str, "shape": [int], "data_offsets": [begin, end]}`` and an optional
    ``__metadata__`` object of strings) or a truncated file. Nothing is allocated from the header's numbers."""
    size = path.stat().st_size
    if size < 8:
        raise ArtifactError(f"{path} is not a safetensors file (only {size} bytes)")
    with path.open("rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if header_len <= 0 or header_len > min(size - 8, 100_000_000):
            raise ArtifactError(
                f"{path} is not a valid safetensors file (bad header length; a pickle/.ckpt/.pt file, "
                "or a truncated download?). PromptWeave reads safetensors only."
            )
        head = handle.read(header_len)
    try:
        header = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ArtifactError(f"{path} has a corrupt safetensors header: {exc}") from None
    fix = "re-save or re-download the file"
    if not isinstance(header, dict):
        raise ArtifactError(f"{path} has a malformed safetensors header (a JSON {type(header).__name__}, not an "
                            f"object of tensors): {fix}")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ArtifactError(f"{path} has malformed safetensors metadata (it must map names to strings): {fix}")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        well_formed = (
            isinstance(entry.get("dtype") if isinstance(entry, dict) else None, str)
            and isinstance(shape, list) and all(_is_count(d) for d in shape)
            and isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
            and offsets[0] <= offsets[1]
        )
        if not well_formed:
            raise ArtifactError(f"{path} has a malformed safetensors entry for tensor {name[:80]!r}: {fix}")
        end = max(end, offsets[1])
    if 8 + header_len + end > size:
        raise ArtifactError(f"{path} is truncated: the header promises {end} bytes of data, the file is shorter")


def _open_error(path: Path, exc: Exception) -> ArtifactError:
    return ArtifactError(f"{path} could not be read as safetensors ({exc}): re-save or re-download the file")


#: The method name of resumable training states (:mod:`.checkpointing`): they keep NaN sentinels (the losses of
#: steps not yet run), so only finished artifacts are checked for finite values.
TRAINING_STATE = "training_state"


def _check_finite(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """A PromptWeave artifact holds finite numbers: NaN or inf (a diverged training run, a damaged file) would
    otherwise give black images with no error."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ArtifactError(f"{path}: tensor {name!r} holds NaN or infinite values (a diverged training run or "
                                "a damaged file): retrain it or use another file")


#: What building a model from a malformed stored config may raise (a string for a size, a zero width, an overflow,
#: a missing key): loaders turn each into an :class:`ArtifactError` naming the file.
MALFORMED_METADATA_ERRORS = (TypeError, ValueError, ArithmeticError, RuntimeError, AttributeError, KeyError,
                             IndexError)


class _DeclaresMoreThanItHolds(Exception):
    """Raised from inside a meta-device build that creates more tensors than its file holds."""


def build_on_meta(path: str | os.PathLike[str], build: Callable[[], Any], n_tensors: int) -> Any:
    """``build()`` on the meta device (no memory), stopped as soon as it registers far more parameters and buffers
    than the ``n_tensors`` its file holds: a declared depth (layers, blocks) of millions never loops through them.
    That, and any error of the build itself (a zero or fractional size), is an :class:`ArtifactError` naming the
    file."""
    budget = 2 * n_tensors + 16  # some modules register a tensor twice
    created = 0

    def count(*_: object) -> None:
        nonlocal created
        created += 1
        if created > budget:
            raise _DeclaresMoreThanItHolds

    hooks = (torch.nn.modules.module.register_module_parameter_registration_hook(count),
             torch.nn.modules.module.register_module_buffer_registration_hook(count))
    try:
        with torch.device("meta"):
            return build()
    except _DeclaresMoreThanItHolds:
        raise ArtifactError(f"{path} does not fit the configuration it is read with, which declares far more "
                            f"tensors than the file's {n_tensors}: check its config or model name, or re-save the "
                            "file") from None
    except MALFORMED_METADATA_ERRORS as exc:
        raise ArtifactError(f"{path}: its configuration cannot be built ({type(exc).__name__}: {str(exc)[:200]}): "
                            "check its config, or re-save the file") from None
    finally:
        for hook in hooks:
            hook.remove()


def build_fitting(path: str | os.PathLike[str], build: Callable[[], Any], tensors: Mapping[str, torch.Tensor]) -> Any:
    """``build()``, the module a file's metadata declares, made only once its shape is known to match the file.

    It is first built on the meta device (:func:`build_on_meta`), and every parameter and buffer must have the
    shape of the file's tensor of the same name (``tensors``, keys as in its ``state_dict``). Metadata that
    declares huge dimensions or depths therefore never allocates them: it is an :class:`ArtifactError` naming the
    file."""
    skeleton = build_on_meta(path, build, len(tensors))
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    missing = sorted(k for k in expected if k not in tensors)
    wrong = sorted(k for k, shape in expected.items() if k in tensors and tuple(tensors[k].shape) != shape)
    if missing or wrong:
        detail = (f"{len(missing)} declared tensors missing (e.g. {missing[:2]})" if missing
                  else f"{wrong[0]} is {tuple(tensors[wrong[0]].shape)} in the file, {expected[wrong[0]]} declared")
        raise ArtifactError(f"{path}: its stored configuration does not match its tensors ({detail}): re-save or "
                            "retrain the file")
    return build()


def _read_checked(path: str | os.PathLike[str], take: Callable[[Any], Any]) -> Any:
    """``take(handle)`` on a safetensors file opened after :func:`_check_header`; a missing file, a bad header or
    any error of the parser is an :class:`ArtifactError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"weights file not found: {path}")
    _check_header(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return take(handle)
    except Exception as exc:  # the safetensors parser raises its own types
        raise _open_error(path, exc) from None


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read all tensors and the metadata of a safetensors file, with clear errors for bad files."""
    tensors, metadata = _read_checked(
        path, lambda handle: ({name: handle.get_tensor(name) for name in handle.keys()}, dict(handle.metadata() or {}))
    )
    if metadata.get(f"{META_PREFIX}method", TRAINING_STATE) != TRAINING_STATE:
        _check_finite(Path(path), tensors)
    return tensors, metadata


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read only the header metadata of a safetensors file."""
    return _read_checked(path, lambda handle: dict(handle.metadata() or {}))


def artifact_method(path: str | os.PathLike[str]) -> str | None:
    """The ``promptweave.method`` a file declares, or None for any file that cannot say (unreadable, not
    safetensors, malformed, no such entry): option lists call this, and a user's file never breaks them."""
    try:
        return read_metadata(path).get(f"{META_PREFIX}method")
    except Exception:  # noqa: BLE001 - any content of a user's file means "not listable"
        return None


def read_safetensors_keys(path: str | os.PathLike[str]) -> list[str]:
    """The tensor names of a safetensors file, from its header alone (no tensor is read)."""
    return _read_checked(path, lambda handle: list(handle.keys()))


def check_method(metadata: Mapping[str, str], expected: str, path: str | os.PathLike[str]) -> None:
    """Refuse an artifact written by another method (e.g. a LoRA where a learned prompt is expected)."""
    found = metadata.get(f"{META_PREFIX}method")
    if found != expected:
        what = f"a '{found}' artifact" if found else "not a PromptWeave artifact (no promptweave.method metadata)"
        raise ArtifactError(f"{path} is {what}; expected a '{expected}' artifact")


def config_from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """``cls(**data)`` for a config dataclass, refusing keys ``cls`` has no field for (the inverse of
    ``dataclasses.asdict``, as every ``Config.from_dict`` needs)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
    return cls(**data)
