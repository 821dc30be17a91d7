"""Prompt inversion (Reverse Stable Diffusion, Croitoru et al. 2023): image -> prompt embedding and text.

Target space: all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised). An image encoder (a VLM image tower,
a ComfyUI CLIP_VISION, a trainable pixel CNN, or the generator's own denoiser: white box) feeds an MLP head;
a vocabulary head predicts the prompt's keywords. Loss: cosine + 0.1 BCE + Huber; curriculum learning against
noisy pairs; DAKL kernel refinement; decoding into keywords, nearest bank prompts and a composed prompt.
:func:`image_features` picks the image encoder an inverter's backbone names (the nodes and ``diffusers_api`` both
call it). The paper's second finding, fine-tuning the generator's U-Net on the inversion task for reuse in
text-to-image, is WorldGen-specific and lives with the world
(:func:`promptweave.prompt_modules.world.inversion_finetune.finetune_worldgen_unet`).

Layout: ``config``, ``model`` (image encoders, the inverter), ``encoders`` (the encoder choice), ``losses``,
``data`` (pair folders, prompt targets), ``caption`` (caption a folder), ``train``, ``io`` (inverter files), and
the method's parts ``curriculum``, ``dakl``, ``decode``, ``targets`` (MiniLM), ``vocabulary``.

Quick start::

    from promptweave.prompt_modules.inversion import (InverterConfig, Vocabulary, VLMImageEncoder,
        default_embedder, prompt_targets, train_inverter)
    enc = VLMImageEncoder(vlm)
    vocab = Vocabulary.build(prompts, size=1000)
    targets, labels = prompt_targets(prompts, vocab, default_embedder())
    result = train_inverter(enc(images), targets, labels,
                            InverterConfig(backbone=enc.name, feature_dim=enc.dim), vocab, texts=prompts)
    result.inverter.invert(enc(new_images))   # [{"prompt", "keywords", "nearest", "embedding"}, ...]
"""

from .caption import (
    CAPTION_CONTENTS,
    EXISTING_MODES,
    MANIFEST_FORMATS,
    TRIGGER_POSITIONS,
    CaptionResult,
    CaptionSummary,
    caption_folder,
)
from .config import TARGET_DIM, InverterConfig
from .curriculum import curriculum_subsets, weighted_scores
from .dakl import DAKL, cosine_kernel, kmeans
from .data import (
    IMAGE_COLUMNS,
    PROMPT_COLUMNS,
    ManifestPair,
    load_pair_folder,
    load_pair_manifest,
    load_pairs,
    prompt_targets,
    read_pair_manifest,
)
from .decode import IVFIndex, PromptBank, compose_prompt, confident_keywords, fit_calibration, keywords
from .encoders import (
    ENCODER_KINDS,
    MissingEncoderInput,
    UnknownImageEncoder,
    encoder_image_size,
    encoder_kind,
    image_features,
)
from .io import METHOD, load_inverter, save_inverter
from .losses import inversion_loss
from .model import (
    PIXELS,
    LDMUNetEncoder,
    PixelEncoder,
    PromptInverter,
    UNetEncoder,
    VLMImageEncoder,
    WorldGenEncoder,
    check_images,
    worldgen_features,
)
from .targets import MiniLMEmbedder, default_embedder, mean_cosine
from .train import TrainResult, finish, loss_curve_image, train_inverter, train_inverter_on_prompts
from .vocabulary import STOP_WORDS, Vocabulary, content_words

__all__ = [
    "CAPTION_CONTENTS", "CaptionResult", "CaptionSummary", "EXISTING_MODES", "MANIFEST_FORMATS", "TRIGGER_POSITIONS",
    "caption_folder", "confident_keywords", "encoder_image_size",
    "DAKL", "ENCODER_KINDS", "IMAGE_COLUMNS", "IVFIndex", "InverterConfig", "LDMUNetEncoder", "METHOD",
    "MiniLMEmbedder", "ManifestPair", "MissingEncoderInput", "PIXELS", "PROMPT_COLUMNS", "PixelEncoder", "PromptBank",
    "PromptInverter", "STOP_WORDS", "TARGET_DIM", "TrainResult", "UNetEncoder", "UnknownImageEncoder",
    "VLMImageEncoder", "Vocabulary", "WorldGenEncoder", "check_images", "compose_prompt", "content_words",
    "cosine_kernel", "curriculum_subsets", "default_embedder", "encoder_kind", "finish", "fit_calibration",
    "image_features", "inversion_loss", "keywords", "kmeans", "load_inverter", "load_pair_folder", "load_pair_manifest",
    "load_pairs", "loss_curve_image", "mean_cosine", "prompt_targets", "read_pair_manifest", "save_inverter",
    "train_inverter", "train_inverter_on_prompts", "weighted_scores", "worldgen_features",
]
