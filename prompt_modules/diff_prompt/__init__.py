"""Diff-Prompt: diffusion-generated prompts with mask supervision (Yan et al., ICLR 2025, arXiv 2504.21423).

Three stages (:mod:`.config`): a Mask-VAE (:mod:`.mask_vae`), a DiT prompt generator (:mod:`.dit`) and
generated + global deep prompts for a frozen VLM with a grounding head (:mod:`.model`); training, datasets and
the one-file bundle in :mod:`.training`. Pure PyTorch + diffusers; never imports ComfyUI.
"""

from .config import DiTConfig, MaskVAEConfig, PromptConfig
from .dit import EMA, DiT, ddim_sample, ddim_timesteps
from .mask_vae import MaskVAE
from .model import (
    DiffPrompt,
    GroundingOutput,
    PromptSlots,
    StaticPromptGrounder,
    box_iou,
    dense_image_features,
    grounding_loss,
    zero_shot_ground,
)
from .training import (
    Bundle,
    FolderGroundingSource,
    GroundingBatch,
    TensorGroundingSource,
    TrainResult,
    WorldGroundingSource,
    evaluation_set,
    load_bundle,
    load_diff_prompt,
    save_bundle,
    train_all,
    train_dit,
    train_grounder,
    train_mask_vae,
    train_prompts,
)

__all__ = [
    "EMA",
    "Bundle",
    "DiT",
    "DiTConfig",
    "DiffPrompt",
    "FolderGroundingSource",
    "GroundingBatch",
    "GroundingOutput",
    "MaskVAE",
    "MaskVAEConfig",
    "PromptConfig",
    "PromptSlots",
    "StaticPromptGrounder",
    "TensorGroundingSource",
    "TrainResult",
    "WorldGroundingSource",
    "box_iou",
    "ddim_sample",
    "ddim_timesteps",
    "dense_image_features",
    "evaluation_set",
    "grounding_loss",
    "load_bundle",
    "load_diff_prompt",
    "save_bundle",
    "train_all",
    "train_dit",
    "train_grounder",
    "train_mask_vae",
    "train_prompts",
    "zero_shot_ground",
]
