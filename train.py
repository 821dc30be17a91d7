"""Training from the command line, in one process or many: ``python -m promptweave.train METHOD ...``.

The same library training functions the nodes call write the same safetensors files, which the nodes and
``diffusers_api`` load. Started by ``torchrun --nproc_per_node N -m promptweave.train ...`` (or ``accelerate
launch -m promptweave.train ...``) every process trains on its part of each global batch and the gradients are
averaged (:mod:`promptweave.prompt_modules.core.distributed`); only rank 0 writes checkpoints, logs and the result,
and a checkpoint resumes at any process count.

Methods so far: ``rpp`` (prompt pretraining) and ``dcar`` (dual prompts). Inversion, Diff-Prompt and IPL still train
in one process only, from their nodes or Python functions.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .prompt_modules.core.distributed import DataParallel, data_parallel_from_env
from .prompt_modules.core.vlm import VisionLanguageModel, load_vlm
from .prompt_modules.dual_prompt import DualPromptConfig, save_dual_prompt, train_dual_prompt
from .prompt_modules.dual_prompt.data import FDRDSource, FolderSource
from .prompt_modules.pretraining import RPPConfig, pretrain_bundle
from .prompt_modules.pretraining.data import FolderClassSource


def _vlm(spec: str, vision: str | None) -> VisionLanguageModel:
    """``worldclip`` (the shipped WorldCLIP 2), ``preset:NAME`` (a random-weight preset, for tests) or any CLIP
    file or folder :func:`load_vlm` reads (``--vision`` for ComfyUI's split text / CLIP-vision files)."""
    if spec == "worldclip":
        from .prompt_modules.world.models import load_worldclip

        return load_worldclip()
    if spec.startswith("preset:"):
        return VisionLanguageModel(spec.removeprefix("preset:"), seed=0)
    return load_vlm(spec, vision)


def _config_file(path: str | None) -> dict[str, Any]:
    """Settings from a JSON (or, with PyYAML installed, YAML) file: ``{"config": {RPPConfig fields}, "steps": ...}``
    (keys as the long options, with underscores)."""
    if not path:
        return {}
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith((".yaml", ".yml")):
        import yaml

        return dict(yaml.safe_load(text) or {})
    return dict(json.loads(text))


class _Log:
    """Rank 0's progress: loss and throughput per step on stderr, and optionally one CSV row per step."""

    def __init__(self, parallel: DataParallel, batch_size: int, csv_path: str | None) -> None:
        self.parallel, self.batch_size, self.csv_path = parallel, batch_size, csv_path
        self.first: tuple[int, float] | None = None  # (step, time) of the first step this run: set-up not counted
        self.rows: list[tuple[int, float, float]] = []

    def __call__(self, step: int, steps: int, loss: float) -> None:
        if not self.parallel.is_main:
            return
        now = time.perf_counter()
        if self.first is None:
            self.first = (step, now)
        done = step - self.first[0]
        rate = done * self.batch_size / (now - self.first[1]) if done else float("nan")
        self.rows.append((step, loss, rate))
        print(f"step {step}/{steps} loss {loss:.4f} {rate:.1f} samples/s", file=sys.stderr, flush=True)

    def samples_per_second(self) -> float:
        """Global samples per second after the first step (NaN with fewer than two steps)."""
        return self.rows[-1][2] if self.rows else float("nan")

    def write(self) -> None:
        if self.csv_path and self.parallel.is_main:
            with open(self.csv_path, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["step", "loss", "samples_per_second"])
                writer.writerows(self.rows)


def train_rpp(args: argparse.Namespace, parallel: DataParallel) -> Path:
    settings = _config_file(args.config)
    vlm = _vlm(args.vlm, args.vision).requires_grad_(False)
    config = RPPConfig(**settings.get("config", {}))
    if args.source == "folder":
        source = FolderClassSource(args.path, size=int(vlm.image_size))
    else:
        from .prompt_modules.world.sources import WorldClassSource, world_classes

        source = WorldClassSource(world_classes(), size=int(vlm.image_size))
    steps = int(settings.get("steps", args.steps))
    batch_size = int(settings.get("batch_size", args.batch_size))
    log = _Log(parallel, batch_size, args.log_csv)
    pretrain_bundle(
        vlm, source, config, save_path=args.out, info={"source": args.source, "processes": parallel.world_size},
        steps=steps, batch_size=batch_size, lr=float(settings.get("lr", args.lr)),
        seed=int(settings.get("seed", args.seed)), checkpoint_path=args.checkpoint,
        checkpoint_every=args.checkpoint_every, callback=log, progress=False, parallel=parallel,
    )
    log.write()
    return Path(args.out)


def train_dcar(args: argparse.Namespace, parallel: DataParallel) -> Path:
    settings = _config_file(args.config)
    vlm = _vlm(args.vlm, args.vision).requires_grad_(False)
    config = DualPromptConfig(**settings.get("config", {}))
    size = int(vlm.image_size)
    if args.source == "folder":
        source = FolderSource(args.path, size=size)
    elif args.source == "fdrd_json":
        source = FDRDSource(args.path, args.image_root, size=size, config=config)
    else:
        from .prompt_modules.world.sources import WorldSource

        source = WorldSource(size=size, config=config)
    batch_size = int(settings.get("batch_size", args.batch_size))
    log = _Log(parallel, batch_size, args.log_csv)
    result = train_dual_prompt(
        vlm, source, config, steps=int(settings.get("steps", args.steps)), batch_size=batch_size,
        lr=float(settings.get("lr", args.lr)), seed=int(settings.get("seed", args.seed)),
        checkpoint_path=args.checkpoint, checkpoint_every=args.checkpoint_every, callback=log, progress=False,
        parallel=parallel,
    )
    if parallel.is_main:
        save_dual_prompt(result.dual, args.out)
    log.write()
    return Path(args.out)


def _common_options(command: argparse.ArgumentParser, lr: float, config: str) -> None:
    command.add_argument("--vlm", default="worldclip", help="worldclip, preset:NAME, or a CLIP file/folder")
    command.add_argument("--vision", default=None, help="CLIP-vision file, with a ComfyUI text-encoder --vlm")
    command.add_argument("--steps", type=int, default=200)
    command.add_argument("--batch-size", type=int, default=32, help="the global batch over all processes")
    command.add_argument("--lr", type=float, default=lr)
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--config", default=None, help=f"JSON/YAML: {{'config': {{{config} fields}}, 'steps': ...}}")
    command.add_argument("--out", required=True, help="the .safetensors file to write")
    command.add_argument("--checkpoint", default=None, help="resumable state (resumes when it exists)")
    command.add_argument("--checkpoint-every", type=int, default=50)
    command.add_argument("--log-csv", default=None, help="one row per step: step, loss, samples/s")


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="python -m promptweave.train", description=__doc__.split("\n\n")[0])
    methods = main.add_subparsers(dest="method", required=True)
    rpp = methods.add_parser("rpp", help="RPP prompt pretraining (writes what Load Pretrained Prompts reads)")
    _common_options(rpp, 2e-3, "RPPConfig")
    rpp.add_argument("--source", choices=("world", "folder"), default="world")
    rpp.add_argument("--path", default="", help="the ImageFolder root (one sub-folder per class) for --source folder")
    dcar = methods.add_parser("dcar", help="DCAR dual prompts (writes what Load Dual Prompt reads)")
    _common_options(dcar, 5e-3, "DualPromptConfig")
    dcar.add_argument("--source", choices=("world", "folder", "fdrd_json"), default="world")
    dcar.add_argument("--path", default="", help="image + .txt folder, or an FDRD-style JSON file")
    dcar.add_argument("--image-root", default=None, help="where an FDRD JSON's images are")
    return main


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    parallel = data_parallel_from_env()
    path = {"rpp": train_rpp, "dcar": train_dcar}[args.method](args, parallel)
    parallel.barrier()
    if parallel.is_main:
        print(f"wrote {path} ({parallel.world_size} process(es))")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
