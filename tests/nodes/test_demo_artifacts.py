"""The trained world artifacts the demo ships (``python -m promptweave.bench.demo_artifacts``), measured on demo
scenes fixed by rule in :mod:`promptweave.bench.demo_artifacts` (never picked by their result): each does what its
demo workflow says. Figures and recipes: BENCHMARKS.md, "Demo artifacts"."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import torch
from PIL import Image

from promptweave.bench import demo_artifacts as demo
from promptweave.headless import PACK_DIR
from promptweave.prompt_modules.core.artifacts import SHIPPED_WEIGHTS_DIR, meta_field, read_metadata

ALL_FILES = [name for files in demo.FILES.values() for name in files]
METHODS = {
    demo.RPP_FILE: "rpp",
    demo.DCAR_FILE: "dcar",
    demo.DIFF_PROMPT_FILE: "diff_prompt",
    demo.IPL_MAPPER_FILE: "ipl_mapper",
    demo.IPL_LORA_FILE: "ipl_lora",
}


@pytest.fixture(scope="module")
def world():
    from promptweave.prompt_modules.world.models import load_world_models

    torch.manual_seed(0)
    return load_world_models()


@pytest.mark.parametrize("name", ALL_FILES)
def test_each_artifact_is_shipped_small_with_its_metadata(name):
    path = SHIPPED_WEIGHTS_DIR / name
    assert path.is_file(), f"{name} is missing: python -m promptweave.bench.demo_artifacts"
    assert path.stat().st_size < 6_000_000
    metadata = read_metadata(path)
    assert meta_field(metadata, "version")
    assert meta_field(metadata, "method") == METHODS[name]
    backbone = str(meta_field(metadata, "backbone"))
    assert backbone == "worldclip2" or backbone.startswith("worldgen-decoder:")


def test_grounding_mask_covers_the_named_object_on_the_demo_scenes(world):
    from promptweave.prompt_modules.diff_prompt import load_diff_prompt

    vlm, _ = world
    model = load_diff_prompt(SHIPPED_WEIGHTS_DIR / demo.DIFF_PROMPT_FILE, vlm)
    ious = demo.grounding_ious(vlm, model, demo.demo_scenes())
    # measured (BENCHMARKS.md, "Demo artifacts"; the node's mask, kept inside the predicted box; the bundle trained
    # on rendered scenes and on WorldGen images with colour-segmented masks): mean mask IoU 0.59, 11 of the 16 masks
    # and 15 of the 16 boxes reach 0.5; an untrained grounder: ~0. The issue asks 0.5 on average.
    assert statistics.mean(ious["mask_iou"]) >= 0.5, ious
    assert sum(iou >= 0.5 for iou in ious["mask_iou"]) >= 9, ious
    assert sum(iou >= 0.5 for iou in ious["box_iou"]) >= 12, ious


def test_ranking_picks_the_candidate_the_description_names(world):
    from promptweave.prompt_modules.dual_prompt import load_dual_prompt

    vlm, gen = world
    dual = load_dual_prompt(SHIPPED_WEIGHTS_DIR / demo.DCAR_FILE, vlm)
    images = demo.ranking_images(vlm, gen)
    assert demo.ranking_top_picks(vlm, dual, images, demo.RANKING_CAPTIONS) == list(range(len(images)))


def test_adapted_worldgen_scores_higher_for_the_target_style(world):
    from promptweave.prompt_modules.adaptation import (
        WorldGenGenerator,
        adapted_worldgen,
        load_lora_native,
        sample_worldgen_latents,
    )

    vlm, gen = world
    lora = load_lora_native(SHIPPED_WEIGHTS_DIR / demo.IPL_LORA_FILE)
    latents = sample_worldgen_latents(gen, vlm, demo.adaptation_captions(), steps=20, seed=0)
    with torch.no_grad():
        source = WorldGenGenerator(gen).generate(latents)
        adapted = WorldGenGenerator(adapted_worldgen(gen, lora)).generate(latents)
    assert not torch.allclose(source, adapted, atol=0.05)
    before, after = demo.style_scores(vlm, source, demo.IPL_STYLE), demo.style_scores(vlm, adapted, demo.IPL_STYLE)
    assert after["prob"] > before["prob"], (before, after)
    # the shipped WorldGen is left as it was
    again = WorldGenGenerator(gen).generate(latents)
    assert torch.equal(again, source)


# ----- the demo workflows that load these artifacts, in real ComfyUI (in-process) -------------------------------
def _workflow(name: str) -> dict:
    return json.loads((PACK_DIR / "workflows" / "api" / name).read_text())


def _image_of(comfy, history: dict, node: str) -> np.ndarray:
    (path,) = comfy.output_files({"outputs": {node: history["outputs"][node]}})
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.comfyui
def test_rank_workflow_keeps_the_described_candidate(comfy):
    workflow = _workflow("dual_prompt_rank.json")
    assert workflow["3"]["inputs"]["prompt_name"] == demo.DCAR_FILE
    candidates = workflow["2"]["inputs"]["text"].splitlines()
    history = comfy.run(workflow)
    (report,) = history["outputs"]["6"]["text"]
    best = json.loads(report)[0]["index"]
    assert candidates[best] == workflow["4"]["inputs"]["text"]


@pytest.mark.comfyui
def test_ground_workflow_recolours_only_inside_the_mask_of_the_named_object(comfy):
    """The shipped grounder on the WorldGen scene: the mask covers the red star (pixels of the scene that are red,
    the rule :func:`demo.red_pixels`), and the edit changes no pixel outside the mask."""
    workflow = _workflow("diff_prompt_ground_inpaint.json")
    assert workflow["4"]["inputs"]["bundle_name"] == demo.DIFF_PROMPT_FILE
    history = comfy.run(workflow)
    scene, edit = _image_of(comfy, history, "17"), _image_of(comfy, history, "20")
    mask = _image_of(comfy, history, "14")[..., 0] > 127
    changed = (scene != edit).any(axis=-1)
    assert mask.any() and not changed[~mask].any()
    assert changed[mask].mean() > 0.5
    red = demo.red_pixels(torch.from_numpy(scene.copy()).permute(2, 0, 1).float() / 255).numpy()
    assert (mask & red).sum() / (mask | red).sum() >= 0.5


@pytest.mark.comfyui
def test_before_after_workflow_shows_the_adaptation_and_leaves_worldgen_unchanged(comfy, world):
    """The same texts and seed through WorldGen and through Apply IPL LoRA to WorldGen: the adapted images differ
    and score higher for the target style under WorldCLIP; strength 0 gives the unadapted images exactly; a file
    that is not a native WorldGen LoRA is refused naming the input."""
    workflow = _workflow("adaptation_worldgen_before_after.json")
    assert workflow["3"]["inputs"]["lora_name"] == demo.IPL_LORA_FILE
    assert workflow["2"]["inputs"]["text"] == workflow["4"]["inputs"]["text"]
    history = comfy.run(workflow)

    def images(node: str) -> torch.Tensor:
        paths = comfy.output_files({"outputs": {node: history["outputs"][node]}})
        arrays = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255

    before, after = images("5"), images("6")
    assert before.shape == after.shape and before.shape[0] == 4
    assert (before != after).any(dim=1).float().mean() > 0.1
    vlm, _ = world
    scores = [demo.style_scores(vlm, batch, demo.IPL_STYLE)["prob"] for batch in (before, after)]
    assert scores[1] > scores[0], scores
    node = comfy.nodes.NODE_CLASS_MAPPINGS["PWApplyWorldGenLoRA"]
    sample = comfy.nodes.NODE_CLASS_MAPPINGS["PWWorldGenSample"]
    vlm, gen = comfy.pack_module("prompt_modules.world.models").load_world_models()  # the pack's own classes
    with torch.inference_mode():
        unchanged = node.execute(worldgen=gen, lora_name=demo.IPL_LORA_FILE, strength=0.0)[0]
        args = dict(worldclip=vlm, text="a large red square on a white background", seed=3, steps=4, guidance=5.0)
        assert torch.equal(sample.execute(worldgen=unchanged, **args)[0], sample.execute(worldgen=gen, **args)[0])
    errors = comfy.pack_module("nodes._common")
    with pytest.raises(errors.NodeInputError, match="PWApplyWorldGenLoRA: input 'lora_name'"):
        node.execute(worldgen=gen, lora_name=demo.DCAR_FILE, strength=1.0)
