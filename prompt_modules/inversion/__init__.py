"""Prompt inversion (Reverse Stable Diffusion, Croitoru et al. 2023): image -> prompt embedding and text.

Target space: all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised). An image encoder (a VLM image tower,
a ComfyUI CLIP_VISION, a trainable pixel CNN, or the generator's own denoiser: white box) feeds an MLP head;
a vocabulary head predicts the prompt's keywords. Loss: cosine + 0.1 BCE + Huber; curriculum learning against
noisy pairs; DAKL kernel refinement; decoding into keywords, nearest bank prompts and a composed prompt. The
paper's second finding, as an option: :func:`finetune_worldgen_unet` fine-tunes the generator's U-Net on the
inversion task for reuse in text-to-image (``python -m promptweave.bench inversion_unet`` measures it).

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

from .config import TARGET_DIM, InverterConfig
from .curriculum import curriculum_subsets, weighted_scores
from .dakl import DAKL, cosine_kernel, kmeans
from .data import load_pair_folder, prompt_targets
from .decode import IVFIndex, PromptBank, compose_prompt, fit_calibration, keywords
from .losses import inversion_loss
from .model import (
    METHOD,
    PIXELS,
    LDMUNetEncoder,
    PixelEncoder,
    PromptInverter,
    UNetEncoder,
    VLMImageEncoder,
    WorldGenEncoder,
    check_images,
    load_inverter,
    save_inverter,
    worldgen_features,
)
from .targets import MiniLMEmbedder, default_embedder, mean_cosine
from .train import TrainResult, finish, loss_curve_image, train_inverter
from .unet_finetune import UNetFinetuneConfig, finetune_worldgen_unet
from .vocabulary import STOP_WORDS, Vocabulary, content_words

__all__ = [
    "DAKL", "IVFIndex", "InverterConfig", "LDMUNetEncoder", "METHOD", "MiniLMEmbedder", "PIXELS", "PixelEncoder",
    "PromptBank", "PromptInverter", "STOP_WORDS", "TARGET_DIM", "TrainResult", "UNetEncoder",
    "UNetFinetuneConfig", "VLMImageEncoder", "Vocabulary", "WorldGenEncoder", "check_images", "compose_prompt",
    "content_words", "cosine_kernel", "curriculum_subsets", "default_embedder", "finetune_worldgen_unet",
    "finish", "fit_calibration", "inversion_loss", "keywords", "kmeans", "load_inverter", "load_pair_folder",
    "loss_curve_image", "mean_cosine", "prompt_targets", "save_inverter", "train_inverter", "weighted_scores",
    "worldgen_features",
]
