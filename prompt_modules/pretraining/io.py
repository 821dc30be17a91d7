"""RPP's pretrained prompt bundle (:class:`PretrainedPromptBundle`): safetensors files with method ``rpp``
(:func:`save_pretrained_prompts`, :func:`load_pretrained_prompts`) and the generic start of any deep-prompt
module from one (:func:`copy_prompt_tensors`, :func:`init_deep_prompts_from_bundle`). Method-specific starts
live with their method (DCAR: ``dual_prompt.model.init_dual_prompt_from_bundle``, Diff-Prompt:
``diff_prompt.model.init_diff_prompt_from_bundle``)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

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
from ..core.deep_prompts import TEXT_KEY, DeepPrompts
from ..core.vlm import VisionLanguageModel
from .config import METHOD, TOWERS, RPPConfig
from .model import LayerTokens, RPPPrompts


@dataclass
class PretrainedPromptBundle:
    """A loaded bundle: the RPP prompts, the shared-token equivalents per prompted layer of both towers
    (``layer_tokens``, DeepPrompts storage convention) and the metadata ``info`` (classes, training, errors)."""

    rpp: RPPPrompts
    layer_tokens: LayerTokens
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def backbone(self) -> str:
        return self.rpp.backbone

    @property
    def config(self) -> RPPConfig:
        return self.rpp.config

    def deep_prompt_tensors(self, tower: str) -> list[torch.Tensor]:
        """``[n, width]`` prompt tokens per prompted layer of ``tower`` ("text" or "visual"): the generic
        initialisation for any deep-prompt module (layer 0 text: context token embeddings; layer 0 image:
        tokens before ``ln_pre``; deeper layers: hidden states that replace the prompt positions)."""
        if tower not in TOWERS:
            raise ValueError(f"tower must be one of {TOWERS}, got {tower!r}")
        return [t.clone() for t in getattr(self.layer_tokens, tower)]

    def summary(self) -> str:
        cfg = self.config
        mode = f"{cfg.qkv_mode} (offset)" if cfg.offset else cfg.qkv_mode
        lines = [
            f"RPP pretrained prompts for '{self.backbone}': {mode} q/k/v, text {cfg.n_text}x{cfg.text_depth}, "
            f"image {cfg.n_visual}x{cfg.visual_depth}, soft labels {cfg.soft_weight} (tau {cfg.temperature})",
            f"classes: {self.info.get('n_classes', '?')}, steps: {self.info.get('steps', '?')}, "
            f"final loss: {self.info.get('final_loss', '?')}",
            f"shared-token conversion error: {json.dumps(self.layer_tokens.errors)}",
        ]
        return "\n".join(lines)


def save_pretrained_prompts(
    rpp: RPPPrompts,
    path: str | os.PathLike[str],
    vlm: VisionLanguageModel,
    *,
    class_names: Sequence[str] = (),
    info: dict[str, Any] | None = None,
) -> Path:
    """Write a pretrained prompt bundle (method ``rpp``): the prompts, the shared-token equivalents per layer
    (computed with ``vlm``, which must be the prompts' backbone) and metadata, atomically."""
    tokens = rpp.layer_tokens(vlm)
    tensors = {f"rpp.{k}": v for k, v in rpp.state_dict().items()}
    for tower in TOWERS:
        for i, t in enumerate(getattr(tokens, tower)):
            tensors[f"layers.{tower}.{i}"] = t
    p = rpp.prompts
    meta_info = {"n_classes": len(class_names), "classes": list(class_names)[:2000], **(info or {})}
    meta = base_metadata(
        METHOD,
        rpp.backbone,
        config=rpp.config.to_dict(),
        widths={"text": p.text_width, "vision": p.vision_width, "embed": rpp.embed_dim},
        layers={"text": p.text_layers, "vision": p.vision_layers},
        conversion_error=tokens.errors,
        info=meta_info,
    )
    return save_safetensors_atomic(path, tensors, meta)


def load_pretrained_prompts(
    path: str | os.PathLike[str], vlm: VisionLanguageModel | None = None
) -> PretrainedPromptBundle:
    """Load a bundle written by :func:`save_pretrained_prompts`; with ``vlm`` given, one made for another
    backbone raises :class:`BackboneMismatchError`."""
    tensors, metadata = read_safetensors(path)
    check_method(metadata, METHOD, path)
    try:
        saved = dict(meta_field(metadata, "config"))
        saved.setdefault("qkv_form", "absolute")  # bundles from before qkv_form held absolute q/k/v prompts
        config = RPPConfig.from_dict(saved)
        widths, layers = meta_field(metadata, "widths"), meta_field(metadata, "layers")
        own = {k[4:]: v for k, v in tensors.items() if k.startswith("rpp.")}
        rpp = build_fitting(path, lambda: RPPPrompts(
            config,
            text_width=int(widths["text"]),
            vision_width=int(widths["vision"]),
            text_layers=int(layers["text"]),
            vision_layers=int(layers["vision"]),
            embed_dim=int(widths["embed"]),
            backbone=str(meta_field(metadata, "backbone")),
        ), own)
        rpp.load_state_dict(own)
        per_tower = {
            t: sorted((int(k.split(".")[2]), v) for k, v in tensors.items() if k.startswith(f"layers.{t}."))
            for t in TOWERS
        }
        errors = meta_field(metadata, "conversion_error", {}) or {}
        tokens = LayerTokens(
            [v for _, v in per_tower["text"]],
            [v for _, v in per_tower["visual"]],
            {t: list(errors.get(t, [])) for t in TOWERS},
        )
        info = meta_field(metadata, "info", {}) or {}
    except MALFORMED_METADATA_ERRORS as exc:
        raise ArtifactError(f"{path}: not a usable RPP pretrained prompt bundle: {exc}") from None
    if vlm is not None:
        try:
            rpp.check_vlm(vlm)
        except BackboneMismatchError as exc:
            raise BackboneMismatchError(f"{path}: {exc}") from None
        rpp.to(vlm.device)
    return PretrainedPromptBundle(rpp.eval(), tokens, info if isinstance(info, dict) else {})


# ----- initialising other prompt modules from a bundle --------------------------------------------------------------
def as_bundle(
    bundle: PretrainedPromptBundle | str | os.PathLike[str], vlm: VisionLanguageModel | None = None
) -> PretrainedPromptBundle:
    """``bundle`` itself, or the bundle loaded from that path (checked against ``vlm`` when given): what every
    consumer that accepts "a bundle or its file" starts with."""
    return bundle if isinstance(bundle, PretrainedPromptBundle) else load_pretrained_prompts(bundle, vlm)


@torch.no_grad()
def copy_prompt_tensors(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor], what: str = "prompt") -> int:
    """Copy pretrained ``sources`` (``[n, width]`` per layer) into ``targets`` in place, layer by layer, the
    overlapping tokens only (``min`` of the layer counts and token counts); returns how many layers were
    copied. Widths must match (:class:`BackboneMismatchError` otherwise). The generic entry point for any
    deep-prompt module (e.g. Diff-Prompt's per-layer global prompts)."""
    copied = 0
    for layer, (target, source) in enumerate(zip(targets, sources, strict=False)):
        if target.shape[-1] != source.shape[-1]:
            raise BackboneMismatchError(
                f"{what} layer {layer} has width {target.shape[-1]}, the pretrained prompts {source.shape[-1]}: "
                "use prompts pretrained on this backbone"
            )
        n = min(target.shape[-2], source.shape[-2])
        target[..., :n, :] = source[:n].to(target.device, target.dtype)
        copied += 1
    return copied


@torch.no_grad()
def init_deep_prompts_from_bundle(
    prompts: DeepPrompts,
    bundle: PretrainedPromptBundle | str | os.PathLike[str],
    *,
    text: bool = True,
    visual: bool = True,
) -> dict[str, int]:
    """Initialise a :class:`~..core.deep_prompts.DeepPrompts` (any method's) from a bundle: the text context and
    deep text prompts, and the visual prompts (a MaPLe coupling layer is fitted to map the pretrained text
    tokens to the pretrained visual tokens, :func:`_fit_coupler`). Returns the number of layers copied per
    tower."""
    bundle = as_bundle(bundle)
    if (prompts.text_width, prompts.vision_width) != (bundle.rpp.widths["text"], bundle.rpp.widths["visual"]):
        raise BackboneMismatchError(
            f"the prompts have (text, vision) widths {(prompts.text_width, prompts.vision_width)}, the pretrained "
            f"bundle ({bundle.backbone}) {(bundle.rpp.widths['text'], bundle.rpp.widths['visual'])}"
        )
    done = {"text": 0, "visual": 0}
    text_src, visual_src = bundle.layer_tokens.text, bundle.layer_tokens.visual
    if text and prompts.text_ctx is not None and text_src:
        targets = [prompts.text_ctx.vectors[TEXT_KEY], *prompts.text_deep]
        done["text"] = copy_prompt_tensors(targets, text_src, "text prompt")
    if visual and prompts.config.visual_active and visual_src:
        depth = min(prompts.config.visual_depth, len(visual_src))
        device = next(prompts.parameters()).device
        for layer in range(depth):
            source = visual_src[layer].to(device)
            if prompts.config.coupling:
                _fit_coupler(prompts.couplers[layer], prompts.text_prompt(layer).detach(), source)
            else:
                copy_prompt_tensors([prompts.visual[layer]], [source], "visual prompt")
        done["visual"] = depth
    return done


@torch.no_grad()
def _fit_coupler(coupler: nn.Linear, text_tokens: torch.Tensor, visual_tokens: torch.Tensor) -> None:
    """Set a MaPLe coupling layer so that it maps the (pretrained) text prompt tokens to the pretrained visual
    tokens: bias = their mean, weight = the minimum-norm least-squares map of the remainder (exact when the
    text tokens are linearly independent)."""
    n = min(text_tokens.shape[0], visual_tokens.shape[0])
    t, v = text_tokens[:n].float().cpu(), visual_tokens[:n].float().cpu()
    bias = v.mean(dim=0)
    weight = torch.linalg.pinv(t) @ (v - bias)  # [text_width, vision_width]: t @ weight = v - bias
    coupler.weight.copy_(weight.T.to(coupler.weight))
    coupler.bias.copy_(bias.to(coupler.bias))

