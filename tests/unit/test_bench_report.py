"""The benchmark report: tables over seeds and charts that keep costs off the quality scale."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from promptweave.bench.plot import bar_chart, charted_metrics
from promptweave.bench.report import markdown_table, replace_section, summarise


def test_charts_leave_costs_to_the_table():
    metrics = {"target_score", "diversity", "seconds_per_step", "peak_memory_mb", "images_per_s",
               "trainable_params", "time_rel_coop", "ms_per_image"}
    assert charted_metrics(metrics) == ["diversity", "target_score"]
    assert charted_metrics({"ms_per_call"}) == ["ms_per_call"]  # a task of costs only is charted whole
    soak = {"runs", "failures", "slowdown", "bound_met", "rss_growth_mb", "seconds_per_run_last"}
    assert charted_metrics(soak) == ["bound_met", "failures", "slowdown"]  # 200 runs would flatten the rest


def test_summary_table_and_chart_over_seeds():
    records = [
        {"metrics": {"acc": a, "seconds_per_step": 900.0}, "baselines": {"coop": {"acc": b}}}
        for a, b in [(0.8, 0.7), (0.6, 0.7)]
    ]
    summary = summarise(records)
    assert summary["method"]["acc"] == pytest.approx((0.7, 0.1)) and summary["coop"]["acc"] == pytest.approx((0.7, 0.0))
    table = markdown_table(summary)
    assert "| **PromptWeave** | 0.700 ± 0.100 | 900.000 ± 0.000 |" in table
    assert "| coop | 0.700 ± 0.000 | – |" in table
    image = Image.open(io.BytesIO(bar_chart("t", summary)))
    assert image.size == (900, 420)


def test_replace_section_keeps_the_prose_around_it():
    text = "intro\n<!-- bench:x:start -->\nold\n<!-- bench:x:end -->\noutro\n"
    new = "<!-- bench:x:start -->\nnew\n<!-- bench:x:end -->"
    assert replace_section(text, "x", new) == "intro\n" + new + "\noutro\n"
    assert replace_section("intro\n", "y", "<y>").endswith("intro\n\n<y>\n")


@pytest.mark.parametrize("seed", [-1, 1000, 10**6])
def test_the_bench_cli_refuses_seeds_its_tasks_cannot_run_before_running_anything(seed):
    from promptweave.bench.harness import MAX_SEED, main

    with pytest.raises(SystemExit, match=f"seed {seed} is outside 0..{MAX_SEED}"):
        main(["inversion", "--seed", str(seed)])


def test_the_largest_accepted_seed_keeps_every_training_offset_inside_the_train_split():
    from promptweave.bench.harness import MAX_SEED
    from promptweave.prompt_modules.world.scene import split_seed_range

    largest_training_set = 100_000  # above the biggest n_train of any task (inversion: 6,000; shipped: 8,000)
    assert MAX_SEED * 1_000_000 + largest_training_set < split_seed_range("train").stop


def test_report_keeps_each_backbone_in_its_own_section_and_records(tmp_path, monkeypatch):
    import json

    from promptweave.bench import report

    def record(seed: int, backbone: str, acc: float) -> dict:
        return {"task": "toy", "split": "test", "seed": seed, "quick": False, "backbone": backbone, "seconds": 1.0,
                "metrics": {"acc": acc}, "baselines": {"coop": {"acc": 0.5}}, "notes": {}}

    web = tmp_path / "out" / "bench" / "web"
    web.mkdir(parents=True)
    for seed, acc in [(0, 0.6), (1, 0.8)]:
        (web / f"toy-test-{seed}.json").write_text(json.dumps(record(seed, "worldclip-web", acc)))
    assert report.reusable(web / "toy-test-0.json", "toy", "test", 0, "worldclip2") is None  # not the other's
    old = record(0, "worldclip2", 0.1)  # records from before --backbone carry none: WorldCLIP 2's
    del old["backbone"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert report.reusable(tmp_path / "old.json", "toy", "test", 0) == old

    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text("# B\n<!-- bench:toy:start -->\nWorldCLIP 2 table\n<!-- bench:toy:end -->\nprose\n")
    monkeypatch.setattr(report, "ROOT", tmp_path)
    monkeypatch.setattr(report, "BENCHMARKS", benchmarks)
    monkeypatch.setattr(report, "PLOTS", tmp_path / "plots")
    monkeypatch.setattr(report, "run_task", lambda *a, **k: pytest.fail("--reuse must not rerun a stored seed"))
    monkeypatch.setenv("PW_BENCH_BACKBONE", "worldclip2")  # main sets it; the test's undo restores it
    assert report.main(["toy", "--seeds", "0", "1", "--splits", "test", "--reuse", "--backbone", "worldclip-web"]) == 0
    text = benchmarks.read_text()
    assert "WorldCLIP 2 table" in text and "prose" in text  # the other backbone's section and the prose stay
    web_section = text[text.index("<!-- bench:toy@worldclip-web:start -->"):]
    assert "| **PromptWeave** | 0.700 ± 0.100 |" in web_section
    assert "--backbone worldclip-web" in web_section
    assert (tmp_path / "plots" / "toy-test-worldclip-web.png").is_file()
