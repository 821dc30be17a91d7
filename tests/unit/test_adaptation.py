"""IPL latent-mapper adaptation (library): mapper, prompts, both stages, NADA, layer selection, resume, exports."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import unittest.mock

import pytest
import torch
from torch import nn

from promptweave.prompt_modules.adaptation import (
    EqualLinear,
    IPLConfig,
    LatentMapper,
    PixelNorm,
    PromptEncoder,
    StableDiffusionGenerator,
    WorldGenGenerator,
    adapt_generator,
    encode_worldgen_latents,
    kohya_state_dict,
    ldm_to_diffusers_name,
    load_lora_native,
    load_mapper,
    merge_lora,
    run_adaptation,
    save_lora,
    save_mapper,
    sd_alphas_cumprod,
    sd_generator_from_diffusers,
    train_mapper,
)
from promptweave.prompt_modules.core.artifacts import (
    ArtifactError,
    BackboneMismatchError,
    ConfigError,
    meta_field,
    read_metadata,
)
from promptweave.prompt_modules.core.vlm import VisionLanguageModel, VLMConfig
from promptweave.prompt_modules.world import render_batch
from promptweave.prompt_modules.world.worldgen import WORLDGEN_PRESETS, WorldGen

FAST = dict(source_text="flat", target_text="neon sign", mapper_steps=4, mapper_batch=4, steps=3, batch_size=2)


@pytest.fixture(scope="module")
def vlm():
    torch.set_num_threads(1)
    return VisionLanguageModel("tiny", seed=0)


@pytest.fixture(scope="module")
def worldgen():
    return WorldGen(dataclasses.replace(WORLDGEN_PRESETS["tiny"], backbone="tiny"), seed=0)


@pytest.fixture(scope="module")
def pool(worldgen):
    return encode_worldgen_latents(worldgen, render_batch(range(12))["image"])


def _lora_close(a, b) -> bool:
    return all(torch.equal(a.down[k], b.down[k]) and torch.equal(a.up[k], b.up[k]) for k in a.down)


# ----- mapper -------------------------------------------------------------------------------------------------
def test_mapper_is_pixelnorm_plus_equalised_layers_with_lr_mul():
    mapper = LatentMapper(latent_dim=256, token_width=64, n_ctx=4)
    layers = list(mapper.mapping)
    assert isinstance(layers[0], PixelNorm)
    linear = layers[1:]
    assert len(linear) == 4 and all(isinstance(m, EqualLinear) for m in linear)  # 3 hidden + output
    assert [tuple(m.weight.shape) for m in linear] == [(512, 256), (512, 512), (512, 512), (256, 512)]
    assert all(m.lr_mul == 0.01 and m.scale == pytest.approx(0.01 / m.weight.shape[1] ** 0.5) for m in linear)
    # weights stored as N(0,1)/lr_mul: the effective weight has the N(0, 1/fan_in) scale
    assert linear[1].weight.std().item() == pytest.approx(100.0, rel=0.05)
    w = torch.randn(3, 256)
    out = mapper(w)
    assert out.shape == (3, 4, 64)
    assert torch.allclose(mapper(5.0 * w), out, atol=1e-5)  # PixelNorm: invariant to the code's scale
    with pytest.raises(ValueError, match=r"latent codes must be \[B, 256\]"):
        mapper(torch.randn(3, 255))


def test_config_rejects_bad_inputs():
    with pytest.raises(ValueError, match="target_text is empty"):
        IPLConfig(target_text="  ")
    with pytest.raises(ValueError, match="rank must be at least 1"):
        IPLConfig(target_text="neon", rank=0)
    with pytest.raises(ValueError, match="equals source_text"):
        IPLConfig(source_text="photo", target_text="Photo")
    with pytest.raises(ValueError, match="unknown method"):
        IPLConfig(target_text="neon", method="dreambooth")
    cfg = IPLConfig(target_text="neon", rank=8, alpha=4)
    assert cfg.scale == 0.5 and IPLConfig.from_dict(cfg.to_dict()) == cfg
    for bad, field_name in [  # errors as data: the field, not the message, says which value is wrong
        ({"target_text": " "}, "target_text"),
        ({"source_text": "Neon"}, "target_text"),
        ({"source_text": ""}, "source_text"),
        ({"method": "x"}, "method"),
        ({"rank": 0}, "rank"),
        ({"alpha": 0}, "alpha"),
        ({"n_ctx": 0}, "n_ctx"),
        ({"mapper_hidden": 0}, "mapper_hidden"),
        ({"mapper_layers": 0}, "mapper_layers"),
        ({"steps": -1}, "steps"),
        ({"mapper_batch": 1}, "mapper_batch"),
        ({"batch_size": 0}, "batch_size"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"auto_layer_k": -1}, "auto_layer_k"),
        ({"templates": ("no placeholder",)}, "templates"),
        ({"lambda_source": -1.0}, "lambda_source"),
    ]:
        with pytest.raises(ConfigError) as info:
            IPLConfig(**{"target_text": "neon", **bad})
        assert info.value.field == field_name, (bad, info.value)
    assert (cfg.mapper_lr, cfg.mapper_batch, cfg.lr, cfg.batch_size, cfg.ema_decay, cfg.lambda_domain) == (
        0.05,
        32,
        0.0016,
        2,
        0.99,
        1.0,
    )


def test_prompt_vectors_replace_the_context_tokens(vlm):
    cfg = IPLConfig(target_text="neon sign", add_base_feature=False)
    enc = PromptEncoder(vlm, "neon sign", cfg)
    with torch.no_grad():
        ctx = vlm.embed_tokens(vlm.tokenize(["x x x x"]))[:, 1:5]
        mine = enc.features(ctx)
        plain = vlm.encode_text(["x x x x neon sign"], normalize=False)
    assert torch.allclose(mine, plain, atol=1e-5)
    with_base = PromptEncoder(vlm, "neon sign", cfg.replace(add_base_feature=True))
    with torch.no_grad():
        assert torch.allclose(
            with_base.features(ctx), plain + vlm.encode_text(["a photo of a neon sign."], normalize=False), atol=1e-5
        )


def test_losses_and_per_step_batches(vlm, worldgen, pool):
    from promptweave.prompt_modules.adaptation import (
        contrastive_loss,
        directional_loss,
        domain_loss,
        image_specific_direction,
        step_seed,
        template_prompts,
    )
    from promptweave.prompt_modules.adaptation.data import step_codes

    assert template_prompts(" neon sign ", ("a {}.", "{} art")) == ["a neon sign.", "neon sign art"]
    assert step_seed(3, 2, 5) == 3 * 1_000_003 + 2 * 7_919_993 + 5  # the batches of every run so far
    gen = WorldGenGenerator(worldgen, pool)
    assert torch.equal(step_codes(gen, 4, 3, 1, 7), gen.sample_codes(4, step_seed(3, 1, 7)))
    feats = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    matched, shuffled = contrastive_loss(feats, feats, 10.0), contrastive_loss(feats, feats.roll(1, 0), 10.0)
    assert float(matched) < float(shuffled)  # eq. 2: each image with its own prompt
    assert float(domain_loss(feats[:1].expand(3, -1), feats[:1])) == pytest.approx(0.0, abs=1e-6)  # eq. 3
    d_text = image_specific_direction(feats[:2], 2.0 * feats[2:])  # eq. 4: normalised before the difference
    assert torch.allclose(d_text, feats[2:] - feats[:2], atol=1e-6)
    assert float(directional_loss(3.0 * d_text, d_text)) == pytest.approx(0.0, abs=1e-6)


# ----- WorldGen: both stages ------------------------------------------------------------------------------------------
def test_stage1_trains_the_mapper_and_saves_it(vlm, worldgen, pool, tmp_path):
    gen = WorldGenGenerator(worldgen, pool)
    result = train_mapper(gen, vlm, IPLConfig(**{**FAST, "mapper_steps": 12, "mapper_batch": 8}))
    assert len(result.losses) == 12 and all(torch.isfinite(torch.tensor(result.losses)))
    assert sum(result.losses[-3:]) < sum(result.losses[:3])  # contrastive + domain loss goes down
    path = save_mapper(result.trained, tmp_path / "m.safetensors")
    loaded = load_mapper(path, vlm)
    codes = gen.latent_code(gen.sample_codes(2, 0))
    assert torch.equal(loaded.mapper(codes), result.trained.mapper(codes))
    wide = VisionLanguageModel(VLMConfig(name="wide", text_width=128, text_heads=2), seed=0)
    with pytest.raises(BackboneMismatchError, match="token width 64.*'wide' \\(token width 128\\)"):
        load_mapper(path, wide)


def test_stage2_lora_on_the_worldgen_decoder(vlm, worldgen, pool):
    before = {k: v.clone() for k, v in worldgen.autoencoder.decoder.state_dict().items()}
    gen = WorldGenGenerator(worldgen, pool)
    assert gen.lora_targets == [n for n, m in worldgen.autoencoder.decoder.named_modules() if isinstance(m, nn.Conv2d)]
    cfg = IPLConfig(**FAST, ema_decay=0.5)
    result = run_adaptation(gen, vlm, cfg)
    assert result.mapper is not None and len(result.mapper_losses) == 4 and len(result.losses) == 3
    assert set(result.lora.down) == set(gen.lora_targets) and result.lora.rank == 4
    codes = gen.sample_codes(3, 123)
    with torch.no_grad():
        adapted = gen.generate(codes)
        with result.adapter.disabled():
            source = gen.generate(codes)
        original = worldgen.decode(codes)
    assert torch.allclose(source, original, atol=1e-6)  # adapters off = the frozen source generator
    assert (adapted - source).abs().max() > 1e-4
    # the toggle leaves the finished LoRA frozen and switched on again
    assert not any(p.requires_grad for p in result.adapter.parameters())
    assert not any(layer.disable_adapters for layer in result.adapter.layers.values())
    with torch.no_grad():
        assert torch.equal(gen.generate(codes), adapted)
    after = worldgen.autoencoder.decoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the user's model is never touched
    assert result.seconds_per_step > 0 and result.peak_memory_mb > 0


def test_lora_starts_as_the_identity(vlm, worldgen, pool):
    gen = WorldGenGenerator(worldgen, pool)
    result = adapt_generator(gen, vlm, IPLConfig(**{**FAST, "method": "nada", "steps": 0}))
    assert all(torch.count_nonzero(b) == 0 for b in result.lora.up.values())
    codes = gen.sample_codes(2, 0)
    with torch.no_grad():
        assert torch.equal(gen.generate(codes), worldgen.decode(codes))


def test_nada_baseline_needs_no_mapper_and_ipl_does(vlm, worldgen, pool):
    result = run_adaptation(WorldGenGenerator(worldgen, pool), vlm, IPLConfig(**{**FAST, "method": "nada"}))
    assert result.mapper is None and result.mapper_losses == [] and len(result.losses) == 3
    with pytest.raises(ValueError, match="needs the latent mapper"):
        adapt_generator(WorldGenGenerator(worldgen, pool), vlm, IPLConfig(**FAST))


def test_adaptive_layer_selection_trains_only_the_chosen_layers(vlm, worldgen, pool):
    gen = WorldGenGenerator(worldgen, pool)
    cfg = IPLConfig(**{**FAST, "method": "nada", "steps": 1}, auto_layer_k=3, ema_decay=0.0)
    result = adapt_generator(gen, vlm, cfg)
    assert len(result.selected_layers) == 3 and set(result.selected_layers) <= set(gen.lora_targets)
    changed = {n for n, b in result.lora.up.items() if torch.count_nonzero(b)}
    assert changed == set(result.selected_layers)


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_result(vlm, worldgen, pool, tmp_path):
    cfg = IPLConfig(**{**FAST, "steps": 4}, auto_layer_k=2)
    whole = run_adaptation(WorldGenGenerator(worldgen, pool), vlm, cfg)

    class Stop(Exception):
        pass

    def stop_at(stage, when):
        def callback(s, step, total, loss):
            if s == stage and step == when:
                raise Stop

        return callback

    folder = tmp_path / "run"
    folder.mkdir()
    for stage, when in (("mapper", 3), ("lora", 3)):
        with pytest.raises(Stop):
            run_adaptation(
                WorldGenGenerator(worldgen, pool),
                vlm,
                cfg,
                checkpoint_dir=folder,
                checkpoint_every=2,
                callback=stop_at(stage, when),
            )
    assert (folder / "mapper.safetensors").is_file() and (folder / "lora.state.safetensors").is_file()
    assert not (folder / "mapper.state.safetensors").exists()  # stage 1 finished
    other = cfg.replace(rank=2)
    with pytest.raises(ArtifactError, match="another run"):
        adapt_generator(
            WorldGenGenerator(worldgen, pool),
            vlm,
            other,
            load_mapper(folder / "mapper.safetensors", vlm),
            checkpoint_path=folder / "lora.state.safetensors",
        )
    resumed = run_adaptation(WorldGenGenerator(worldgen, pool), vlm, cfg, checkpoint_dir=folder, checkpoint_every=2)
    assert resumed.losses == whole.losses and resumed.mapper_losses == whole.mapper_losses
    assert _lora_close(resumed.lora, whole.lora)
    # stage 2 finished: its state stays until the caller has saved the LoRA (a rerun then only returns it)
    state = folder / "lora.state.safetensors"
    assert state.is_file() and int(meta_field(read_metadata(state), "step")) == len(whole.losses)


def test_native_export_roundtrip_and_merge(vlm, worldgen, pool, tmp_path):
    gen = WorldGenGenerator(worldgen, pool)
    result = run_adaptation(gen, vlm, IPLConfig(**{**FAST, "method": "nada"}, rank=2, alpha=3.0))
    path = save_lora(result.lora, tmp_path / "w.safetensors", fmt="native")
    meta = read_metadata(path)
    assert meta["promptweave.method"] == "ipl_lora" and meta["promptweave.rank"] == "2"
    assert meta["promptweave.alpha"] == "3.0" and meta["promptweave.base_fingerprint"] == gen.name
    loaded = load_lora_native(path)
    assert _lora_close(loaded, result.lora) and loaded.alpha == 3.0
    merged = WorldGenGenerator(worldgen, pool)  # a fresh copy of the decoder without adapters
    merge_lora(merged.lora_root, loaded)
    codes = gen.sample_codes(2, 9)
    with torch.no_grad():
        assert torch.allclose(merged.generate(codes), gen.generate(codes), atol=1e-5)
    with pytest.raises(ValueError, match="no Stable Diffusion U-Net layout"):
        save_lora(result.lora, tmp_path / "x.safetensors", fmt="comfyui")
    assert not (tmp_path / "x.safetensors").exists()
    with pytest.raises(ArtifactError, match="does not exist"):
        save_lora(result.lora, tmp_path / "missing" / "w.safetensors", fmt="native")
    assert not (tmp_path / "missing").exists()


# ----- Stable Diffusion ---------------------------------------------------------------------------------------------
def test_ldm_names_map_to_diffusers_for_sd15_and_the_tiny_unet():
    from promptweave.testing.tiny import diffusers_unet_key_to_ldm

    cases = [  # (layers_per_block, levels with attention down, up_with_attention, n levels)
        (2, [0, 1, 2], {1, 2, 3}, 4),  # SD1.5
        (1, [0], {0}, 1),  # the tiny SD15 U-Net
    ]
    for lpb, down_attn, up_attn, levels in cases:
        names = [
            f"down_blocks.{lv}.attentions.{i}.transformer_blocks.0.attn2.to_k" for lv in down_attn for i in range(lpb)
        ]
        names += [
            f"up_blocks.{lv}.attentions.{i}.transformer_blocks.0.attn1.to_out.0"
            for lv in up_attn
            for i in range(lpb + 1)
        ]
        names.append("mid_block.attentions.0.transformer_blocks.0.attn1.to_q")
        for name in names:
            ldm = diffusers_unet_key_to_ldm(name + ".weight", lpb, up_attn)[: -len(".weight")]
            assert ldm_to_diffusers_name(ldm, [lpb] * levels) == name


def _tiny_sd15_parts(path):
    from diffusers import UNet2DConditionModel

    from promptweave.prompt_modules.core.artifacts import read_safetensors
    from promptweave.testing.tiny import SD15_UNET_CONFIG, diffusers_unet_key_to_ldm, tiny_autoencoder

    tensors, _ = read_safetensors(path)
    with torch.random.fork_rng(devices=[]):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
    sd = {
        k: tensors["model.diffusion_model." + diffusers_unet_key_to_ldm(k, 1, {0})].float() for k in unet.state_dict()
    }
    unet.load_state_dict(sd)
    taesd = tiny_autoencoder()["taesd_decoder"]
    prefix = "first_stage_model.taesd_decoder."
    taesd.load_state_dict({k[len(prefix) :]: v.float() for k, v in tensors.items() if k.startswith(prefix)})
    return unet.eval(), taesd.eval()


@pytest.mark.slow
def test_sd_generator_on_the_tiny_sd15_checkpoint(vlm, tiny_sd15_path):
    unet, taesd = _tiny_sd15_parts(tiny_sd15_path)
    context = torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(0))
    gen = StableDiffusionGenerator(
        unet,
        lambda m, x, t, c: m(x, t, encoder_hidden_states=c).sample,
        taesd,
        lambda m, x0: m(x0),
        context,
        latent_size=(8, 8),
        sample_steps=2,
        label="tiny-sd15",
    )
    assert len(gen.lora_targets) == 4 * 2 * 4 and gen.latent_dim == 256  # down, mid, 2 up x attn1/2 x q,k,v,out
    cfg = IPLConfig(source_text="photo", target_text="neon sign", mapper_steps=2, mapper_batch=2, steps=2, rank=2)
    result = run_adaptation(gen, vlm, cfg)
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    keys = kohya_state_dict(result.lora)
    assert len(keys) == 3 * len(gen.lora_targets)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight" in keys
    assert "lora_unet_up_blocks_0_attentions_1_transformer_blocks_0_attn1_to_out_0.alpha" in keys
    assert all(p.requires_grad for p in unet.parameters())  # the caller's U-Net is untouched (a copy adapts)
    assert not any("lora" in n for n, _ in unet.named_modules())


class _OracleUNet(nn.Module):
    """A "U-Net" that knows the clean latent ``x0``: it predicts the exact noise (or v) of any ``x`` at ``t``, so a
    correct DDIM sampler must land on ``x0`` whatever the steps. One attention projection for the LoRA to find."""

    def __init__(self, x0: torch.Tensor, alphas_cumprod: torch.Tensor, prediction_type: str):
        super().__init__()
        self.attn1 = nn.Module()
        self.attn1.to_q = nn.Linear(4, 4)
        self.register_buffer("x0", x0)
        self.register_buffer("ac", alphas_cumprod)
        self.prediction_type = prediction_type

    def forward(self, x, t, context):
        assert x.dtype == self.attn1.to_q.weight.dtype and context.dtype == x.dtype  # called in its own dtype
        a = self.ac[t.long()].view(-1, 1, 1, 1).to(x.dtype)
        eps = (x - a.sqrt() * self.x0.to(x.dtype)) / (1 - a).sqrt()
        return eps if self.prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * self.x0.to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_reads_epsilon_and_v_predictions_in_the_unets_dtype(prediction_type, dtype):
    """SD2.x 768-v predicts v: read as noise it would land elsewhere. An fp32 or bf16 U-Net is called in its dtype."""
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ac = sd_alphas_cumprod()
    unet = _OracleUNet(x0, ac, prediction_type).to(dtype)
    gen = StableDiffusionGenerator(unet, lambda m, x, t, c: m(x, t, c), nn.Identity(), lambda m, x: x,
                                   torch.zeros(1, 77, 4), sample_steps=3, prediction_type=prediction_type)
    out = gen.sample_latents(gen.sample_codes(2, seed=1))
    assert out.dtype == torch.float32
    tolerance = 1e-4 if dtype == torch.float32 else 0.1
    assert (out - x0).abs().max() < tolerance
    if prediction_type == "v_prediction":  # the same v read as noise is far off
        misread = StableDiffusionGenerator(unet, lambda m, x, t, c: m(x, t, c), nn.Identity(), lambda m, x: x,
                                           torch.zeros(1, 77, 4), sample_steps=3)
        assert (misread.sample_latents(misread.sample_codes(2, seed=1)) - x0).abs().max() > 0.5
    with pytest.raises(ValueError, match="prediction_type"):
        StableDiffusionGenerator(unet, lambda m, x, t, c: m(x, t, c), nn.Identity(), lambda m, x: x,
                                 torch.zeros(1, 77, 4), prediction_type="sample")


@pytest.fixture(scope="module")
def tiny_pipeline_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipe") / "pipeline"
    subprocess.run([sys.executable, "-m", "promptweave.testing.tiny", "pipeline", str(folder)], check=True)
    return folder


@pytest.mark.slow
def test_diffusers_export_loads_with_load_lora_weights(vlm, tiny_pipeline_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_pipeline_dir))
    ids = pipe.tokenizer(["a photo"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        context = pipe.text_encoder(ids)[0]
    gen = sd_generator_from_diffusers(pipe.unet, pipe.vae, context, image_size=64, sample_steps=2)
    cfg = IPLConfig(
        source_text="photo", target_text="neon sign", method="nada", steps=2, rank=2, alpha=6.0, ema_decay=0.0
    )
    result = run_adaptation(gen, vlm, cfg)
    path = save_lora(result.lora, tmp_path / "neon.safetensors", fmt="diffusers")
    meta = read_metadata(path)
    assert meta["promptweave.format"] == "diffusers" and meta["promptweave.target"] == "sd-unet"
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500.0])
    with torch.no_grad():
        base = pipe.unet(x, t, encoder_hidden_states=context).sample
        pipe.load_lora_weights(str(path))
        loaded = pipe.unet(x, t, encoder_hidden_states=context).sample
        mine = gen.lora_root(x, t, encoder_hidden_states=context).sample
    from peft.tuners.lora import LoraLayer

    wrapped = [n for n, m in pipe.unet.named_modules() if isinstance(m, LoraLayer)]
    assert len(wrapped) == len(result.lora.down)  # every tensor of the file reached a layer
    assert (loaded - base).abs().max() > 0
    assert torch.allclose(loaded, mine, atol=1e-5)  # alpha/rank scale survives the export


def test_bench_metrics_position_cells_and_diversity():
    from promptweave.bench.adaptation import STAGE2_LR, diversity, layer_selection_k, position_cells

    images = torch.zeros(2, 3, 24, 24)
    images[0, :, 1:5, 1:5] = 1.0  # top-left cell
    images[1, :, 18:22, 10:14] = 1.0  # bottom-middle cell
    assert position_cells(images).tolist() == [0, 7]
    same = torch.nn.functional.normalize(torch.ones(3, 4), dim=-1)
    assert diversity(same) == pytest.approx(0.0, abs=1e-6)
    assert diversity(torch.eye(4)) == pytest.approx(1.0)
    assert diversity(same[:1]) == 0.0
    assert layer_selection_k(13) == 9 and layer_selection_k(1) == 1
    # every method has its own stage-2 lr, and the same-lr baseline really shares IPL's
    assert set(STAGE2_LR) == {"ipl", "nada", "nada_same_lr"}
    assert STAGE2_LR["nada_same_lr"] == STAGE2_LR["ipl"]


def test_bench_asks_each_guide_only_for_styles_its_text_names():
    from promptweave.bench.adaptation import SOURCE_STYLE, STYLE_TEXTS, stage2_lrs, target_styles
    from promptweave.bench.harness import BACKBONES
    from promptweave.prompt_modules.world.web_captions import WebCaptionConfig

    assert target_styles("worldclip2") == STYLE_TEXTS and SOURCE_STYLE not in STYLE_TEXTS
    web = target_styles("worldclip-web")
    assert web and set(web) <= set(WebCaptionConfig().named_styles) - {SOURCE_STYLE}
    assert set(STYLE_TEXTS) - set(web) == {"mosaic", "neon"}  # the web text never names these
    for backbone in (*BACKBONES, "file:/some/worldclip.safetensors"):
        lrs = stage2_lrs(backbone)
        assert set(lrs) == {"ipl", "nada", "nada_same_lr"} and lrs["nada_same_lr"] == lrs["ipl"]
    assert stage2_lrs("file:/some/worldclip.safetensors") == stage2_lrs("worldclip2")


#: Sizes that only check the bench's code path on random tiny models.
SMOKE_SETTINGS = {"n_eval": 16, "n_pool": 32, "n_proto": 16, "gen_steps": 6, "steps": 12, "mapper_steps": 12,
                  "mapper_batch": 8, "batch_size": 2}


def test_bench_adaptation_quick_plan_keeps_the_full_training_on_one_style_and_two_rows():
    from promptweave.bench.adaptation import METHODS, run_plan, target_styles
    from promptweave.bench.harness import BACKBONES

    for backbone in BACKBONES:
        styles, rows = run_plan(backbone, quick=False)
        assert styles == target_styles(backbone) and rows == METHODS
        quick_styles, quick_rows = run_plan(backbone, quick=True)
        assert list(quick_styles.items()) == list(styles.items())[:1] and quick_rows == ("ipl", "nada")


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["worldclip2", "worldclip-web"])
def test_bench_adaptation_run_on_tiny_models(monkeypatch, backbone):
    from promptweave.bench import adaptation
    from promptweave.bench.adaptation import METRICS, run, stage2_lrs, target_styles

    monkeypatch.setenv("PW_BENCH_VLM", "tiny")
    monkeypatch.setenv("PW_BENCH_BACKBONE", backbone)  # the guide's styles and rates follow the backbone
    monkeypatch.setattr(adaptation, "SETTINGS", SMOKE_SETTINGS)
    result = run(seed=0, split="test", quick=False)
    assert set(result.baselines) == {"nada", "nada_same_lr", "source"}
    assert result.notes["stage2_lr"] == stage2_lrs(backbone)
    assert set(result.notes["per_style"]) == set(target_styles(backbone)) == set(result.notes["target_texts"])
    for style, rows in result.notes["per_style"].items():
        assert rows["source"]["content_kept"] == 1.0, style  # the source sample agrees with itself
        for row in rows.values():
            assert all(0.0 <= row[m] <= 1.0 + 1e-6 for m in METRICS)
    for m in METRICS:
        assert result.notes["margins_vs_nada"][m] == pytest.approx(result.metrics[m] - result.baselines["nada"][m])
        same_lr = result.metrics[m] - result.baselines["nada_same_lr"][m]
        assert result.notes["margins_vs_nada_same_lr"][m] == pytest.approx(same_lr)
    assert result.metrics["seconds_per_step"] > 0 and result.metrics["peak_memory_mb"] > 0


@pytest.mark.slow
def test_a_bf16_v_prediction_pipeline_adapts_with_an_fp32_lora_and_stays_bf16(vlm, tiny_pipeline_dir, tmp_path):
    """diffusers' SD2.x-style pipeline (v-prediction scheduler) in bf16: the scheduler's prediction type reaches the
    generator, the frozen U-Net stays bf16, the LoRA and its training are fp32, and the file loads back."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from promptweave import diffusers_api as pw

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_pipeline_dir), dtype=torch.bfloat16)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    seen = {}
    original = pw.run_adaptation

    def spy(generator, *args, **kwargs):
        seen["generator"] = generator
        result = original(generator, *args, **kwargs)
        seen["lora_dtypes"] = {t.dtype for t in [*result.lora.down.values(), *result.lora.up.values()]}
        return result

    cfg = IPLConfig(source_text="photo", target_text="neon sign", method="nada", steps=2, rank=2)
    with unittest.mock.patch.object(pw, "run_adaptation", spy):
        path = pw.adapt_to_domain(pipe, vlm, tmp_path / "v.safetensors", prompt="a photo", source="photo",
                                  target="neon sign", config=cfg, image_size=64, sample_steps=2)
    gen = seen["generator"]
    assert gen.prediction_type == "v_prediction" and gen.unet_dtype == torch.bfloat16
    base_dtypes = {p.dtype for n, p in gen.lora_root.named_parameters() if "lora_" not in n}
    lora_dtypes = {p.dtype for n, p in gen.lora_root.named_parameters() if "lora_" in n}
    assert base_dtypes == {torch.bfloat16} and lora_dtypes == {torch.float32}
    assert seen["lora_dtypes"] == {torch.float32}
    assert pipe.unet.dtype == torch.bfloat16
    pipe.load_lora_weights(str(path))
