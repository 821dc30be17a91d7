"""scripts/demo.py's report and log summary, on made-up history entries (the real run is `make demo`)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("pw_demo_script", PACK_DIR / "scripts" / "demo.py")
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)


def test_images_are_labelled_by_the_node_that_made_them():
    prompt = {
        "3": {"class_type": "PWWorldGenSample", "inputs": {}, "_meta": {"title": "The scene to ground in"}},
        "13": {"class_type": "MaskToImage", "inputs": {"mask": ["5", 0]}, "_meta": {"title": "Mask to Image"}},
        "14": {"class_type": "SaveImage", "inputs": {"images": ["13", 0]}},
        "15": {"class_type": "SaveImage", "inputs": {"images": ["3", 0]}, "_meta": {"title": "Loss Plot"}},
        "16": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}, "_meta": {"title": "Preview Image"}},
    }
    assert demo.image_label(prompt, "14") == "Mask to Image"  # an untitled SaveImage: the node it saves
    assert demo.image_label(prompt, "15") == "Loss Plot"  # a titled one: its title
    assert demo.image_label(prompt, "16") == "The scene to ground in"


def test_report_shows_description_labels_texts_and_time():
    rows = [{
        "workflow": "inversion_regenerate", "description": "An image -> its predicted prompt.", "seconds": 1.5,
        "error": None,
        "images": [{"src": "inversion_regenerate/00.png", "label": "Input: the image to invert", "node": "12",
                    "class_type": "PreviewImage", "order": 0, "width": 64, "height": 64}],
        "texts": [{"label": "Keywords with scores", "node": "13", "text": "star 0.91\nred <0.88>"}],
    }]
    page = demo.render_report(rows)
    for expected in ("An image -&gt; its predicted prompt.", "Input: the image to invert", "node 12, PreviewImage",
                     "Keywords with scores", "red &lt;0.88&gt;", "1.50 s", "class='small'"):
        assert expected in page, expected


def test_log_summary_names_the_known_audio_failure_once(tmp_path):
    log = demo.ComfyLog(tmp_path / "comfyui.log")
    try:
        with log.capture("start"):
            logging.warning("Traceback (most recent call last):\nModuleNotFoundError: No module named 'torchaudio'")
            logging.warning("Cannot import /c/comfy_extras/nodes_audio.py module for custom nodes: torchaudio")
            logging.warning("IMPORT FAILED: nodes_audio.py")
            logging.warning("IMPORT FAILED: nodes_audio_encoder.py")
            print("progress 50%")
    finally:
        log.close()
    summary = log.summary()
    assert "progress 50%" in (tmp_path / "comfyui.log").read_text()
    assert len(summary) == 2 and "comfyui.log" in summary[0] and "4 warnings" in summary[0], summary
    assert "nodes_audio.py, nodes_audio_encoder.py" in summary[1] and "torchaudio" in summary[1], summary
    assert not any("Traceback" in line for line in summary)


def test_a_failed_run_is_reported_by_node_and_message():
    report = ('workflow failed: {"prompt_id": "x", "node_id": "3", "node_type": "PWLoadDualPrompt", "executed": [], '
              '"exception_message": "PWLoadDualPrompt: input \'prompt_name\': file \'a \\"b\\".safetensors\' was not '
              'found.\\n", "traceback": ["  File \\"x.py\\", line 1')  # cut off, as headless.py cuts at 4000
    assert demo.short_error(report) == (
        "node 3 (PWLoadDualPrompt): PWLoadDualPrompt: input 'prompt_name': file 'a \"b\".safetensors' was not found.")
    page = demo.render_report([{"workflow": "w", "description": "", "seconds": 0.0, "images": [], "texts": [],
                                "error": report}])
    assert "node 3 (PWLoadDualPrompt)" in page and "<details>" in page
