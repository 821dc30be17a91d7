"""Latent-mapper adaptation (IPL, Guo et al. CVPR 2023): zero-shot adaptation of a generator to a named domain.

Stage 1 trains a latent mapper that turns each image's latent code into image-specific prompt vectors for a
frozen VLM; stage 2 trains a PEFT LoRA on the generator with the image-specific directional loss (NADA's fixed
direction is the baseline in the same code path). The LoRA exports to ComfyUI/kohya and diffusers naming.

Layout: ``config`` (:class:`IPLConfig`), ``data`` (prompt sets and per-step latent codes), ``mapper`` (the latent
mapper F), ``model`` (prompt encoder, PEFT LoRA), ``losses`` (eq. 2-4 and NADA's direction), ``train`` (both
stages), ``io`` (mapper files), ``export`` (LoRA files), ``generators`` (what is adapted).

Quick start (WorldGen's decoder as the generator)::

    from promptweave.prompt_modules.adaptation import IPLConfig, WorldGenGenerator, run_adaptation, save_lora
    generator = WorldGenGenerator(worldgen, pool=latents)
    result = run_adaptation(generator, worldclip, IPLConfig(source_text="flat", target_text="neon sign"))
    images = generator.generate(generator.sample_codes(8, seed=0))       # adapted samples
    save_lora(result.lora, "neon.safetensors", fmt="native")
"""

from .config import METHODS, IPLConfig
from .data import DEFAULT_TEMPLATES, step_seed, template_prompts
from .export import (
    FORMATS,
    LoraWeights,
    adapted_worldgen,
    check_lora_fits,
    diffusers_state_dict,
    kohya_state_dict,
    ldm_to_diffusers_name,
    load_lora_native,
    merge_lora,
    save_lora,
    save_lora_comfyui,
    save_lora_diffusers,
    save_lora_native,
)
from .generators import (
    PREDICTION_TYPES,
    SD_ATTENTION_PATTERN,
    AdaptableGenerator,
    StableDiffusionGenerator,
    WorldGenGenerator,
    encode_worldgen_latents,
    frozen_copy,
    sample_worldgen_latents,
    sd_alphas_cumprod,
    sd_generator_from_diffusers,
    weights_fingerprint,
)
from .io import load_mapper, save_mapper
from .losses import (
    contrastive_loss,
    cosine_distance,
    directional_loss,
    domain_loss,
    image_specific_direction,
    mapper_loss,
    nada_direction,
)
from .mapper import EqualLinear, LatentMapper, PixelNorm, TrainedMapper
from .model import LoRAAdapter, PromptEncoder
from .train import AdaptationResult, MapperResult, adapt_generator, run_adaptation, select_layers, train_mapper

__all__ = [
    "DEFAULT_TEMPLATES",
    "FORMATS",
    "METHODS",
    "PREDICTION_TYPES",
    "SD_ATTENTION_PATTERN",
    "AdaptableGenerator",
    "AdaptationResult",
    "EqualLinear",
    "IPLConfig",
    "LatentMapper",
    "LoRAAdapter",
    "LoraWeights",
    "MapperResult",
    "PixelNorm",
    "PromptEncoder",
    "StableDiffusionGenerator",
    "TrainedMapper",
    "WorldGenGenerator",
    "adapt_generator",
    "contrastive_loss",
    "cosine_distance",
    "diffusers_state_dict",
    "directional_loss",
    "domain_loss",
    "encode_worldgen_latents",
    "frozen_copy",
    "image_specific_direction",
    "kohya_state_dict",
    "ldm_to_diffusers_name",
    "load_lora_native",
    "load_mapper",
    "mapper_loss",
    "adapted_worldgen",
    "check_lora_fits",
    "merge_lora",
    "nada_direction",
    "run_adaptation",
    "sample_worldgen_latents",
    "save_lora",
    "save_lora_comfyui",
    "save_lora_diffusers",
    "save_lora_native",
    "save_mapper",
    "sd_alphas_cumprod",
    "sd_generator_from_diffusers",
    "select_layers",
    "step_seed",
    "template_prompts",
    "train_mapper",
    "weights_fingerprint",
]
