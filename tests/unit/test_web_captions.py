"""Web-like captions (issue 37): the pretraining text of WorldCLIP-web, and its training batches."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch

from promptweave.prompt_modules.world.clip_training import WorldCLIPTrainConfig, train_worldclip, training_batch
from promptweave.prompt_modules.world.scene import sample_scene, split_seed_range
from promptweave.prompt_modules.world.vocabulary import CATEGORY_NAMES, COLOUR_NAMES, FAMILIES, STYLES
from promptweave.prompt_modules.world.web_captions import (
    BASIC_COLOUR,
    BASIC_COLOUR_NAMES,
    FAMILY_WORDS,
    WebCaptionConfig,
    describe_web,
    web_caption,
)

FINE_ONLY_COLOURS = sorted(set(COLOUR_NAMES) - set(BASIC_COLOUR_NAMES))


def _scenes(n: int, style: str = "flat"):
    start = split_seed_range("train").start
    return [sample_scene(start + k, style=style) for k in range(n)]


def _mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def test_fine_names_are_a_long_tail_and_families_are_the_common_word():
    config = WebCaptionConfig(wrong_rate=0.0, unrelated_rate=0.0)
    probabilities = sorted(config.fine_name_probability(c) for c in CATEGORY_NAMES)
    assert probabilities[-1] == pytest.approx(config.fine_rate)
    assert probabilities[0] < probabilities[-1] / 20  # a long tail, not a uniform rate
    captions = [web_caption(sc, sc, config, seed=0) for sc in _scenes(400)]
    fine = sum(any(_mentions(c, name) for name in CATEGORY_NAMES) for c in captions)
    family = sum(any(_mentions(c, word) for word in FAMILY_WORDS.values()) for c in captions)
    assert family > 3 * fine > 0


def test_only_basic_colours_and_some_styles_are_named():
    config = WebCaptionConfig(wrong_rate=0.0, unrelated_rate=0.0, style_rate=1.0)
    assert set(BASIC_COLOUR) == set(COLOUR_NAMES)
    for style in STYLES:
        captions = [web_caption(sc, sc, config, seed=1) for sc in _scenes(60, style)]
        for caption in captions:
            assert not any(_mentions(caption, name) for name in FINE_ONLY_COLOURS), caption
        named = sum(style in c or ("sketch" in c and style == "sketch") for c in captions)
        if style in config.named_styles:
            assert named > 0
        else:
            assert not any(w in c for c in captions for w in ("neon", "pixel", "mosaic")), style


def test_a_share_of_captions_is_wrong_or_unrelated_and_captions_are_deterministic():
    config = WebCaptionConfig()
    scenes = _scenes(300)
    others = scenes[1:] + scenes[:1]
    rng_free = [web_caption(sc, o, config, seed=5) for sc, o in zip(scenes, others, strict=True)]
    assert rng_free == [web_caption(sc, o, config, seed=5) for sc, o in zip(scenes, others, strict=True)]
    assert rng_free != [web_caption(sc, o, config, seed=6) for sc, o in zip(scenes, others, strict=True)]
    # a caption names the shape family of its own first object unless it is wrong or unrelated
    own = sum(any(_mentions(c, w) for w in (FAMILY_WORDS[sc.objects[0].family], sc.objects[0].category))
              for c, sc in zip(rng_free, scenes, strict=True))
    share = 1 - own / len(scenes)
    expected = config.wrong_rate + config.unrelated_rate
    assert expected / 2 < share < expected * 2, share


def test_describe_web_mentions_the_first_object():
    import random

    scene = _scenes(1)[0]
    text = describe_web(scene, WebCaptionConfig(fine_rate=1.0, tail_exponent=0.0), random.Random(0))
    assert scene.objects[0].category in text


def test_web_training_batches_have_no_negatives_and_coarse_labels():
    with pytest.raises(ValueError, match="hard_negatives=0"):
        WorldCLIPTrainConfig(captions="web")
    config = WorldCLIPTrainConfig(vlm="tiny", captions="web", hard_negatives=0, steps=4, pretrain_steps=2,
                                  pretrain_pool=32, pretrain_batch_size=8, batch_size=8)
    assert config.label_sizes() == (len(FAMILIES), len(BASIC_COLOUR_NAMES))
    for step in (0, 3):
        batch = training_batch(config, step)
        assert batch.negatives == []
        assert int(batch.category_ids.max()) < len(FAMILIES) and int(batch.colour_ids.max()) < len(BASIC_COLOUR_NAMES)
        assert Counter(batch.category_ids[0].tolist())[-1] < batch.category_ids.shape[1]


def test_web_training_runs_and_names_the_backbone(tmp_path):
    config = WorldCLIPTrainConfig(vlm="tiny", captions="web", hard_negatives=0, steps=3, pretrain_steps=1,
                                  pretrain_pool=16, pretrain_batch_size=4, batch_size=4, image_tune_steps=1)
    before = {k: v.clone() for k, v in train_worldclip(
        WorldCLIPTrainConfig(**{**config.to_dict(), "steps": 0, "pretrain_steps": 0, "image_tune_steps": 0}), None,
        progress=False).clip.state_dict().items()}
    vlm = train_worldclip(config, None, progress=False)
    changed = [k for k, v in vlm.clip.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("visual.") for k in changed) and any(not k.startswith("visual.") for k in changed)


def test_generation_prompts_name_the_first_object_and_a_style_and_leave_attributes_out():
    from promptweave.prompt_modules.world.generation_prompts import STYLE_WORDS, generation_prompt

    scenes = [sc for style in STYLES for sc in _scenes(50, style)]
    prompts = [generation_prompt(sc) for sc in scenes]
    assert prompts == [generation_prompt(sc) for sc in scenes]
    assert all(sc.objects[0].category in p for sc, p in zip(scenes, prompts, strict=True))
    styled = sum(any(w in p for w in STYLE_WORDS[sc.style]) for sc, p in zip(scenes, prompts, strict=True))
    assert 0.6 < styled / len(scenes) < 0.95
    colour_named = sum(sc.objects[0].colour in p for sc, p in zip(scenes, prompts, strict=True))
    assert 0.5 < colour_named / len(scenes) < 0.95  # attributes are left out, unlike the world's captions


def test_fine_colour_words_appear_only_when_asked_and_defaults_draw_the_same_captions():
    scenes = _scenes(200)
    shipped = WebCaptionConfig(wrong_rate=0.0, unrelated_rate=0.0)
    zero = WebCaptionConfig(wrong_rate=0.0, unrelated_rate=0.0, fine_colour_rate=0.0)
    assert [web_caption(sc, sc, shipped, 3) for sc in scenes] == [web_caption(sc, sc, zero, 3) for sc in scenes]
    always = WebCaptionConfig(wrong_rate=0.0, unrelated_rate=0.0, colour_rate=1.0, fine_colour_rate=1.0)
    captions = [web_caption(sc, sc, always, 3) for sc in scenes]
    fine_only = [sc for sc in scenes if sc.objects[0].colour in FINE_ONLY_COLOURS]
    assert fine_only and all(_mentions(c, sc.objects[0].colour)
                             for c, sc in zip(captions, scenes, strict=True) if sc in fine_only)


def test_heavier_tail_raises_the_mean_fine_name_rate():
    assert WebCaptionConfig().mean_fine_name_probability() < 0.08
    heavy = WebCaptionConfig(fine_rate=0.9, tail_exponent=0.6)
    assert 0.2 < heavy.mean_fine_name_probability() < 0.3


def test_web_caption_options_and_fine_label_heads_reach_the_training_batch():
    from promptweave.prompt_modules.world.clip_training import parse_web_caption_options

    options = parse_web_caption_options(["fine_rate=0.9", "named_styles=flat,neon", "fine_colour_rate=1"])
    assert options == {"fine_rate": 0.9, "named_styles": ("flat", "neon"), "fine_colour_rate": 1.0}
    with pytest.raises(SystemExit, match="fine_rate"):
        parse_web_caption_options(["fine_rat=0.9"])
    with pytest.raises(ValueError, match="unknown field"):
        WorldCLIPTrainConfig(captions="web", hard_negatives=0, web_captions={"nope": 1})
    config = WorldCLIPTrainConfig(vlm="tiny", captions="web", hard_negatives=0, label_set="fine", web_captions=options,
                                  steps=4, pretrain_steps=2, pretrain_pool=32, pretrain_batch_size=8, batch_size=8)
    assert WorldCLIPTrainConfig.from_dict(config.to_dict()).web_caption_config() == config.web_caption_config()
    assert config.label_sizes() == (len(CATEGORY_NAMES), len(COLOUR_NAMES))
    batch = training_batch(config, 3)
    assert int(batch.category_ids.max()) >= len(FAMILIES) or int(batch.colour_ids.max()) >= len(BASIC_COLOUR_NAMES)
    assert batch.negatives == [] and not any(c.startswith("a ") and "." in c for c in batch.captions[:1])


def test_attribute_words_appear_only_at_their_rate_and_describe_the_object():
    from promptweave.prompt_modules.world.captions import SIZE_WORDS, TEXTURE_ADJECTIVES

    scenes = [sc for sc in _scenes(300) if len(sc.objects) == 1]
    never = WebCaptionConfig(wrong_rate=0.0, unrelated_rate=0.0)
    words = {w for table in (SIZE_WORDS, TEXTURE_ADJECTIVES) for ws in table.values() for w in ws}
    assert not any(_mentions(web_caption(sc, sc, never, 2), w) for sc in scenes for w in words)
    always = WebCaptionConfig(wrong_rate=0.0, unrelated_rate=0.0, attribute_rate=1.0)
    for sc in scenes:
        caption, obj = web_caption(sc, sc, always, 2), sc.objects[0]
        assert any(_mentions(caption, w) for w in SIZE_WORDS[obj.size]), caption
        assert any(_mentions(caption, w) for w in TEXTURE_ADJECTIVES[obj.texture]), caption
    some = WebCaptionConfig(wrong_rate=0.0, unrelated_rate=0.0, attribute_rate=0.25)
    sized = sum(any(_mentions(web_caption(sc, sc, some, 2), w) for w in SIZE_WORDS[sc.objects[0].size])
                for sc in scenes)
    assert 0.1 < sized / len(scenes) < 0.4
