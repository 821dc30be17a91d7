"""Deep prompts for both towers of a :class:`~.vlm.VisionLanguageModel` (VPT-deep / MaPLe style).

A shared primitive: DCAR (:mod:`.dual_prompt`) builds on it, and Diff-Prompt and RPP are meant to.

Layout and conventions (Jia et al. 2022 "VPT", Khattak et al. 2023 "MaPLe"):

* **Text tower.** ``n_text`` context tokens go right after the start token, CoOp-style:
  ``[SOS, P_1 .. P_n, w_1 .. w_k, EOT]``. The layer-0 vectors are a :class:`~.learned_prompt.LearnedPrompt`
  (encoder key ``"text"``), so the input context is the same primitive every other method learns; they get
  the positional embedding like any token (positions ``1..n``); the caption's tokens follow at positions
  ``1+n..`` (CoOp), or keep their unprompted positions ``1..`` with ``keep_positions=True`` (useful for a
  backbone that never saw captions start later, like WorldCLIP). The text is tokenised with
  ``context_length - n_text`` so it always fits; features are read at the (shifted) end-of-text position.
* **Image tower.** ``n_visual`` tokens go right after the class token, after the positional embedding and
  before ``ln_pre`` (as :meth:`~.vlm.VisionLanguageModel.encode_image_with_prompts`); the output is the
  class token, so prompts act only through attention.
* **Depth** ``d`` = number of transformer layers whose prompt tokens are *replaced* by layer-specific learned
  vectors: layer 0's input is the (shallow) prompt, and for ``1 <= i < d`` the prompt positions of layer
  ``i``'s input are overwritten (VPT-deep). From layer ``d`` on the prompt tokens simply flow through.
  ``d = 1`` is shallow prompting; ``d = 0`` (or ``n = 0``) leaves that tower unprompted.
* **Coupling** (MaPLe): with ``coupling=True`` the visual prompt of layer ``i`` is ``Linear_i(text prompt of
  layer i)``; there are then no free visual vectors (needs ``n_visual == n_text`` and
  ``visual_depth <= text_depth``).

Both forward functions run the open_clip blocks one by one (batch-first, with the text tower's causal
additive mask trimmed to the sequence length; towers built with ``batch_first=False`` are transposed around
each block). Text sequences are cut after the last end-of-text token of the batch: attention is causal, so
later (padding) positions never influence the pooled feature and the result is unchanged.

**Extension point.** Both take ``layer_fn(block, x, attn_mask, ctx)``; the default is
``block(x, attn_mask=attn_mask)``. ``ctx`` (:class:`LayerContext`) names the tower, the layer index, the
positions of the prompt tokens and the prompts object, so a method can, for example, give attention
unshared query/key/value prompts at prompted layers (RPP) without touching this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .artifacts import BackboneMismatchError, ConfigError
from .learned_prompt import LearnedPrompt, LearnedPromptConfig
from .vlm import VisionLanguageModel, clip_tokenizer

TEXT_KEY = "text"


@dataclass
class DeepPromptConfig:
    """Shape of deep prompts for both towers (see the module docstring for the exact semantics)."""

    n_text: int = 4
    n_visual: int = 4
    text_depth: int = 1
    visual_depth: int = 1
    coupling: bool = False
    init_std: float = 0.02
    keep_positions: bool = False

    def __post_init__(self) -> None:
        for name in ("n_text", "n_visual", "text_depth", "visual_depth"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"{name} must be >= 0, got {getattr(self, name)}")
        if self.coupling and self.visual_active:
            if not self.text_active:
                raise ConfigError("n_text", "coupling projects text prompts to the image tower: it needs text prompts")
            if self.n_visual != self.n_text:
                raise ConfigError(
                    "n_visual", f"coupling needs n_visual == n_text (got {self.n_visual} and {self.n_text})"
                )
            if self.visual_depth > self.text_depth:
                raise ConfigError(
                    "visual_depth",
                    f"coupling needs visual_depth <= text_depth (got {self.visual_depth} > {self.text_depth})",
                )

    @property
    def text_active(self) -> bool:
        return self.n_text > 0 and self.text_depth > 0

    @property
    def visual_active(self) -> bool:
        return self.n_visual > 0 and self.visual_depth > 0


@dataclass(frozen=True)
class LayerContext:
    """What a ``layer_fn`` is told about the layer it runs (``prompt_slice`` indexes the sequence axis)."""

    tower: str  # "text" or "visual"
    layer: int
    prompt_slice: slice
    prompts: DeepPrompts | None


LayerFn = Callable[[nn.Module, torch.Tensor, "torch.Tensor | None", LayerContext], torch.Tensor]


def default_layer_fn(block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None, ctx: LayerContext):
    """Run one open_clip residual attention block unchanged."""
    del ctx
    return block(x, attn_mask=attn_mask)


class DeepPrompts(nn.Module):
    """The learnable vectors: ``text_ctx`` (layer 0, a LearnedPrompt), ``text_deep[i-1]`` for text layers
    ``1..text_depth-1``, and either ``visual[i]`` (free) or ``couplers[i]`` (MaPLe) for visual layers."""

    def __init__(
        self,
        config: DeepPromptConfig,
        *,
        text_width: int,
        vision_width: int,
        text_layers: int,
        vision_layers: int,
        backbone: str = "any",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if config.text_depth > text_layers or config.visual_depth > vision_layers:
            raise ValueError(
                f"prompt depth (text {config.text_depth}, visual {config.visual_depth}) exceeds the model's "
                f"layers (text {text_layers}, visual {vision_layers})"
            )
        self.config = config
        self.text_width, self.vision_width = text_width, vision_width
        self.text_layers, self.vision_layers = text_layers, vision_layers
        std = config.init_std
        self.text_ctx: LearnedPrompt | None = None
        self.text_deep = nn.ParameterList()
        if config.text_active:
            self.text_ctx = LearnedPrompt(
                LearnedPromptConfig(n_ctx=config.n_text, widths={TEXT_KEY: text_width}, backbone=backbone,
                                    init_std=std),
                generator=generator,
            )
            for _ in range(config.text_depth - 1):
                self.text_deep.append(nn.Parameter(torch.randn(config.n_text, text_width, generator=generator) * std))
        self.visual = nn.ParameterList()
        self.couplers = nn.ModuleList()
        if config.visual_active:
            for _ in range(config.visual_depth):
                if config.coupling:
                    layer = nn.Linear(text_width, vision_width)
                    with torch.no_grad():
                        layer.weight.normal_(0.0, 1.0 / text_width**0.5, generator=generator)
                        layer.bias.zero_()
                    self.couplers.append(layer)
                else:
                    self.visual.append(
                        nn.Parameter(torch.randn(config.n_visual, vision_width, generator=generator) * std)
                    )

    @classmethod
    def for_vlm(
        cls, vlm: VisionLanguageModel, config: DeepPromptConfig, generator: torch.Generator | None = None
    ) -> DeepPrompts:
        """Prompts sized for ``vlm`` (widths and layer counts read from it)."""
        return cls(
            config,
            text_width=vlm.token_width,
            vision_width=vlm.vision_width,
            text_layers=len(vlm.text_blocks),
            vision_layers=len(vlm.visual.transformer.resblocks),
            backbone=vlm.name,
            generator=generator,
        )

    @property
    def n_text(self) -> int:
        return self.config.n_text if self.config.text_active else 0

    @property
    def n_visual(self) -> int:
        return self.config.n_visual if self.config.visual_active else 0

    def check_vlm(self, vlm: VisionLanguageModel) -> None:
        """Refuse a VLM of other widths or fewer layers than the prompts were made for."""
        mine = (self.text_width, self.vision_width)
        theirs = (vlm.token_width, vlm.vision_width)
        if mine != theirs:
            raise BackboneMismatchError(
                f"deep prompts have (text, vision) widths {mine} but the VLM '{vlm.name}' has {theirs}: "
                "use prompts trained for this model"
            )
        if len(vlm.text_blocks) < self.config.text_depth or len(vlm.visual.transformer.resblocks) < (
            self.config.visual_depth
        ):
            raise BackboneMismatchError(f"the VLM '{vlm.name}' has fewer layers than the prompts' depth")

    @torch.no_grad()
    def init_from_vlm(
        self,
        vlm: VisionLanguageModel,
        texts: Sequence[str] | None = None,
        images: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        """Start close to the unprompted model (prompts are otherwise out-of-distribution tokens).

        Layer-0 visual prompts become copies of the class token's input (``class_embedding`` + its positional
        embedding) plus ``init_std`` noise, so they at first act like extra class tokens. With sample ``texts``
        / ``images``, each deep prompt of layer ``i`` starts as the mean hidden state that the prompt tokens
        have at that point without replacement (measured layer by layer through the ``layer_fn`` hook), so
        replacing them changes little at first. Coupled visual prompts get these targets as the coupling
        layer's bias and a small weight. The text context (layer 0) is left as it is.
        """
        std = self.config.init_std
        cfg = self.config

        def noise(shape) -> torch.Tensor:
            return torch.randn(shape, generator=generator) * std

        v = vlm.visual
        if cfg.visual_active:
            cls = (v.class_embedding + v.positional_embedding[0]).detach().float().cpu()
            self._set_visual(0, cls.expand(cfg.n_visual, -1) + noise((cfg.n_visual, self.vision_width)))
        for tower, depth, data in (("text", cfg.text_depth if cfg.text_active else 0, texts),
                                   ("visual", cfg.visual_depth if cfg.visual_active else 0, images)):
            if data is None or depth < 2:
                continue

            # One forward pass: the output of block ``i`` sets the prompt of layer ``i + 1`` before that layer
            # reads it (the encoders fetch each layer's prompt as they reach it), so every layer is measured with
            # the layers before it already initialised.
            def capture(block, x, mask, ctx, tower=tower, depth=depth):
                out = default_layer_fn(block, x, mask, ctx)
                if ctx.layer < depth - 1:
                    target = out[:, ctx.prompt_slice].mean(dim=0)
                    target = target + noise(target.shape)
                    if tower == "text":
                        self.text_deep[ctx.layer].copy_(target)
                    else:
                        self._set_visual(ctx.layer + 1, target)
                return out

            if tower == "text":
                encode_text_prompted(vlm, list(data), self, layer_fn=capture)
            else:
                encode_image_prompted(vlm, data, self, layer_fn=capture)

    def _set_visual(self, layer: int, target: torch.Tensor) -> None:
        if self.config.coupling:
            coupler = self.couplers[layer]
            coupler.weight.mul_(0.01)
            coupler.bias.copy_(target.mean(dim=0))
        else:
            self.visual[layer].copy_(target)

    def text_prompt(self, layer: int) -> torch.Tensor | None:
        """``[n_text, text_width]`` vectors that replace the prompt tokens at the input of text ``layer``."""
        if self.text_ctx is None or layer >= self.config.text_depth:
            return None
        return self.text_ctx(TEXT_KEY) if layer == 0 else self.text_deep[layer - 1]

    def visual_prompt(self, layer: int) -> torch.Tensor | None:
        """``[n_visual, vision_width]`` vectors for the input of visual ``layer`` (projected when coupled)."""
        if not self.config.visual_active or layer >= self.config.visual_depth:
            return None
        if self.config.coupling:
            return self.couplers[layer](self.text_prompt(layer))
        return self.visual[layer]


def _run_block(block, x, mask, ctx, layer_fn: LayerFn, batch_first: bool) -> torch.Tensor:
    if batch_first:
        return layer_fn(block, x, mask, ctx)
    return layer_fn(block, x.transpose(0, 1), mask, ctx).transpose(0, 1)


def _replace(x: torch.Tensor, start: int, vectors: torch.Tensor) -> torch.Tensor:
    """``x`` with positions ``start:start+n`` replaced by ``vectors`` ``[n, width]`` for every row."""
    n = vectors.shape[0]
    rows = vectors.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
    return torch.cat([x[:, :start], rows, x[:, start + n :]], dim=1)


def _insert(x: torch.Tensor, at: int, vectors: torch.Tensor) -> torch.Tensor:
    rows = vectors.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
    return torch.cat([x[:, :at], rows, x[:, at:]], dim=1)


@dataclass
class TextEncoding:
    """Result of :func:`encode_text_prompted` with ``return_tokens=True``.

    ``token_features`` ``[B, L, embed_dim]`` are every position's final hidden state after ``ln_final`` and
    the text projection (not normalised); ``content_mask`` ``[B, L]`` marks the caption's word tokens
    (neither start, prompt, end-of-text nor padding); ``eot_index`` ``[B]`` is where ``features`` were read.
    """

    features: torch.Tensor
    token_features: torch.Tensor
    content_mask: torch.Tensor
    eot_index: torch.Tensor


def _tokens_with_room(vlm: VisionLanguageModel, texts, n: int) -> torch.Tensor:
    if isinstance(texts, torch.Tensor):
        tokens = texts.to(vlm.device)
        if n:
            eot = tokens.argmax(-1)
            if int(eot.max()) >= tokens.shape[1] - n:
                raise ValueError(f"token ids leave no room for {n} prompt tokens: tokenise shorter texts")
            tokens = tokens[:, : tokens.shape[1] - n]
        return tokens
    if isinstance(texts, str):
        texts = [texts]
    return clip_tokenizer(vlm.context_length - n)(list(texts)).to(vlm.device)


def encode_text_prompted(
    vlm: VisionLanguageModel,
    texts: str | Sequence[str] | torch.Tensor,
    prompts: DeepPrompts | None = None,
    *,
    normalize: bool = True,
    return_tokens: bool = False,
    layer_fn: LayerFn | None = None,
) -> torch.Tensor | TextEncoding:
    """Text features with deep text prompts (``prompts=None``: exactly :meth:`VisionLanguageModel.encode_text`)."""
    layer_fn = layer_fn or default_layer_fn
    n = prompts.n_text if prompts is not None else 0
    tokens = _tokens_with_room(vlm, texts, n)
    eot = tokens.argmax(dim=-1)
    tokens = tokens[:, : int(eot.max()) + 1]  # causal attention: padding never reaches the EOT feature
    x = vlm.embed_tokens(tokens)
    if n:
        x = _insert(x, 1, prompts.text_prompt(0))
        eot = eot + n
    length = x.shape[1]
    positions = torch.arange(length, device=x.device)
    if n and prompts.config.keep_positions:  # the caption keeps the positions it has without prompts
        positions = torch.cat([positions[: 1 + n], positions[1 : length - n]])
    x = x + vlm.positional_embedding[positions].to(x.dtype)
    mask = vlm.text_attn_mask
    mask = None if mask is None else mask[:length, :length]
    batch_first = getattr(vlm.text_transformer, "batch_first", True)
    prompt_slice = slice(1, 1 + n)
    for i, block in enumerate(vlm.text_blocks):
        if n and i > 0:
            deep = prompts.text_prompt(i)
            if deep is not None:
                x = _replace(x, 1, deep)
        x = _run_block(block, x, mask, LayerContext(TEXT_KEY, i, prompt_slice, prompts), layer_fn, batch_first)
    x = vlm.ln_final(x)
    rows = torch.arange(x.shape[0], device=x.device)
    features = x[rows, eot] @ vlm.text_projection
    if normalize:
        features = F.normalize(features, dim=-1)
    if not return_tokens:
        return features
    positions = torch.arange(length, device=x.device).unsqueeze(0)
    content = (positions >= 1 + n) & (positions < eot.unsqueeze(1))
    return TextEncoding(features, x @ vlm.text_projection, content, eot)


def encode_image_prompted(
    vlm: VisionLanguageModel,
    images: torch.Tensor,
    prompts: DeepPrompts | None = None,
    *,
    normalize: bool = True,
    layer_fn: LayerFn | None = None,
) -> torch.Tensor:
    """Image features with deep visual prompts (``prompts=None``: exactly :meth:`VisionLanguageModel.encode_image`).

    ``images`` are float ``[B, 3, H, W]`` in 0..1 (preprocessed by the VLM).
    """
    layer_fn = layer_fn or default_layer_fn
    v = vlm.visual
    n = prompts.n_visual if prompts is not None else 0
    x = vlm.image_tokens(images)
    if n:
        x = _insert(x, 1, prompts.visual_prompt(0))
    x = v.ln_pre(x)
    batch_first = getattr(v.transformer, "batch_first", True)
    prompt_slice = slice(1, 1 + n)
    for i, block in enumerate(v.transformer.resblocks):
        if n and i > 0:
            deep = prompts.visual_prompt(i)
            if deep is not None:
                x = _replace(x, 1, deep)
        x = _run_block(block, x, None, LayerContext("visual", i, prompt_slice, prompts), layer_fn, batch_first)
    pooled = v.ln_post(x[:, 0])
    features = pooled @ v.proj
    return F.normalize(features, dim=-1) if normalize else features


__all__ = [
    "DeepPromptConfig",
    "DeepPrompts",
    "LayerContext",
    "LayerFn",
    "TextEncoding",
    "default_layer_fn",
    "encode_image_prompted",
    "encode_text_prompted",
]
