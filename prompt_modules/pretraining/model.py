"""RPP's prompt structure (RPP sec. 3.2): unshared query/key/value prompts in a frozen attention block
(:func:`project_qkv`, :func:`unshared_qkv_block`), the prompts of both towers (:class:`RPPPrompts`) and their
shared-token equivalents in :class:`~..core.deep_prompts.DeepPrompts`' storage convention (:class:`LayerTokens`,
:func:`layer_input_from_storage`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..core.artifacts import BackboneMismatchError
from ..core.deep_prompts import (
    TEXT_KEY,
    DeepPrompts,
    LayerContext,
    default_layer_fn,
    encode_image_prompted,
    encode_text_prompted,
)
from ..core.vlm import VisionLanguageModel
from .config import TOWERS, RPPConfig


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
    """Deep prompts for both towers (``prompts``, a :class:`~..core.deep_prompts.DeepPrompts` holding the shared
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
        the unprompted model (:meth:`~..core.deep_prompts.DeepPrompts.init_from_vlm`, measured on the samples when
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
        """The :mod:`..core.deep_prompts` layer hook: unshared q/k/v attention at prompted layers, else the block."""
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

