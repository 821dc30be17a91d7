"""The benchmark harness: task registry, the JSON result format, and the command line."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..prompt_modules.core.artifacts import atomic_write_bytes

SPLITS = ("test", "compositional", "val")
#: World backbones a task can run on (``--backbone``): WorldCLIP 2 (trained on the world's own captions) and
#: WorldCLIP-web (pretrained on web-like captions, issue 37). Tasks read the choice with :func:`bench_backbone`.
BACKBONES = ("worldclip2", "worldclip-web")
BACKBONE_ENV = "PW_BENCH_BACKBONE"
#: A WorldCLIP file measured instead of a named backbone (``--backbone-file``: a pilot or a retrained tower).
BACKBONE_FILE_ENV = "PW_BENCH_BACKBONE_FILE"
#: Seeds every task runs for: training sets start at ``seed * 1_000_000`` in the world's train split (1e9 scenes),
#: so seeds 0..999 keep every task inside it; the command line refuses others up front.
MAX_SEED = 999
#: task name -> module in this package that defines ``run(seed, split, quick) -> TaskResult``.
TASKS: dict[str, str] = {
    task: task for task in (
        "world", "inversion", "inversion_unet", "retrieval", "adaptation", "grounding", "pretraining", "overhead",
        "soak", "scale", "caption_folder", "headroom", "distributed",
    )
}


@dataclass
class TaskResult:
    """What a task measured: its method's metrics and each baseline's metrics (same metric names)."""

    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: dict[str, object] = field(default_factory=dict)


def bench_backbone_name() -> str:
    """The world backbone this run measures: ``--backbone`` (through :data:`BACKBONE_ENV`), WorldCLIP 2 by default,
    or ``file:PATH`` for ``--backbone-file``."""
    path = os.environ.get(BACKBONE_FILE_ENV, "").strip()
    if path:
        return f"file:{path}"
    name = os.environ.get(BACKBONE_ENV, BACKBONES[0]).strip()
    if name not in BACKBONES:
        raise SystemExit(f"{BACKBONE_ENV}={name!r} is not a world backbone; choose one of {', '.join(BACKBONES)}")
    return name


def bench_backbone():
    """``(name, vlm)``: the WorldCLIP of :func:`bench_backbone_name`, in eval mode."""
    from ..prompt_modules.core.vlm import load_vlm
    from ..prompt_modules.world.models import load_worldclip

    name = bench_backbone_name()
    if name.startswith("file:"):
        return name, load_vlm(name.removeprefix("file:")).eval()
    return name, load_worldclip(name=name)


def task_runner(task: str) -> Callable[[int, str, bool], TaskResult]:
    if task not in TASKS:
        raise SystemExit(f"unknown task {task!r}; known tasks: {', '.join(sorted(TASKS))}")
    return importlib.import_module(f"{__package__}.{TASKS[task]}").run


def run_task(task: str, *, seed: int = 0, split: str = "test", quick: bool = False) -> dict:
    """Run one task and return the result record written by ``--json``."""
    if split not in SPLITS:
        raise SystemExit(f"unknown split {split!r}; expected one of {SPLITS}")
    if not 0 <= seed <= MAX_SEED:
        raise SystemExit(f"seed {seed} is outside 0..{MAX_SEED}: each seed's training scenes start at seed * 1,000,000 "
                         "in the world's train split of 1,000,000,000 scenes; pick a seed in that range")
    start = time.perf_counter()
    result = task_runner(task)(seed, split, quick)
    return {
        "task": task,
        "seed": seed,
        "split": split,
        "quick": quick,
        "backbone": bench_backbone_name(),
        "metrics": {k: float(v) for k, v in result.metrics.items()},
        "baselines": {name: {k: float(v) for k, v in m.items()} for name, m in result.baselines.items()},
        "notes": result.notes,
        "seconds": round(time.perf_counter() - start, 2),
    }


def emit_record(record: dict, json_path: str | os.PathLike[str] | None = None) -> int:
    """Print a benchmark's record as indented JSON, and write it to ``json_path`` (atomically) when given; returns
    0, the exit status of the command that measured it."""
    text = json.dumps(record, indent=1)
    if json_path:
        atomic_write_bytes(Path(json_path).resolve(), (text + "\n").encode())
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m promptweave.bench", description=__doc__.splitlines()[0])
    parser.add_argument("task", help=f"one of: {', '.join(sorted(TASKS))}")
    parser.add_argument(
        "--quick", action="store_true",
        help="shorter runs (issue 37): pretraining, inversion, retrieval and adaptation under 10 minutes on 2 cores "
        "with the full run's ordering; grounding's (about 14 minutes) checks the pipeline, not the ranking",
    )
    parser.add_argument("--seed", type=int, default=0, help=f"0..{MAX_SEED} (default 0)")
    parser.add_argument("--split", default="test", choices=SPLITS)
    parser.add_argument("--json", dest="json_path", help="write the result record to this file")
    parser.add_argument("--backbone", choices=BACKBONES, default=None,
                        help=f"world backbone of the tasks that take one (default {BACKBONES[0]})")
    parser.add_argument("--backbone-file", default=None, metavar="PATH",
                        help="measure this WorldCLIP .safetensors file (e.g. a pilot run); overrides --backbone")
    ns = parser.parse_args(argv)
    if ns.backbone:
        os.environ[BACKBONE_ENV] = ns.backbone
    if ns.backbone_file:
        if not Path(ns.backbone_file).is_file():
            raise SystemExit(f"--backbone-file {ns.backbone_file}: no such file")
        os.environ[BACKBONE_FILE_ENV] = str(Path(ns.backbone_file).resolve())
    return emit_record(run_task(ns.task, seed=ns.seed, split=ns.split, quick=ns.quick), ns.json_path)


if __name__ == "__main__":
    sys.exit(main())
