"""Caption a folder of images with a prompt inverter: ``<stem>.txt`` beside every image, the layout LoRA trainers
(kohya_ss, EveryDream, ComfyUI's trainer) and :func:`~.data.load_pair_folder` read.

:func:`caption_folder` is the one function behind the ComfyUI node Caption Folder, ``diffusers_api.caption_folder``
and ``python -m promptweave.caption``. It walks the folder (sub-folders too with ``recursive``), reads each image
with :func:`~promptweave.prompt_modules.core.data.load_image` (PNG, JPEG, WebP, BMP; alpha composited on white,
16-bit scaled; the size checked from the header), inverts in batches with the inverter and the image encoder the
caller passes, and writes each caption file atomically (decoding, inverting and writing overlap). A file that
cannot be read is reported and skipped; a run stopped half-way leaves whole caption files only, and a re-run picks
up where it stopped.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.artifacts import ArtifactError, atomic_write_bytes
from ..core.data import IMAGE_EXTENSIONS, image_file_size, list_images, load_image, read_text_file
from .decode import confident_keywords
from .model import PromptInverter
from .vocabulary import words

#: What a caption file holds: the composed prompt, the keywords as comma-separated tags, or the prompt followed by
#: the tags it does not already contain.
CAPTION_CONTENTS = ("prompt", "keywords", "both")
#: What happens to an image that already has a caption file: keep it, replace it, or put the new caption before
#: (``prepend``) or after (``append``) the old one.
EXISTING_MODES = ("skip", "overwrite", "prepend", "append")
#: Where trigger words go in each new caption.
TRIGGER_POSITIONS = ("prepend", "append")
#: Formats of the optional manifest (``captions.csv`` / ``captions.jsonl`` in the folder: ``file_name``, ``text``
#: columns, the names Hugging Face's ``imagefolder`` and :func:`~.data.read_pair_manifest` read).
MANIFEST_FORMATS = ("csv", "jsonl")
MANIFEST_STEM = "captions"
#: Actions that write a caption file.
WRITE_ACTIONS = ("create", "overwrite", "prepend", "append")
SEPARATOR = ", "
#: How many batches the decoding threads work ahead of the inversion.
LOOKAHEAD = 2
#: Threads that write caption files. Every write fsyncs its file before the rename (whole or absent, even after a
#: power cut); fsyncs issued together share the file system's journal commits (ext4: 16 files wait about as long
#: as 2 written one after the other), and the writes overlap decoding and inverting the next batch.
WRITERS = 8

#: Images ``[B, 3, H, W]`` in 0..1 -> ``(encoder name, features)``: the image encoder the inverter was trained on
#: (:func:`~.encoders.image_features` with the caller's models).
ImageEncoder = Callable[[torch.Tensor], tuple[str, torch.Tensor]]
#: ``progress(done, total)`` after each batch; it may raise to stop the run (files written so far are whole).
Progress = Callable[[int, int], None]


@dataclass
class CaptionResult:
    """One image: its caption file, what was done (``create``, ``overwrite``, ``prepend``, ``append``, ``skip``,
    ``unchanged`` or ``fail``; on a dry run what would be done), the caption file's text after the run (empty
    where a dry run does not know it yet) and, for ``fail``, why."""

    image: Path
    caption_file: Path
    action: str
    text: str = ""
    error: str = ""


@dataclass
class CaptionSummary:
    """The outcome of :func:`caption_folder`: one :class:`CaptionResult` per image, in folder order."""

    folder: Path
    results: list[CaptionResult] = field(default_factory=list)
    dry_run: bool = False
    manifest: Path | None = None

    @property
    def written(self) -> list[CaptionResult]:
        return [r for r in self.results if r.action in WRITE_ACTIONS]

    @property
    def skipped(self) -> list[CaptionResult]:
        return [r for r in self.results if r.action in ("skip", "unchanged")]

    @property
    def failed(self) -> list[CaptionResult]:
        return [r for r in self.results if r.action == "fail"]

    @property
    def captioned(self) -> list[CaptionResult]:
        """The images that have a caption after the run (all but the failed ones)."""
        return [r for r in self.results if r.action != "fail"]

    def relative(self, path: Path) -> str:
        return path.relative_to(self.folder).as_posix()

    def report(self) -> str:
        """A few lines for people: the counts, the failed files with the reason, and on a dry run each change."""
        verb = "would write" if self.dry_run else "written"
        lines = [f"{'dry run of ' if self.dry_run else ''}captions in {self.folder}: {len(self.written)} {verb}, "
                 f"{len(self.skipped)} skipped, {len(self.failed)} failed"]
        if self.dry_run:
            lines += [f"  would {r.action}: {self.relative(r.caption_file)}" for r in self.written]
        lines += [f"  failed: {self.relative(r.image)}: {r.error}" for r in self.failed]
        if self.manifest is not None:
            lines.append(f"  manifest{' (would be written)' if self.dry_run else ''}: {self.manifest}")
        return "\n".join(lines)


def _check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def caption_text(result: dict, content: str = "prompt", threshold: float = 0.5, trigger: str = "",
                 trigger_position: str = "prepend") -> str:
    """The caption of one inversion ``result`` (:meth:`~.model.PromptInverter.invert`): its composed prompt, its
    confident keywords as tags, or both; with ``trigger`` words put before or after it."""
    tags = confident_keywords(result["keywords"], threshold)
    if content == "prompt":
        text = result["prompt"]
    elif content == "keywords":
        text = SEPARATOR.join(tags)
    else:
        present = set(words(result["prompt"]))
        extra = [t for t in tags if t not in present]
        text = SEPARATOR.join([result["prompt"].rstrip(". "), *extra]) if extra else result["prompt"]
    trigger = " ".join(trigger.split()).strip(", ")
    if trigger:
        text = f"{trigger}{SEPARATOR}{text}" if trigger_position == "prepend" else f"{text}{SEPARATOR}{trigger}"
    return text


def merged_caption(old: str | None, new: str, existing: str) -> str:
    """The caption file's new text from its ``old`` text (``None``: no file) and the ``new`` caption by the mode
    for existing captions. ``prepend``/``append`` leave a caption that already starts/ends with the new one as it
    is, so a resumed run never adds the same caption twice."""
    if not old or existing == "overwrite":
        return new
    if existing == "prepend":
        return old if old.startswith(new) else f"{new}{SEPARATOR}{old}"
    if existing == "append":
        return old if old.endswith(new) else f"{old}{SEPARATOR}{new}"
    return old


def _plan(images: list[Path], existing: str) -> tuple[list[CaptionResult], list[CaptionResult]]:
    """``(results, to_invert)``: a result per image, with the ones to invert still at action ``""``. Skipped
    captions are read now (for the outputs and the manifest); two images of one stem share one caption file,
    so the second is refused."""
    results, to_invert, claimed = [], [], {}
    for image in images:
        caption_file = image.with_suffix(".txt")
        result = CaptionResult(image, caption_file, "")
        results.append(result)
        if caption_file in claimed:
            result.action, result.error = "fail", f"its caption file {caption_file.name} is {claimed[caption_file]}'s"
            continue
        claimed[caption_file] = image.name
        if caption_file.exists() and not caption_file.is_file():
            result.action, result.error = "fail", f"{caption_file.name} is not a file"
        elif caption_file.is_file() and existing == "skip":
            result.action = "skip"
            try:
                result.text = caption_file.read_text(encoding="utf-8", errors="replace").strip()
            except OSError as exc:  # kept as it is; only its text is unknown
                result.error = f"cannot read {caption_file.name}: {exc.strerror or exc}"
        else:
            to_invert.append(result)
    return results, to_invert


def _load(result: CaptionResult, size: int) -> torch.Tensor | None:
    """The image at ``size`` (``None`` for a file that cannot be read, marked failed with the reason)."""
    try:
        return load_image(result.image, size)
    except ValueError as exc:
        result.action, result.error = "fail", str(exc)
        return None


def _batches(items: Sequence[CaptionResult], batch_size: int) -> Iterable[Sequence[CaptionResult]]:
    return (items[i: i + batch_size] for i in range(0, len(items), batch_size))


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _decode_threads(cpus: int | None = None) -> int:
    """Threads that decode image files during a run: 2 (4 from 16 CPUs), so that decoding, the run's bottleneck
    with a light encoder, can use every core of a small machine."""
    return min(4, max(2, (_cpus() if cpus is None else cpus) // 4))


@contextmanager
def _torch_threads_beside(readers: int) -> Iterator[None]:
    """Cap torch's intra-op threads at the CPUs the ``readers`` decoding threads leave (at least 1) while the
    block runs, then restore them. Beside busy decoding threads, an operation split over more threads than there
    are free cores waits at every step for a thread the scheduler has put aside: on 2 CPUs with one of them busy,
    a batch of 16 through the pixel inverter took 2 to 16 times longer on 2 threads than on 1. The pixel
    inverter's outputs are bitwise the same on 1 and 2 threads."""
    before = torch.get_num_threads()
    wanted = max(1, min(before, _cpus() - readers))
    if wanted != before:
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        if wanted != before:
            torch.set_num_threads(before)


def _write_caption(result: CaptionResult, new: str, existing: str) -> None:
    """Merge ``new`` into the result's caption file and write it atomically (``unchanged`` when nothing changes;
    ``fail`` when the old caption cannot be read or the file cannot be written)."""
    old = None
    if result.caption_file.is_file():
        try:
            old = read_text_file(result.caption_file, "caption file").strip()
        except ValueError as exc:
            result.action, result.error = "fail", str(exc)
            return
    text = merged_caption(old, new, existing)
    result.text = text
    if old is not None and text == old:
        result.action = "unchanged"
        return
    try:
        atomic_write_bytes(result.caption_file, text.encode("utf-8"))
    except (ArtifactError, OSError) as exc:
        result.action, result.error = "fail", f"cannot write {result.caption_file.name}: {exc}"
        return
    result.action = "create" if old is None else existing


def _written(writing: tuple[int, list[Future]], done: int, total: int, progress: Progress | None) -> int:
    """Wait for one batch's caption writes (``(images in the batch, write futures)``), then report progress."""
    count, writes = writing
    for future in writes:
        future.result()  # an unexpected error in a write stops the run here
    done += count
    if progress is not None:
        progress(done, total)
    return done


def _write_manifest(summary: CaptionSummary, fmt: str) -> Path:
    rows = [{"file_name": summary.relative(r.image), "text": r.text} for r in summary.captioned]
    path = summary.folder / f"{MANIFEST_STEM}.{fmt}"
    if fmt == "jsonl":
        data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["file_name", "text"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        data = buffer.getvalue()
    return atomic_write_bytes(path, data.encode("utf-8"))


def caption_folder(
    folder: str | os.PathLike[str],
    inverter: PromptInverter,
    encode: ImageEncoder,
    *,
    size: int,
    recursive: bool = True,
    content: str = "prompt",
    trigger: str = "",
    trigger_position: str = "prepend",
    existing: str = "skip",
    manifest: str | None = None,
    batch_size: int = 16,
    top_k: int = 8,
    threshold: float = 0.5,
    use_dakl: bool = True,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> CaptionSummary:
    """Write ``<stem>.txt`` beside every image of ``folder`` (and its sub-folders with ``recursive``; hidden and
    symlinked folders are not entered) with the caption ``inverter`` predicts from ``encode``'s features of the
    image read at ``size`` (the encoder's resolution, :func:`~.encoders.encoder_image_size`).

    ``content``: :data:`CAPTION_CONTENTS`; ``trigger``: words put before or after each new caption
    (``trigger_position``); ``existing``: :data:`EXISTING_MODES` for images that have a caption file already
    (``skip`` makes a re-run resume: done images are not inverted again); ``manifest``: ``"csv"`` or ``"jsonl"``
    writes ``captions.csv`` / ``captions.jsonl`` in ``folder`` (``file_name``, ``text``) for every captioned image;
    ``top_k``, ``threshold``, ``use_dakl``: as :meth:`~.model.PromptInverter.invert`. ``dry_run``: nothing is
    inverted or written; the summary lists what would change (unreadable headers show as failed).
    ``progress(done, total)`` is called after each batch's caption files are written (``done`` counts them and the
    failed images); an exception it raises stops the run after whole files.

    Files are decoded by a few threads ahead of the inversion and captions are written by others behind it (while
    it runs, torch's intra-op threads are capped at the CPUs the decoding threads leave, then restored); the
    captions are those of inverting the batches one after the other. Every write is atomic; an image that cannot
    be read is reported in the summary and skipped. Bad options, a missing folder, a folder without images or an
    encoder that is not the inverter's are ``ValueError``\\ s.
    """
    _check_choice("content", content, CAPTION_CONTENTS)
    _check_choice("existing", existing, EXISTING_MODES)
    _check_choice("trigger_position", trigger_position, TRIGGER_POSITIONS)
    if manifest is not None:
        _check_choice("manifest", manifest, MANIFEST_FORMATS)
    for name, value in (("size", size), ("batch_size", batch_size), ("top_k", top_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    folder = Path(folder)
    images = list_images(folder, "folder", recursive=recursive)
    if not images:
        raise ValueError(f"folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
                         f"{'' if recursive else ' directly; pass recursive=True for its sub-folders'}")
    results, to_invert = _plan(images, existing)
    summary = CaptionSummary(folder, results, dry_run,
                             folder / f"{MANIFEST_STEM}.{manifest}" if manifest is not None else None)
    total, done = len(results), len(results) - len(to_invert)
    if dry_run:
        for result in to_invert:
            try:
                image_file_size(result.image)
                result.action = existing if result.caption_file.is_file() else "create"
            except ValueError as exc:
                result.action, result.error = "fail", str(exc)
        return summary
    if progress is not None:
        progress(done, total)
    batches = list(_batches(to_invert, batch_size))
    # Files are decoded by _decode_threads() threads, up to LOOKAHEAD batches ahead, while this thread inverts; the
    # captions are written by WRITERS threads while the next batch is decoded and inverted. progress(done) follows
    # the writes: ``done`` counts images whose caption file is written (or that failed), one batch behind.
    readers = _decode_threads()
    with (_torch_threads_beside(readers), ThreadPoolExecutor(readers) as reader,
          ThreadPoolExecutor(WRITERS) as writer):
        loading: deque[list[Future]] = deque()
        writing: tuple[int, list[Future]] | None = None
        try:
            for index, batch in enumerate(batches):
                for ahead in batches[index + len(loading): index + LOOKAHEAD]:
                    loading.append([reader.submit(_load, result, size) for result in ahead])
                images = [future.result() for future in loading.popleft()]
                readable = [(r, image) for r, image in zip(batch, images, strict=True) if image is not None]
                captions = []
                if readable:
                    with torch.no_grad():
                        name, features = encode(torch.stack([image for _, image in readable]))
                        inverter.check_backbone(name)
                        inverted = inverter.invert(features, top_k=top_k, threshold=threshold, use_dakl=use_dakl)
                    captions = [(result, caption_text(output, content, threshold, trigger, trigger_position))
                                for (result, _), output in zip(readable, inverted, strict=True)]
                if writing is not None:  # the batch before is written and reported before this one is handed on,
                    done = _written(writing, done, total, progress)  # so a stop there writes nothing of this batch
                writing = (len(batch), [writer.submit(_write_caption, result, new, existing)
                                        for result, new in captions])
            if writing is not None:
                done = _written(writing, done, total, progress)
        except BaseException:
            reader.shutdown(cancel_futures=True)  # decode no further; captions handed to the writers are written whole
            raise
    if manifest is not None:
        summary.manifest = _write_manifest(summary, manifest)
    return summary
