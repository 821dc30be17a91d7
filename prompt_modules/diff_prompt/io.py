"""Diff-Prompt's one-file **bundle**: save and load the finished stages.

A bundle is a single safetensors file (:mod:`~promptweave.prompt_modules.core.artifacts`) with tensors ``vae.*``
(stage 1, the Mask-VAE of paper sec. 3.1), ``dit.*`` (stage 2, the DiT prompt generator of sec. 3.2, EMA
weights) and ``prompt.*`` (stage 3, sec. 3.3: adapters, global prompts, head), and in its metadata the configs,
the finished stages and the VLM (backbone, widths, layers). Any prefix of the stages may be present: the
trainers (:mod:`.train`) write it after each stage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.artifacts import (
    MALFORMED_METADATA_ERRORS,
    ArtifactError,
    BackboneMismatchError,
    base_metadata,
    build_fitting,
    check_method,
    meta_field,
    read_safetensors,
    save_safetensors_atomic,
)
from ..core.vlm import VisionLanguageModel
from .config import DiTConfig, MaskVAEConfig, PromptConfig
from .dit import DiT
from .mask_vae import MaskVAE
from .model import DiffPrompt

METHOD = "diff_prompt"
#: The three stages in training order; a bundle holds a prefix of them.
STAGES = ("vae", "dit", "prompt")


@dataclass
class Bundle:
    """What a bundle file holds: any prefix of the three stages (``stages``), and the backbone it needs."""

    vae: MaskVAE | None = None
    dit: DiT | None = None
    model: DiffPrompt | None = None
    backbone: str = "any"

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(s for s, m in zip(STAGES, (self.vae, self.dit, self.model), strict=True) if m is not None)


def _prompt_state(model: DiffPrompt) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith(("vae.", "dit."))}


def save_bundle(
    path: str | os.PathLike[str],
    *,
    vae: MaskVAE | None = None,
    dit: DiT | None = None,
    model: DiffPrompt | None = None,
    backbone: str | None = None,
) -> Path:
    """Write the finished stages to one safetensors file (atomic). ``model`` carries its own VAE and DiT."""
    if model is not None:
        vae, dit = model.vae, model.dit
    if vae is None:
        raise ValueError("a Diff-Prompt bundle needs at least the stage-1 Mask-VAE")
    if model is None and dit is None and backbone is None:
        backbone = "any"
    if backbone is None:
        if model is None:
            raise ValueError("name the VLM the DiT was trained with (backbone=...)")
        backbone = model.backbone
    tensors = {f"vae.{k}": v for k, v in vae.vae.state_dict().items()}
    fields: dict[str, object] = {"vae_config": vae.config.to_dict(), "stages": ["vae"]}
    if dit is not None:
        tensors.update({f"dit.{k}": v for k, v in dit.state_dict().items()})
        fields.update(dit_config=dit.config.to_dict(), stages=["vae", "dit"])
    if model is not None:
        tensors.update({f"prompt.{k}": v for k, v in _prompt_state(model).items()})
        fields.update(
            prompt_config=model.config.to_dict(),
            stages=list(STAGES),
            vlm={
                "text_width": model.text_width,
                "vision_width": model.vision_width,
                "text_layers": model.text_layers,
                "vision_layers": model.vision_layers,
                "embed_dim": model.embed_dim,
            },
        )
    path = Path(path)
    return save_safetensors_atomic(path, tensors, base_metadata(METHOD, backbone, **fields))


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Read a bundle written by :func:`save_bundle` (any number of finished stages)."""
    tensors, metadata = read_safetensors(path)
    check_method(metadata, METHOD, path)
    backbone = str(meta_field(metadata, "backbone", "any"))
    stages = list(meta_field(metadata, "stages", []) or [])

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    try:
        vae_config = MaskVAEConfig.from_dict(dict(meta_field(metadata, "vae_config")))
        vae_tensors = {f"vae.{k}": v for k, v in part("vae.").items()}
        vae = build_fitting(path, lambda: MaskVAE(vae_config), vae_tensors)
        vae.load_state_dict(vae_tensors)
        bundle = Bundle(vae=vae.eval(), backbone=backbone)
        if "dit" in stages:
            dit_config = DiTConfig.from_dict(dict(meta_field(metadata, "dit_config")))
            dit = build_fitting(path, lambda: DiT(dit_config), part("dit."))
            dit.load_state_dict(part("dit."))
            bundle.dit = dit.eval()
        if "prompt" in stages:
            if bundle.dit is None:
                raise ValueError("its stages list 'prompt' without 'dit'")
            vlm_meta = {k: int(v) for k, v in dict(meta_field(metadata, "vlm")).items()}
            prompt_config = PromptConfig.from_dict(dict(meta_field(metadata, "prompt_config")))
            # the whole model's state: its Mask-VAE and DiT (read above) and the prompt stage's own tensors
            state = {**{f"vae.{k}": v for k, v in vae_tensors.items()},
                     **{f"dit.{k}": v for k, v in part("dit.").items()}, **part("prompt.")}
            model = build_fitting(path, lambda: DiffPrompt(vae.config, bundle.dit.config, prompt_config,
                                                           backbone=backbone, **vlm_meta), state)
            missing, unexpected = model.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(f"missing weights {missing[:5]}, unexpected weights {unexpected[:5]}")
            bundle.model = model.eval()
    except ArtifactError:
        raise
    except MALFORMED_METADATA_ERRORS as exc:
        raise ArtifactError(f"{path}: not a usable Diff-Prompt bundle: {exc}") from None
    return bundle


def load_diff_prompt(path: str | os.PathLike[str], vlm: VisionLanguageModel | None = None) -> DiffPrompt:
    """The complete (three-stage) model of a bundle; with ``vlm`` given, a bundle for another VLM is refused."""
    bundle = load_bundle(path)
    if bundle.model is None:
        missing = [s for s in STAGES if s not in bundle.stages]
        raise ArtifactError(
            f"{path} holds only the stage(s) {list(bundle.stages)} of Diff-Prompt: train the "
            f"missing stage(s) {missing} first"
        )
    if vlm is not None:
        try:
            bundle.model.check_vlm(vlm)
        except BackboneMismatchError as exc:
            raise BackboneMismatchError(f"{path}: {exc}") from None
        bundle.model.to(vlm.device)
    return bundle.model


__all__ = ["METHOD", "STAGES", "Bundle", "load_bundle", "load_diff_prompt", "save_bundle"]
