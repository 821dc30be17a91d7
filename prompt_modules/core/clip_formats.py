"""CLIP checkpoint layouts: format detection, conversion to open_clip's state dict, shape inference, identity.

:class:`~promptweave.prompt_modules.core.vlm.VisionLanguageModel` runs an ``open_clip.CLIP``; the loader
(:func:`~promptweave.prompt_modules.core.vlm.load_vlm`) brings every layout a user has to open_clip's keys here:

* **open_clip** (``visual.*``, ``transformer.resblocks.*``, ``token_embedding.weight``, ``positional_embedding``,
  ``ln_final.*``, ``text_projection`` ``[width, embed]``, ``logit_scale``): taken as it is.
* **transformers** ``CLIPModel`` (``text_model.*``, ``vision_model.*``, ``text_projection.weight`` and
  ``visual_projection.weight`` as ``nn.Linear`` weights ``[embed, width]``, ``logit_scale``). ComfyUI's text
  encoders (``clip_l.safetensors`` / ``clip_g.safetensors``: ``text_model.*`` + ``text_projection.weight``) and
  its CLIP-vision files (``vision_model.*`` + ``visual_projection.weight``) are its two halves. Converted key by
  key: separate q/k/v projections are stacked into ``attn.in_proj_*`` (q, k, v order, as
  ``nn.MultiheadAttention``), ``mlp.fc1/fc2`` -> ``mlp.c_fc/c_proj``, ``layer_norm1/2`` -> ``ln_1/2``,
  ``pre_layrnorm`` -> ``ln_pre``, ``post_layernorm`` -> ``ln_post``, ``final_layer_norm`` -> ``ln_final``, the
  class/patch/position embeddings to ``class_embedding`` / ``conv1`` / ``positional_embedding``, and the two
  projections transposed. A bare ``text_projection`` beside ``text_model.*`` (files of ComfyUI's old CLIPSave
  node) is already in open_clip's orientation, as ComfyUI reads it.

Files without a config get their shape from the tensors (:func:`infer_open_clip_cfg`): widths, layer counts,
patch size, image size (from the position-embedding count), context length and vocabulary. Head counts are not
in the tensors; they come from the published CLIP families (:data:`TEXT_HEADS`, :data:`VISION_HEADS`). The
activation is not in the tensors either (:func:`quick_gelu_from_shape`).

A loaded model is named by its weights, not by its file (:func:`clip_name`): ``clip:<family>:<fingerprint>``,
the same whichever layout (and fp16 / fp32) the same weights came from, so an artifact trained on a transformers
folder is accepted on the same weights loaded from open_clip files or ComfyUI's split files.

Weights are safetensors only: pickles (``.bin``, ``.pt``, ``.ckpt`` ...) are refused (:func:`refuse_pickle`).
Nothing here imports ComfyUI.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .artifacts import ArtifactError

#: File suffixes of PyTorch pickles (``torch.save``, ``pytorch_model.bin``, Lightning ``.ckpt``): never loaded.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".p"})
#: ``log(100)``: CLIP's trained logit scale (Radford et al. 2021 clamp it at 100 and every released CLIP sits
#: there). Split text / vision files carry none; the loader uses this one.
CLIP_LOGIT_SCALE = math.log(100.0)
#: Attention heads of the published CLIP text towers by width (ViT-B 512, ViT-L 768, ViT-H 1024, ViT-bigG 1280;
#: open_clip's and transformers' configs): 64-wide heads throughout.
TEXT_HEADS: dict[int, int] = {512: 8, 768: 12, 1024: 16, 1280: 20}
#: Attention heads of the published CLIP vision towers by width: ViT-B 768 / 12 and ViT-L 1024 / 16 (64-wide
#: heads), ViT-H/14 1280 / 16 (80-wide) and ViT-bigG/14 1664 / 16 (104-wide), as open_clip's ``head_width``
#: and transformers' ``num_attention_heads`` say.
VISION_HEADS: dict[int, int] = {768: 12, 1024: 16, 1280: 16, 1664: 16}
#: Activation of the published towers by (tower, width, layers), as ComfyUI's configs read them: OpenAI's
#: CLIP-L (``clip_l``, the ViT-L/14 vision tower) uses quick_gelu; OpenCLIP's ViT-H/14 (SD2.x text encoder,
#: IP-Adapter's vision tower) and ViT-bigG/14 (``clip_g``) use GELU. ViT-B towers were released both ways
#: (OpenAI: quick_gelu, LAION: GELU): no default, the caller says.
QUICK_GELU_BY_SHAPE: dict[tuple[str, int, int], bool] = {
    ("text", 768, 12): True,
    ("text", 1024, 24): False,
    ("text", 1280, 32): False,
    ("vision", 1024, 24): True,
    ("vision", 1280, 32): False,
    ("vision", 1664, 48): False,
}
#: open_clip model names (built-in offline configs) that name a loaded model's family when its shape matches.
KNOWN_FAMILIES = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14", "ViT-bigG-14")
#: Which text encoder goes with a CLIP-vision tower, by projection width (for the error of a mismatched pair).
PAIR_HINTS: dict[int, str] = {
    512: "the text tower of the same ViT-B CLIP",
    768: "clip_l.safetensors (OpenAI CLIP ViT-L/14's text encoder, with its text projection)",
    1024: "OpenCLIP ViT-H/14's text encoder (SD2.x's, with its text projection)",
    1280: "clip_g.safetensors (OpenCLIP ViT-bigG/14's text encoder)",
}

_TEXT_ROOTS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
_LAYER = re.compile(r"^(text_model|vision_model)\.encoder\.layers\.(\d+)\.(.+)$")
_LAYER_PARTS = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_QKV = ("q_proj", "k_proj", "v_proj")
_FIXED = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "text_projection": "text_projection",  # ComfyUI's old CLIPSave files: already open_clip's [width, embed]
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {"text_projection.weight": "text_projection", "visual_projection.weight": "visual.proj"}


# ----- files ------------------------------------------------------------------------------------------------
def refuse_pickle(path: Path) -> None:
    """Raise :class:`ArtifactError` for a PyTorch pickle, with the one-off conversion to safetensors."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ArtifactError(
            f"{path} is a PyTorch pickle ({path.suffix}); PromptWeave reads safetensors only (loading a pickle can "
            'run code). Convert it once, where you trust the file: python -c "import torch, safetensors.torch as s; '
            f"s.save_file({{k: v.contiguous() for k, v in torch.load('{path.name}', map_location='cpu', "
            f"weights_only=True).items()}}, '{path.stem}.safetensors')\" (for a transformers folder: "
            "CLIPModel.from_pretrained(folder).save_pretrained(folder, safe_serialization=True))"
        )


# ----- layouts ----------------------------------------------------------------------------------------------
def is_transformers_layout(tensors: Mapping[str, torch.Tensor]) -> bool:
    """True for transformers' ``CLIPModel`` keys (either tower), False for anything else."""
    return any(k.startswith(("text_model.", "vision_model.")) for k in tensors)


def tower_of(key: str) -> str | None:
    """``"vision"`` / ``"text"`` for an open_clip key of that tower, None for the shared ``logit_scale`` (and
    unknown keys)."""
    if key.startswith("visual."):
        return "vision"
    if key.startswith(_TEXT_ROOTS):
        return "text"
    return None


def transformers_to_open_clip(tensors: Mapping[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """transformers ``CLIPModel`` keys (one tower or both) -> open_clip ``CLIP`` keys (see the module docstring).

    ``*.position_ids`` buffers (older transformers saved them) are dropped; keys of neither layout are kept
    under their name, so loading reports them as unexpected.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.endswith("position_ids"):
            continue
        if key in _FIXED:
            out[_FIXED[key]] = value
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
        elif match := _LAYER.match(key):
            tower, index, rest = match.groups()
            prefix = f"{'visual.' if tower == 'vision_model' else ''}transformer.resblocks.{index}."
            module, _, kind = rest.rpartition(".")
            attn, _, proj = module.rpartition(".")
            if attn == "self_attn" and proj in _QKV:
                qkv.setdefault((prefix, kind, key.rsplit(".", 2)[0]), {})[proj] = value
            elif module in _LAYER_PARTS:
                out[f"{prefix}{_LAYER_PARTS[module]}.{kind}"] = value
            else:
                out[key] = value
        else:
            out[key] = value
    for (prefix, kind, where), parts in qkv.items():
        missing = [p for p in _QKV if p not in parts]
        if missing:
            raise ArtifactError(f"{path}: {where} has no {', '.join(f'{m}.{kind}' for m in missing)}")
        out[f"{prefix}attn.in_proj_{kind}"] = torch.cat([parts[p] for p in _QKV], dim=0)
    return out


def to_open_clip_layout(tensors: Mapping[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Any supported layout -> open_clip keys (open_clip state dicts pass unchanged, less ``position_ids``)."""
    if is_transformers_layout(tensors):
        return transformers_to_open_clip(tensors, path)
    return {k: v for k, v in tensors.items() if not k.endswith("position_ids")}


def split_towers(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """open_clip keys -> ``(text, vision, other)`` (``other``: ``logit_scale`` and unknown keys)."""
    parts: dict[str | None, dict[str, torch.Tensor]] = {"text": {}, "vision": {}, None: {}}
    for key, value in state.items():
        parts[tower_of(key)][key] = value
    return parts["text"], parts["vision"], parts[None]


# ----- shapes -----------------------------------------------------------------------------------------------
def _layers(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}resblocks\.(\d+)\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def mlp_ratio(hidden: int, width: int) -> float:
    """``hidden / width`` such that open_clip's ``int(width * mlp_ratio)`` gives ``hidden`` back exactly."""
    ratio = hidden / width
    return ratio if int(width * ratio) == hidden else (hidden + 0.25) / width


def _need(state: Mapping[str, torch.Tensor], key: str, path: Path, what: str) -> torch.Tensor:
    if key not in state:
        raise ArtifactError(f"{path}: the {what} has no {key!r} (open_clip key; transformers keys are converted)")
    return state[key]


def infer_open_clip_cfg(state: Mapping[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """The open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``; no ``quick_gelu``) of a full
    open_clip state dict, read from its tensor shapes. Head counts come from the CLIP families
    (:data:`TEXT_HEADS`, :data:`VISION_HEADS`); a width outside them is an :class:`ArtifactError` asking for the
    model's config. The projections must have one width (:func:`check_pair` says which file to use otherwise)."""
    conv = _need(state, "visual.conv1.weight", path, "vision tower")
    if conv.ndim != 4 or conv.shape[1] != 3 or conv.shape[2] != conv.shape[3]:
        raise ArtifactError(f"{path}: visual.conv1.weight {tuple(conv.shape)} is not a square RGB patch embedding")
    v_width, patch = int(conv.shape[0]), int(conv.shape[2])
    positions = int(_need(state, "visual.positional_embedding", path, "vision tower").shape[0]) - 1
    grid = math.isqrt(max(positions, 0))
    if grid * grid != positions or grid == 0:
        raise ArtifactError(f"{path}: {positions} vision positions (after the class token) are not a square grid")
    v_layers = _layers(state, "visual.transformer.")
    v_hidden = int(_need(state, "visual.transformer.resblocks.0.mlp.c_fc.weight", path, "vision tower").shape[0])
    t_embed = _need(state, "token_embedding.weight", path, "text tower")
    t_width = int(t_embed.shape[1])
    t_layers = _layers(state, "transformer.")
    t_hidden = int(_need(state, "transformer.resblocks.0.mlp.c_fc.weight", path, "text tower").shape[0])
    text_proj = _need(state, "text_projection", path, "text tower")
    visual_proj = _need(state, "visual.proj", path, "vision tower")
    if int(text_proj.shape[-1]) != int(visual_proj.shape[-1]):
        raise ArtifactError(
            f"{path}: the text projection gives {text_proj.shape[-1]} features and the image projection "
            f"{visual_proj.shape[-1]}: the towers are not one CLIP"
        )
    unknown = []
    if t_width not in TEXT_HEADS:
        unknown.append(f"text width {t_width} (known: {sorted(TEXT_HEADS)})")
    if v_width not in VISION_HEADS:
        unknown.append(f"vision width {v_width} (known: {sorted(VISION_HEADS)})")
    if unknown:
        raise ArtifactError(
            f"{path}: cannot tell the attention heads of a CLIP with {' and '.join(unknown)}; give its config: an "
            "open_clip config JSON beside the weights, a transformers config.json, or an open_clip model_name"
        )
    return {
        "embed_dim": int(visual_proj.shape[-1]),
        "vision_cfg": {
            "image_size": grid * patch,
            "patch_size": patch,
            "width": v_width,
            "layers": v_layers,
            "head_width": v_width // VISION_HEADS[v_width],
            "mlp_ratio": mlp_ratio(v_hidden, v_width),
        },
        "text_cfg": {
            "context_length": int(_need(state, "positional_embedding", path, "text tower").shape[0]),
            "vocab_size": int(t_embed.shape[0]),
            "width": t_width,
            "heads": TEXT_HEADS[t_width],
            "layers": t_layers,
            "mlp_ratio": mlp_ratio(t_hidden, t_width),
        },
    }


def quick_gelu_from_shape(cfg: Mapping[str, Any]) -> bool | None:
    """The activation of a CLIP whose config does not say, from its towers' shapes (:data:`QUICK_GELU_BY_SHAPE`,
    as ComfyUI decides): True / False, or None where the shape does not tell (ViT-B, custom shapes) or the
    towers disagree."""
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    found = {
        QUICK_GELU_BY_SHAPE.get(("text", int(text["width"]), int(text["layers"]))),
        QUICK_GELU_BY_SHAPE.get(("vision", int(vision["width"]), int(vision["layers"]))),
    } - {None}
    return found.pop() if len(found) == 1 else None


def check_pair(
    text: Mapping[str, torch.Tensor], vision: Mapping[str, torch.Tensor], text_path: Path, vision_path: Path
) -> None:
    """Refuse a text tower and a vision tower that cannot form one CLIP, saying which file to use instead."""
    if "text_projection" not in text:
        raise ArtifactError(
            f"{text_path} is a text encoder without its text projection (text_projection.weight), as most SD1.5 "
            "checkpoints' CLIP-L: its features cannot meet the image features. Use the text encoder file of the "
            "full CLIP (ComfyUI's clip_l.safetensors / clip_g.safetensors carry the projection) or the CLIP's "
            "transformers folder"
        )
    if "visual.proj" not in vision:
        raise ArtifactError(
            f"{vision_path} is a vision tower without its projection (visual_projection.weight): use a CLIP-vision "
            "file with the projection (ComfyUI's models/clip_vision files carry it) or the CLIP's transformers folder"
        )
    t_dim, v_dim = int(text["text_projection"].shape[-1]), int(vision["visual.proj"].shape[-1])
    if t_dim != v_dim:
        hint = PAIR_HINTS.get(v_dim, f"the text encoder of the CLIP this vision tower belongs to ({v_dim} features)")
        raise ArtifactError(
            f"{text_path} projects text to {t_dim} features but {vision_path} projects images to {v_dim}: they are "
            f"not one CLIP. With this vision file use {hint}; pairs that form one CLIP: clip_l + OpenAI ViT-L/14 "
            "vision, clip_g + ViT-bigG/14 vision, OpenCLIP ViT-H/14 text + ViT-H/14 vision"
        )


# ----- configs of other formats -----------------------------------------------------------------------------
_HIDDEN_ACT = {"quick_gelu": True, "gelu": False}


def open_clip_cfg_from_transformers(config: Mapping[str, Any], path: Path) -> tuple[dict[str, Any], bool]:
    """A transformers ``CLIPConfig`` (``config.json``) -> ``(open_clip model config, quick_gelu)``.

    ``hidden_act`` ``quick_gelu`` (OpenAI's weights) or ``gelu`` (OpenCLIP's) sets the activation; both towers
    must use the same one, as open_clip's CLIP has one flag."""
    text, vision = config.get("text_config"), config.get("vision_config")
    if not isinstance(text, Mapping) or not isinstance(vision, Mapping):
        raise ArtifactError(f"{path} is not a transformers CLIP config (no 'text_config' / 'vision_config')")
    acts = {str(text.get("hidden_act", "quick_gelu")), str(vision.get("hidden_act", "quick_gelu"))}
    if not acts <= set(_HIDDEN_ACT):
        raise ArtifactError(f"{path}: hidden_act {sorted(acts)} is not supported (quick_gelu or gelu)")
    if len(acts) > 1:
        raise ArtifactError(f"{path}: the towers use different activations {sorted(acts)}; open_clip's CLIP has one")
    for tower in (text, vision):
        eps = float(tower.get("layer_norm_eps", 1e-5))
        if not math.isclose(eps, 1e-5):
            raise ArtifactError(f"{path}: layer_norm_eps {eps} is not supported (CLIP's 1e-5)")
    if int(vision.get("num_channels", 3)) != 3:
        raise ArtifactError(f"{path}: only RGB vision towers are supported (num_channels 3)")
    try:
        v_width, t_width = int(vision.get("hidden_size", 768)), int(text.get("hidden_size", 512))
        cfg = {
            "embed_dim": int(config.get("projection_dim", 512)),
            "vision_cfg": {
                "image_size": int(vision.get("image_size", 224)),
                "patch_size": int(vision.get("patch_size", 32)),
                "width": v_width,
                "layers": int(vision.get("num_hidden_layers", 12)),
                "head_width": v_width // int(vision.get("num_attention_heads", 12)),
                "mlp_ratio": mlp_ratio(int(vision.get("intermediate_size", 3072)), v_width),
            },
            "text_cfg": {
                "context_length": int(text.get("max_position_embeddings", 77)),
                "vocab_size": int(text.get("vocab_size", 49408)),
                "width": t_width,
                "heads": int(text.get("num_attention_heads", 8)),
                "layers": int(text.get("num_hidden_layers", 12)),
                "mlp_ratio": mlp_ratio(int(text.get("intermediate_size", 2048)), t_width),
            },
        }
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise ArtifactError(f"{path}: bad transformers CLIP config: {exc}") from None
    return cfg, _HIDDEN_ACT[acts.pop()]


def preprocess_from_open_clip(preprocess_cfg: Any, path: Path) -> dict[str, Any]:
    """open_clip's ``preprocess_cfg`` (hub ``open_clip_config.json``) -> VLMConfig fields (mean, std,
    interpolation). Only the default ``resize_mode`` ``shortest`` (resize the shorter side, centre crop)."""
    if not preprocess_cfg:
        return {}
    if not isinstance(preprocess_cfg, Mapping):
        raise ArtifactError(f"{path}: preprocess_cfg must be an object")
    mode = preprocess_cfg.get("resize_mode", "shortest")
    if mode != "shortest":
        raise ArtifactError(f"{path}: preprocess_cfg.resize_mode {mode!r} is not supported (shortest)")
    fields: dict[str, Any] = {}
    if "mean" in preprocess_cfg:
        fields["image_mean"] = tuple(float(v) for v in preprocess_cfg["mean"])
    if "std" in preprocess_cfg:
        fields["image_std"] = tuple(float(v) for v in preprocess_cfg["std"])
    interpolation = preprocess_cfg.get("interpolation", "bicubic")
    if interpolation not in ("bicubic", "bilinear"):
        raise ArtifactError(f"{path}: preprocess_cfg.interpolation {interpolation!r} is not supported")
    fields["interpolation"] = interpolation
    return fields


def preprocess_from_transformers(processor: Mapping[str, Any]) -> dict[str, Any]:
    """transformers' ``preprocessor_config.json`` -> VLMConfig fields (mean, std; ``resample`` 2 = bilinear,
    otherwise CLIP's bicubic)."""
    fields: dict[str, Any] = {"interpolation": "bilinear" if processor.get("resample") == 2 else "bicubic"}
    if "image_mean" in processor:
        fields["image_mean"] = tuple(float(v) for v in processor["image_mean"])
    if "image_std" in processor:
        fields["image_std"] = tuple(float(v) for v in processor["image_std"])
    return fields


# ----- identity ---------------------------------------------------------------------------------------------
def shape_signature(cfg: Mapping[str, Any]) -> tuple[int, ...]:
    """What decides a CLIP's tensor shapes in an open_clip model config (defaults as open_clip's)."""
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    v_width, t_width = int(v.get("width", 768)), int(t.get("width", 512))
    image = v.get("image_size", 224)
    return (
        int(cfg["embed_dim"]),
        int(image[0] if isinstance(image, (list, tuple)) else image),
        int(v.get("patch_size", 16)),
        v_width,
        int(v.get("layers", 12)),
        v_width // int(v.get("head_width", 64)),
        int(v_width * float(v.get("mlp_ratio", 4.0))),
        int(t.get("context_length", 77)),
        int(t.get("vocab_size", 49408)),
        t_width,
        int(t.get("layers", 12)),
        int(t.get("heads", 8)),
        int(t_width * float(t.get("mlp_ratio", 4.0))),
    )


@functools.lru_cache(maxsize=1)
def _family_signatures() -> dict[tuple[int, ...], str]:
    import open_clip

    return {shape_signature(open_clip.get_model_config(name)): name for name in KNOWN_FAMILIES}


def family_name(cfg: Mapping[str, Any], quick_gelu: bool) -> str:
    """open_clip's name for this shape (``ViT-L-14``; ``-quickgelu`` appended for that activation), or
    ``custom`` / ``custom-quickgelu``."""
    base = _family_signatures().get(shape_signature(cfg), "custom")
    return f"{base}-quickgelu" if quick_gelu else base


def weights_fingerprint(state: Mapping[str, torch.Tensor], length: int = 12) -> str:
    """sha256 prefix over a canonical subset of an open_clip state dict: every tensor's name and shape and up to
    4096 evenly strided values, cast to fp16 (so fp16 and fp32 copies of the same weights agree; bf16 copies do
    not). ``logit_scale`` is left out (split files carry none). A fine-tune changes the values of every tensor it
    trains, so a strided sample tells it apart at a fraction of the cost of hashing billions of parameters."""
    digest = hashlib.sha256()
    for name in sorted(state):
        if name in ("logit_scale", "logit_bias"):
            continue
        tensor = state[name].detach()
        flat = tensor.reshape(-1)
        if flat.numel() > 4096:
            flat = flat[:: flat.numel() // 4096][:4096]
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(flat.to("cpu", torch.float16).contiguous().numpy().tobytes())
    return digest.hexdigest()[:length]


def clip_name(state: Mapping[str, torch.Tensor], cfg: Mapping[str, Any], quick_gelu: bool) -> str:
    """``clip:<family>:<fingerprint>``: the backbone name every artifact trained on this CLIP records."""
    return f"clip:{family_name(cfg, quick_gelu)}:{weights_fingerprint(state)}"
