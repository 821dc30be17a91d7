"""Run the full benchmarks over 3 seeds and write BENCHMARKS.md tables and one plot per task.

    python -m promptweave.bench.report world [TASK ...] [--seeds 0 1 2] [--splits test compositional] [--reuse]
        [--backbone worldclip2|worldclip-web]

Each task's section in BENCHMARKS.md sits between ``<!-- bench:TASK:start -->`` and ``<!-- bench:TASK:end -->``
markers (``bench:TASK@BACKBONE:...`` for a backbone other than WorldCLIP 2) and is replaced as a whole; the prose
around it is left alone (the file is read again just before it is written, so edits made while the benchmarks ran
are kept). Raw records go to ``out/bench/`` (``out/bench/web/`` for WorldCLIP-web); ``--reuse`` takes a full (not
``--quick``) record already there, of the same backbone, instead of running that seed again.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from ..prompt_modules.core.artifacts import atomic_write_bytes
from .harness import BACKBONE_ENV, BACKBONES, run_task
from .plot import bar_chart

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"
PLOTS = ROOT / "docs" / "bench"
#: Where each backbone's raw records live under ``out/bench/`` (WorldCLIP 2's at the top, as before issue 37).
RECORD_DIRS = {"worldclip2": "", "worldclip-web": "web"}
assert set(RECORD_DIRS) == set(BACKBONES)


def section_key(task: str, backbone: str) -> str:
    """The marker name of a task's section: ``TASK`` on WorldCLIP 2, ``TASK@BACKBONE`` on another backbone."""
    return task if backbone == BACKBONES[0] else f"{task}@{backbone}"


def summarise(records: list[dict]) -> dict[str, dict[str, tuple[float, float]]]:
    """``{row: {metric: (mean, std)}}`` over seeds; the method's row is called ``method``."""
    rows: dict[str, dict[str, list[float]]] = {}
    for record in records:
        for row, metrics in [("method", record["metrics"]), *record["baselines"].items()]:
            for metric, value in metrics.items():
                rows.setdefault(row, {}).setdefault(metric, []).append(value)
    return {
        row: {m: (statistics.fmean(v), statistics.pstdev(v) if len(v) > 1 else 0.0) for m, v in metrics.items()}
        for row, metrics in rows.items()
    }


def markdown_table(summary: dict[str, dict[str, tuple[float, float]]]) -> str:
    metrics = sorted({m for row in summary.values() for m in row})
    lines = ["| | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for row, values in summary.items():
        cells = [f"{values[m][0]:.3f} ± {values[m][1]:.3f}" if m in values else "–" for m in metrics]
        name = "**PromptWeave**" if row == "method" else row
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def section(task: str, by_split: dict[str, list[dict]], command: str, backbone: str = BACKBONES[0]) -> str:
    key = section_key(task, backbone)
    on_backbone = "" if key == task else f" on {backbone}"
    parts = [f"<!-- bench:{key}:start -->", f"### `{task}`{on_backbone}", "", f"Command: `{command}`", ""]
    for split, records in by_split.items():
        seeds = ", ".join(str(r["seed"]) for r in records)
        seconds = statistics.fmean(r["seconds"] for r in records)
        summary = summarise(records)
        plot = PLOTS / (f"{task}-{split}.png" if key == task else f"{task}-{split}-{backbone}.png")
        plot.parent.mkdir(parents=True, exist_ok=True)
        chart_title = f"{task}{on_backbone} ({split} split, mean ± std over seeds {seeds})"
        atomic_write_bytes(plot, bar_chart(chart_title, summary))
        parts += [
            f"**{split} split** (seeds {seeds}; {seconds:.0f} s per run; mean ± std):",
            "",
            markdown_table(summary),
            "",
            f"![{key} {split}](docs/bench/{plot.name})",
            "",
        ]
        notes = records[0].get("notes")
        if notes:
            parts += ["Notes: " + json.dumps(notes), ""]
    parts.append(f"<!-- bench:{key}:end -->")
    return "\n".join(parts)


def replace_section(text: str, task: str, new: str) -> str:
    start, end = f"<!-- bench:{task}:start -->", f"<!-- bench:{task}:end -->"
    if start in text and end in text:
        return text[: text.index(start)] + new + text[text.index(end) + len(end) :]
    return text.rstrip() + "\n\n" + new + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m promptweave.bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="+")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--splits", nargs="+", default=["test", "compositional"])
    parser.add_argument("--reuse", action="store_true", help="use full records already in out/bench/")
    parser.add_argument("--backbone", choices=BACKBONES, default=BACKBONES[0],
                        help=f"world backbone the tasks run on (default {BACKBONES[0]})")
    ns = parser.parse_args(argv)
    os.environ[BACKBONE_ENV] = ns.backbone
    out = ROOT / "out" / "bench" / RECORD_DIRS[ns.backbone]
    out.mkdir(parents=True, exist_ok=True)
    for task in ns.tasks:
        by_split: dict[str, list[dict]] = {}
        for split in ns.splits:
            for seed in ns.seeds:
                path = out / f"{task}-{split}-{seed}.json"
                record = reusable(path, task, split, seed, ns.backbone) if ns.reuse else None
                if record is None:
                    record = run_task(task, seed=seed, split=split, quick=False)
                    atomic_write_bytes(path, json.dumps(record, indent=1).encode())
                by_split.setdefault(split, []).append(record)
                print(json.dumps(record))
        flag = "" if ns.backbone == BACKBONES[0] else f" --backbone {ns.backbone}"
        command = f"python -m promptweave.bench {task} --split SPLIT --seed SEED{flag} --json out.json"
        text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
        new = section(task, by_split, command, ns.backbone)
        atomic_write_bytes(BENCHMARKS, replace_section(text, section_key(task, ns.backbone), new).encode())
        print(f"updated {BENCHMARKS} ({task})")
    return 0


def reusable(path: Path, task: str, split: str, seed: int, backbone: str = BACKBONES[0]) -> dict | None:
    """The stored record of this task, split, seed and backbone when it is a full run, else ``None`` (records from
    before ``--backbone`` carry none: they are WorldCLIP 2's)."""
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    fields = (record.get("task"), record.get("split"), record.get("seed"), record.get("backbone", BACKBONES[0]))
    same = fields == (task, split, seed, backbone)
    return record if same and not record.get("quick", True) else None


if __name__ == "__main__":
    sys.exit(main())
