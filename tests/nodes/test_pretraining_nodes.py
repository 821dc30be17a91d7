"""RPP nodes in real ComfyUI (in-process): registration, pretraining (save, plot, cancel + resume), loading."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from promptweave.headless import PACK_DIR, WorkflowError

pytestmark = pytest.mark.comfyui
RPP_NODES = {"PWPretrainPrompts", "PWLoadPretrainedPrompts"}
BUNDLE_FILE = "pw-test-rpp.safetensors"
TRAIN_ARGS = {
    "source": "world",
    "path": "",
    "steps": 2,
    "batch_size": 4,
    "learning_rate": 0.002,
    "seed": 0,
    "n_text": 2,
    "n_visual": 2,
    "depth": 2,
    "qkv_prompts": "unshared",
    "soft_label_weight": 1.0,
    "temperature": 1.0,
    "classes_per_step": 8,
}


@pytest.fixture(scope="module")
def mods(comfy):
    return SimpleNamespace(
        pp=comfy.pack_module("prompt_modules.pretraining"),
        vlm=comfy.pack_module("prompt_modules.core.vlm"),
        dp=comfy.pack_module("prompt_modules.dual_prompt"),
    )


@pytest.fixture(scope="module")
def inference_vlm(mods):
    with torch.inference_mode():  # weights are inference tensors, as for a model loaded by a ComfyUI node
        return mods.vlm.VisionLanguageModel("tiny", seed=0)


def _node(comfy, node_id):
    return comfy.nodes.NODE_CLASS_MAPPINGS[node_id]


def _pretrain(comfy, vlm, **overrides):
    args = {**TRAIN_ARGS, "save_name": "", **overrides}
    with torch.inference_mode():  # ComfyUI runs every node under inference mode
        return _node(comfy, "PWPretrainPrompts").execute(vlm=vlm, **args)


@pytest.fixture(scope="module")
def saved_bundle(comfy, inference_vlm, comfy_base):
    bundle, plot, summary = _pretrain(comfy, inference_vlm, save_name=BUNDLE_FILE.removesuffix(".safetensors"))
    path = comfy_base / "models" / "promptweave" / BUNDLE_FILE
    assert path.is_file()
    return SimpleNamespace(bundle=bundle, plot=plot, summary=summary, path=path)


def test_nodes_are_registered_with_docs(comfy):
    assert RPP_NODES <= set(comfy.pack_node_ids())
    for node_id in RPP_NODES:
        assert (PACK_DIR / "web" / "docs" / f"{node_id}.md").is_file()
    info = comfy.node_info("PWPretrainPrompts")
    required = info["input"]["required"]
    assert {"vlm", "qkv_prompts", "soft_label_weight", "temperature", "classes_per_step"} <= set(required)
    assert info["output_name"] == ["pretrained_prompts", "loss_plot", "summary"]
    for node_id in RPP_NODES:
        info = comfy.node_info(node_id)
        assert info["category"] == "PromptWeave/pretraining" and info["description"]
        assert all(spec[1].get("tooltip") for spec in info["input"]["required"].values())
        assert len(info["output_tooltips"]) == len(info["output"]) and all(info["output_tooltips"])


def test_pretrain_node_under_inference_mode_saves_plots_and_summarises(mods, saved_bundle):
    bundle = saved_bundle.bundle
    assert isinstance(bundle, mods.pp.PretrainedPromptBundle) and bundle.backbone == "tiny"
    assert bundle.config.qkv_mode == "unshared" and len(bundle.rpp.text_qkv) == 2
    assert saved_bundle.plot.ndim == 4 and saved_bundle.plot.shape[0] == 1 and saved_bundle.plot.shape[-1] == 3
    assert "RPP pretrained prompts for 'tiny'" in saved_bundle.summary and "classes: 493" in saved_bundle.summary
    loaded = mods.pp.load_pretrained_prompts(saved_bundle.path)
    assert loaded.info["steps"] == 2 and loaded.info["n_classes"] == 493
    for a, b in zip(loaded.deep_prompt_tensors("text"), bundle.deep_prompt_tensors("text"), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_saved_bundle_initialises_a_dual_prompt(mods, saved_bundle):
    vlm = mods.vlm.VisionLanguageModel("tiny", seed=0)
    config = mods.dp.DualPromptConfig(n_text=2, n_visual=2, bank_size=0, init_from=str(saved_bundle.path))
    dual = mods.dp.DualPrompt.for_vlm(vlm, config)
    text = saved_bundle.bundle.deep_prompt_tensors("text")
    assert torch.allclose(dual.prompts.text_prompt(0), text[0], atol=1e-6)
    assert torch.allclose(dual.prompts.text_prompt(1), text[1], atol=1e-6)


def test_load_node_in_a_workflow(comfy, saved_bundle):
    workflow = {
        "1": {"class_type": "PWLoadPretrainedPrompts", "inputs": {"prompt_name": BUNDLE_FILE}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}},
    }
    history = comfy.run(workflow)
    text = json.dumps(history["outputs"]["2"])
    assert "RPP pretrained prompts for 'tiny'" in text
    bundle, summary = _node(comfy, "PWLoadPretrainedPrompts").execute(prompt_name=BUNDLE_FILE)
    assert summary.startswith("RPP pretrained prompts") and bundle.config == saved_bundle.bundle.config
    workflow["1"]["inputs"]["prompt_name"] = "absent.safetensors"
    with pytest.raises(WorkflowError):
        comfy.run(workflow)


def test_cancel_keeps_a_checkpoint_and_the_rerun_resumes(comfy, inference_vlm, comfy_base):
    import comfy.model_management as mm

    args = {"steps": 3, "seed": 7, "qkv_prompts": "shared", "soft_label_weight": 0.0, "save_name": "pw-test-cancel"}
    checkpoints = comfy_base / "output" / "promptweave" / "checkpoints"
    before = set(checkpoints.glob("pw-test-cancel-*")) if checkpoints.is_dir() else set()
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _pretrain(comfy, inference_vlm, **args)
    finally:
        mm.interrupt_current_processing(False)
    created = set(checkpoints.glob("pw-test-cancel-*")) - before
    assert len(created) == 1
    state = comfy.pack_module("prompt_modules.core.artifacts").read_metadata(next(iter(created)))
    assert json.loads(state["promptweave.step"]) == 1  # stopped after the first step
    bundle, _plot, summary = _pretrain(comfy, inference_vlm, **args)
    assert "steps: 3" in summary and bundle.info["steps"] == 3
    assert (comfy_base / "models" / "promptweave" / "pw-test-cancel.safetensors").is_file()


def test_bad_inputs_name_node_input_and_fix(comfy, mods, inference_vlm, tmp_path, comfy_base):
    with pytest.raises(ValueError, match=r"PWPretrainPrompts: input 'path': .*need at least 2 sub-folders"):
        _pretrain(comfy, inference_vlm, source="folder", path=str(tmp_path))
    with pytest.raises(ValueError, match=r"PWPretrainPrompts: input 'vlm': got str"):
        _pretrain(comfy, "not a model")
    with pytest.raises(ValueError, match=r"PWPretrainPrompts: input 'depth': there is nothing to pretrain"):
        _pretrain(comfy, inference_vlm, depth=0)
    with pytest.raises(ValueError, match=r"PWPretrainPrompts: input 'save_name': .*unsafe"):
        _pretrain(comfy, inference_vlm, save_name="../escape")
    dcar = comfy_base / "models" / "promptweave" / "pw-test-rpp-not-a-bundle.safetensors"
    vlm = mods.vlm.VisionLanguageModel("tiny", seed=0)
    mods.dp.save_dual_prompt(mods.dp.DualPrompt.for_vlm(vlm, mods.dp.DualPromptConfig(bank_size=0)), dcar)
    with pytest.raises(ValueError, match=r"PWLoadPretrainedPrompts: input 'prompt_name': .*expected a 'rpp'"):
        _node(comfy, "PWLoadPretrainedPrompts").execute(prompt_name=dcar.name)


def test_train_dual_prompt_node_starts_from_pretrained_prompts(comfy, mods, inference_vlm, saved_bundle):
    """PWTrainDualPrompt's optional pretrained_prompts input: the dual prompt starts from the bundle (one step at a
    negligible learning rate keeps it there), and a bundle of another VLM is refused naming the input."""
    args = {"vlm": inference_vlm, "source": "world", "path": "", "steps": 1, "batch_size": 4, "learning_rate": 1e-6,
            "seed": 0, "n_text": 2, "n_visual": 2, "depth": 2, "save_name": ""}
    with torch.inference_mode():
        plain, _ = _node(comfy, "PWTrainDualPrompt").execute(**args)
        started, _ = _node(comfy, "PWTrainDualPrompt").execute(**args, pretrained_prompts=saved_bundle.bundle)
    expected = saved_bundle.bundle.deep_prompt_tensors("text")[0]
    assert torch.allclose(started.prompts.text_ctx("text").detach(), expected, atol=1e-4)
    assert not torch.allclose(plain.prompts.text_ctx("text").detach(), expected, atol=1e-4)
    other = mods.vlm.VisionLanguageModel(mods.vlm.VLMConfig(name="other"), seed=1)
    with pytest.raises(ValueError, match=r"PWTrainDualPrompt: input 'pretrained_prompts': .*'other'"):
        _node(comfy, "PWTrainDualPrompt").execute(**{**args, "vlm": other}, pretrained_prompts=saved_bundle.bundle)


def test_folder_source_with_class_map_shots_and_a_teacher(comfy, mods, inference_vlm, tmp_path, monkeypatch):
    """Issue 33: the folder source's optional class_map (WordNet id -> name, ImageNet's LOC_synset_mapping.txt) and
    shots reach the library's FolderClassSource (images at the VLM's size), and the optional teacher (another VLM,
    e.g. a larger CLIP, as in the RPP paper) gives the soft labels; bad values name class_map and teacher."""
    module = comfy.pack_module("nodes.nodes_pretraining")
    calls, real = [], module.pretrain_bundle
    monkeypatch.setattr(module, "pretrain_bundle", lambda *a, **k: calls.append((a, k, real(*a, **k))) or calls[-1][2])
    root = tmp_path / "train"
    classes = {"n01440764": ("tench, Tinca tinca", 3), "n01443537": ("goldfish, Carassius auratus", 3),
               "n01484850": ("great white shark, white shark, man-eater", 1)}
    for i, (wnid, (_, count)) in enumerate(classes.items()):
        (root / wnid).mkdir(parents=True)
        for k in range(count):
            Image.new("RGB", (50 + k, 37), (80 * i, 200 - 60 * i, 40 * k)).save(root / wnid / f"{wnid}_{k}.JPEG")
    mapping = tmp_path / "LOC_synset_mapping.txt"
    mapping.write_text("".join(f"{wnid} {names}\n" for wnid, (names, _) in classes.items()))
    with torch.inference_mode():  # as a loader node hands it over
        teacher = mods.vlm.VisionLanguageModel(mods.vlm.VLMConfig(name="teacher", embed_dim=48, image_size=32), seed=3)
    args = {"source": "folder", "path": str(root), "class_map": str(mapping), "shots": 2, "soft_label_weight": 1.0}
    bundle, _, summary = _pretrain(comfy, inference_vlm, teacher=teacher, **args)
    (_, data, _), kwargs, (result, _) = calls[-1]
    assert data.class_names == ["tench", "goldfish", "great white shark"] and data.size == inference_vlm.image_size
    assert len(data) == 2 + 2 + 1 and data.short_classes == {"n01484850": 1}
    assert "shots: 2 per class; 1 class(es) with fewer, used with all they have: n01484850 (1)" in summary
    assert kwargs["teacher"] is teacher and bundle.info["teacher"] == "teacher"
    assert "soft-label teacher: teacher" in summary
    _pretrain(comfy, inference_vlm, **args)  # no teacher connected: the VLM itself, as before
    _, kwargs, (itself, _) = calls[-1]
    assert kwargs["teacher"] is None and itself.parts["soft"] != result.parts["soft"]

    def expect(name, message, **overrides):
        with pytest.raises(ValueError, match=rf"PWPretrainPrompts: input '{name}': {message}.*Fix: "):
            _pretrain(comfy, inference_vlm, **{**args, **overrides})

    expect("class_map", r"class-name mapping file .*absent.txt does not exist", class_map=str(tmp_path / "absent.txt"))
    mapping.write_text("n01440764 tench\nn01443537\n")
    expect("class_map", r"class-name mapping .*line 2: 'n01443537' has an id but no name")
    mapping.write_text("n01440764 tench\nn01443537 goldfish\n")
    expect("class_map", r"class-name mapping .* has no entry for class folder .*'n01484850'")
    expect("teacher", r"got str", teacher="a larger CLIP")
