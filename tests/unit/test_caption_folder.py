"""Caption a folder (issue 38): caption files beside the images, modes for existing captions, trigger words,
manifests, dry run, interruption and resume, unreadable files, and the image modes users have."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from promptweave.headless import PACK_DIR
from promptweave.prompt_modules.core.data import list_images, load_image
from promptweave.prompt_modules.inversion import (
    caption_folder,
    encoder_image_size,
    image_features,
    load_inverter,
    load_pair_folder,
    read_pair_manifest,
)
from promptweave.prompt_modules.inversion.caption import caption_text
from promptweave.testing.caption_demo import BROKEN_NAME, write_caption_demo_folder

INVERTER = PACK_DIR / "weights" / "inverter-pixels-world.safetensors"
READABLE = 10  # images of the demo folder besides the broken one


@pytest.fixture(scope="module")
def inverter():
    return load_inverter(INVERTER)


@pytest.fixture
def demo(tmp_path) -> Path:
    write_caption_demo_folder(tmp_path / "data")
    return tmp_path / "data"


def _caption(folder, inverter, **options):
    encode = lambda pixels: image_features(inverter.backbone, pixels)  # noqa: E731
    options = {"batch_size": 4, **options}
    return caption_folder(folder, inverter, encode, size=encoder_image_size(inverter.backbone), **options)


def _captions(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8") for p in sorted(folder.rglob("*.txt"))}


def test_every_readable_image_gets_its_caption_and_the_broken_one_is_reported(demo, inverter):
    summary = _caption(demo, inverter, manifest="jsonl")
    captions = _captions(demo)
    expected = {p.relative_to(demo).with_suffix(".txt").as_posix() for p in list_images(demo, recursive=True)}
    assert set(captions) == expected - {Path(BROKEN_NAME).with_suffix(".txt").as_posix()}
    assert len(captions) == READABLE and "sub/deeper/scene-8.txt" in captions and "sub/deeper/scene-9.txt" in captions
    assert all(text.strip() and "\n" not in text for text in captions.values())
    assert len(summary.written) == READABLE and not summary.skipped
    assert [summary.relative(r.image) for r in summary.failed] == [BROKEN_NAME]
    assert "cannot read image" in summary.failed[0].error and "1 failed" in summary.report()
    assert BROKEN_NAME in summary.report()
    rows = [json.loads(line) for line in (demo / "captions.jsonl").read_text().splitlines()]
    assert {r["file_name"]: r["text"] for r in rows} == {
        summary.relative(r.image): captions[summary.relative(r.caption_file)] for r in summary.captioned}
    pairs = read_pair_manifest(demo / "captions.jsonl")  # the manifest is a training manifest too
    assert len(pairs) == READABLE and all(p.path.is_file() for p in pairs)
    assert not list(demo.rglob("*.tmp"))


def test_not_recursive_captions_the_top_folder_only(demo, inverter):
    _caption(demo, inverter, recursive=False)
    assert sorted(_captions(demo)) == ["cutout.txt", "grey16.txt", "palette.txt", "scene-0.txt", "scene-1.txt",
                                       "scene-2.txt"]


def test_content_trigger_words_and_csv_manifest(demo, inverter):
    _caption(demo, inverter, content="prompt")
    prompts = _captions(demo)
    _caption(demo, inverter, content="keywords", existing="overwrite", trigger="pwstyle, ohwx", manifest="csv")
    tags = _captions(demo)
    for name, text in tags.items():
        assert text.startswith("pwstyle, ohwx, ") and text != prompts[name]
        assert all(tag and len(tag.split()) == 1 for tag in text.split(", "))  # single-word vocabulary tags
    with (demo / "captions.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {Path(r["file_name"]).with_suffix(".txt").as_posix(): r["text"] for r in rows} == tags
    _caption(demo, inverter, content="both", existing="overwrite", trigger="pwstyle", trigger_position="append")
    both = _captions(demo)
    assert all(both[n].startswith(prompts[n].rstrip(". ")) and both[n].endswith(", pwstyle") for n in both)


@pytest.mark.parametrize("mode", ["skip", "overwrite", "prepend", "append"])
def test_existing_caption_modes(demo, inverter, mode):
    fresh = demo.parent / "fresh"
    shutil.copytree(demo, fresh)
    _caption(fresh, inverter)
    generated = _captions(fresh)["scene-0.txt"]
    (demo / "scene-0.txt").write_text("my own words\n", encoding="utf-8")
    summary = _caption(demo, inverter, existing=mode)
    text = (demo / "scene-0.txt").read_text(encoding="utf-8")
    expected = {"skip": "my own words", "overwrite": generated, "prepend": f"{generated}, my own words",
                "append": f"my own words, {generated}"}[mode]
    assert text.strip() == expected
    action = next(r.action for r in summary.results if r.image.name == "scene-0.png")
    assert action == mode
    assert {n: t for n, t in _captions(demo).items() if n != "scene-0.txt"} == {
        n: t for n, t in _captions(fresh).items() if n != "scene-0.txt"}
    again = _caption(demo, inverter, existing=mode)  # a re-run (resume) never adds the same caption twice
    assert (demo / "scene-0.txt").read_text(encoding="utf-8").strip() == expected
    assert not again.written and len(again.skipped) == READABLE


def test_dry_run_lists_changes_and_writes_nothing(demo, inverter):
    (demo / "scene-0.txt").write_text("mine", encoding="utf-8")
    before = {p: p.read_bytes() for p in demo.rglob("*") if p.is_file()}
    summary = _caption(demo, inverter, existing="overwrite", manifest="csv", dry_run=True)
    assert {p: p.read_bytes() for p in demo.rglob("*") if p.is_file()} == before
    actions = {summary.relative(r.caption_file): r.action for r in summary.results}
    assert actions["scene-0.txt"] == "overwrite" and actions["sub/scene-6.txt"] == "create"
    assert actions[Path(BROKEN_NAME).with_suffix(".txt").as_posix()] == "fail"
    report = summary.report()
    assert report.startswith("dry run") and "would overwrite: scene-0.txt" in report and "would create" in report


class Stop(Exception):
    pass


def test_an_interrupted_run_leaves_whole_files_and_a_rerun_resumes(demo, inverter, tmp_path):
    reference = tmp_path / "reference"
    shutil.copytree(demo, reference)
    _caption(reference, inverter)
    expected = _captions(reference)
    calls = []

    def stop_after_first_batch(done, total):
        calls.append(done)
        if done > 0:
            raise Stop

    with pytest.raises(Stop):
        _caption(demo, inverter, progress=stop_after_first_batch)
    partial = _captions(demo)
    assert 0 < len(partial) < READABLE and all(expected[n] == t for n, t in partial.items())
    assert not list(demo.rglob(".*.tmp"))
    seen = []
    summary = _caption(demo, inverter, progress=lambda done, total: seen.append((done, total)))
    assert _captions(demo) == expected
    assert len(summary.skipped) == len(partial) and len(summary.written) == READABLE - len(partial)
    assert seen[0] == (len(partial), READABLE + 1) and seen[-1] == (READABLE + 1, READABLE + 1)


def test_a_run_restores_torch_threads_and_writes_what_one_batch_at_a_time_writes(demo, inverter, tmp_path):
    """Decoding, inverting and writing overlap (threads); the captions are those of a plain loop over the batches,
    and torch's thread count is the caller's again after a finished and after a stopped run."""
    reference = tmp_path / "reference"
    shutil.copytree(demo, reference)
    before = torch.get_num_threads()
    summary = _caption(demo, inverter)
    assert torch.get_num_threads() == before
    for i in range(0, len(summary.results), 4):  # the run's batches (batch_size 4), one after the other
        batch = [r for r in summary.results[i: i + 4] if r.action != "fail"]
        with torch.no_grad():
            inverted = inverter.invert(torch.stack([load_image(r.image, encoder_image_size(inverter.backbone))
                                                    for r in batch]), top_k=8)
        for result, output in zip(batch, inverted, strict=True):
            assert result.caption_file.read_text(encoding="utf-8") == caption_text(output)

    def stop(done, total):
        if done > 0:
            raise Stop

    with pytest.raises(Stop):
        _caption(reference, inverter, progress=stop)
    assert torch.get_num_threads() == before


def test_image_modes_read_as_users_expect(tmp_path):
    files = write_caption_demo_folder(tmp_path / "again")
    rgba = load_image(files["rgba"])
    assert rgba.shape == (3, 64, 64) and bool((rgba[:, :, :16] == 1.0).all())  # transparent strip on white
    grey16 = load_image(files["grey16"])
    with Image.open(files["grey16"]) as im:
        assert im.mode.startswith("I")
        wide = np.asarray(im).astype(np.float64)
    assert grey16.shape == (3, 64, 64) and np.allclose(grey16[0].numpy() * 255, wide / 257, atol=1.0)
    assert 0.05 < float(grey16.mean()) < 0.95  # PIL's own conversion would read it as white
    palette = load_image(files["palette"])
    with Image.open(files["palette"]) as im:
        assert im.mode == "P"
        colours = np.asarray(im.convert("RGB"), dtype=np.float32) / 255
    assert np.allclose(palette.permute(1, 2, 0).numpy(), colours)
    Image.new("LA", (8, 8), (0, 0)).save(tmp_path / "clear.png")  # fully transparent grey: white
    assert bool((load_image(tmp_path / "clear.png") == 1.0).all())


def test_pair_folder_reads_sub_folders_and_flat_folders_as_before(demo, inverter):
    _caption(demo, inverter)
    images, texts = load_pair_folder(demo, 32)
    assert images.shape == (READABLE, 3, 32, 32) and len(texts) == READABLE
    flat_images, flat_texts = load_pair_folder(demo, 32, recursive=False)
    assert flat_images.shape[0] == 6 and flat_texts == texts[:6]


@pytest.mark.parametrize(("option", "value"), [("content", "caption"), ("existing", "merge"), ("manifest", "xml"),
                                               ("trigger_position", "middle"), ("batch_size", 0)])
def test_bad_options_are_value_errors_naming_them(demo, inverter, option, value):
    with pytest.raises(ValueError, match=option):
        _caption(demo, inverter, **{option: value})
    assert not _captions(demo)


def test_missing_and_empty_folders_are_errors(tmp_path, inverter):
    with pytest.raises(ValueError, match="does not exist"):
        _caption(tmp_path / "nope", inverter)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        _caption(tmp_path / "empty", inverter)
