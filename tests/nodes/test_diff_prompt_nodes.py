"""Diff-Prompt nodes in real ComfyUI (in-process): ground, conditioning, train per stage, load, clear errors,
and the ground-then-inpaint workflow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from promptweave.headless import PACK_DIR
from promptweave.prompt_modules.core.artifacts import read_safetensors
from promptweave.testing.defaults import TINY_SD15_NAME

pytestmark = pytest.mark.comfyui
NODES = {"PWLoadDiffPrompt", "PWDiffPromptGround", "PWDiffPromptConditioning", "PWTrainDiffPrompt"}
BUNDLE = "pw-test-diff-prompt"


def _node(comfy, node_id):
    return comfy.nodes.NODE_CLASS_MAPPINGS[node_id]


@pytest.fixture(scope="module")
def mods(comfy):
    return SimpleNamespace(
        dp=comfy.pack_module("prompt_modules.diff_prompt"), vlm=comfy.pack_module("prompt_modules.core.vlm")
    )


@pytest.fixture(scope="module")
def tiny_vlm(mods):
    return mods.vlm.VisionLanguageModel("tiny", seed=0)


@pytest.fixture(scope="module")
def world():
    from promptweave.prompt_modules.world.sources import WorldGroundingSource

    return WorldGroundingSource("test").from_seeds([2_000_000_000 + k for k in range(4)])


@pytest.fixture(scope="module")
def bundle(mods, tiny_vlm, world, comfy_base):
    """A complete bundle of small stages trained for a few steps on the tiny VLM, saved where the loader looks."""
    dp = mods.dp
    torch.set_num_threads(1)
    source = dp.TensorGroundingSource(world.images, world.masks, world.texts)
    vae_cfg = dp.MaskVAEConfig(mask_size=32, block_out_channels=(8, 16, 16))
    vae = dp.train_mask_vae(source, vae_cfg, steps=2, batch_size=4, progress=False).model
    dit = dp.train_dit(
        tiny_vlm, vae, source, dp.DiTConfig(hidden=32, depth=1, heads=2), steps=2, batch_size=4, progress=False
    ).model
    cfg = dp.PromptConfig(ddim_steps=3, adapter_channels=4, adapter_features=16, head_hidden=16)
    model = dp.train_prompts(tiny_vlm, vae, dit, source, cfg, steps=2, batch_size=4, progress=False).model
    folder = comfy_base / "models" / "promptweave"
    dp.save_bundle(folder / f"{BUNDLE}.safetensors", model=model)
    dp.save_bundle(folder / f"{BUNDLE}-vae-only.safetensors", vae=vae)
    return model


def _images(world, n=2, size=None):
    images = world.images[:n].permute(0, 2, 3, 1).contiguous()
    if size is not None:
        images = torch.nn.functional.interpolate(world.images[:n], size=size).permute(0, 2, 3, 1).contiguous()
    return images


def test_nodes_are_registered_with_docs(comfy):
    assert NODES <= set(comfy.pack_node_ids())
    for node_id in NODES:
        assert (PACK_DIR / "web" / "docs" / f"{node_id}.md").is_file()
    assert "masks" in comfy.node_info("PWTrainDiffPrompt")["input"]["optional"]


def test_load_and_ground(comfy, tiny_vlm, bundle, world):
    loaded = _node(comfy, "PWLoadDiffPrompt").execute(bundle_name=f"{BUNDLE}.safetensors")[0]
    assert loaded.keep_steps == bundle.keep_steps
    images = _images(world, 2, size=(48, 80))  # not square and not the model's size: masks come back at 48x80
    mask, box_mask, boxes, preview = _node(comfy, "PWDiffPromptGround").execute(
        vlm=tiny_vlm,
        diff_prompt=loaded,
        image=images,
        text=f"{world.texts[0]}\n{world.texts[1]}",
        seed=0,
        threshold=0.5,
        ddim_steps=0,
    )
    assert mask.shape == box_mask.shape == (2, 48, 80)
    assert set(torch.unique(mask).tolist()) <= {0.0, 1.0}
    rows = json.loads(boxes)
    assert len(rows) == 2 and {"x0", "y0", "x1", "y1", "width", "height"} <= set(rows[0])
    for row, filled in zip(rows, box_mask, strict=True):
        assert 0 <= row["x0"] <= row["x1"] <= 80 and 0 <= row["y0"] <= row["y1"] <= 48
        assert int(filled.sum()) == pytest.approx(row["width"] * row["height"], abs=row["width"] + row["height"] + 2)
    k = loaded.n_kept
    assert preview.shape == (2, 32, 32 * k, 3) and float(preview.max()) <= 1.0
    again = _node(comfy, "PWDiffPromptGround").execute(
        vlm=tiny_vlm, diff_prompt=loaded, image=images, text=world.texts[0], seed=0, threshold=0.5, ddim_steps=2
    )
    assert again[0].shape == (2, 48, 80)  # one line for every image; another DDIM step count


def test_ground_errors(comfy, mods, tiny_vlm, bundle, world):
    node = _node(comfy, "PWDiffPromptGround")
    args = dict(vlm=tiny_vlm, diff_prompt=bundle, image=_images(world, 2), seed=0, threshold=0.5, ddim_steps=0)
    with pytest.raises(ValueError, match=r"PWDiffPromptGround: input 'text': the referring expression is empty"):
        node.execute(text=" \n ", **args)
    with pytest.raises(
        ValueError,
        match=r"PWDiffPromptGround: input 'text': 2 image\(s\) but 3 expression lines. "
        r"Fix: write one line per image",
    ):
        node.execute(text="the star\nthe arrow\nthe circle", **args)
    other = mods.vlm.VisionLanguageModel(mods.vlm.VLMConfig(name="other"), seed=1)
    with pytest.raises(ValueError, match=r"PWDiffPromptGround: input 'diff_prompt': .*trained for the VLM 'tiny'"):
        node.execute(text="the star", **{**args, "vlm": other})
    with pytest.raises(ValueError, match=r"PWDiffPromptGround: input 'image': .*expected a non-empty IMAGE batch"):
        node.execute(text="the star", **{**args, "image": torch.zeros(0, 64, 64, 3)})
    with pytest.raises(
        ValueError,
        match=r"PWLoadDiffPrompt: input 'bundle_name': .*holds only the stage\(s\) "
        r"\['vae'\]",
    ):
        _node(comfy, "PWLoadDiffPrompt").execute(bundle_name=f"{BUNDLE}-vae-only.safetensors")


def test_conditioning_node(comfy, tiny_vlm, bundle, world):
    _, clip, _ = _node(comfy, "CheckpointLoaderSimple")().load_checkpoint(TINY_SD15_NAME)
    node = _node(comfy, "PWDiffPromptConditioning")
    cond = node.execute(
        clip=clip,
        vlm=tiny_vlm,
        diff_prompt=bundle,
        image=_images(world, 2),
        expression=world.texts[0],
        text="a picture of <pw>",
        seed=0,
    )[0]
    tokens, extra = cond[0]
    plain = comfy.nodes.CLIPTextEncode().encode(clip, "a picture of")[0][0][0]
    assert tokens.shape == (2, 77, 768) and extra["pooled_output"].shape == (2, 768)
    assert torch.allclose(tokens[:1, :4], plain[:, :4], atol=1e-5)  # start, a, picture, of: before the tokens
    # the spliced vectors are this CLIP's own embeddings of the vocabulary-projected generated tokens
    ids = bundle.text_prompt_token_ids(
        tiny_vlm, world.images[:1], [world.texts[0]], generator=torch.Generator().manual_seed(0)
    )[0]
    assert ids.shape == (bundle.config.n_tokens,)
    with pytest.raises(
        ValueError,
        match=r"PWDiffPromptConditioning: input 'expression': the referring expression "
        r"is empty",
    ):
        node.execute(
            clip=clip,
            vlm=tiny_vlm,
            diff_prompt=bundle,
            image=_images(world, 1),
            expression="",
            text="a picture of <pw>",
            seed=0,
        )
    with pytest.raises(ValueError, match=r"PWDiffPromptConditioning: input 'expression': 1 image\(s\) but 2"):
        node.execute(
            clip=clip,
            vlm=tiny_vlm,
            diff_prompt=bundle,
            image=_images(world, 1),
            expression="a\nb",
            text="a picture of <pw>",
            seed=0,
        )


def _train(comfy, vlm, stage, world, **kw):
    masks = world.masks.clone()
    args = dict(
        vlm=vlm,
        stage=stage,
        source="inputs",
        path="",
        steps=2,
        batch_size=2,
        seed=0,
        bundle_name="pw-test-trained",
        images=_images(world, 4),
        masks=masks,
        expressions="\n".join(world.texts),
    )
    args.update(kw)
    return _node(comfy, "PWTrainDiffPrompt").execute(**args)


def test_train_node_stage_by_stage_under_inference_mode(comfy, mods, comfy_base, world):
    target = comfy_base / "models" / "promptweave" / "pw-test-trained.safetensors"
    target.unlink(missing_ok=True)
    with torch.inference_mode():
        vlm = mods.vlm.VisionLanguageModel("tiny", seed=0)  # inference tensors, as ComfyUI hands them over
        with pytest.raises(
            ValueError,
            match=r"PWTrainDiffPrompt: input 'bundle_name': .*does not exist, and stage "
            r"'dit' needs the earlier stages",
        ):
            _train(comfy, vlm, "dit", world)
        model, path, plot = _train(comfy, vlm, "vae", world)
        assert model is None and path == str(target) and plot.shape[0] == 1
        assert mods.dp.load_bundle(target).stages == ("vae",)
        with pytest.raises(ValueError, match=r"PWTrainDiffPrompt: input 'stage': the bundle holds only \['vae'\]"):
            _train(comfy, vlm, "prompt", world)
        _train(comfy, vlm, "dit", world)
        assert mods.dp.load_bundle(target).stages == ("vae", "dit")
        model, _, _ = _train(comfy, vlm, "prompt", world)
    assert isinstance(model, mods.dp.DiffPrompt)
    assert mods.dp.load_bundle(target).stages == ("vae", "dit", "prompt")
    # each stage's checkpoint is removed once its run has saved the bundle (the rule of every training node)
    assert not list((comfy_base / "output" / "promptweave" / "checkpoints").glob("pw-test-trained-*"))


def test_train_node_trains_the_library_recipe(comfy, mods, world, tmp_path):
    """PWTrainDiffPrompt and the library train with the same stage settings: for the same inputs, seed, steps
    and batch size the node's bundle equals ``train_all``'s tensor for tensor (a node with its own stage loop,
    e.g. another batch size for the Mask-VAE and DiT stages, writes other weights)."""
    torch.set_num_threads(1)
    with torch.inference_mode():
        vlm = mods.vlm.VisionLanguageModel("tiny", seed=0)  # as ComfyUI hands it over
        _, path, _ = _train(comfy, vlm, "all", world, bundle_name="pw-test-recipe", steps=2, batch_size=3, seed=7)
    images = _images(world, 4).permute(0, 3, 1, 2)  # the IMAGE input back as [B, 3, H, W]
    source = mods.dp.TensorGroundingSource(images, world.masks.clone(), world.texts)
    library = tmp_path / "library.safetensors"
    plain_vlm = mods.vlm.VisionLanguageModel("tiny", seed=0)
    model = mods.dp.train_all(
        plain_vlm, source, vae_steps=2, dit_steps=2, prompt_steps=2, batch_size=3, seed=7, bundle_path=library,
        progress=False,
    )
    assert isinstance(model, mods.dp.DiffPrompt)
    node_tensors, node_meta = read_safetensors(path)
    library_tensors, library_meta = read_safetensors(library)
    assert node_meta == library_meta  # configs, stages, VLM
    assert node_tensors.keys() == library_tensors.keys()
    differ = [k for k in node_tensors if not torch.equal(node_tensors[k], library_tensors[k])]
    assert not differ, f"the node trained other weights than the library: {differ[:5]}"
    settings = mods.dp.train_diff_prompt(
        plain_vlm, source, vae_steps=1, dit_steps=1, prompt_steps=1, batch_size=3, progress=False
    ).settings
    assert [s["batch_size"] for s in settings.values()] == [32, 32, 3]  # the recipe's stage batch sizes


def test_train_node_input_errors(comfy, tiny_vlm, world, tmp_path):
    with pytest.raises(
        ValueError,
        match=r"PWTrainDiffPrompt: input 'masks': the masks are 32x32 but the images "
        r"64x64. Fix: give every image a mask of its own size",
    ):
        _train(comfy, tiny_vlm, "vae", world, masks=world.masks[:, :32, :32].clone())
    with pytest.raises(ValueError, match=r"PWTrainDiffPrompt: input 'masks': 4 image\(s\) but 3 mask\(s\)"):
        _train(comfy, tiny_vlm, "vae", world, masks=world.masks[:3].clone())
    with pytest.raises(ValueError, match=r"PWTrainDiffPrompt: input 'expressions': 4 image\(s\) but 2 expression"):
        _train(comfy, tiny_vlm, "vae", world, expressions="the star\nthe arrow")
    with pytest.raises(
        ValueError,
        match=r"PWTrainDiffPrompt: input 'expressions': the referring expression is "
        r"empty",
    ):
        _train(comfy, tiny_vlm, "vae", world, expressions="")
    with pytest.raises(
        ValueError,
        match=r"PWTrainDiffPrompt: input 'masks': empty mask for \['sample 0'.*Fix: give "
        r"every image one non-empty mask",
    ):
        _train(comfy, tiny_vlm, "vae", world, masks=torch.zeros_like(world.masks))
    with pytest.raises(ValueError, match=r"PWTrainDiffPrompt: input 'masks': not connected"):
        _train(comfy, tiny_vlm, "vae", world, masks=None)
    image = np.zeros((16, 16, 3), np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a_mask.png")
    (tmp_path / "a.txt").write_text("the star")
    with pytest.raises(
        ValueError,
        match=r"PWTrainDiffPrompt: input 'path': the mask a_mask.png is 8x8 but its image "
        r"a.png is 16x16",
    ):
        _train(comfy, tiny_vlm, "vae", world, source="folder", path=str(tmp_path))
    with pytest.raises(ValueError, match=r"PWTrainDiffPrompt: input 'bundle_name': .*unsafe"):
        _train(comfy, tiny_vlm, "vae", world, bundle_name="../escape")


def test_train_node_knobs_go_through_the_recipe_and_the_bundle_records_them(comfy, mods, tiny_vlm, comfy_base, world):
    """Issue 33: the optional inputs DDIM steps, prompted layers, learning rate and mask size (0 = automatic) go
    through the library recipe, the bundle records them, and a plan that cannot work names the input; on a
    12-layer VLM the old failure ("12 prompted layers need at least 12 DDIM steps") is now a choice of inputs."""
    target = comfy_base / "models" / "promptweave" / "pw-test-knobs.safetensors"
    target.unlink(missing_ok=True)
    knobs = dict(ddim_steps=3, prompted_layers=1, learning_rate=2e-3, mask_size=32)
    model, path, _ = _train(comfy, tiny_vlm, "all", world, bundle_name="pw-test-knobs", steps=1, **knobs)
    assert (model.text_depth, model.visual_depth, model.n_kept, model.mask_size) == (1, 1, 1, 32)
    _, meta = read_safetensors(path)
    prompt = json.loads(meta["promptweave.prompt_config"])
    vae = json.loads(meta["promptweave.vae_config"])
    assert (prompt["ddim_steps"], prompt["text_depth"], prompt["visual_depth"], prompt["lr"]) == (3, 1, 1, 2e-3)
    assert (vae["mask_size"], vae["lr"]) == (32, 2e-3) and json.loads(meta["promptweave.dit_config"])["lr"] == 2e-3
    loaded = _node(comfy, "PWLoadDiffPrompt").execute(bundle_name="pw-test-knobs.safetensors")[0]
    mask = _node(comfy, "PWDiffPromptGround").execute(
        vlm=tiny_vlm, diff_prompt=loaded, image=_images(world, 1), text=world.texts[0], seed=0, threshold=0.5,
        ddim_steps=0,
    )[0]
    assert mask.shape == (1, 64, 64) and loaded.keep_steps == (2,)
    with pytest.raises(ValueError, match=r"PWTrainDiffPrompt: input 'mask_size': the bundle's Mask-VAE works on 32 "
                       r"px masks, not 64.*Fix: "):
        _train(comfy, tiny_vlm, "prompt", world, bundle_name="pw-test-knobs", steps=1, mask_size=64)
    deep = mods.vlm.VisionLanguageModel(mods.vlm.VLMConfig(name="deep12", vision_layers=12, text_layers=12), seed=0)
    errors = {  # refused before anything trains
        "ddim_steps": dict(prompted_layers=12, ddim_steps=10),
        "prompted_layers": dict(prompted_layers=13),
        "mask_size": dict(mask_size=24),
    }
    for name, kw in errors.items():
        with pytest.raises(ValueError, match=rf"PWTrainDiffPrompt: input '{name}': .*Fix: "):
            _train(comfy, deep, "all", world, bundle_name="pw-test-knobs-deep", steps=1, **kw)
    assert not (comfy_base / "models" / "promptweave" / "pw-test-knobs-deep.safetensors").exists()


def test_train_node_starts_global_prompts_from_pretrained_prompts(comfy, comfy_base, tiny_vlm, bundle, world, tmp_path):
    pp = comfy.pack_module("prompt_modules.pretraining")
    folder = comfy_base / "models" / "promptweave"
    shutil.copy(folder / f"{BUNDLE}.safetensors", folder / "pw-test-rpp-init.safetensors")
    rpp = pp.RPPPrompts.for_vlm(tiny_vlm, pp.RPPConfig(n_text=4, n_visual=4), seed=5)
    pretrained = pp.load_pretrained_prompts(pp.save_pretrained_prompts(rpp, tmp_path / "rpp.safetensors", tiny_vlm))
    seen = rpp.shared_hidden(tiny_vlm)["text"][1]
    started, _, _ = _train(comfy, tiny_vlm, "prompt", world, bundle_name="pw-test-rpp-init", steps=1,
                           pretrained_prompts=pretrained)
    plain, _, _ = _train(comfy, tiny_vlm, "prompt", world, bundle_name="pw-test-rpp-init", steps=1)
    gap = lambda m: float((m.global_prompts.text[1].detach().cpu() - seen.cpu()).norm())  # noqa: E731
    assert gap(started) < 0.1 * gap(plain)
    with pytest.raises(ValueError, match=r"input 'pretrained_prompts': stage 'vae' has no prompts"):
        _train(comfy, tiny_vlm, "vae", world, bundle_name="pw-test-rpp-init", pretrained_prompts=pretrained)
    other = comfy.pack_module("prompt_modules.core.vlm").VisionLanguageModel(
        comfy.pack_module("prompt_modules.core.vlm").VLMConfig(name="other"), seed=1
    )
    with pytest.raises(ValueError, match=r"input 'pretrained_prompts': they were pretrained for the VLM 'tiny'"):
        _train(comfy, other, "prompt", world, bundle_name="pw-test-rpp-init", pretrained_prompts=pretrained)


def test_ground_then_inpaint_workflow(comfy, comfy_base, tiny_vlm, bundle, world, monkeypatch):
    worlds = comfy.pack_module("nodes.nodes_world")
    monkeypatch.setattr(worlds, "load_world_models", lambda: (tiny_vlm, None))  # the tiny VLM keeps it fast
    workflow = json.loads((PACK_DIR / "workflows" / "api" / "diff_prompt_ground_inpaint.json").read_text())
    image = (world.images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    (comfy_base / "input").mkdir(exist_ok=True)
    Image.fromarray(image).save(comfy_base / "input" / "pw-diff-prompt-scene.png")
    workflow["3"] = {"class_type": "LoadImage", "inputs": {"image": "pw-diff-prompt-scene.png"}}  # WorldGen stand-in
    assert workflow["4"]["class_type"] == "PWLoadDiffPrompt"  # the shipped grounder, here the test's bundle
    workflow["4"]["inputs"]["bundle_name"] = f"{BUNDLE}.safetensors"
    workflow["5"]["inputs"]["text"] = world.texts[0]
    files = comfy.output_files(comfy.run(workflow))
    assert files and all(f.is_file() for f in files)
    sizes = sorted(Image.open(f).size for f in files)
    assert (64, 64) in sizes and (32 * bundle.n_kept, 32) in sizes


# ----- issue 33: the referring-expression readers behind sources 'refcoco' and 'grounding_jsonl' ----------------------
def _photo(path: Path, width: int, height: int, seed: int) -> None:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def _refcoco_folder(root: Path) -> Path:
    """The refer toolkit's ``data/refcoco`` after ``refs(unc).p`` is converted to JSON: ``instances.json`` (a polygon
    and an uncompressed-RLE annotation), ``refs(unc).json`` (two train refs, one val) and the images in ``images/``."""
    (root / "images").mkdir(parents=True)
    sizes = {1: (24, 16), 2: (20, 20)}
    for i, (w, h) in sizes.items():
        _photo(root / "images" / f"COCO_train2014_{i:012d}.png", w, h, seed=i)
    rle = np.zeros((20, 20), bool)
    rle[3:9, 4:15] = True
    flat, counts, current, run = rle.flatten(order="F"), [], False, 0  # COCO's column-major 0/1 runs
    for value in flat:
        if bool(value) != current:
            counts.append(run)
            current, run = bool(value), 0
        run += 1
    counts.append(run)
    instances = {
        "images": [{"id": i, "file_name": f"COCO_train2014_{i:012d}.png", "width": w, "height": h}
                   for i, (w, h) in sizes.items()],
        "annotations": [
            {"id": 11, "image_id": 1, "bbox": [2, 2, 6, 4], "category_id": 1,
             "segmentation": [[2, 2, 8, 2, 8, 6, 2, 6]]},
            {"id": 12, "image_id": 2, "bbox": [4, 3, 11, 6], "category_id": 1,
             "segmentation": {"counts": counts, "size": [20, 20]}},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    refs = [
        {"ref_id": 0, "ann_id": 11, "image_id": 1, "split": "train",
         "sentences": [{"sent": "the left square"}, {"sent": "small square"}]},
        {"ref_id": 1, "ann_id": 12, "image_id": 2, "split": "train", "sentences": [{"sent": "the wide box"}]},
        {"ref_id": 2, "ann_id": 11, "image_id": 1, "split": "val", "sentences": [{"sent": "the square"}]},
    ]
    (root / "instances.json").write_text(json.dumps(instances))
    (root / "refs(unc).json").write_text(json.dumps(refs))
    return root


def _spy(monkeypatch, module, name: str) -> list:
    """Record the calls (args, kwargs, result) of ``module.name`` while still calling it."""
    calls, real = [], getattr(module, name)

    def spy(*args, **kwargs):
        calls.append((args, kwargs, real(*args, **kwargs)))
        return calls[-1][2]

    monkeypatch.setattr(module, name, spy)
    return calls


def test_train_node_reads_refcoco_and_grounding_jsonl(comfy, mods, tiny_vlm, comfy_base, tmp_path, monkeypatch):
    """Sources 'refcoco' (a dataset folder; image_root and split left at their defaults, then the instances file with
    both set) and 'grounding_jsonl' go through the library's readers at the VLM's image size and train."""
    module = comfy.pack_module("nodes.nodes_diff_prompt")
    refcoco, jsonl = _spy(monkeypatch, module, "read_refcoco"), _spy(monkeypatch, module, "read_grounding_jsonl")
    folder = _refcoco_folder(tmp_path / "refcoco")
    target = comfy_base / "models" / "promptweave" / "pw-test-refcoco.safetensors"
    target.unlink(missing_ok=True)
    model, path, _ = _train(comfy, tiny_vlm, "vae", world_stub(), source="refcoco", path=str(folder), steps=1,
                            bundle_name="pw-test-refcoco")
    assert model is None and path == str(target) and mods.dp.load_bundle(target).stages == ("vae",)
    (instances, refs, root), kwargs, source = refcoco[-1]
    assert (instances, refs, root) == (folder / "instances.json", folder / "refs(unc).json", folder / "images")
    assert kwargs == {"split": "train", "size": tiny_vlm.image_size} and len(source) == 3  # the train sentences
    _train(comfy, tiny_vlm, "vae", world_stub(), source="refcoco", path=str(folder / "instances.json"), steps=1,
           bundle_name="pw-test-refcoco-val", image_root=str(folder / "images"), split="val, testA")
    (_, _, root), kwargs, source = refcoco[-1]
    assert root == folder / "images" and kwargs["split"] == ["val", "testA"] and len(source) == 1

    images = tmp_path / "photos"
    images.mkdir()
    _photo(images / "a.png", 30, 20, seed=3)
    _photo(images / "b.jpg", 16, 16, seed=4)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 10:20] = 255
    Image.fromarray(mask).save(images / "a_mask.png")
    lines = [
        {"image": "a.png", "expression": "the square in the middle", "bbox": [10, 5, 10, 10], "mask": "a_mask.png"},
        {"image": "b.jpg", "expression": "the left half", "bbox": [0, 0, 8, 16]},
    ]
    data = tmp_path / "grounding.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    _train(comfy, tiny_vlm, "vae", world_stub(), source="grounding_jsonl", path=str(data), steps=1,
           bundle_name="pw-test-jsonl", image_root=str(images))
    (given, root), kwargs, source = jsonl[-1]
    assert (given, root, kwargs) == (data, images, {"size": tiny_vlm.image_size}) and len(source) == 2
    batch = source.batch(0, 0, 2)
    assert batch.images.shape == (2, 3, 64, 64) and sorted(batch.texts) == ["the left half", "the square in the middle"]


def world_stub():
    """The ``world`` argument of :func:`_train` for the file sources (their images and masks inputs are unused)."""
    return SimpleNamespace(masks=torch.zeros(1, 8, 8), texts=["unused"], images=torch.zeros(1, 3, 8, 8))


def test_file_source_errors_name_the_input(comfy, tiny_vlm, tmp_path):
    folder = _refcoco_folder(tmp_path / "refcoco")

    def refcoco(path=folder, **kw):
        return _train(comfy, tiny_vlm, "vae", world_stub(), source="refcoco", path=str(path), steps=1,
                      bundle_name="pw-test-refcoco-errors", **kw)

    def expect(name: str, message: str, call, **kw):
        with pytest.raises(ValueError, match=rf"PWTrainDiffPrompt: input '{name}': {message}.*Fix: "):
            call(**kw)

    expect("path", r".*absent does not exist", refcoco, path=tmp_path / "absent")
    expect("path", r".*holds no instances.json", refcoco, path=folder / "images")
    expect("image_root", r".*nowhere is not a folder", refcoco, image_root=str(tmp_path / "nowhere"))
    expect("image_root", r".*COCO_train2014_000000000001.png \(image 1\) is not in .*refcoco", refcoco,
           image_root=str(folder))
    expect("split", r".*no refs of split \['testB'\]; its splits are \['train', 'val'\]", refcoco, split="testB")
    shutil.copy(folder / "refs(unc).json", folder / "refs(google).json")
    expect("path", r".*holds several refs files \(refs\(google\).json, refs\(unc\).json\)", refcoco)
    (folder / "refs(google).json").unlink()
    (folder / "refs(unc).json").unlink()
    expect("path", r".*holds no refs file", refcoco)
    (folder / "refs(unc).p").write_bytes(b"\x80\x04N.")  # the refer toolkit's pickle: refused, never unpickled
    expect("path", r".*refs\(unc\).p is a Python pickle.*json.dump\(pickle.load", refcoco)
    (folder / "refs(unc).p").unlink()
    (folder / "refs(unc).jsonl").write_text(json.dumps({"ann_id": 11, "split": "train", "sentences": ["the square"]}))
    _photo(folder / "images" / "COCO_train2014_000000000001.png", 32, 16, seed=9)  # not the annotated 24x16 image
    expect("image_root", r".*is 32x16 but .* gives it as 24x16", refcoco)  # found while training (lazy pixels)

    def grounding(lines, **kw):
        data = tmp_path / "data.jsonl"
        data.write_text("".join(json.dumps(line) + "\n" for line in lines))
        return _train(comfy, tiny_vlm, "vae", world_stub(), source="grounding_jsonl", path=str(data), steps=1,
                      bundle_name="pw-test-jsonl-errors", **kw)

    _photo(tmp_path / "a.png", 30, 20, seed=3)
    expect("path", r".*line 1: the box \[x, y, w, h\] = \[25, 0, 10, 10\] lies outside", grounding,
           lines=[{"image": "a.png", "expression": "x", "bbox": [25, 0, 10, 10]}])
    expect("image_root", r".*line 1: the image file b.png does not exist", grounding,
           lines=[{"image": "b.png", "expression": "x", "bbox": [0, 0, 5, 5]}])
    expect("path", r".*no JSONL file given", _train, comfy=comfy, vlm=tiny_vlm, stage="vae", world=world_stub(),
           source="grounding_jsonl", path=" ")
