"""The DCAR module (:class:`DualPrompt`: deep prompts on both towers of a frozen VLM, the MI token re-weighting,
the category-aware loss, the vocabulary projection for SD export), its start from RPP pretrained prompts
(:func:`init_dual_prompt_from_bundle`) and retrieval scoring with it (:func:`similarity`, :func:`rank_images`,
:func:`rank_texts`)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.artifacts import BackboneMismatchError
from ..core.data import RetrievalBatch
from ..core.deep_prompts import TEXT_KEY, DeepPrompts, encode_image_prompted, encode_text_prompted
from ..core.distributed import SINGLE_PROCESS, DataParallel
from ..core.learned_prompt import LearnedPrompt
from ..core.vlm import VisionLanguageModel, clip_tokenizer
from ..pretraining.io import PretrainedPromptBundle, as_bundle, init_deep_prompts_from_bundle
from .config import DualPromptConfig
from .losses import category_aware_contrastive_loss, category_match_weights, mi_token_weights


# ----- the module ------------------------------------------------------------------------------------------------
class DualPrompt(nn.Module):
    """DCAR prompts for one VLM: ``prompts`` (:class:`~..core.deep_prompts.DeepPrompts`), the attribute-term scale
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
        config = config.resolved(text_layers, vision_layers)  # automatic depths for this VLM (files record them)
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
        prompts close to the unprompted model (:meth:`~..core.deep_prompts.DeepPrompts.init_from_vlm`, measured on
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
        if config.init_from:  # RPP pretrained prompts as the initialisation (pretraining/)
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
        enc = encode_text_prompted(vlm, [text], self.prompts, return_tokens=True)
        tokens = F.normalize(enc.token_features, dim=-1)
        weights = mi_token_weights(tokens, enc.content_mask, self.bank(), vlm.logit_scale)[0]
        tok = clip_tokenizer(vlm.context_length)
        ids = tok.encode(text)[: int(enc.content_mask[0].sum())]
        offset = 1 + self.prompts.n_text
        return [(tok.decode([i]).strip(), float(weights[offset + k])) for k, i in enumerate(ids)]

    # ----- training pieces ----------------------------------------------------------------------------------
    def loss(
        self, vlm: VisionLanguageModel, batch: RetrievalBatch, parallel: DataParallel = SINGLE_PROCESS
    ) -> torch.Tensor:
        """The training loss on one batch (category-aware when enabled, else plain symmetric InfoNCE). Under
        ``parallel`` each rank encodes its part of the batch and the features are gathered, so every rank
        computes the whole batch's loss (:meth:`~..core.distributed.DataParallel.gather`)."""
        cfg = self.config
        part = parallel.part(len(batch.positives))
        images = parallel.gather(self.encode_images(vlm, batch.images[part]))
        bank = images.detach() if cfg.token_reweighting else None
        positives = parallel.gather(self.encode_texts(vlm, batch.positives[part], bank=bank))
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
            flat = [n for row in batch.negatives[part] for n in row[:k]]
            negatives = parallel.gather(self.encode_texts(vlm, flat, bank=bank).view(len(flat) // k, k, -1))
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


# ----- starting from RPP pretrained prompts ------------------------------------------------------------------------
def init_dual_prompt_from_bundle(
    dual: DualPrompt, bundle: PretrainedPromptBundle | str | os.PathLike[str], vlm: VisionLanguageModel | None = None
) -> dict[str, int]:
    """Initialise a DCAR :class:`DualPrompt` from a pretrained bundle (what ``DualPromptConfig(init_from=path)``
    does in ``DualPrompt.for_vlm``); the bundle must be for the dual prompt's backbone."""
    bundle = as_bundle(bundle, vlm)
    if bundle.backbone != dual.backbone:
        raise BackboneMismatchError(
            f"the pretrained prompts were made for the VLM '{bundle.backbone}', the dual prompt is for "
            f"'{dual.backbone}': pretrain prompts on this model"
        )
    return init_deep_prompts_from_bundle(dual.prompts, bundle)


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
