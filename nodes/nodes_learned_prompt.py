"""Nodes for the learned-prompt primitive: load a learned prompt, splice it into a CLIP text encode."""

from __future__ import annotations

from comfy_api.latest import io

from ..prompt_modules.core.artifacts import ArtifactError
from ..prompt_modules.core.learned_prompt import (
    COMFY_TO_TI_KEY,
    LearnedPrompt,
    isolate_placeholder,
    splice_into_token_chunk,
)
from ._common import NodeInputError, check_inputs, model_files, resolve_model_file
from ._types import LearnedPromptType


def clip_encoder_widths(clip) -> dict[str, int]:
    """Token width of each text encoder in a ComfyUI CLIP, keyed as in textual-inversion files."""
    widths = {}
    for key, ti_key in COMFY_TO_TI_KEY.items():
        encoder = getattr(clip.cond_stage_model, ti_key, None)
        if encoder is not None:
            widths[ti_key] = int(encoder.transformer.get_input_embeddings().weight.shape[1])
        del key
    return widths


def tokens_with_learned_prompt(node: str, clip, text: str, prompt: LearnedPrompt) -> dict:
    """``clip.tokenize(text)`` with the learned vectors spliced into the first chunk of every encoder."""
    if not text.strip():
        raise NodeInputError(
            node, "text", "the text is empty",
            f"write a prompt; put {prompt.config.placeholder} where the learned vectors go "
            "(without it they go first)",
        )
    widths = clip_encoder_widths(clip)
    try:
        prompt.check_widths(widths, where="the connected CLIP")
    except ArtifactError as exc:
        raise NodeInputError(node, "learned_prompt", str(exc), "load a learned prompt made for this model") from None
    placeholder = prompt.config.placeholder
    position = "placeholder" if placeholder in text else "prefix"
    tokens = clip.tokenize(isolate_placeholder(text, placeholder))
    marker_tokens = clip.tokenize(placeholder)
    for key, chunks in tokens.items():
        ti_key = COMFY_TO_TI_KEY.get(key)
        if ti_key is None:
            raise NodeInputError(node, "clip", f"text encoder '{key}' is not supported", "use an SD1.x or SDXL CLIP")
        tokenizer = getattr(clip.tokenizer, ti_key)
        marker_chunk = [entry[0] for entry in marker_tokens[key][0]]
        end_at = marker_chunk.index(tokenizer.end_token, 1)
        marker_ids = marker_chunk[1:end_at]
        vectors = prompt(ti_key).detach()
        try:
            chunks[0] = splice_into_token_chunk(
                chunks[0], vectors, marker_ids=marker_ids, end_id=tokenizer.end_token, position=position
            )
        except ValueError as exc:
            fix = "shorten the text" if "too long" in str(exc) else f"write {placeholder} as a word of its own"
            raise NodeInputError(node, "text", str(exc), fix) from None
    return tokens


class LoadLearnedPrompt(io.ComfyNode):
    """Load a learned prompt (or a textual-inversion embedding) from ``models/promptweave``."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PWLoadLearnedPrompt",
            display_name="Load Learned Prompt",
            category="PromptWeave/prompts",
            description="Loads learned prompt vectors (.safetensors, textual-inversion layout) from "
            "ComfyUI/models/promptweave.",
            inputs=[
                io.Combo.Input(
                    "prompt_name", options=model_files(),
                    tooltip="A .safetensors learned prompt in ComfyUI/models/promptweave.",
                ),
            ],
            outputs=[LearnedPromptType.Output(display_name="learned_prompt", tooltip="The learned prompt vectors.")],
        )

    @classmethod
    @check_inputs
    def execute(cls, prompt_name: str) -> io.NodeOutput:
        path = resolve_model_file("PWLoadLearnedPrompt", "prompt_name", prompt_name)
        try:
            prompt = LearnedPrompt.load(path)
        except ArtifactError as exc:
            raise NodeInputError(
                "PWLoadLearnedPrompt", "prompt_name", str(exc), "pick a learned prompt .safetensors file"
            ) from None
        return io.NodeOutput(prompt)


class ApplyLearnedPrompt(io.ComfyNode):
    """CLIP text encode with learned context vectors spliced into the tokens (CoOp, Zhou et al. 2022)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PWApplyLearnedPrompt",
            display_name="Apply Learned Prompt",
            category="PromptWeave/prompts",
            description="Encodes the text with the CLIP, with the learned prompt vectors inserted where the "
            "placeholder (default <pw>) stands, or right after the start token if there is none.",
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP text encoder of the checkpoint (SD1.x or SDXL)."),
                LearnedPromptType.Input("learned_prompt", tooltip="From Load Learned Prompt or a trainer."),
                io.String.Input(
                    "text", multiline=True, dynamic_prompts=True, default="a photo of <pw>",
                    tooltip="The prompt. Write <pw> where the learned vectors go; without it they go first.",
                ),
            ],
            outputs=[io.Conditioning.Output(tooltip="Conditioning for KSampler, with the learned vectors.")],
        )

    @classmethod
    @check_inputs
    def execute(cls, clip, learned_prompt: LearnedPrompt, text: str) -> io.NodeOutput:
        tokens = tokens_with_learned_prompt("PWApplyLearnedPrompt", clip, text, learned_prompt)
        return io.NodeOutput(clip.encode_from_tokens_scheduled(tokens))


NODES: list[type[io.ComfyNode]] = [LoadLearnedPrompt, ApplyLearnedPrompt]
