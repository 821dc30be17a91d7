"""PromptWeave's pure-torch library: learned prompts for vision-language and diffusion models.

Nothing in this package imports ComfyUI; it is usable from diffusers or plain PyTorch.
"""

__version__ = "0.1.0"
