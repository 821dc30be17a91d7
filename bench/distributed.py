"""Benchmark ``distributed`` (issue 39): training throughput of ``python -m promptweave.train`` in 1 and in N processes.

    python -m promptweave.bench.distributed [--methods rpp,dcar] [--processes 1,2] [--steps 20] [--batch-size 32]
        [--vlm worldclip] [--threads-per-process 0] [--json OUT]

For every method and process count the command trains ``--steps`` steps at the global ``--batch-size``: one process
as ``python -m promptweave.train METHOD ...``, N processes under ``torchrun --standalone --nproc_per_node N`` (gloo on
the CPU). Rank 0's ``--log-csv`` gives the global samples per second after the first step, so start-up (imports,
loading the models, the process group, a dataset's features) is not counted; the wall time of the whole command is
recorded too. Threads: each process gets ``--threads-per-process`` torch threads, by default the CPU count divided by
the process count, so every run uses the same cores. ``speedup`` is N processes' samples/s over one process's.

Methods: ``rpp`` and ``dcar`` by default; ``inversion`` (pairs of world scenes written to a temporary folder),
``diff-prompt`` (stage ``prompt`` alone would need a bundle: the run trains stage ``vae``) and ``ipl`` (WorldGen,
Gaussian codes) also run. ``--vlm preset:tiny`` (with ``--worldgen preset:tiny``) needs no shipped weights: a smoke
run, not a figure. Prints (and with ``--json`` writes) one JSON record. Also a harness function :func:`run`
(``quick``: tiny models, 3 steps).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .harness import TaskResult, emit_record

COMMAND = "python -m promptweave.bench.distributed"
METHODS = ("rpp", "dcar", "inversion", "diff-prompt", "ipl")
#: Pairs of world scenes the ``inversion`` run trains on (its throughput counts the batches, not the epochs).
INVERSION_PAIRS = 256


def _write_pairs(folder: Path, n: int) -> None:
    """``n`` world scenes as ``i.png`` + ``i.txt`` (clean caption) in ``folder``."""
    import numpy as np
    from PIL import Image

    from ..prompt_modules.world.dataset import render_batch

    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, n, 100):
        batch = render_batch(range(start, min(n, start + 100)))
        for k, (image, caption) in enumerate(zip(batch["image"], batch["clean_caption"], strict=True)):
            array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(np.ascontiguousarray(array), "RGB").save(folder / f"{start + k}.png")
            (folder / f"{start + k}.txt").write_text(str(caption), encoding="utf-8")


def method_arguments(method: str, steps: int, batch_size: int, vlm: str, worldgen: str, work: Path) -> list[str]:
    """The ``python -m promptweave.train`` arguments of one timed run of ``method``."""
    common = ["--vlm", vlm, "--batch-size", str(batch_size)]
    if method in ("rpp", "dcar"):
        return [method, *common, "--steps", str(steps)]
    if method == "inversion":
        pairs = work / "pairs"
        if not pairs.is_dir():
            _write_pairs(pairs, max(INVERSION_PAIRS, batch_size))
        epochs = max(1, math.ceil(steps * batch_size / max(INVERSION_PAIRS, batch_size)))
        return [method, *common, "--data", str(pairs), "--epochs", str(epochs), "--no-curriculum"]
    if method == "diff-prompt":
        return [method, *common, "--stage", "vae", "--steps", str(steps)]
    if method == "ipl":  # the LoRA stage's batch is --batch-size, the mapper's the same; a handful of mapper steps
        return [method, *common, "--worldgen", worldgen, "--target-text", "an outline sketch", "--steps", str(steps),
                "--mapper-steps", str(steps), "--mapper-batch", str(batch_size), "--pool", "0"]
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


def _samples_per_second(log_csv: Path) -> float:
    with open(log_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return float(rows[-1]["samples_per_second"]) if rows else float("nan")


def time_run(args: list[str], processes: int, threads: int, work: Path) -> dict:
    """One command in ``processes`` processes with ``threads`` torch threads each: samples/s after the first step
    (rank 0's log) and the command's wall seconds."""
    log_csv = work / f"{args[0]}-{processes}.csv"
    out = work / f"{args[0]}-{processes}.safetensors"
    launcher = [sys.executable, "-m", "promptweave.train"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
        "-m", "promptweave.train"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    done = subprocess.run([*launcher, *args, "--out", str(out), "--log-csv", str(log_csv)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"{' '.join(args[:1])} in {processes} process(es) failed:\n{done.stdout[-3000:]}")
    return {"samples_per_s": round(_samples_per_second(log_csv), 3), "wall_seconds": round(seconds, 2),
            "threads_per_process": threads}


def measure(methods: list[str], processes: list[int], steps: int, batch_size: int, vlm: str = "worldclip",
            worldgen: str = "worldgen", threads_per_process: int = 0, log=lambda line: None) -> dict:
    """The benchmark record: ``methods`` -> process count -> samples/s and wall seconds, and ``speedup``."""
    for count in processes:
        if count < 1 or batch_size % count:
            raise ValueError(f"the batch size {batch_size} must divide into {count} process(es)")
    if steps < 2:
        raise ValueError("at least 2 steps: the rate is measured after the first")
    cpus = os.cpu_count() or 1
    record: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="pw-distributed-bench-") as tmp:
        work = Path(tmp)
        for method in methods:
            args = method_arguments(method, steps, batch_size, vlm, worldgen, work)
            runs = {}
            for count in processes:
                threads = threads_per_process or max(1, cpus // count)
                runs[str(count)] = time_run(args, count, threads, work)
                log(f"{method}: {count} process(es) {runs[str(count)]['samples_per_s']} samples/s")
            base = runs[str(processes[0])]["samples_per_s"]
            speedup = {n: round(r["samples_per_s"] / base, 3) for n, r in runs.items() if base > 0}
            record[method] = {"processes": runs, "speedup": speedup}
    return {
        "command": f"{COMMAND} --methods {','.join(methods)} --processes {','.join(map(str, processes))} "
                   f"--steps {steps} --batch-size {batch_size} --vlm {vlm}",
        "methods": record,
        "notes": {"cpus": cpus, "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
                  "backend": "gloo", "python": platform.python_version(), "torch": torch.__version__,
                  "date": time.strftime("%Y-%m-%d")},
    }


def run(seed: int, split: str, quick: bool) -> TaskResult:
    """Harness task: samples/s of rpp and dcar in 1 and 2 processes (``quick``: tiny models, 3 steps)."""
    settings = {"steps": 3, "batch_size": 8, "vlm": "preset:tiny"} if quick else {"steps": 20, "batch_size": 32}
    record = measure(["rpp", "dcar"], [1, 2], **settings)
    metrics = {f"{m}_speedup_2": r["speedup"].get("2", float("nan")) for m, r in record["methods"].items()}
    baselines = {f"{m}_{n}_processes": {"samples_per_s": v["samples_per_s"]}
                 for m, r in record["methods"].items() for n, v in r["processes"].items()}
    return TaskResult(metrics=metrics, baselines=baselines, notes=record["notes"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="rpp,dcar", help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts (the first: the base)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per run (default 20)")
    parser.add_argument("--batch-size", type=int, default=32, help="the global batch (default 32)")
    parser.add_argument("--vlm", default="worldclip", help="worldclip (default) or preset:NAME for a smoke run")
    parser.add_argument("--worldgen", default="worldgen", help="worldgen (default) or preset:NAME, for ipl")
    parser.add_argument("--threads-per-process", type=int, default=0, help="0: the CPU count / the process count")
    parser.add_argument("--json", dest="json_path", type=Path, help="also write the record to this file")
    ns = parser.parse_args(argv)
    methods = [m.strip() for m in ns.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    try:
        processes = [int(n) for n in ns.processes.split(",") if n.strip()]
        record = measure(methods, processes, ns.steps, ns.batch_size, ns.vlm, ns.worldgen, ns.threads_per_process,
                         log=lambda line: print(line, file=sys.stderr, flush=True))
    except ValueError as exc:
        parser.error(str(exc))
    return emit_record(record, ns.json_path)


if __name__ == "__main__":
    sys.exit(main())
