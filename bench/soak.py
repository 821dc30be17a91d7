"""Benchmark ``soak``: back-to-back workflow executions in one real ComfyUI server process (issue 10, load).

One real ComfyUI server (``main.py --cpu``, started as a child process by
:class:`promptweave.headless.ComfyUIServer` over a temporary base directory with the pack and the tiny models
installed) runs a warm-up of ``WARMUP`` executions and then ``RUNS`` (200; ``--quick``: 30) measured executions,
queued one after the other with ``POST /prompt``, each waited for through ``GET /history/{id}``. The pack
workflows rotate among ``learned_prompt_generate``, ``inversion_regenerate`` and ``dual_prompt_generate`` from
``workflows/api/`` (each about a second or two on CPU; ``dual_prompt_generate`` trains DCAR prompts every time,
for 5 steps instead of the workflow's 30, see ``OVERRIDES``). Each execution gets new seeds and a new text suffix
on the pack's text inputs, so ComfyUI's cache cannot skip the pack nodes; loaders stay cached, as in a user's
session.

Per execution: wall time (queue -> history says done) and the resident memory of the server process and its
children (``VmRSS`` of ``/proc/<pid>/status``) after it finished. Metrics:

- ``rss_start_mb`` (after the warm-up), ``rss_end_mb``, ``rss_growth_mb`` (end - start);
- ``rss_growth_per_100_runs_mb``: slope of a least-squares line through the measured runs' RSS, times 100;
- ``seconds_per_run_first`` / ``seconds_per_run_last``: over the first / last ``WINDOW`` (20) measured runs, the
  median wall time of each workflow, averaged over the rotation (a plain median for one workflow; the average
  over workflows keeps the figure independent of which workflows fall into a window);
  ``slowdown`` = last / first;
- ``runs`` (measured executions), ``failures`` (executions whose history status is not ``success``);
- ``bound_met``: 1.0 when the stated bound holds, else 0.0.

**Stated bound** (the issue's "no growth in memory beyond a stated bound and no slowdown"):
``rss_growth_per_100_runs_mb < 50`` and ``slowdown < 1.2`` and ``failures == 0``.

Baseline ``core_only``: a fresh server (same base directory set-up, the pack loaded but unused) runs a core-only
workflow (CheckpointLoaderSimple -> CLIPTextEncode -> KSampler -> VAEDecode -> SaveImage on the tiny SD1.5
checkpoint, ``learned_prompt_generate`` without the pack nodes) the same number of times, so that the pack's
growth can be compared with ComfyUI's own. The ``split`` argument does not apply (no data set) and is ignored.
SaveImage writes into the temporary base directory, which is removed at the end; the servers are stopped also
on error.
"""

from __future__ import annotations

import copy
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..headless import (
    PACK_DIR,
    ComfyUIServer,
    ServerStartError,
    WorkflowError,
    find_comfyui_dir,
    prepare_base_directory,
)
from .harness import TaskResult

RUNS, QUICK_RUNS, WARMUP, WINDOW = 200, 30, 10, 20
PACK_WORKFLOWS = ("learned_prompt_generate", "inversion_regenerate", "dual_prompt_generate")
#: input overrides per workflow and node type: DCAR training runs 5 steps instead of 30, so that every execution
#: still builds, trains and checkpoints a dual prompt but takes about a second (a soak repeats, it does not train).
OVERRIDES: dict[str, dict[str, dict[str, object]]] = {"dual_prompt_generate": {"PWTrainDualPrompt": {"steps": 5}}}
BOUND_GROWTH_PER_100_MB = 50.0
BOUND_SLOWDOWN = 1.2
BOUND_TEXT = (
    f"rss_growth_per_100_runs_mb < {BOUND_GROWTH_PER_100_MB:g} and slowdown < {BOUND_SLOWDOWN:g} and failures == 0"
)
SEED_INPUTS = ("seed", "noise_seed")
VARIED_TEXT_TITLE = "Positive Prompt"  # a core node with this title gets a new text suffix per run, like PW nodes
RUN_TIMEOUT_S = 300.0

METRIC_NAMES = (
    "rss_start_mb",
    "rss_end_mb",
    "rss_growth_mb",
    "rss_growth_per_100_runs_mb",
    "seconds_per_run_first",
    "seconds_per_run_last",
    "slowdown",
    "runs",
    "failures",
    "bound_met",
)


def load_pack_workflow(name: str) -> dict:
    """An API workflow of ``workflows/api/`` with the soak's ``OVERRIDES`` applied."""
    prompt = json.loads((PACK_DIR / "workflows" / "api" / f"{name}.json").read_text())
    for node in prompt.values():
        node["inputs"].update(OVERRIDES.get(name, {}).get(node["class_type"], {}))
    return prompt


def core_only_workflow() -> dict:
    """``learned_prompt_generate`` without the pack nodes: ComfyUI core nodes on the tiny SD1.5 checkpoint."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "promptweave-tiny-sd15.safetensors"}},
        "3": {"class_type": "CLIPTextEncode", "_meta": {"title": VARIED_TEXT_TITLE},
              "inputs": {"clip": ["1", 1], "text": "a watercolour painting, soft light"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry, low quality"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0], "seed": 42,
            "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "soak/core_only"}},
    }  # fmt: skip


def varied(prompt: dict, index: int, seed: int) -> dict:
    """A copy of ``prompt`` with new seeds and, on nodes without a seed, a new suffix on their ``text`` input.

    The suffix goes on the pack's nodes (``PW*``) and on nodes titled ``VARIED_TEXT_TITLE`` (the core workflow's
    positive prompt), so that ComfyUI's cache re-runs them instead of returning the previous output.
    """
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs = node["inputs"]
        has_seed = False
        for name in SEED_INPUTS:
            if isinstance(inputs.get(name), int):
                inputs[name] = seed * 1_000_000 + index
                has_seed = True
        rerun_text = node["class_type"].startswith("PW") or node.get("_meta", {}).get("title") == VARIED_TEXT_TITLE
        if not has_seed and rerun_text and isinstance(inputs.get("text"), str) and inputs["text"]:
            inputs["text"] = f"{inputs['text']}, take {index}"
    return prompt


def _cached_pack_nodes(prompt: dict, status: dict) -> int:
    """Pack nodes other than loaders that ComfyUI reported as ``execution_cached`` in a history status."""
    cached = [n for event, data in status.get("messages", []) if event == "execution_cached" for n in data["nodes"]]
    types = [prompt[n]["class_type"] for n in cached]
    return sum(1 for t in types if t.startswith("PW") and not t.startswith("PWLoad"))


def _fit_slope(ys: list[float]) -> float:
    """Least-squares slope of ``ys`` against their index (0 with fewer than two points)."""
    n = len(ys)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in range(n))
    return sum((x - mean_x) * (y - mean_y) for x, y in enumerate(ys)) / sxx


def _window_seconds(times: list[float], names: list[str], both: set[str]) -> float:
    """Median wall time per workflow within a window, averaged over the workflows in ``both`` windows."""
    medians = [statistics.median(t for t, n in zip(times, names, strict=True) if n == name) for name in sorted(both)]
    return sum(medians) / len(medians)


def summarise(seconds: list[float], rss: list[float], names: list[str], failures: int, window: int) -> dict:
    """The soak metrics (see the module docstring) from the measured runs' wall times, RSS and workflow names."""
    n = len(seconds)
    window = max(1, min(window, n // 2))
    first, last = slice(0, window), slice(n - window, n)
    both = set(names[first]) & set(names[last])
    if not both:  # windows too small to share a workflow: compare plain medians
        names = ["all"] * n
        both = {"all"}
    sp_first = _window_seconds(seconds[first], names[first], both)
    sp_last = _window_seconds(seconds[last], names[last], both)
    slope = _fit_slope(rss) * 100.0
    slowdown = sp_last / sp_first
    bound = failures == 0 and slope < BOUND_GROWTH_PER_100_MB and slowdown < BOUND_SLOWDOWN
    return {
        "rss_start_mb": rss[0],
        "rss_end_mb": rss[-1],
        "rss_growth_mb": rss[-1] - rss[0],
        "rss_growth_per_100_runs_mb": slope,
        "seconds_per_run_first": sp_first,
        "seconds_per_run_last": sp_last,
        "slowdown": slowdown,
        "runs": float(n),
        "failures": float(failures),
        "bound_met": 1.0 if bound else 0.0,
    }


def soak_server(
    workflows: dict[str, dict],
    runs: int,
    *,
    warmup: int = WARMUP,
    window: int = WINDOW,
    seed: int = 0,
    comfyui_dir: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Run ``warmup + runs`` executions rotating over ``workflows`` in one fresh ComfyUI server.

    Returns ``{"metrics", "series", "errors", "rss_before_warmup_mb", "cached_pack_nodes"}``: ``series`` holds per
    measured run the workflow name, wall seconds and the server's RSS in MiB; ``cached_pack_nodes`` counts pack
    nodes other than loaders (``PWLoad*``) that ComfyUI served from its cache in the measured runs (should be 0).
    """
    from ..testing.defaults import install_default_models

    if runs < 2:
        raise ValueError(f"soak: runs must be at least 2, got {runs}")
    comfyui = comfyui_dir or find_comfyui_dir()
    if comfyui is None:
        raise RuntimeError("soak: no ComfyUI found: set COMFYUI_DIR or run `make setup`")
    base = Path(tempfile.mkdtemp(prefix="pw-soak-"))
    names, seconds, rss, errors = [], [], [], []
    failures = cached_pack_nodes = 0
    order = list(workflows)
    try:
        prepare_base_directory(base)
        install_default_models(base)
        server = ComfyUIServer(comfyui, base, log_path=base / "comfyui-server.log")
        try:
            server.start()
        except ServerStartError as exc:
            server.stop()
            tail = server.log_path.read_text(errors="replace")[-3000:] if server.log_path.exists() else ""
            raise ServerStartError(f"{exc}\n--- server log (tail) ---\n{tail}") from None
        with server:
            rss_idle = server.rss_mb()
            for index in range(warmup + runs):
                name = order[index % len(order)]
                prompt = varied(workflows[name], index, seed)
                start = time.perf_counter()
                try:
                    entry = server.run(prompt, timeout=RUN_TIMEOUT_S, poll=0.02)
                    status = entry.get("status") or {}
                    ok = status.get("status_str") == "success"
                    cached = _cached_pack_nodes(prompt, status) if index >= warmup else 0
                    error = None if ok else json.dumps(status.get("messages", []), default=str)[-1000:]
                except WorkflowError as exc:
                    ok, error, cached = False, str(exc)[:1000], 0
                elapsed = time.perf_counter() - start
                if index < warmup:
                    if not ok:  # a broken workflow fails the benchmark as failures, not as a crash
                        failures += 1
                        errors.append(f"warm-up {index} {name}: {error}")
                    continue
                failures += 0 if ok else 1
                cached_pack_nodes += cached
                if error:
                    errors.append(f"run {index - warmup} {name}: {error}")
                names.append(name)
                seconds.append(elapsed)
                rss.append(server.rss_mb())
                if log and (index - warmup + 1) % 25 == 0:
                    log(f"soak: {index - warmup + 1}/{runs} runs, {elapsed:.2f} s, RSS {rss[-1]:.1f} MiB")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {
        "metrics": summarise(seconds, rss, names, failures, window),
        "series": {"workflow": names, "seconds": seconds, "rss_mb": rss},
        "errors": errors[:5],
        "rss_before_warmup_mb": rss_idle,
        "cached_pack_nodes": cached_pack_nodes,
    }


def soak(
    runs: int,
    *,
    warmup: int = WARMUP,
    window: int = WINDOW,
    seed: int = 0,
    baseline: bool = True,
    comfyui_dir: Path | None = None,
) -> dict:
    """The pack's soak and (with ``baseline``) the ``core_only`` soak, each in its own fresh server."""
    options = {"warmup": warmup, "window": window, "seed": seed, "comfyui_dir": comfyui_dir, "log": _log}
    out = {"pack": soak_server({name: load_pack_workflow(name) for name in PACK_WORKFLOWS}, runs, **options)}
    if baseline:
        out["core_only"] = soak_server({"core_only": core_only_workflow()}, runs, **options)
    return out


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def soak_task(
    runs: int, *, warmup: int = WARMUP, window: int = WINDOW, seed: int = 0, comfyui_dir: Path | None = None
) -> TaskResult:
    """The task's result for ``runs`` measured executions (``run`` uses ``RUNS`` or ``QUICK_RUNS``)."""
    result = soak(runs, warmup=warmup, window=window, seed=seed, comfyui_dir=comfyui_dir)
    pack, core = result["pack"], result["core_only"]
    series = pack["series"]
    per_workflow = {}
    for name in PACK_WORKFLOWS:
        times = [t for t, n in zip(series["seconds"], series["workflow"], strict=True) if n == name]
        per_workflow[name] = round(statistics.median(times), 3) if times else None
    notes: dict[str, object] = {
        "bound": BOUND_TEXT,
        "workflows": list(PACK_WORKFLOWS),
        "warmup_runs": warmup,
        "window_runs": max(1, min(window, runs // 2)),
        "median_seconds_per_workflow": per_workflow,
        "rss_before_warmup_mb": round(pack["rss_before_warmup_mb"], 1),
        "core_only_rss_before_warmup_mb": round(core["rss_before_warmup_mb"], 1),
        "pack_nodes_served_from_cache": pack["cached_pack_nodes"],
        "rss_mb_every_20_runs": [round(x) for x in series["rss_mb"][::20]],
        "core_only_rss_mb_every_20_runs": [round(x) for x in core["series"]["rss_mb"][::20]],
        "split": "not used (no data set)",
        "server": "one ComfyUI main.py --cpu process per row, fresh base directory, loaders cached as usual",
    }
    if pack["errors"] or core["errors"]:
        notes["errors"] = pack["errors"] + [f"core_only: {e}" for e in core["errors"]]
    return TaskResult(metrics=pack["metrics"], baselines={"core_only": core["metrics"]}, notes=notes)


def run(seed: int, split: str, quick: bool) -> TaskResult:
    return soak_task(QUICK_RUNS if quick else RUNS, seed=seed)
