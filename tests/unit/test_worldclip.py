"""WorldCLIP: contrastive training (CLIP, Radford et al. 2021) on the procedural world, resume, metrics, weights."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from promptweave.prompt_modules.core.artifacts import meta_field, read_metadata
from promptweave.prompt_modules.core.vlm import VisionLanguageModel, VLMConfig, load_vlm, save_vlm
from promptweave.prompt_modules.world import MAX_OBJECTS, clip_training
from promptweave.prompt_modules.world.clip_training import (
    METRIC_KEYS,
    WorldCLIPTrainConfig,
    batch_loss,
    evaluate_worldclip,
    make_optimizer,
    train_worldclip,
    training_batch,
)

SHIPPED = Path(__file__).resolve().parents[2] / "weights" / "worldclip.safetensors"


def _tiny(steps: int = 6, **overrides) -> WorldCLIPTrainConfig:
    settings = {"vlm": "tiny", "steps": steps, "batch_size": 8, "lr": 2e-3, "warmup": 2, "checkpoint_every": 3}
    settings.update(pretrain_steps=4, pretrain_batch_size=8, pretrain_pool=64)  # contrastive from step 4
    settings.update(image_tune_steps=0)
    return WorldCLIPTrainConfig(**{**settings, **overrides})


def test_training_steps_reduce_the_contrastive_loss_on_a_fixed_batch():
    config = _tiny()
    vlm = VisionLanguageModel(config.vlm_config(), seed=0)
    optimizer = make_optimizer(vlm, config)
    images, captions, negatives, *_ = training_batch(config, config.pretrain_steps)
    assert len(negatives) == config.hard_negatives * len(captions)
    vlm.train()
    losses = []
    for _ in range(8):
        loss = batch_loss(vlm, images, captions, negatives)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        final = float(batch_loss(vlm.eval(), images, captions, negatives))
    assert final < 0.7 * losses[0], losses


def test_batches_depend_on_seed_and_step_only():
    config = _tiny(partial_captions=0.5, hard_negatives=2)
    a_images, a_captions, a_negatives, a_ids, _ = training_batch(config, 5)
    b_images, b_captions, b_negatives, b_ids, _ = training_batch(config, 5)
    assert torch.equal(a_ids, b_ids) and a_ids.shape == (config.batch_size, MAX_OBJECTS)
    assert torch.equal(a_images, b_images) and a_captions == b_captions and a_negatives == b_negatives
    assert training_batch(config, 6)[1] != a_captions
    assert training_batch(_tiny(seed=1), 5)[1] != a_captions


def test_partial_captions_name_every_object():
    from promptweave.prompt_modules.world import sample_scene

    for seed in range(20):
        scene = sample_scene(seed)
        text = clip_training.partial_caption(scene)
        assert all(o.category in text for o in scene.objects), (text, scene.caption)


def test_style_captions_name_the_render_style_of_the_image_and_of_its_negatives():
    from promptweave.prompt_modules.world import STYLE_PHRASES
    from promptweave.prompt_modules.world.dataset import style_for_seed

    config = _tiny(style_captions=0.5, hard_negatives=2, batch_size=32)
    step = config.pretrain_steps
    _, captions, negatives, *_ = training_batch(config, step)
    styles = [style_for_seed(s) for s in clip_training.batch_seeds(config, step)]
    named = [c.startswith(f"{STYLE_PHRASES[st]}. ") for c, st in zip(captions, styles, strict=True)]
    assert 4 <= sum(named) <= 28  # about half of 32
    for i, is_named in enumerate(named):
        for negative in negatives[2 * i : 2 * i + 2]:  # a negative keeps its caption's style phrase
            assert negative.startswith(f"{STYLE_PHRASES[styles[i]]}. ") == is_named
    plain = training_batch(_tiny(style_captions=0.0, batch_size=32), step).captions
    assert not any(c.startswith(tuple(STYLE_PHRASES.values())) for c in plain)
    # the image-tuning steps (from config.steps on) may name the style more often than the joint ones
    tuned = _tiny(style_captions=0.0, image_tune_style_captions=1.0, image_tune_steps=2, batch_size=32)
    assert training_batch(tuned, step).captions == plain
    late = training_batch(tuned, tuned.steps)
    late_styles = [style_for_seed(s) for s in clip_training.batch_seeds(tuned, tuned.steps)]
    assert all(c.startswith(f"{STYLE_PHRASES[st]}. ") for c, st in zip(late.captions, late_styles, strict=True))
    with pytest.raises(ValueError, match="fractions in"):
        _tiny(image_tune_style_captions=1.5)


@pytest.mark.slow
def test_resume_from_checkpoint_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    config = _tiny()
    reference = train_worldclip(config, None, progress=False)

    real_batch = clip_training.training_batch

    def dies_at_step_4(cfg, step):
        if step == 4:
            raise KeyboardInterrupt
        return real_batch(cfg, step)

    ckpt = tmp_path / "state.safetensors"
    monkeypatch.setattr(clip_training, "training_batch", dies_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train_worldclip(config, None, checkpoint_path=ckpt, progress=False)
    assert ckpt.exists()  # written at step 3
    monkeypatch.setattr(clip_training, "training_batch", real_batch)
    torch.manual_seed(1234)  # a new process starts with another global RNG state
    resumed = train_worldclip(config, None, checkpoint_path=ckpt, progress=False)
    for (name, a), (_, b) in zip(
        reference.clip.state_dict().items(), resumed.clip.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name

    with pytest.raises(ValueError, match="other settings"):
        train_worldclip(_tiny(lr=1e-3), None, checkpoint_path=ckpt, progress=False)


def test_image_tuning_steps_train_the_image_tower_against_a_locked_text_tower():
    base = train_worldclip(_tiny(), None, progress=False, eval_n=0)
    tuned = train_worldclip(_tiny(image_tune_steps=3, image_tune_lr=1e-3), None, progress=False, eval_n=0)
    changed = []
    for (name, a), (_, b) in zip(base.clip.state_dict().items(), tuned.clip.state_dict().items(), strict=True):
        if name.startswith("visual."):
            changed.append(not torch.equal(a, b))
        else:  # text tower, token embedding, projection and temperature: as after the main steps
            assert torch.equal(a, b), name
    assert any(changed)
    assert all(p.requires_grad for p in tuned.clip.parameters())
    assert clip_training.learning_rate(_tiny(image_tune_steps=3, image_tune_lr=1e-3), 6) == pytest.approx(1e-3)


def test_evaluate_returns_metrics_in_unit_interval():
    metrics = evaluate_worldclip(VisionLanguageModel("tiny", seed=0), split="val", n=24)
    assert set(metrics) == set(METRIC_KEYS)
    assert all(0.0 <= v <= 1.0 for v in metrics.values()), metrics


def test_cli_trains_saves_fp16_and_prints_metrics(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    clip_training.add_cli_arguments(parser)
    out = tmp_path / "wc.safetensors"
    args = parser.parse_args(
        ["--out", str(out), "--preset", "tiny", "--steps", "2", "--batch-size", "8", "--eval-n", "12"]
        + ["--pretrain-steps", "0", "--image-tune-steps", "0", "--threads", str(torch.get_num_threads())]
        + ["--no-progress"]
    )
    assert clip_training.run_cli(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(METRIC_KEYS) <= set(report) and set(METRIC_KEYS) <= set(report["compositional"])
    metadata = read_metadata(out)
    assert meta_field(metadata, "train_config")["steps"] == 2
    assert meta_field(metadata, "metrics")["n"] == 12
    vlm = load_vlm(out)
    assert all(p.dtype == torch.float32 for p in vlm.parameters())  # stored fp16, loaded as float


@pytest.mark.skipif(
    not SHIPPED.is_file(),
    reason=f"WorldCLIP is not shipped yet (build it: python -m promptweave.world train clip --out {SHIPPED})",
)
@pytest.mark.slow
def test_shipped_worldclip_weights():
    assert SHIPPED.stat().st_size <= 30 * 2**20
    metadata = read_metadata(SHIPPED)
    assert metadata["promptweave.method"] == "vlm"
    assert metadata["promptweave.backbone"] == "worldclip2"
    assert set(METRIC_KEYS) <= set(meta_field(metadata, "metrics"))
    assert WorldCLIPTrainConfig.from_dict(meta_field(metadata, "train_config")).vlm_config().name == "worldclip2"
    vlm = load_vlm(SHIPPED)
    assert vlm.name == "worldclip2" and vlm.config.conv_stem and vlm.image_size == 64
    metrics = evaluate_worldclip(vlm, split="test", n=200)
    assert 0.35 <= metrics["zero_shot_acc"] <= 0.80, metrics  # useful but not saturated (chance: 1/27)
    assert metrics["zero_shot_colour_acc"] >= 0.70, metrics
    assert metrics["zero_shot_style_acc"] >= 0.60, metrics  # styles can be named in text (adaptation)
    assert metrics["i2t_r1"] > 0.05 and metrics["t2i_r1"] > 0.05, metrics  # chance: 1/200


@pytest.mark.slow
def test_text_tower_from_trains_a_new_image_tower_for_a_locked_text_space(tmp_path):
    donor = train_worldclip(_tiny(), None, progress=False, eval_n=0)
    donor_path = save_vlm(donor, tmp_path / "donor.safetensors")
    stem = VLMConfig(name="tiny-stem", conv_stem=(8, 16, 32)).to_dict()
    config = _tiny(vlm=stem, text_tower_from=str(donor_path), image_tune_steps=2)
    trained = train_worldclip(config, None, progress=False, eval_n=0)
    fresh = VisionLanguageModel(config.vlm_config(), seed=config.seed)
    donor_state, fresh_state = donor.clip.state_dict(), fresh.clip.state_dict()
    for name, value in trained.clip.state_dict().items():
        if name.startswith("visual."):
            continue
        assert torch.equal(value, donor_state[name]), name  # copied, then never trained
    visual = {k: v for k, v in trained.clip.state_dict().items() if k.startswith("visual.")}
    assert any(not torch.equal(v, fresh_state[k]) for k, v in visual.items())
    with torch.no_grad():
        assert torch.equal(trained.encode_text(["a red star."]), donor.encode_text(["a red star."]))
    assert trained.name == "tiny-stem" and trained.text_space == "tiny"  # WorldGen for 'tiny' accepts it
    unlocked = train_worldclip(
        _tiny(vlm=stem, text_tower_from=str(donor_path), lock_text_tower=False), None, progress=False, eval_n=0
    )
    assert unlocked.text_space == "tiny-stem"  # its own text space now
    assert not torch.equal(unlocked.clip.token_embedding.weight, donor.clip.token_embedding.weight)
    other = VLMConfig(name="wide", text_width=32, text_heads=2).to_dict()
    with pytest.raises(ValueError, match="text_tower_from: 'tiny' has another text tower shape.*text_width"):
        train_worldclip(_tiny(vlm=other, text_tower_from=str(donor_path)), None, progress=False, eval_n=0)


WEB = SHIPPED.with_name("worldclip-web.safetensors")


@pytest.mark.skipif(not WEB.is_file(), reason="WorldCLIP-web is not shipped (BENCHMARKS.md gives its command)")
@pytest.mark.slow
def test_shipped_worldclip_web_knows_families_far_better_than_fine_categories():
    """WorldCLIP-web (issue 37) learnt from web-like captions: it names a shape's family, seldom its fine category,
    and leaves the fine-grained tasks room to learn (BENCHMARKS.md, "Headroom")."""
    from promptweave.prompt_modules.world.vocabulary import FAMILY_IDS, family_of
    from promptweave.prompt_modules.world.web_captions import FAMILY_WORDS
    from promptweave.prompt_modules.world.zero_shot import scenes_to_images, single_object_scenes, zero_shot_predict

    metadata = read_metadata(WEB)
    assert metadata["promptweave.backbone"] == "worldclip-web"
    config = WorldCLIPTrainConfig.from_dict(meta_field(metadata, "train_config"))
    assert config.captions == "web" and config.vlm_config().name == "worldclip-web"
    vlm = load_vlm(WEB)
    scenes = list(single_object_scenes("val", 200))
    images = scenes_to_images(scenes)
    families = zero_shot_predict(vlm, images, [f"a picture of a {w}." for w in FAMILY_WORDS.values()])
    truth = torch.tensor([FAMILY_IDS[family_of(sc.objects[0].category)] for sc in scenes])
    family_acc = float((families == truth).float().mean())
    metrics = evaluate_worldclip(vlm, split="val", n=200)
    fine_acc, colour_acc = metrics["zero_shot_acc"], metrics["zero_shot_colour_acc"]
    # measured on these 200 val scenes (second WorldCLIP-web, 2026-12-07): families 0.80, fine categories 0.395, fine
    # colours 0.495 (WorldCLIP 2: 0.33, 0.665, 0.94); its features keep both (val probes 63.3 and 97.5, "Headroom")
    figures = (family_acc, fine_acc, colour_acc)
    assert family_acc >= 0.65 and fine_acc <= family_acc - 0.25 and colour_acc <= 0.7, figures
