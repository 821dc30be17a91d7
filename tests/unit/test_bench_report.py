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
