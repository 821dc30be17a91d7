"""The pack's custom ComfyUI types, in one place (ids are part of saved workflows: never rename)."""

from comfy_api.latest import io

LearnedPromptType = io.Custom("PW_LEARNED_PROMPT")
"""A :class:`~promptweave.prompt_modules.learned_prompt.LearnedPrompt`."""
VLMType = io.Custom("PW_VLM")
"""A :class:`~promptweave.prompt_modules.vlm.VisionLanguageModel` (e.g. WorldCLIP)."""
WorldGenType = io.Custom("PW_WORLDGEN")
"""The world's latent-diffusion generator (:mod:`promptweave.prompt_modules.world.worldgen`)."""
