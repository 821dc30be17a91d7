"""The vision-language backbone every PromptWeave capability uses: an open_clip ``CLIP`` built from data.

A :class:`VLMConfig` describes the model (open_clip style: embedding size, a ViT vision tower, a causal text
transformer over the 49408-token CLIP BPE vocabulary). :class:`VisionLanguageModel` wraps the
``open_clip.CLIP`` built from it, owns the standard CLIP tokenizer and the image preprocessing, and exposes
the pieces prompt-learning methods need: running the text tower on custom token embeddings
(:meth:`VisionLanguageModel.encode_text_embeddings`) and running the vision tower with extra prompt tokens
(:meth:`VisionLanguageModel.encode_image_with_prompts`).

Weights are stored as safetensors only (:func:`save_vlm` / :func:`load_vlm`); nothing here unpickles and
nothing here imports ComfyUI. :func:`load_vlm` also reads the CLIP files users have (open_clip hub folders and
files, transformers CLIP folders, ComfyUI's text-encoder + CLIP-vision pairs), converted to open_clip's layout by
:mod:`.clip_formats` and named by a fingerprint of their weights.
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

from . import clip_formats
from .artifacts import (
    MALFORMED_METADATA_ERRORS,
    ArtifactError,
    base_metadata,
    build_on_meta,
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
    ``mlp_ratio`` is the MLP width over the model width of the vision tower and, unless ``text_mlp_ratio`` is set,
    of the text tower too (ViT-bigG/14 has 4.9231 in its vision tower, 4 in its text tower).
    ``quick_gelu`` is True for OpenAI-trained weights, False for models trained with open_clip defaults.
    ``conv_stem`` replaces the ViT's patchify convolution by a convolutional stem (:class:`ConvStem`) with
    these channel counts, one stride-2 3x3 convolution each (so ``2 ** len(conv_stem) == patch_size``):
    the token grid, and so every prompt method, stays the same. ``()`` is open_clip's plain patch embedding,
    the layout of every open_clip checkpoint a user brings. ``text_space`` names the model whose text tower
    (weights included) this one carries, when it is another model's (``""``: its own): artifacts that read
    text features only, such as WorldGen's conditioning, check it instead of ``name``.
    ``image_mean`` / ``image_std`` normalise images (OpenAI CLIP's by default; a model's own preprocess config
    may give others) and ``interpolation`` is the resize filter of :meth:`VisionLanguageModel.preprocess`:
    ``bilinear`` (the default, what the world models were trained with) or ``bicubic`` (CLIP's own
    preprocessing; every CLIP :func:`load_vlm` reads from another format gets it).
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
    text_mlp_ratio: float | None = None
    # image preprocessing
    image_mean: tuple[float, ...] = tuple(OPENAI_DATASET_MEAN)
    image_std: tuple[float, ...] = tuple(OPENAI_DATASET_STD)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        object.__setattr__(self, "conv_stem", tuple(int(c) for c in self.conv_stem))  # JSON gives a list
        object.__setattr__(self, "image_mean", tuple(float(c) for c in self.image_mean))
        object.__setattr__(self, "image_std", tuple(float(c) for c in self.image_std))
        if self.conv_stem and (2 ** len(self.conv_stem) != self.patch_size or min(self.conv_stem) < 1):
            raise ValueError(
                f"conv_stem {self.conv_stem} needs one positive channel count per stride-2 convolution, "
                f"{self.patch_size.bit_length() - 1} for patch_size {self.patch_size}"
            )
        if min(self.image_size, self.patch_size, self.embed_dim, self.context_length) < 1:
            raise ValueError("image_size, patch_size, embed_dim and context_length must be positive")
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
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError(f"image_mean / image_std need 3 values, std > 0: {self.image_mean}, {self.image_std}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', not {self.interpolation!r}")

    @property
    def text_mlp(self) -> float:
        """MLP ratio of the text tower (``text_mlp_ratio``, else ``mlp_ratio``)."""
        return self.mlp_ratio if self.text_mlp_ratio is None else self.text_mlp_ratio

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (the form stored in file metadata)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VLMConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (keys added later take their defaults, so files
        written before them load unchanged)."""
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
                "mlp_ratio": self.text_mlp,
            },
        }

    @classmethod
    def from_open_clip_cfg(cls, cfg: dict[str, Any], name: str = "custom") -> VLMConfig:
        """Read an open_clip model config JSON (plain ViT + text transformer variants only).

        Options that only change training (``patch_dropout``, ``cast_dtype``, ``init_logit_scale``) are ignored;
        the others must have open_clip's default value (LayerScale, attentional pooling, custom attention
        blocks, timm or Hugging Face towers are not supported). A config without ``quick_gelu`` means GELU, as
        in open_clip: OpenAI's weights need ``quick_gelu: true`` (the ``-quickgelu`` configs).
        """
        vision = dict(cfg.get("vision_cfg") or {})
        text = dict(cfg.get("text_cfg") or {})
        if "embed_dim" not in cfg or not vision or not text:
            raise ValueError("an open_clip config needs 'embed_dim', 'vision_cfg' and 'text_cfg'")
        supported_v = {"image_size", "patch_size", "width", "layers", "head_width", "mlp_ratio"}
        supported_t = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}
        extra = sorted(
            {f"vision_cfg.{k}" for k, v in vision.items() if k not in supported_v and not _default(k, v, "tok")}
            | {f"text_cfg.{k}" for k, v in text.items() if k not in supported_t and not _default(k, v, "argmax")}
            | {
                k
                for k, v in cfg.items()
                if k not in {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg"} and not _default(k, v, None)
            }
        )
        if extra:
            raise ValueError(f"unsupported open_clip config options (plain ViT CLIP only): {extra}")
        if not isinstance(vision.get("layers", 12), int):
            raise ValueError("ResNet vision towers are not supported (vision_cfg.layers must be an int)")
        image_size = vision.get("image_size", 224)
        if isinstance(image_size, (list, tuple)):
            if len(set(image_size)) != 1:
                raise ValueError(f"non-square image_size {image_size} is not supported")
            image_size = image_size[0]
        v_width = int(vision.get("width", 768))
        v_mlp = float(vision.get("mlp_ratio", 4.0))
        t_mlp = float(text.get("mlp_ratio", 4.0))
        return cls(
            name=name,
            embed_dim=int(cfg["embed_dim"]),
            image_size=int(image_size),
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
            text_mlp_ratio=None if t_mlp == v_mlp else t_mlp,
            quick_gelu=bool(cfg.get("quick_gelu", False)),
        )


#: open_clip config options accepted at their default value (they leave a plain ViT CLIP as it is).
_OPEN_CLIP_DEFAULTS: dict[str, Any] = {
    "ls_init_value": None,
    "attentional_pool": False,
    "no_ln_pre": False,
    "pos_embed_type": "learnable",
    "final_ln_after_pool": False,
    "output_tokens": False,
    "act_kwargs": None,
    "norm_kwargs": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
    "timm_model_name": None,
    "hf_model_name": None,
    "hf_tokenizer_name": None,
    "tokenizer_kwargs": None,
    "embed_cls": False,
    "pad_id": 0,
    "no_causal_mask": False,
    "proj_bias": False,
    "proj_type": "linear",
    "custom_text": False,
    "init_logit_bias": None,
}
#: open_clip config options that only matter for training: ignored whatever their value.
_OPEN_CLIP_TRAINING_ONLY = {"patch_dropout", "cast_dtype", "init_logit_scale"}


def _default(key: str, value: Any, pool_type: str | None) -> bool:
    """True for an open_clip option that leaves a plain CLIP as it is (``pool_type``: the tower's CLIP pooling,
    the class token of the vision tower, the end-of-text token of the text tower)."""
    if key in _OPEN_CLIP_TRAINING_ONLY:
        return True
    if key == "pool_type":
        return pool_type is not None and value == pool_type
    if key == "block_type":
        return value in (None, "default")
    return key in _OPEN_CLIP_DEFAULTS and value == _OPEN_CLIP_DEFAULTS[key]


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
        self.register_buffer("image_mean", torch.tensor(self.config.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(self.config.image_std).view(1, 3, 1, 1), persistent=False)
        self.eval()

    @classmethod
    def from_state_dict(
        cls, config: VLMConfig | str, state: dict[str, torch.Tensor], source: str | os.PathLike[str] = "weights"
    ) -> VisionLanguageModel:
        """The model of ``config`` holding ``state`` (open_clip keys), without a random initialisation first.

        The modules are built on the meta device and the tensors assigned (cast to float32 where they are
        floating point): loading a 2.5 B-parameter ViT-bigG costs no time initialising weights it then throws
        away, nor twice its memory. Raises :class:`ArtifactError` naming ``source`` for missing, unexpected or
        mis-shaped tensors.
        """
        config = get_config(config)
        model = build_on_meta(source, lambda: cls(config), len(state))
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        try:
            missing, unexpected = model.clip.load_state_dict(state, strict=False, assign=True)
        except RuntimeError as exc:  # shape mismatches
            raise ArtifactError(f"{source} does not fit the '{config.name}' config: {exc}") from None
        if missing or unexpected:
            raise ArtifactError(
                f"{source} does not fit the '{config.name}' config: "
                f"missing keys {_preview(missing)}, unexpected keys {_preview(unexpected)}"
            )
        # the non-persistent buffers, as __init__ makes them (open_clip's causal mask: -inf above the diagonal)
        model.image_mean = torch.tensor(config.image_mean).view(1, 3, 1, 1)
        model.image_std = torch.tensor(config.image_std).view(1, 3, 1, 1)
        length = config.context_length
        model.clip.attn_mask = torch.empty(length, length).fill_(float("-inf")).triu_(1)
        left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if left:
            raise RuntimeError(f"tensors left unset when building from a state dict: {left}")
        return model.eval()

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
        """Float images ``[B, 3, H, W]`` in 0..1 -> CLIP input at the model's own resolution: shorter side
        resized to ``image_size`` (antialiased, with the config's ``interpolation``: bicubic as CLIP's own
        preprocessing, clamped to 0..1 as PIL's bicubic is; bilinear for the world models), centre-cropped to a
        square, normalised with the config's mean/std (OpenAI CLIP's by default). Images already at
        ``image_size`` x ``image_size`` are only normalised."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        x = images.to(self.device, torch.float32)
        size = self.image_size
        h, w = x.shape[-2:]
        if (h, w) != (size, size):
            scale = size / min(h, w)
            new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
            mode = self.config.interpolation
            x = F.interpolate(x, size=(new_h, new_w), mode=mode, antialias=True, align_corners=False)
            if mode == "bicubic":
                x = x.clamp(0.0, 1.0)
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
        state = {k: v.clone() for k, v in vlm.clip.state_dict().items()}
        copy = VisionLanguageModel.from_state_dict(vlm.config, state, source=f"the VLM '{vlm.name}'")
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


@dataclass
class _Weights:
    """A CLIP state dict brought to open_clip keys, with what its own config files said (if anything)."""

    tensors: dict[str, torch.Tensor]
    cfg: dict[str, Any] | None = None  # open_clip model config
    quick_gelu: bool | None = None  # the activation the config gives (None: no config)
    preprocess: dict[str, Any] = dataclasses.field(default_factory=dict)  # VLMConfig image fields
    origin: str = ""  # where the config came from, for messages


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: not a usable JSON config: {exc}") from None


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    clip_formats.refuse_pickle(path)
    return clip_formats.to_open_clip_layout(read_safetensors(path)[0], path)


def _config_file(weights: _Weights, config: Path) -> _Weights:
    """Fill ``weights`` from a config JSON: open_clip's (``{embed_dim, vision_cfg, text_cfg}`` or the hub's
    ``{model_cfg, preprocess_cfg}``) or transformers' ``CLIPConfig`` (with ``preprocessor_config.json``)."""
    data = _read_json(config)
    if not isinstance(data, dict):
        raise ArtifactError(f"{config}: not a usable open_clip model config (not a JSON object)")
    if "text_config" in data or "vision_config" in data:
        weights.cfg, weights.quick_gelu = clip_formats.open_clip_cfg_from_transformers(data, config)
        processor = config.parent / "preprocessor_config.json"
        if processor.is_file() and isinstance(raw := _read_json(processor), dict):
            weights.preprocess = clip_formats.preprocess_from_transformers(raw)
    else:
        cfg = data.get("model_cfg", data)
        weights.preprocess = clip_formats.preprocess_from_open_clip(data.get("preprocess_cfg"), config)
        if not isinstance(cfg, dict):
            raise ArtifactError(f"{config}: not a usable open_clip model config (model_cfg is not an object)")
        try:
            VLMConfig.from_open_clip_cfg(cfg)  # validate here, where the file can be named
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"{config}: not a usable open_clip model config: {exc}") from None
        weights.cfg, weights.quick_gelu = cfg, bool(cfg.get("quick_gelu", False))
    weights.origin = str(config)
    return weights


def _read_folder(folder: Path) -> _Weights:
    """An open_clip hub folder (``open_clip_model.safetensors`` + ``open_clip_config.json``) or a transformers
    CLIP folder (``config.json`` + ``model.safetensors``, or shards listed in ``model.safetensors.index.json``)."""
    hub_weights, hub_config = folder / "open_clip_model.safetensors", folder / "open_clip_config.json"
    tf_weights, tf_index, tf_config = (
        folder / "model.safetensors",
        folder / "model.safetensors.index.json",
        folder / "config.json",
    )
    if hub_weights.is_file() and hub_config.is_file():
        return _config_file(_Weights(_read_weights(hub_weights)), hub_config)
    if tf_config.is_file() and (tf_weights.is_file() or tf_index.is_file()):
        if tf_weights.is_file():
            tensors = read_safetensors(tf_weights)[0]
        else:
            index = _read_json(tf_index)
            shards = sorted(set((index.get("weight_map") or {}).values())) if isinstance(index, dict) else []
            if not shards:
                raise ArtifactError(f"{tf_index} lists no weight files (weight_map)")
            tensors = {}
            for shard in shards:
                tensors.update(read_safetensors(folder / Path(shard).name)[0])
        return _config_file(_Weights(clip_formats.to_open_clip_layout(tensors, folder)), tf_config)
    for pickle in ("open_clip_pytorch_model.bin", "pytorch_model.bin"):
        if (folder / pickle).is_file():
            clip_formats.refuse_pickle(folder / pickle)
    raise ArtifactError(
        f"{folder} is neither an open_clip hub folder (open_clip_model.safetensors + open_clip_config.json) nor a "
        "transformers CLIP folder (config.json + model.safetensors); pass a .safetensors file to load one file"
    )


def _read_file(path: Path, tensors: dict[str, torch.Tensor]) -> _Weights:
    """A safetensors file and the config beside it, if any: ``<stem>.json`` (open_clip or transformers), the hub's
    ``open_clip_config.json``, or a transformers CLIP ``config.json``."""
    weights = _Weights(clip_formats.to_open_clip_layout(tensors, path))
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        return _config_file(weights, sidecar)
    if (path.parent / "open_clip_config.json").is_file():
        return _config_file(weights, path.parent / "open_clip_config.json")
    tf_config = path.parent / "config.json"
    if tf_config.is_file():
        data = _read_json(tf_config)
        if isinstance(data, dict) and ("text_config" in data or data.get("model_type") == "clip"):
            return _config_file(weights, tf_config)
    return weights


def _is_device(value: object) -> bool:
    """True for a device given where ``vision`` now stands (``load_vlm(path, "cuda")``, the old signature)."""
    if isinstance(value, torch.device):
        return True
    if not isinstance(value, str) or Path(value).exists():
        return False
    try:
        torch.device(value)
    except (RuntimeError, ValueError):
        return False
    return True


def _add_vision(weights: _Weights, source: Path, vision_tensors: dict[str, torch.Tensor], vision: Path) -> None:
    """Join the text tower of ``source`` and the vision tower of ``vision`` (ComfyUI's split files; both in open_clip
    keys by now)."""
    text, own_vision, other = clip_formats.split_towers(weights.tensors)
    vision_text, vision_tower, _ = clip_formats.split_towers(vision_tensors)
    if own_vision and not text and vision_text and not vision_tower:
        raise ArtifactError(
            f"the files are swapped: {source} is a vision tower and {vision} a text encoder; the text encoder goes "
            "first: load_vlm(text_file, vision=vision_file)"
        )
    if own_vision:
        raise ArtifactError(
            f"{source} has its own vision tower; pass vision= only with a text-encoder file (clip_l / clip_g)"
        )
    if not vision_tower:
        raise ArtifactError(
            f"{vision} has no vision tower (vision_model.* or visual.* keys): vision= takes a CLIP-vision file "
            "(ComfyUI's models/clip_vision), the text encoder goes first: load_vlm(text_file, vision=vision_file)"
        )
    if not text:
        raise ArtifactError(
            f"{source} has no text tower (text_model.* or open_clip text keys): the first argument is the text "
            "encoder (ComfyUI's models/text_encoders, e.g. clip_l.safetensors)"
        )
    clip_formats.check_pair(text, vision_tower, source, vision)
    weights.tensors = {**text, **vision_tower, **other}


def _load_promptweave(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> VisionLanguageModel:
    check_method(metadata, METHOD, path)
    try:
        config = VLMConfig.from_dict(meta_field(metadata, "config"))
    except MALFORMED_METADATA_ERRORS as exc:
        raise ArtifactError(f"{path}: bad promptweave.config metadata: {exc}") from None
    return VisionLanguageModel.from_state_dict(config, tensors, path)


def load_vlm(
    source: str | os.PathLike[str],
    vision: str | os.PathLike[str] | None = None,
    *,
    model_name: str | None = None,
    quick_gelu: bool | None = None,
    device: str | torch.device = "cpu",
) -> VisionLanguageModel:
    """Load any CLIP a user has as a :class:`VisionLanguageModel` (open_clip's CLIP underneath, eval mode).

    ``source`` is one of:

    * a file written by :func:`save_vlm` (PromptWeave metadata: config and name as saved; the world models);
    * an open_clip hub folder (``open_clip_model.safetensors`` + ``open_clip_config.json``);
    * an open_clip safetensors file with its config beside it (``<stem>.json``, open_clip's model config or the
      hub's ``{model_cfg, preprocess_cfg}``, or ``open_clip_config.json``), or with ``model_name=`` one of
      open_clip's built-in configs (``ViT-B-32``, ``ViT-B-16``, ``ViT-L-14``, ``ViT-H-14``, ``ViT-bigG-14`` and
      their ``-quickgelu`` forms; read offline);
    * a transformers CLIP folder (``config.json`` + ``model.safetensors``, ``CLIPModel`` keys), or such a file
      with its ``config.json`` beside it;
    * a CLIP text encoder in ComfyUI's ``clip_l`` / ``clip_g`` layout (``text_model.*`` +
      ``text_projection.weight``) with ``vision=`` a CLIP-vision file of the same model (``vision_model.*`` +
      ``visual_projection.weight``, or open_clip's ``visual.*``).

    transformers keys are converted to open_clip's (:mod:`.clip_formats`). Without a config the shape comes from
    the tensors, the heads from the CLIP families, and the activation from the config, else ``quick_gelu``, else
    the family (OpenAI's CLIP-L: quick_gelu; OpenCLIP's ViT-H and ViT-bigG: GELU; ViT-B: the caller must say).
    A config without ``quick_gelu`` means GELU, as in open_clip: OpenAI's weights need the ``-quickgelu`` name,
    ``quick_gelu: true`` in the config, or ``quick_gelu=True`` here (which overrides every config). A file without
    ``logit_scale`` (split files) gets CLIP's trained 100. Images are preprocessed at the model's resolution with
    bicubic resizing and the config's mean/std (OpenAI's unless a preprocess config says otherwise).

    The model's ``name`` is ``clip:<family>:<weights fingerprint>`` (:func:`.clip_formats.clip_name`): the same
    for the same weights and activation in every layout, fp16 or fp32, so artifacts trained on it are accepted
    whichever way it is loaded. PromptWeave files keep their saved name. ``load_vlm(path, device)`` (the old
    positional device) still works. Raises :class:`ArtifactError` (a ``ValueError``) naming the file for a
    missing, corrupt, pickled or non-safetensors file, a missing config, a pair that is not one CLIP, or
    missing/unexpected/mis-shaped weights.
    """
    if _is_device(vision):
        device, vision = vision, None  # type: ignore[assignment]
    path = Path(source)
    if path.is_dir():
        weights = _read_folder(path)
    else:
        clip_formats.refuse_pickle(path)
        tensors, metadata = read_safetensors(path)
        if meta_field(metadata, "config") is not None or "promptweave.method" in metadata:
            if vision is not None or model_name is not None or quick_gelu is not None:
                raise ArtifactError(
                    f"{path} is a PromptWeave VLM file, it carries its config: load it without vision=, "
                    "model_name= or quick_gelu="
                )
            return _load_promptweave(path, tensors, metadata).to(device).eval()
        if model_name is None:
            weights = _read_file(path, tensors)
        else:  # the name gives the config: files beside the weights are not read
            weights = _Weights(clip_formats.to_open_clip_layout(tensors, path))
    vision_path = None
    if vision is not None:
        vision_path = Path(vision)
        if vision_path.is_dir():
            raise ArtifactError(f"vision= must be a CLIP-vision .safetensors file, not the folder {vision_path}")
        _add_vision(weights, path, _read_weights(vision_path), vision_path)
    return _build(weights, path, vision_path, model_name, quick_gelu).to(device).eval()


def vlm_from_state_dicts(
    state: dict[str, torch.Tensor],
    vision: dict[str, torch.Tensor] | None = None,
    *,
    model_name: str | None = None,
    quick_gelu: bool | None = None,
    device: str | torch.device = "cpu",
    source: str = "the text state dict",
    vision_source: str = "the vision state dict",
) -> VisionLanguageModel:
    """:func:`load_vlm` for state dicts already in memory (e.g. what ComfyUI's CLIP / CLIP_VISION loaders hold):
    ``state`` a full CLIP or a text tower, ``vision`` a vision tower, in open_clip or transformers keys (strip
    runtime prefixes first, such as ComfyUI's ``clip_l.transformer.`` and ``clip_l.`` of ``CLIP.get_sd()``).
    Shape, activation, ``logit_scale`` and the fingerprinted name as :func:`load_vlm`; ``source`` /
    ``vision_source`` name the inputs in error messages. The tensors are copied: the model never shares storage
    with the caller's (ComfyUI patches its weights in place)."""
    path, vision_path = Path(source), Path(vision_source)

    def own(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # the caller keeps (and may patch) its own
        return {k: v.detach().clone() for k, v in tensors.items()}

    weights = _Weights(clip_formats.to_open_clip_layout(own(state), path))
    if vision is not None:
        _add_vision(weights, path, clip_formats.to_open_clip_layout(own(vision), vision_path), vision_path)
    return _build(weights, path, vision_path if vision is not None else None, model_name, quick_gelu).to(device).eval()


def _build(
    weights: _Weights, path: Path, vision_path: Path | None, model_name: str | None, quick_gelu: bool | None
) -> VisionLanguageModel:
    """The model of open_clip-keyed ``weights``: config from ``model_name``, the weights' own config or the tensor
    shapes; activation from ``quick_gelu``, the config or the family; the fingerprinted name."""
    if model_name is not None:
        weights.cfg, weights.origin = _registry_cfg(model_name), f"model_name {model_name!r}"
        weights.quick_gelu = bool(weights.cfg.get("quick_gelu", False))
    text, vision_tower, _ = clip_formats.split_towers(weights.tensors)
    if not vision_tower and text:
        raise ArtifactError(
            f"{path} has a text tower only: pass its CLIP-vision file too, load_vlm(text_file, vision=vision_file)"
        )
    if vision_tower and not text:
        raise ArtifactError(
            f"{path} has a vision tower only (a CLIP-vision file): pass the text encoder of the same CLIP first, "
            "load_vlm(text_file, vision=vision_file)"
        )
    clip_formats.check_pair(text, vision_tower, path, vision_path or path)
    if weights.cfg is None:
        try:
            weights.cfg = clip_formats.infer_open_clip_cfg(weights.tensors, path)
        except ArtifactError as exc:
            raise ArtifactError(
                f"{path} has no VLM config: expected promptweave.config metadata (written by save_vlm), an "
                f"open_clip model config JSON next to it ({path.with_suffix('.json').name}), a transformers "
                f"config.json, or model_name=; the shape could not be read from the tensors: {exc}"
            ) from None
        weights.quick_gelu, weights.origin = clip_formats.quick_gelu_from_shape(weights.cfg), "the tensor shapes"
    activation = quick_gelu if quick_gelu is not None else weights.quick_gelu
    if activation is None:
        raise ArtifactError(
            f"{path}: the activation of this CLIP cannot be told from its shapes (ViT-B and custom towers were "
            "trained both ways): pass quick_gelu=True for OpenAI-trained weights, quick_gelu=False for "
            "OpenCLIP-trained ones (or give its config)"
        )
    weights.tensors.setdefault("logit_scale", torch.tensor(clip_formats.CLIP_LOGIT_SCALE))
    cfg = {**weights.cfg, "quick_gelu": activation}
    try:
        config = VLMConfig.from_open_clip_cfg(cfg)
        config = dataclasses.replace(config, **{"interpolation": "bicubic", **weights.preprocess})
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: the config from {weights.origin} is not usable: {exc}") from None
    name = clip_formats.clip_name(weights.tensors, config.to_open_clip_cfg(), activation)
    config = dataclasses.replace(config, name=name)
    return VisionLanguageModel.from_state_dict(config, weights.tensors, path)


def _registry_cfg(model_name: str) -> dict[str, Any]:
    """open_clip's built-in (offline) model config of ``model_name`` (``ViT-B/32`` is read as ``ViT-B-32``)."""
    cfg = open_clip.get_model_config(model_name.replace("/", "-"))
    if cfg is None:
        raise ArtifactError(
            f"model_name {model_name!r} is not one of open_clip's built-in configs (e.g. ViT-B-32, ViT-B-16, ViT-L-14, "
            "ViT-H-14, ViT-bigG-14, and -quickgelu for OpenAI's weights; open_clip.list_models() lists them all)"
        )
    return dict(cfg)


def _preview(keys: Sequence[str], limit: int = 5) -> str:
    keys = list(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{keys[:limit]}{more}"
