"""DCAR: dual prompt learning for fine-grained image-text retrieval (Wang et al. 2025, arXiv 2508.04028).

A frozen :class:`~.vlm.VisionLanguageModel` gets learnable prompts on both towers (:mod:`.deep_prompts`:
text context tokens built on the shared :class:`~.learned_prompt.LearnedPrompt`, plus visual prompt tokens,
optionally MaPLe-coupled and deep) and is trained for retrieval in both directions. The paper publishes
neither formulas nor prompt sizes; our choices:

**Attribute level: dynamic token re-weighting by an image-text mutual-information estimate.** For every word
token ``t`` of a caption we take its contextual feature ``e_t`` (final hidden state, ``ln_final``, text
projection, normalised) and CLIP's own retrieval posterior over a reference set of ``K`` images,
``p(j | t) = softmax_j(s * <e_t, v_j>)`` (``s`` the VLM's logit scale). The estimate is

    ``I_t = log K - H(p(. | t)) = KL(p(. | t) || uniform)``,

the pointwise contribution of token ``t`` to the mutual information ``I(T; J)`` between the token and the
image identity (uniform prior over the reference images). Function words ("a", "on") spread their posterior
over all images (``I_t ~ 0``); category, colour and texture words single out few images (large ``I_t``).
We chose it because (i) it needs no extra network or labels, (ii) it is bounded (``0..log K``) and cheap,
(iii) it depends only on the text and a fixed reference set, so retrieval stays a bi-encoder (text features
do not depend on the query image, galleries are encoded once). The weights ``w_t = I_t / sum I`` (word
tokens only, no gradient through them) re-weight the tokens in an attribute term added to the pooled
feature: ``g = normalize(f_eot + alpha * sum_t w_t e_t)`` with a learnable ``alpha``. A category-swap negative
then differs from the positive in a *heavily weighted* token. The reference set is the current batch's
image features during training and a stored bank of ``bank_size`` training-image features at inference
(``image_bank``, saved with the prompt); with an empty bank the weights are uniform.

**Category level: category-aware augmentation and weighted contrastive loss.** Each image comes with hard
negative captions from two views of its category: swaps to a *sibling* (same family, another member;
weight ``same_family_weight``) and swaps to another family (``other_family_weight``); the world provides both
(:attr:`~.world.scene.Scene.hard_negative_edits`), FDRD JSON provides 4 category swaps per image (weighted as
siblings). In-batch pairs are weighted by category match: a caption/image of the same family but other fine
category counts ``batch_family_weight`` times in the softmax denominator, one with the same categories
``batch_same_category_weight`` times. The loss is the symmetric (image->text and text->image) InfoNCE with
these weights inside the log-sum-exp (a weight ``w`` adds ``log w`` to that logit); hard negatives enter the
image->text direction. Per image at most ``max_negatives`` hard negatives are used (world: sibling swaps first,
plus one swap to another family when there is one), since the text tower's cost grows with their number.
The default of two (one of each view) was chosen on the world's val split (200 steps, seeds 0 and 1; i2t / t2i
R@1): 3 negatives 22.8 / 81.2, 2 negatives 23.2 / 81.7, 1 (the other-family view only) 23.5 / 81.9, none 22.9 /
82.1, plain MaPLe prompts 23.0 / 81.8. The differences are within seed noise; two is the fewest that keeps
both views of the category-aware augmentation.

**Prompt shape defaults** (the paper gives none): 4 text and 4 image tokens, depth 2 in both towers (half of
WorldCLIP's 4 layers; MaPLe prompts 9 of 12), MaPLe coupling (image prompts = linear map of the text prompts).
The caption keeps its unprompted token positions (``keep_positions``; WorldCLIP never saw captions start
later) and visual/deep prompts start close to the unprompted model (class-token copies and measured mean
hidden states, :meth:`~.deep_prompts.DeepPrompts.init_from_vlm`): randomly initialised prompts cost a trained
small backbone several recall points that a few hundred steps do not win back.

Switching ``token_reweighting`` / ``category_aware`` off gives the ablations; with both off and
``coupling=True`` the model is MaPLe-like, with ``n_visual=0`` CoOp-like.

**Stable Diffusion.** Only the text context can reach an SD text encoder, and only approximately: the
VLM's token space (e.g. 192-d WorldCLIP) is not CLIP-L's (768-d) or CLIP-G's (1280-d). After training, each
learned context vector is projected to its nearest vocabulary token in the VLM's token embedding
(``text_token_ids``, cosine; the CLIP BPE vocabulary is shared by all these encoders); an SD encoder then
gets *its own* embeddings of those tokens (a hard prompt, as in PEZ). What transfers is therefore a discrete
reading of the context, not the continuous vectors, and nothing of the visual or deep prompts. Continuous
SD vectors can be attached with :meth:`DualPrompt.set_sd_prompt` (e.g. a learned prompt trained on that SD
model); they take precedence and are checked against the encoder's widths (an SD1 prompt on an SDXL CLIP is
refused).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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
from .core.deep_prompts import TEXT_KEY, DeepPromptConfig, DeepPrompts, encode_image_prompted, encode_text_prompted
from .core.learned_prompt import LearnedPrompt, LearnedPromptConfig
from .core.training import run_resumable_loop
from .core.vlm import VisionLanguageModel

METHOD = "dcar"
FDRD_NEGATIVES = 4
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class DualPromptConfig:
    """DCAR hyper-parameters (defaults chosen for the 4-layer WorldCLIP; see the module docstring)."""

    n_text: int = 4
    n_visual: int = 4
    text_depth: int = 2
    visual_depth: int = 2
    coupling: bool = True
    init_text: str = "a picture of a"
    init_std: float = 0.02
    keep_positions: bool = True
    init_from: str = ""  # a pretrained prompt bundle (RPP, prompt_pretraining.py) to start from; "": scratch
    # attribute level
    token_reweighting: bool = True
    reweight_init: float = 0.5
    bank_size: int = 256
    # category level
    category_aware: bool = True
    max_negatives: int = 2
    same_family_weight: float = 2.0
    other_family_weight: float = 1.0
    batch_family_weight: float = 1.5
    batch_same_category_weight: float = 1.0

    def __post_init__(self) -> None:
        self.deep_config()  # validates the prompt shape
        for name in ("same_family_weight", "other_family_weight", "batch_family_weight",
                     "batch_same_category_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.bank_size < 0 or self.max_negatives < 0:
            raise ValueError("bank_size and max_negatives must be >= 0")

    def deep_config(self) -> DeepPromptConfig:
        return DeepPromptConfig(
            n_text=self.n_text, n_visual=self.n_visual, text_depth=self.text_depth,
            visual_depth=self.visual_depth, coupling=self.coupling, init_std=self.init_std,
            keep_positions=self.keep_positions,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DualPromptConfig:
        return config_from_dict(cls, data)


# ----- attribute level: mutual-information token weights -----------------------------------------------------
def token_mutual_information(token_features: torch.Tensor, bank: torch.Tensor, scale: float | torch.Tensor):
    """``I_t = log K - H(softmax_j(scale <e_t, v_j>))`` for normalised token features ``[..., D]`` and a
    normalised reference bank ``[K, D]``; returns ``[...]`` in ``[0, log K]`` (see the module docstring)."""
    logits = float(scale) * token_features @ bank.T
    logp = torch.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return (math.log(bank.shape[0]) - entropy).clamp_min(0.0)


def mi_token_weights(
    token_features: torch.Tensor, content_mask: torch.Tensor, bank: torch.Tensor | None, scale
) -> torch.Tensor:
    """Per-token weights ``[B, L]`` summing to 1 over each caption's word tokens (uniform without a bank)."""
    mask = content_mask.to(token_features.dtype)
    if bank is None or bank.shape[0] < 2:
        weights = mask
    else:
        weights = token_mutual_information(token_features, bank, scale) * mask + 1e-6 * mask
    return weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)


# ----- category level: weighted contrastive loss ---------------------------------------------------------------
def category_match_weights(
    categories: Sequence[Sequence[str]],
    families: Sequence[Sequence[str]],
    *,
    same_family: float = 1.5,
    same_category: float = 1.0,
) -> torch.Tensor:
    """``[B, B]`` weights of in-batch pairs: ``same_category`` when both hold the same categories,
    ``same_family`` when the families match but the fine categories do not, else 1 (diagonal 1)."""
    cats = [tuple(sorted(c)) for c in categories]
    fams = [tuple(sorted(f)) for f in families]
    n = len(cats)
    weights = torch.ones(n, n)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            if cats[i] == cats[j]:
                weights[i, j] = same_category
            elif fams[i] == fams[j]:
                weights[i, j] = same_family
    return weights


def category_aware_contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    scale: torch.Tensor | float,
    *,
    match_weights: torch.Tensor | None = None,
    negative_features: torch.Tensor | None = None,
    negative_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over matched pairs ``[B, D]`` with weighted negatives.

    ``match_weights`` ``[B, B]`` weight in-batch negatives (row: image, column: text; the transpose is used
    text->image); ``negative_features`` ``[B, K, D]`` are extra captions of each image's hard negatives with
    ``negative_weights`` ``[B, K]`` (image->text only). Weight ``w`` enters as ``+log w`` in the log-sum-exp.
    """
    logits = float(scale) * image_features @ text_features.T
    n = logits.shape[0]
    positive = logits.diagonal()
    log_w = torch.zeros_like(logits)
    if match_weights is not None:
        log_w = torch.log(match_weights.to(logits)).masked_fill(torch.eye(n, dtype=torch.bool), 0.0)
    i2t = logits + log_w
    if negative_features is not None and negative_features.shape[1] > 0:
        neg = float(scale) * torch.einsum("bd,bkd->bk", image_features, negative_features)
        if negative_weights is not None:
            neg = neg + torch.log(negative_weights.to(neg))
        i2t = torch.cat([i2t, neg], dim=1)
    loss_i2t = (torch.logsumexp(i2t, dim=1) - positive).mean()
    loss_t2i = (torch.logsumexp(logits.T + log_w.T, dim=1) - positive).mean()
    return 0.5 * (loss_i2t + loss_t2i)


# ----- the module ------------------------------------------------------------------------------------------------
class DualPrompt(nn.Module):
    """DCAR prompts for one VLM: ``prompts`` (:class:`~.deep_prompts.DeepPrompts`), the attribute-term scale
    ``alpha``, the MI reference bank and the vocabulary projection of the text context (for SD export)."""

    def __init__(
        self,
        config: DualPromptConfig,
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
        self.prompts = DeepPrompts(
            config.deep_config(), text_width=text_width, vision_width=vision_width, text_layers=text_layers,
            vision_layers=vision_layers, backbone=backbone, generator=generator,
        )
        self.alpha = nn.Parameter(torch.tensor(float(config.reweight_init)))
        self.register_buffer("image_bank", torch.zeros(config.bank_size, embed_dim))
        self.register_buffer("bank_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("text_token_ids", torch.full((self.prompts.n_text,), -1, dtype=torch.long))
        self.__dict__["sd_prompt"] = None  # optional continuous SD vectors; not a submodule (see set_sd_prompt)

    @classmethod
    def for_vlm(
        cls,
        vlm: VisionLanguageModel,
        config: DualPromptConfig | None = None,
        seed: int = 0,
        sample: RetrievalBatch | None = None,
    ) -> DualPrompt:
        """Fresh prompts for ``vlm``: text context from ``config.init_text``'s token embeddings, visual and deep
        prompts close to the unprompted model (:meth:`~.deep_prompts.DeepPrompts.init_from_vlm`, measured on
        ``sample`` when given)."""
        config = config or DualPromptConfig()
        generator = torch.Generator().manual_seed(seed)
        dual = cls(
            config, text_width=vlm.token_width, vision_width=vlm.vision_width, text_layers=len(vlm.text_blocks),
            vision_layers=len(vlm.visual.transformer.resblocks), embed_dim=vlm.embed_dim, backbone=vlm.name,
            generator=generator,
        ).to(vlm.device)
        if config.init_text and dual.prompts.text_ctx is not None:
            tokens = vlm.tokenize(config.init_text)[0]
            ids = tokens[1 : int(tokens.argmax())]
            with torch.no_grad():
                dual.prompts.text_ctx.init_from_token_embeddings(TEXT_KEY, vlm.token_embedding.weight[ids])
        dual.prompts.init_from_vlm(
            vlm, texts=None if sample is None else sample.positives, images=None if sample is None else sample.images,
            generator=generator,
        )
        if config.init_from:  # RPP pretrained prompts as the initialisation (prompt_pretraining.py)
            from .prompt_pretraining import init_dual_prompt_from_bundle

            init_dual_prompt_from_bundle(dual, config.init_from, vlm)
        return dual

    # ----- checks -------------------------------------------------------------------------------------------
    def check_vlm(self, vlm: VisionLanguageModel) -> None:
        """Refuse a VLM other than the one these prompts were trained for (name, widths, layers)."""
        if vlm.name != self.backbone:
            raise BackboneMismatchError(
                f"the dual prompt was trained for the VLM '{self.backbone}', not '{vlm.name}': "
                "use a dual prompt trained for this model (or train one)"
            )
        if vlm.embed_dim != self.embed_dim:
            raise BackboneMismatchError(
                f"the dual prompt has embed_dim {self.embed_dim}, the VLM '{vlm.name}' {vlm.embed_dim}"
            )
        self.prompts.check_vlm(vlm)

    # ----- encoders -----------------------------------------------------------------------------------------
    def encode_images(self, vlm: VisionLanguageModel, images: torch.Tensor) -> torch.Tensor:
        """Normalised image features ``[B, embed_dim]`` with the visual prompts."""
        return encode_image_prompted(vlm, images, self.prompts)

    def bank(self) -> torch.Tensor | None:
        count = int(self.bank_count)
        return self.image_bank[:count] if count >= 2 else None

    def encode_texts(
        self, vlm: VisionLanguageModel, texts: Sequence[str], bank: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Normalised text features ``[M, embed_dim]`` (with MI token re-weighting when enabled).

        ``bank`` (normalised image features) replaces the stored reference bank, e.g. the training batch.
        """
        if not self.config.token_reweighting:
            return encode_text_prompted(vlm, list(texts), self.prompts)
        enc = encode_text_prompted(vlm, list(texts), self.prompts, return_tokens=True)
        tokens = F.normalize(enc.token_features, dim=-1)
        with torch.no_grad():
            weights = mi_token_weights(tokens.detach(), enc.content_mask, bank if bank is not None else self.bank(),
                                       vlm.logit_scale)
        attribute = (weights.unsqueeze(-1) * tokens).sum(dim=1)
        return F.normalize(enc.features + self.alpha * attribute, dim=-1)

    @torch.no_grad()
    def token_weights(self, vlm: VisionLanguageModel, text: str) -> list[tuple[str, float]]:
        """``(token, weight)`` of the caption's word tokens: the MI re-weighting, for inspection."""
        from .core.vlm import clip_tokenizer

        enc = encode_text_prompted(vlm, [text], self.prompts, return_tokens=True)
        tokens = F.normalize(enc.token_features, dim=-1)
        weights = mi_token_weights(tokens, enc.content_mask, self.bank(), vlm.logit_scale)[0]
        tok = clip_tokenizer(vlm.context_length)
        ids = tok.encode(text)[: int(enc.content_mask[0].sum())]
        offset = 1 + self.prompts.n_text
        return [(tok.decode([i]).strip(), float(weights[offset + k])) for k, i in enumerate(ids)]

    # ----- training pieces ----------------------------------------------------------------------------------
    def loss(self, vlm: VisionLanguageModel, batch: RetrievalBatch) -> torch.Tensor:
        """The training loss on one batch (category-aware when enabled, else plain symmetric InfoNCE)."""
        cfg = self.config
        images = self.encode_images(vlm, batch.images)
        bank = images.detach() if cfg.token_reweighting else None
        positives = self.encode_texts(vlm, batch.positives, bank=bank)
        if not cfg.category_aware:
            return category_aware_contrastive_loss(images, positives, vlm.logit_scale)
        match = None
        if batch.categories is not None and batch.families is not None:
            match = category_match_weights(
                batch.categories, batch.families, same_family=cfg.batch_family_weight,
                same_category=cfg.batch_same_category_weight,
            ).to(images.device)
        negatives = weights = None
        k = min((len(n) for n in batch.negatives), default=0)
        if k:
            flat = [n for row in batch.negatives for n in row[:k]]
            negatives = self.encode_texts(vlm, flat, bank=bank).view(len(batch.negatives), k, -1)
            weights = batch.negative_weights[:, :k].to(images.device)
        return category_aware_contrastive_loss(
            images, positives, vlm.logit_scale, match_weights=match, negative_features=negatives,
            negative_weights=weights,
        )

    @torch.no_grad()
    def refresh_bank(self, vlm: VisionLanguageModel, images: torch.Tensor) -> None:
        """Store the (prompted) features of up to ``bank_size`` images as the MI reference set."""
        size = self.config.bank_size
        if size == 0:
            return
        feats = torch.cat([self.encode_images(vlm, images[i : i + 128]) for i in range(0, len(images), 128)])[:size]
        self.image_bank.zero_()
        self.image_bank[: feats.shape[0]] = feats
        self.bank_count.fill_(feats.shape[0])

    @torch.no_grad()
    def project_to_vocabulary(self, vlm: VisionLanguageModel) -> torch.Tensor:
        """Nearest vocabulary token (cosine, in ``vlm``'s token embedding) of each text context vector."""
        if self.prompts.text_ctx is None:
            return self.text_token_ids
        ctx = F.normalize(self.prompts.text_ctx(TEXT_KEY).float(), dim=-1)
        table = F.normalize(vlm.token_embedding.weight.float(), dim=-1)
        sims = ctx @ table.T
        sims[:, [49406, 49407]] = -2.0  # never start/end of text
        self.text_token_ids.copy_(sims.argmax(dim=1))
        return self.text_token_ids

    # ----- Stable Diffusion export ----------------------------------------------------------------------------
    def set_sd_prompt(self, prompt: LearnedPrompt | None) -> None:
        """Attach continuous SD text-encoder vectors (saved with the dual prompt; used instead of the projection)."""
        self.__dict__["sd_prompt"] = prompt

    def sd_learned_prompt(self, tables: dict[str, torch.Tensor]) -> LearnedPrompt | None:
        """A :class:`LearnedPrompt` for SD text encoders with token-embedding ``tables`` (``clip_l``/``clip_g``).

        The attached SD prompt if there is one (checked against the tables' widths: an SD1 prompt is refused
        for SDXL), else the vocabulary projection looked up in each table; ``None`` without a text context.
        """
        widths = {k: int(t.shape[1]) for k, t in tables.items()}
        if self.sd_prompt is not None:
            self.sd_prompt.check_widths(widths, where="the connected CLIP")
            return self.sd_prompt
        if self.prompts.text_ctx is None:
            return None
        ids = self.text_token_ids
        if bool((ids < 0).any()):
            raise ValueError("the dual prompt's text context has no vocabulary projection: train it first")
        return LearnedPrompt.from_token_ids(ids, tables)


# ----- data -----------------------------------------------------------------------------------------------------
@dataclass
class RetrievalBatch:
    """One training batch: images ``[B, 3, H, W]`` in 0..1, their captions, hard negatives per image with
    weights ``[B, K]``, and (when known) the fine categories and families of each image."""

    images: torch.Tensor
    positives: list[str]
    negatives: list[list[str]] = field(default_factory=list)
    negative_weights: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0))
    categories: list[tuple[str, ...]] | None = None
    families: list[tuple[str, ...]] | None = None


class RetrievalSource(Protocol):
    def batch(self, seed: int, step: int, batch_size: int) -> RetrievalBatch: ...


class WorldSource:
    """Scenes of the procedural world (train split by default) with their category-swap hard negatives."""

    def __init__(self, split: str = "train", size: int = 64, style: str = "flat",
                 config: DualPromptConfig | None = None) -> None:
        from .world.scene import split_seed_range

        self.range = split_seed_range(split)
        self.size, self.style = size, style
        self.config = config or DualPromptConfig()

    def seeds(self, seed: int, step: int, batch_size: int) -> list[int]:
        base = (seed * 100_003_331 + step * batch_size) % (len(self.range) - batch_size)
        return [self.range.start + base + k for k in range(batch_size)]

    def batch(self, seed: int, step: int, batch_size: int) -> RetrievalBatch:
        from .world.dataset import render_batch
        from .world.vocabulary import family_of

        data = render_batch(self.seeds(seed, step, batch_size), size=self.size, style=self.style)
        cfg = self.config
        negatives, weights = [], []
        for scene in data["scenes"]:
            edits = scene.hard_negative_edits
            same = [h for h in edits if family_of(h.replacement) == family_of(h.original)]
            other = [h for h in edits if family_of(h.replacement) != family_of(h.original)]
            k = cfg.max_negatives
            # both views: sibling swaps first, then (at least) one swap to another family when there is one
            chosen = same[: max(k - 1, 0)] + other[:1] if other and k > 0 else same[:k]
            chosen += [h for h in edits if h not in chosen][: k - len(chosen)]
            negatives.append([h.text for h in chosen])
            weights.append([
                cfg.same_family_weight if family_of(h.replacement) == family_of(h.original)
                else cfg.other_family_weight
                for h in chosen
            ])
        k = min(len(w) for w in weights)
        return RetrievalBatch(
            images=data["image"],
            positives=list(data["caption"]),
            negatives=[n[:k] for n in negatives],
            negative_weights=torch.tensor([w[:k] for w in weights], dtype=torch.float32),
            categories=[tuple(o.category for o in s.objects) for s in data["scenes"]],
            families=[tuple(o.family for o in s.objects) for s in data["scenes"]],
        )


def _load_image(path: Path, size: int) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = size / min(im.size)
            w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
            im = im.resize((w, h), Image.BICUBIC)
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            array = np.asarray(im, dtype=np.float32) / 255.0
    except OSError as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None
    return torch.from_numpy(array).permute(2, 0, 1)


@dataclass
class FDRDEntry:
    file_name: str
    positive: str
    negatives: list[str]
    path: Path


def read_fdrd_json(path: str | os.PathLike[str], image_root: str | os.PathLike[str] | None = None,
                   n_negatives: int = FDRD_NEGATIVES, check_files: bool = True) -> list[FDRDEntry]:
    """Read an FDRD-style JSON list of ``{file_name, positive, negative: [4 captions]}``.

    Images are looked up relative to ``image_root`` (default: the JSON's folder). A top-level object with a
    single list under ``data``/``annotations``/``entries`` is accepted too. Raises ``ValueError`` naming the
    file (and entry) for malformed JSON, missing keys, a wrong number of negatives or a missing image.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"FDRD JSON not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a UTF-8 text file") from None
    if isinstance(data, dict):
        lists = [data[k] for k in ("data", "annotations", "entries") if isinstance(data.get(k), list)]
        if len(lists) != 1:
            raise ValueError(f"{path}: expected a JSON list of {{file_name, positive, negative}} entries")
        data = lists[0]
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list of {{file_name, positive, negative}} entries")
    root = Path(image_root) if image_root else path.parent
    entries = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: entry {i} is a {type(item).__name__}, not an object")
        missing = [k for k in ("file_name", "positive", "negative") if k not in item]
        if missing:
            raise ValueError(f"{path}: entry {i} lacks the key(s) {missing} (needs file_name, positive, negative)")
        negatives = item["negative"]
        if not isinstance(negatives, list) or not all(isinstance(n, str) for n in negatives):
            raise ValueError(f"{path}: entry {i}: 'negative' must be a list of {n_negatives} captions")
        if len(negatives) != n_negatives:
            raise ValueError(f"{path}: entry {i} has {len(negatives)} negatives, expected {n_negatives}")
        if not isinstance(item["positive"], str) or not item["positive"].strip():
            raise ValueError(f"{path}: entry {i}: 'positive' must be a non-empty caption")
        image_path = root / str(item["file_name"])
        if check_files and not image_path.is_file():
            raise ValueError(f"{path}: entry {i}: image file {image_path} does not exist")
        entries.append(FDRDEntry(str(item["file_name"]), item["positive"], list(negatives), image_path))
    return entries


class FDRDSource:
    """Training batches from an FDRD-style JSON (the 4 category-swap negatives are weighted as siblings)."""

    def __init__(self, json_path: str | os.PathLike[str], image_root=None, size: int = 64,
                 config: DualPromptConfig | None = None) -> None:
        self.entries = read_fdrd_json(json_path, image_root)
        self.size = size
        self.config = config or DualPromptConfig()

    def __len__(self) -> int:
        return len(self.entries)

    def batch(self, seed: int, step: int, batch_size: int) -> RetrievalBatch:
        rng = random.Random(seed * 1_000_003 + step)
        picks = rng.sample(range(len(self.entries)), min(batch_size, len(self.entries)))
        chosen = [self.entries[i] for i in picks]
        return RetrievalBatch(
            images=torch.stack([_load_image(e.path, self.size) for e in chosen]),
            positives=[e.positive for e in chosen],
            negatives=[list(e.negatives) for e in chosen],
            negative_weights=torch.full((len(chosen), FDRD_NEGATIVES), self.config.same_family_weight),
        )


class FolderSource:
    """Images with same-named ``.txt`` captions in a folder (in-batch negatives only)."""

    def __init__(self, folder: str | os.PathLike[str], size: int = 64) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"dataset folder {folder} does not exist")
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if len(images) < 2:
            raise ValueError(f"{folder} holds {len(images)} images; need at least 2 images with .txt captions")
        missing = [p.name for p in images if not p.with_suffix(".txt").is_file()]
        if missing:
            raise ValueError(f"{folder}: images without a same-named .txt caption: {missing[:5]}")
        self.items = [(p, p.with_suffix(".txt").read_text(encoding="utf-8").strip()) for p in images]
        self.size = size

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, seed: int, step: int, batch_size: int) -> RetrievalBatch:
        rng = random.Random(seed * 1_000_003 + step)
        chosen = [self.items[i] for i in rng.sample(range(len(self.items)), min(batch_size, len(self.items)))]
        return RetrievalBatch(
            images=torch.stack([_load_image(p, self.size) for p, _ in chosen]), positives=[c for _, c in chosen]
        )


# ----- training -------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    dual: DualPrompt
    losses: list[float]
    steps_done: int
    interrupted: bool = False


def train_dual_prompt(
    vlm: VisionLanguageModel,
    source: RetrievalSource,
    config: DualPromptConfig | None = None,
    *,
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 5e-3,
    seed: int = 0,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 50,
    callback: Callable[[int, int, float], bool | None] | None = None,
    progress: bool = True,
    bank_batches: int = 4,
    init_prompts: Any = None,
) -> TrainResult:
    """Train DCAR prompts on a frozen ``vlm``; batches come from ``source.batch(seed, step, batch_size)``.

    ``init_prompts``: a pretrained prompt bundle (RPP, :mod:`.prompt_pretraining`; an object or a path) to start
    from, like ``config.init_from`` but also for a bundle held in memory (e.g. a ComfyUI node's input).

    Deterministic for a seed. With ``checkpoint_path`` the state is saved every ``checkpoint_every`` steps,
    on interruption and at the end, and an existing checkpoint is resumed (same result as an uninterrupted
    run). ``callback(step, steps, loss)`` runs after each step; returning ``False`` stops early
    (``interrupted=True``), an exception it raises propagates after the state has been saved.

    Runs with inference mode off and gradients on (so it works inside a ComfyUI node); the VLM's weights
    must be ordinary tensors (clone a model that was loaded under ``torch.inference_mode()``).
    """
    with torch.inference_mode(False), torch.enable_grad():
        return _train(vlm, source, config, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                      checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every, callback=callback,
                      progress=progress, bank_batches=bank_batches, init_prompts=init_prompts)


def _train(vlm, source, config, *, steps, batch_size, lr, seed, checkpoint_path, checkpoint_every, callback,
           progress, bank_batches, init_prompts) -> TrainResult:
    config = config or DualPromptConfig()
    sample = source.batch(seed, 20_000_000, min(batch_size, 32))
    dual = DualPrompt.for_vlm(vlm, config, seed=seed, sample=sample)
    if init_prompts is not None:
        from .prompt_pretraining import init_dual_prompt_from_bundle

        init_dual_prompt_from_bundle(dual, init_prompts, vlm)
    params = [p for p in dual.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    frozen = [(p, p.requires_grad) for p in vlm.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    vlm.eval()
    try:
        loop = run_resumable_loop(
            dual,
            optimizer,
            lambda step: dual.loss(vlm, source.batch(seed, step, batch_size)),
            steps=steps,
            seed=seed,
            backbone=vlm.name,
            checkpoint_path=checkpoint_path,
            checkpoint_every=checkpoint_every,
            callback=callback,
            progress=progress,
            desc="DCAR",
        )
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    losses, steps_done, interrupted = loop.losses, loop.steps_done, loop.interrupted
    dual.eval()
    with torch.no_grad():
        dual.project_to_vocabulary(vlm)
        if config.token_reweighting and config.bank_size:
            images = torch.cat([source.batch(seed, 10_000_000 + k, batch_size).images for k in range(bank_batches)])
            dual.refresh_bank(vlm, images)
    return TrainResult(dual, losses, steps_done, interrupted)


# ----- retrieval scoring ----------------------------------------------------------------------------------------
@torch.no_grad()
def encode_gallery(vlm: VisionLanguageModel, dual: DualPrompt | None, images=None, texts=None, chunk: int = 256):
    """Normalised features of ``images`` and/or ``texts`` (zero-shot without a dual prompt)."""
    img = txt = None
    if images is not None:
        if images.shape[0] == 0:
            raise ValueError("the image batch is empty")
        parts = [images[i : i + chunk] for i in range(0, images.shape[0], chunk)]
        img = torch.cat([vlm.encode_image(p) if dual is None else dual.encode_images(vlm, p) for p in parts])
    if texts is not None:
        texts = list(texts)
        if not texts:
            raise ValueError("the text list is empty")
        parts = [texts[i : i + chunk] for i in range(0, len(texts), chunk)]
        txt = torch.cat([vlm.encode_text(p) if dual is None else dual.encode_texts(vlm, p) for p in parts])
    return img, txt


def similarity(vlm: VisionLanguageModel, images: torch.Tensor, texts: Sequence[str],
               dual: DualPrompt | None = None) -> torch.Tensor:
    """Cosine similarities ``[N_images, N_texts]``."""
    if dual is not None:
        dual.check_vlm(vlm)
    img, txt = encode_gallery(vlm, dual, images, texts)
    return img @ txt.T


def rank_images(vlm: VisionLanguageModel, images: torch.Tensor, text: str, dual: DualPrompt | None = None):
    """``(scores [N], order [N])``: the images' similarity to ``text`` and their indices, best first."""
    scores = similarity(vlm, images, [text], dual)[:, 0]
    return scores, torch.argsort(scores, descending=True, stable=True)


def rank_texts(vlm: VisionLanguageModel, images: torch.Tensor, texts: Sequence[str], dual: DualPrompt | None = None):
    """``(scores [M], order [M])``: each text's similarity to the images (mean over a batch), best first."""
    scores = similarity(vlm, images, texts, dual).mean(dim=0)
    return scores, torch.argsort(scores, descending=True, stable=True)


# ----- files ----------------------------------------------------------------------------------------------------
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
        dual = DualPrompt(
            config, text_width=int(widths["text"]), vision_width=int(widths["vision"]),
            text_layers=int(layers["text"]), vision_layers=int(layers["vision"]), embed_dim=int(widths["embed"]),
            backbone=backbone,
        )
        dual.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("dual.")})
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
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


__all__ = [
    "DualPrompt",
    "DualPromptConfig",
    "FDRDEntry",
    "FDRDSource",
    "FolderSource",
    "RetrievalBatch",
    "TrainResult",
    "WorldSource",
    "category_aware_contrastive_loss",
    "category_match_weights",
    "encode_gallery",
    "load_dual_prompt",
    "mi_token_weights",
    "rank_images",
    "rank_texts",
    "read_fdrd_json",
    "save_dual_prompt",
    "similarity",
    "token_mutual_information",
    "train_dual_prompt",
]
