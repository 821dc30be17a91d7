"""Caption Folder in the real ComfyUI (in-process), beside ``diffusers_api.caption_folder`` and
``python -m promptweave.caption``: the same files for the same folder, ComfyUI's interruption and a resumed run,
folders outside ComfyUI's input folder refused, and the caption-then-train workflow on the demo folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_api_workflow

from promptweave.headless import PACK_DIR
from promptweave.testing.caption_demo import BROKEN_NAME, CAPTION_DEMO_FOLDER, write_caption_demo_folder

pytestmark = pytest.mark.comfyui
SHIPPED = "inverter-pixels-world.safetensors"
READABLE = 10
OPTIONS = dict(caption="both", trigger_words="pwstyle", trigger_position="prepend", existing_captions="skip",
               manifest="csv", top_k=8, threshold=0.5)


def _node(comfy, node_id):
    return comfy.nodes.NODE_CLASS_MAPPINGS[node_id]


@pytest.fixture
def inverter(comfy):
    with torch.inference_mode():
        return _node(comfy, "PWLoadPromptInverter").execute(inverter_name=SHIPPED)[0]


@pytest.fixture
def input_folder(comfy_base, request):
    """A fresh demo folder in ComfyUI's input folder, named after the test."""
    name = f"pw-caption-{request.node.name[:40]}".replace("[", "-").replace("]", "")
    folder = comfy_base / "input" / name
    shutil.rmtree(folder, ignore_errors=True)
    write_caption_demo_folder(folder)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.suffix in (".txt", ".csv")}


def _caption(comfy, folder: Path, inverter, **options):
    with torch.inference_mode():
        return _node(comfy, "PWCaptionFolder").execute(folder=folder.name, inverter=inverter, batch_size=4,
                                                       **{**OPTIONS, **options})


def test_node_api_and_cli_write_the_same_files(comfy, input_folder, inverter, tmp_path):
    from promptweave import diffusers_api as pw

    api_folder, cli_folder = tmp_path / "api", tmp_path / "cli"
    shutil.copytree(input_folder, api_folder)
    shutil.copytree(input_folder, cli_folder)
    captions, paths, summary, folder = _caption(comfy, input_folder, inverter)
    api = pw.caption_folder(api_folder, PACK_DIR / "weights" / SHIPPED, content="both", trigger="pwstyle",
                            manifest="csv", batch_size=4)
    cli = subprocess.run(
        [sys.executable, "-m", "promptweave.caption", str(cli_folder), "--inverter", SHIPPED, "--caption", "both",
         "--trigger", "pwstyle", "--manifest", "csv"], capture_output=True, text=True, timeout=300)
    node_files = _files(input_folder)
    assert len(node_files) == READABLE + 1 and "sub/deeper/scene-9.txt" in node_files and "captions.csv" in node_files
    assert _files(api_folder) == node_files and _files(cli_folder) == node_files
    assert cli.returncode == 1, cli.stderr  # 1: an image (the broken one) could not be read
    for report in (summary, api.report(), cli.stdout):
        assert f"{READABLE} written, 0 skipped, 1 failed" in report and BROKEN_NAME in report
    assert folder == str(input_folder)
    lines, files = captions.splitlines(), [Path(p) for p in paths.splitlines()]
    assert len(lines) == len(files) == READABLE
    assert all(line == file.with_suffix(".txt").read_text() and line.startswith("pwstyle, ")
               for line, file in zip(lines, files, strict=True))


@pytest.mark.parametrize("folder", ["", "/tmp", "../output", "no-such-folder", "a/../../b", "~"])
def test_folders_outside_the_input_folder_are_refused(comfy, inverter, folder):
    with pytest.raises(ValueError, match="PWCaptionFolder: input 'folder'.*Fix: name a sub-folder of ComfyUI's input"):
        with torch.inference_mode():
            _node(comfy, "PWCaptionFolder").execute(folder=folder, inverter=inverter)


def test_an_interrupted_run_keeps_whole_files_and_the_next_run_resumes(comfy, input_folder, inverter, monkeypatch):
    import comfy.model_management as mm

    invert = inverter.invert

    def invert_then_press_cancel(*args, **kwargs):
        mm.interrupt_current_processing(True)  # the user presses Cancel while the first batch is inverted
        return invert(*args, **kwargs)

    monkeypatch.setattr(inverter, "invert", invert_then_press_cancel)
    with pytest.raises(mm.InterruptProcessingException):
        _caption(comfy, input_folder, inverter, manifest="none")
    assert not mm.processing_interrupted()
    partial = {n: t for n, t in _files(input_folder).items()}
    assert len(partial) == 4 and all(t.startswith(b"pwstyle, ") for t in partial.values())
    assert not list(input_folder.rglob(".*.tmp"))
    monkeypatch.setattr(inverter, "invert", invert)
    summary = _caption(comfy, input_folder, inverter, manifest="none")[2]
    assert f"{READABLE - 4} written, 4 skipped, 1 failed" in summary
    assert {n: t for n, t in _files(input_folder).items() if n in partial} == partial


def test_dry_run_in_the_node_writes_nothing(comfy, input_folder, inverter):
    summary = _caption(comfy, input_folder, inverter, dry_run=True)[2]
    assert summary.startswith("dry run") and "would create: sub/deeper/scene-8.txt" in summary
    assert not _files(input_folder)


def test_caption_then_train_workflow_on_the_demo_folder(comfy, comfy_base):
    folder = comfy_base / "input" / CAPTION_DEMO_FOLDER
    assert folder.is_dir() and (folder / BROKEN_NAME).is_file()  # install_default_models wrote it
    history = comfy.run(load_api_workflow("inversion_caption_folder_then_train.json"))
    assert len(list(folder.rglob("*.txt"))) == READABLE and (folder / "captions.csv").is_file()
    assert (comfy_base / "models" / "promptweave" / "inverter-from-captioned-folder.safetensors").is_file()
    assert history["outputs"]["6"]["images"]
