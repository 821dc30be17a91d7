"""The published Stable Diffusion shapes as data, and the small config folder a single-file checkpoint needs.

Random-weight models of these shapes are what the real-shape tests and ``bench scale`` build: the structure
(levels, blocks, attention projections, conditioning widths) is the real one, so key names, LoRA coverage and
cost per step are those of the users' checkpoints. diffusers' ``from_single_file`` fetches a pipeline's config
files from the model hub unless ``config=`` names a local folder holding them: :func:`write_pipeline_config`
writes that folder (configs and tokenizer files, no weights) for a family :func:`detect_family` reads from a
checkpoint's keys.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

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

#: SDXL base 1.0: three levels (320, 640, 1280), 2 and 10 transformer blocks on the deeper two, linear
#: projections, 2048-d context (CLIP-L + OpenCLIP bigG tokens) and the ``text_time`` added embedding of the pooled
#: bigG embedding with six size/crop ids (2816 inputs); 2.6 B parameters.
SDXL_FULL_UNET_CONFIG: dict[str, object] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}

#: The SD1.x text encoder: OpenAI CLIP ViT-L/14's text tower (random weights).
CLIP_L_CONFIG: dict[str, object] = {  # transformers CLIPTextConfig
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}

#: The SD VAE (diffusers ``AutoencoderKL``): four levels (128, 256, 512, 512), 4 latent channels, 8x.
SD_VAE_CONFIG: dict[str, object] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

#: SD1.x's training schedule as its release ships it (PNDM, scaled-linear betas, epsilon prediction).
SD15_SCHEDULER_CONFIG: dict[str, object] = {
    "_class_name": "PNDMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

#: Key prefixes that name a single-file checkpoint's family (original LDM / SGM layouts).
FAMILY_MARKERS: dict[str, str] = {
    "sdxl": "conditioner.embedders.1.model.",
    "sd2": "cond_stage_model.model.",
    "sd1": "cond_stage_model.transformer.",
}


class UnsupportedCheckpointError(ValueError):
    """A single-file checkpoint whose family has no local config here."""


def detect_family(keys: Iterable[str]) -> str:
    """``"sd1"``, ``"sd2"`` or ``"sdxl"`` from a single-file checkpoint's tensor names (its text encoder's
    prefix); :class:`UnsupportedCheckpointError` for anything else."""
    keys = list(keys)
    for family, prefix in FAMILY_MARKERS.items():
        if any(k.startswith(prefix) for k in keys):
            return family
    raise UnsupportedCheckpointError(
        "not a Stable Diffusion 1.x / 2.x / XL single-file checkpoint (no text encoder under "
        + ", ".join(FAMILY_MARKERS.values()) + ")"
    )


def _write_json(path: Path, data: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def write_pipeline_config(family: str, folder: str | os.PathLike[str]) -> Path:
    """Write the configs (no weights) of a ``StableDiffusionPipeline`` of ``family`` into ``folder``: what
    ``from_single_file(config=folder)`` reads instead of the hub. Only ``"sd1"`` has local configs so far."""
    from .tokenizer_files import write_clip_tokenizer_files

    if family != "sd1":
        raise UnsupportedCheckpointError(
            f"single-file {family.upper()} checkpoints have no local diffusers config here yet: load its diffusers "
            "folder (save_pretrained), or the checkpoint in ComfyUI's Load Checkpoint"
        )
    folder = Path(folder)
    _write_json(folder / "model_index.json", {
        "_class_name": "StableDiffusionPipeline",
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    })
    _write_json(folder / "unet" / "config.json", {"_class_name": "UNet2DConditionModel", **SD15_FULL_UNET_CONFIG})
    _write_json(folder / "vae" / "config.json", {"_class_name": "AutoencoderKL", **SD_VAE_CONFIG})
    _write_json(folder / "text_encoder" / "config.json",
                {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", **CLIP_L_CONFIG})
    _write_json(folder / "scheduler" / "scheduler_config.json", SD15_SCHEDULER_CONFIG)
    write_clip_tokenizer_files(folder / "tokenizer")
    _write_json(folder / "tokenizer" / "tokenizer_config.json", {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
    })
    return folder
