"""Pieces every method shares: the VLM wrapper, learned and deep prompts, artifacts (safetensors + metadata),
checkpointing, the one training runner, image/data loading and plots."""
