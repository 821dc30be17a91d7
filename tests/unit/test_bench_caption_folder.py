"""``bench caption_folder`` (issue 38) on a tiny folder: every path runs over the same files, the record has the
rates of each repetition, and the captioning path wrote one caption per image. Speeds are not checked here."""

from __future__ import annotations

import json

import torch

from promptweave.bench import caption_folder
from promptweave.bench.harness import TASKS


def test_the_record_has_every_path_and_every_repetition(tmp_path):
    threads = torch.get_num_threads()
    try:
        assert caption_folder.main(["--n", "6", "--size", "32", "--repeats", "2", "--threads", "1",
                                    "--json", str(tmp_path / "out.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    record = json.loads((tmp_path / "out.json").read_text())
    assert set(record["paths"]) == {"decode_only", "decode_batch", "caption_folder"}
    for path, row in record["paths"].items():
        assert len(row["images_per_s"]) == len(row["seconds"]) == 2 and min(row["images_per_s"]) > 0, path
    notes = record["notes"]
    assert notes["images"] == 6 and notes["file_size"] == 32 and notes["read_size"] == 64
    assert notes["captions_written"] == 6 and notes["batch_size"] == 16
    assert record["command"].startswith("python -m promptweave.bench.caption_folder --n 6 --size 32")
    assert "caption_folder" in TASKS
