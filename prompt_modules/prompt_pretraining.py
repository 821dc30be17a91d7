"""RPP: prompt pretraining with unshared query/key/value prompts and soft labels (Chen et al. 2024,
"Revisiting Prompt Pretraining of Vision-Language Models", arXiv 2409.06166), on the POMP protocol.

Deep prompts for both towers of a frozen :class:`~.vlm.VisionLanguageModel` are pretrained as a zero-shot
classifier over a large class set, saved as a *pretrained prompt bundle*, and then used as the starting point
of other capabilities' prompts (by one config switch: DCAR's dual prompt with ``DualPromptConfig.init_from``,
Diff-Prompt's global prompts with ``PromptConfig.init_from``; any deep-prompt module through
:func:`copy_prompt_tensors`). The paper publishes no code; our reading:

**Prompt structure (RPP sec. 3.2).** Classic deep prompting (VPT-deep / MaPLe, :mod:`.deep_prompts`) puts a
learnable token ``p`` into the sequence of each prompted layer; the frozen attention projects it,
``q_p = W_q LN(p)``, ``k_p = W_k LN(p)``, ``v_p = W_v LN(p)``, so the three share one vector (*shared*
mode, ``qkv_mode="shared"``). RPP instead learns *unshared, individual* query, key and value prompts
``Q_p, K_p, V_p`` (each ``[n, width]``) at every prompted attention layer (``qkv_mode="unshared"``): in
attention the prompt positions' projected q/k/v are replaced by them, so the other tokens attend to learned
keys and values directly. The rest of the block is unchanged: out-projection, residual (the prompt
positions keep their shared token as residual stream), MLP. This is done through the ``layer_fn`` hook of
:mod:`.deep_prompts`, for the text and the image tower, at the first ``depth`` layers (those whose prompt
tokens are replaced). ``Q_p, K_p, V_p`` start as the projections of the shared tokens, so an untrained
unshared prompt gives exactly the shared prompt's features; training then moves them apart (3x the
parameters per prompted layer). ``qkv_lr_scale`` multiplies their learning rate alone (the paper gives
none); on the val split a larger step closes unshared prompts' seen-class fit gap to shared ones but did not
improve transfer (BENCHMARKS.md, pretraining), so the default is 1.

``qkv_form`` says how the unshared prompts are stored. ``"absolute"``: ``Q_p, K_p, V_p`` are the parameters.
``"offset"``: ``[Q_p; K_p; V_p] = [W_q; W_k; W_v] LN(p) + b + [dQ; dK; dV]`` with the shared token ``p`` and
the offsets ``dQ, dK, dV`` (starting at zero) both trained, the reparametrisation prefix tuning uses for
stability (Li & Liang 2021, sec. 4.3). Both represent the same prompts (every ``Q_p, K_p, V_p`` is reachable);
they differ in how a step moves them: in the offset form a step on ``p`` moves all three together, as in
shared mode, and the offsets add the individual part. The default is ``"offset"``: on the val split the
absolute form transferred worse than shared prompts, the offset form as well as them (BENCHMARKS.md,
pretraining); bundles written before ``qkv_form`` existed hold absolute prompts and are read as such.

**Supervision (RPP sec. 3.3).** Hard labels plus soft labels: the zero-shot class probabilities of a frozen
teacher (by default the same VLM without prompts, with the hand-written template ``teacher_template``), as
knowledge distillation (Hinton et al. 2015; the paper gives no formula)::

    L = CE(z_S, y) + lambda * tau^2 * KL(softmax(z_T / tau) || softmax(z_S / tau))

``z_S``/``z_T`` are the student's (prompted) and the teacher's logits ``scale * <f_img, f_class>`` over the
classes of the step, ``lambda = soft_weight``, ``tau = temperature``; ``soft_weight=0`` is hard labels only.
The default weight 0.1 is the best of 1, 0.25 and 0.1 on the val split (weight 1 cost held-out accuracy).

**Class-subset sampling (POMP, Ren et al. 2023, sec. 3.2 "local contrast").** Each step the softmax runs over
``classes_per_step`` classes: those of the batch plus classes drawn at random, so the text tower encodes a
fixed number of class prompts whatever the size of the label space (``0``: all classes).

**Label space.** On the procedural world a class is a (colour, fine category) pair, named ``"red five-point
star"`` (540 pairs, 493 outside the compositional split's held-out pairs, :func:`world_classes`); the class
prompt is the learned context followed by ``class_template`` (``"{}."``), i.e. CoOp's layout, and the text
context starts from the tokens of ``init_text`` ("a picture of a"), so that an untrained prompt reads like the
teacher's template. Training images are single objects of a class rendered with a random size, texture,
position and background (``shots`` fixed renders per class, as POMP's 16-shot ImageNet-21K); a folder with one
sub-folder per class works too (:class:`FolderClassSource`).

**Bundle.** :func:`save_pretrained_prompts` writes the RPP prompts (exact, reloadable) plus, for every
prompted layer of both towers, the *shared-token equivalent* in :class:`~.deep_prompts.DeepPrompts`' storage
convention (layer 0 text: context token embeddings; layer 0 image: tokens before ``ln_pre``; deeper layers:
hidden states). For unshared prompts it is the token whose projections best match the learned ``Q_p, K_p,
V_p``: least squares ``min_h ||[W_q; W_k; W_v] h + b - [Q_p; K_p; V_p]||`` for the LayerNorm output ``h``,
then LayerNorm inverted with the shared token's own mean and scale (LayerNorm forgets them). The relative
residual of that fit is stored (``conversion_error``): the part of RPP's extra freedom a shared-token
consumer cannot represent. Consumers copy these tensors (:func:`init_deep_prompts_from_bundle`,
:func:`init_dual_prompt_from_bundle`); shapes need not match (the overlapping tokens and layers are copied).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .core.artifacts import (
    ArtifactError,
    BackboneMismatchError,
    base_metadata,
    check_method,
    config_from_dict,
    meta_field,
    read_safetensors,
    save_safetensors_atomic,
)
from .core.deep_prompts import (
    TEXT_KEY,
    DeepPromptConfig,
    DeepPrompts,
    LayerContext,
    default_layer_fn,
    encode_image_prompted,
    encode_text_prompted,
)
from .core.training import run_resumable_loop
from .core.vlm import VisionLanguageModel

METHOD = "rpp"
QKV_MODES = ("unshared", "shared")
QKV_FORMS = ("absolute", "offset")
TOWERS = ("text", "visual")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class RPPConfig:
    """RPP hyper-parameters (see the module docstring; defaults sized for the 4-layer WorldCLIP)."""

    # prompt structure
    n_text: int = 4
    n_visual: int = 4
    text_depth: int = 2
    visual_depth: int = 2
    qkv_mode: str = "unshared"
    qkv_form: str = "offset"
    qkv_lr_scale: float = 1.0
    init_text: str = "a picture of a"
    init_std: float = 0.02
    keep_positions: bool = False
    class_template: str = "{}."
    # supervision
    soft_weight: float = 0.1
    temperature: float = 1.0
    teacher_template: str = "a picture of a {}."
    # POMP class sampling
    classes_per_step: int = 64

    def __post_init__(self) -> None:
        self.deep_config()  # validates the prompt shape
        if self.qkv_mode not in QKV_MODES:
            raise ValueError(f"qkv_mode must be one of {QKV_MODES}, got {self.qkv_mode!r}")
        if self.qkv_form not in QKV_FORMS:
            raise ValueError(f"qkv_form must be one of {QKV_FORMS}, got {self.qkv_form!r}")
        if self.qkv_lr_scale <= 0:
            raise ValueError(f"qkv_lr_scale must be > 0, got {self.qkv_lr_scale}")
        if self.soft_weight < 0:
            raise ValueError(f"soft_weight must be >= 0, got {self.soft_weight}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.classes_per_step < 0:
            raise ValueError(f"classes_per_step must be >= 0 (0: all classes), got {self.classes_per_step}")
        for name in ("class_template", "teacher_template"):
            if getattr(self, name).count("{}") != 1:
                raise ValueError(f"{name} must contain '{{}}' exactly once, got {getattr(self, name)!r}")

    @property
    def unshared(self) -> bool:
        return self.qkv_mode == "unshared"

    @property
    def offset(self) -> bool:
        """Unshared q/k/v prompts stored as offsets from the shared token's projections."""
        return self.unshared and self.qkv_form == "offset"

    @property
    def soft_labels(self) -> bool:
        return self.soft_weight > 0

    def deep_config(self) -> DeepPromptConfig:
        return DeepPromptConfig(
            n_text=self.n_text,
            n_visual=self.n_visual,
            text_depth=self.text_depth,
            visual_depth=self.visual_depth,
            coupling=False,
            init_std=self.init_std,
            keep_positions=self.keep_positions,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RPPConfig:
        return config_from_dict(cls, data)


# ----- unshared query/key/value attention ---------------------------------------------------------------------
def _in_projection(block: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    attn = block.attn
    if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
        raise TypeError("unshared q/k/v prompts need open_clip blocks with a packed nn.MultiheadAttention")
    return attn.in_proj_weight, attn.in_proj_bias


def project_qkv(block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``[3, n, width]``: what the frozen block's attention makes of hidden states ``[n, width]`` (q, k, v of
    ``ln_1(hidden)``), i.e. the shared-token prompt's query, key and value."""
    weight, bias = _in_projection(block)
    qkv = F.linear(block.ln_1(hidden), weight, bias)
    return torch.stack(qkv.chunk(3, dim=-1))


def unshared_qkv_block(
    block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None, qkv: torch.Tensor, prompt_slice: slice
) -> torch.Tensor:
    """One open_clip residual attention block in which the prompt positions' query, key and value are the
    learned ``qkv`` ``[3, n, width]`` (RPP's unshared prompts) instead of projections of their hidden state.

    ``x`` is batch-first ``[B, L, width]``; everything else (out-projection, layer scale, residual, MLP) is
    the block's own. With ``qkv = project_qkv(block, x[0, prompt_slice])`` this equals ``block(x)``.
    """
    attn = block.attn
    weight, bias = _in_projection(block)
    batch, length, width = x.shape
    heads = attn.num_heads
    q, k, v = F.linear(block.ln_1(x), weight, bias).chunk(3, dim=-1)
    start, stop = prompt_slice.start, prompt_slice.stop

    def put(t: torch.Tensor, learned: torch.Tensor) -> torch.Tensor:
        rows = learned.to(t.dtype).unsqueeze(0).expand(batch, -1, -1)
        return torch.cat([t[:, :start], rows, t[:, stop:]], dim=1)

    if stop > start:
        q, k, v = put(q, qkv[0]), put(k, qkv[1]), put(v, qkv[2])

    def heads_first(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch, length, heads, width // heads).transpose(1, 2)

    mask = None if attn_mask is None else attn_mask.to(q.dtype)
    out = F.scaled_dot_product_attention(heads_first(q), heads_first(k), heads_first(v), attn_mask=mask)
    out = attn.out_proj(out.transpose(1, 2).reshape(batch, length, width))
    x = x + block.ls_1(out)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


# ----- the prompts -------------------------------------------------------------------------------------------------
class LayerTokens(NamedTuple):
    """Shared-token equivalents per prompted layer (DeepPrompts storage convention) and their fit errors."""

    text: list[torch.Tensor]
    visual: list[torch.Tensor]
    errors: dict[str, list[float]]


class RPPPrompts(nn.Module):
    """Deep prompts for both towers (``prompts``, a :class:`~.deep_prompts.DeepPrompts` holding the shared
    tokens) plus, in unshared mode, learned ``[3, n, width]`` query/key/value prompts per prompted layer
    (``text_qkv[i]``, ``visual_qkv[i]``; offsets from the shared tokens' projections with ``qkv_form="offset"``,
    see :meth:`effective_qkv`)."""

    def __init__(
        self,
        config: RPPConfig,
        *,
        text_width: int,
        vision_width: int,
        text_layers: int,
        vision_layers: int,
        embed_dim: int,
        backbone: str,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.config, self.backbone, self.embed_dim = config, backbone, embed_dim
        deep = config.deep_config()
        self.prompts = DeepPrompts(
            deep,
            text_width=text_width,
            vision_width=vision_width,
            text_layers=text_layers,
            vision_layers=vision_layers,
            backbone=backbone,
            generator=generator,
        )
        self.text_qkv = nn.ParameterList()
        self.visual_qkv = nn.ParameterList()
        if config.unshared:
            if deep.text_active:
                for _ in range(deep.text_depth):
                    self.text_qkv.append(nn.Parameter(torch.zeros(3, deep.n_text, text_width)))
            if deep.visual_active:
                for _ in range(deep.visual_depth):
                    self.visual_qkv.append(nn.Parameter(torch.zeros(3, deep.n_visual, vision_width)))

    @classmethod
    def for_vlm(
        cls,
        vlm: VisionLanguageModel,
        config: RPPConfig | None = None,
        seed: int = 0,
        sample_texts: Sequence[str] | None = None,
        sample_images: torch.Tensor | None = None,
    ) -> RPPPrompts:
        """Fresh prompts for ``vlm``: text context from ``config.init_text``, visual and deep prompts close to
        the unprompted model (:meth:`~.deep_prompts.DeepPrompts.init_from_vlm`, measured on the samples when
        given), unshared q/k/v prompts equal to the shared tokens' projections."""
        config = config or RPPConfig()
        generator = torch.Generator().manual_seed(seed)
        rpp = cls(
            config,
            text_width=vlm.token_width,
            vision_width=vlm.vision_width,
            text_layers=len(vlm.text_blocks),
            vision_layers=len(vlm.visual.transformer.resblocks),
            embed_dim=vlm.embed_dim,
            backbone=vlm.name,
            generator=generator,
        ).to(vlm.device)
        if config.init_text and rpp.prompts.text_ctx is not None:
            tokens = vlm.tokenize(config.init_text)[0]
            ids = tokens[1 : int(tokens.argmax())]
            with torch.no_grad():
                rpp.prompts.text_ctx.init_from_token_embeddings(TEXT_KEY, vlm.token_embedding.weight[ids])
        rpp.prompts.init_from_vlm(vlm, texts=sample_texts, images=sample_images, generator=generator)
        rpp.init_qkv_from_shared(vlm)
        return rpp

    # ----- description and checks ---------------------------------------------------------------------------
    @property
    def widths(self) -> dict[str, int]:
        return {"text": self.prompts.text_width, "visual": self.prompts.vision_width}

    def check_vlm(self, vlm: VisionLanguageModel) -> None:
        """Refuse a VLM other than the one these prompts were pretrained for (name, widths, layers)."""
        if vlm.name != self.backbone:
            raise BackboneMismatchError(
                f"the pretrained prompts were made for the VLM '{self.backbone}', not '{vlm.name}': "
                "use prompts pretrained on this model (or pretrain them)"
            )
        if vlm.embed_dim != self.embed_dim:
            raise BackboneMismatchError(
                f"the pretrained prompts have embed_dim {self.embed_dim}, the VLM '{vlm.name}' {vlm.embed_dim}"
            )
        self.prompts.check_vlm(vlm)

    def qkv(self, tower: str, layer: int) -> torch.Tensor | None:
        """The unshared ``[3, n, width]`` prompts of ``tower``'s ``layer`` (``None``: shared mode or unprompted)."""
        params = self.text_qkv if tower == TEXT_KEY else self.visual_qkv
        return params[layer] if layer < len(params) else None

    # ----- forward --------------------------------------------------------------------------------------------
    def layer_fn(self, block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None, ctx: LayerContext):
        """The :mod:`.deep_prompts` layer hook: unshared q/k/v attention at prompted layers, else the block."""
        learned = self.qkv(ctx.tower, ctx.layer)
        if learned is None or ctx.prompt_slice.stop == ctx.prompt_slice.start:
            return default_layer_fn(block, x, attn_mask, ctx)
        batch_first = getattr(block.attn, "batch_first", True)  # the hook gets the block's own layout
        rows = x if batch_first else x.transpose(0, 1)
        qkv = self.effective_qkv(block, learned, rows[0, ctx.prompt_slice])
        out = unshared_qkv_block(block, rows, attn_mask, qkv, ctx.prompt_slice)
        return out if batch_first else out.transpose(0, 1)

    def effective_qkv(self, block: nn.Module, learned: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The ``[3, n, width]`` query/key/value the prompt positions get: the learned prompts themselves
        (``qkv_form="absolute"``) or the frozen block's projections of the shared tokens' hidden states
        ``hidden`` ``[n, width]`` plus the learned offsets (``"offset"``)."""
        if not self.config.offset:
            return learned
        return project_qkv(block, hidden).to(learned.dtype) + learned

    def encode_text(self, vlm: VisionLanguageModel, texts: str | Sequence[str], normalize: bool = True):
        return encode_text_prompted(vlm, texts, self.prompts, normalize=normalize, layer_fn=self.layer_fn)

    def encode_images(self, vlm: VisionLanguageModel, images: torch.Tensor, normalize: bool = True):
        return encode_image_prompted(vlm, images, self.prompts, normalize=normalize, layer_fn=self.layer_fn)

    def class_texts(self, class_names: Sequence[str]) -> list[str]:
        """The text after the learned context for each class (``class_template``)."""
        return [self.config.class_template.format(name) for name in class_names]

    def encode_classes(self, vlm: VisionLanguageModel, class_names: Sequence[str], chunk: int = 256):
        texts = self.class_texts(class_names)
        return torch.cat([self.encode_text(vlm, texts[i : i + chunk]) for i in range(0, len(texts), chunk)])

    # ----- shared tokens <-> q/k/v ----------------------------------------------------------------------------
    @torch.no_grad()
    def shared_hidden(self, vlm: VisionLanguageModel) -> dict[str, list[torch.Tensor]]:
        """Hidden states ``[n, width]`` of the shared prompt tokens at the input of every prompted layer
        (what the frozen block would project), measured through the layer hook (they do not depend on the
        input: prompts are replaced or inserted before any content can mix in)."""
        found: dict[str, dict[int, torch.Tensor]] = {"text": {}, "visual": {}}

        def capture(block, x, mask, ctx):
            if ctx.prompt_slice.stop > ctx.prompt_slice.start:
                rows = x[0, ctx.prompt_slice] if getattr(block.attn, "batch_first", True) else x[ctx.prompt_slice, 0]
                found[ctx.tower][ctx.layer] = rows.detach().clone()
            return default_layer_fn(block, x, mask, ctx)

        cfg = self.prompts.config
        if cfg.text_active:
            encode_text_prompted(vlm, ["a"], self.prompts, layer_fn=capture)
        if cfg.visual_active:
            size = vlm.image_size
            encode_image_prompted(vlm, torch.zeros(1, 3, size, size, device=vlm.device), self.prompts, layer_fn=capture)
        depth = {
            "text": cfg.text_depth if cfg.text_active else 0,
            "visual": cfg.visual_depth if cfg.visual_active else 0,
        }
        return {t: [found[t][i] for i in range(depth[t])] for t in TOWERS}

    @torch.no_grad()
    def init_qkv_from_shared(self, vlm: VisionLanguageModel) -> None:
        """Set the unshared q/k/v prompts to the shared tokens' projections (then both modes agree); offsets
        stay zero, which means the same."""
        if not self.config.unshared or self.config.offset:
            return
        hidden = self.shared_hidden(vlm)
        for tower, params, blocks in (
            ("text", self.text_qkv, vlm.text_blocks),
            ("visual", self.visual_qkv, vlm.visual.transformer.resblocks),
        ):
            for i, param in enumerate(params):
                param.copy_(project_qkv(blocks[i], hidden[tower][i]).to(param.dtype))

    @torch.no_grad()
    def layer_tokens(self, vlm: VisionLanguageModel) -> LayerTokens:
        """Shared-token equivalents of every prompted layer in DeepPrompts' storage convention (see the module
        docstring), with the relative least-squares residual of each unshared layer (0 in shared mode)."""
        self.check_vlm(vlm)
        hidden = self.shared_hidden(vlm)
        out: dict[str, list[torch.Tensor]] = {"text": [], "visual": []}
        errors: dict[str, list[float]] = {"text": [], "visual": []}
        blocks = {"text": vlm.text_blocks, "visual": vlm.visual.transformer.resblocks}
        for tower in TOWERS:
            for i, ref in enumerate(hidden[tower]):
                learned = self.qkv(tower, i)
                if learned is None:
                    h, err = ref.float(), 0.0
                else:
                    target = self.effective_qkv(blocks[tower][i], learned, ref)
                    h, err = _shared_from_qkv(blocks[tower][i], target.float(), ref.float())
                out[tower].append(self._to_storage(vlm, tower, i, h).cpu())
                errors[tower].append(err)
        return LayerTokens(out["text"], out["visual"], errors)

    def _to_storage(self, vlm: VisionLanguageModel, tower: str, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden state at a layer's input -> the vector DeepPrompts stores for it."""
        if layer > 0:
            return hidden
        if tower == "text":  # layer 0: the context gets positions 1..n (with or without keep_positions)
            n = hidden.shape[0]
            return hidden - vlm.positional_embedding[1 : 1 + n].detach().float().to(hidden.device)
        reference = self.prompts.visual_prompt(0).detach().float()  # layer 0 image: before ln_pre
        return _invert_layer_norm(vlm.visual.ln_pre, hidden, reference)


def layer_input_from_storage(vlm: VisionLanguageModel, tower: str, layer: int, token: torch.Tensor) -> torch.Tensor:
    """The inverse of the storage convention: a stored prompt token ``[n, width]`` -> the hidden state the
    prompted layer's block sees at those positions (layer 0 text: plus the positional embedding of positions
    ``1..n``; layer 0 image: through ``ln_pre``; deeper layers: unchanged). Modules that write prompts straight
    into a block's input (Diff-Prompt's per-layer tokens) start from these."""
    token = token.float().to(vlm.device)
    if layer > 0:
        return token
    if tower == "text":
        return token + vlm.positional_embedding[1 : 1 + token.shape[0]].detach().float()
    return vlm.visual.ln_pre(token).detach().float()


def _invert_layer_norm(ln: nn.Module, out: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """An input whose LayerNorm is (the nearest LayerNorm output to) ``out``, with the per-token mean and scale
    of ``reference`` (LayerNorm forgets both)."""
    weight = ln.weight.detach().float() if getattr(ln, "weight", None) is not None else torch.ones_like(out[0])
    bias = ln.bias.detach().float() if getattr(ln, "bias", None) is not None else torch.zeros_like(out[0])
    safe = torch.where(weight.abs() < 1e-6, torch.full_like(weight, 1e-6), weight)
    u = (out - bias) / safe
    u = (u - u.mean(-1, keepdim=True)) / u.std(-1, unbiased=False, keepdim=True).clamp_min(1e-6)
    scale = reference.std(-1, unbiased=False, keepdim=True)
    return u * scale + reference.mean(-1, keepdim=True)


def _shared_from_qkv(block: nn.Module, qkv: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Least-squares shared token for learned ``qkv`` ``[3, n, w]``: returns the hidden state and the relative
    residual ``||proj(h) - qkv|| / ||qkv||``."""
    weight, bias = _in_projection(block)
    weight = weight.detach().float()
    bias = torch.zeros(weight.shape[0]) if bias is None else bias.detach().float()
    target = torch.cat(list(qkv), dim=-1)  # [n, 3w] = [q | k | v]
    solution = torch.linalg.lstsq(weight.cpu(), (target - bias).T.cpu()).solution.T.to(qkv.device)
    hidden = _invert_layer_norm(block.ln_1, solution, reference)
    fitted = project_qkv(block, hidden.to(reference.dtype)).float()
    err = float((fitted - qkv).norm() / qkv.norm().clamp_min(1e-12))
    return hidden, err


# ----- loss and POMP sampling ------------------------------------------------------------------------------------
def rpp_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    *,
    soft_weight: float = 1.0,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``CE(z_S, y) + soft_weight * tau^2 * KL(softmax(z_T/tau) || softmax(z_S/tau))`` (batch mean) and its
    parts ``{"hard", "soft"}``; without teacher logits (or ``soft_weight=0``) the hard-label CE alone."""
    hard = F.cross_entropy(student_logits, labels)
    if teacher_logits is None or soft_weight == 0:
        return hard, {"hard": float(hard.detach()), "soft": 0.0}
    tau = float(temperature)
    target = F.softmax(teacher_logits.detach() / tau, dim=-1)
    soft = F.kl_div(F.log_softmax(student_logits / tau, dim=-1), target, reduction="batchmean") * tau * tau
    return hard + soft_weight * soft, {"hard": float(hard.detach()), "soft": float(soft.detach())}


def sample_class_subset(
    labels: torch.Tensor, n_classes: int, k: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """POMP's local contrast: the batch's classes plus random others, ``max(k, #batch classes)`` in all.

    Returns ``(subset, local_labels)``: class ids ``[K]`` (batch classes first, in sorted order) and the batch
    labels as indices into ``subset``. ``k <= 0`` or ``k >= n_classes`` keeps all classes.
    """
    labels = labels.cpu()
    if k <= 0 or k >= n_classes:
        return torch.arange(n_classes), labels
    present = labels.unique()
    missing = k - len(present)
    if missing > 0:
        mask = torch.ones(n_classes, dtype=torch.bool)
        mask[present] = False
        others = mask.nonzero().squeeze(1)
        picks = others[torch.randperm(len(others), generator=generator)[:missing]]
        subset = torch.cat([present, picks])
    else:
        subset = present
    lookup = torch.full((n_classes,), -1, dtype=torch.long)
    lookup[subset] = torch.arange(len(subset))
    return subset, lookup[labels]


# ----- data: class label spaces -----------------------------------------------------------------------------------
@dataclass
class ClassBatch:
    """Images ``[B, 3, H, W]`` in 0..1 and their class ids ``[B]`` (indices into the source's classes)."""

    images: torch.Tensor
    labels: torch.Tensor


class ClassSource(Protocol):
    class_names: list[str]

    def batch(self, seed: int, step: int, batch_size: int) -> ClassBatch: ...


class WorldClass(NamedTuple):
    """A class of the world's label space: a fine category in one colour."""

    category: str
    colour: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.category}"


def world_classes(categories: Sequence[str] | None = None, *, held_out: bool | None = False) -> list[WorldClass]:
    """(category, colour) classes of the world in vocabulary order, for ``categories`` (default: all 27).

    ``held_out=False`` leaves out the compositional split's held-out pairs (the classes one may train on),
    ``True`` keeps only them, ``None`` keeps every pair.
    """
    from .world.scene import is_held_out
    from .world.vocabulary import CATEGORY_NAMES, COLOUR_NAMES

    chosen = CATEGORY_NAMES if categories is None else tuple(categories)
    unknown = [c for c in chosen if c not in CATEGORY_NAMES]
    if unknown:
        raise ValueError(f"unknown world categories {unknown}; known: {list(CATEGORY_NAMES)}")
    return [WorldClass(c, k) for c in chosen for k in COLOUR_NAMES if held_out is None or is_held_out(c, k) == held_out]


def render_class_sample(cls: WorldClass, sample_seed: int, size: int = 64, style: str = "flat") -> torch.Tensor:
    """One image ``[3, size, size]`` of a single object of class ``cls`` with a random (seeded) size, texture,
    position and background, rendered as the world renders scenes."""
    from .world.render import render
    from .world.scene import WorldObject
    from .world.vocabulary import BACKGROUND_NAMES, BACKGROUNDS, BASE_SIZE, SIZE_NAMES, SIZES, TEXTURES

    rng = random.Random(sample_seed)
    background = rng.choice(BACKGROUND_NAMES)
    size_name = rng.choice(SIZE_NAMES)
    side = SIZES[size_name]
    x0, y0 = rng.randint(1, BASE_SIZE - 1 - side), rng.randint(1, BASE_SIZE - 1 - side)
    obj = WorldObject(cls.category, cls.colour, size_name, rng.choice(TEXTURES), x0, y0)
    image, _ = render([obj.placement], [obj.rgb], BACKGROUNDS[background], size=size, style=style)
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


class WorldClassSource:
    """Single-object renders of world classes: ``shots`` fixed samples per class (the same for every seed),
    batches of uniformly drawn (class, shot) pairs derived from ``(seed, step)``."""

    def __init__(
        self, classes: Sequence[WorldClass] | None = None, shots: int = 16, size: int = 64, style: str = "flat"
    ) -> None:
        self.classes = list(world_classes() if classes is None else classes)
        if len(self.classes) < 2:
            raise ValueError(f"need at least 2 classes, got {len(self.classes)}")
        if shots < 1:
            raise ValueError(f"shots must be >= 1, got {shots}")
        self.class_names = [c.name for c in self.classes]
        self.shots, self.size, self.style = shots, size, style

    def __len__(self) -> int:
        return len(self.classes) * self.shots

    def sample_seed(self, cls: WorldClass, shot: int) -> int:
        return zlib.crc32(f"rpp-shot|{cls.category}|{cls.colour}|{shot}".encode())

    def batch(self, seed: int, step: int, batch_size: int) -> ClassBatch:
        rng = random.Random(seed * 1_000_003 + step)
        labels = [rng.randrange(len(self.classes)) for _ in range(batch_size)]
        shots = [rng.randrange(self.shots) for _ in range(batch_size)]
        images = torch.stack(
            [
                render_class_sample(self.classes[c], self.sample_seed(self.classes[c], s), self.size, self.style)
                for c, s in zip(labels, shots, strict=True)
            ]
        )
        return ClassBatch(images, torch.tensor(labels, dtype=torch.long))


class FolderClassSource:
    """A folder with one sub-folder of images per class; the class name is the sub-folder's name with ``_``
    and ``-`` read as spaces. Batches draw images uniformly."""

    def __init__(self, root: str | os.PathLike[str], size: int = 64) -> None:
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"dataset folder {root} does not exist")
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        items: list[tuple[Path, int]] = []
        names: list[str] = []
        for folder in folders:
            images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not images:
                continue
            items += [(p, len(names)) for p in images]
            names.append(folder.name.replace("_", " ").replace("-", " ").strip())
        if len(names) < 2:
            raise ValueError(
                f"{root} holds {len(names)} class folder(s) with images; need at least 2 sub-folders "
                "(one per class, named after the class) with images in them"
            )
        self.class_names, self.items, self.size = names, items, size

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, seed: int, step: int, batch_size: int) -> ClassBatch:
        from .dual_prompt import _load_image

        rng = random.Random(seed * 1_000_003 + step)
        chosen = [self.items[rng.randrange(len(self.items))] for _ in range(batch_size)]
        images = torch.stack([_load_image(p, self.size) for p, _ in chosen])
        return ClassBatch(images, torch.tensor([c for _, c in chosen], dtype=torch.long))


# ----- training ------------------------------------------------------------------------------------------------------
@dataclass
class PretrainResult:
    rpp: RPPPrompts
    losses: list[float]
    steps_done: int
    interrupted: bool = False
    class_names: list[str] = field(default_factory=list)
    parts: dict[str, list[float]] = field(default_factory=dict)


@torch.no_grad()
def teacher_class_features(teacher: VisionLanguageModel, class_names: Sequence[str], template: str, chunk: int = 256):
    """The frozen teacher's normalised zero-shot class features ``[C, D]`` (hand-written template)."""
    texts = [template.format(n) for n in class_names]
    return torch.cat([teacher.encode_text(texts[i : i + chunk]) for i in range(0, len(texts), chunk)])


def pretrain_prompts(
    vlm: VisionLanguageModel,
    source: ClassSource,
    config: RPPConfig | None = None,
    *,
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    teacher: VisionLanguageModel | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 50,
    callback: Callable[[int, int, float], bool | None] | None = None,
    progress: bool = True,
) -> PretrainResult:
    """Pretrain RPP prompts on a frozen ``vlm`` as a classifier over ``source.class_names``.

    Each step: a batch ``source.batch(seed, step, batch_size)``, a POMP class subset
    (:func:`sample_class_subset`), the prompted image and class features, and :func:`rpp_loss` against the
    frozen ``teacher``'s zero-shot probabilities (default: ``vlm`` without prompts). Deterministic for a seed;
    with ``checkpoint_path`` the state is saved every ``checkpoint_every`` steps, on interruption and at the
    end, and an existing checkpoint is resumed (same result as an uninterrupted run). ``callback(step,
    steps, loss)`` runs after each step; returning ``False`` stops early (``interrupted=True``), an exception
    it raises propagates after the state has been saved. Runs with inference mode off and gradients on.
    """
    with torch.inference_mode(False), torch.enable_grad():
        return _pretrain(
            vlm,
            source,
            config or RPPConfig(),
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            teacher=teacher or vlm,
            checkpoint_path=checkpoint_path,
            checkpoint_every=checkpoint_every,
            callback=callback,
            progress=progress,
        )


def _pretrain(
    vlm, source, config, *, steps, batch_size, lr, seed, teacher, checkpoint_path, checkpoint_every, callback, progress
) -> PretrainResult:
    names = list(source.class_names)
    if len(names) < 2:
        raise ValueError(f"prompt pretraining needs at least 2 classes, the source has {len(names)}")
    sample = source.batch(seed, 20_000_000, min(batch_size, 32))
    sample_texts = [config.class_template.format(names[int(c)]) for c in sample.labels]
    rpp = RPPPrompts.for_vlm(vlm, config, seed=seed, sample_texts=sample_texts, sample_images=sample.images)
    teacher_text = teacher_class_features(teacher, names, config.teacher_template) if config.soft_labels else None
    qkv_ids = {id(p) for p in [*rpp.text_qkv, *rpp.visual_qkv]}
    trainable = [p for p in rpp.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) not in qkv_ids], "lr": lr},
        {"params": [p for p in trainable if id(p) in qkv_ids], "lr": lr * config.qkv_lr_scale},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, weight_decay=0.0)
    frozen = [(p, p.requires_grad) for p in vlm.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    vlm.eval()

    def step_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        batch = source.batch(seed, step, batch_size)
        generator = torch.Generator().manual_seed(seed * 104_729 + step)
        subset, local = sample_class_subset(batch.labels, len(names), config.classes_per_step, generator)
        images = batch.images.to(vlm.device)
        image_features = rpp.encode_images(vlm, images)
        class_features = rpp.encode_classes(vlm, [names[int(i)] for i in subset])
        logits = vlm.logit_scale.detach() * image_features @ class_features.T
        teacher_logits = None
        if teacher_text is not None:
            with torch.no_grad():
                t_img = teacher.encode_image(images.to(teacher.device)).to(logits.device)
                sub = teacher_text[subset.to(teacher_text.device)].to(logits.device)
                teacher_logits = teacher.logit_scale.to(logits.device) * t_img @ sub.T
        loss, part = rpp_loss(
            logits,
            local.to(logits.device),
            teacher_logits,
            soft_weight=config.soft_weight,
            temperature=config.temperature,
        )
        return loss, {"hard": part["hard"], "soft": part["soft"]}

    try:
        loop = run_resumable_loop(
            rpp,
            optimizer,
            step_fn,
            steps=steps,
            seed=seed,
            backbone=vlm.name,
            checkpoint_path=checkpoint_path,
            checkpoint_every=checkpoint_every,
            callback=callback,
            progress=progress,
            desc="RPP",
        )
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    parts = {key: loop.logs.get(key, []) for key in ("hard", "soft")}
    rpp.eval()
    return PretrainResult(rpp, loop.losses, loop.steps_done, loop.interrupted, names, parts)


# ----- zero-shot evaluation ----------------------------------------------------------------------------------------
@torch.no_grad()
def classify(
    vlm: VisionLanguageModel,
    images: torch.Tensor,
    class_names: Sequence[str],
    rpp: RPPPrompts | None = None,
    *,
    template: str = "a picture of a {}.",
    chunk: int = 256,
) -> torch.Tensor:
    """Predicted class index per image ``[N]``: CLIP zero-shot with ``template`` (``rpp=None``) or with the
    (pre)trained prompts and their ``class_template``."""
    if rpp is not None:
        rpp.check_vlm(vlm)
        text = rpp.encode_classes(vlm, class_names, chunk)
    else:
        text = teacher_class_features(vlm, class_names, template, chunk)
    preds = []
    for i in range(0, images.shape[0], chunk):
        part = images[i : i + chunk].to(vlm.device)
        feats = vlm.encode_image(part) if rpp is None else rpp.encode_images(vlm, part)
        preds.append((feats @ text.T).argmax(dim=1).cpu())
    return torch.cat(preds)


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * float((predictions.cpu() == labels.cpu()).float().mean())


# ----- the pretrained prompt bundle --------------------------------------------------------------------------------
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
        rpp = RPPPrompts(
            config,
            text_width=int(widths["text"]),
            vision_width=int(widths["vision"]),
            text_layers=int(layers["text"]),
            vision_layers=int(layers["vision"]),
            embed_dim=int(widths["embed"]),
            backbone=str(meta_field(metadata, "backbone")),
        )
        rpp.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("rpp.")})
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
    except (TypeError, ValueError, KeyError, RuntimeError, AttributeError) as exc:
        raise ArtifactError(f"{path}: not a usable RPP pretrained prompt bundle: {exc}") from None
    if vlm is not None:
        try:
            rpp.check_vlm(vlm)
        except BackboneMismatchError as exc:
            raise BackboneMismatchError(f"{path}: {exc}") from None
        rpp.to(vlm.device)
    return PretrainedPromptBundle(rpp.eval(), tokens, info if isinstance(info, dict) else {})


# ----- initialising other prompt modules from a bundle --------------------------------------------------------------
def _as_bundle(bundle: PretrainedPromptBundle | str | os.PathLike[str], vlm=None) -> PretrainedPromptBundle:
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
    """Initialise a :class:`~.deep_prompts.DeepPrompts` (any method's) from a bundle: the text context and
    deep text prompts, and the visual prompts (a MaPLe coupling layer is fitted to map the pretrained text
    tokens to the pretrained visual tokens, :func:`_fit_coupler`). Returns the number of layers copied per
    tower."""
    bundle = _as_bundle(bundle)
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


def init_dual_prompt_from_bundle(
    dual, bundle: PretrainedPromptBundle | str | os.PathLike[str], vlm: VisionLanguageModel | None = None
) -> dict[str, int]:
    """Initialise a DCAR :class:`~.dual_prompt.DualPrompt` from a pretrained bundle (what
    ``DualPromptConfig(init_from=path)`` does in ``DualPrompt.for_vlm``); the bundle must be for the dual
    prompt's backbone."""
    bundle = _as_bundle(bundle, vlm)
    if bundle.backbone != dual.backbone:
        raise BackboneMismatchError(
            f"the pretrained prompts were made for the VLM '{bundle.backbone}', the dual prompt is for "
            f"'{dual.backbone}': pretrain prompts on this model"
        )
    return init_deep_prompts_from_bundle(dual.prompts, bundle)


@torch.no_grad()
def init_diff_prompt_from_bundle(
    model, bundle: PretrainedPromptBundle | str | os.PathLike[str], vlm: VisionLanguageModel
) -> dict[str, int]:
    """Initialise a Diff-Prompt model's (:class:`~.diff_prompt.model.DiffPrompt`) learnable global prompts from a
    pretrained bundle (what ``PromptConfig(init_from=path)`` does in ``train_prompts``): layer ``i``'s global
    tokens of each tower start as the bundle's shared-token equivalents of layer ``i``, as the block sees them
    (:func:`layer_input_from_storage`); overlapping tokens and layers only. The generated tokens come from the
    mask adapters and keep their own initialisation. Returns the number of layers copied per tower."""
    bundle = _as_bundle(bundle, vlm)
    if bundle.backbone != model.backbone or vlm.name != model.backbone:
        raise BackboneMismatchError(
            f"the pretrained prompts were made for the VLM '{bundle.backbone}', the Diff-Prompt model is for "
            f"'{model.backbone}' (VLM given: '{vlm.name}'): pretrain prompts on this model"
        )
    if model.config.n_global == 0:
        raise ValueError(
            "the Diff-Prompt model has no global prompts (n_global=0), so there is nothing to start from the "
            "pretrained prompts: use n_global > 0 or leave init_from empty"
        )
    done = {}
    for tower, targets in (("text", model.global_prompts.text), ("visual", model.global_prompts.visual)):
        stored = getattr(bundle.layer_tokens, tower)
        sources = [layer_input_from_storage(vlm, tower, i, t) for i, t in enumerate(stored)]
        done[tower] = copy_prompt_tensors(list(targets), sources, f"{tower} global prompt")
    return done


__all__ = [
    "ClassBatch",
    "FolderClassSource",
    "LayerTokens",
    "PretrainResult",
    "PretrainedPromptBundle",
    "RPPConfig",
    "RPPPrompts",
    "WorldClass",
    "WorldClassSource",
    "accuracy",
    "classify",
    "copy_prompt_tensors",
    "init_deep_prompts_from_bundle",
    "init_diff_prompt_from_bundle",
    "init_dual_prompt_from_bundle",
    "layer_input_from_storage",
    "load_pretrained_prompts",
    "pretrain_prompts",
    "project_qkv",
    "render_class_sample",
    "rpp_loss",
    "sample_class_subset",
    "save_pretrained_prompts",
    "teacher_class_features",
    "unshared_qkv_block",
    "world_classes",
]
