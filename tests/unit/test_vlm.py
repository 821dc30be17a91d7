"""VisionLanguageModel: shapes, tokenizer, text/vision towers with custom inputs, safetensors save/load."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from promptweave.prompt_modules.core.artifacts import ArtifactError, read_safetensors, save_safetensors_atomic
from promptweave.prompt_modules.core.vlm import (
    VLM_PRESETS,
    ConvStem,
    VisionLanguageModel,
    VLMConfig,
    get_config,
    load_vlm,
    save_vlm,
)
from promptweave.testing.tiny import build_tiny_vlm

SENTENCES = ["a photo of a cat", "A RED Car, parked!", "naïve café 123", ""]


@pytest.fixture(scope="module")
def model() -> VisionLanguageModel:
    return VisionLanguageModel("tiny", seed=0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, model: VisionLanguageModel) -> Path:
    path = tmp_path_factory.mktemp("vlm") / "tiny.safetensors"
    save_vlm(model, path)
    return path


def images(batch: int = 2, height: int = 64, width: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


# ----- config ------------------------------------------------------------------------------------------------


def test_presets_are_consistent() -> None:
    for name, config in VLM_PRESETS.items():
        assert config.name == name
        assert get_config(name) is config
        oc = config.to_open_clip_cfg()
        assert VLMConfig.from_open_clip_cfg(oc, name=name) == config
        assert VLMConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_world_preset_size_matches_environment_notes() -> None:
    world = VisionLanguageModel("world", seed=0)
    assert sum(p.numel() for p in world.parameters()) == pytest.approx(13.2e6, rel=0.01)
    assert (world.vision_width, world.token_width, world.image_size) == (192, 192, 64)


@pytest.mark.parametrize(
    "kwargs",
    [{"image_size": 60, "patch_size": 8}, {"vision_width": 64, "vision_heads": 3}, {"vocab_size": 1000}],
)
def test_invalid_config_raises(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        VLMConfig(**kwargs)


def test_unknown_preset_and_fields_raise() -> None:
    with pytest.raises(ValueError, match="unknown VLM preset"):
        get_config("nope")
    with pytest.raises(ValueError, match="unknown VLMConfig fields"):
        VLMConfig.from_dict({"name": "x", "depth": 3})
    with pytest.raises(ValueError, match="unsupported"):
        VLMConfig.from_open_clip_cfg({"embed_dim": 8, "vision_cfg": {"timm_model_name": "x"}, "text_cfg": {"width": 8}})


def test_model_is_deterministic_for_a_seed_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b, c = (VisionLanguageModel("tiny", seed=s) for s in (3, 3, 4))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.clip.visual.proj, b.clip.visual.proj)
    assert not torch.equal(a.clip.visual.proj, c.clip.visual.proj)


# ----- encoders ----------------------------------------------------------------------------------------------


def test_description(model: VisionLanguageModel) -> None:
    assert (model.name, model.embed_dim, model.token_width, model.vision_width) == ("tiny", 64, 64, 64)
    assert model.token_embedding.weight.shape == (49408, 64)
    assert model.positional_embedding.shape == (77, 64)
    assert len(model.text_blocks) == 2
    assert model.text_projection.shape == (64, 64)
    assert model.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-4)


def test_tokenizer_matches_open_clip(model: VisionLanguageModel) -> None:
    tokens = model.tokenize(SENTENCES)
    assert tokens.dtype == torch.long and tokens.shape == (len(SENTENCES), 77)
    assert torch.equal(tokens, open_clip.tokenize(SENTENCES))
    assert torch.equal(model.tokenize("a photo of a cat"), tokens[:1])
    assert model.eot_index(tokens).tolist()[-1] == 1  # empty prompt: <start>, <end>


@torch.no_grad()
def test_image_features_shape_and_norm(model: VisionLanguageModel) -> None:
    for batch, h, w in [(2, 64, 64), (1, 48, 80), (3, 128, 96)]:
        features = model.encode_image(images(batch, h, w))
        assert features.shape == (batch, 64)
        assert torch.allclose(features.norm(dim=-1), torch.ones(batch), atol=1e-5)
    raw = model.encode_image(images(), normalize=False)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(2))


@torch.no_grad()
def test_image_features_match_open_clip(model: VisionLanguageModel) -> None:
    x = images(2, 96, 80)
    expected = model.clip.encode_image(model.preprocess(x), normalize=True)
    assert torch.allclose(model.encode_image(x), expected, atol=1e-6)
    assert model.preprocess(x).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="expected images"):
        model.encode_image(torch.rand(2, 64, 64))


@torch.no_grad()
def test_text_features(model: VisionLanguageModel) -> None:
    tokens = model.tokenize(SENTENCES)
    features = model.encode_text(SENTENCES)
    assert features.shape == (len(SENTENCES), 64)
    assert torch.allclose(features.norm(dim=-1), torch.ones(len(SENTENCES)), atol=1e-5)
    assert torch.allclose(model.encode_text(tokens), features)
    assert torch.allclose(model.clip.encode_text(tokens, normalize=True), features, atol=1e-6)


@torch.no_grad()
def test_encode_text_embeddings_equals_encode_text(model: VisionLanguageModel) -> None:
    tokens = model.tokenize(SENTENCES)
    embeds = model.embed_tokens(tokens)
    assert embeds.shape == (len(SENTENCES), 77, model.token_width)
    out = model.encode_text_embeddings(embeds, model.eot_index(tokens))
    assert torch.allclose(out, model.encode_text(tokens), atol=1e-6)
    # a causal tower: truncating after the end token does not change the feature
    short = model.encode_text_embeddings(embeds[:, :16], model.eot_index(tokens))
    assert torch.allclose(short, out, atol=1e-5)
    with pytest.raises(ValueError, match="context length"):
        model.encode_text_embeddings(torch.zeros(1, 78, 64), torch.zeros(1, dtype=torch.long))


@torch.no_grad()
def test_text_token_features(model: VisionLanguageModel) -> None:
    """Per-token context for cross-attention: ln_final outputs; the end-token row projects to encode_text."""
    tokens = model.tokenize(SENTENCES)
    feats = model.text_token_features(SENTENCES)
    assert feats.shape == (len(SENTENCES), 77, model.token_width)
    assert torch.allclose(model.text_token_features(tokens), feats)
    assert torch.allclose(model.text_token_features(model.embed_tokens(tokens)), feats)
    pooled = feats[torch.arange(len(SENTENCES)), model.eot_index(tokens)] @ model.text_projection
    assert torch.allclose(torch.nn.functional.normalize(pooled, dim=-1), model.encode_text(tokens), atol=1e-5)
    assert torch.allclose(model.text_token_features(tokens[:, :16]), feats[:, :16], atol=1e-5)  # causal
    with pytest.raises(ValueError, match="context length"):
        model.text_token_features(torch.zeros(1, 78, dtype=torch.long))


def test_learned_context_gets_gradients(model: VisionLanguageModel) -> None:
    """CoOp-style use: replace the embeddings of placeholder tokens with learned vectors."""
    tokens = model.tokenize(["X X X X cat"])
    ctx = torch.zeros(4, model.token_width, requires_grad=True)
    embeds = model.embed_tokens(tokens).detach()
    embeds = torch.cat([embeds[:, :1], ctx.unsqueeze(0), embeds[:, 5:]], dim=1)
    model.encode_text_embeddings(embeds, model.eot_index(tokens)).sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0


def test_visual_prompts(model: VisionLanguageModel) -> None:
    x = images(2)
    with torch.no_grad():
        plain = model.encode_image(x)
        assert torch.allclose(model.encode_image_with_prompts(x, None), plain)
        assert torch.allclose(model.encode_image_with_prompts(x, torch.zeros(0, 64)), plain, atol=1e-6)
        prompts = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))
        shared = model.encode_image_with_prompts(x, prompts)
        per_image = model.encode_image_with_prompts(x, prompts.expand(2, 3, 64))
    assert shared.shape == (2, 64) and not torch.allclose(shared, plain)
    assert torch.allclose(shared, per_image, atol=1e-6)
    learned = prompts.clone().requires_grad_(True)
    model.encode_image_with_prompts(x, learned).sum().backward()
    assert learned.grad is not None and learned.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="prompts must be"):
        model.encode_image_with_prompts(x, torch.zeros(3, 32))


# ----- files -------------------------------------------------------------------------------------------------


def test_save_load_round_trip(model: VisionLanguageModel, saved: Path) -> None:
    loaded = load_vlm(saved)
    assert loaded.config == model.config and not loaded.training
    x, texts = images(2, seed=5), ["a dog", "a tree"]
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(x), model.encode_image(x))
        assert torch.equal(loaded.encode_text(texts), model.encode_text(texts))
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]  # no temporary files left behind


def test_metadata(saved: Path) -> None:
    tensors, meta = read_safetensors(saved)
    assert meta["promptweave.method"] == "vlm"
    assert meta["promptweave.backbone"] == "tiny"
    assert meta["promptweave.version"]
    assert VLMConfig.from_dict(json.loads(meta["promptweave.config"])) == VLM_PRESETS["tiny"]
    assert "visual.conv1.weight" in tensors and "token_embedding.weight" in tensors  # open_clip key names


def test_sidecar_open_clip_config(model: VisionLanguageModel, tmp_path: Path) -> None:
    """An open_clip state dict without metadata loads with an open_clip model config JSON next to it."""
    weights = tmp_path / "my-clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.clip.state_dict().items()}, str(weights))
    with pytest.raises(ArtifactError, match="no VLM config"):
        load_vlm(weights)
    weights.with_suffix(".json").write_text(json.dumps(model.config.to_open_clip_cfg()))
    loaded = load_vlm(weights)
    assert loaded.name.startswith("clip:custom:")  # named by its weights (clip_formats.clip_name), not its file
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(["x"]), model.encode_text(["x"]))
    weights.with_suffix(".json").write_text("{not json")
    with pytest.raises(ArtifactError, match="my-clip.json"):
        load_vlm(weights)


def _expect_error(path: Path, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        load_vlm(path)
    assert isinstance(info.value, ArtifactError)
    assert path.name in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    _expect_error(tmp_path / "absent.safetensors", "not found")


def test_truncated_file(saved: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.safetensors"
    data = saved.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    _expect_error(cut, "truncated")


def test_corrupt_and_wrong_type_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(bytes(range(256)) * 8)
    _expect_error(junk, "safetensors")
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"abc")
    _expect_error(tiny, "safetensors")
    pickled = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(3)}, pickled)
    _expect_error(pickled, "safetensors")


def test_missing_and_unexpected_keys(model: VisionLanguageModel, saved: Path, tmp_path: Path) -> None:
    tensors, meta = read_safetensors(saved)
    broken = tmp_path / "broken.safetensors"
    save_file(
        {k: v for k, v in tensors.items() if k != "ln_final.weight"} | {"extra": torch.zeros(1)},
        str(broken),
        metadata=meta,
    )
    _expect_error(broken, r"missing keys \['ln_final.weight'\], unexpected keys \['extra'\]")
    reshaped = tmp_path / "reshaped.safetensors"
    save_file(tensors | {"ln_final.weight": torch.zeros(7)}, str(reshaped), metadata=meta)
    _expect_error(reshaped, "does not fit")


def test_wrong_artifact_method(saved: Path, tmp_path: Path) -> None:
    tensors, meta = read_safetensors(saved)
    other = tmp_path / "other.safetensors"
    save_file(tensors, str(other), metadata=meta | {"promptweave.method": "lora"})
    _expect_error(other, "'lora' artifact")


def test_build_tiny_vlm_is_deterministic(tmp_path: Path) -> None:
    paths = [build_tiny_vlm(tmp_path / f"{i}.safetensors", seed) for i, seed in enumerate((0, 0, 1))]
    a, b, c = (read_safetensors(p)[0] for p in paths)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["visual.proj"], c["visual.proj"])
    assert load_vlm(paths[0]).name == "tiny"


# ----- convolutional stem ------------------------------------------------------------------------------------


def test_conv_stem_keeps_the_token_grid_prompts_and_round_trips(tmp_path: Path) -> None:
    config = VLMConfig(name="tiny-stem", conv_stem=(8, 16, 32))
    model = VisionLanguageModel(config, seed=0)
    assert isinstance(model.visual.conv1, ConvStem)
    x = images(2)
    with torch.no_grad():
        tokens = model.visual.conv1(model.preprocess(x))
        assert tokens.shape == (2, config.vision_width, 8, 8)  # 64 px / patch 8, as the patchify conv
        plain = model.encode_image(x)
        # open_clip's own forward runs the stem too: the same features as ours
        assert torch.allclose(plain, F.normalize(model.visual(model.preprocess(x)), dim=-1), atol=1e-5)
        prompted = model.encode_image_with_prompts(x, torch.randn(3, config.vision_width))
    assert not torch.allclose(plain, prompted)
    path = save_vlm(model, tmp_path / "stem.safetensors")
    loaded = load_vlm(path)
    assert loaded.config == config and loaded.config.conv_stem == (8, 16, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(x), plain)
    # a file with a stem does not load into the plain config: the keys differ and the error says so
    tensors, meta = read_safetensors(path)
    meta["promptweave.config"] = json.dumps(VLMConfig(name="tiny-stem").to_dict())
    broken = tmp_path / "plain.safetensors"
    save_safetensors_atomic(broken, tensors, meta)
    with pytest.raises(ArtifactError, match="does not fit"):
        load_vlm(broken)


def test_conv_stem_must_match_the_patch_size() -> None:
    with pytest.raises(ValueError, match="3 for patch_size 8"):
        VLMConfig(conv_stem=(8, 16))
    with pytest.raises(ValueError, match="positive channel count"):
        VLMConfig(conv_stem=(8, 0, 16))


def test_conv_stem_has_no_running_statistics() -> None:
    """A frozen backbone must give the same features in train and eval mode (no BatchNorm in the stem)."""
    model = VisionLanguageModel(VLMConfig(name="tiny-stem", conv_stem=(8, 16, 32)), seed=0)
    x = images(4)
    with torch.no_grad():
        evaluated = model.eval().encode_image(x)
        trained = model.train().encode_image(x)
    assert torch.allclose(evaluated, trained, atol=1e-6)
