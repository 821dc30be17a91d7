"""The ``overhead`` benchmark: every conditioning path runs and is reported against plain CLIPTextEncode."""

from __future__ import annotations

import pytest

from promptweave.bench import overhead, sd_text_encoder
from promptweave.bench.harness import TASKS, run_task

SMALL_CLIP = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2,
              "projection_dim": 64}


def test_overhead_record_times_every_path_against_clip_text_encode(monkeypatch):
    monkeypatch.setattr(sd_text_encoder, "CLIP_L_SHAPE", SMALL_CLIP)  # shape only changes the times
    assert "overhead" in TASKS
    record = run_task("overhead", seed=0, split="test", quick=True)
    rows = {"learned_prompt": record["metrics"], **record["baselines"]}
    assert set(rows) == {"learned_prompt", "clip_text_encode", "dual_prompt", "diff_prompt", "inversion"}
    plain = rows["clip_text_encode"]["ms_per_call"]
    for name, row in rows.items():
        assert row["ms_per_call"] > 0, name
        assert row["rel_clip_text_encode"] == pytest.approx(row["ms_per_call"] / plain), name
    assert record["notes"]["backbone"] == "worldclip2" and record["notes"]["expression"]


def test_overhead_without_tokenizer_files_is_a_clear_stop(monkeypatch):
    monkeypatch.setattr(overhead, "sd1_text_encoder", lambda seed=0: None)
    with pytest.raises(SystemExit, match="SD1 tokenizer files"):
        overhead.run(0, "test", True)
