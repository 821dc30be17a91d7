"""``promptweave.diffusers_api`` on the tiny pipeline (the examples in diffusers_examples/ run it end to end)."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from promptweave import diffusers_api as pw
from promptweave.prompt_modules.core.vlm import VisionLanguageModel
from promptweave.prompt_modules.world.models import WEIGHTS_DIR
from promptweave.testing.tiny import tiny_pipeline

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return tiny_pipeline(seed=0)


def test_every_public_name_exists_and_every_function_is_documented_and_typed():
    for name in pw.__all__:
        obj = getattr(pw, name)
        assert obj.__doc__, name
        if inspect.isfunction(obj) and obj.__module__ == pw.__name__:
            assert "return" in obj.__annotations__, name
            assert all(p in obj.__annotations__ for p in inspect.signature(obj).parameters if p != "pipeline_kwargs")


def test_the_module_never_shadows_the_diffusers_package():
    # run from the repository root, where a file named diffusers.py would win over the installed package
    code = "import diffusers, os; print(os.path.dirname(diffusers.__file__))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "site-packages" in out.stdout and not (ROOT / "diffusers.py").exists() and not (ROOT / "diffusers").exists()


def test_load_pipeline_refuses_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        pw.load_pipeline(tmp_path / "nowhere")


def test_load_pipeline_needs_a_folder_the_test_pipeline_lives_in_the_harness():
    with pytest.raises(ValueError, match="tiny_pipeline"):
        pw.load_pipeline(None)


def test_image_conversions_round_trip_and_refuse_bad_input():
    pixels = torch.rand(2, 3, 8, 8)
    images = pw.to_pil(pixels)
    assert [im.size for im in images] == [(8, 8), (8, 8)]
    back = pw.to_tensor(images)
    assert back.shape == (2, 3, 8, 8) and torch.allclose(back, pixels, atol=1 / 255)
    grey = Image.fromarray(np.zeros((4, 6), dtype=np.uint8), mode="L")
    assert pw.to_tensor(grey, size=16).shape == (1, 3, 16, 16)  # converted to RGB, resized
    with pytest.raises(ValueError, match="no images"):
        pw.to_tensor([])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        pw.to_tensor(torch.rand(3, 8, 8))


def test_learned_prompt_embeds_change_only_the_placeholder_positions(pipe, tmp_path):
    prompt = pw.new_learned_prompt(pipe, "watercolour painting", n_ctx=2)
    path = tmp_path / "p.safetensors"
    prompt.save(path)
    placeholder = prompt.config.placeholder
    a = pw.learned_prompt_embeds(pipe, path, f"a red star, {placeholder}")
    with torch.no_grad():
        prompt.vectors["clip_l"].add_(1.0)
    b = pw.learned_prompt_embeds(pipe, prompt, f"a red star, {placeholder}")
    assert a.shape == b.shape == (1, pipe.tokenizer.model_max_length, pipe.text_encoder.config.hidden_size)
    changed = (a - b).abs().amax(dim=-1)[0] > 1e-6
    first = int(changed.nonzero()[0])
    assert changed.any() and not changed[:first].any()  # tokens before the learned vectors are untouched
    image = pw.generate(pipe, a, steps=2, seed=0)
    assert image.size == (64, 64)  # the tiny pipeline's native side
    with pytest.raises(ValueError, match="at least one token"):
        pw.new_learned_prompt(pipe, "")


def test_encode_text_matches_the_pipeline(pipe):
    positive, negative = pw.encode_text(pipe, "a red star")
    ref, _ = pipe.encode_prompt("a red star", pipe.device, 1, False)
    assert torch.equal(positive, ref) and negative.shape == positive.shape


def test_invert_images_with_the_shipped_pixel_inverter_and_a_clear_error_without_the_vlm():
    path = WEIGHTS_DIR / "inverter-pixels-world.safetensors"
    if not path.is_file():
        pytest.skip("the shipped pixel inverter is missing")
    from promptweave.prompt_modules.world import render_batch, split_seed_range

    scenes = render_batch(range(split_seed_range("test").start, split_seed_range("test").start + 2))["image"]
    results = pw.invert_images(path, pw.to_pil(scenes))
    assert len(results) == 2 and all(r["prompt"] and r["keywords"] and r["embedding"].shape == (384,) for r in results)
    vlm_inverters = sorted(WEIGHTS_DIR.glob("inverter-vlm*.safetensors"))
    if vlm_inverters:
        with pytest.raises(ValueError, match="pass vlm="):
            pw.invert_images(vlm_inverters[0], scenes)


def test_a_white_box_inverter_trains_on_the_pipelines_unet_and_inverts_with_it(pipe):
    from promptweave.prompt_modules.inversion import InverterConfig, Vocabulary, prompt_targets, train_inverter

    images = torch.rand(6, 3, 32, 32)
    texts = ["a red star", "a blue ring", "a green cross"] * 2
    name, features = pw.white_box_features(pipe, images)
    assert name == f"sd-unet:{pipe.unet.config.cross_attention_dim}:32-64" and features.shape == (6, 32 + 64 + 64)
    from promptweave.prompt_modules.inversion import UNetEncoder

    context, _ = pipe.encode_prompt("", pipe.device, 1, False)
    chunked = UNetEncoder(pipe.unet, pipe.vae, batch_size=4)(images, context)  # 4 + 2: chunks change nothing
    assert torch.allclose(chunked, features, atol=1e-5)
    vocab = Vocabulary.build(texts, size=10)
    targets, labels = prompt_targets(texts, vocab, lambda t: torch.nn.functional.normalize(torch.randn(len(t), 384)))
    config = InverterConfig(backbone=name, feature_dim=features.shape[1], hidden=(16,), epochs=2, batch_size=3)
    inverter = train_inverter(features, targets, labels, config, vocab, texts=texts, progress=False).inverter
    results = pw.invert_images(inverter, images[:2], pipe=pipe)
    assert len(results) == 2 and results[0]["nearest"][0][0] in texts and results[0]["prompt"]
    expected = inverter.invert(features[:2])[0]["embedding"]  # the same features in training and in inversion
    assert torch.allclose(results[0]["embedding"], expected, atol=1e-5)
    with pytest.raises(ValueError, match="'sd-unet:.*' features: pass pipe="):
        pw.invert_images(inverter, images[:1])


def test_ground_needs_one_expression_per_image():
    from promptweave.prompt_modules.diff_prompt import DiffPrompt

    model = object.__new__(DiffPrompt)  # the check comes before the model runs
    with pytest.raises(ValueError, match="one expression per image"):
        pw.ground(model, None, torch.rand(2, 3, 8, 8), ["only one"])


def test_the_readme_calls_only_functions_that_exist():
    import re

    names = set(re.findall(r"\bpw\.(\w+)", (ROOT / "README.md").read_text(encoding="utf-8")))
    assert {"load_pipeline", "generate", "invert_images", "adapt_to_domain", "ground"} <= names
    assert all(name in pw.__all__ for name in names), sorted(names - set(pw.__all__))


def test_train_inverter_runs_the_node_recipe_on_pixels_and_on_vlm_features(tmp_path):
    """diffusers_api.train_inverter trains what Train Prompt Inverter trains, from PIL images and prompts."""
    from promptweave.prompt_modules.core.vlm import VisionLanguageModel
    from promptweave.prompt_modules.inversion import load_inverter

    generator = torch.Generator().manual_seed(0)
    images = pw.to_pil(torch.rand(6, 3, 32, 32, generator=generator))
    prompts = ["a red star", "a blue star", "a red square", "a blue square", "a green star", "a green square"]
    out = tmp_path / "inv.safetensors"
    inverter = pw.train_inverter(images, prompts, epochs=2, batch_size=4, vocab_size=8, out=out)
    assert inverter.backbone == "pixels" and out.is_file()
    assert load_inverter(out).backbone == "pixels"
    result = pw.invert_images(inverter, images[:2])
    assert len(result) == 2 and isinstance(result[0]["prompt"], str) and result[0]["prompt"]

    vlm = VisionLanguageModel("tiny", seed=0)
    on_vlm = pw.train_inverter(images, prompts, vlm=vlm, epochs=2, batch_size=4, vocab_size=8)
    assert on_vlm.backbone == f"vlm:{vlm.name}"
    assert len(pw.invert_images(on_vlm, images[:1], vlm=vlm)) == 1
    with pytest.raises(ValueError, match="one prompt per image"):
        pw.train_inverter(images, prompts[:5], epochs=1, batch_size=4)


def test_dcar_and_diff_prompt_train_from_python_with_the_node_recipes(tmp_path):
    """The training entries a ComfyUI user has (Train Dual Prompt, Train Diff-Prompt) are diffusers_api functions."""
    from promptweave.prompt_modules.core.vlm import VisionLanguageModel
    from promptweave.prompt_modules.diff_prompt import TensorGroundingSource

    vlm = VisionLanguageModel("tiny", seed=0)
    generator = torch.Generator().manual_seed(0)
    folder = tmp_path / "pairs"
    folder.mkdir()
    for i, (image, caption) in enumerate(zip(pw.to_pil(torch.rand(4, 3, 64, 64, generator=generator)),
                                             ["a red star", "a blue star", "a red square", "a blue square"],
                                             strict=True)):
        image.save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(caption)
    dual = pw.train_dual_prompt(vlm, pw.FolderSource(folder, size=vlm.image_size), steps=2, batch_size=4,
                                progress=False).dual
    path = pw.save_dual_prompt(dual, tmp_path / "dual.safetensors")
    assert pw.load_dual_prompt(path, vlm).backbone == vlm.name

    masks = torch.zeros(4, 64, 64)
    masks[:, 16:48, 16:48] = 1
    source = TensorGroundingSource(torch.rand(4, 3, 64, 64, generator=generator), masks, ["the square"] * 4)
    run = pw.train_diff_prompt(vlm, source, vae_steps=1, dit_steps=1, prompt_steps=1, batch_size=2,
                               bundle_path=tmp_path / "grounder.safetensors", progress=False)
    assert run.model is not None and (tmp_path / "grounder.safetensors").is_file()
    grounded = pw.ground(tmp_path / "grounder.safetensors", vlm, pw.to_pil(source.images[:1]), ["the square"])
    assert grounded[0].size == (64, 64)


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    from promptweave.testing.tiny import build_tiny_sdxl_pipeline

    return build_tiny_sdxl_pipeline(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl")


def test_load_pipeline_reads_sdxl_folders_and_names_what_it_cannot(sdxl_dir, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    pipe = pw.load_pipeline(sdxl_dir)
    assert isinstance(pipe, StableDiffusionXLPipeline) and pw.is_sdxl(pipe)
    other = tmp_path / "flux"
    other.mkdir()
    (other / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    with pytest.raises(ValueError, match="FluxPipeline.*StableDiffusionXLPipeline"):
        pw.load_pipeline(other)


@pytest.mark.slow
def test_ipl_adapts_an_sdxl_unet_with_its_added_conditioning_and_the_lora_loads_back(sdxl_dir, tmp_path):
    """SDXL's U-Net needs its pooled text embedding and size ids at every call (diffusers raises without them);
    the adapted LoRA covers every attention projection and changes the loaded U-Net's output."""
    from peft.tuners.lora import LoraLayer

    from promptweave.prompt_modules.adaptation import IPLConfig

    vlm = VisionLanguageModel("tiny", seed=0)
    pipe = pw.load_pipeline(sdxl_dir)
    config = IPLConfig(source_text="photo", target_text="neon sign", method="nada", steps=2, rank=2)
    path = pw.adapt_to_domain(pipe, vlm, tmp_path / "sdxl-neon.safetensors", prompt="a photo", source="photo",
                              target="neon sign", config=config, image_size=64, sample_steps=2)
    targets = [n for n, m in pipe.unet.named_modules() if n.endswith(("to_q", "to_k", "to_v", "to_out.0"))]
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500.0])
    context = torch.randn(1, 77, 64)
    added = {"text_embeds": torch.randn(1, 32), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        base = pipe.unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
        pipe.load_lora_weights(str(path))
        loaded = pipe.unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
    wrapped = [n for n, m in pipe.unet.named_modules() if isinstance(m, LoraLayer)]
    assert len(wrapped) == len(targets) == 8 * 2 * 4  # 8 transformer blocks (down 2, mid 2, up 4) x attn1/2 x q/k/v/out
    assert (loaded - base).abs().max() > 0
