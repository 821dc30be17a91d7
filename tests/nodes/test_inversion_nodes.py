"""Prompt inversion nodes in the real ComfyUI (in-process): train, load, invert, regenerate, clear errors."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import load_api_workflow
from PIL import Image

from promptweave.headless import PACK_DIR
from promptweave.prompt_modules.core.artifacts import read_metadata
from promptweave.testing.defaults import TINY_SD15_NAME

pytestmark = pytest.mark.comfyui
SHIPPED = PACK_DIR / "weights" / "inverter-pixels-world.safetensors"


def bow_embedder(texts):
    out = torch.zeros(len(texts), 384)
    for row, text in enumerate(texts):
        for w in text.lower().split():
            out[row, int(hashlib.md5(w.encode()).hexdigest(), 16) % 384] += 1.0
    return F.normalize(out + 1e-6, dim=-1)


@pytest.fixture
def fast_targets(comfy, monkeypatch):
    """MiniLM is exercised by the library tests; here a bag-of-words stand-in keeps the node tests fast."""
    monkeypatch.setattr(comfy.pack_module("prompt_modules.inversion.targets"), "_DEFAULT", bow_embedder)


def _node(comfy, node_id):
    return comfy.nodes.NODE_CLASS_MAPPINGS[node_id]


def _pairs(n=8):
    images = torch.zeros(n, 32, 32, 3)
    words = ["red", "green", "blue", "yellow"]
    texts = []
    for i in range(n):
        images[i, 8:24, 8:24, i % 3] = 1.0
        texts.append(f"a {words[i % 4]} square")
    return images, "\n".join(texts)


def _train(comfy, **kw):
    images, prompts = _pairs()
    args = dict(backbone="pixels", filename="test-inverter", dataset_folder="", images=images, prompts=prompts,
                vocab_size=50, epochs=2, batch_size=4, learning_rate=1e-3, hidden_width=16, curriculum=True,
                checkpoint_every=3, seed=0)
    args.update(kw)
    return _node(comfy, "PWTrainPromptInverter").execute(**args)


def test_nodes_are_registered(comfy):
    assert {"PWLoadPromptInverter", "PWPromptInversion", "PWTrainPromptInverter"} <= set(comfy.pack_node_ids())


def test_train_load_and_invert_with_conditioning(comfy, comfy_base, fast_targets):
    inverter, curve, path = _train(comfy)
    target = comfy_base / "models" / "promptweave" / "test-inverter.safetensors"
    assert path == str(target) and target.is_file()
    assert curve.shape == (1, 256, 512, 3)
    assert not list((comfy_base / "output" / "promptweave" / "checkpoints").glob("test-inverter-*"))
    loaded = _node(comfy, "PWLoadPromptInverter").execute(inverter_name="test-inverter.safetensors")[0]
    _, clip, _ = comfy.nodes.NODE_CLASS_MAPPINGS["CheckpointLoaderSimple"]().load_checkpoint(TINY_SD15_NAME)
    images, _ = _pairs(3)
    with torch.inference_mode():
        prompt, kws, emb, cond = _node(comfy, "PWPromptInversion").execute(
            image=images, inverter=loaded, clip=clip, top_k=3, threshold=0.5, use_dakl=True)
    assert len(prompt.splitlines()) == 3 and all(line.strip() for line in prompt.splitlines())
    assert len(kws.splitlines()) == 3 and ":" in kws
    assert emb.shape == (3, 384) and torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-4)
    assert cond[0][0].shape == (3, 77, 768) and cond[0][1]["pooled_output"].shape[0] == 3


def test_bad_images_are_clear_errors(comfy, fast_targets):
    inverter = _train(comfy, filename="bad-images")[0]
    node = _node(comfy, "PWPromptInversion")
    for image, what in ((torch.zeros(1, 8, 8, 4), "RGBA"), (torch.zeros(1, 8, 8, 1), "grayscale"),
                        (torch.zeros(0, 8, 8, 3), "empty")):
        with pytest.raises(ValueError, match=f"PWPromptInversion: input 'image': .*{what}.*Fix:"):
            node.execute(image=image, inverter=inverter)


def test_inverter_for_another_backbone_is_refused(comfy):
    inv_mod = comfy.pack_module("prompt_modules.inversion")
    vlm_mod = comfy.pack_module("prompt_modules.core.vlm")
    vocab = inv_mod.Vocabulary(["red", "star"])
    world = inv_mod.PromptInverter(inv_mod.InverterConfig(backbone="vlm:world", feature_dim=256, hidden=(8,)), vocab)
    node = _node(comfy, "PWPromptInversion")
    with pytest.raises(ValueError, match="PWPromptInversion: input 'vlm': .*needs a VLM"):
        node.execute(image=torch.rand(1, 16, 16, 3), inverter=world)
    with pytest.raises(ValueError, match="trained on 'vlm:world', the connected encoder is 'vlm:tiny'"):
        node.execute(image=torch.rand(1, 16, 16, 3), inverter=world, vlm=vlm_mod.VisionLanguageModel("tiny", seed=0))


def test_white_box_inverter_is_refused_for_other_worldgen_weights(comfy):
    """WorldGen releases share one config: the encoder name's weights fingerprint tells them apart."""
    inv_mod = comfy.pack_module("prompt_modules.inversion")
    vlm = comfy.pack_module("prompt_modules.core.vlm").VisionLanguageModel("tiny", seed=0)
    worldgen = comfy.pack_module("prompt_modules.world.worldgen")
    config = worldgen.WorldGenConfig.from_dict({**worldgen.WORLDGEN_PRESETS["tiny"].to_dict(), "backbone": "tiny"})
    release_a, release_b = worldgen.WorldGen(config, seed=0), worldgen.WorldGen(config, seed=1)
    encoder = inv_mod.WorldGenEncoder(release_a, vlm)
    vocab = inv_mod.Vocabulary(["red", "star"])

    def inverter(backbone):
        cfg = inv_mod.InverterConfig(backbone=backbone, feature_dim=encoder.dim, hidden=(8,))
        return inv_mod.PromptInverter(cfg, vocab).eval()

    node = _node(comfy, "PWPromptInversion")
    image = torch.rand(2, 64, 64, 3)
    prompt, _, emb, _ = node.execute(image=image, inverter=inverter(encoder.name), vlm=vlm, worldgen=release_a)
    assert emb.shape == (2, 384) and len(prompt.splitlines()) == 2
    other = inv_mod.WorldGenEncoder(release_b, vlm).name
    with pytest.raises(ValueError, match=f"trained on '{encoder.name}', the connected encoder is '{other}'"):
        node.execute(image=image, inverter=inverter(encoder.name), vlm=vlm, worldgen=release_b)
    with pytest.raises(ValueError, match="trained on 'worldgen'.*retrain it"):  # saved before the fingerprint
        node.execute(image=image, inverter=inverter("worldgen"), vlm=vlm, worldgen=release_a)


def test_bad_training_inputs_write_nothing(comfy, comfy_base, tmp_path, fast_targets, monkeypatch):
    folder = comfy_base / "models" / "promptweave"
    before = set(folder.iterdir())
    with pytest.raises(ValueError, match="PWTrainPromptInverter: input 'dataset_folder': .*no image.png"):
        _train(comfy, filename="never", dataset_folder=str(tmp_path), images=None)
    with pytest.raises(ValueError, match="PWTrainPromptInverter: input 'prompts': 2 prompt lines for 8 images"):
        _train(comfy, filename="never", prompts="a\nb")
    with pytest.raises(ValueError, match="PWTrainPromptInverter: input 'vlm'"):
        _train(comfy, filename="never", backbone="vlm")

    import comfy.model_management as mm

    def interrupt():
        raise mm.InterruptProcessingException()

    with monkeypatch.context() as patch:
        patch.setattr(mm, "throw_exception_if_processing_interrupted", interrupt)
        with pytest.raises(mm.InterruptProcessingException):
            _train(comfy, filename="never")
    assert set(folder.iterdir()) == before
    # interrupted at step 1, before the first periodic checkpoint (every 3 steps): that step is kept for the rerun
    kept = list((comfy_base / "output" / "promptweave" / "checkpoints").glob("never-*"))
    assert len(kept) == 1 and json.loads(read_metadata(kept[0])["promptweave.step"]) == 1
    kept[0].unlink()


def test_corrupt_inverter_file_is_a_clear_error(comfy, comfy_base):
    (comfy_base / "models" / "promptweave" / "broken-inverter.safetensors").write_bytes(b"\x01" * 64)
    with pytest.raises(ValueError, match="PWLoadPromptInverter: input 'inverter_name': .*not a valid safetensors"):
        _node(comfy, "PWLoadPromptInverter").execute(inverter_name="broken-inverter.safetensors")


@pytest.mark.skipif(not SHIPPED.is_file(), reason="the shipped pixel inverter is not built")
def test_invert_and_regenerate_workflow(comfy):
    history = comfy.run(load_api_workflow("inversion_regenerate.json"))
    files = comfy.output_files(history)
    saved = comfy.output_files({"outputs": {"11": history["outputs"]["11"]}})  # the regenerated images
    shown = comfy.output_files({"outputs": {"14": history["outputs"]["14"]}})  # the input, previewed beside them
    assert len(saved) == 2 and len(shown) == 2 and all(f.is_file() for f in files)
    assert history["outputs"]["12"]["text"] and history["outputs"]["13"]["text"]  # prompt and keywords shown


def test_clip_vision_features_reach_the_inverter(comfy):
    """A CLIP_VISION input is used through its ``encode_image(...)["image_embeds"]`` (shape-only stand-in)."""
    inv_mod = comfy.pack_module("prompt_modules.inversion")

    class FakeClipVision:
        def encode_image(self, image):
            assert image.shape[-1] == 3  # ComfyUI layout [B, H, W, C]
            return {"image_embeds": image.mean(dim=(1, 2)).repeat(1, 4)}  # [B, 12]

    vocab = inv_mod.Vocabulary(["red", "star"])
    inverter = inv_mod.PromptInverter(inv_mod.InverterConfig(backbone="clip_vision:12", feature_dim=12, hidden=(8,)),
                                      vocab).eval()
    prompt, kws, emb, cond = _node(comfy, "PWPromptInversion").execute(
        image=torch.rand(2, 16, 16, 3), inverter=inverter, clip_vision=FakeClipVision())
    assert emb.shape == (2, 384) and cond is None and len(prompt.splitlines()) == 2
    other = inv_mod.PromptInverter(inv_mod.InverterConfig(backbone="clip_vision:1024", feature_dim=1024, hidden=(8,)),
                                   vocab)
    with pytest.raises(ValueError, match="trained on 'clip_vision:1024', the connected encoder is 'clip_vision:12'"):
        _node(comfy, "PWPromptInversion").execute(image=torch.rand(1, 16, 16, 3), inverter=other,
                                                  clip_vision=FakeClipVision())


def test_train_on_generated_images_workflow(comfy, comfy_base, fast_targets):
    history = comfy.run(load_api_workflow("inversion_train_generated.json"))
    def files(node: str) -> list:
        return comfy.output_files({"outputs": {node: history["outputs"][node]}})

    assert len(files("12")) == 1 and len(files("16")) == 4  # loss curve, 4 regenerated images
    assert len(files("20")) == 4 and all(f.is_file() for f in comfy.output_files(history))  # the training images
    assert (comfy_base / "models" / "promptweave" / "inverter-from-generated.safetensors").is_file()


def test_a_checkpoint_is_only_resumed_by_a_run_with_the_same_settings(comfy, comfy_base):
    common = comfy.pack_module("nodes._common")
    a = common.run_checkpoint("run", ["vlm:x", {"lr": 0.001}, [1, 2]])
    assert a == common.run_checkpoint("run", ["vlm:x", {"lr": 0.001}, [1, 2]])
    assert a != common.run_checkpoint("run", ["vlm:x", {"lr": 0.002}, [1, 2]])
    assert a.parent == comfy_base / "output" / "promptweave" / "checkpoints" and a.name.startswith("run-")
    folder = common.run_checkpoint("a/b", [1], folder=True)
    assert folder.is_dir() and folder.name.startswith("a_b-")
    key = common.tensors_key({"w": torch.ones(2)})
    assert key == common.tensors_key({"w": torch.ones(2)}) != common.tensors_key({"w": torch.zeros(2)})


@pytest.fixture(scope="module")
def sd15(comfy):
    with torch.inference_mode():  # as ComfyUI's executor loads it
        return _node(comfy, "CheckpointLoaderSimple")().load_checkpoint(TINY_SD15_NAME)


def test_sd_unet_white_box_trains_inverts_and_names_missing_inputs(comfy, comfy_base, sd15, fast_targets):
    model, clip, vae = sd15
    with torch.inference_mode():
        inverter, _, path = _train(comfy, backbone="sd_unet", filename="sd-white-box", model=model, vae=vae,
                                   clip=clip)
        assert inverter.backbone == "sd-unet:768:320" and inverter.config.feature_dim == 320 + 320
        loaded = _node(comfy, "PWLoadPromptInverter").execute(inverter_name="sd-white-box.safetensors")[0]
        images, _ = _pairs(3)
        node = _node(comfy, "PWPromptInversion")
        prompt, _, emb, cond = node.execute(image=images, inverter=loaded, clip=clip, model=model, vae=vae)
        assert len(prompt.splitlines()) == 3 and emb.shape == (3, 384) and cond[0][0].shape[0] == 3
        with pytest.raises(ValueError, match="PWPromptInversion: input 'model': .*'sd_unet' encoder needs the "
                                             "checkpoint's MODEL.*Fix: connect the MODEL output"):
            node.execute(image=images, inverter=loaded, clip=clip, vae=vae)
        inv_mod = comfy.pack_module("prompt_modules.inversion")
        sd2 = inv_mod.PromptInverter(inv_mod.InverterConfig(backbone="sd-unet:1024:320-640-1280-1280",
                                                            feature_dim=4480, hidden=(8,)), loaded.vocabulary)
        with pytest.raises(ValueError, match="trained on 'sd-unet:1024:320-640-1280-1280', the connected encoder "
                                             "is 'sd-unet:768:320'"):
            node.execute(image=images, inverter=sd2, clip=clip, model=model, vae=vae)
        unet = model.model.diffusion_model
        unet.in_channels = 9  # as an inpainting checkpoint's U-Net
        try:
            with pytest.raises(ValueError, match="input 'model': the U-Net takes 9 input channels, not the VAE's 4 "
                                                 r"\(an inpainting checkpoint\?\).*Fix: use a text-to-image"):
                node.execute(image=images, inverter=loaded, clip=clip, model=model, vae=vae)
        finally:
            unet.in_channels = 4
        with pytest.raises(ValueError, match="PWTrainPromptInverter: input 'vae': .*needs the checkpoint's VAE"):
            _train(comfy, backbone="sd_unet", filename="sd-no-vae", model=model, clip=clip)
    assert not (comfy_base / "models" / "promptweave" / "sd-no-vae.safetensors").exists()


def test_sd_unet_features_in_comfyui_equal_the_diffusers_white_box(comfy, sd15):
    """ComfyUI's LDM-layout U-Net and the same weights in diffusers give the same pooled features (so the same
    backbone name is honest): the tiny SD15 checkpoint (one level) and a two-level U-Net with a downsampler."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfy.ops import disable_weight_init
    from diffusers import UNet2DConditionModel

    inv_mod, tiny = comfy.pack_module("prompt_modules.inversion"), comfy.pack_module("testing.tiny")
    latents, context = torch.randn(3, 4, 8, 8), torch.randn(1, 5, 768)
    ldm = inv_mod.LDMUNetEncoder(sd15[0].model.diffusion_model, 768)
    with tiny._seeded(0):  # the diffusers U-Net the checkpoint was written from (fp16 there)
        reference = UNet2DConditionModel(**tiny.SD15_UNET_CONFIG).half().float().eval()
    diffusers_enc = inv_mod.UNetEncoder(reference)
    assert ldm.name == diffusers_enc.name == "sd-unet:768:320" and ldm.dim == diffusers_enc.dim
    assert torch.allclose(ldm.encode_latents(latents, context), diffusers_enc.encode_latents(latents, context),
                          atol=1e-5)

    config = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16, attention_head_dim=4,
                  norm_num_groups=32)
    torch.manual_seed(0)
    two_level = UNet2DConditionModel(**config).eval()
    unet_config = {k: v for k, v in sd15[0].model.model_config.unet_config.items() if k != "dtype"}
    unet_config.update(model_channels=32, channel_mult=[1, 2], num_res_blocks=[1, 1], transformer_depth=[1, 0],
                       transformer_depth_output=[1, 1, 0, 0], context_dim=16, num_heads=4)
    comfy_unet = UNetModel(**unet_config, operations=disable_weight_init)
    comfy_unet.load_state_dict(tiny.diffusers_unet_to_ldm(two_level.state_dict(), config), strict=True)
    ldm2, ref2 = inv_mod.LDMUNetEncoder(comfy_unet.eval(), 16), inv_mod.UNetEncoder(two_level)
    latents, context = torch.randn(2, 4, 8, 8), torch.randn(1, 5, 16)
    assert ldm2.name == ref2.name == "sd-unet:16:32-64" and ldm2.level_ends == [2, 3]
    assert torch.allclose(ldm2.encode_latents(latents, context), ref2.encode_latents(latents, context), atol=1e-5)


def test_train_from_a_manifest_and_its_errors(comfy, comfy_base, tmp_path, fast_targets, monkeypatch):
    """Issue 33: dataset_folder also takes a manifest file (here a Hugging Face imagefolder ``metadata.jsonl``), read
    through the library's ``load_pairs`` at the encoder's resolution; a manifest's errors, and a parquet manifest
    without pyarrow, name dataset_folder and the fix, and write nothing."""
    module = comfy.pack_module("nodes.nodes_inversion")
    calls, real = [], module.load_pairs
    monkeypatch.setattr(module, "load_pairs", lambda *a, **k: calls.append((a, k, real(*a, **k))) or calls[-1][2])
    images, prompts = _pairs(6)
    (tmp_path / "train").mkdir()
    rows = []
    for i, (image, prompt) in enumerate(zip(images, prompts.splitlines(), strict=True)):
        Image.fromarray((image.numpy() * 255).astype(np.uint8)).save(tmp_path / "train" / f"{i}.png")
        rows.append({"file_name": f"train/{i}.png", "text": prompt, "seed": i})
    manifest = tmp_path / "metadata.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    vlm_mod = comfy.pack_module("prompt_modules.core.vlm")
    vlm = vlm_mod.VisionLanguageModel(vlm_mod.VLMConfig(name="small32", image_size=32), seed=0)
    inverter, _, path = _train(comfy, backbone="vlm", vlm=vlm, filename="manifest-inverter",
                               dataset_folder=str(manifest), images=None, prompts="")
    (source, size), _, (pixels, texts) = calls[-1]
    assert (source, size) == (str(manifest), 32) and pixels.shape == (6, 3, 32, 32)  # the VLM's resolution
    assert texts == prompts.splitlines() and inverter.backbone == "vlm:small32"
    assert Path(path) == comfy_base / "models" / "promptweave" / "manifest-inverter.safetensors"

    folder = comfy_base / "models" / "promptweave"
    before = set(folder.iterdir())
    csv = tmp_path / "pairs.csv"
    csv.write_text("image,prompt\ntrain/0.png,a red square\ntrain/absent.png,a blue square\n")
    with pytest.raises(ValueError, match=r"PWTrainPromptInverter: input 'dataset_folder': manifest .*pairs.csv, line "
                                         r"3: image .*absent.png does not exist.*Fix: point it at a folder"):
        _train(comfy, filename="never", dataset_folder=str(csv), images=None)
    parquet = tmp_path / "metadata.parquet"
    parquet.write_bytes(b"PAR1")
    for name in ("pyarrow", "pyarrow.parquet", "pandas"):  # as where neither is installed
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ValueError, match=r"PWTrainPromptInverter: input 'dataset_folder': reading the parquet "
                                         r"manifest .*needs pyarrow.*Fix: run `pip install pyarrow`"):
        _train(comfy, filename="never", dataset_folder=str(parquet), images=None)
    assert set(folder.iterdir()) == before
