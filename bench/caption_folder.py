"""Benchmark ``caption_folder`` (issue 38): captioning a folder of image files against decoding the same files.

    python -m promptweave.bench.caption_folder [--n 1000] [--size 512] [--repeats 2] [--threads 2] [--dir DIR]
        [--json OUT]

Renders ``--n`` world scenes (at 128 px, 64 px for files smaller than 128) and saves them as ``--size`` x
``--size`` RGB PNGs in a temporary folder (in ``--dir``: the file system decides what a caption's fsync costs),
then times three paths over the same files, each ``--repeats`` times, with the shipped pixel inverter
(``inverter-pixels-world``, images read at its 64 px):

- ``decode_only``: :func:`~promptweave.prompt_modules.core.data.load_image` of every file at that size;
- ``decode_batch``: the same, then one in-graph inversion of all of them as a single batch (what Prompt
  Inversion does with an IMAGE batch);
- ``caption_folder``: :func:`~promptweave.prompt_modules.inversion.caption.caption_folder` with its default batch
  size, writing one ``.txt`` per image (the captions of the run before are removed first, outside the timing).

Prints (and with ``--json`` writes) one JSON record: images per second and seconds of every repetition per path.
Also a harness task (``python -m promptweave.bench caption_folder [--quick]``): 1,000 files of 512 px, 64 of
128 px with ``--quick``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..prompt_modules.core import artifacts
from ..prompt_modules.core.artifacts import SHIPPED_WEIGHTS_DIR
from ..prompt_modules.core.data import list_images, load_image
from ..prompt_modules.inversion import caption_folder, encoder_image_size, image_features, load_inverter
from ..prompt_modules.inversion.model import PromptInverter
from ..prompt_modules.world.dataset import render_batch
from ..prompt_modules.world.scene import split_seed_range
from .harness import TaskResult, emit_record

COMMAND = "python -m promptweave.bench.caption_folder"
INVERTER_FILE = "inverter-pixels-world.safetensors"
#: The world renders at these sizes; scenes are rendered at the largest one not above the file size (else the
#: smallest) and scaled to it: the files' size is what decoding pays for.
RENDER_SIZES = (64, 128)
PATHS = ("decode_only", "decode_batch", "caption_folder")


def write_scenes(folder: Path, n: int, size: int, first_seed: int) -> list[Path]:
    """``n`` world scenes (mixed styles) saved as ``size`` px RGB PNGs ``scene-00000.png``... in ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    render = max((s for s in RENDER_SIZES if s <= size), default=RENDER_SIZES[0])
    files = []
    for start in range(0, n, 100):
        seeds = range(first_seed + start, first_seed + min(n, start + 100))
        batch = render_batch(seeds, size=render, style="mixed")["image"]
        for k, image in enumerate(batch):
            array = np.ascontiguousarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
            picture = Image.fromarray(array, "RGB")
            if render != size:
                picture = picture.resize((size, size), Image.BICUBIC)
            path = folder / f"scene-{start + k:05d}.png"
            picture.save(path)
            files.append(path)
    return files


def _encode(inverter: PromptInverter) -> Callable[[torch.Tensor], tuple[str, torch.Tensor]]:
    return lambda pixels: image_features(inverter.backbone, pixels)


def decode_only(files: list[Path], read_size: int) -> torch.Tensor:
    return torch.stack([load_image(path, read_size) for path in files])


def decode_batch(files: list[Path], read_size: int, inverter: PromptInverter) -> list[dict]:
    images = decode_only(files, read_size)
    with torch.no_grad():
        name, features = _encode(inverter)(images)
        inverter.check_backbone(name)
        return inverter.invert(features, top_k=8)


def caption(folder: Path, read_size: int, inverter: PromptInverter) -> int:
    summary = caption_folder(folder, inverter, _encode(inverter), size=read_size)
    if summary.failed or len(summary.written) != len(summary.results):
        raise SystemExit(f"caption_folder did not write every caption:\n{summary.report()}")
    return len(summary.written)


def _load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _remove_captions(folder: Path) -> None:
    for path in folder.glob("*.txt"):
        path.unlink()
    artifacts._last_sweep.clear()  # each repetition is a fresh run: its first write sweeps the folder


def measure(n: int = 1000, size: int = 512, repeats: int = 2, threads: int = 2, first_seed: int | None = None,
            where: str | os.PathLike[str] | None = None, log: Callable[[str], None] = lambda line: None) -> dict:
    """The benchmark record: ``paths`` -> ``{"images_per_s": [...], "seconds": [...]}`` per repetition."""
    for name, value in (("n", n), ("size", size), ("repeats", repeats), ("threads", threads)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    torch.set_num_threads(threads)
    inverter = load_inverter(SHIPPED_WEIGHTS_DIR / INVERTER_FILE)
    read_size = encoder_image_size(inverter.backbone)
    first_seed = split_seed_range("test").start if first_seed is None else first_seed
    times: dict[str, list[float]] = {path: [] for path in PATHS}
    load_before = _load_average()
    with tempfile.TemporaryDirectory(prefix="pw-caption-bench-", dir=where) as tmp:
        folder = Path(tmp) / "images"
        t0 = time.perf_counter()
        files = write_scenes(folder, n, size, first_seed)
        log(f"wrote {n} PNGs of {size} px in {time.perf_counter() - t0:.1f} s")
        assert list_images(folder) == files
        caption(folder, read_size, inverter)  # warm-up: imports, first-call allocations, the page cache
        runs: dict[str, Callable[[], object]] = {
            "decode_only": lambda: decode_only(files, read_size),
            "decode_batch": lambda: decode_batch(files, read_size, inverter),
            "caption_folder": lambda: caption(folder, read_size, inverter),
        }
        for rep in range(repeats):
            for path, fn in runs.items():
                _remove_captions(folder)
                t0 = time.perf_counter()
                fn()
                times[path].append(time.perf_counter() - t0)
                log(f"repetition {rep + 1}/{repeats}: {path} {n / times[path][-1]:.1f} images/s")
        written = len(list(folder.glob("*.txt")))
    return {
        "command": f"{COMMAND} --n {n} --size {size} --repeats {repeats} --threads {threads}",
        "paths": {path: {"images_per_s": [round(n / s, 1) for s in secs], "seconds": [round(s, 3) for s in secs]}
                  for path, secs in times.items()},
        "notes": {
            "images": n, "file_size": size, "read_size": read_size, "inverter": INVERTER_FILE,
            "batch_size": inspect.signature(caption_folder).parameters["batch_size"].default,
            "captions_written": written,
            "folder_in": os.fspath(Path(tmp).parent), "torch_threads": threads, "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            # the 1-minute load average before and after: above ~0.5 something else shared the CPUs
            "load_average_before": load_before, "load_average_after": _load_average(),
        },
    }


def run(seed: int, split: str, quick: bool) -> TaskResult:
    """Harness task: ``caption_folder`` images/s as the metric, the two decoding paths as baselines."""
    n, size, repeats = (64, 128, 1) if quick else (1000, 512, 2)
    record = measure(n, size, repeats, first_seed=split_seed_range(split).start + seed * n)
    best = {path: {"images_per_s": max(v["images_per_s"])} for path, v in record["paths"].items()}
    return TaskResult(metrics=best.pop("caption_folder"), baselines=best, notes=record["notes"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="images in the folder (default 1000)")
    parser.add_argument("--size", type=int, default=512, help="side of the PNG files in px (default 512)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repetitions of each path (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--dir", type=Path, help="where the temporary image folder goes (default: the system's)")
    parser.add_argument("--json", dest="json_path", type=Path, help="also write the record to this file")
    ns = parser.parse_args(argv)
    try:
        record = measure(ns.n, ns.size, ns.repeats, ns.threads, where=ns.dir,
                         log=lambda line: print(line, file=sys.stderr))
    except ValueError as exc:
        parser.error(str(exc))
    return emit_record(record, ns.json_path)


if __name__ == "__main__":
    sys.exit(main())
