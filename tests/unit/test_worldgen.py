"""WorldGen: autoencoder and diffusion training steps, DDIM sampling, files, backbone checks, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from promptweave.prompt_modules.core.artifacts import ArtifactError, BackboneMismatchError, read_metadata
from promptweave.prompt_modules.core.vlm import VisionLanguageModel, VLMConfig
from promptweave.prompt_modules.world.gen_training import (
    build_pool,
    diffusion_loss,
    evaluate_worldgen,
    sample_timesteps,
    train_autoencoder,
    train_diffusion,
)
from promptweave.prompt_modules.world.worldgen import (
    WORLDGEN_PRESETS,
    WorldGen,
    WorldGenConfig,
    ddim_timesteps,
    load_worldgen,
    save_worldgen,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_GEN = ROOT / "weights" / "worldgen.safetensors"
SHIPPED_CLIP = ROOT / "weights" / "worldclip.safetensors"


@pytest.fixture(scope="module")
def vlm() -> VisionLanguageModel:
    return VisionLanguageModel("tiny", seed=0)


def tiny_gen(vlm: VisionLanguageModel, seed: int = 0) -> WorldGen:
    config = WorldGenConfig.from_dict({**WORLDGEN_PRESETS["tiny"].to_dict(), "backbone": vlm.name})
    return WorldGen(config, seed=seed)


def test_config_round_trip_and_validation() -> None:
    config = WORLDGEN_PRESETS["default"]
    assert WorldGenConfig.from_dict(config.to_dict()) == config
    assert config.latent_shape == (4, 8, 8)
    with pytest.raises(ValueError, match="unknown WorldGenConfig fields"):
        WorldGenConfig.from_dict({"depth": 3})
    with pytest.raises(ValueError):
        WorldGenConfig(image_size=60)
    assert ddim_timesteps(1000, 20)[0] == 999 and len(ddim_timesteps(1000, 20)) == 20


def test_shapes(vlm: VisionLanguageModel) -> None:
    gen = tiny_gen(vlm)
    images = torch.rand(2, 3, 64, 64)
    latents = gen.encode(images)
    assert latents.shape == (2, 4, 8, 8)
    assert gen.decode(latents).shape == (2, 3, 64, 64)
    context = gen.text_context(["a red circle.", "a blue square."], vlm)
    assert context.shape == (2, 77, vlm.token_width)
    assert gen.unet(latents, torch.tensor([3, 500]), context).shape == latents.shape
    features = gen.unet.encode_features(latents, torch.zeros(2, dtype=torch.long), context)
    assert features[-1].shape[0] == 2 and all(torch.isfinite(f).all() for f in features)


@pytest.mark.slow
def test_autoencoder_loss_decreases(vlm: VisionLanguageModel) -> None:
    gen = tiny_gen(vlm)
    log = train_autoencoder(gen, steps=30, batch_size=8, lr=3e-3, warmup=1, progress=False, stats_images=64)
    losses = log["losses"]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert gen.config.latent_scale > 0 and gen.config.latent_scale != 1.0


@pytest.mark.slow
def test_diffusion_loss_decreases_on_a_fixed_batch(vlm: VisionLanguageModel) -> None:
    gen = tiny_gen(vlm)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(8, 4, 8, 8, generator=g)
    with torch.no_grad():
        context = gen.text_context([f"a {c} circle." for c in "red blue green grey pink cyan gold lime".split()], vlm)
    t = torch.randint(0, 1000, (8,), generator=g)
    noise = torch.randn(8, 4, 8, 8, generator=g)
    optimizer = torch.optim.Adam(gen.unet.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = diffusion_loss(gen, latents, context, t, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_timestep_sampling() -> None:
    # "uniform" draws exactly what the loop drew before the option existed, so old checkpoints resume alike.
    uniform = sample_timesteps(4096, 1000, "uniform", torch.Generator().manual_seed(3))
    assert torch.equal(uniform, torch.randint(0, 1000, (4096,), generator=torch.Generator().manual_seed(3)))
    mid = sample_timesteps(4096, 1000, "logit_normal", torch.Generator().manual_seed(3))
    again = sample_timesteps(4096, 1000, "logit_normal", torch.Generator().manual_seed(3))
    assert torch.equal(mid, again) and mid.dtype == torch.long
    assert 0 <= int(mid.min()) and int(mid.max()) <= 999
    # logit-normal: about 68% of the draws lie in sigmoid(-1)..sigmoid(1) = 269..731, against 46% uniformly
    share = lambda t: float(((t >= 269) & (t <= 731)).float().mean())  # noqa: E731
    assert share(mid) > 0.6 and share(uniform) < 0.52
    with pytest.raises(ValueError, match="timestep sampling"):
        sample_timesteps(4, 1000, "cosine", torch.Generator())


def test_ddim_sampling_is_deterministic(vlm: VisionLanguageModel) -> None:
    gen = tiny_gen(vlm)
    texts = ["a red circle.", "a big blue star."]
    a = gen.sample(texts, vlm, steps=4, guidance=3.0, seed=7)
    b = gen.sample(texts, vlm, steps=4, guidance=3.0, seed=7)
    c = gen.sample(texts, vlm, steps=4, guidance=3.0, seed=8)
    assert a.shape == (2, 3, 64, 64)
    assert torch.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_save_load_round_trip(vlm: VisionLanguageModel, tmp_path: Path) -> None:
    gen = tiny_gen(vlm)
    gen.set_latent_stats(0.1, 2.0)
    path = save_worldgen(gen, tmp_path / "gen.safetensors", dtype=torch.float32, stages=["autoencoder"])
    meta = read_metadata(path)
    assert meta["promptweave.method"] == "worldgen" and meta["promptweave.backbone"] == vlm.name
    assert "promptweave.version" in meta and "promptweave.config" in meta
    loaded = load_worldgen(path, vlm)
    assert loaded.config == gen.config
    for (k, v), (k2, v2) in zip(gen.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    half = load_worldgen(save_worldgen(gen, tmp_path / "half.safetensors"), vlm)  # fp16 storage, fp32 back
    assert next(half.parameters()).dtype == torch.float32
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(half.decode(half.encode(x)), gen.decode(gen.encode(x)), atol=2e-2)


def test_mismatched_vlm_is_refused(vlm: VisionLanguageModel, tmp_path: Path) -> None:
    gen = tiny_gen(vlm)
    path = save_worldgen(gen, tmp_path / "gen.safetensors")
    other_name = VisionLanguageModel(VLMConfig(name="other"), seed=0)
    wider = VisionLanguageModel(VLMConfig(name="tiny", text_width=128), seed=0)
    for bad in (other_name, wider):
        with pytest.raises(BackboneMismatchError, match="conditioned on 'tiny'"):
            load_worldgen(path, bad)
        with pytest.raises(BackboneMismatchError):
            gen.sample(["a red circle."], bad, steps=2)
    not_gen = tmp_path / "other.safetensors"
    from promptweave.prompt_modules.core.vlm import save_vlm

    save_vlm(vlm, not_gen)
    with pytest.raises(ArtifactError, match="expected a 'worldgen' artifact"):
        load_worldgen(not_gen)


def test_a_vlm_carrying_the_same_text_space_is_accepted(vlm: VisionLanguageModel) -> None:
    """WorldCLIP 2 keeps WorldCLIP's text tower: WorldGen checks the text space, not the model name."""
    gen = tiny_gen(vlm)
    carrier = VisionLanguageModel(VLMConfig(name="tiny-stem", conv_stem=(8, 16, 32), text_space="tiny"), seed=0)
    carrier.clip.load_state_dict({k: v for k, v in vlm.clip.state_dict().items() if not k.startswith("visual.")},
                                 strict=False)
    gen.check_vlm(carrier)
    assert torch.equal(gen.sample(["a red circle."], carrier, steps=2, seed=0),
                       gen.sample(["a red circle."], vlm, steps=2, seed=0))
    other_space = VisionLanguageModel(VLMConfig(name="tiny-stem", conv_stem=(8, 16, 32), text_space="x"), seed=0)
    with pytest.raises(BackboneMismatchError, match="'tiny-stem' with 'x' text features"):
        gen.check_vlm(other_space)


@pytest.mark.slow
def test_resume_equals_uninterrupted(vlm: VisionLanguageModel, tmp_path: Path) -> None:
    base = tiny_gen(vlm)
    pool = build_pool(base, vlm, size=16, progress=False)
    kwargs = dict(steps=4, batch_size=4, warmup=1, progress=False, precision="fp32", pool=pool)

    def ae_state(checkpoint: Path | None, stop: int | None) -> dict[str, torch.Tensor]:
        gen = tiny_gen(vlm)
        ae_kwargs = dict(steps=4, batch_size=4, warmup=1, progress=False, precision="fp32", stats_images=8)
        if stop is not None:
            train_autoencoder(gen, **{**ae_kwargs, "steps": stop}, checkpoint_path=checkpoint, checkpoint_every=1)
            gen = tiny_gen(vlm)
        train_autoencoder(gen, **ae_kwargs, checkpoint_path=checkpoint, checkpoint_every=1)
        return gen.autoencoder.state_dict()

    straight = ae_state(None, None)
    resumed = ae_state(tmp_path / "ae.safetensors", 2)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)

    def diff_state(checkpoint: Path | None, stop: int | None) -> dict[str, torch.Tensor]:
        gen = tiny_gen(vlm)
        if stop is not None:
            train_diffusion(gen, vlm, **{**kwargs, "steps": stop}, checkpoint_path=checkpoint, checkpoint_every=1)
            gen = tiny_gen(vlm)
        train_diffusion(gen, vlm, **kwargs, checkpoint_path=checkpoint, checkpoint_every=1)
        return gen.unet.state_dict()

    straight = diff_state(None, None)
    resumed = diff_state(tmp_path / "diff.safetensors", 2)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.skipif(
    not (SHIPPED_GEN.is_file() and SHIPPED_CLIP.is_file()), reason="shipped WorldGen/WorldCLIP weights not built"
)
@pytest.mark.slow
def test_shipped_worldgen_follows_colour_prompts() -> None:
    """A small real measurement (the full targets are measured by the benchmark, not here)."""
    from promptweave.prompt_modules.core.vlm import load_vlm

    clip = load_vlm(SHIPPED_CLIP)
    gen = load_worldgen(SHIPPED_GEN, clip)
    assert SHIPPED_GEN.stat().st_size <= 25 * 2**20
    metrics = evaluate_worldgen(gen, clip, n=24, steps=8, guidance=3.0, batch_size=24)
    assert metrics["gen_colour_agreement"] >= 0.4  # chance is 1/20
    assert metrics["gen_category_agreement"] > 2 / 27
