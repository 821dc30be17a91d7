"""DCAR nodes in real ComfyUI (in-process): registration, conditioning workflow, ranking, training, errors."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from promptweave.headless import PACK_DIR, WorkflowError
from promptweave.testing.defaults import TINY_SD15_NAME

pytestmark = pytest.mark.comfyui
DUAL_NODES = {"PWLoadDualPrompt", "PWTrainDualPrompt", "PWRankImages", "PWRankTexts", "PWDualPromptConditioning"}
PROMPT_FILE = "pw-test-dcar.safetensors"


@pytest.fixture(scope="module")
def mods(comfy):
    return SimpleNamespace(
        dp=comfy.pack_module("prompt_modules.dual_prompt"),
        ws=comfy.pack_module("prompt_modules.world.sources"),
        vlm=comfy.pack_module("prompt_modules.core.vlm"),
        lp=comfy.pack_module("prompt_modules.core.learned_prompt"),
    )


@pytest.fixture(scope="module")
def tiny_vlm(mods):
    return mods.vlm.VisionLanguageModel("tiny", seed=0)


@pytest.fixture(scope="module")
def dual(mods, tiny_vlm, comfy_base):
    cfg = mods.dp.DualPromptConfig(n_text=2, n_visual=2, text_depth=2, visual_depth=2, bank_size=8)
    dual = mods.dp.train_dual_prompt(tiny_vlm, mods.ws.WorldSource(config=cfg), cfg, steps=2, batch_size=4,
                                     progress=False, bank_batches=2).dual
    mods.dp.save_dual_prompt(dual, comfy_base / "models" / "promptweave" / PROMPT_FILE)
    return dual


@pytest.fixture(scope="module")
def world_images():
    from promptweave.prompt_modules.world import render_batch

    return render_batch([2_000_000_000 + k for k in range(4)])


def _node(comfy, node_id):
    return comfy.nodes.NODE_CLASS_MAPPINGS[node_id]


@pytest.fixture(scope="module")
def sd15_clip(comfy):
    return _node(comfy, "CheckpointLoaderSimple")().load_checkpoint(TINY_SD15_NAME)[1]


def test_nodes_are_registered_with_docs(comfy):
    assert DUAL_NODES <= set(comfy.pack_node_ids())
    for node_id in DUAL_NODES:
        assert (PACK_DIR / "web" / "docs" / f"{node_id}.md").is_file()
    info = comfy.node_info("PWRankImages")
    assert "dual_prompt" in info["input"]["optional"]


def test_conditioning_workflow_with_a_saved_dual_prompt(comfy, dual):
    workflow = load_workflow("dual_prompt_generate.json")
    del workflow["2"]  # the world models are replaced by a dual prompt file trained on the tiny VLM
    workflow["3"] = {"class_type": "PWLoadDualPrompt", "inputs": {"prompt_name": PROMPT_FILE}}
    files = comfy.output_files(comfy.run(workflow))
    assert len(files) == 1
    image = np.asarray(Image.open(files[0]))
    assert image.shape == (64, 64, 3)


def test_conditioning_splices_the_projected_context(comfy, dual, sd15_clip):
    clip = sd15_clip
    cond = _node(comfy, "PWDualPromptConditioning").execute(clip=clip, dual_prompt=dual, text="a red star")[0]
    plain = comfy.nodes.CLIPTextEncode().encode(clip, "a red star")[0]
    tokens, extra = cond[0]
    assert tokens.shape == plain[0][0].shape == (1, 77, 768)
    assert extra["pooled_output"].shape == plain[0][1]["pooled_output"].shape
    assert torch.allclose(tokens[:, :1], plain[0][0][:, :1], atol=1e-5)
    # same as applying the exported hard prompt with the learned-prompt node
    table = clip.cond_stage_model.clip_l.transformer.get_input_embeddings().weight
    exported = dual.sd_learned_prompt({"clip_l": table})
    via_lp = _node(comfy, "PWApplyLearnedPrompt").execute(clip=clip, learned_prompt=exported, text="a red star")[0]
    assert torch.allclose(via_lp[0][0], tokens, atol=1e-5)
    assert torch.allclose(via_lp[0][1]["pooled_output"], extra["pooled_output"], atol=1e-5)


def _fake_sdxl_clip():
    def encoder(width):
        emb = torch.nn.Embedding(49408, width)
        return SimpleNamespace(transformer=SimpleNamespace(get_input_embeddings=lambda: emb))

    return SimpleNamespace(cond_stage_model=SimpleNamespace(clip_l=encoder(768), clip_g=encoder(1280)))


def test_sdxl_clip_with_an_sd1_prompt_is_a_clear_error(comfy, mods, dual):
    copy = mods.dp.DualPrompt.for_vlm(mods.vlm.VisionLanguageModel("tiny", seed=0))
    copy.set_sd_prompt(mods.lp.LearnedPrompt(mods.lp.LearnedPromptConfig(n_ctx=2, widths={"clip_l": 768})))
    with pytest.raises(ValueError, match=r"PWDualPromptConditioning: input 'dual_prompt': .*SDXL CLIP needs a "
                                         r"prompt with clip_g"):
        _node(comfy, "PWDualPromptConditioning").execute(clip=_fake_sdxl_clip(), dual_prompt=copy, text="a star")


def test_rank_images_and_texts(comfy, tiny_vlm, dual, world_images):
    images = world_images["image"].permute(0, 2, 3, 1).contiguous()
    text = world_images["caption"][2]
    best, report, best_index = _node(comfy, "PWRankImages").execute(
        vlm=tiny_vlm, images=images, text=text, top_k=2, dual_prompt=dual)
    rows = json.loads(report)
    assert best.shape == (2, 64, 64, 3) and len(rows) == 4 and rows[0]["index"] == best_index
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert torch.equal(best[0], images[best_index])
    zero_shot = _node(comfy, "PWRankImages").execute(vlm=tiny_vlm, images=images, text=text, top_k=9)
    assert zero_shot[0].shape[0] == 4
    candidates = "\n".join([world_images["caption"][0], *world_images["hard_negatives"][0][:3]])
    best_text, ranked, scores = _node(comfy, "PWRankTexts").execute(
        vlm=tiny_vlm, images=images[:1], texts=candidates, dual_prompt=dual)
    assert best_text == ranked.splitlines()[0] and sorted(ranked.splitlines()) == sorted(candidates.splitlines())
    assert len(json.loads(scores)) == 4


def test_rank_errors(comfy, mods, tiny_vlm, dual):
    images = torch.rand(2, 64, 64, 3)
    with pytest.raises(ValueError, match="PWRankImages: input 'images': the image batch is empty"):
        _node(comfy, "PWRankImages").execute(vlm=tiny_vlm, images=images[:0], text="a star", top_k=1)
    with pytest.raises(ValueError, match="PWRankTexts: input 'texts': there are no texts"):
        _node(comfy, "PWRankTexts").execute(vlm=tiny_vlm, images=images, texts=" \n ")
    other = mods.vlm.VisionLanguageModel(mods.vlm.VLMConfig(name="other"), seed=1)
    with pytest.raises(ValueError, match=r"PWRankImages: input 'dual_prompt': .*trained for the VLM 'tiny', "
                                         r"not 'other'"):
        _node(comfy, "PWRankImages").execute(vlm=other, images=images, text="a star", top_k=1, dual_prompt=dual)


def test_train_node_under_inference_mode_saves_and_plots(comfy, mods, comfy_base):
    with torch.inference_mode():
        vlm = mods.vlm.VisionLanguageModel("tiny", seed=0)  # weights are inference tensors, as in ComfyUI
        dual, plot = _node(comfy, "PWTrainDualPrompt").execute(
            vlm=vlm, source="world", path="", steps=2, batch_size=4, learning_rate=0.005, seed=0, n_text=2,
            n_visual=2, depth=1, save_name="pw-test-trained")
    assert plot.shape[0] == 1 and plot.shape[-1] == 3
    assert (comfy_base / "models" / "promptweave" / "pw-test-trained.safetensors").is_file()
    assert isinstance(dual, mods.dp.DualPrompt) and (dual.text_token_ids >= 0).all()


def test_train_node_reports_malformed_json(comfy, tiny_vlm, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"file_name": "a.png", "positive": "p", "negative": ["n"]')
    with pytest.raises(ValueError, match=r"PWTrainDualPrompt: input 'path': .*not valid JSON"):
        _node(comfy, "PWTrainDualPrompt").execute(
            vlm=tiny_vlm, source="fdrd_json", path=str(bad), steps=1, batch_size=2, learning_rate=0.005, seed=0,
            n_text=2, n_visual=2, depth=1, save_name="")


def test_loader_errors_reach_the_workflow_report(comfy):
    workflow = load_workflow("dual_prompt_generate.json")
    del workflow["2"]
    workflow["3"] = {"class_type": "PWLoadDualPrompt", "inputs": {"prompt_name": "absent.safetensors"}}
    with pytest.raises(WorkflowError):
        comfy.run(workflow)


def load_workflow(name: str) -> dict:
    """A DCAR example workflow (API format) of workflows/api/."""
    return json.loads((PACK_DIR / "workflows" / "api" / name).read_text())


@pytest.mark.parametrize("name", ["dual_prompt_rank.json", "dual_prompt_generate.json"])
def test_world_workflows(comfy, name):
    weights = PACK_DIR / "weights"
    shipped = all((weights / f"world{m}.safetensors").is_file() for m in ("clip", "gen"))
    if "PWLoadWorldModels" not in comfy.pack_node_ids() or not shipped:
        pytest.skip("the world models (PWLoadWorldModels, weights/) are not available yet")
    files = comfy.output_files(comfy.run(load_workflow(name)))
    assert files and all(f.is_file() for f in files)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), torch.cuda.OutOfMemoryError),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"), MemoryError),
    ],
)
def test_out_of_memory_names_the_node_and_what_to_lower(comfy, tiny_vlm, world_images, monkeypatch, raised, expected):
    """An out-of-memory error inside a node says which node and which inputs to lower (CUDA OOM keeps its type,
    so ComfyUI still unloads its models); other errors pass through unchanged."""
    module = comfy.pack_module("nodes.nodes_dual_prompt")

    def boom(*args, **kwargs):
        raise raised

    monkeypatch.setattr(module, "rank_images", boom)
    images = world_images["image"].permute(0, 2, 3, 1).contiguous()
    with pytest.raises(expected, match=r"PWRankImages: ran out of [CG]PU memory .*Fix: lower 'images', 'text'"):
        _node(comfy, "PWRankImages").execute(vlm=tiny_vlm, images=images, text="a star", top_k=1)
    monkeypatch.setattr(module, "rank_images", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="^shape mismatch$"):
        _node(comfy, "PWRankImages").execute(vlm=tiny_vlm, images=images, text="a star", top_k=1)


def test_train_node_reads_published_fdrd_from_image_root(comfy, tiny_vlm, tmp_path, monkeypatch):
    """Issue 33: an FDRD test file as the DCAR authors publish it (an object keyed by image id, ``file_name``
    without extension, the authors' absolute ``file_path``) whose images live elsewhere: the optional image_root
    reaches the library's FDRDSource; without it, or when it is not a folder, the error names image_root."""
    module = comfy.pack_module("nodes.nodes_dual_prompt")
    sources, real = [], module.FDRDSource
    monkeypatch.setattr(module, "FDRDSource", lambda *a, **k: sources.append(real(*a, **k)) or sources[-1])
    images = tmp_path / "oxford_pets" / "images"
    images.mkdir(parents=True)
    author = "/root/autodl-tmp/wyf/CoOp-main/DATA/oxford_pets/images"  # the authors' machine: never exists here
    data = {}
    for i, (name, cls) in enumerate([("Sphynx_43", "Sphynx"), ("Ragdoll_4", "Ragdoll"), ("Bengal_7", "Bengal")]):
        Image.fromarray(np.full((40, 50, 3), (70 * i, 200 - 60 * i, 90), dtype=np.uint8)).save(images / f"{name}.jpg")
        others = [c for c in ("Sphynx", "Ragdoll", "Bengal", "Persian", "Birman") if c != cls][:4]
        data[name] = {"file_name": name, "file_path": f"{author}/{name}.jpg", "class_name": cls,
                      "positive": f"A {cls} cat sits on a sofa.",
                      "negative": [f"A {c} cat sits on a sofa." for c in others]}
    annotations = tmp_path / "FDRD" / "test"
    annotations.mkdir(parents=True)
    path = annotations / "pets_test.json"
    path.write_text(json.dumps(data, indent=4))
    args = {"vlm": tiny_vlm, "source": "fdrd_json", "path": str(path), "steps": 1, "batch_size": 2,
            "learning_rate": 0.005, "seed": 0, "n_text": 2, "n_visual": 2, "depth": 1, "save_name": ""}
    node = _node(comfy, "PWTrainDualPrompt")
    with pytest.raises(ValueError, match=r"PWTrainDualPrompt: input 'image_root': .*entry 'Sphynx_43': image file "
                                         r"Sphynx_43 does not exist under .*Fix: set 'image_root'"):
        node.execute(**args)  # the default: the JSON's folder and its images/ sub-folder
    with pytest.raises(ValueError, match=r"PWTrainDualPrompt: input 'image_root': .*absent is not a folder"):
        node.execute(**args, image_root=str(tmp_path / "absent"))
    with torch.inference_mode():
        dual, plot = node.execute(**args, image_root=str(images))
    entries = sources[-1].entries
    assert [e.path for e in entries] == [images / f"{name}.jpg" for name in data]
    assert sources[-1].size == tiny_vlm.image_size and sources[-1].class_names == ["Bengal", "Ragdoll", "Sphynx"]
    assert plot.shape[0] == 1 and dual.config.n_text == 2
