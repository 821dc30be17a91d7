"""DCAR dual prompts: MI token weights, category-aware loss, training/resume, retrieval, files, FDRD JSON."""

from __future__ import annotations

import dataclasses
import json
import math
import random

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


# ----- FDRD as published (DCAR authors' repository: FDRD/test/*_test.json, FDRD/inter_*_train.json) -------------
AUTHOR_DIR = "/root/autodl-tmp/wyf/CoOp-main/DATA/oxford_pets/images"  # the authors' machine: never exists here


def _published_test_file(tmp_path):
    """A ``*_test.json`` in the published layout: an object keyed by image id, ``file_name`` without extension,
    the authors' absolute ``file_path``, 4 category-swap negatives, ``class_name`` on some entries."""
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    _image(images, "Sphynx_43.jpg", (200, 150, 150))  # found by file_path's base name (and file_name + .jpg)
    _image(images, "Ragdoll_4.png", (240, 240, 240))  # found only by file_name + a common extension
    _image(images, "chihuahua_40.jpg", (120, 80, 40))
    swap = "A {} with striking green eyes stands on a person's arm, looking directly at the camera."
    data = {
        "Sphynx_43": {
            "file_name": "Sphynx_43", "file_path": f"{AUTHOR_DIR}/Sphynx_43.jpg", "class_name": "Sphynx",
            "positive": swap.format("Sphynx"),
            "negative": [swap.format(c) for c in ("german shorthaired", "yorkshire terrier", "British Shorthair",
                                                  "saint bernard")],
        },
        "Ragdoll_4": {
            "file_name": "Ragdoll_4", "file_path": f"{AUTHOR_DIR}/Ragdoll_4.jpg", "class_name": "Ragdoll",
            "positive": "A fluffy Ragdoll with a mix of brown and white fur is sitting on the floor.",
            "negative": [f"A fluffy {c} with a mix of brown and white fur is sitting on the floor."
                         for c in ("British Shorthair", "Sphynx", "Russian Blue", "american bulldog")],
        },
        "chihuahua_40": {  # no class_name; its first negative repeats the positive, as in the published pets file
            "file_name": "chihuahua_40", "file_path": f"{AUTHOR_DIR}/chihuahua_40.jpg",
            "positive": "A small brown and white chihuahua is sitting on a couch.",
            "negative": [f"A small brown and white {c} is sitting on a couch."
                         for c in ("chihuahua", "great pyrenees", "beagle", "leonberger")],
        },
    }
    path = tmp_path / "pets_test.json"
    path.write_text(json.dumps(data, indent=4))
    return path, images


def _published_train_file(tmp_path, with_classes=True):
    """An ``inter_*_train.json`` in the published layout: keyed by id, ``file_name`` with extension, the
    ``YOUR_IMAGE_PATH`` placeholder, ``class_name``, ``"negative": []``; images in ``<class_name>/`` folders."""
    root = tmp_path / "dtd"
    data = {}
    classes = ["banded", "dotted", "striped", "Maine_Coon"]
    for i, cls in enumerate(classes):
        for k in range(2):
            name = f"{cls.lower()}_{k:04d}.jpg"
            (root / cls).mkdir(parents=True, exist_ok=True)
            _image(root / cls, name, (60 * i, 30 * k, 200 - 40 * i))
            label = cls.replace("_", " ").lower()
            entry = {"file_name": name, "class_name": cls, "file_path": "YOUR_IMAGE_PATH",
                     "positive": f"This is a photo of {label}.The image features a close-up view of {label} fabric.",
                     "negative": []}
            if not with_classes:
                del entry["class_name"]
                _image(root, name, (60 * i, 30 * k, 200 - 40 * i))
            data[name] = entry
    path = tmp_path / ("inter_dtd_train.json" if with_classes else "plain_train.json")
    path.write_text(json.dumps(data, indent=4))
    return path, root


def test_fdrd_published_test_file_is_read(tmp_path):
    path, images = _published_test_file(tmp_path)
    entries = read_fdrd_json(path, image_root=images)
    assert [e.id for e in entries] == ["Sphynx_43", "Ragdoll_4", "chihuahua_40"]
    assert [e.path.name for e in entries] == ["Sphynx_43.jpg", "Ragdoll_4.png", "chihuahua_40.jpg"]
    assert all(e.path.parent == images for e in entries)
    assert [e.class_name for e in entries] == ["Sphynx", "Ragdoll", None]
    assert entries[0].file_name == "Sphynx_43" and len(entries[0].negatives) == 4
    # the images/ subfolder beside the JSON is the default root (a node passes no image_root)
    assert [e.path for e in read_fdrd_json(path)] == [e.path for e in entries]
    # a list of the same entries (the earlier form) reads the same
    listed = tmp_path / "listed.json"
    listed.write_text(json.dumps(list(json.loads(path.read_text()).values())))
    assert [(e.positive, e.path) for e in read_fdrd_json(listed, images)] == [(e.positive, e.path) for e in entries]


def test_fdrd_image_lookup_by_file_path_base_name_and_file_name(tmp_path):
    _image(tmp_path, "real_name.webp", (10, 20, 30))
    _image(tmp_path, "by_ext.JPG", (10, 20, 30))
    path = tmp_path / "x_test.json"
    negs = ["n1", "n2", "n3", "n4"]
    path.write_text(json.dumps({
        "a": {"file_name": "not_here", "file_path": "C:\\authors\\data\\real_name.webp", "positive": "p",
              "negative": negs},
        "b": {"file_name": "by_ext", "file_path": "YOUR_IMAGE_PATH", "positive": "p", "negative": negs},
    }))
    a, b = read_fdrd_json(path, tmp_path)
    assert a.path == tmp_path / "real_name.webp" and b.path == tmp_path / "by_ext.JPG"


def test_fdrd_missing_image_names_entry_tries_and_fix(tmp_path):
    path, images = _published_test_file(tmp_path)
    (images / "Ragdoll_4.png").unlink()
    with pytest.raises(ValueError) as info:
        read_fdrd_json(path, images)
    message = str(info.value)
    assert "entry 'Ragdoll_4': image file Ragdoll_4 does not exist under" in message
    assert "Ragdoll_4.jpg" in message and "Ragdoll_4.png" in message and "pass image_root=" in message
    assert str(path) in message


def test_fdrd_class_names_reach_the_batch_and_the_match_weights(tmp_path):
    path, images = _published_test_file(tmp_path)
    cfg = DualPromptConfig(n_text=2, n_visual=2, bank_size=8)
    batch = FDRDSource(path, images, size=48, config=cfg).batch(0, 0, 3)
    assert batch.images.shape == (3, 3, 48, 48)  # at the size the caller asks for (vlm.image_size)
    by_caption = dict(zip(batch.positives, batch.categories, strict=True))
    assert by_caption["A fluffy Ragdoll with a mix of brown and white fur is sitting on the floor."] == ("Ragdoll",)
    order = [c[0] for c in batch.categories]
    w = category_match_weights(batch.categories, batch.families, same_family=cfg.batch_family_weight,
                               same_category=cfg.batch_same_category_weight)
    i, j = order.index("Sphynx"), order.index("Ragdoll")
    k = next(n for n, c in enumerate(order) if c.startswith("#"))  # the entry without a class name
    assert w[i, j] == cfg.batch_family_weight and w[i, k] == 1.0 and w[j, k] == 1.0
    # the published negative that repeats the positive gets weight 0, the other swaps the sibling weight
    row = batch.positives.index("A small brown and white chihuahua is sitting on a couch.")
    assert batch.negative_weights[row].tolist() == [0.0] + [cfg.same_family_weight] * 3
    assert (batch.negative_weights[[i, j]] == cfg.same_family_weight).all()


def test_fdrd_train_file_gets_category_swap_negatives(tmp_path):
    path, root = _published_train_file(tmp_path)
    entries = read_fdrd_json(path, root)
    assert entries[0].path == root / "banded" / "banded_0000.jpg" and entries[0].negatives == []
    source = FDRDSource(path, root, config=SMALL)
    assert source.class_names == ["Maine_Coon", "banded", "dotted", "striped"]
    batch = source.batch(3, 5, 8)
    assert len(batch.negatives) == 8 and all(len(row) == 3 for row in batch.negatives)  # 3 other classes
    assert (batch.negative_weights == SMALL.same_family_weight).all()
    for positive, (cls,), row in zip(batch.positives, batch.categories, batch.negatives, strict=True):
        label = cls.replace("_", " ").lower()
        others = {c.replace("_", " ") for c in source.class_names if c != cls}
        swapped = {n.split("This is a photo of ")[1].split(".")[0] for n in row}
        assert swapped == others
        for n, other in zip(row, [n.split("This is a photo of ")[1].split(".")[0] for n in row], strict=True):
            assert n == positive.replace(label, other)
    assert source.batch(3, 5, 8).negatives == batch.negatives  # deterministic per (seed, step)
    assert source.batch(3, 6, 8).negatives != batch.negatives
    two = FDRDSource(path, root, config=SMALL, generated_negatives=2).batch(3, 5, 4)
    assert all(len(row) == 2 for row in two.negatives)


def test_category_swap_rule():
    from promptweave.prompt_modules.dual_prompt.data import category_swap_negatives

    rng = random.Random(0)
    caption = "A white Maine Coon on a sofa. The maine coon's eyes are green; a Maine Coonish toy."
    (neg,) = category_swap_negatives(caption, "Maine_Coon", ["Maine_Coon", "Russian_Blue"], 4, rng)
    assert neg == "A white Russian Blue on a sofa. The Russian Blue's eyes are green; a Maine Coonish toy."
    assert category_swap_negatives("a photo of a cat", "dog", ["dog", "bird"], 4, rng) == ["a photo of a cat"]


def test_fdrd_without_negatives_or_classes_trains_in_batch_only(vlm, tmp_path):
    path, root = _published_train_file(tmp_path, with_classes=False)
    source = FDRDSource(path, root, size=vlm.image_size, config=SMALL)
    batch = source.batch(0, 0, 4)
    assert batch.negatives == [] and batch.negative_weights.shape == (0, 0) and batch.categories is None
    result = train_dual_prompt(vlm, source, SMALL, steps=1, batch_size=4, progress=False, bank_batches=1)
    assert math.isfinite(result.losses[0])


def test_dcar_trains_on_published_fdrd_files(vlm, tmp_path):
    test_path, images = _published_test_file(tmp_path)
    train_path, root = _published_train_file(tmp_path)
    source = FDRDSource(train_path, root, size=vlm.image_size, config=SMALL)  # generated swaps + class names
    batch = source.batch(0, 0, 3)
    dual = DualPrompt.for_vlm(vlm, SMALL, sample=batch)
    with torch.no_grad():
        loss = dual.loss(vlm, batch)
        plain = dual.loss(vlm, dataclasses.replace(batch, negatives=[], negative_weights=torch.zeros(0, 0),
                                                   categories=None, families=None))
    assert math.isfinite(float(loss)) and float(loss) > float(plain)  # the swaps and match weights count
    for path, image_root, steps in ((train_path, root, 2), (test_path, images, 1)):
        source = FDRDSource(path, image_root, size=vlm.image_size, config=SMALL)
        result = train_dual_prompt(vlm, source, SMALL, steps=steps, batch_size=3, progress=False, bank_batches=1)
        assert result.steps_done == steps and all(math.isfinite(x) for x in result.losses)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{\"Sphynx_43\": {\"file_name\": ", "not valid JSON \\(line 1"),
        ("\"pets\"", "expected a non-empty JSON list .* not a str"),
        ("{}", "expected a non-empty JSON list of entries or an object keyed by image id"),
        ("{\"Sphynx_43\": [1, 2]}", "the value of 'Sphynx_43' is a list, not an object"),
        ("{\"Sphynx_43\": {\"file_name\": \"Sphynx_43\", \"negative\": []}}",
         "entry 'Sphynx_43' lacks the key\\(s\\) \\['positive'\\]"),
        ("{\"x\": {\"positive\": \"p\", \"negative\": []}}", "entry 'x' lacks the key\\(s\\) \\['file_name'\\]"),
        ("{\"x\": {\"file_name\": \"x\", \"positive\": \"p\", \"negative\": [\"a\", \"b\", \"c\"]}}",
         "entry 'x' has 3 negatives, expected 4"),
        ("{\"x\": {\"file_name\": \"x\", \"positive\": \"  \", \"negative\": []}}",
         "entry 'x': 'positive' must be a non-empty caption"),
        ("{\"x\": {\"file_name\": \"x\", \"positive\": \"p\", \"negative\": [\"a\", \"\", \"c\", \"d\"]}}",
         "entry 'x': 'negative\\[1\\]' must be a non-empty caption"),
        ("{\"x\": {\"file_name\": \"x\", \"positive\": \"p\", \"negative\": [], \"class_name\": \"\"}}",
         "entry 'x': 'class_name' must be a non-empty class name"),
        ("{\"x\": {\"file_name\": \"x\", \"positive\": \"p\", \"negative\": \"n\"}}",
         "entry 'x': 'negative' must be a list of 4 captions"),
    ],
)
def test_fdrd_published_layout_errors(tmp_path, content, message):
    path = tmp_path / "pets_test.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        read_fdrd_json(path, tmp_path)
    assert str(path) in str(info.value)


# ----- the default depth scales with the tower (issue 33) ---------------------------------------------------------
def test_default_depth_scales_with_the_tower_as_maple(tmp_path):
    """No depth given: round(0.75 * layers), as MaPLe prompts 9 of 12 (coupled: the image depth at most the text
    depth); given depths stay; the world benchmarks keep their explicit depth 2; files record the resolved depth."""
    from promptweave.bench.retrieval import variants
    from promptweave.prompt_modules.core.artifacts import ConfigError
    from promptweave.prompt_modules.dual_prompt import maple_depth

    assert [maple_depth(n) for n in (1, 2, 4, 6, 12, 24, 32, 48)] == [1, 2, 3, 5, 9, 18, 24, 36]
    cfg = DualPromptConfig()
    assert cfg.text_depth is None and cfg.depths(12, 12) == (9, 9) and cfg.depths(4, 4) == (3, 3)
    assert cfg.depths(12, 24) == (9, 9)  # MaPLe coupling: image prompts of layer i come from the text prompts
    assert DualPromptConfig(coupling=False).depths(12, 24) == (9, 18)
    assert DualPromptConfig(text_depth=2, visual_depth=2).depths(12, 12) == (2, 2)
    assert all(c.text_depth in (1, 2) and c.visual_depth in (0, 2) for c in variants().values() if c is not None)
    with pytest.raises(ConfigError):
        cfg.deep_config()  # automatic depths need the VLM's layers
    assert cfg.deep_config(12, 12).text_depth == 9
    deep = VisionLanguageModel(VLMConfig(name="deep12", vision_layers=12, text_layers=12), seed=0)
    dual = DualPrompt.for_vlm(deep, DualPromptConfig(n_text=2, n_visual=2, bank_size=0))
    assert (dual.config.text_depth, dual.config.visual_depth) == (9, 9)
    assert (dual.prompts.config.text_depth, dual.prompts.config.visual_depth) == (9, 9)
    loaded = load_dual_prompt(save_dual_prompt(dual, tmp_path / "deep12.safetensors"), deep)
    assert (loaded.config.text_depth, loaded.config.visual_depth) == (9, 9)
    assert DualPrompt.for_vlm(VisionLanguageModel("tiny", seed=0), DualPromptConfig()).config.text_depth == 2
