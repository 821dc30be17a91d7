"""The ``soak`` benchmark (issue 10, load) with a tiny count: real ComfyUI servers, pack and core-only workflows.

The full figure (200 executions) is ``python -m promptweave.bench soak --json out.json``; this test checks that the
task runs end to end, reports every metric for the pack and the ``core_only`` baseline, and that no execution
failed and no pack node was served from ComfyUI's cache (so the runs really exercise the pack).
"""

from __future__ import annotations

import pytest

from promptweave.bench.soak import METRIC_NAMES, soak_task, summarise, varied

pytestmark = pytest.mark.comfyui


def test_soak_task_with_five_runs(comfyui_dir, tiny_sd15_path):
    result = soak_task(5, warmup=1, window=2, comfyui_dir=comfyui_dir)
    assert set(result.baselines) == {"core_only"}
    for name, metrics in {"pack": result.metrics, **result.baselines}.items():
        assert set(metrics) == set(METRIC_NAMES), name
        assert metrics["failures"] == 0, (name, result.notes.get("errors"))
        assert metrics["runs"] == 5, name
        assert metrics["rss_start_mb"] > 100 and metrics["seconds_per_run_first"] > 0, (name, metrics)
        assert metrics["rss_growth_mb"] == pytest.approx(metrics["rss_end_mb"] - metrics["rss_start_mb"]), name
    assert result.notes["pack_nodes_served_from_cache"] == 0, result.notes
    assert "rss_growth_per_100_runs_mb <" in result.notes["bound"]


def test_varied_changes_seeds_and_pack_texts_only():
    prompt = {
        "1": {"class_type": "PWApplyLearnedPrompt", "inputs": {"text": "a photo of <pw>"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry"}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 42, "steps": 2}},
    }
    first, second = varied(prompt, 0, 7), varied(prompt, 1, 7)
    assert first["1"]["inputs"]["text"] != second["1"]["inputs"]["text"]
    assert first["2"]["inputs"]["text"] == second["2"]["inputs"]["text"] == "blurry"
    assert first["3"]["inputs"]["seed"] != second["3"]["inputs"]["seed"]
    assert prompt["3"]["inputs"]["seed"] == 42  # the template is not modified


def test_summarise_fits_growth_and_detects_slowdown():
    n = 40
    rss = [1000.0 + 0.5 * i for i in range(n)]  # 50 MiB per 100 runs: at the bound, so not met
    seconds = [1.0] * 20 + [1.5] * 20
    metrics = summarise(seconds, rss, ["a", "b"] * 20, failures=0, window=20)
    assert metrics["rss_growth_per_100_runs_mb"] == pytest.approx(50.0)
    assert metrics["slowdown"] == pytest.approx(1.5)
    assert metrics["bound_met"] == 0.0
    flat = summarise([1.0] * n, [1000.0] * n, ["a"] * n, failures=0, window=20)
    assert flat["bound_met"] == 1.0 and flat["rss_growth_mb"] == 0.0
    assert summarise([1.0] * n, [1000.0] * n, ["a"] * n, failures=1, window=20)["bound_met"] == 0.0
