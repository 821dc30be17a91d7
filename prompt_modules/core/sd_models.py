"""The published Stable Diffusion U-Net shapes as data (diffusers ``UNet2DConditionModel`` arguments).

Random-weight models of these shapes are what the real-shape tests and ``bench scale`` build: the structure
(levels, blocks, attention projections, conditioning widths) is the real one, so key names, LoRA coverage and
cost per step are those of the users' checkpoints.
"""

from __future__ import annotations

#: SD1.x (v1.5): four levels (320, 640, 1280, 1280), two blocks each, cross-attention to 768-d CLIP-L tokens,
#: 8 heads; 860 M parameters.
SD15_FULL_UNET_CONFIG: dict[str, object] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}

__all__ = ["SD15_FULL_UNET_CONFIG"]
