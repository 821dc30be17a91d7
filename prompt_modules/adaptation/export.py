"""LoRA export: ComfyUI/kohya naming, diffusers (PEFT) naming, and PromptWeave's own file; all safetensors.

* **ComfyUI / kohya** (:func:`save_lora_comfyui`): ``lora_unet_<diffusers module path with "_">.lora_down.weight``
  (PEFT's ``lora_A``), ``.lora_up.weight`` (``lora_B``) and ``.alpha`` (a scalar), the naming of kohya's
  sd-scripts that ComfyUI's ``comfy.lora.model_lora_keys_unet`` maps for every SD1.x/SDXL U-Net weight
  (``LoraLoader`` then applies ``up @ down * alpha / rank``). Raw PEFT keys (``...to_q.lora_A.weight``) would be
  dropped by ComfyUI with "lora key not loaded", which is why a U-Net trained with LDM module names (ComfyUI's
  own ``UNetModel``) is renamed to diffusers paths first (:func:`ldm_to_diffusers_name`).
* **diffusers** (:func:`save_lora_diffusers`): PEFT keys ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` for
  ``StableDiffusionPipeline.load_lora_weights``. The scale ``alpha / rank`` is folded into ``lora_B`` so that the
  file means the same whatever alpha a loader assumes; the ``lora_adapter_metadata`` entry diffusers reads says
  ``r`` and ``lora_alpha = r`` accordingly.
* **native** (:func:`save_lora_native`): PEFT-style keys in the generator's own module names, for generators
  ComfyUI does not know (WorldGen's decoder); :func:`load_lora_native` reads it back.

Every file carries ``promptweave.*`` metadata (method ``ipl_lora``, the base-model fingerprint, rank, alpha,
target, format, source/target text) plus kohya's ``ss_network_dim`` / ``ss_network_alpha``, and is written
atomically (temporary file + rename), so a failed write never leaves a partial LoRA under the real name.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.artifacts import (
    MALFORMED_METADATA_ERRORS,
    ArtifactError,
    base_metadata,
    check_method,
    meta_field,
    read_safetensors,
    save_safetensors_atomic,
)

METHOD = "ipl_lora"
FORMATS = ("comfyui", "diffusers", "native")


@dataclass
class LoraWeights:
    """LoRA matrices per adapted layer (generator's module names): ``down`` = A ``[r, in(, k, k)]``, ``up`` = B."""

    down: dict[str, torch.Tensor]
    up: dict[str, torch.Tensor]
    rank: int
    alpha: float
    kind: str = "generator"
    naming: str = "native"  # "diffusers" | "ldm" (SD U-Nets) | "native"
    base: str = ""
    num_res_blocks: list[int] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta(self, name: str) -> torch.Tensor:
        """The weight change ``B @ A * alpha / rank`` of one linear layer."""
        a, b = self.down[name].flatten(1), self.up[name].flatten(1)
        return (b @ a) * self.scale


# ----- module names -----------------------------------------------------------------------------------------
_LDM_INPUT = re.compile(r"^input_blocks\.(\d+)\.1\.(.+)$")
_LDM_OUTPUT = re.compile(r"^output_blocks\.(\d+)\.1\.(.+)$")
_LDM_MIDDLE = re.compile(r"^middle_block\.1\.(.+)$")


def ldm_to_diffusers_name(name: str, num_res_blocks: Sequence[int]) -> str:
    """An attention module path of an LDM (ComfyUI/original SD) U-Net in diffusers' layout.

    Level ``l`` of the down path holds ``num_res_blocks[l]`` (resnet, transformer) slots in ``input_blocks`` after
    the input convolution and one downsampler slot (not on the last level); the up path mirrors it with one more
    slot per level (``num_res_blocks[l] + 1``), deepest level first. Transformer internals keep their names.
    """
    nrb = [int(n) for n in num_res_blocks]
    match = _LDM_MIDDLE.match(name)
    if match:
        return f"mid_block.attentions.0.{match.group(1)}"
    match = _LDM_INPUT.match(name)
    if match:
        slot, rest = int(match.group(1)), match.group(2)
        index = 1
        for level, n in enumerate(nrb):
            if index <= slot < index + n:
                return f"down_blocks.{level}.attentions.{slot - index}.{rest}"
            index += n + (1 if level + 1 < len(nrb) else 0)
        raise KeyError(f"input block {slot} is not an attention slot for num_res_blocks {nrb}")
    match = _LDM_OUTPUT.match(name)
    if match:
        slot, rest = int(match.group(1)), match.group(2)
        index = 0
        for up_level, n in enumerate(reversed(nrb)):
            if index <= slot < index + n + 1:
                return f"up_blocks.{up_level}.attentions.{slot - index}.{rest}"
            index += n + 1
        raise KeyError(f"output block {slot} is out of range for num_res_blocks {nrb}")
    raise KeyError(f"not an LDM U-Net attention module: {name}")


def diffusers_name(lora: LoraWeights, name: str) -> str:
    if lora.naming == "diffusers":
        return name
    if lora.naming == "ldm":
        return ldm_to_diffusers_name(name, lora.num_res_blocks)
    raise ValueError(
        f"a '{lora.kind}' LoRA ({lora.naming} names) has no Stable Diffusion U-Net layout: use the native format"
    )


# ----- state dicts ----------------------------------------------------------------------------------------------
def kohya_state_dict(lora: LoraWeights) -> dict[str, torch.Tensor]:
    """``lora_unet_*`` keys (``lora_down``/``lora_up``/``alpha``) for ComfyUI's ``LoraLoader`` and kohya tools."""
    out: dict[str, torch.Tensor] = {}
    for name in lora.down:
        key = "lora_unet_" + diffusers_name(lora, name).replace(".", "_")
        out[f"{key}.lora_down.weight"] = lora.down[name].contiguous()
        out[f"{key}.lora_up.weight"] = lora.up[name].contiguous()
        out[f"{key}.alpha"] = torch.tensor(float(lora.alpha))
    return out


def diffusers_state_dict(lora: LoraWeights) -> dict[str, torch.Tensor]:
    """PEFT keys under ``unet.`` for ``pipe.load_lora_weights`` (scale folded into ``lora_B``)."""
    out: dict[str, torch.Tensor] = {}
    for name in lora.down:
        key = "unet." + diffusers_name(lora, name)
        out[f"{key}.lora_A.weight"] = lora.down[name].contiguous()
        out[f"{key}.lora_B.weight"] = (lora.up[name] * lora.scale).contiguous()
    return out


def native_state_dict(lora: LoraWeights) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name in lora.down:
        out[f"{name}.lora_A.weight"] = lora.down[name].contiguous()
        out[f"{name}.lora_B.weight"] = lora.up[name].contiguous()
    return out


def lora_metadata(lora: LoraWeights, fmt: str, extra: dict[str, Any] | None = None) -> dict[str, str]:
    """``promptweave.*`` fields plus the kohya/diffusers fields other tools read."""
    targets = sorted(lora.down)
    meta = base_metadata(
        METHOD,
        lora.base or lora.kind,
        format=fmt,
        base_fingerprint=lora.base,
        rank=lora.rank,
        alpha=lora.alpha,
        target=lora.kind,
        target_modules=targets,
        naming=lora.naming,
        num_res_blocks=lora.num_res_blocks,
        info=lora.info,
        **(extra or {}),
    )
    meta["ss_network_module"] = "networks.lora"
    meta["ss_network_dim"] = str(lora.rank)
    meta["ss_network_alpha"] = str(lora.alpha if fmt != "diffusers" else lora.rank)
    meta["ss_training_comment"] = (
        f"PromptWeave IPL ({lora.info.get('method', 'ipl')}): "
        f"{lora.info.get('source_text', '')} -> {lora.info.get('target_text', '')}"
    )
    if fmt == "diffusers":
        names = sorted({diffusers_name(lora, n) for n in lora.down})
        meta["lora_adapter_metadata"] = json.dumps(
            {"unet.r": lora.rank, "unet.lora_alpha": lora.rank, "unet.target_modules": names}
        )
    return meta


def _save(
    lora: LoraWeights,
    path: str | os.PathLike[str],
    fmt: str,
    tensors: dict[str, torch.Tensor],
    extra: dict[str, Any] | None,
) -> Path:
    if not lora.down:
        raise ValueError("the LoRA has no layers")
    return save_safetensors_atomic(path, tensors, lora_metadata(lora, fmt, extra))


def save_lora_comfyui(lora: LoraWeights, path: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
    """kohya-named safetensors for ``ComfyUI/models/loras`` (see the module docstring)."""
    return _save(lora, path, "comfyui", kohya_state_dict(lora), extra)


def save_lora_diffusers(lora: LoraWeights, path: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
    """PEFT/diffusers-named safetensors for ``StableDiffusionPipeline.load_lora_weights``."""
    return _save(lora, path, "diffusers", diffusers_state_dict(lora), extra)


def save_lora_native(lora: LoraWeights, path: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
    """PEFT-style keys in the generator's module names (any generator, e.g. WorldGen's decoder)."""
    return _save(lora, path, "native", native_state_dict(lora), extra)


def save_lora(
    lora: LoraWeights, path: str | os.PathLike[str], fmt: str = "comfyui", extra: dict[str, Any] | None = None
) -> Path:
    if fmt not in FORMATS:
        raise ValueError(f"unknown LoRA format {fmt!r}; expected one of {FORMATS}")
    return {"comfyui": save_lora_comfyui, "diffusers": save_lora_diffusers, "native": save_lora_native}[fmt](
        lora, path, extra
    )


def load_lora_native(path: str | os.PathLike[str]) -> LoraWeights:
    """Read a :func:`save_lora_native` file back (``ArtifactError`` for anything else)."""
    path = Path(path)
    tensors, metadata = read_safetensors(path)
    check_method(metadata, METHOD, path)
    if meta_field(metadata, "format") != "native":
        raise ArtifactError(f"{path} is a '{meta_field(metadata, 'format')}' export; read native files only")
    down = {k[: -len(".lora_A.weight")]: v.float() for k, v in tensors.items() if k.endswith(".lora_A.weight")}
    up = {k[: -len(".lora_B.weight")]: v.float() for k, v in tensors.items() if k.endswith(".lora_B.weight")}
    if set(down) != set(up) or not down:
        raise ArtifactError(f"{path}: unpaired or missing lora_A/lora_B tensors")
    info = meta_field(metadata, "info", {})
    try:
        rank, alpha = int(meta_field(metadata, "rank")), float(meta_field(metadata, "alpha"))  # type: ignore[arg-type]
        fields = {name: str(meta_field(metadata, name)) for name in ("target", "naming", "base_fingerprint")}
        blocks = [int(n) for n in meta_field(metadata, "num_res_blocks", []) or []]  # type: ignore[union-attr]
    except MALFORMED_METADATA_ERRORS as exc:
        raise ArtifactError(f"{path}: malformed LoRA metadata ({exc}): re-save the file") from None
    if not math.isfinite(alpha) or alpha <= 0:
        raise ArtifactError(f"{path}: its LoRA alpha {alpha} is not a positive number: re-save the file")
    for name in down:  # the declared rank must be the tensors' rank: A is [rank, in(, k, k)], B is [out, rank(, 1, 1)]
        if down[name].ndim not in (2, 4) or down[name].shape[0] != rank or up[name].shape[1] != rank:
            raise ArtifactError(
                f"{path}: its stored rank {rank} does not match the tensors of '{name}' (lora_A "
                f"{tuple(down[name].shape)}, lora_B {tuple(up[name].shape)}): re-save the file"
            )
    return LoraWeights(
        down=down,
        up=up,
        rank=rank,
        alpha=alpha,
        kind=fields["target"],
        naming=fields["naming"],
        base=fields["base_fingerprint"],
        num_res_blocks=blocks,
        info=info if isinstance(info, dict) else {},
    )


def check_lora_fits(root: torch.nn.Module, lora: LoraWeights, what: str = "the model") -> None:
    """A ``ValueError`` naming the first adapted layer that ``root`` lacks, or whose weight has another shape than
    the LoRA's ``B @ A`` (a LoRA trained on another generator)."""
    for name in sorted(lora.down):
        try:
            weight = root.get_submodule(name).weight
        except AttributeError:
            raise ValueError(f"{what} has no layer '{name}' that this LoRA adapts: it was trained on another "
                             "generator") from None
        a, b = lora.down[name], lora.up[name]
        shape = (b.shape[0], *a.shape[1:]) if a.ndim == 4 else (b.shape[0], a.shape[1])
        if tuple(weight.shape) != shape:
            raise ValueError(f"layer '{name}' of {what} is {tuple(weight.shape)}, the LoRA adapts a {shape} weight: "
                             "it was trained on another generator")


def adapted_worldgen(gen: Any, lora: LoraWeights, strength: float = 1.0) -> Any:
    """A copy of a WorldGen whose decoder has a native IPL LoRA (``save_lora_native`` of a WorldGen run) merged in
    at ``strength``; ``gen`` itself is unchanged. Before/after images from the same seeds show the adaptation."""
    import copy

    decoder = gen.autoencoder.decoder
    check_lora_fits(decoder, lora, "WorldGen's decoder")
    adapted = copy.deepcopy(gen)
    merge_lora(adapted.autoencoder.decoder, lora, strength)
    return adapted.eval()


@torch.no_grad()
def merge_lora(root: torch.nn.Module, lora: LoraWeights, strength: float = 1.0) -> None:
    """Add ``strength * B @ A * alpha / rank`` to the weights of ``root``'s layers (Linear or Conv2d) in place."""
    for name in lora.down:
        module = root.get_submodule(name)
        a, b = lora.down[name].float(), lora.up[name].float()
        if a.ndim == 4:  # conv: A is [r, in, k, k], B is [out, r, 1, 1]
            delta = torch.einsum("or,rikl->oikl", b.flatten(1), a)
        else:
            delta = b @ a
        module.weight.add_((strength * lora.scale * delta).to(module.weight.dtype))
