"""Shared pieces of the node layer: errors that name the node and input, input checks, and our models folder."""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import numbers
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import folder_paths
import torch

from ..prompt_modules.core.artifacts import UnsafeNameError, WriteError, safe_child_path
from ._types import expected_class

MODELS_FOLDER = "promptweave"
"""``folder_paths`` key of ``ComfyUI/models/promptweave/``, where PromptWeave artifacts live."""
#: import name -> pip package of the dependencies (requirements.txt) that ComfyUI itself does not install.
OPTIONAL_DEPENDENCIES = {
    "diffusers": "diffusers",
    "einops": "einops",
    "open_clip": "open_clip_torch",
    "peft": "peft",
    "safetensors": "safetensors",
    "sentence_transformers": "sentence-transformers",
}
MAX_NAME_BYTES = 200
"""Longest file or sub-folder name a node may write (file systems allow 255 bytes; temp and checkpoint files add
a suffix)."""


class NodeInputError(ValueError):
    """Bad input to a node: the message names the node, the input and the fix."""

    def __init__(self, node: str, input_name: str, problem: str, fix: str) -> None:
        super().__init__(f"{node}: input '{input_name}': {problem}. Fix: {fix}")
        self.node, self.input_name = node, input_name


def register_models_folder(key: str = MODELS_FOLDER) -> str:
    """Register ``models/<key>`` (default ``models/promptweave``) with ComfyUI (idempotent) and return its path."""
    path = os.path.join(folder_paths.models_dir, key)
    if key not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[key] = ([path], {".safetensors"})
    return folder_paths.folder_names_and_paths[key][0][0]


def model_files() -> list[str]:
    """The ``.safetensors`` files in the PromptWeave models folder(s), for combo inputs."""
    register_models_folder()
    return folder_paths.get_filename_list(MODELS_FOLDER)


def resolve_model_file(node: str, input_name: str, name: str) -> str:
    """Full path of ``name`` in the PromptWeave models folder, or a clear error saying where to put it."""
    register_models_folder()
    path = folder_paths.get_full_path(MODELS_FOLDER, name) if name else None
    if path is None:
        folders = ", ".join(folder_paths.get_folder_paths(MODELS_FOLDER))
        raise NodeInputError(
            node,
            input_name,
            f"file '{name}' was not found",
            f"put the .safetensors file in {folders} and refresh the page (R)",
        )
    return path


def output_model_path(node: str, input_name: str, name: str, folder_key: str = MODELS_FOLDER) -> str:
    """Where a node may save ``name`` (``.safetensors`` added) inside a models folder; unsafe names refused."""
    if folder_key == MODELS_FOLDER:
        register_models_folder()
    try:
        folder = folder_paths.get_folder_paths(folder_key)[0]
    except (KeyError, IndexError):
        raise NodeInputError(
            node, input_name, f"ComfyUI has no '{folder_key}' models folder", "check extra_model_paths.yaml"
        ) from None
    longest = max((len(part.encode("utf-8", "surrogatepass")) for part in str(name).split("/")), default=0)
    if longest > MAX_NAME_BYTES:
        raise NodeInputError(
            node, input_name, f"the name is too long ({longest} bytes)", f"use at most {MAX_NAME_BYTES} bytes"
        )
    try:
        target = safe_child_path(folder, name)
    except UnsafeNameError as exc:
        raise NodeInputError(
            node, input_name, str(exc), "use a plain file name such as 'my-style' (sub-folders with '/')"
        ) from None
    # checked now, before any training: a result must never be lost at save time
    if target.is_dir():
        raise NodeInputError(node, input_name, f"'{target.name}' is a folder in {target.parent}",
                             "use a file name that is not a folder's")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)  # sub-folders given with '/' are made
        fd, probe = tempfile.mkstemp(prefix=".pw-write-test.", dir=target.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise NodeInputError(node, input_name, f"the output folder {target.parent} is not writable "
                             f"({exc.strerror or exc})", "make the folder writable, or choose another name") from None
    return str(target)


def missing_dependency_hint(module: str) -> str:
    """What to do about the missing optional dependency ``module`` (an import name of OPTIONAL_DEPENDENCIES)."""
    package = OPTIONAL_DEPENDENCIES[module]
    return (
        f"the Python package '{package}' is not installed. Fix: run `pip install {package}` (or `pip install -r "
        "requirements.txt` in the PromptWeave folder) in ComfyUI's Python environment, then restart ComfyUI"
    )


class TrainingProgress:
    """The ``callback(step, total, loss)`` of a training loop inside a node: drives ComfyUI's progress bar (UI)
    and stops the run when the user presses Cancel (ComfyUI's interrupt exception; the loops save a checkpoint
    first). ``total=None`` takes the loop's own total; ``offset`` shifts the bar for multi-stage runs."""

    def __init__(self, total: int | None = None) -> None:
        import comfy.utils

        self.total = None if total is None else max(int(total), 1)
        self.offset = 0
        self.bar = comfy.utils.ProgressBar(self.total or 1)

    def __call__(self, step: int, total: int, loss: float) -> None:
        import comfy.model_management

        self.bar.update_absolute(self.offset + step, self.total or total)
        comfy.model_management.throw_exception_if_processing_interrupted()


# ----- input checks ---------------------------------------------------------------------------------------------
MAX_SIDE = 16384
"""Largest image side accepted (ComfyUI's ``MAX_RESOLUTION``)."""
MAX_ELEMENTS = 1 << 30
"""Largest IMAGE/MASK batch accepted, in values (4 GiB as float32): larger ones are refused before any copy."""
MAX_TEXT = 1_000_000
"""Longest STRING accepted, in characters."""
MAX_LINES = 1024
"""Most lines a node turns into one batch (one image or one text each): more would exhaust memory."""
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MODEL_ATTRIBUTES = {  # ComfyUI's own types, checked by the attribute the pack uses (test doubles stay welcome)
    "CLIP": ("cond_stage_model", "the CLIP output of a checkpoint loader"),
    "MODEL": ("model", "the MODEL output of a checkpoint loader"),
    "VAE": ("first_stage_model", "the VAE output of a checkpoint loader"),
    "CLIP_VISION": ("encode_image", "Load CLIP Vision"),
}


def check_text(node: str, input_name: str, value: Any) -> str:
    """A STRING or COMBO value: a ``str`` without NUL characters that UTF-8 can encode, of sane length."""
    if not isinstance(value, str):
        raise NodeInputError(node, input_name, f"expected text, got {type(value).__name__}", "connect a STRING")
    if "\x00" in value:
        raise NodeInputError(node, input_name, "the text contains a NUL character", "remove it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NodeInputError(
            node,
            input_name,
            f"the text is not valid Unicode ({exc.reason} at position {exc.start})",
            "retype the text; it holds undecodable bytes or a lone surrogate",
        ) from None
    if len(value) > MAX_TEXT:
        raise NodeInputError(node, input_name, f"the text has {len(value):,} characters", f"use at most {MAX_TEXT:,}")
    return value


def text_lines(node: str, input_name: str, text: str, limit: int = MAX_LINES) -> list[str]:
    """The non-empty lines of ``text``, stripped; at most ``limit`` of them (each becomes a batch item)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if len(lines) > limit:
        raise NodeInputError(
            node, input_name, f"{len(lines):,} lines; one run takes at most {limit:,}", "split them over several runs"
        )
    return lines


def check_number(node: str, input_name: str, value: Any, kind: str, low=None, high=None) -> int | float:
    """An INT (a whole number, not a bool) or FLOAT (finite) value inside the widget's ``[low, high]``."""
    whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    real = whole or (isinstance(value, numbers.Real) and not isinstance(value, bool))
    if (kind == "INT" and not whole) or not real:
        what = "a whole number" if kind == "INT" else "a number"
        raise NodeInputError(node, input_name, f"expected {what}, got {value!r}"[:200], f"set {what}")
    if not whole and not math.isfinite(value):  # (a whole number may be too large for a float)
        raise NodeInputError(node, input_name, f"{value} is not a finite number", "set a finite number")
    if low is not None and value < low:
        raise NodeInputError(node, input_name, f"must be at least {low}, got {value}", f"set {low} or more")
    if high is not None and value > high:
        raise NodeInputError(node, input_name, f"must be at most {high}, got {value}", f"set {high} or less")
    return value


def check_image(node: str, input_name: str, image: Any, kind: str = "IMAGE") -> torch.Tensor:
    """A ComfyUI IMAGE ``[B, H, W, C]`` (C = 1..4) or MASK ``[B, H, W]`` / ``[H, W]``: a non-empty, finite float
    tensor of bounded size (checked before anything copies it)."""
    layout = "[B, H, W, C]" if kind == "IMAGE" else "[B, H, W]"
    if not isinstance(image, torch.Tensor):
        raise NodeInputError(
            node,
            input_name,
            f"expected a {kind} batch {layout}, got {type(image).__name__}",
            f"connect a {kind} output",
        )
    if image.layout != torch.strided or image.is_meta:
        raise NodeInputError(
            node, input_name, f"got a {'meta' if image.is_meta else 'sparse'} tensor", f"connect a {kind} output"
        )
    shape = tuple(image.shape)
    if image.ndim not in ((4,) if kind == "IMAGE" else (2, 3)) or (kind == "IMAGE" and not 1 <= shape[-1] <= 4):
        raise NodeInputError(
            node,
            input_name,
            f"expected a {kind} batch {layout}, got shape {shape}",
            f"connect a {kind} output (not a latent or a single channel)",
        )
    if image.numel() == 0:
        raise NodeInputError(
            node,
            input_name,
            f"the {kind.lower()} batch is empty: expected a non-empty {kind} batch {layout}, got shape {shape}",
            "connect a node that outputs at least one",
        )
    height, width = shape[1:3] if kind == "IMAGE" else shape[-2:]
    if max(height, width) > MAX_SIDE or image.numel() > MAX_ELEMENTS:
        raise NodeInputError(
            node,
            input_name,
            f"the batch {shape} is too large (at most {MAX_SIDE} pixels a side and {MAX_ELEMENTS:,} values)",
            "resize the images or split the batch",
        )
    if image.dtype not in FLOAT_DTYPES:
        raise NodeInputError(
            node,
            input_name,
            f"expected float values in 0..1, got dtype {image.dtype}",
            f"convert the {kind.lower()} to float (ComfyUI {kind} values lie in 0..1)",
        )
    if not bool(torch.isfinite(image).all()):
        raise NodeInputError(
            node, input_name, "it holds NaN or infinite values", "fix the node that made it (or clamp it to 0..1)"
        )
    return image


def rgb_batch(node: str, input_name: str, image: Any, *, alpha: bool = True) -> torch.Tensor:
    """A checked IMAGE as a float32 ``[B, 3, H, W]`` copy in ``0..1``; RGBA loses its alpha (``alpha=False``
    refuses it), grayscale is refused."""
    image = check_image(node, input_name, image)
    channels = image.shape[-1]
    if channels != 3 and not (channels == 4 and alpha):
        what = {1: "grayscale", 2: "grayscale+alpha", 4: "RGBA"}.get(channels, f"{channels}-channel")
        raise NodeInputError(
            node,
            input_name,
            f"{what} images are not supported",
            "convert the images to RGB (e.g. drop the alpha channel) before this node",
        )
    return image[..., :3].detach().float().clamp(0, 1).permute(0, 3, 1, 2).contiguous()


def check_value(node: str, input_name: str, kind: str, value: Any, spec: Any = None) -> Any:
    """One input value against its declared type (``kind`` is the io_type; ``spec`` the schema input)."""
    if kind in ("STRING", "COMBO"):
        return check_text(node, input_name, value)
    if kind in ("INT", "FLOAT"):
        return check_number(node, input_name, value, kind, getattr(spec, "min", None), getattr(spec, "max", None))
    if kind == "BOOLEAN" and not isinstance(value, bool):
        raise NodeInputError(node, input_name, f"expected true or false, got {value!r}"[:200], "set true or false")
    if kind in ("IMAGE", "MASK"):
        return check_image(node, input_name, value, kind)
    if kind in MODEL_ATTRIBUTES:
        attribute, source = MODEL_ATTRIBUTES[kind]
        if not hasattr(value, attribute):
            raise NodeInputError(node, input_name, f"got {type(value).__name__}, not a {kind}", f"connect {source}")
    expected = expected_class(kind)
    if expected is not None and not isinstance(value, expected[0]):
        raise NodeInputError(
            node, input_name, f"got {type(value).__name__}, not {expected[1]}", f"connect {expected[2]}"
        )
    return value


def _source(spec: Any) -> str:
    """Where a value for the input ``spec`` comes from, as the fix of an error."""
    kind = str(spec.get_io_type())
    expected = expected_class(kind)
    if expected is not None:
        return f"connect {expected[2]}"
    if kind in MODEL_ATTRIBUTES:
        return f"connect {MODEL_ATTRIBUTES[kind][1]}"
    return f"connect a {kind} output, or set the widget"


def check_inputs(execute: Callable) -> Callable:
    """Decorate a node's ``execute`` (under ``@classmethod``) to check every input against the node's schema first.

    ComfyUI checks widget values typed into the UI, but not values from links or API clients, nor what a node
    calls directly: here INT/FLOAT must be finite numbers in the widget's range, BOOLEAN a bool, STRING/COMBO
    valid text, IMAGE/MASK non-empty finite float tensors of bounded size, and models and PromptWeave objects of
    their type. A missing required input or a wrong value is a :class:`NodeInputError` naming node and input;
    ``None`` for an optional input means "not connected": the parameter's default is used. The node itself still
    checks what depends on several inputs or on the model. Running out of memory while the node runs is reported
    with the node's name and what to lower (:func:`out_of_memory_error`).
    """
    signature = inspect.signature(execute)
    schema: dict[str, Any] = {}

    @functools.wraps(execute)
    def checked(cls, *args, **kwargs):
        if not schema:
            defined = cls.define_schema()
            schema.update(node=defined.node_id, inputs={spec.id: spec for spec in defined.inputs})
        node, specs = schema["node"], schema["inputs"]
        bound = signature.bind_partial(cls, *args, **kwargs)
        for name, value in list(bound.arguments.items()):
            spec = specs.get(name)
            if spec is None:
                continue
            if value is None:
                if not spec.optional:
                    raise NodeInputError(
                        node, name, "no value (nothing connected, or the upstream node gave none)", _source(spec)
                    )
                if signature.parameters[name].default is not inspect.Parameter.empty:
                    del bound.arguments[name]  # an optional input given as None: not connected, its default
                continue
            check_value(node, name, str(spec.get_io_type()), value, spec)
        try:
            return execute(*bound.args, **bound.kwargs)
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").split(".")[0]
            if missing not in OPTIONAL_DEPENDENCIES:
                raise
            raise ModuleNotFoundError(f"{node}: {missing_dependency_hint(missing)}", name=exc.name) from exc
        except (torch.cuda.OutOfMemoryError, RuntimeError, MemoryError) as exc:
            clear = out_of_memory_error(node, exc, specs)
            if clear is None:
                raise
            raise clear from exc

    return checked


#: Inputs that set how much memory a node needs, in the order to suggest lowering them.
MEMORY_INPUTS = ("batch_size", "width", "height", "steps", "sample_steps", "images", "image", "texts", "text")


def out_of_memory_error(node: str, exc: BaseException, specs: dict[str, Any]) -> BaseException | None:
    """An out-of-memory error from ``exc`` that names the node and the inputs to lower, or ``None`` when ``exc``
    is not about memory. A CUDA OOM stays a ``torch.cuda.OutOfMemoryError`` (ComfyUI then unloads its models);
    a CPU allocation failure becomes a ``MemoryError``."""
    text = str(exc)
    gpu = isinstance(exc, torch.cuda.OutOfMemoryError) or "CUDA out of memory" in text
    cpu = isinstance(exc, MemoryError) or "can't allocate memory" in text or "not enough memory" in text
    if not (gpu or cpu):
        return None
    lower = [name for name in MEMORY_INPUTS if name in specs]
    fix = ("lower " + ", ".join(f"'{name}'" for name in lower[:3]) + ", or " if lower else "") + (
        "free memory (close other jobs; ComfyUI unloads its models after a GPU out-of-memory error) and run again"
    )
    where = "GPU" if gpu else "CPU"
    detail = text.splitlines()[0][:200] if text else type(exc).__name__
    message = f"{node}: ran out of {where} memory ({detail}). Fix: {fix}"
    return torch.cuda.OutOfMemoryError(message) if gpu else MemoryError(message)


# ----- resumable training state -----------------------------------------------------------------------------
def tensors_key(tensors: Mapping[str, torch.Tensor]) -> str:
    """A short digest of named tensors (an initialisation, a training set), for :func:`run_checkpoint`."""
    digest = hashlib.sha1()
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def run_checkpoint(stem: str, settings: Sequence[Any], *, folder: bool = False) -> Path:
    """Where a training node keeps its resumable state: ``output/promptweave/checkpoints/<stem>-<key>`` (a
    ``.state.safetensors`` file, or with ``folder`` a directory for multi-stage runs), ``key`` being a digest of
    the run's settings, so that changing any setting starts a fresh run instead of resuming another one."""
    key = hashlib.sha1(json.dumps(list(settings), sort_keys=True, default=str).encode()).hexdigest()[:12]
    root = Path(folder_paths.get_output_directory()) / "promptweave" / "checkpoints"
    safe_stem = stem.replace("/", "_").replace(os.sep, "_")
    if folder:
        path = root / f"{safe_stem}-{key}"
        path.mkdir(parents=True, exist_ok=True)
        return path
    root.mkdir(parents=True, exist_ok=True)
    return root / f"{safe_stem}-{key}.state.safetensors"


@contextmanager
def checkpointed_run(node: str, input_name: str, *runs: Path) -> Iterator[None]:
    """The one checkpoint rule of every training node, around its training and its save.

    A run's checkpoints (:func:`run_checkpoint`'s files or folders) live while the run is unfinished: an
    interruption or an error keeps them, and running the node again with the same settings resumes. Once the
    block has trained and saved, they are removed. A failed write (disk full, permissions), of a checkpoint or of
    the result, keeps the last checkpoint and says where it is; ``input_name`` is the node's save-name input."""
    try:
        yield
    except WriteError as exc:
        kept = ", ".join(str(run) for run in runs)
        raise NodeInputError(
            node, input_name, f"{exc}; nothing trained is lost: the run's last checkpoint is kept in {kept}",
            "free disk space or fix the folder's permissions, then run the node again with the same settings: it "
            "resumes from that checkpoint and saves",
        ) from None
    for run in runs:
        if run.is_dir():
            shutil.rmtree(run, ignore_errors=True)
        else:
            run.unlink(missing_ok=True)


def sd_unet(node: str, model, allow_sdxl: bool = False) -> tuple[Any, Any]:
    """``(base model, U-Net)`` of an SD1.x/SD2.x ComfyUI MODEL (and of the SDXL family with ``allow_sdxl``); a
    :class:`NodeInputError` naming ``model`` for anything else (no diffusion model, not an LDM-layout U-Net, or
    other ADM conditioning)."""
    if model is None or not hasattr(model, "model") or not hasattr(model.model, "diffusion_model"):
        raise NodeInputError(node, "model", "not a diffusion MODEL", "connect the MODEL output of Load Checkpoint")
    base = model.model
    unet = base.diffusion_model
    config = getattr(base.model_config, "unet_config", {}) or {}
    if not hasattr(unet, "input_blocks") or "num_res_blocks" not in config:
        raise NodeInputError(
            node, "model", f"{type(unet).__name__} is not an SD-style U-Net", "use an SD1.x or SD2.x checkpoint"
        )
    import comfy.model_base

    if allow_sdxl and isinstance(base, comfy.model_base.SDXL):
        return base, unet
    if getattr(base, "adm_channels", 0):
        supported = "SD1.x, SD2.x or SDXL" if allow_sdxl else "SD1.x or SD2.x"
        raise NodeInputError(
            node,
            "model",
            f"{type(base).__name__} U-Nets with extra (ADM) conditioning are not supported here",
            f"use an {supported} checkpoint",
        )
    return base, unet
