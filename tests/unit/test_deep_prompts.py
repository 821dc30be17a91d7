"""Deep (VPT-deep / MaPLe) prompts for both VLM towers: equivalence without prompts, shapes, depth, hooks."""

from __future__ import annotations

import pytest
import torch

from promptweave.prompt_modules.core.artifacts import BackboneMismatchError
from promptweave.prompt_modules.core.deep_prompts import (
    DeepPromptConfig,
    DeepPrompts,
    default_layer_fn,
    encode_image_prompted,
    encode_text_prompted,
)
from promptweave.prompt_modules.core.learned_prompt import LearnedPrompt
from promptweave.prompt_modules.core.vlm import VisionLanguageModel, VLMConfig

TEXTS = ["a red five-point star", "a picture of a small blue hexagon on a white background"]


@pytest.fixture(scope="module")
def vlm():
    torch.manual_seed(0)
    return VisionLanguageModel("tiny", seed=0)


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_no_prompts_equals_plain_encoders(vlm, images):
    assert torch.allclose(encode_text_prompted(vlm, TEXTS), vlm.encode_text(TEXTS), atol=1e-6)
    tokens = vlm.tokenize(TEXTS)
    assert torch.allclose(encode_text_prompted(vlm, tokens), vlm.encode_text(tokens), atol=1e-6)
    assert torch.allclose(encode_image_prompted(vlm, images), vlm.encode_image(images), atol=1e-6)
    raw = encode_image_prompted(vlm, images, normalize=False)
    assert torch.allclose(raw, vlm.encode_image(images, normalize=False), atol=1e-5)


def test_depth_zero_prompts_equal_plain_encoders(vlm, images):
    for cfg in (DeepPromptConfig(n_text=0, n_visual=0), DeepPromptConfig(text_depth=0, visual_depth=0)):
        prompts = DeepPrompts.for_vlm(vlm, cfg)
        assert prompts.n_text == prompts.n_visual == 0
        assert torch.allclose(encode_text_prompted(vlm, TEXTS, prompts), vlm.encode_text(TEXTS), atol=1e-6)
        assert torch.allclose(encode_image_prompted(vlm, images, prompts), vlm.encode_image(images), atol=1e-6)


def test_shallow_visual_prompts_match_the_vlm_primitive(vlm, images):
    prompts = DeepPrompts.for_vlm(vlm, DeepPromptConfig(n_text=0, n_visual=3, visual_depth=1))
    expected = vlm.encode_image_with_prompts(images, prompts.visual_prompt(0))
    assert torch.allclose(encode_image_prompted(vlm, images, prompts), expected, atol=1e-6)


def test_text_context_is_a_learned_prompt_after_the_start_token(vlm):
    prompts = DeepPrompts.for_vlm(vlm, DeepPromptConfig(n_text=3, n_visual=0, text_depth=1))
    assert isinstance(prompts.text_ctx, LearnedPrompt)
    ctx = prompts.text_prompt(0).detach()
    ids = vlm.tokenize(TEXTS[:1])[0]
    eot = int(ids.argmax())
    manual = torch.cat([vlm.embed_tokens(ids[:1]), ctx, vlm.embed_tokens(ids[1 : eot + 1])])
    expected = vlm.encode_text_embeddings(manual.unsqueeze(0), torch.tensor([eot + 3]))
    assert torch.allclose(encode_text_prompted(vlm, TEXTS[:1], prompts), expected, atol=1e-6)


def test_deep_prompts_change_features_and_get_gradients(vlm, images):
    cfg = DeepPromptConfig(n_text=2, n_visual=2, text_depth=2, visual_depth=2)
    prompts = DeepPrompts.for_vlm(vlm, cfg, generator=torch.Generator().manual_seed(0))
    assert len(prompts.text_deep) == 1 and len(prompts.visual) == 2
    t = encode_text_prompted(vlm, TEXTS, prompts)
    v = encode_image_prompted(vlm, images, prompts)
    assert t.shape == (2, vlm.embed_dim) and v.shape == (3, vlm.embed_dim)
    assert not torch.allclose(t, vlm.encode_text(TEXTS), atol=1e-4)
    (t.sum() + v.sum()).backward()
    for name, p in prompts.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_coupling_projects_text_prompts(vlm, images):
    cfg = DeepPromptConfig(n_text=2, n_visual=2, text_depth=2, visual_depth=2, coupling=True)
    prompts = DeepPrompts.for_vlm(vlm, cfg)
    assert len(prompts.visual) == 0 and len(prompts.couplers) == 2
    assert prompts.visual_prompt(1).shape == (2, vlm.vision_width)
    v = encode_image_prompted(vlm, images, prompts)
    v.sum().backward()
    assert prompts.text_ctx.vectors["text"].grad is not None


def test_bad_configs_are_refused(vlm):
    with pytest.raises(ValueError, match="n_visual == n_text"):
        DeepPromptConfig(n_text=2, n_visual=3, coupling=True)
    with pytest.raises(ValueError, match="visual_depth <= text_depth"):
        DeepPromptConfig(text_depth=1, visual_depth=2, coupling=True)
    with pytest.raises(ValueError, match="exceeds the model's layers"):
        DeepPrompts.for_vlm(vlm, DeepPromptConfig(text_depth=5))
    with pytest.raises(ValueError, match=">= 0"):
        DeepPromptConfig(n_text=-1)


def test_other_widths_are_refused(vlm):
    other = VisionLanguageModel(VLMConfig(name="wide", text_width=32, text_heads=2), seed=0)
    prompts = DeepPrompts.for_vlm(other, DeepPromptConfig())
    with pytest.raises(BackboneMismatchError, match="widths"):
        prompts.check_vlm(vlm)


def test_layer_hook_sees_every_layer_and_prompt_positions(vlm, images):
    prompts = DeepPrompts.for_vlm(vlm, DeepPromptConfig(n_text=2, n_visual=3, text_depth=2, visual_depth=1))
    seen = []

    def hook(block, x, mask, ctx):
        seen.append((ctx.tower, ctx.layer, ctx.prompt_slice, x.shape[1], mask is None))
        return default_layer_fn(block, x, mask, ctx)

    encode_text_prompted(vlm, TEXTS, prompts, layer_fn=hook)
    encode_image_prompted(vlm, images, prompts, layer_fn=hook)
    text = [s for s in seen if s[0] == "text"]
    visual = [s for s in seen if s[0] == "visual"]
    assert [s[1] for s in text] == [0, 1] and [s[1] for s in visual] == [0, 1]
    assert text[0][2] == slice(1, 3) and visual[0][2] == slice(1, 4)
    assert not text[0][4] and visual[0][4]  # causal mask only in the text tower
    assert visual[0][3] == 1 + 3 + (64 // 8) ** 2


def test_token_features_and_content_mask(vlm):
    prompts = DeepPrompts.for_vlm(vlm, DeepPromptConfig(n_text=2, n_visual=0))
    enc = encode_text_prompted(vlm, ["a red star"], prompts, return_tokens=True)
    n_words = len(vlm.tokenize("a red star")[0].nonzero()) - 2
    assert int(enc.content_mask.sum()) == n_words
    assert int(enc.eot_index[0]) == 1 + 2 + n_words
    assert enc.token_features.shape[-1] == vlm.embed_dim


def test_keep_positions_leaves_the_caption_positions(vlm):
    prompts = DeepPrompts.for_vlm(vlm, DeepPromptConfig(n_text=3, n_visual=0, keep_positions=True))
    ctx = prompts.text_prompt(0).detach()
    ids = vlm.tokenize(TEXTS[:1])[0]
    eot = int(ids.argmax())
    embeds = torch.cat([vlm.embed_tokens(ids[:1]), ctx, vlm.embed_tokens(ids[1 : eot + 1])]).unsqueeze(0)
    positions = torch.cat([torch.arange(4), torch.arange(1, eot + 1)])
    x = embeds + vlm.positional_embedding[positions]
    x = vlm.text_transformer(x, attn_mask=vlm.text_attn_mask[: x.shape[1], : x.shape[1]])
    expected = torch.nn.functional.normalize(vlm.ln_final(x)[0, eot + 3] @ vlm.text_projection, dim=-1)
    assert torch.allclose(encode_text_prompted(vlm, TEXTS[:1], prompts)[0], expected, atol=1e-5)


def test_init_from_vlm_starts_close_to_the_plain_model(vlm, images):
    cfg = DeepPromptConfig(n_text=2, n_visual=2, text_depth=2, visual_depth=2, coupling=True, keep_positions=True)
    prompts = DeepPrompts.for_vlm(vlm, cfg, generator=torch.Generator().manual_seed(0))
    prompts.init_from_vlm(vlm, texts=TEXTS, images=images, generator=torch.Generator().manual_seed(0))
    after = (encode_image_prompted(vlm, images, prompts) - vlm.encode_image(images)).norm(dim=-1).mean()
    assert after < 0.1  # (a trained backbone is perturbed far more by random prompts; see bench/retrieval)
    cls = vlm.visual.class_embedding + vlm.visual.positional_embedding[0]
    assert torch.allclose(prompts.couplers[0].bias, cls, atol=0.1)  # plus init_std noise
    assert torch.isfinite(prompts.text_deep[0]).all()


def test_init_from_vlm_sets_each_deep_prompt_to_the_mean_state_it_replaces(images):
    """The documented start on a 4-layer model (noise off): the prompt of layer ``i`` equals the mean hidden state
    the prompt tokens have after layer ``i - 1``, measured with the earlier layers' prompts already in place."""
    deep = VisionLanguageModel(VLMConfig(name="deep4", vision_layers=4, text_layers=4), seed=3)
    cfg = DeepPromptConfig(n_text=2, n_visual=2, text_depth=4, visual_depth=4, init_std=0.0)
    prompts = DeepPrompts.for_vlm(deep, cfg, generator=torch.Generator().manual_seed(0))
    prompts.init_from_vlm(deep, texts=TEXTS, images=images)
    states: dict[tuple[str, int], torch.Tensor] = {}

    def record(block, x, mask, ctx):
        out = default_layer_fn(block, x, mask, ctx)
        states[(ctx.tower, ctx.layer)] = out[:, ctx.prompt_slice].mean(dim=0)
        return out

    with torch.no_grad():
        encode_text_prompted(deep, TEXTS, prompts, layer_fn=record)
        encode_image_prompted(deep, images, prompts, layer_fn=record)
    for layer in range(1, 4):
        assert torch.allclose(prompts.text_prompt(layer), states[("text", layer - 1)], atol=1e-5)
        assert torch.allclose(prompts.visual_prompt(layer), states[("visual", layer - 1)], atol=1e-5)
