"""Diff-Prompt: diffusion-generated prompts with mask supervision (Yan et al., ICLR 2025, arXiv 2504.21423).

Three stages (:mod:`.config`): a Mask-VAE (:mod:`.mask_vae`, paper sec. 3.1), a DiT prompt generator (:mod:`.dit`,
sec. 3.2) and generated + global deep prompts for a frozen VLM with a grounding head (:mod:`.model`, sec. 3.3).
Where things are: ``config.py`` the three stage configs; ``mask_vae.py``, ``dit.py``, ``model.py`` the modules;
``losses.py`` the losses (paper eq. 3, DDPM's epsilon loss, the grounding loss); ``data.py`` grounding data from
folders, tensors, COCO-style referring expressions (RefCOCO) and JSONL; ``train.py`` the stage trainers and the
one recipe :func:`train_diff_prompt` (the ComfyUI node trains through it too); ``io.py`` the one-file bundle.
The procedural world's grounding source and evaluation set are in :mod:`promptweave.prompt_modules.world.sources`
(this package never imports the world). Pure PyTorch + diffusers; never imports ComfyUI.
"""

from ..core.data import GroundingBatch, GroundingSource
from .config import DiTConfig, MaskVAEConfig, PromptConfig, mask_size_for_image
from .data import (
    FolderGroundingSource,
    ReferringGroundingSource,
    ReferringSample,
    TensorGroundingSource,
    read_grounding_jsonl,
    read_refcoco,
)
from .dit import EMA, DiT, ddim_sample, ddim_timesteps
from .io import STAGES, Bundle, load_bundle, load_diff_prompt, save_bundle
from .losses import box_iou, epsilon_loss, generalized_box_iou, grounding_loss, mask_vae_loss
from .mask_vae import MaskVAE
from .model import (
    DiffPrompt,
    GroundingOutput,
    PromptSlots,
    StaticPromptGrounder,
    dense_image_features,
    init_diff_prompt_from_bundle,
    zero_shot_ground,
)
from .train import (
    MIN_GENERATOR_BATCH,
    DiffPromptRun,
    TrainResult,
    earlier_stages,
    resolve_configs,
    stage_batch_size,
    train_all,
    train_diff_prompt,
    train_dit,
    train_grounder,
    train_mask_vae,
    train_prompts,
)

__all__ = [
    "EMA",
    "MIN_GENERATOR_BATCH",
    "STAGES",
    "Bundle",
    "DiT",
    "DiTConfig",
    "DiffPrompt",
    "DiffPromptRun",
    "FolderGroundingSource",
    "GroundingBatch",
    "GroundingOutput",
    "GroundingSource",
    "MaskVAE",
    "MaskVAEConfig",
    "PromptConfig",
    "PromptSlots",
    "ReferringGroundingSource",
    "ReferringSample",
    "StaticPromptGrounder",
    "TensorGroundingSource",
    "TrainResult",
    "box_iou",
    "ddim_sample",
    "ddim_timesteps",
    "dense_image_features",
    "earlier_stages",
    "epsilon_loss",
    "generalized_box_iou",
    "grounding_loss",
    "init_diff_prompt_from_bundle",
    "load_bundle",
    "load_diff_prompt",
    "mask_size_for_image",
    "mask_vae_loss",
    "read_grounding_jsonl",
    "read_refcoco",
    "resolve_configs",
    "save_bundle",
    "stage_batch_size",
    "train_all",
    "train_diff_prompt",
    "train_dit",
    "train_grounder",
    "train_mask_vae",
    "train_prompts",
    "zero_shot_ground",
]
