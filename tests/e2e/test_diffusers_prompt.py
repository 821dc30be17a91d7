"""diffusers side of the learned-prompt primitive: prompt_embeds for a real StableDiffusionPipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from promptweave.prompt_modules.core.artifacts import BackboneMismatchError
from promptweave.prompt_modules.core.learned_prompt import (
    LearnedPrompt,
    LearnedPromptConfig,
    encode_prompt_for_pipeline,
)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    from promptweave.testing.tiny import build_tiny_pipeline

    path = build_tiny_pipeline(tmp_path_factory.mktemp("pipe") / "tiny-sd", seed=0)
    return StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True)


def make_prompt(width: int) -> LearnedPrompt:
    prompt = LearnedPrompt(LearnedPromptConfig(n_ctx=3, widths={"clip_l": width}), torch.Generator().manual_seed(0))
    with torch.no_grad():
        prompt.vectors["clip_l"].mul_(50.0)
    return prompt


def test_prompt_embeds_match_plain_encoding_before_the_placeholder(pipe):
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    prompt = make_prompt(width)
    embeds = encode_prompt_for_pipeline(prompt, "a red cube <pw> on a table", pipe.tokenizer, pipe.text_encoder)
    plain, _ = pipe.encode_prompt("a red cube on a table", "cpu", 1, False)
    assert embeds.shape == plain.shape == (1, 77, width)
    assert torch.allclose(embeds[:, :4], plain[:, :4], atol=1e-5)  # causal attention: untouched prefix
    assert not torch.allclose(embeds[:, 4:7], plain[:, 4:7], atol=1e-3)


def test_pipeline_renders_with_learned_prompt_embeds(pipe):
    prompt = make_prompt(pipe.text_encoder.get_input_embeddings().weight.shape[1])
    embeds = encode_prompt_for_pipeline(prompt, "a photo of <pw>", pipe.tokenizer, pipe.text_encoder)
    negative, _ = pipe.encode_prompt("", "cpu", 1, False)
    image = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, num_inference_steps=2, height=64,
                 width=64, generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()


def test_wrong_width_is_refused(pipe):
    with pytest.raises(BackboneMismatchError, match="width 768 but the pipeline's text encoder expects"):
        encode_prompt_for_pipeline(make_prompt(768), "a photo", pipe.tokenizer, pipe.text_encoder)
