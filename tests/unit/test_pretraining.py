"""RPP prompt pretraining: unshared q/k/v prompts, soft labels, POMP sampling, training, bundles, DCAR init."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from promptweave.prompt_modules.core.artifacts import ArtifactError, BackboneMismatchError
from promptweave.prompt_modules.core.deep_prompts import (
    DeepPromptConfig,
    DeepPrompts,
    encode_image_prompted,
    encode_text_prompted,
)
from promptweave.prompt_modules.core.vlm import VisionLanguageModel, VLMConfig
from promptweave.prompt_modules.dual_prompt import DualPrompt, DualPromptConfig, save_dual_prompt
from promptweave.prompt_modules.pretraining import (
    FolderClassSource,
    RPPConfig,
    RPPPrompts,
    accuracy,
    classify,
    copy_prompt_tensors,
    init_deep_prompts_from_bundle,
    load_pretrained_prompts,
    pretrain_prompts,
    project_qkv,
    rpp_loss,
    sample_class_subset,
    save_pretrained_prompts,
    unshared_qkv_block,
)
from promptweave.prompt_modules.pretraining.train import LazyTeacherClassFeatures, teacher_class_features
from promptweave.prompt_modules.world.scene import HELD_OUT_COMBINATIONS
from promptweave.prompt_modules.world.sources import WorldClass, WorldClassSource, world_classes

SMALL = RPPConfig(n_text=2, n_visual=2, text_depth=2, visual_depth=2, classes_per_step=4)
ABSOLUTE = RPPConfig(**{**SMALL.to_dict(), "qkv_form": "absolute"})
OFFSET = RPPConfig(**{**SMALL.to_dict(), "qkv_form": "offset"})
FOUR = [
    WorldClass("circle", "red"),
    WorldClass("circle", "blue"),
    WorldClass("square", "red"),
    WorldClass("square", "blue"),
]


@pytest.fixture(scope="module")
def vlm():
    return VisionLanguageModel("tiny", seed=0)


@pytest.fixture(scope="module")
def source():
    return WorldClassSource(FOUR, shots=4)


@pytest.fixture(scope="module")
def images(source):
    return source.batch(0, 0, 4).images


@pytest.fixture(scope="module")
def trained(vlm, source):
    return pretrain_prompts(vlm, source, SMALL, steps=3, batch_size=4, progress=False)


def fresh(vlm, config=SMALL, seed=0):
    return RPPPrompts.for_vlm(vlm, config, seed=seed)


def test_unshared_block_equals_the_block_for_projected_qkv(vlm):
    block = vlm.text_blocks[0]
    x = torch.randn(3, 7, vlm.token_width)
    mask = vlm.text_attn_mask[:7, :7]
    qkv = project_qkv(block, x[0, 1:3])
    assert qkv.shape == (3, 2, vlm.token_width)
    x[:, 1:3] = x[0, 1:3]  # prompt rows are shared by the batch
    expected = block(x, attn_mask=mask)
    assert torch.allclose(unshared_qkv_block(block, x, mask, qkv, slice(1, 3)), expected, atol=1e-5)
    other = qkv.clone()
    other[1] += 1.0  # different keys: the other tokens attend differently
    changed = unshared_qkv_block(block, x, mask, other, slice(1, 3))
    assert not torch.allclose(changed[:, 3:], expected[:, 3:], atol=1e-4)
    assert torch.allclose(changed[:, :1], expected[:, :1], atol=1e-5)  # causal: the start token cannot see them


def test_untrained_unshared_prompts_equal_shared_prompts_and_get_gradients(vlm, images):
    rpp = fresh(vlm)
    assert len(rpp.text_qkv) == 2 and len(rpp.visual_qkv) == 2 and rpp.text_qkv[0].shape == (3, 2, vlm.token_width)
    texts = rpp.class_texts(["red circle", "blue square"])
    assert texts == ["red circle.", "blue square."]
    assert torch.allclose(rpp.encode_text(vlm, texts), encode_text_prompted(vlm, texts, rpp.prompts), atol=1e-5)
    assert torch.allclose(rpp.encode_images(vlm, images), encode_image_prompted(vlm, images, rpp.prompts), atol=1e-5)
    loss = rpp.encode_text(vlm, texts).sum() + rpp.encode_images(vlm, images).sum()
    loss.backward()
    for params in (rpp.text_qkv, rpp.visual_qkv):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    shared = fresh(vlm, RPPConfig(n_text=2, n_visual=2, qkv_mode="shared"))
    assert len(shared.text_qkv) == 0 and len(shared.visual_qkv) == 0


def test_offset_form_matches_absolute_prompts_and_trains_the_shared_tokens_too(vlm, images):
    offset, absolute = fresh(vlm, OFFSET), fresh(vlm, ABSOLUTE)
    assert all(not p.detach().any() for p in [*offset.text_qkv, *offset.visual_qkv])
    texts = offset.class_texts(["red circle", "blue square"])
    shared_text = encode_text_prompted(vlm, texts, offset.prompts)
    assert torch.allclose(offset.encode_text(vlm, texts), shared_text, atol=1e-5)
    shared_images = encode_image_prompted(vlm, images, offset.prompts)
    assert torch.allclose(offset.encode_images(vlm, images), shared_images, atol=1e-5)
    # moved offsets = absolute prompts at (projection of the shared token + offset): the same features
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mine, theirs in ((offset.text_qkv, absolute.text_qkv), (offset.visual_qkv, absolute.visual_qkv)):
            for a, b in zip(mine, theirs, strict=True):
                a.copy_(0.2 * torch.randn(a.shape, generator=generator))
                b.add_(a)
    assert torch.allclose(offset.encode_text(vlm, texts), absolute.encode_text(vlm, texts), atol=1e-5)
    assert torch.allclose(offset.encode_images(vlm, images), absolute.encode_images(vlm, images), atol=1e-5)
    errors, expected = offset.layer_tokens(vlm).errors, absolute.layer_tokens(vlm).errors
    for tower in ("text", "visual"):
        assert errors[tower] == pytest.approx(expected[tower], abs=1e-4) and min(errors[tower]) > 1e-3
    assert not torch.allclose(offset.encode_text(vlm, texts), shared_text, atol=1e-4)
    # a step reaches the offsets and, through the frozen projections, the layer-0 text context, which absolute
    # q/k/v leave unused (its hidden state is replaced at layer 1 before anything reads it)
    for rpp in (offset, absolute):
        (rpp.encode_text(vlm, texts).sum() + rpp.encode_images(vlm, images).sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in [*offset.text_qkv, *offset.visual_qkv])
    assert offset.prompts.text_ctx.vectors["text"].grad.abs().sum() > 0
    context_grad = absolute.prompts.text_ctx.vectors["text"].grad
    assert context_grad is None or not context_grad.any()
    with pytest.raises(ValueError, match="qkv_form"):
        RPPConfig(qkv_form="relative")


def test_offset_bundle_roundtrip_and_older_bundles_read_as_absolute(vlm, source, tmp_path, images):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    rpp = pretrain_prompts(vlm, source, OFFSET, steps=2, batch_size=4, progress=False).rpp
    path = save_pretrained_prompts(rpp, tmp_path / "offset.safetensors", vlm)
    bundle = load_pretrained_prompts(path, vlm)
    assert bundle.config.qkv_form == "offset" and "unshared (offset) q/k/v" in bundle.summary()
    with torch.no_grad():
        assert torch.allclose(bundle.rpp.encode_images(vlm, images), rpp.encode_images(vlm, images), atol=1e-6)
    # a bundle written before qkv_form existed: its config has no such key and its q/k/v are absolute
    absolute = fresh(vlm, ABSOLUTE)
    old = save_pretrained_prompts(absolute, tmp_path / "absolute.safetensors", vlm)
    with safe_open(str(old), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    key = next(k for k in meta if k.endswith("config"))
    saved = json.loads(meta[key])
    del saved["qkv_form"]
    meta[key] = json.dumps(saved)
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=meta)
    loaded = load_pretrained_prompts(tmp_path / "old.safetensors", vlm)
    assert loaded.config.qkv_form == "absolute"
    with torch.no_grad():
        assert torch.allclose(loaded.rpp.encode_images(vlm, images), absolute.encode_images(vlm, images), atol=1e-6)


def test_init_text_makes_the_untrained_text_prompt_read_like_the_template(vlm):
    rpp = fresh(vlm, RPPConfig(n_text=4, text_depth=1, n_visual=0, visual_depth=0))
    prompted = rpp.encode_text(vlm, rpp.class_texts(["red circle"]))
    plain = vlm.encode_text(["a picture of a red circle."])
    assert torch.allclose(prompted, plain, atol=1e-5)


def test_layer_tokens_recover_shared_tokens_and_fit_learned_qkv(vlm):
    rpp = fresh(vlm, ABSOLUTE)
    tokens = rpp.layer_tokens(vlm)
    assert max(tokens.errors["text"] + tokens.errors["visual"]) < 1e-4
    assert torch.allclose(tokens.text[0], rpp.prompts.text_ctx("text").detach(), atol=1e-4)
    assert torch.allclose(tokens.text[1], rpp.prompts.text_deep[0].detach(), atol=1e-4)
    for i in range(2):
        assert torch.allclose(tokens.visual[i], rpp.prompts.visual[i].detach(), atol=1e-4)
    with torch.no_grad():
        rpp.text_qkv[1][1:] += 0.3 * torch.randn(2, 2, vlm.token_width, generator=torch.Generator().manual_seed(0))
    moved = rpp.layer_tokens(vlm)
    assert moved.errors["text"][1] > 1e-3 and max(moved.errors["visual"]) < 1e-4
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(moved.visual, tokens.visual, strict=True))
    # the least-squares token explains the learned q/k/v better than the original shared token does
    block = vlm.text_blocks[1]
    fitted = (project_qkv(block, moved.text[1]) - rpp.text_qkv[1]).norm()
    original = (project_qkv(block, rpp.prompts.text_deep[0]) - rpp.text_qkv[1]).norm()
    assert fitted < original


def test_rpp_loss_hard_and_soft_parts():
    torch.manual_seed(0)
    student = torch.randn(4, 6, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3])
    ce = torch.nn.functional.cross_entropy(student, labels)
    hard_only, parts = rpp_loss(student, labels, torch.randn(4, 6), soft_weight=0.0)
    assert torch.allclose(hard_only, ce) and parts["soft"] == 0.0
    same, parts = rpp_loss(student, labels, student.detach().clone(), soft_weight=2.0, temperature=3.0)
    assert torch.allclose(same, ce, atol=1e-6) and abs(parts["soft"]) < 1e-6
    teacher = torch.randn(4, 6)
    loss, parts = rpp_loss(student, labels, teacher, soft_weight=0.5, temperature=2.0)
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(student / 2, -1), torch.softmax(teacher / 2, -1), reduction="batchmean"
    )
    assert loss.item() == pytest.approx(ce.item() + 0.5 * 4 * kl.item(), rel=1e-5)
    assert parts["soft"] == pytest.approx(4 * kl.item(), rel=1e-5)
    loss.backward()
    assert student.grad is not None


def test_pomp_class_subset_holds_the_batch_classes():
    labels = torch.tensor([7, 3, 7, 90])
    subset, local = sample_class_subset(labels, 100, 10, torch.Generator().manual_seed(0))
    assert len(subset) == 10 and len(set(subset.tolist())) == 10
    assert torch.equal(subset[local], labels)
    again, _ = sample_class_subset(labels, 100, 10, torch.Generator().manual_seed(0))
    assert torch.equal(subset, again)
    small, local = sample_class_subset(labels, 100, 2, None)  # fewer than the batch's classes: all of those
    assert sorted(small.tolist()) == [3, 7, 90] and torch.equal(small[local], labels)
    everything, local = sample_class_subset(labels, 100, 0)
    assert torch.equal(everything, torch.arange(100)) and torch.equal(local, labels)


def test_world_label_space_and_source():
    every = world_classes(held_out=None)
    assert len(every) == 27 * 20 and every[0].name == "red five-point star"
    train = world_classes()
    held = world_classes(held_out=True)
    assert len(train) + len(held) == len(every) and len(held) == len(HELD_OUT_COMBINATIONS)
    assert not {(c.category, c.colour) for c in train} & set(HELD_OUT_COMBINATIONS)
    assert all(c.category == "ring" for c in world_classes(["ring"]))
    with pytest.raises(ValueError, match="unknown world categories"):
        world_classes(["dodecahedron"])
    src = WorldClassSource(FOUR, shots=2)
    a, b = src.batch(3, 5, 6), src.batch(3, 5, 6)
    assert a.images.shape == (6, 3, 64, 64) and torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.labels.min() >= 0 and a.labels.max() < 4 and len(src) == 8
    # a red class renders red pixels, a blue class blue ones (the object is really drawn)
    red = src.batch(0, 0, 32)
    for image, label in zip(red.images, red.labels, strict=True):
        colour = FOUR[int(label)].colour
        rgb = image.permute(1, 2, 0).reshape(-1, 3)
        target = torch.tensor([230, 30, 30]) if colour == "red" else torch.tensor([30, 60, 225])
        close = ((rgb * 255 - target).abs().max(dim=1).values < 40).sum()
        assert close > 10, colour
    with pytest.raises(ValueError, match="at least 2 classes"):
        WorldClassSource(FOUR[:1])


def test_config_validation():
    with pytest.raises(ValueError, match="qkv_mode"):
        RPPConfig(qkv_mode="half")
    with pytest.raises(ValueError, match="temperature"):
        RPPConfig(temperature=0)
    with pytest.raises(ValueError, match="soft_weight"):
        RPPConfig(soft_weight=-1)
    with pytest.raises(ValueError, match="class_template"):
        RPPConfig(class_template="no slot")
    assert RPPConfig.from_dict(RPPConfig(qkv_mode="shared").to_dict()) == RPPConfig(qkv_mode="shared")
    with pytest.raises(ValueError, match="unknown RPPConfig fields"):
        RPPConfig.from_dict({"bogus": 1})


def test_pretraining_is_deterministic_resumable_and_interruptible(vlm, source, tmp_path):
    kwargs = {"steps": 4, "batch_size": 4, "progress": False}
    weights = {k: v.clone() for k, v in vlm.state_dict().items()}
    reference = pretrain_prompts(vlm, source, SMALL, **kwargs)
    assert all(torch.equal(v, weights[k]) for k, v in vlm.state_dict().items())  # the VLM stays frozen
    again = pretrain_prompts(vlm, source, SMALL, **kwargs)
    assert reference.losses == again.losses and len(reference.parts["soft"]) == 4
    ckpt = tmp_path / "state.safetensors"
    first = pretrain_prompts(vlm, source, SMALL, checkpoint_path=ckpt, callback=lambda s, n, loss: s < 2, **kwargs)
    assert first.interrupted and first.steps_done == 2 and ckpt.is_file()
    resumed = pretrain_prompts(vlm, source, SMALL, checkpoint_path=ckpt, **kwargs)
    assert resumed.losses == pytest.approx(reference.losses, abs=1e-6)
    for (name, a), (_, b) in zip(reference.rpp.state_dict().items(), resumed.rpp.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    assert all(p.requires_grad for p in vlm.parameters())  # requires_grad restored after training

    def boom(step, total, loss):
        raise KeyboardInterrupt

    ckpt2 = tmp_path / "boom.safetensors"
    with pytest.raises(KeyboardInterrupt):
        pretrain_prompts(vlm, source, SMALL, checkpoint_path=ckpt2, callback=boom, **kwargs)
    assert ckpt2.is_file()


def test_qkv_lr_scale_scales_only_the_unshared_qkv_step(vlm, source):
    """One Adam step moves each parameter by about ``lr * sign(grad)``: scaling the q/k/v prompts' learning rate
    scales their step and leaves every other prompt parameter's step as it was."""
    kwargs = {"steps": 1, "batch_size": 4, "progress": False, "lr": 1e-3}
    runs = {
        scale: pretrain_prompts(vlm, source, RPPConfig(**{**SMALL.to_dict(), "qkv_lr_scale": scale}), **kwargs).rpp
        for scale in (1.0, 3.0, 5.0)
    }
    qkv = {s: torch.cat([p.detach().flatten() for p in [*r.text_qkv, *r.visual_qkv]]) for s, r in runs.items()}
    assert torch.allclose(qkv[5.0] - qkv[1.0], 2 * (qkv[3.0] - qkv[1.0]), atol=1e-6)
    assert (qkv[3.0] - qkv[1.0]).abs().max() == pytest.approx(2e-3, rel=0.05)
    shared = {s: r.prompts.state_dict() for s, r in runs.items()}
    assert all(torch.equal(v, shared[5.0][k]) for k, v in shared[1.0].items())
    with pytest.raises(ValueError, match="qkv_lr_scale"):
        RPPConfig(qkv_lr_scale=0)


class FixedBatch:
    """Always the same batch: prompts on a random tiny VLM can memorise it (they cannot learn classes)."""

    def __init__(self, classes):
        self.inner = WorldClassSource(classes, shots=2)
        self.class_names = self.inner.class_names

    def batch(self, seed, step, batch_size):
        return self.inner.batch(seed, 0, batch_size)


def test_teacher_features_are_encoded_once_on_first_use_and_equal_the_full_table(vlm):
    names = ["red star", "blue circle", "green square", "white ring", "crimson hexagon"]
    template = "a picture of a {}."
    full = teacher_class_features(vlm, names, template)
    calls = []
    encode_text = vlm.encode_text
    vlm.encode_text = lambda texts, *a, **k: calls.append(list(texts)) or encode_text(texts, *a, **k)
    try:
        lazy = LazyTeacherClassFeatures(vlm, names, template)
        first = lazy(torch.tensor([3, 1, 3]))
        second = lazy(torch.tensor([1, 4]))
    finally:
        del vlm.encode_text  # back to the class's method
    assert calls == [[template.format(names[1]), template.format(names[3])], [template.format(names[4])]]
    assert torch.allclose(first, full[torch.tensor([3, 1, 3])], atol=1e-6)
    assert torch.allclose(second, full[torch.tensor([1, 4])], atol=1e-6)


def test_pretraining_fits_a_batch(vlm):
    source = FixedBatch(FOUR)
    config = RPPConfig(n_text=2, n_visual=2, soft_weight=0.0, classes_per_step=0)
    result = pretrain_prompts(vlm, source, config, steps=40, batch_size=8, lr=3e-2, progress=False)
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5]) - 0.3
    batch = source.batch(0, 0, 8)
    before = accuracy(classify(vlm, batch.images, source.class_names, fresh(vlm, config)), batch.labels)
    after = accuracy(classify(vlm, batch.images, source.class_names, result.rpp), batch.labels)
    assert after > before


@pytest.mark.slow
def test_soft_labels_keep_the_student_close_to_the_teacher(vlm, source):
    batch = source.batch(0, 999, 32)
    teacher_logits = (
        vlm.logit_scale
        * vlm.encode_image(batch.images)
        @ vlm.encode_text([f"a picture of a {n}." for n in source.class_names]).T
    )

    def kl_to_teacher(soft_weight):
        config = RPPConfig(n_text=2, n_visual=2, soft_weight=soft_weight, classes_per_step=0)
        rpp = pretrain_prompts(vlm, source, config, steps=25, batch_size=16, lr=1e-2, progress=False).rpp
        with torch.no_grad():
            student = (
                vlm.logit_scale * rpp.encode_images(vlm, batch.images) @ rpp.encode_classes(vlm, source.class_names).T
            )
        return float(rpp_loss(student, batch.labels, teacher_logits, soft_weight=1.0)[1]["soft"])

    assert kl_to_teacher(5.0) < kl_to_teacher(0.0)


def test_classify_without_prompts_is_clip_zero_shot(vlm, source):
    from promptweave.prompt_modules.world.zero_shot import zero_shot_predict

    batch = source.batch(1, 1, 8)
    names = source.class_names
    expected = zero_shot_predict(vlm, batch.images, [f"a picture of a {n}." for n in names])
    assert torch.equal(classify(vlm, batch.images, names), expected)
    assert accuracy(expected, expected) == 100.0


def test_bundle_roundtrip_metadata_and_checks(vlm, source, trained, tmp_path, images):
    path = save_pretrained_prompts(
        trained.rpp,
        tmp_path / "rpp.safetensors",
        vlm,
        class_names=trained.class_names,
        info={"steps": trained.steps_done, "final_loss": trained.losses[-1]},
    )
    bundle = load_pretrained_prompts(path, vlm)
    assert bundle.backbone == "tiny" and bundle.config == SMALL
    assert bundle.info["n_classes"] == 4 and bundle.info["classes"] == source.class_names and bundle.info["steps"] == 3
    texts = trained.rpp.class_texts(source.class_names)
    with torch.no_grad():
        assert torch.allclose(bundle.rpp.encode_text(vlm, texts), trained.rpp.encode_text(vlm, texts), atol=1e-6)
        assert torch.allclose(bundle.rpp.encode_images(vlm, images), trained.rpp.encode_images(vlm, images), atol=1e-6)
    assert [t.shape for t in bundle.deep_prompt_tensors("text")] == [(2, vlm.token_width)] * 2
    assert [t.shape for t in bundle.deep_prompt_tensors("visual")] == [(2, vlm.vision_width)] * 2
    assert set(bundle.layer_tokens.errors) == {"text", "visual"} and "RPP pretrained prompts" in bundle.summary()
    with pytest.raises(ValueError, match="tower"):
        bundle.deep_prompt_tensors("audio")
    other = VisionLanguageModel(VLMConfig(name="other"), seed=1)
    with pytest.raises(BackboneMismatchError, match="made for the VLM 'tiny', not 'other'"):
        load_pretrained_prompts(path, other)
    dcar = tmp_path / "dcar.safetensors"
    save_dual_prompt(DualPrompt.for_vlm(vlm, DualPromptConfig(n_text=2, n_visual=2, bank_size=0)), dcar)
    with pytest.raises(ArtifactError, match="expected a 'rpp' artifact"):
        load_pretrained_prompts(dcar)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x80\x04not safetensors at all")
    with pytest.raises(ArtifactError):
        load_pretrained_prompts(broken)


@pytest.mark.parametrize("coupling", [False, True])
def test_dual_prompt_starts_from_the_bundle_by_one_config_switch(vlm, trained, tmp_path, coupling):
    path = save_pretrained_prompts(trained.rpp, tmp_path / "rpp.safetensors", vlm)
    bundle = load_pretrained_prompts(path)
    config = DualPromptConfig(n_text=2, n_visual=2, coupling=coupling, bank_size=0, init_from=str(path))
    dual = DualPrompt.for_vlm(vlm, config)
    scratch = DualPrompt.for_vlm(vlm, DualPromptConfig(n_text=2, n_visual=2, coupling=coupling, bank_size=0))
    p = dual.prompts
    text, visual = bundle.deep_prompt_tensors("text"), bundle.deep_prompt_tensors("visual")
    assert torch.allclose(p.text_prompt(0), text[0], atol=1e-6) and torch.allclose(p.text_prompt(1), text[1])
    for layer in range(2):
        assert torch.allclose(p.visual_prompt(layer), visual[layer], atol=1e-4)
    assert not torch.allclose(scratch.prompts.text_prompt(1), text[1])
    with pytest.raises(ArtifactError, match="not found"):
        DualPrompt.for_vlm(vlm, DualPromptConfig(n_text=2, n_visual=2, init_from=str(tmp_path / "absent.safetensors")))
    other = VisionLanguageModel(VLMConfig(name="other"), seed=1)
    with pytest.raises(BackboneMismatchError):
        DualPrompt.for_vlm(other, config)


def test_generic_copy_handles_other_shapes(vlm, trained):
    tokens = trained.rpp.layer_tokens(vlm)
    bigger = DeepPrompts.for_vlm(vlm, DeepPromptConfig(n_text=3, n_visual=1, text_depth=1, visual_depth=2))
    before = bigger.text_ctx("text").detach().clone()
    done = init_deep_prompts_from_bundle(bigger, load_bundle_from(trained, vlm))
    assert done == {"text": 1, "visual": 2}
    ctx = bigger.text_ctx("text").detach()
    assert torch.allclose(ctx[:2], tokens.text[0], atol=1e-6) and torch.equal(ctx[2], before[2])
    assert torch.allclose(bigger.visual[1].detach(), tokens.visual[1][:1], atol=1e-5)
    targets = [torch.zeros(5, vlm.token_width)]
    assert copy_prompt_tensors(targets, tokens.text) == 1 and torch.allclose(targets[0][:2], tokens.text[0], atol=1e-6)
    with pytest.raises(BackboneMismatchError, match="width"):
        copy_prompt_tensors([torch.zeros(2, 7)], tokens.text)


def load_bundle_from(result, vlm):
    from promptweave.prompt_modules.pretraining import PretrainedPromptBundle

    return PretrainedPromptBundle(result.rpp, result.rpp.layer_tokens(vlm))


def test_folder_class_source(vlm, tmp_path):
    for name, colour in (("red_circle", (230, 30, 30)), ("blue-square", (30, 60, 225))):
        (tmp_path / name).mkdir()
        for k in range(2):
            Image.new("RGB", (40, 30), colour).save(tmp_path / name / f"{k}.png")
    (tmp_path / "empty").mkdir()
    src = FolderClassSource(tmp_path, size=64)
    assert src.class_names == ["blue square", "red circle"] and len(src) == 4
    batch = src.batch(0, 0, 3)
    assert batch.images.shape == (3, 3, 64, 64)
    for image, label in zip(batch.images, batch.labels, strict=True):
        assert (image[0].mean() > 0.5) == (src.class_names[int(label)] == "red circle")
    result = pretrain_prompts(vlm, src, SMALL, steps=1, batch_size=2, progress=False)
    assert result.class_names == src.class_names
    with pytest.raises(ValueError, match="need at least 2 sub-folders"):
        FolderClassSource(tmp_path / "empty")


def test_benchmark_label_split_and_eval_set():
    from promptweave.bench.pretraining import HELD_OUT_CATEGORIES, SEEN_CATEGORIES, eval_set, variants

    assert len(HELD_OUT_CATEGORIES) == 7 and not set(HELD_OUT_CATEGORIES) & set(SEEN_CATEGORIES)
    assert len(HELD_OUT_CATEGORIES) + len(SEEN_CATEGORIES) == 27
    classes = world_classes(HELD_OUT_CATEGORIES)
    images, labels = eval_set("test", 5, classes)
    assert images.shape == (5, 3, 64, 64) and labels.max() < len(classes)
    names = variants()
    assert names["zero_shot"] is None and names["shared_hard"].qkv_mode == "shared"
    assert names["shared_hard"].soft_weight == 0 and names["rpp"].unshared and names["rpp"].soft_weight > 0


@pytest.mark.parametrize(
    ("config", "kwargs", "field"),
    [
        ("rpp", {"temperature": 0.0}, "temperature"),
        ("rpp", {"soft_weight": -1.0}, "soft_weight"),
        ("rpp", {"qkv_mode": "both"}, "qkv_mode"),
        ("dual", {"n_text": 2, "n_visual": 3, "coupling": True}, "n_visual"),
        ("dual", {"bank_size": -1}, "bank_size"),
        ("deep", {"text_depth": -1}, "text_depth"),
    ],
)
def test_config_errors_name_their_field_as_data(config, kwargs, field):
    """Callers (the ComfyUI nodes) map ``ConfigError.field`` to an input without reading the message."""
    from promptweave.prompt_modules.core.artifacts import ConfigError
    from promptweave.prompt_modules.core.deep_prompts import DeepPromptConfig
    from promptweave.prompt_modules.dual_prompt import DualPromptConfig

    cls = {"rpp": RPPConfig, "dual": DualPromptConfig, "deep": DeepPromptConfig}[config]
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
