"""``--quick`` against the full run, side by side on val (issue 37).

    python -m promptweave.bench.quick_compare [TASK ...] [--backbone worldclip-web] [--seed 0] [--write]

Reads the records ``out/bench/<backbone dir>/quick/TASK-val-SEED.json`` (``--quick``) and
``out/bench/<backbone dir>/TASK-val-SEED.json`` (full) that ``python -m promptweave.bench TASK --split val`` wrote,
and prints, per task, each row's headline metrics in both runs and whether the quick run orders the method against
every baseline as the full run does. ``--write`` replaces the table in BENCHMARKS.md between
``<!-- bench:quick-vs-full:start -->`` and ``<!-- bench:quick-vs-full:end -->``. A missing record is reported, not run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..prompt_modules.core.artifacts import atomic_write_bytes
from .harness import BACKBONES
from .report import BENCHMARKS, RECORD_DIRS, ROOT, replace_section

#: The metrics a task's verdict is read from (issue 37's "done when"), in the order the table shows them.
HEADLINE: dict[str, tuple[str, ...]] = {
    "pretraining": ("transfer_acc",),
    "inversion": ("cosine_prompts", "cosine"),
    "retrieval": ("i2t_r1", "t2i_r1"),
    "adaptation": ("target_score", "content_kept", "diversity"),
    "grounding": ("acc_iou50",),
}
MARKER = "quick-vs-full"


def record_paths(task: str, backbone: str, seed: int) -> tuple[Path, Path]:
    """``(quick, full)`` record paths of one task's val run."""
    folder = ROOT / "out" / "bench" / RECORD_DIRS[backbone]
    return folder / "quick" / f"{task}-val-{seed}.json", folder / f"{task}-val-{seed}.json"


def rows_of(record: dict) -> dict[str, dict[str, float]]:
    """``{row: metrics}`` with the method's row called ``method``."""
    return {"method": record["metrics"], **record["baselines"]}


def sign(value: float) -> int:
    return (value > 0) - (value < 0)


def compared(q: dict, f: dict, metric: str) -> list[str]:
    """The baselines both runs measured ``metric`` on (``q`` and ``f`` as :func:`rows_of` gives them)."""
    return [row for row in f if row != "method" and metric in q.get(row, {}) and metric in f[row]]


def margin(rows: dict, row: str, metric: str) -> float:
    """The method's ``metric`` minus the baseline ``row``'s."""
    return rows["method"][metric] - rows[row][metric]


def both_margins(q: dict, f: dict, row: str, metric: str) -> str:
    """``row (quick +m, full +m)``: the method minus the baseline in each run."""
    return f"{row} (quick {margin(q, row, metric):+.3f}, full {margin(f, row, metric):+.3f})"


def orderings(quick: dict, full: dict, metrics: tuple[str, ...]) -> dict[str, list[str]]:
    """Per metric, the baselines that the quick run places on the other side of the method than the full run
    does (an exact tie counts as a side of its own). Only rows and metrics both runs measured are compared."""
    q, f = rows_of(quick), rows_of(full)
    return {
        metric: [row for row in compared(q, f, metric) if sign(margin(q, row, metric)) != sign(margin(f, row, metric))]
        for metric in metrics
        if metric in q["method"] and metric in f["method"]
    }


def run_time(record: dict) -> str:
    """The run's seconds, saying so when its trained stages came from a cache (``grounding`` reuses the stages a
    run of the same seed and sizes trained, e.g. the test run's), so the figure counts evaluation only."""
    trained = record.get("notes", {}).get("train_seconds")
    if isinstance(trained, dict) and trained and sum(trained.values()) < 0.05 * record["seconds"]:
        return f"{record['seconds']:.0f} s, trained stages read from the cache"
    return f"{record['seconds']:.0f} s"


def task_table(task: str, quick: dict, full: dict) -> str:
    """One task's rows: quick / full for each headline metric, then the time of each run."""
    metrics = HEADLINE[task]
    q, f = rows_of(quick), rows_of(full)
    lines = [
        f"**`{task}`** (quick {run_time(quick)}, full {run_time(full)})",
        "",
        "| | " + " | ".join(f"{m} quick / full" for m in metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for row in f:
        cells = []
        for m in metrics:
            quick_value = f"{q[row][m]:.3f}" if m in q.get(row, {}) else "–"
            full_value = f"{f[row][m]:.3f}" if m in f[row] else "–"
            cells.append(f"{quick_value} / {full_value}")
        name = "**PromptWeave**" if row == "method" else row
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    flipped = orderings(quick, full, metrics)
    verdicts = []
    for m, rows in flipped.items():
        if rows:  # both margins, so a flip between two near-ties reads as one
            verdicts.append(f"{m}: flipped against " + ", ".join(both_margins(q, f, row, m) for row in rows))
            continue
        closest = min(compared(q, f, m), key=lambda row: abs(margin(q, row, m)), default=None)
        tail = f"; the closest: {both_margins(q, f, closest, m)}" if closest else ""
        verdicts.append(f"{m}: same order against every baseline{tail}")
    lines += ["", "Ordering of the method against each baseline, quick against full (method minus baseline):"]
    lines += [f"- {verdict}." for verdict in verdicts]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m promptweave.bench.quick_compare")
    parser.add_argument("tasks", nargs="*", default=list(HEADLINE))
    parser.add_argument("--backbone", choices=BACKBONES, default="worldclip-web")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="replace the table in BENCHMARKS.md")
    ns = parser.parse_args(argv)
    parts, missing = [], []
    for task in ns.tasks:
        if task not in HEADLINE:
            raise SystemExit(f"no headline metrics for task {task!r}; known: {', '.join(HEADLINE)}")
        paths = record_paths(task, ns.backbone, ns.seed)
        absent = [str(p.relative_to(ROOT)) for p in paths if not p.exists()]
        if absent:
            missing.append(f"{task}: run it first ({', '.join(absent)} missing)")
            continue
        quick, full = (json.loads(p.read_text()) for p in paths)
        parts.append(task_table(task, quick, full))
    if missing:
        parts.append("Not yet compared: " + "; ".join(missing) + ".")
    body = "\n\n".join(parts)
    print(body)
    if ns.write:
        text = BENCHMARKS.read_text()
        new = f"<!-- bench:{MARKER}:start -->\n{body}\n<!-- bench:{MARKER}:end -->"
        atomic_write_bytes(BENCHMARKS, replace_section(text, MARKER, new).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
