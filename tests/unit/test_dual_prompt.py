"""DCAR dual prompts: MI token weights, category-aware loss, training/resume, retrieval, files, FDRD JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from promptweave.prompt_modules.core.artifacts import ArtifactError, BackboneMismatchError
from promptweave.prompt_modules.core.learned_prompt import LearnedPrompt, LearnedPromptConfig
from promptweave.prompt_modules.core.vlm import VisionLanguageModel, VLMConfig
from promptweave.prompt_modules.dual_prompt import (
    DualPrompt,
    DualPromptConfig,
    FDRDSource,
    FolderSource,
    category_aware_contrastive_loss,
    category_match_weights,
    load_dual_prompt,
    mi_token_weights,
    rank_images,
    rank_texts,
    read_fdrd_json,
    save_dual_prompt,
    similarity,
    token_mutual_information,
    train_dual_prompt,
)
from promptweave.prompt_modules.world.sources import WorldSource

SMALL = DualPromptConfig(n_text=2, n_visual=2, text_depth=2, visual_depth=2, bank_size=8)


@pytest.fixture(scope="module")
def vlm():
    return VisionLanguageModel("tiny", seed=0)


@pytest.fixture(scope="module")
def trained(vlm):
    return train_dual_prompt(vlm, WorldSource(config=SMALL), SMALL, steps=3, batch_size=4, progress=False,
                             bank_batches=2)


def test_mi_estimator_bounds_and_weights():
    bank = torch.nn.functional.normalize(torch.eye(4), dim=-1)
    flat = torch.full((1, 4), 0.5)  # equally similar to every image: no information
    peaked = bank[:1]  # points at one image
    mi = token_mutual_information(torch.cat([flat, peaked]), bank, 100.0)
    assert mi[0] == pytest.approx(0.0, abs=1e-5)
    assert mi[1] == pytest.approx(math.log(4), abs=1e-3)
    tokens = torch.stack([flat[0], peaked[0], peaked[0]]).unsqueeze(0)
    mask = torch.tensor([[True, True, False]])
    w = mi_token_weights(tokens, mask, bank, 100.0)
    assert w[0, 2] == 0 and w.sum() == pytest.approx(1.0) and w[0, 1] > 0.99
    uniform = mi_token_weights(tokens, mask, None, 100.0)
    assert torch.allclose(uniform[0], torch.tensor([0.5, 0.5, 0.0]))


def test_category_match_weights():
    w = category_match_weights(
        [("circle",), ("ellipse",), ("circle",), ("plus",)], [("round",), ("round",), ("round",), ("cross",)],
        same_family=2.0, same_category=0.5,
    )
    assert w[0, 0] == 1 and w[0, 1] == 2.0 and w[0, 2] == 0.5 and w[0, 3] == 1.0
    assert torch.equal(w, w.T)


def test_weighted_contrastive_loss():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    txt = torch.nn.functional.normalize(img + 0.3 * torch.randn(4, 8), dim=-1)
    neg = torch.nn.functional.normalize(img.unsqueeze(1) + 0.5 * torch.randn(4, 3, 8), dim=-1)
    plain = category_aware_contrastive_loss(img, txt, 10.0)
    logits = 10.0 * img @ txt.T
    target = torch.arange(4)
    expected = 0.5 * (torch.nn.functional.cross_entropy(logits, target)
                      + torch.nn.functional.cross_entropy(logits.T, target))
    assert plain == pytest.approx(float(expected), abs=1e-5)
    ones = category_aware_contrastive_loss(img, txt, 10.0, match_weights=torch.ones(4, 4))
    assert ones == pytest.approx(float(plain), abs=1e-6)
    zero = category_aware_contrastive_loss(img, txt, 10.0, negative_features=neg, negative_weights=torch.zeros(4, 3))
    assert zero == pytest.approx(float(plain), abs=1e-5)
    light = category_aware_contrastive_loss(img, txt, 10.0, negative_features=neg, negative_weights=torch.ones(4, 3))
    heavy = category_aware_contrastive_loss(img, txt, 10.0, negative_features=neg,
                                            negative_weights=torch.full((4, 3), 3.0))
    assert plain < light < heavy


def test_world_source_gives_two_views_of_hard_negatives():
    batch = WorldSource(config=DualPromptConfig()).batch(0, 0, 6)
    assert batch.images.shape == (6, 3, 64, 64) and len(batch.positives) == 6
    assert batch.negative_weights.shape == (6, len(batch.negatives[0]))
    assert set(batch.negative_weights.unique().tolist()) <= {1.0, 2.0}
    assert (batch.negative_weights == 2.0).any()  # same-family swaps are up-weighted
    assert all(n != p for row, p in zip(batch.negatives, batch.positives, strict=True) for n in row)
    assert WorldSource().batch(0, 0, 6).positives == batch.positives  # deterministic


def test_training_is_deterministic_resumable_and_interruptible(vlm, tmp_path):
    kwargs = dict(steps=4, batch_size=4, progress=False, seed=3, bank_batches=1)
    source = WorldSource(config=SMALL)
    full = train_dual_prompt(vlm, source, SMALL, **kwargs)
    ckpt = tmp_path / "state.safetensors"
    calls = []

    def stop_after_two(step, steps, loss):
        calls.append((step, steps, loss))
        return step < 2

    first = train_dual_prompt(vlm, source, SMALL, checkpoint_path=ckpt, callback=stop_after_two, **kwargs)
    assert first.interrupted and first.steps_done == 2 and len(calls) == 2 and ckpt.is_file()
    resumed = train_dual_prompt(vlm, source, SMALL, checkpoint_path=ckpt, **kwargs)
    assert resumed.steps_done == 4 and not resumed.interrupted
    assert resumed.losses == pytest.approx(full.losses, abs=1e-6)
    for a, b in zip(full.dual.parameters(), resumed.dual.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert not any(p.requires_grad is False for p in vlm.parameters())  # the VLM's flags are restored


def test_callback_exception_saves_state(vlm, tmp_path):
    ckpt = tmp_path / "state.safetensors"

    def boom(step, steps, loss):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_dual_prompt(vlm, WorldSource(config=SMALL), SMALL, steps=3, batch_size=4, progress=False,
                          checkpoint_path=ckpt, callback=boom)
    assert ckpt.is_file()


def test_trained_prompt_has_bank_projection_and_scores(vlm, trained):
    dual = trained.dual
    assert int(dual.bank_count) == 8 and (dual.text_token_ids >= 0).all()
    batch = WorldSource().batch(0, 500, 4)
    sims = similarity(vlm, batch.images, batch.positives, dual)
    assert sims.shape == (4, 4) and torch.isfinite(sims).all()
    scores, order = rank_images(vlm, batch.images, batch.positives[0], dual)
    assert torch.allclose(scores, sims[:, 0]) and scores[order[0]] == scores.max()
    tscores, torder = rank_texts(vlm, batch.images[:1], batch.positives, dual)
    assert torch.allclose(tscores, sims[0]) and tscores[torder].tolist() == sorted(tscores.tolist(), reverse=True)
    weights = dual.token_weights(vlm, "a large red circle")
    assert [t for t, _ in weights][:2] == ["a", "large"] and sum(w for _, w in weights) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="image batch is empty"):
        rank_images(vlm, batch.images[:0], "a circle", dual)


def test_save_load_roundtrip_and_backbone_checks(vlm, trained, tmp_path):
    path = tmp_path / "dcar.safetensors"
    save_dual_prompt(trained.dual, path)
    loaded = load_dual_prompt(path, vlm)
    batch = WorldSource().batch(0, 7, 3)
    assert torch.allclose(similarity(vlm, batch.images, batch.positives, loaded),
                          similarity(vlm, batch.images, batch.positives, trained.dual), atol=1e-6)
    other = VisionLanguageModel(VLMConfig(name="other"), seed=1)
    with pytest.raises(BackboneMismatchError, match="trained for the VLM 'tiny', not 'other'"):
        load_dual_prompt(path, other)
    with pytest.raises(BackboneMismatchError):
        similarity(other, batch.images, batch.positives, loaded)
    lp = LearnedPrompt(LearnedPromptConfig(n_ctx=2, widths={"clip_l": 768}))
    lp.save(tmp_path / "lp.safetensors")
    with pytest.raises(ArtifactError, match="expected a 'dcar' artifact"):
        load_dual_prompt(tmp_path / "lp.safetensors")


def test_sd_export_by_vocabulary_projection_and_attached_vectors(trained, tmp_path):
    dual = trained.dual
    table_l = torch.randn(49408, 768)
    lp = dual.sd_learned_prompt({"clip_l": table_l})
    assert torch.equal(lp("clip_l"), table_l[dual.text_token_ids])
    both = dual.sd_learned_prompt({"clip_l": table_l, "clip_g": torch.randn(49408, 1280)})
    assert both.widths() == {"clip_l": 768, "clip_g": 1280}
    copy = load_dual_prompt(_saved(dual, tmp_path))
    copy.set_sd_prompt(LearnedPrompt(LearnedPromptConfig(n_ctx=3, widths={"clip_l": 768})))
    reloaded = load_dual_prompt(_saved(copy, tmp_path))
    assert reloaded.sd_prompt is not None and reloaded.sd_prompt.n_ctx == 3
    assert reloaded.sd_learned_prompt({"clip_l": table_l}) is reloaded.sd_prompt
    with pytest.raises(BackboneMismatchError, match="SDXL CLIP needs a prompt with clip_g"):
        reloaded.sd_learned_prompt({"clip_l": table_l, "clip_g": torch.randn(10, 1280)})


def _saved(dual, tmp_path):
    path = tmp_path / f"d{id(dual)}.safetensors"
    save_dual_prompt(dual, path)
    return path


def test_ablation_configs_train(vlm):
    coop = DualPromptConfig(n_text=2, n_visual=0, text_depth=1, visual_depth=0, coupling=False,
                            token_reweighting=False, category_aware=False)
    maple = DualPromptConfig(n_text=2, n_visual=2, token_reweighting=False, category_aware=False)
    for cfg in (coop, maple):
        result = train_dual_prompt(vlm, WorldSource(), cfg, steps=1, batch_size=3, progress=False)
        assert len(result.losses) == 1 and math.isfinite(result.losses[0])
    assert len(DualPrompt.for_vlm(vlm, coop).prompts.visual) == 0


def _write_fdrd(tmp_path, entries):
    path = tmp_path / "fdrd.json"
    path.write_text(json.dumps(entries))
    return path


def _image(tmp_path, name, colour):
    Image.fromarray(np.full((40, 50, 3), colour, dtype=np.uint8)).save(tmp_path / name)


def test_fdrd_json_reading_and_training(vlm, tmp_path):
    entries = []
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255), (0, 255, 0)]):
        _image(tmp_path, f"im{i}.png", colour)
        entries.append({"file_name": f"im{i}.png", "positive": f"a photo of a bird {i}",
                        "negative": [f"a photo of a fish {i}{k}" for k in range(4)]})
    path = _write_fdrd(tmp_path, entries)
    assert [e.positive for e in read_fdrd_json(path)][0] == "a photo of a bird 0"
    source = FDRDSource(path, config=SMALL)
    batch = source.batch(0, 0, 2)
    assert batch.images.shape == (2, 3, 64, 64) and batch.negative_weights.shape == (2, 4)
    result = train_dual_prompt(vlm, source, SMALL, steps=1, batch_size=2, progress=False, bank_batches=1)
    assert math.isfinite(result.losses[0])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[{\"file_name\": \"a.png\",", "not valid JSON \\(line 1"),
        ("{\"x\": 1}", "expected a JSON list"),
        ("[]", "non-empty JSON list"),
        ("[{\"file_name\": \"a.png\", \"positive\": \"p\"}]", "entry 0 lacks the key\\(s\\) \\['negative'\\]"),
        ("[{\"file_name\": \"a.png\", \"positive\": \"p\", \"negative\": [\"n\"]}]",
         "entry 0 has 1 negatives, expected 4"),
        ("[{\"file_name\": \"absent.png\", \"positive\": \"p\", \"negative\": [\"a\", \"b\", \"c\", \"d\"]}]",
         "entry 0: image file .*absent.png does not exist"),
    ],
)
def test_fdrd_json_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_fdrd_json(path)


def test_folder_source(tmp_path):
    for i in range(3):
        _image(tmp_path, f"{i}.png", (i * 80, 0, 0))
        (tmp_path / f"{i}.txt").write_text(f"caption {i}")
    batch = FolderSource(tmp_path).batch(0, 0, 2)
    assert batch.images.shape == (2, 3, 64, 64) and batch.negatives == []
    (tmp_path / "2.txt").unlink()
    with pytest.raises(ValueError, match="without a same-named .txt caption"):
        FolderSource(tmp_path)


def test_benchmark_recalls_and_gallery():
    from promptweave.bench.retrieval import eval_set, recalls, variants

    sims = torch.tensor([[0.9, 0.1, 0.95, 0.0], [0.2, 0.8, 0.1, 0.3]])  # 2 images, 2 captions + 2 negatives
    r = recalls(sims, 2)
    assert r["i2t_r1"] == 50.0 and r["i2t_r5"] == 100.0 and r["t2i_r1"] == 100.0
    images, captions, gallery = eval_set("test", 3)
    assert images.shape[0] == 3 and gallery[:3] == captions and len(gallery) == 3 * 7
    assert set(variants()) == {"zero_shot", "coop", "maple", "dcar_mi_only", "dcar_category_only", "dcar"}
