"""The SD1.x text encoder the conditioning-time benchmarks time against: a random CLIP-L of the real shape.

No pretrained CLIP weights exist offline, but time depends on shape only: a ``CLIPTextModel`` with the SD1.x
text encoder's configuration (12 layers, width 768, 77 tokens) and ComfyUI's SD1 tokenizer files.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

#: The SD1.x text encoder's shape (openai/clip-vit-large-patch14's text tower).
CLIP_L_SHAPE = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
                "projection_dim": 768}


def sd1_text_encoder(seed: int = 0):
    """``(tokenizer, encoder)`` (eval mode, random weights from ``seed``), or ``None`` without ComfyUI's files."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from ..headless import find_comfyui_dir

    comfyui = find_comfyui_dir()
    if comfyui is None or not (comfyui / "comfy" / "sd1_tokenizer").is_dir():
        return None
    tokenizer = CLIPTokenizer.from_pretrained(str(comfyui / "comfy" / "sd1_tokenizer"))
    tokenizer.model_max_length = 77
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = CLIPTextModel(CLIPTextConfig(**CLIP_L_SHAPE)).eval()
    return tokenizer, encoder


def plain_encode(tokenizer, encoder, text: str) -> torch.Tensor:
    """What CLIPTextEncode does: tokenize to 77 tokens and take the last hidden state."""
    ids = tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return encoder(ids)[0]


@torch.no_grad()
def seconds_per_call(fn: Callable[[], object], reps: int) -> float:
    """Mean wall time of ``fn()`` over ``reps`` calls after one warm-up call."""
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps
