"""``bench.quick_compare``: the quick run's ordering of the method against each baseline, read from two records."""

from __future__ import annotations

import json

from promptweave.bench import quick_compare


def record(method: dict, seconds: float = 10.0, **baselines: dict) -> dict:
    return {"metrics": method, "baselines": baselines, "seconds": seconds}


def test_orderings_names_the_baselines_a_quick_run_puts_on_the_other_side():
    full = record({"i2t_r1": 6.0, "t2i_r1": 30.0}, coop={"i2t_r1": 5.0, "t2i_r1": 26.0},
                  maple={"i2t_r1": 5.5, "t2i_r1": 31.0}, dcar_mi_only={"i2t_r1": 6.0, "t2i_r1": 29.0})
    quick = record({"i2t_r1": 4.0, "t2i_r1": 20.0}, coop={"i2t_r1": 4.5, "t2i_r1": 19.0},
                   maple={"i2t_r1": 3.0, "t2i_r1": 22.0})  # the ablation is left out of the quick run
    flipped = quick_compare.orderings(quick, full, ("i2t_r1", "t2i_r1", "i2t_r5"))
    assert flipped == {"i2t_r1": ["coop"], "t2i_r1": []}  # absent rows and metrics are not compared
    tie = record({"i2t_r1": 5.0}, coop={"i2t_r1": 5.0}, maple={"i2t_r1": 3.0})
    assert quick_compare.orderings(tie, full, ("i2t_r1",)) == {"i2t_r1": ["coop"]}  # a tie is its own side


def test_the_table_shows_both_runs_and_the_verdict(tmp_path, monkeypatch):
    full = record({"acc_iou50": 50.0}, 600.0, coop={"acc_iou50": 40.0}, diff_prompt_no_global={"acc_iou50": 51.0})
    quick = record({"acc_iou50": 30.0}, 60.0, coop={"acc_iou50": 20.0})
    table = quick_compare.task_table("grounding", quick, full)
    assert "(quick 60 s, full 600 s)" in table
    assert "| **PromptWeave** | 30.000 / 50.000 |" in table and "| diff_prompt_no_global | – / 51.000 |" in table
    closest = "the closest: coop (quick +10.000, full +10.000)"  # the baseline nearest the method in the quick run
    assert table.endswith(f"- acc_iou50: same order against every baseline; {closest}.")
    flipped = quick_compare.task_table("grounding", record({"acc_iou50": 30.0}, coop={"acc_iou50": 30.0}), full)
    assert flipped.endswith("- acc_iou50: flipped against coop (quick +0.000, full +10.000).")  # with both margins

    monkeypatch.setattr(quick_compare, "ROOT", tmp_path)
    monkeypatch.setattr(quick_compare, "BENCHMARKS", tmp_path / "BENCHMARKS.md")
    markers = "<!-- bench:quick-vs-full:start -->\nold\n<!-- bench:quick-vs-full:end -->"
    (tmp_path / "BENCHMARKS.md").write_text(f"intro\n{markers}\nrest\n")
    quick_path, full_path = quick_compare.record_paths("grounding", "worldclip-web", 0)
    quick_path.parent.mkdir(parents=True)
    quick_path.write_text(json.dumps(quick))
    full_path.write_text(json.dumps(full))
    assert quick_compare.main(["grounding", "inversion", "--write"]) == 0
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "old" not in text and text.startswith("intro\n") and text.endswith("rest\n")
    assert "30.000 / 50.000" in text and "inversion: run it first" in text


def test_a_full_run_that_read_its_trained_stages_from_the_cache_says_so():
    cached = record({"acc_iou50": 50.0}, 231.0) | {"notes": {"train_seconds": {"stages_1_2": 1.4, "coop": 0.0}}}
    trained = record({"acc_iou50": 50.0}, 6838.0) | {"notes": {"train_seconds": {"stages_1_2": 1703.0}}}
    assert quick_compare.run_time(cached) == "231 s, trained stages read from the cache"
    assert quick_compare.run_time(trained) == "6838 s"
    assert quick_compare.run_time(record({"transfer_acc": 31.0}, 533.0)) == "533 s"
