"""The pack inside real ComfyUI, in-process: loading, node definitions, a full workflow, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import load_api_workflow
from PIL import Image

from promptweave.headless import PACK_DIR, WorkflowError
from promptweave.testing.defaults import DEFAULT_PROMPT_NAME, TINY_SD15_NAME

pytestmark = pytest.mark.comfyui
EXPECTED_NODES = {"PWApplyLearnedPrompt", "PWLoadLearnedPrompt"}


def test_pack_loads_and_registers_every_node(comfy):
    assert EXPECTED_NODES <= set(comfy.pack_node_ids())
    assert any(path.endswith("PromptWeave") for path in comfy.nodes.LOADED_MODULE_DIRS.values())


def test_node_definitions_are_complete(comfy):
    for node_id in comfy.pack_node_ids():
        info = comfy.node_info(node_id)
        assert info["name"] == node_id and node_id.startswith("PW")
        assert info["category"].startswith("PromptWeave/"), node_id
        assert info["display_name"] and info["description"], node_id
        for group in ("required", "optional"):
            for name, spec in info["input"].get(group, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert len(info["output_tooltips"]) == len(info["output"])
        assert all(info["output_tooltips"]), f"{node_id} has an output without tooltip"
        docs = PACK_DIR / "web" / "docs" / f"{node_id}.md"
        assert docs.is_file(), f"{node_id} has no help page {docs}"
        text = docs.read_text()
        assert "## Inputs" in text and "## Outputs" in text and "## Example" in text, node_id
        assert "## Paper" in text and "arxiv.org/abs/" in text, f"{node_id}'s help page does not name its paper"


def test_learned_prompt_workflow_writes_a_finite_image(comfy):
    history = comfy.run(load_api_workflow("learned_prompt_generate.json"))
    files = comfy.output_files(history)
    assert len(files) == 1 and files[0].is_file()
    image = np.asarray(Image.open(files[0]))
    assert image.shape == (64, 64, 3)
    assert np.isfinite(image.astype(np.float32)).all()


def _load_checkpoint(comfy):
    loader = comfy.nodes.NODE_CLASS_MAPPINGS["CheckpointLoaderSimple"]()
    return loader.load_checkpoint(TINY_SD15_NAME)


def _apply(comfy, clip, prompt, text):
    node = comfy.nodes.NODE_CLASS_MAPPINGS["PWApplyLearnedPrompt"]
    return node.execute(clip=clip, learned_prompt=prompt, text=text)[0]


def _load_prompt(comfy):
    return comfy.nodes.NODE_CLASS_MAPPINGS["PWLoadLearnedPrompt"].execute(prompt_name=DEFAULT_PROMPT_NAME)[0]


def test_vectors_are_spliced_at_the_placeholder(comfy):
    """CLIP attention is causal: positions before the placeholder match the plain encode, the rest differ."""
    _, clip, _ = _load_checkpoint(comfy)
    prompt = _load_prompt(comfy)
    plain = comfy.nodes.CLIPTextEncode().encode(clip, "a red cube on a table")[0][0][0]
    learned = _apply(comfy, clip, prompt, "a red cube <pw> on a table")[0][0]
    assert learned.shape == plain.shape == (1, 77, 768)
    assert torch.allclose(learned[:, :4], plain[:, :4], atol=1e-5)  # start, a, red, cube
    assert not torch.allclose(learned[:, 4:8], plain[:, 4:8], atol=1e-3)
    prefix = _apply(comfy, clip, prompt, "a red cube on a table")[0][0]
    assert torch.allclose(prefix[:, :1], plain[:, :1], atol=1e-5)
    assert not torch.allclose(prefix[:, 1:5], plain[:, 1:5], atol=1e-3)


def test_empty_text_is_a_clear_error(comfy):
    _, clip, _ = _load_checkpoint(comfy)
    with pytest.raises(ValueError, match="PWApplyLearnedPrompt: input 'text': the text is empty"):
        _apply(comfy, clip, _load_prompt(comfy), "   ")


def test_prompt_of_another_width_is_a_clear_error(comfy):
    _, clip, _ = _load_checkpoint(comfy)
    lp = comfy.pack_module("prompt_modules.core.learned_prompt")
    wide = lp.LearnedPrompt(lp.LearnedPromptConfig(n_ctx=2, widths={"clip_l": 1024}, backbone="sd2"))
    with pytest.raises(ValueError, match=r"PWApplyLearnedPrompt: input 'learned_prompt': .*width 1024 .*expects 768"):
        _apply(comfy, clip, wide, "a cat")


def test_missing_and_corrupt_prompt_files_are_clear_errors(comfy, comfy_base):
    loader = comfy.nodes.NODE_CLASS_MAPPINGS["PWLoadLearnedPrompt"]
    with pytest.raises(ValueError, match=r"PWLoadLearnedPrompt: input 'prompt_name': file 'absent.safetensors'.*"
                                         r"models/promptweave"):
        loader.execute(prompt_name="absent.safetensors")
    (comfy_base / "models" / "promptweave" / "broken.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="PWLoadLearnedPrompt: input 'prompt_name': .*not a valid safetensors"):
        loader.execute(prompt_name="broken.safetensors")


def test_errors_reach_the_workflow_report(comfy):
    workflow = load_api_workflow("learned_prompt_generate.json")
    workflow["3"]["inputs"]["text"] = ""
    with pytest.raises(WorkflowError, match="PWApplyLearnedPrompt: input 'text'"):
        comfy.run(workflow)


def test_ui_workflows_match_their_api_twins(comfy):
    """workflows/*.json are generated from workflows/api/*.json (`make ui-workflows`); none is stale."""
    import sys

    sys.path.insert(0, str(PACK_DIR / "scripts"))
    from make_ui_workflows import build_all

    expected = build_all(comfy.node_info)
    assert expected, "no API workflows found"
    stale = [path.name for path, text in expected.items() if not path.exists() or path.read_text() != text]
    assert not stale, f"run `make ui-workflows`: stale UI workflows {stale}"
    ui_files = {p.name for p in (PACK_DIR / "workflows").glob("*.json")}
    assert ui_files == {path.name for path in expected}, "every UI workflow has an API twin and vice versa"


def test_every_text_output_of_the_example_workflows_is_shown(comfy):
    """Wherever a pack node outputs text (a prompt, keywords with scores, rank scores, a box, a summary), the
    workflow shows it with a Preview as Text node (core PreviewAny); file and folder paths are left out."""
    unshown = []
    for path in sorted((PACK_DIR / "workflows" / "api").glob("*.json")):
        prompt = json.loads(path.read_text())
        shown = {
            (str(value[0]), int(value[1]))
            for node in prompt.values() if node["class_type"] == "PreviewAny"
            for value in node["inputs"].values() if isinstance(value, list)
        }
        for node_id, node in prompt.items():
            if not node["class_type"].startswith("PW"):
                continue
            info = comfy.node_info(node["class_type"])
            for slot, (kind, name) in enumerate(zip(info["output"], info["output_name"], strict=True)):
                is_path = "path" in name or name == "folder"
                if kind == "STRING" and not is_path and (node_id, slot) not in shown:
                    unshown.append(f"{path.stem}: node {node_id} ({node['class_type']}) output '{name}'")
    assert not unshown, "add a PreviewAny node for:\n" + "\n".join(unshown)
