"""DCAR dual prompt files: safetensors with method ``dcar``, the backbone, the widths and the config."""

from __future__ import annotations

import os
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
from ..core.learned_prompt import LearnedPrompt, LearnedPromptConfig
from ..core.vlm import VisionLanguageModel
from .config import METHOD, DualPromptConfig
from .model import DualPrompt


def save_dual_prompt(dual: DualPrompt, path: str | os.PathLike[str]) -> Path:
    """Write the dual prompt as safetensors with method ``dcar``, the backbone name and the widths (atomic)."""
    tensors = {f"dual.{k}": v for k, v in dual.state_dict().items()}
    sd_widths = {}
    if dual.sd_prompt is not None:
        tensors.update({f"sd.{k}": v.detach().float() for k, v in dual.sd_prompt.vectors.items()})
        sd_widths = dual.sd_prompt.widths()
    p = dual.prompts
    meta = base_metadata(
        METHOD, dual.backbone, config=dual.config.to_dict(),
        widths={"text": p.text_width, "vision": p.vision_width, "embed": dual.embed_dim},
        layers={"text": p.text_layers, "vision": p.vision_layers}, sd_widths=sd_widths,
    )
    return save_safetensors_atomic(path, tensors, meta)


def load_dual_prompt(path: str | os.PathLike[str], vlm: VisionLanguageModel | None = None) -> DualPrompt:
    """Load a file written by :func:`save_dual_prompt`; with ``vlm`` given, one trained for another backbone
    (or of other widths) raises :class:`BackboneMismatchError`."""
    tensors, metadata = read_safetensors(path)
    check_method(metadata, METHOD, path)
    try:
        config = DualPromptConfig.from_dict(dict(meta_field(metadata, "config")))
        widths, layers = meta_field(metadata, "widths"), meta_field(metadata, "layers")
        backbone = str(meta_field(metadata, "backbone"))
        own = {k[5:]: v for k, v in tensors.items() if k.startswith("dual.")}
        dual = build_fitting(path, lambda: DualPrompt(
            config, text_width=int(widths["text"]), vision_width=int(widths["vision"]),
            text_layers=int(layers["text"]), vision_layers=int(layers["vision"]), embed_dim=int(widths["embed"]),
            backbone=backbone,
        ), own)
        dual.load_state_dict(own)
    except MALFORMED_METADATA_ERRORS as exc:
        raise ArtifactError(f"{path}: not a usable DCAR dual prompt: {exc}") from None
    sd = {k[3:]: v for k, v in tensors.items() if k.startswith("sd.")}
    if sd:
        n = {v.shape[0] for v in sd.values()}.pop()
        lp = LearnedPrompt(LearnedPromptConfig(n_ctx=n, widths={k: int(v.shape[1]) for k, v in sd.items()},
                                               backbone="sd"))
        with torch.no_grad():
            for k, v in sd.items():
                lp.vectors[k].copy_(v)
        dual.set_sd_prompt(lp)
    if vlm is not None:
        try:
            dual.check_vlm(vlm)
        except BackboneMismatchError as exc:
            raise BackboneMismatchError(f"{path}: {exc}") from None
        dual.to(vlm.device)
    return dual.eval()
