"""The pack in a real ComfyUI server, through its HTTP API only (standard-library urllib).

Checks what a user's ComfyUI sees: the node definitions in ``/object_info``, the pack's workflow templates,
every API-format workflow of ``workflows/api/`` queued with ``POST /prompt`` and its image served by ``/view``,
and a clear node error for bad input.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
from conftest import IMAGE_GENERATORS
from PIL import Image

from promptweave.headless import PACK_DIR, PACK_LINK_NAME

pytestmark = pytest.mark.comfyui

# Every node of the pack; keep in sync with nodes/*.py (a scan of the sources below catches a forgotten one).
PACK_NODE_IDS = ["PWApplyLearnedPrompt", "PWLoadLearnedPrompt"]
UI_WORKFLOWS = sorted((PACK_DIR / "workflows").glob("*.json"))
API_WORKFLOWS = sorted((PACK_DIR / "workflows" / "api").glob("*.json"))
RUN_TIMEOUT_S = 300.0  # the "use your own CLIP" workflows run a full-size ViT-L/14 on 2 CPU cores
SEED_INPUTS = ("seed", "noise_seed")
_seeds = itertools.count(int(time.time()) % 1_000_000 * 1000)
CLIENT_ID = f"promptweave-http-test-{uuid.uuid4().hex[:8]}"


def _get(url: str, timeout: float = 30) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _get_json(url: str):
    return json.loads(_get(url))


def _post_json(url: str, payload: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # ComfyUI answers 400 with its validation report
        pytest.fail(f"POST {url} answered {exc.code}: {exc.read().decode(errors='replace')[:4000]}")


def _source_node_ids() -> set[str]:
    """Node ids declared in the pack's node sources (``node_id="PW..."``), without importing ComfyUI."""
    pattern = re.compile(r"""node_id\s*=\s*["'](PW\w+)["']""")
    return {m for path in (PACK_DIR / "nodes").glob("*.py") for m in pattern.findall(path.read_text())}


def _with_fresh_seeds(prompt: dict) -> dict:
    """A copy of an API workflow with new seeds, so ComfyUI's cache cannot skip the run."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        for name in SEED_INPUTS:
            if isinstance(node["inputs"].get(name), int):
                node["inputs"][name] = next(_seeds)
    return prompt


def _queue_and_wait(server: str, prompt: dict) -> tuple[str, dict]:
    """``POST /prompt``, then poll ``GET /history/{id}`` until ComfyUI reports the run finished."""
    answer = _post_json(f"{server}/prompt", {"prompt": prompt, "client_id": CLIENT_ID})
    assert not answer.get("node_errors"), answer
    prompt_id = answer["prompt_id"]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        entry = _get_json(f"{server}/history/{prompt_id}").get(prompt_id)
        status = (entry or {}).get("status") or {}
        if status.get("completed") or status.get("status_str") in ("success", "error"):
            return prompt_id, entry
        if time.monotonic() > deadline:
            queue = _get_json(f"{server}/queue")
            pytest.fail(f"prompt {prompt_id} did not finish within {RUN_TIMEOUT_S:.0f} s; queue: {queue}")
        time.sleep(0.25)


def _messages(entry: dict, event: str) -> list[dict]:
    return [data for name, data in entry["status"].get("messages", []) if name == event]


@pytest.fixture(scope="module")
def object_info(comfy_server) -> dict:
    return _get_json(f"{comfy_server}/object_info")


def test_object_info_lists_every_pack_node(object_info):
    listed = {name for name in object_info if name.startswith("PW")}
    in_sources = _source_node_ids()
    assert set(PACK_NODE_IDS) <= in_sources, f"PACK_NODE_IDS names nodes that the sources lack: {PACK_NODE_IDS}"
    missing = (set(PACK_NODE_IDS) | in_sources) - listed
    assert not missing, (
        f"nodes declared in nodes/*.py but missing from /object_info: {sorted(missing)} (is their module in "
        "NODE_MODULES of nodes/__init__.py? an import error? see out/test-artifacts/comfyui-server.log)"
    )
    for node_id in sorted(listed):
        info = object_info[node_id]
        assert info["python_module"] == f"custom_nodes.{PACK_LINK_NAME}", (node_id, info["python_module"])
        assert info["category"].startswith("PromptWeave/"), (node_id, info["category"])


def test_every_pack_node_documents_its_inputs(object_info):
    for node_id in sorted(name for name in object_info if name.startswith("PW")):
        info = object_info[node_id]
        assert info["display_name"] and info["description"], node_id
        inputs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        for name, spec in inputs.items():
            assert len(spec) > 1 and isinstance(spec[1], dict), f"{node_id}.{name} has no options: {spec}"
            assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert len(info["output_tooltips"]) == len(info["output"]) and all(info["output_tooltips"]), node_id


def test_workflow_templates_are_listed_and_served(comfy_server):
    assert UI_WORKFLOWS, "the pack ships no UI workflows in workflows/*.json"
    templates = _get_json(f"{comfy_server}/api/workflow_templates")
    assert PACK_LINK_NAME in templates, f"no templates under '{PACK_LINK_NAME}': {sorted(templates)}"
    assert sorted(templates[PACK_LINK_NAME]) == sorted(path.stem for path in UI_WORKFLOWS)
    for path in UI_WORKFLOWS:
        url = f"{comfy_server}/api/workflow_templates/{PACK_LINK_NAME}/{urllib.parse.quote(path.name)}"
        served = json.loads(_get(url))
        assert served == json.loads(path.read_text()), f"{url} differs from {path}"
        assert served["nodes"], path.name
        # the template browser's card shows <name>.jpg from the same folder (a placeholder when it answers 404)
        thumbnail = f"{comfy_server}/api/workflow_templates/{PACK_LINK_NAME}/{urllib.parse.quote(path.stem)}.jpg"
        with urllib.request.urlopen(thumbnail, timeout=30) as response:
            assert response.status == 200, thumbnail
            data = response.read()
        with Image.open(io.BytesIO(data)) as jpeg:
            assert jpeg.format == "JPEG" and min(jpeg.size) >= 64, (thumbnail, jpeg.format, jpeg.size)


@pytest.mark.parametrize("workflow", API_WORKFLOWS, ids=lambda path: path.stem)
def test_api_workflow_runs_and_serves_a_64px_png(comfy_server, object_info, workflow):
    prompt = _with_fresh_seeds(json.loads(workflow.read_text()))
    prompt_id, entry = _queue_and_wait(comfy_server, prompt)
    status = entry["status"]
    assert status["status_str"] == "success" and status["completed"], (
        f"{workflow.name} failed: {json.dumps(_messages(entry, 'execution_error'), indent=1)[:4000]}"
    )
    image_nodes = [nid for nid, node in prompt.items() if node["class_type"] in ("SaveImage", "PreviewImage")]
    assert image_nodes, f"{workflow.name} has no image output node"
    sizes = []
    for node_id in image_nodes:
        images = entry["outputs"].get(node_id, {}).get("images", [])
        assert images, f"image node {node_id} ({prompt[node_id]['class_type']}) lists no image: {entry['outputs']}"
        for image in images:
            assert image["type"] in ("output", "temp"), image  # SaveImage: output, PreviewImage: temp
            query = urllib.parse.urlencode(
                {"filename": image["filename"], "subfolder": image["subfolder"], "type": image["type"]}
            )
            data = _get(f"{comfy_server}/view?{query}")
            assert data[:8] == b"\x89PNG\r\n\x1a\n", f"/view?{query} is not a PNG"
            with Image.open(io.BytesIO(data)) as png:
                png.load()
                assert png.format == "PNG" and min(png.size) > 0, (prompt_id, image, png.format, png.size)
                sizes.append(png.size)
    # The example workflows generate 64x64 images; plots (loss curves, previews) have their own sizes.
    if any(node["class_type"] in IMAGE_GENERATORS for node in prompt.values()):
        assert (64, 64) in sizes, f"{workflow.name}: no 64x64 generated image among {sizes}"


def test_empty_text_is_an_execution_error_naming_node_and_input(comfy_server):
    candidates = [p for p in API_WORKFLOWS if '"PWApplyLearnedPrompt"' in p.read_text()]
    assert candidates, "no API workflow uses PWApplyLearnedPrompt"
    prompt = _with_fresh_seeds(json.loads(candidates[0].read_text()))
    node_id = next(nid for nid, node in prompt.items() if node["class_type"] == "PWApplyLearnedPrompt")
    prompt[node_id]["inputs"]["text"] = ""
    _, entry = _queue_and_wait(comfy_server, prompt)
    assert entry["status"]["status_str"] == "error", entry["status"]
    errors = _messages(entry, "execution_error")
    assert len(errors) == 1, entry["status"]
    error = errors[0]
    assert "PWApplyLearnedPrompt: input 'text'" in error["exception_message"], error["exception_message"]
    assert (error["node_id"], error["node_type"]) == (node_id, "PWApplyLearnedPrompt"), error


def test_no_other_folder_shadows_the_workflow_templates():
    """ComfyUI serves a pack's templates from the first of example_workflows/, example/, examples/, workflow/,
    workflows/ that exists: a folder of another kind under one of the earlier names would hide workflows/."""
    earlier = [name for name in ("example_workflows", "example", "examples", "workflow") if (PACK_DIR / name).exists()]
    assert not earlier, f"rename {earlier}: ComfyUI would serve templates from it instead of workflows/"
