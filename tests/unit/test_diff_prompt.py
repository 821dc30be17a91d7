"""Diff-Prompt library: shapes of each stage, losses that decrease on a small set, save/resume per stage, the
bundle, per-sample deep prompts, datasets and their errors (tiny models built from configs)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from promptweave.prompt_modules.core.artifacts import ArtifactError, BackboneMismatchError, ConfigError
from promptweave.prompt_modules.core.deep_prompts import encode_image_prompted, encode_text_prompted
from promptweave.prompt_modules.core.vlm import VisionLanguageModel, VLMConfig
from promptweave.prompt_modules.diff_prompt import (
    DiffPrompt,
    DiT,
    DiTConfig,
    FolderGroundingSource,
    MaskVAE,
    MaskVAEConfig,
    PromptConfig,
    PromptSlots,
    StaticPromptGrounder,
    TensorGroundingSource,
    ddim_sample,
    dense_image_features,
    load_bundle,
    load_diff_prompt,
    save_bundle,
    train_diff_prompt,
    train_dit,
    train_mask_vae,
    train_prompts,
    zero_shot_ground,
)
from promptweave.prompt_modules.world.sources import WorldGroundingSource, evaluation_set

VAE_CFG = MaskVAEConfig(mask_size=32, block_out_channels=(8, 16, 16), norm_num_groups=8)
DIT_CFG = DiTConfig(hidden=32, depth=1, heads=2, lr=1e-3)
PROMPT_CFG = PromptConfig(ddim_steps=4, adapter_channels=4, adapter_features=16, head_hidden=16, lr=3e-3)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def vlm():
    return VisionLanguageModel("tiny", seed=0)


@pytest.fixture(scope="module")
def small_set():
    """Eight world samples as a fixed training set (the 'small set' the losses must decrease on)."""
    data = WorldGroundingSource("train").from_seeds(range(8), pick_seed=0)
    return TensorGroundingSource(data.images, data.masks, data.texts)


@pytest.fixture(scope="module")
def stages(vlm, small_set):
    vae = train_mask_vae(small_set, VAE_CFG, steps=3, batch_size=8, progress=False).model
    dit = train_dit(vlm, vae, small_set, DIT_CFG, steps=3, batch_size=8, progress=False).model
    return vae, dit


def _decreases(losses: list[float], k: int = 5) -> bool:
    return float(np.mean(losses[-k:])) < 0.9 * float(np.mean(losses[:k]))


# ----- configs ----------------------------------------------------------------------------------------------------
def test_configs_validate_and_round_trip():
    assert VAE_CFG.latent_size == 8 and MaskVAEConfig().latent_size == 8
    assert PromptConfig(ddim_steps=10).resolved_keep_steps(4) == (3, 5, 7, 9)
    assert PromptConfig(ddim_steps=4).resolved_keep_steps(4) == (0, 1, 2, 3)
    assert PromptConfig(ddim_steps=5, keep_steps=(1, 4)).resolved_keep_steps(2) == (1, 4)
    with pytest.raises(ValueError, match="keep_steps"):
        PromptConfig(ddim_steps=5, keep_steps=(4, 1))
    with pytest.raises(ValueError, match="at least 4 DDIM steps"):
        PromptConfig(ddim_steps=3).resolved_keep_steps(4)
    with pytest.raises(ValueError, match="divisible by norm_num_groups"):
        MaskVAEConfig(block_out_channels=(6, 8), norm_num_groups=4)
    with pytest.raises(ValueError, match="unknown PromptConfig fields"):
        PromptConfig.from_dict({"n_generatd": 2})
    assert PromptConfig.from_dict(PROMPT_CFG.to_dict()) == PROMPT_CFG
    assert MaskVAEConfig.from_dict(VAE_CFG.to_dict()) == VAE_CFG


# ----- stage 1 -----------------------------------------------------------------------------------------------------
def test_mask_vae_shapes_and_errors(small_set):
    vae = MaskVAE(VAE_CFG)
    masks = torch.nn.functional.interpolate(small_set.masks[:, None], size=32)
    z = vae.encode(masks)
    assert z.shape == (8, 4, 8, 8)
    out = vae.decode(z).detach()
    assert out.shape == (8, 1, 32, 32) and float(out.min()) >= 0 and float(out.max()) <= 1
    with pytest.raises(ValueError, match=r"masks \[B, 1, 32, 32\], got \(8, 1, 64, 64\)"):
        vae.encode(small_set.masks[:, None])


@pytest.mark.slow
def test_mask_vae_loss_decreases(small_set):
    result = train_mask_vae(small_set, VAE_CFG, steps=30, batch_size=8, progress=False)
    assert len(result.losses) == 30 and _decreases(result.losses)


# ----- stage 2 -----------------------------------------------------------------------------------------------------
def test_dit_shapes_adaln_zero_and_ddim(vlm):
    dit = DiT(dataclasses.replace(DIT_CFG, cond_dim=vlm.embed_dim))
    z = torch.randn(3, 4, 8, 8)
    f = torch.randn(3, vlm.embed_dim)
    eps = dit(z, torch.tensor([0, 5, 99]), f, f)
    assert eps.shape == z.shape and torch.count_nonzero(eps) == 0  # adaLN-Zero: the output layer starts at zero
    with pytest.raises(ValueError, match="latents"):
        dit(torch.randn(3, 4, 4, 4), torch.tensor([0]), f, f)
    torch.nn.init.normal_(dit.final.weight, std=0.1)
    res = ddim_sample(dit, f, f, steps=6, keep=(1, 3, 5), noise=torch.randn(3, 4, 8, 8))
    assert res.kept.shape == (3, 3, 4, 8, 8) and len(res.timesteps) == 6 and res.timesteps[0] == 99
    assert torch.allclose(res.kept[-1], res.final, atol=1e-5)  # at the last step the predicted z_0 is the result
    noisy = ddim_sample(dit, f, f, steps=6, keep=(1,), kept="latent", noise=torch.randn(3, 4, 8, 8))
    assert noisy.kept.shape == (1, 3, 4, 8, 8)
    with pytest.raises(ValueError, match="outside the 6 DDIM steps"):
        ddim_sample(dit, f, f, steps=6, keep=(6,))


@pytest.mark.slow
def test_dit_loss_decreases_and_ema(vlm, small_set, stages):
    vae, _ = stages
    result = train_dit(vlm, vae, small_set, DIT_CFG, steps=40, batch_size=8, progress=False)
    assert _decreases(result.losses)
    dit = result.model
    assert dit.config.cond_dim == vlm.embed_dim and dit.config.scaling_factor > 0
    assert not any(p.requires_grad for p in dit.parameters())
    assert all(p.requires_grad for p in vlm.parameters())  # the VLM's flags are restored after training


# ----- stage 3 -----------------------------------------------------------------------------------------------------
def test_prompt_slots_are_per_sample_and_empty_slots_change_nothing(vlm, small_set):
    images, texts = small_set.images[:2], small_set.texts[:2]
    empty = PromptSlots([], [])
    assert torch.allclose(
        encode_image_prompted(vlm, images, empty, layer_fn=empty.layer_fn), vlm.encode_image(images), atol=1e-5
    )
    assert torch.allclose(
        encode_text_prompted(vlm, texts, empty, layer_fn=empty.layer_fn), vlm.encode_text(texts), atol=1e-5
    )
    same = images[:1].expand(2, -1, -1, -1)
    tokens = [torch.randn(2, 3, vlm.vision_width) for _ in range(2)]
    slots = PromptSlots([], tokens)
    feats = encode_image_prompted(vlm, same, slots, layer_fn=slots.layer_fn)
    assert not torch.allclose(feats[0], feats[1], atol=1e-4)  # same image, different per-sample prompts
    tokens_same = [t[:1].expand(2, -1, -1) for t in tokens]
    slots = PromptSlots([], tokens_same)
    feats = encode_image_prompted(vlm, same, slots, layer_fn=slots.layer_fn)
    assert torch.allclose(feats[0], feats[1], atol=1e-5)
    dense = dense_image_features(vlm, images, slots, layer_fn=slots.layer_fn)
    assert dense.shape == (2, 64, vlm.embed_dim)


def test_diff_prompt_shapes_and_frozen_parts(vlm, small_set, stages):
    vae, dit = stages
    model = DiffPrompt.for_vlm(vlm, vae, dit, PROMPT_CFG)
    model.init_from_vlm(vlm, small_set.texts[:4], small_set.images[:4])
    assert model.keep_steps == (1, 3) and model.n_kept == 2
    out = model(vlm, small_set.images[:3], small_set.texts[:3], generator=torch.Generator().manual_seed(0))
    assert out.mask_logits.shape == (3, 32, 32) and out.boxes.shape == (3, 4)
    assert bool(((out.boxes >= 0) & (out.boxes <= 1)).all()) and bool((out.boxes[:, 2:] >= out.boxes[:, :2]).all())
    assert out.generated_masks.shape == (2, 3, 1, 32, 32)
    assert [t.shape for t in out.text_tokens] == [(3, 8, vlm.token_width)] * 2
    assert [t.shape for t in out.visual_tokens] == [(3, 8, vlm.vision_width)] * 2
    frozen = {id(p) for m in (model.vae, model.dit) for p in m.parameters()}
    assert not any(id(p) in frozen for p in model.trainable_parameters())
    again = model(vlm, small_set.images[:3], small_set.texts[:3], generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out.mask_logits, again.mask_logits)  # deterministic for a seed
    with pytest.raises(ValueError, match="3 images but 2 referring expressions"):
        model(vlm, small_set.images[:3], small_set.texts[:2])
    with pytest.raises(ValueError, match="empty"):
        model(vlm, small_set.images[:1], ["  "])
    ids = model.text_prompt_token_ids(vlm, small_set.images[:2], small_set.texts[:2])
    assert ids.shape == (2, 8) and bool((ids < 49406).all())


@pytest.mark.slow
def test_prompt_stage_loss_decreases_and_only_prompts_train(vlm, small_set, stages):
    vae, dit = stages
    vlm_before = {k: v.clone() for k, v in vlm.clip.state_dict().items()}
    result = train_prompts(vlm, vae, dit, small_set, PROMPT_CFG, steps=30, batch_size=8, progress=False)
    assert _decreases(result.losses)
    model = result.model
    assert all(torch.equal(v, vlm.clip.state_dict()[k]) for k, v in vlm_before.items())
    assert all(
        torch.equal(a, b) for a, b in zip(model.vae.state_dict().values(), vae.state_dict().values(), strict=True)
    )
    assert all(
        torch.equal(a, b) for a, b in zip(model.dit.state_dict().values(), dit.state_dict().values(), strict=True)
    )


def test_no_global_ablation_and_static_baselines(vlm, small_set, stages):
    vae, dit = stages
    ablation = DiffPrompt.for_vlm(vlm, vae, dit, dataclasses.replace(PROMPT_CFG, n_global=0))
    full = DiffPrompt.for_vlm(vlm, vae, dit, PROMPT_CFG)
    count = lambda m: sum(p.numel() for p in m.trainable_parameters())  # noqa: E731
    assert count(full) - count(ablation) == 4 * 2 * (vlm.token_width + vlm.vision_width)
    out = ablation(vlm, small_set.images[:2], small_set.texts[:2])
    assert out.text_tokens[0].shape == (2, 4, vlm.token_width)
    from promptweave.prompt_modules.core.deep_prompts import DeepPromptConfig

    coop = StaticPromptGrounder(
        vlm, DeepPromptConfig(n_text=8, n_visual=0, text_depth=1, visual_depth=0), head_hidden=16, mask_size=32
    )
    assert coop(vlm, small_set.images[:2], small_set.texts[:2]).mask_logits.shape == (2, 32, 32)
    zs = zero_shot_ground(vlm, small_set.images[:2], small_set.texts[:2], mask_size=32)
    assert zs.boxes.shape == (2, 4) and zs.mask_logits.shape == (2, 32, 32)


# ----- save / resume per stage ------------------------------------------------------------------------------------
def _stop_at(k):
    return lambda step, total, loss: False if step >= k else None


def test_vae_stage_resumes_exactly(small_set, tmp_path):
    full = train_mask_vae(small_set, VAE_CFG, steps=4, batch_size=4, progress=False)
    ckpt = tmp_path / "vae.state.safetensors"
    part = train_mask_vae(
        small_set, VAE_CFG, steps=4, batch_size=4, progress=False, checkpoint_path=ckpt, callback=_stop_at(2)
    )
    assert part.interrupted and part.steps_done == 2 and ckpt.is_file()
    resumed = train_mask_vae(small_set, VAE_CFG, steps=4, batch_size=4, progress=False, checkpoint_path=ckpt)
    assert resumed.losses == pytest.approx(full.losses, rel=1e-5)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_dit_stage_resumes_exactly_with_ema(vlm, small_set, stages, tmp_path):
    vae, _ = stages
    full = train_dit(vlm, vae, small_set, DIT_CFG, steps=4, batch_size=4, progress=False)
    ckpt = tmp_path / "dit.state.safetensors"
    part = train_dit(
        vlm, vae, small_set, DIT_CFG, steps=4, batch_size=4, progress=False, checkpoint_path=ckpt, callback=_stop_at(2)
    )
    assert part.interrupted
    resumed = train_dit(vlm, vae, small_set, DIT_CFG, steps=4, batch_size=4, progress=False, checkpoint_path=ckpt)
    assert resumed.losses == pytest.approx(full.losses, rel=1e-5)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)  # the EMA weights too


@pytest.mark.slow
def test_prompt_stage_resumes_exactly(vlm, small_set, stages, tmp_path):
    vae, dit = stages
    full = train_prompts(vlm, vae, dit, small_set, PROMPT_CFG, steps=4, batch_size=4, progress=False)
    ckpt = tmp_path / "prompt.state.safetensors"
    part = train_prompts(
        vlm,
        vae,
        dit,
        small_set,
        PROMPT_CFG,
        steps=4,
        batch_size=4,
        progress=False,
        checkpoint_path=ckpt,
        callback=_stop_at(2),
    )
    assert part.interrupted
    resumed = train_prompts(
        vlm, vae, dit, small_set, PROMPT_CFG, steps=4, batch_size=4, progress=False, checkpoint_path=ckpt
    )
    assert resumed.losses == pytest.approx(full.losses, rel=1e-4)
    for a, b in zip(full.model.trainable_parameters(), resumed.model.trainable_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


# ----- the bundle -------------------------------------------------------------------------------------------------
def test_bundle_grows_stage_by_stage_and_round_trips(vlm, small_set, stages, tmp_path):
    vae, dit = stages
    path = tmp_path / "bundle.safetensors"
    save_bundle(path, vae=vae)
    assert load_bundle(path).stages == ("vae",) and load_bundle(path).backbone == "any"
    with pytest.raises(ArtifactError, match=r"holds only the stage\(s\) \['vae'\].*\['dit', 'prompt'\]"):
        load_diff_prompt(path)
    save_bundle(path, vae=vae, dit=dit, backbone=vlm.name)
    bundle = load_bundle(path)
    assert bundle.stages == ("vae", "dit") and bundle.backbone == "tiny"
    assert bundle.dit.config == dit.config
    model = train_prompts(vlm, vae, dit, small_set, PROMPT_CFG, steps=2, batch_size=4, progress=False).model
    save_bundle(path, model=model)
    loaded = load_diff_prompt(path, vlm)
    assert loaded.config == model.config and loaded.keep_steps == model.keep_steps
    a = model(vlm, small_set.images[:2], small_set.texts[:2], generator=torch.Generator().manual_seed(1))
    b = loaded(vlm, small_set.images[:2], small_set.texts[:2], generator=torch.Generator().manual_seed(1))
    assert torch.allclose(a.mask_logits, b.mask_logits, atol=1e-5) and torch.allclose(a.boxes, b.boxes, atol=1e-6)
    other = VisionLanguageModel(VLMConfig(name="other", embed_dim=32), seed=0)
    with pytest.raises(BackboneMismatchError, match="trained for the VLM 'tiny'"):
        load_diff_prompt(path, other)
    from promptweave.prompt_modules.core.artifacts import read_metadata

    meta = read_metadata(path)
    assert meta["promptweave.method"] == "diff_prompt" and '"prompt"' in meta["promptweave.stages"]


def test_a_non_bundle_is_refused(tmp_path):
    from promptweave.prompt_modules.core.vlm import save_vlm

    path = tmp_path / "vlm.safetensors"
    save_vlm(VisionLanguageModel("tiny"), path)
    with pytest.raises(ArtifactError, match="expected a 'diff_prompt' artifact"):
        load_bundle(path)


# ----- the recipe -------------------------------------------------------------------------------------------------
RECIPE = dict(
    vae_config=VAE_CFG,
    dit_config=DIT_CFG,
    prompt_config=PROMPT_CFG,
    vae_steps=2,
    dit_steps=2,
    prompt_steps=2,
    batch_size=4,
    seed=1,
    progress=False,
)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_the_recipe_decides_batch_sizes_and_resumes_from_a_partial_bundle(vlm, small_set, tmp_path):
    seen = []
    full = train_diff_prompt(vlm, small_set, callback=lambda step, total, loss: seen.append((step, total)), **RECIPE)
    assert seen == [(k, 6) for k in range(1, 7)]  # one count over the three stages
    assert full.settings == {
        "vae": {"steps": 2, "batch_size": 32, "seed": 1},  # the Mask-VAE and the DiT take at least 32 samples
        "dit": {"steps": 2, "batch_size": 32, "seed": 1},
        "prompt": {"steps": 2, "batch_size": 4, "seed": 1},
    }
    assert [len(v) for v in full.losses.values()] == [2, 2, 2] and len(full.all_losses) == 6
    assert full.bundle.stages == ("vae", "dit", "prompt") and isinstance(full.model, DiffPrompt)
    path = tmp_path / "bundle.safetensors"
    first = train_diff_prompt(vlm, small_set, stages=["vae"], bundle_path=path, **RECIPE)
    assert first.model is None and load_bundle(path).stages == ("vae",)
    train_diff_prompt(vlm, small_set, stages=["dit"], bundle_path=path, **RECIPE)  # the VAE from the bundle file
    assert load_bundle(path).stages == ("vae", "dit")
    last = train_diff_prompt(vlm, small_set, stages=["prompt"], previous=load_bundle(path), bundle_path=path, **RECIPE)
    assert _same_weights(last.model, full.model)  # stage by stage = one run
    assert _same_weights(load_diff_prompt(path, vlm), full.model)


def test_the_recipe_refuses_a_plan_that_cannot_work_and_stops_when_asked(vlm, small_set, stages, tmp_path):
    vae, dit = stages
    partial = tmp_path / "vae.safetensors"
    save_bundle(partial, vae=vae)
    with_dit = tmp_path / "dit.safetensors"
    save_bundle(with_dit, vae=vae, dit=dit, backbone=vlm.name)
    other = VisionLanguageModel(VLMConfig(name="other"), seed=1)
    plans = {
        "stages": dict(stages=["dit", "vae"]),
        "previous": dict(stages=["prompt"]),
        "init_prompts": dict(stages=["vae"], init_prompts=str(tmp_path / "rpp.safetensors")),
    }
    for field, plan in plans.items():
        with pytest.raises(ConfigError) as err:
            train_diff_prompt(vlm, small_set, **plan, **RECIPE)
        assert err.value.field == field, (field, str(err.value))
    with pytest.raises(ConfigError, match=r"the bundle holds only \['vae'\]") as err:
        train_diff_prompt(vlm, small_set, stages=["prompt"], previous=load_bundle(partial), **RECIPE)
    assert err.value.field == "stages"
    with pytest.raises(ConfigError, match="trained with the VLM 'tiny', not 'other'") as err:
        train_diff_prompt(other, small_set, stages=["prompt"], previous=load_bundle(with_dit), **RECIPE)
    assert err.value.field == "vlm"
    target = tmp_path / "stopped.safetensors"
    stop_at_3 = lambda step, total, loss: step < 3  # noqa: E731
    stopped = train_diff_prompt(vlm, small_set, bundle_path=target, callback=stop_at_3, **RECIPE)
    assert stopped.interrupted and stopped.model is None and stopped.bundle.stages == ("vae",)
    assert [len(v) for v in stopped.losses.values()] == [2, 1]  # stopped after the DiT's first step
    assert load_bundle(target).stages == ("vae",)


# ----- datasets ---------------------------------------------------------------------------------------------------
def test_world_source_and_evaluation_set():
    batch = WorldGroundingSource().batch(0, 0, 4)
    assert batch.images.shape == (4, 3, 64, 64) and batch.masks.shape == (4, 64, 64) and len(batch.texts) == 4
    for mask, box in zip(batch.masks, batch.boxes, strict=True):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        expected = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float() / 64
        assert torch.allclose(box, expected)
    test = evaluation_set("test", 3)
    assert test.texts == evaluation_set("test", 3).texts
    comp = evaluation_set("compositional", 3)
    assert comp.images.shape[0] == 3 and all(t.startswith("the ") for t in comp.texts)


def _write(folder, name, size=(16, 16), mask_size=None, text="the red square"):
    image = np.zeros((*size[::-1], 3), np.uint8)
    image[4:10, 4:10] = (255, 0, 0)
    Image.fromarray(image).save(folder / f"{name}.png")
    ms = mask_size or size
    mask = np.zeros(ms[::-1], np.uint8)
    mask[2:6, 2:6] = 255
    Image.fromarray(mask).save(folder / f"{name}_mask.png")
    if text is not None:
        (folder / f"{name}.txt").write_text(text)


def test_folder_source_and_its_errors(tmp_path):
    _write(tmp_path, "a")
    _write(tmp_path, "b", size=(20, 12))
    source = FolderGroundingSource(tmp_path, size=32)
    batch = source.batch(0, 0, 2)
    assert batch.images.shape == (2, 3, 32, 32) and batch.masks.shape == (2, 32, 32)
    assert sorted(batch.texts) == ["the red square"] * 2
    _write(tmp_path, "c", mask_size=(8, 8))
    with pytest.raises(ValueError, match=r"the mask c_mask.png is 8x8 but its image c.png is 16x16"):
        FolderGroundingSource(tmp_path)
    (tmp_path / "c_mask.png").unlink()
    with pytest.raises(ValueError, match="c.png has no mask"):
        FolderGroundingSource(tmp_path)
    _write(tmp_path, "c", text="  \n")
    with pytest.raises(ValueError, match="c.txt is empty"):
        FolderGroundingSource(tmp_path)


def test_tensor_source_errors():
    images, masks = torch.rand(2, 3, 16, 16), torch.zeros(2, 16, 16)
    masks[:, 4:8, 4:8] = 1
    with pytest.raises(ValueError, match="the masks are 8x8 but the images 16x16"):
        TensorGroundingSource(images, masks[:, :8, :8], ["a", "b"])
    with pytest.raises(ValueError, match="2 images, 2 masks and 1 expressions"):
        TensorGroundingSource(images, masks, ["a"])
    with pytest.raises(ValueError, match="empty referring expression"):
        TensorGroundingSource(images, masks, ["a", " "])
    with pytest.raises(ValueError, match="empty mask"):
        TensorGroundingSource(images, torch.zeros(2, 16, 16), ["a", "b"])


def test_bench_without_worldclip_is_a_clear_stop(monkeypatch):
    import promptweave.prompt_modules.world.models as models
    from promptweave.bench import grounding

    def missing(*args, **kwargs):
        raise ArtifactError("the world backbone weights/worldclip.safetensors is missing")

    monkeypatch.delenv("PW_BENCH_VLM", raising=False)
    monkeypatch.setattr(models, "load_worldclip", missing)
    with pytest.raises(SystemExit, match="PW_BENCH_VLM=tiny"):
        grounding.load_backbone()
    monkeypatch.setenv("PW_BENCH_VLM", "tiny")
    assert grounding.load_backbone()[0].name == "tiny"


def test_a_scene_without_a_unique_expression_is_replaced_by_the_next_one():
    """Scene 88939 holds two identical crimson circles, so no expression picks out one object: the batch takes
    the next scene instead of failing (it stopped a full grounding benchmark run once)."""
    from promptweave.prompt_modules.world.dataset import render_batch

    assert not render_batch([88939])["scenes"][0].referring
    batch = WorldGroundingSource("train").from_seeds([88939, 5])
    substitute = render_batch([88940])
    assert torch.equal(batch.images[0], substitute["image"][0])
    assert batch.texts[0] in {text for _, text in substitute["scenes"][0].referring}
    assert batch.masks.shape == (2, 64, 64) and batch.masks[0].sum() > 0


# ----- RPP pretrained prompts as the starting point --------------------------------------------------------------
def test_global_prompts_start_from_pretrained_prompts_by_one_config_switch(vlm, small_set, stages, tmp_path):
    from promptweave.prompt_modules.diff_prompt.model import init_diff_prompt_from_bundle
    from promptweave.prompt_modules.pretraining import RPPConfig, RPPPrompts, save_pretrained_prompts

    vae, dit = stages
    rpp = RPPPrompts.for_vlm(vlm, RPPConfig(n_text=3, n_visual=3, text_depth=2, visual_depth=2), seed=3)
    path = save_pretrained_prompts(rpp, tmp_path / "rpp.safetensors", vlm)
    seen = rpp.shared_hidden(vlm)  # what the first two blocks of each tower see at the prompt positions
    model = DiffPrompt.for_vlm(vlm, vae, dit, PROMPT_CFG)
    plain = [p.detach().clone() for p in model.global_prompts.text]
    assert init_diff_prompt_from_bundle(model, path, vlm) == {"text": 2, "visual": 2}
    for tower in ("text", "visual"):
        for layer in range(2):
            copied = getattr(model.global_prompts, tower)[layer][:3].detach()
            assert torch.allclose(copied, seen[tower][layer], atol=1e-4), (tower, layer)
    assert torch.equal(model.global_prompts.text[0][3], plain[0][3])  # the bundle has 3 tokens, the model 4
    assert all(torch.equal(model.global_prompts.text[i], plain[i]) for i in range(2, len(plain)))  # deeper layers
    # the config switch: train_prompts starts there
    result = train_prompts(vlm, vae, dit, small_set, dataclasses.replace(PROMPT_CFG, init_from=str(path)), steps=1,
                           batch_size=4, progress=False)
    scratch = train_prompts(vlm, vae, dit, small_set, PROMPT_CFG, steps=1, batch_size=4, progress=False)
    gap = lambda m: float((m.global_prompts.text[1][:3].detach() - seen["text"][1]).norm())  # noqa: E731
    assert gap(result.model) < 0.1 * gap(scratch.model)
    with pytest.raises(ValueError, match="no global prompts"):
        init_diff_prompt_from_bundle(DiffPrompt.for_vlm(vlm, vae, dit, dataclasses.replace(PROMPT_CFG, n_global=0)),
                                     path, vlm)
    other = VisionLanguageModel(VLMConfig(name="other"), seed=1)
    with pytest.raises(BackboneMismatchError, match="made for the VLM 'tiny'"):
        init_diff_prompt_from_bundle(model, path, other)


# ----- defaults for any VLM depth and image size (issue 33) ------------------------------------------------------
def test_default_depth_fits_any_tower_and_the_world_keeps_its_plan():
    """The automatic depth: every layer, at most the paper's 9 and at most the DDIM steps (one kept latent per
    prompted layer); the 4-layer world model keeps all 4 layers and keep steps 3, 5, 7, 9."""
    cfg = PromptConfig()
    assert cfg.depths(4, 4) == (4, 4) and cfg.resolved_keep_steps(4) == (3, 5, 7, 9)
    assert cfg.depths(12, 12) == (9, 9) and cfg.depths(12, 24) == (9, 9) and cfg.depths(32, 48) == (9, 9)
    assert PromptConfig(ddim_steps=5).depths(12, 12) == (5, 5)  # capped by the DDIM steps
    assert PromptConfig(ddim_steps=25, max_depth=None).depths(12, 24) == (12, 24)
    assert PromptConfig(ddim_steps=25, max_depth=None, n_generated=0).depths(24, 24) == (24, 24)
    assert PromptConfig(n_generated=0, max_depth=None).depths(24, 24) == (24, 24)  # nothing kept: no DDIM cap
    assert PromptConfig(keep_steps=(2, 5, 9)).depths(12, 12) == (3, 3)
    assert PromptConfig(text_depth=2).depths(12, 12) == (2, 9)
    resolved = PromptConfig().resolved(12, 12)
    assert (resolved.text_depth, resolved.visual_depth) == (9, 9)
    with pytest.raises(ConfigError, match="visual_depth 6 > the 4 vision layers") as err:
        PromptConfig(visual_depth=6).depths(4, 4)
    assert err.value.field == "visual_depth"
    with pytest.raises(ConfigError, match="12 prompted layers need at least 12 DDIM steps") as err:
        PromptConfig(text_depth=12).resolved_keep_steps(12)
    assert err.value.field == "ddim_steps"
    # a bundle written before the cap (no max_depth): automatic depths still mean every layer, as it was trained
    old = PromptConfig().to_dict()
    old.pop("max_depth")
    assert PromptConfig.from_dict(old).max_depth is None
    assert PromptConfig.from_dict(old).depths(10, 10) == (10, 10)


def test_mask_size_follows_the_image_size_within_bounds():
    from promptweave.prompt_modules.diff_prompt import mask_size_for_image

    assert [mask_size_for_image(s) for s in (32, 64, 96, 224, 336, 448)] == [64, 64, 96, 224, 224, 224]
    assert MaskVAEConfig.for_image_size(64) == MaskVAEConfig()  # the world's 64 px masks, as before
    paper = MaskVAEConfig.for_image_size(224)
    assert paper.mask_size == 224 and paper.latent_size == 28  # the paper's 224 mask -> 4 x 28 x 28 latent
    assert MaskVAEConfig.for_image_size(96, lr=5e-4).lr == 5e-4
    with pytest.raises(ConfigError) as err:
        MaskVAEConfig(mask_size=36)
    assert err.value.field == "mask_size"


def test_resolve_configs_applies_the_knobs_and_names_what_cannot_work(small_set, stages, tmp_path):
    from promptweave.prompt_modules.diff_prompt import resolve_configs

    vae, dit = stages
    deep = VisionLanguageModel(VLMConfig(name="deep12", vision_layers=12, text_layers=12), seed=0)
    big = VisionLanguageModel(VLMConfig(name="big", image_size=96, patch_size=16), seed=0)
    v, d, p = resolve_configs(deep)
    assert v.mask_size == 64 and p.depths(12, 12) == (9, 9)  # valid for 12 layers out of the box
    assert resolve_configs(big)[0].mask_size == 96  # masks sized from the image
    v, d, p = resolve_configs(deep, ddim_steps=12, prompted_layers=12, lr=2e-4, mask_size=32)
    assert (v.mask_size, v.lr, d.lr, p.lr, p.ddim_steps, p.text_depth, p.visual_depth) == (
        32, 2e-4, 2e-4, 2e-4, 12, 12, 12
    )
    tiny = VisionLanguageModel("tiny", seed=0)  # 2 layers per tower: prompted_layers is capped per tower
    assert resolve_configs(tiny, prompted_layers=2)[2].text_depth == 2
    previous = load_bundle(save_bundle(tmp_path / "b.safetensors", vae=vae, dit=dit, backbone="tiny"))
    assert resolve_configs(tiny, ("prompt",), previous)[0].mask_size == 32  # the bundle's Mask-VAE
    bad = {
        "ddim_steps": dict(vlm=deep, ddim_steps=4, prompted_layers=6),  # 6 prompted layers, 4 DDIM steps
        "prompted_layers": dict(vlm=deep, prompted_layers=13),
        "lr": dict(vlm=deep, lr=float("nan")),
        "mask_size": dict(vlm=deep, mask_size=40),
        "text_depth": dict(vlm=deep, prompt_config=PromptConfig(text_depth=14)),
        "keep_steps": dict(vlm=deep, prompt_config=PromptConfig(keep_steps=(8, 9)), prompted_layers=3),
    }
    for field, kwargs in bad.items():
        with pytest.raises(ConfigError) as err:
            resolve_configs(**kwargs)
        assert err.value.field == field, (field, str(err.value))
    with pytest.raises(ConfigError, match="works on 32 px masks, not 64") as err:
        resolve_configs(tiny, ("dit", "prompt"), previous, mask_size=64)
    assert err.value.field == "mask_size"
    resolve_configs(deep, ("vae",), ddim_steps=4, prompted_layers=6)  # prompt knobs matter only to stage 'prompt'
    # refused before anything trains
    with pytest.raises(ConfigError) as err:
        train_diff_prompt(
            deep, small_set, ddim_steps=3, prompted_layers=6, bundle_path=tmp_path / "x.safetensors", **RECIPE
        )
    assert err.value.field == "ddim_steps" and not (tmp_path / "x.safetensors").exists()


@pytest.mark.slow
def test_a_12_layer_vlm_trains_all_three_stages_with_the_defaults_and_grounds(small_set, tmp_path):
    """Issue 33: the default config used to fail on any VLM with 11 or more layers ("12 prompted layers need at
    least 12 DDIM steps (got 10)"). A 12-layer VLM now trains the three stages with the defaults and grounds."""
    deep = VisionLanguageModel(VLMConfig(name="deep12", vision_layers=12, text_layers=12), seed=0)
    deep.eval().requires_grad_(False)
    path = tmp_path / "deep12.safetensors"
    run = train_diff_prompt(
        deep, small_set, vae_steps=1, dit_steps=1, prompt_steps=2, batch_size=2, bundle_path=path, progress=False
    )
    model = run.model
    assert isinstance(model, DiffPrompt) and [len(v) for v in run.losses.values()] == [1, 1, 2]
    assert (model.text_depth, model.visual_depth, model.n_kept) == (9, 9, 9)  # the paper's 9 prompted layers
    assert model.keep_steps == tuple(range(1, 10)) and model.mask_size == 64
    loaded = load_diff_prompt(path, deep)
    assert (loaded.config.text_depth, loaded.config.visual_depth) == (9, 9)  # the bundle records the depths
    out = loaded(deep, small_set.images[:2], small_set.texts[:2], generator=torch.Generator().manual_seed(0))
    assert out.mask_logits.shape == (2, 64, 64) and out.boxes.shape == (2, 4)
    assert out.generated_masks.shape == (9, 2, 1, 64, 64)
    assert len(out.text_tokens) == len(out.visual_tokens) == 9
    assert torch.isfinite(out.mask_logits).all() and out.masks_at(48, 80).shape == (2, 48, 80)


@pytest.mark.slow
def test_the_masks_follow_the_vlm_image_size(small_set, tmp_path):
    """A 96 px VLM: the recipe's Mask-VAE and DiT work on 96 px masks (12 x 12 latents), and the grounder's masks
    come out at 96 px (the world's images are resized to the VLM's size)."""
    big = VisionLanguageModel(VLMConfig(name="big", image_size=96, patch_size=16), seed=0)
    big.eval().requires_grad_(False)
    run = train_diff_prompt(big, small_set, vae_steps=1, dit_steps=1, prompt_steps=1, batch_size=2, progress=False)
    assert run.bundle.vae.config.mask_size == 96 and run.bundle.dit.config.latent_size == 12
    out = run.model(big, small_set.images[:2], small_set.texts[:2])
    assert out.mask_logits.shape == (2, 96, 96) and out.generated_masks.shape[-1] == 96
