"""IPL adaptation nodes in the real ComfyUI (in-process): a short adaptation of the tiny SD15 checkpoint, the LoRA
loaded by ComfyUI's own code with zero dropped keys, the example workflows, and clear errors without partial files."""

from __future__ import annotations

import json
import logging
import sys

import pytest
import torch

from promptweave.headless import PACK_DIR
from promptweave.prompt_modules.core.artifacts import read_metadata
from promptweave.testing.defaults import TINY_SD15_NAME

pytestmark = pytest.mark.comfyui
NODES = {"PWTrainLatentMapper", "PWLoadLatentMapper", "PWAdaptModel"}
FAST = dict(
    source_text="photo",
    target_text="neon sign",
    method="ipl",
    steps=2,
    rank=2,
    lambda_domain=1.0,
    seed=0,
    mapper_steps=2,
    batch_size=1,
    learning_rate=0.0016,
    adaptive_layers=0,
    width=64,
    height=64,
    sample_steps=1,
)


def _node(comfy, node_id):
    return comfy.nodes.NODE_CLASS_MAPPINGS[node_id]


@pytest.fixture(scope="module")
def tiny_vlm(comfy):
    return comfy.pack_module("prompt_modules.core.vlm").VisionLanguageModel("tiny", seed=0)


@pytest.fixture(scope="module")
def sd15(comfy):
    with torch.inference_mode():  # as ComfyUI's executor loads it
        return _node(comfy, "CheckpointLoaderSimple")().load_checkpoint(TINY_SD15_NAME)


def _adapt(comfy, sd15, vlm, **kw):
    model, clip, vae = sd15
    args = dict(FAST, model=model, clip=clip, vae=vae, vlm=vlm, lora_name="pw-test-ipl")
    args.update(kw)
    with torch.inference_mode():  # every node runs inside ComfyUI's inference mode
        return _node(comfy, "PWAdaptModel").execute(**args)


@pytest.fixture(scope="module")
def adapted(comfy, sd15, tiny_vlm):
    return _adapt(comfy, sd15, tiny_vlm)


def test_nodes_are_registered_with_docs(comfy):
    assert NODES <= set(comfy.pack_node_ids())
    for node_id in NODES:
        assert (PACK_DIR / "web" / "docs" / f"{node_id}.md").is_file()
    info = comfy.node_info("PWAdaptModel")
    assert "mapper" in info["input"]["optional"] and info["output_name"] == ["model", "lora_path", "loss_plot"]


def test_adaptation_saves_a_lora_comfyui_loads_without_dropping_keys(comfy, comfy_base, sd15, adapted, caplog):
    import comfy.lora
    import comfy.utils

    model, lora_path, plot = adapted
    path = comfy_base / "models" / "loras" / "pw-test-ipl.safetensors"
    assert lora_path == str(path) and path.is_file()
    assert plot.shape == (1, 2 * 256, 512, 3)  # mapper curve over the LoRA curve
    assert not list((comfy_base / "output" / "promptweave" / "checkpoints").glob("adapt-*"))  # cleaned up
    meta = read_metadata(path)
    assert meta["promptweave.method"] == "ipl_lora" and meta["promptweave.rank"] == "2"
    assert meta["promptweave.alpha"] == "2.0" and meta["promptweave.target"] == "sd-unet"
    assert meta["promptweave.base_fingerprint"].startswith("sd-unet:") and meta["ss_network_dim"] == "2"
    lora = comfy.utils.load_torch_file(str(path), safe_load=True)
    key_map = comfy.lora.model_lora_keys_unet(sd15[0].model, {})
    with caplog.at_level(logging.WARNING):
        patches = comfy.lora.load_lora(lora, key_map)
    assert not [r for r in caplog.records if "not loaded" in r.getMessage()]
    n_layers = len([k for k in lora if k.endswith(".lora_down.weight")])
    assert len(lora) == 3 * n_layers and len(patches) == n_layers == 32  # every tensor reached a U-Net weight
    assert all(k.endswith(".weight") and "attn" in k for k in patches)


def test_adapted_model_equals_lora_loader_and_changes_the_output(comfy, sd15, adapted):
    model, _, _ = adapted
    base, clip, _ = sd15
    with torch.inference_mode():
        loaded = _node(comfy, "LoraLoaderModelOnly")().load_lora_model_only(base, "pw-test-ipl.safetensors", 1.0)[0]
    assert set(model.patches) == set(loaded.patches) and len(model.patches) == 32
    key = next(iter(model.patches))
    assert torch.equal(model.patches[key][0][1].weights[0], loaded.patches[key][0][1].weights[0])
    assert not base.patches  # the incoming MODEL is not modified


def test_adapt_then_sample_and_lora_loader_workflows(comfy, comfy_base, tiny_vlm, monkeypatch):
    worlds = comfy.pack_module("nodes.nodes_world")
    monkeypatch.setattr(worlds, "load_world_models", lambda: (tiny_vlm, None))  # the tiny VLM keeps it fast
    first = json.loads((PACK_DIR / "workflows" / "api" / "adaptation_adapt_and_sample.json").read_text())
    for key, value in {"steps": 2, "mapper_steps": 2, "sample_steps": 1, "batch_size": 1}.items():
        first["3"]["inputs"][key] = value
    files = comfy.output_files(comfy.run(first))
    assert len(files) == 3 and all(f.is_file() for f in files)  # 2 samples + loss plot
    assert (comfy_base / "models" / "loras" / "pw-ipl-neon.safetensors").is_file()
    second = json.loads((PACK_DIR / "workflows" / "api" / "adaptation_lora_loader.json").read_text())
    files = comfy.output_files(comfy.run(second))
    assert len(files) == 2 and all(f.is_file() for f in files)


def test_mapper_nodes_train_save_load_and_check_the_vlm(comfy, comfy_base, sd15, tiny_vlm):
    model, clip, vae = sd15
    with torch.inference_mode():
        mapper, plot = _node(comfy, "PWTrainLatentMapper").execute(
            model=model,
            clip=clip,
            vae=vae,
            vlm=tiny_vlm,
            source_text="photo",
            target_text="neon sign",
            steps=2,
            batch_size=2,
            lambda_domain=1.0,
            n_ctx=4,
            seed=0,
            width=64,
            height=64,
            sample_steps=1,
            save_name="pw-test-mapper",
        )
    assert plot.shape == (1, 256, 512, 3)
    assert (comfy_base / "models" / "promptweave" / "pw-test-mapper.safetensors").is_file()
    loaded = _node(comfy, "PWLoadLatentMapper").execute(mapper_name="pw-test-mapper.safetensors")[0]
    assert loaded.token_width == tiny_vlm.token_width and loaded.latent_dim == 256
    vlm_mod = comfy.pack_module("prompt_modules.core.vlm")
    wide = vlm_mod.VisionLanguageModel(vlm_mod.VLMConfig(name="wide", text_width=128, text_heads=2), seed=0)
    before = set((comfy_base / "models" / "loras").iterdir())
    with pytest.raises(ValueError, match=r"PWAdaptModel: input 'vlm': .*token width 64.*token width 128.*Fix:"):
        _adapt(comfy, sd15, wide, mapper=loaded, lora_name="never")
    out = _adapt(comfy, sd15, tiny_vlm, mapper=loaded, lora_name="pw-test-with-mapper")  # stage 1 skipped
    assert out[2].shape == (1, 256, 512, 3)
    assert set((comfy_base / "models" / "loras").iterdir()) - before == {
        comfy_base / "models" / "loras" / "pw-test-with-mapper.safetensors"
    }


def test_invalid_inputs_are_clear_errors_and_write_nothing(comfy, comfy_base, sd15, tiny_vlm, tmp_path, monkeypatch):
    import folder_paths

    loras = comfy_base / "models" / "loras"
    before = set(loras.iterdir())
    with pytest.raises(ValueError, match="PWAdaptModel: input 'target_text': the target text is empty. Fix:"):
        _adapt(comfy, sd15, tiny_vlm, target_text="   ", lora_name="never")
    with pytest.raises(ValueError, match="PWAdaptModel: input 'rank': must be at least 1, got 0"):
        _adapt(comfy, sd15, tiny_vlm, rank=0, lora_name="never")
    with pytest.raises(ValueError, match="PWAdaptModel: input 'vlm': got str, not a VLM"):
        _adapt(comfy, sd15, "not a vlm", lora_name="never")
    blocked = tmp_path / "loras-is-a-file"
    blocked.write_text("not a folder")
    real = folder_paths.get_folder_paths

    def fake(key):
        return [str(blocked)] if key == "loras" else real(key)

    monkeypatch.setattr(folder_paths, "get_folder_paths", fake)
    with pytest.raises(ValueError, match="PWAdaptModel: input 'lora_name': the output folder .* is not writable"):
        _adapt(comfy, sd15, tiny_vlm, lora_name="never")
    monkeypatch.undo()
    assert set(loras.iterdir()) == before and blocked.read_text() == "not a folder"


def test_config_errors_name_the_node_input_not_the_config_field(comfy):
    config = comfy.pack_module("nodes.nodes_adaptation")._config
    mapper_inputs = {"mapper_steps": "steps", "mapper_batch": "batch_size"}
    texts = dict(source_text="photo", target_text="neon")
    with pytest.raises(ValueError, match="PWTrainLatentMapper: input 'batch_size': mapper_batch must be >= 2"):
        config("PWTrainLatentMapper", mapper_inputs, **texts, mapper_batch=1)
    with pytest.raises(ValueError, match="PWTrainLatentMapper: input 'steps': mapper_steps must be >= 0"):
        config("PWTrainLatentMapper", mapper_inputs, **texts, mapper_steps=-1)
    with pytest.raises(ValueError, match="input 'target_text': target_text equals source_text"):
        config("PWTrainLatentMapper", mapper_inputs, source_text="neon", target_text="Neon")
    with pytest.raises(ValueError, match="PWAdaptModel: input 'adaptive_layers': auto_layer_k must be >= 0"):
        config("PWAdaptModel", {"auto_layer_k": "adaptive_layers"}, **texts, auto_layer_k=-1)
    assert config("PWAdaptModel", {}, **texts).target_text == "neon"


def test_interrupted_adaptation_leaves_no_lora_and_resumes(comfy, comfy_base, sd15, tiny_vlm, monkeypatch):
    import comfy.model_management as mm

    calls = {"n": 0}
    real = mm.throw_exception_if_processing_interrupted

    def interrupt_at_third_step():
        caller = sys._getframe(1).f_locals.get("self")
        if type(caller).__name__ == "TrainingProgress":  # a training step (not model loading)
            calls["n"] += 1
        if calls["n"] == 3:
            raise mm.InterruptProcessingException()
        real()

    kw = dict(lora_name="pw-test-interrupted", steps=3, mapper_steps=2)
    with monkeypatch.context() as patch:
        patch.setattr(mm, "throw_exception_if_processing_interrupted", interrupt_at_third_step)
        with pytest.raises(mm.InterruptProcessingException):
            _adapt(comfy, sd15, tiny_vlm, **kw)
    assert not (comfy_base / "models" / "loras" / "pw-test-interrupted.safetensors").exists()
    runs = list((comfy_base / "output" / "promptweave" / "checkpoints").glob("adapt-*"))
    assert len(runs) == 1 and (runs[0] / "mapper.safetensors").is_file()  # stage 1 done, kept for the rerun
    _, path, plot = _adapt(comfy, sd15, tiny_vlm, **kw)
    assert (comfy_base / "models" / "loras" / "pw-test-interrupted.safetensors").is_file()
    assert not runs[0].exists()


def test_a_v_prediction_model_adapts_with_v_read_as_v_and_lcm_is_refused(comfy, sd15, tiny_vlm, monkeypatch):
    """A v-prediction MODEL (SD2.x 768-v, here the tiny SD1.5 switched by ComfyUI's own ModelSamplingDiscrete node)
    adapts, its U-Net read as v; sampling kinds with another target (LCM) are refused on the model input."""
    model, clip, vae = sd15
    patch = _node(comfy, "ModelSamplingDiscrete")()
    with torch.inference_mode():
        v_model = patch.patch(model, "v_prediction", False)[0]
        lcm_model = patch.patch(model, "lcm", False)[0]
    module = sys.modules[_node(comfy, "PWAdaptModel").__module__]
    seen = {}
    original = module.run_adaptation

    def spy(generator, *args, **kwargs):
        seen["prediction_type"] = generator.prediction_type
        return original(generator, *args, **kwargs)

    monkeypatch.setattr(module, "run_adaptation", spy)
    adapted_model = _adapt(comfy, (v_model, clip, vae), tiny_vlm, lora_name="pw-test-ipl-v")[0]
    assert seen["prediction_type"] == "v_prediction" and adapted_model is not None
    errors = comfy.pack_module("nodes._common")
    with pytest.raises(errors.NodeInputError, match="input 'model'.*not supported.*v-prediction"):
        _adapt(comfy, (lcm_model, clip, vae), tiny_vlm, lora_name="pw-test-ipl-lcm")
