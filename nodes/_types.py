"""The pack's custom ComfyUI types, in one place (ids are part of saved workflows: never rename)."""

from comfy_api.latest import io

LearnedPromptType = io.Custom("PW_LEARNED_PROMPT")
"""A :class:`~promptweave.prompt_modules.learned_prompt.LearnedPrompt`."""
VLMType = io.Custom("PW_VLM")
"""A :class:`~promptweave.prompt_modules.vlm.VisionLanguageModel` (e.g. WorldCLIP)."""
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
"""A :class:`~promptweave.prompt_modules.prompt_pretraining.PretrainedPromptBundle` (RPP prompts + layer tokens)."""
