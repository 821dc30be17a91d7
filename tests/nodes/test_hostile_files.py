"""A user's broken file in models/promptweave never takes nodes down (issue "hardening", finding 1): the option
lists that read metadata skip it, every node still describes itself, and choosing it is a clear error."""

from __future__ import annotations

import json
import struct

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
