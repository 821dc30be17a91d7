"""The vision-language backbone every PromptWeave capability uses: an open_clip ``CLIP`` built from data.

A :class:`VLMConfig` describes the model (open_clip style: embedding size, a ViT vision tower, a causal text
transformer over the 49408-token CLIP BPE vocabulary). :class:`VisionLanguageModel` wraps the
``open_clip.CLIP`` built from it, owns the standard CLIP tokenizer and the image preprocessing, and exposes
the pieces prompt-learning methods need: running the text tower on custom token embeddings
(:meth:`VisionLanguageModel.encode_text_embeddings`) and running the vision tower with extra prompt tokens
(:meth:`VisionLanguageModel.encode_image_with_prompts`).

Weights are stored as safetensors only (:func:`save_vlm` / :func:`load_vlm`); nothing here unpickles and
nothing here imports ComfyUI.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.tokenizer import SimpleTokenizer
from torch import nn

from .artifacts import (
    ArtifactError,
    base_metadata,
    check_method,
    config_from_dict,
    meta_field,
    read_safetensors,
    save_safetensors_atomic,
)

METHOD = "vlm"
CLIP_VOCAB_SIZE = 49408  # size of the standard CLIP BPE vocabulary (incl. <start_of_text>, <end_of_text>)


@dataclass(frozen=True)
class VLMConfig:
    """Shape of a CLIP-style model: a ViT image tower and a causal text transformer sharing ``embed_dim``.

    ``*_heads`` are attention head counts (open_clip's vision config uses ``head_width = width // heads``).
    ``quick_gelu`` is True for OpenAI-trained weights, False for models trained with open_clip defaults.
    ``conv_stem`` replaces the ViT's patchify convolution by a convolutional stem (:class:`ConvStem`) with
    these channel counts, one stride-2 3x3 convolution each (so ``2 ** len(conv_stem) == patch_size``):
    the token grid, and so every prompt method, stays the same. ``()`` is open_clip's plain patch embedding,
    the layout of every open_clip checkpoint a user brings. ``text_space`` names the model whose text tower
    (weights included) this one carries, when it is another model's (``""``: its own): artifacts that read
    text features only, such as WorldGen's conditioning, check it instead of ``name``.
    """

    name: str = "tiny"
    embed_dim: int = 64
    # vision tower
    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    # text tower
    context_length: int = 77
    vocab_size: int = CLIP_VOCAB_SIZE
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 2
    mlp_ratio: float = 4.0
    quick_gelu: bool = False
    conv_stem: tuple[int, ...] = ()
    text_space: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "conv_stem", tuple(int(c) for c in self.conv_stem))  # JSON gives a list
        if self.conv_stem and (2 ** len(self.conv_stem) != self.patch_size or min(self.conv_stem) < 1):
            raise ValueError(
                f"conv_stem {self.conv_stem} needs one positive channel count per stride-2 convolution, "
                f"{self.patch_size.bit_length() - 1} for patch_size {self.patch_size}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for width, heads, what in (
            (self.vision_width, self.vision_heads, "vision"),
            (self.text_width, self.text_heads, "text"),
        ):
            if heads < 1 or width % heads:
                raise ValueError(f"{what} width {width} is not divisible by {heads} heads")
        if self.vocab_size < CLIP_VOCAB_SIZE:
            raise ValueError(
                f"vocab_size {self.vocab_size} is smaller than the CLIP BPE vocabulary "
                f"({CLIP_VOCAB_SIZE}); PromptWeave uses the standard CLIP tokenizer"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (the form stored in file metadata)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VLMConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        return config_from_dict(cls, data)

    def to_open_clip_cfg(self) -> dict[str, Any]:
        """The open_clip model config (``{embed_dim, quick_gelu, vision_cfg, text_cfg}``) for this shape
        (``conv_stem`` has no open_clip equivalent: :class:`VisionLanguageModel` swaps the stem in)."""
        return {
            "embed_dim": self.embed_dim,
            "quick_gelu": self.quick_gelu,
            "vision_cfg": {
                "image_size": self.image_size,
                "patch_size": self.patch_size,
                "width": self.vision_width,
                "layers": self.vision_layers,
                "head_width": self.vision_width // self.vision_heads,
                "mlp_ratio": self.mlp_ratio,
            },
            "text_cfg": {
                "context_length": self.context_length,
                "vocab_size": self.vocab_size,
                "width": self.text_width,
                "heads": self.text_heads,
                "layers": self.text_layers,
                "mlp_ratio": self.mlp_ratio,
            },
        }

    @classmethod
    def from_open_clip_cfg(cls, cfg: dict[str, Any], name: str = "custom") -> VLMConfig:
        """Read an open_clip model config JSON (plain ViT + text transformer variants only)."""
        vision = dict(cfg.get("vision_cfg") or {})
        text = dict(cfg.get("text_cfg") or {})
        if "embed_dim" not in cfg or not vision or not text:
            raise ValueError("an open_clip config needs 'embed_dim', 'vision_cfg' and 'text_cfg'")
        supported_v = {"image_size", "patch_size", "width", "layers", "head_width", "mlp_ratio"}
        supported_t = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}
        extra = sorted(
            {f"vision_cfg.{k}" for k in vision if k not in supported_v}
            | {f"text_cfg.{k}" for k in text if k not in supported_t}
            | {k for k in cfg if k not in {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg"}}
        )
        if extra:
            raise ValueError(f"unsupported open_clip config options (plain ViT CLIP only): {extra}")
        if not isinstance(vision.get("layers", 12), int):
            raise ValueError("ResNet vision towers are not supported (vision_cfg.layers must be an int)")
        v_width = int(vision.get("width", 768))
        v_mlp = float(vision.get("mlp_ratio", 4.0))
        t_mlp = float(text.get("mlp_ratio", 4.0))
        if v_mlp != t_mlp:
            raise ValueError(f"different mlp_ratio for vision ({v_mlp}) and text ({t_mlp}) is not supported")
        return cls(
            name=name,
            embed_dim=int(cfg["embed_dim"]),
            image_size=int(vision.get("image_size", 224)),
            patch_size=int(vision.get("patch_size", 16)),
            vision_width=v_width,
            vision_layers=int(vision.get("layers", 12)),
            vision_heads=v_width // int(vision.get("head_width", 64)),
            context_length=int(text.get("context_length", 77)),
            vocab_size=int(text.get("vocab_size", CLIP_VOCAB_SIZE)),
            text_width=int(text.get("width", 512)),
            text_layers=int(text.get("layers", 12)),
            text_heads=int(text.get("heads", 8)),
            mlp_ratio=v_mlp,
            quick_gelu=bool(cfg.get("quick_gelu", False)),
        )


VLM_PRESETS: dict[str, VLMConfig] = {
    # ~3.5 M params (3.2 M of them the token embedding): unit tests, the `tiny vlm` artifact.
    "tiny": VLMConfig(name="tiny"),
    # ~13.2 M params; one AdamW step at batch 128 takes about 1.7 s on 2 CPU cores.
    "world": VLMConfig(
        name="world",
        embed_dim=256,
        vision_width=192,
        vision_layers=4,
        vision_heads=3,
        text_width=192,
        text_layers=4,
        text_heads=3,
    ),
    # open_clip's ViT-B-32 shape, for real weights a user brings (random here: no weights are downloaded).
    "vit-b-32": VLMConfig(
        name="vit-b-32",
        embed_dim=512,
        image_size=224,
        patch_size=32,
        vision_width=768,
        vision_layers=12,
        vision_heads=12,
        text_width=512,
        text_layers=12,
        text_heads=8,
    ),
}


def get_config(config: VLMConfig | str) -> VLMConfig:
    """A config, or the preset of that name."""
    if isinstance(config, VLMConfig):
        return config
    try:
        return VLM_PRESETS[config]
    except KeyError:
        raise ValueError(f"unknown VLM preset {config!r}; known: {sorted(VLM_PRESETS)}") from None


@functools.lru_cache(maxsize=4)
def clip_tokenizer(context_length: int = 77) -> SimpleTokenizer:
    """The standard CLIP BPE tokenizer bundled with open_clip (offline), shared per context length."""
    return SimpleTokenizer(context_length=context_length)


class ConvStem(nn.Sequential):
    """Convolutional stem for a ViT (Xiao et al., "Early Convolutions Help Transformers See Better",
    NeurIPS 2021): stride-2 3x3 convolutions, each followed by GroupNorm and ReLU, then a 1x1 convolution to
    the transformer width. It takes the place of the ``patch_size`` x ``patch_size`` patchify convolution and
    gives the same token grid. GroupNorm rather than the paper's BatchNorm: a frozen backbone must not
    change when a prompt learner switches modules to training mode.
    """

    def __init__(self, channels: Sequence[int], width: int) -> None:
        layers: list[nn.Module] = []
        previous = 3
        for c in channels:
            layers += [
                nn.Conv2d(previous, c, 3, stride=2, padding=1, bias=False),
                nn.GroupNorm(math.gcd(8, c), c),
                nn.ReLU(inplace=True),
            ]
            previous = c
        layers.append(nn.Conv2d(previous, width, 1))
        super().__init__(*layers)


class VisionLanguageModel(nn.Module):
    """A CLIP model (``self.clip``, an ``open_clip.CLIP``) plus tokenizer and image preprocessing.

    All ``encode_*`` methods return L2-normalised features of size ``embed_dim`` unless ``normalize=False``.
    """

    def __init__(self, config: VLMConfig | str = "tiny", seed: int | None = None) -> None:
        super().__init__()
        self.config = get_config(config)
        oc = self.config.to_open_clip_cfg()
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self.clip = open_clip.CLIP(oc["embed_dim"], oc["vision_cfg"], oc["text_cfg"], quick_gelu=oc["quick_gelu"])
            if self.config.conv_stem:
                self.clip.visual.conv1 = ConvStem(self.config.conv_stem, self.config.vision_width)
        self.register_buffer("image_mean", torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval()

    # ----- description -------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """Backbone name (stored in every artifact trained on this model)."""
        return self.config.name

    @property
    def text_space(self) -> str:
        """Name of the text feature space (see :class:`VLMConfig`): ``config.text_space`` or ``name``."""
        return self.config.text_space or self.config.name

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def token_width(self) -> int:
        """Width of the text transformer (size of one token embedding)."""
        return self.config.text_width

    @property
    def vision_width(self) -> int:
        """Width of the vision transformer (size of one visual prompt token)."""
        return self.config.vision_width

    @property
    def context_length(self) -> int:
        return self.config.context_length

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    @property
    def logit_scale(self) -> torch.Tensor:
        """The logit multiplier ``exp(clip.logit_scale)``, clamped to 100 as in CLIP (a scalar tensor)."""
        return self.clip.logit_scale.exp().clamp(max=100.0)

    # ----- pieces for prompt learning ----------------------------------------------------------------------
    @property
    def token_embedding(self) -> nn.Embedding:
        """Text token embedding (``vocab_size x token_width``)."""
        return self.clip.token_embedding

    @property
    def positional_embedding(self) -> nn.Parameter:
        """Text positional embedding (``context_length x token_width``)."""
        return self.clip.positional_embedding

    @property
    def text_transformer(self) -> nn.Module:
        """open_clip ``Transformer`` of the text tower; call it as ``text_transformer(x, attn_mask=mask)``."""
        return self.clip.transformer

    @property
    def text_blocks(self) -> nn.ModuleList:
        """The text transformer's residual attention blocks (batch-first)."""
        return self.clip.transformer.resblocks

    @property
    def text_attn_mask(self) -> torch.Tensor | None:
        """Causal additive attention mask of the text tower (``context_length x context_length``)."""
        return self.clip.attn_mask

    @property
    def ln_final(self) -> nn.Module:
        return self.clip.ln_final

    @property
    def text_projection(self) -> torch.Tensor:
        """``token_width x embed_dim`` projection applied to the pooled (end-of-text) token."""
        return self.clip.text_projection

    @property
    def visual(self) -> nn.Module:
        """open_clip ``VisionTransformer`` of the image tower."""
        return self.clip.visual

    # ----- text ------------------------------------------------------------------------------------------
    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """CLIP BPE token ids ``[B, context_length]`` (start, tokens, end, zero padding) on the model's device."""
        if isinstance(texts, str):
            texts = [texts]
        return clip_tokenizer(self.context_length)(list(texts)).to(self.device)

    @staticmethod
    def eot_index(tokens: torch.Tensor) -> torch.Tensor:
        """Position of the end-of-text token in each row (it has the largest id, as in CLIP)."""
        return tokens.argmax(dim=-1)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, L]`` -> token embeddings ``[B, L, token_width]`` (no positional embedding)."""
        return self.clip.token_embedding(tokens.to(self.device))

    def encode_text(self, texts: str | Sequence[str] | torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Text features for strings or token ids ``[B, context_length]``."""
        tokens = texts.to(self.device) if isinstance(texts, torch.Tensor) else self.tokenize(texts)
        return self.encode_text_embeddings(self.embed_tokens(tokens), self.eot_index(tokens), normalize)

    def text_token_features(self, texts_or_ids: str | Sequence[str] | torch.Tensor) -> torch.Tensor:
        """Per-token outputs of the text transformer after ``ln_final``: ``[B, L, token_width]``.

        The cross-attention context of a text-conditional diffusion model (Stable Diffusion reads CLIP's last
        hidden state the same way; Rombach et al. 2022). Accepts strings, token ids ``[B, L]`` (integer) or
        token embeddings ``[B, L, token_width]`` (float, e.g. with learned prompt vectors); ``L`` is
        ``context_length`` (77) for strings. Positional embedding and causal mask are added here, no pooling and
        no projection.
        """
        if isinstance(texts_or_ids, torch.Tensor) and texts_or_ids.is_floating_point():
            x = texts_or_ids.to(self.device)
        elif isinstance(texts_or_ids, torch.Tensor):
            x = self.embed_tokens(texts_or_ids.to(self.device))
        else:
            x = self.embed_tokens(self.tokenize(texts_or_ids))
        length = x.shape[1]
        if length > self.context_length:
            raise ValueError(f"{length} tokens exceed the context length {self.context_length}")
        x = x + self.clip.positional_embedding[:length].to(x.dtype)
        mask = self.clip.attn_mask
        x = self.clip.transformer(x, attn_mask=None if mask is None else mask[:length, :length])
        return self.clip.ln_final(x)

    def encode_text_embeddings(
        self, token_embeds: torch.Tensor, eot_index: torch.Tensor, normalize: bool = True
    ) -> torch.Tensor:
        """Run the text tower on custom token embeddings ``[B, L, token_width]`` (``L <= context_length``).

        The positional embedding and causal mask are added here; the feature is read at ``eot_index`` ``[B]``
        (the end-of-text position), then projected. With the plain token embeddings of ``tokens`` and
        ``eot_index(tokens)`` this equals :meth:`encode_text`.
        """
        length = token_embeds.shape[1]
        if length > self.context_length:
            raise ValueError(f"{length} tokens exceed the context length {self.context_length}")
        x = token_embeds + self.clip.positional_embedding[:length].to(token_embeds.dtype)
        mask = self.clip.attn_mask
        x = self.clip.transformer(x, attn_mask=None if mask is None else mask[:length, :length])
        x = self.clip.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_index.to(x.device)]
        x = x @ self.clip.text_projection
        return F.normalize(x, dim=-1) if normalize else x

    # ----- images ----------------------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Float images ``[B, 3, H, W]`` in 0..1 -> CLIP input: shorter side resized to ``image_size``
        (bilinear, antialiased), centre-cropped to a square, normalised with the OpenAI CLIP mean/std."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        x = images.to(self.device, torch.float32)
        size = self.image_size
        h, w = x.shape[-2:]
        if (h, w) != (size, size):
            scale = size / min(h, w)
            new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
            x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
            top, left = (new_h - size) // 2, (new_w - size) // 2
            x = x[..., top : top + size, left : left + size]
        return (x - self.image_mean) / self.image_std

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Float images ``[B, 3, H, W]`` in 0..1 -> the ViT's input tokens ``[B, 1 + grid*grid, width]``:
        the patch embedding (patchify convolution or :class:`ConvStem`) behind the class token, plus the
        positional embedding, after patch dropout and before ``ln_pre``."""
        v = self.clip.visual
        x = self.preprocess(images).to(v.class_embedding.dtype)
        x = v.conv1(x).flatten(2).transpose(1, 2)  # [B, grid*grid, width]
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        return v.patch_dropout(x)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image features for float images ``[B, 3, H, W]`` in 0..1."""
        return self.encode_image_with_prompts(images, None, normalize)

    def encode_image_with_prompts(
        self, images: torch.Tensor, prompts: torch.Tensor | None = None, normalize: bool = True
    ) -> torch.Tensor:
        """Image features with ``n`` learned visual prompt tokens (shallow visual prompt tuning).

        ``prompts`` is ``[n, vision_width]`` (shared) or ``[B, n, vision_width]`` (per image). The tokens
        are inserted right after the class token, after the positional embedding has been added to the
        class and patch tokens (prompts get no positional embedding) and before ``ln_pre``; they take part
        in every layer's attention; the output is the class token (``ln_post`` then ``proj``), so the prompts act
        only through attention and ``prompts=None`` (or ``n == 0``) gives exactly :meth:`encode_image`.
        """
        v = self.clip.visual
        x = self.image_tokens(images)
        if prompts is not None:
            if prompts.ndim == 2:
                prompts = prompts.unsqueeze(0).expand(x.shape[0], -1, -1)
            if prompts.ndim != 3 or prompts.shape[-1] != self.vision_width:
                raise ValueError(
                    f"prompts must be [n, {self.vision_width}] or [B, n, {self.vision_width}], "
                    f"got {tuple(prompts.shape)}"
                )
            x = torch.cat([x[:, :1], prompts.to(x.device, x.dtype), x[:, 1:]], dim=1)
        x = v.transformer(v.ln_pre(x))
        pooled = v.ln_post(x[:, 0])
        features = pooled @ v.proj
        return F.normalize(features, dim=-1) if normalize else features


# ----- files ------------------------------------------------------------------------------------------------
def trainable_copy(vlm: VisionLanguageModel, device: str | torch.device | None = None) -> VisionLanguageModel:
    """A frozen copy in eval mode with ordinary (non-inference) tensors, so gradients can flow *through* it
    (a model loaded under ``torch.inference_mode()``, as ComfyUI loads, cannot be backpropagated through)."""
    with torch.inference_mode(False):
        copy = VisionLanguageModel(vlm.config)
        copy.clip.load_state_dict({k: v.clone() for k, v in vlm.clip.state_dict().items()})
        copy.requires_grad_(False)
    return copy.to(device if device is not None else vlm.device).eval()


def save_vlm(model: VisionLanguageModel, path: str | os.PathLike[str]) -> Path:
    """Write the model's open_clip state dict as safetensors with its config in the metadata (atomic)."""
    metadata = base_metadata(
        METHOD,
        model.name,
        config=model.config.to_dict(),
        embed_dim=model.embed_dim,
        token_width=model.token_width,
        vision_width=model.vision_width,
    )
    return save_safetensors_atomic(path, model.clip.state_dict(), metadata)


def _sidecar_config(path: Path) -> VLMConfig | None:
    """Config from an open_clip model config JSON ``<stem>.json`` next to the weights, if there is one."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        cfg = json.loads(sidecar.read_text(encoding="utf-8"))
        if isinstance(cfg, dict) and "model_cfg" in cfg:  # open_clip hub layout: open_clip_config.json
            cfg = cfg["model_cfg"]
        return VLMConfig.from_open_clip_cfg(cfg, name=path.stem)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{sidecar}: not a usable open_clip model config: {exc}") from None


def load_vlm(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> VisionLanguageModel:
    """Load a model written by :func:`save_vlm`, or an open_clip state dict with a ``<stem>.json`` config.

    Raises :class:`ArtifactError` (a ``ValueError``) naming the file for a missing, corrupt, truncated or
    non-safetensors file, a missing config, or missing/unexpected/mis-shaped weights.
    """
    path = Path(path)
    tensors, metadata = read_safetensors(path)
    raw = meta_field(metadata, "config")
    if raw is not None:
        check_method(metadata, METHOD, path)
        try:
            config = VLMConfig.from_dict(raw)
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"{path}: bad promptweave.config metadata: {exc}") from None
    else:
        config = _sidecar_config(path)
        if config is None:
            raise ArtifactError(
                f"{path} has no VLM config: expected promptweave.config metadata (written by save_vlm) "
                f"or an open_clip model config JSON next to it ({path.with_suffix('.json').name})"
            )
    model = VisionLanguageModel(config)
    try:
        missing, unexpected = model.clip.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ArtifactError(f"{path} does not fit the '{config.name}' config: {exc}") from None
    if missing or unexpected:
        raise ArtifactError(
            f"{path} does not fit the '{config.name}' config: "
            f"missing keys {_preview(missing)}, unexpected keys {_preview(unexpected)}"
        )
    return model.to(device).eval()


def _preview(keys: Sequence[str], limit: int = 5) -> str:
    keys = list(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{keys[:limit]}{more}"
