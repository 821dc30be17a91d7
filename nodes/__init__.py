"""ComfyUI nodes."""
