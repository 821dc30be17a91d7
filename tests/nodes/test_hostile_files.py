"""A user's broken file in models/promptweave never takes nodes down (issue "hardening", finding 1): the option
lists that read metadata skip it, every node still describes itself, and choosing it is a clear error."""

from __future__ import annotations

import json
import struct
import sys
import time

import pytest

pytestmark = pytest.mark.comfyui

HOSTILE = {
    "list-header": b"[1, 2, 3]",
    "entry-not-object": json.dumps({"w": [1, 2]}).encode(),
    "metadata-not-strings": json.dumps({"__metadata__": {"promptweave.method": {"x": 1}}}).encode(),
    "offsets-wrong": json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": "0-8"}}).encode(),
}


def test_broken_files_in_the_models_folder_leave_every_node_listed(comfy, comfy_base):
    folder = comfy_base / "models" / "promptweave"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        for name, head in HOSTILE.items():
            path = folder / f"pw-hostile-{name}.safetensors"
            path.write_bytes(struct.pack("<Q", len(head)) + head)
            written.append(path)
        inversion = comfy.pack_module("nodes.nodes_inversion")
        adaptation = comfy.pack_module("nodes.nodes_adaptation")
        listed = inversion._inverter_files() + adaptation._mapper_files()
        assert not [n for n in listed if "pw-hostile" in n]
        for node_id in comfy.pack_node_ids():  # every schema builds, option lists included
            assert comfy.node_info(node_id)["name"] == node_id
        errors = comfy.pack_module("nodes._common")
        loader = comfy.nodes.NODE_CLASS_MAPPINGS["PWLoadLearnedPrompt"]
        with pytest.raises(errors.NodeInputError, match="PWLoadLearnedPrompt: input 'prompt_name'.*pw-hostile"):
            loader.execute(prompt_name=written[0].name)
    finally:
        for path in written:
            path.unlink(missing_ok=True)


def _defaults(comfy, node_id: str) -> dict:
    info = comfy.node_info(node_id)
    return {name: spec[1]["default"] for group in ("required", "optional")
            for name, spec in info["input"].get(group, {}).items() if len(spec) > 1 and "default" in spec[1]}


SAVE_INPUTS = {  # trainer node -> its save-name input
    "PWTrainDualPrompt": "save_name",
    "PWPretrainPrompts": "save_name",
    "PWTrainDiffPrompt": "bundle_name",
    "PWTrainPromptInverter": "filename",
}


@pytest.mark.parametrize("node_id", sorted(SAVE_INPUTS))
def test_trainers_refuse_a_save_target_that_is_a_folder_before_training(comfy, comfy_base, node_id, monkeypatch):
    """A save name that is a folder is refused before the first step (the result would be lost at save time);
    a name in a sub-folder that does not exist yet is accepted (the sub-folder is made)."""
    import torch

    node = comfy.nodes.NODE_CLASS_MAPPINGS[node_id]
    module = sys.modules[node.__module__]
    for trainer in ("train_dual_prompt", "pretrain_bundle", "train_diff_prompt", "train_inverter_on_prompts"):
        if hasattr(module, trainer):  # training must not start
            monkeypatch.setattr(module, trainer, lambda *a, **k: pytest.fail("training started"))
    folder = comfy_base / "models" / "promptweave" / f"pw-folder-{node_id}.safetensors"
    folder.mkdir(parents=True, exist_ok=True)
    vlm = comfy.pack_module("prompt_modules.core.vlm").VisionLanguageModel("tiny", seed=0)
    images = torch.rand(2, 64, 64, 3)
    args = {**_defaults(comfy, node_id), "vlm": vlm, "images": images, "prompts": "a red star\na blue ring",
            "backbone": "vlm", "source": "world"}
    info = comfy.node_info(node_id)["input"]
    names = {name for group in ("required", "optional") for name in info.get(group, {})}
    args = {k: v for k, v in args.items() if k in names}
    errors = comfy.pack_module("nodes._common")
    args[SAVE_INPUTS[node_id]] = folder.name.removesuffix(".safetensors")
    try:
        with torch.inference_mode(), pytest.raises(errors.NodeInputError,
                                                  match=f"{node_id}: input '{SAVE_INPUTS[node_id]}'.*is a folder"):
            node.execute(**args)
        target = errors.output_model_path(node_id, SAVE_INPUTS[node_id], f"pw-new-sub/{node_id}/x")
        assert (comfy_base / "models" / "promptweave" / "pw-new-sub" / node_id).is_dir()
        assert target.endswith("x.safetensors")
    finally:
        folder.rmdir()


def test_changed_data_never_resumes_an_old_run(comfy, tmp_path, monkeypatch):
    """Issue "hardening", finding 6: train a dual prompt on a folder, replace its images and captions (same
    count), run the same node again: the checkpoint key changes with the data, so the run starts afresh; with the
    data unchanged it is the same key (the finished run is reused)."""
    import torch
    from PIL import Image

    common = comfy.pack_module("nodes._common")
    module = sys.modules[comfy.nodes.NODE_CLASS_MAPPINGS["PWTrainDualPrompt"].__module__]
    keys = []
    real = common.run_checkpoint

    def recording(stem, settings, **kwargs):
        path = real(stem, settings, **kwargs)
        keys.append(path.name)
        return path

    monkeypatch.setattr(module, "run_checkpoint", recording)
    folder = tmp_path / "dataset"
    folder.mkdir()

    def write(colours, captions):
        for i, (colour, caption) in enumerate(zip(colours, captions, strict=True)):
            Image.new("RGB", (32, 32), colour).save(folder / f"{i}.png")
            (folder / f"{i}.txt").write_text(caption)

    write([(255, 0, 0), (0, 0, 255)], ["a red square", "a blue square"])
    vlm = comfy.pack_module("prompt_modules.core.vlm").VisionLanguageModel("tiny", seed=0)
    args = {**_defaults(comfy, "PWTrainDualPrompt"), "vlm": vlm, "source": "folder", "path": str(folder),
            "steps": 1, "batch_size": 2, "save_name": ""}
    with torch.inference_mode():
        comfy.nodes.NODE_CLASS_MAPPINGS["PWTrainDualPrompt"].execute(**args)
        comfy.nodes.NODE_CLASS_MAPPINGS["PWTrainDualPrompt"].execute(**args)
        time.sleep(0.01)
        write([(0, 255, 0), (255, 255, 0)], ["a green circle", "a yellow ring"])
        comfy.nodes.NODE_CLASS_MAPPINGS["PWTrainDualPrompt"].execute(**args)
    assert keys[0] == keys[1] and keys[2] != keys[0]
