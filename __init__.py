"""PromptWeave: learned prompts for Stable Diffusion, as ComfyUI nodes and a diffusers library.

As a library: ``import promptweave.prompt_modules`` (pure torch, no ComfyUI needed).
As a ComfyUI custom-node pack: ComfyUI imports this folder and calls :func:`comfy_entrypoint` (V3 API).
"""

from .prompt_modules import __version__

WEB_DIRECTORY = "./web"
__all__ = ["__version__", "comfy_entrypoint", "WEB_DIRECTORY"]


async def comfy_entrypoint():
    """ComfyUI V3 entry point; imports the node layer only when ComfyUI asks for it."""
    from .nodes import PromptWeaveExtension

    return PromptWeaveExtension()
