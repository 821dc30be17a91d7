"""The pack's custom ComfyUI types, in one place (ids are part of saved workflows: never rename)."""

from __future__ import annotations

import importlib

from comfy_api.latest import io

LearnedPromptType = io.Custom("PW_LEARNED_PROMPT")
"""A :class:`~promptweave.prompt_modules.core.learned_prompt.LearnedPrompt`."""
VLMType = io.Custom("PW_VLM")
"""A :class:`~promptweave.prompt_modules.core.vlm.VisionLanguageModel` (e.g. WorldCLIP)."""
WorldGenType = io.Custom("PW_WORLDGEN")
"""The world's latent-diffusion generator (:mod:`promptweave.prompt_modules.world.worldgen`)."""
DualPromptType = io.Custom("PW_DUAL_PROMPT")
"""A DCAR :class:`~promptweave.prompt_modules.dual_prompt.DualPrompt` (text + image prompts for one VLM)."""
PromptInverterType = io.Custom("PW_PROMPT_INVERTER")
"""A :class:`~promptweave.prompt_modules.inversion.PromptInverter` (image -> prompt embedding and keywords)."""
PromptEmbeddingType = io.Custom("PW_PROMPT_EMBEDDING")
"""Predicted all-MiniLM-L6-v2 prompt embeddings, a float tensor ``[B, 384]`` (L2-normalised)."""
LatentMapperType = io.Custom("PW_LATENT_MAPPER")
"""An IPL :class:`~promptweave.prompt_modules.adaptation.TrainedMapper` (latent code -> image-specific prompts)."""
DiffPromptType = io.Custom("PW_DIFF_PROMPT")
"""A Diff-Prompt :class:`~promptweave.prompt_modules.diff_prompt.DiffPrompt` (Mask-VAE + DiT + prompts + head)."""
PretrainedPromptsType = io.Custom("PW_PRETRAINED_PROMPTS")
"""A :class:`~promptweave.prompt_modules.pretraining.PretrainedPromptBundle` (RPP prompts + layer tokens)."""

PYTHON_CLASSES = {  # io_type: (module of the pack, class, what it is, which node makes it)
    "PW_LEARNED_PROMPT": (
        "prompt_modules.core.learned_prompt", "LearnedPrompt", "a learned prompt", "Load Learned Prompt"
    ),
    "PW_VLM": (
        "prompt_modules.core.vlm", "VisionLanguageModel", "a VLM", "a VLM, e.g. WorldCLIP from Load World Models"
    ),
    "PW_WORLDGEN": ("prompt_modules.world.worldgen", "WorldGen", "WorldGen", "WorldGen from Load World Models"),
    "PW_DUAL_PROMPT": ("prompt_modules.dual_prompt", "DualPrompt", "a dual prompt", "Load/Train Dual Prompt"),
    "PW_PROMPT_INVERTER": ("prompt_modules.inversion", "PromptInverter", "a prompt inverter", "Load Prompt Inverter"),
    "PW_PROMPT_EMBEDDING": ("torch", "Tensor", "a prompt embedding", "the embedding output of Prompt Inversion"),
    "PW_LATENT_MAPPER": ("prompt_modules.adaptation", "TrainedMapper", "a latent mapper", "Train/Load Latent Mapper"),
    "PW_DIFF_PROMPT": (
        "prompt_modules.diff_prompt",
        "DiffPrompt",
        "a complete Diff-Prompt (all three stages)",
        "Load Diff-Prompt, or Train Diff-Prompt with stage 'prompt' or 'all'",
    ),
    "PW_PRETRAINED_PROMPTS": (
        "prompt_modules.pretraining",
        "PretrainedPromptBundle",
        "pretrained prompts",
        "Pretrain/Load Prompts",
    ),
}


def expected_class(io_type: str) -> tuple[type, str, str] | None:
    """``(class, what it is, where to get one)`` of one of our custom types, else ``None`` (imported lazily)."""
    entry = PYTHON_CLASSES.get(io_type)
    if entry is None:
        return None
    module_name, class_name, what, source = entry
    package = __package__.rpartition(".")[0]
    module = importlib.import_module(module_name if module_name == "torch" else f"{package}.{module_name}")
    return getattr(module, class_name), what, source
