"""PromptWeave: learned prompts for Stable Diffusion, as ComfyUI nodes and a diffusers library."""
