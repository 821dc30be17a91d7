"""WorldCLIP: the procedural world's vision-language backbone, trained from scratch (issue "Offline world").

A small open_clip ``CLIP`` (:class:`~promptweave.prompt_modules.core.vlm.VisionLanguageModel`) is trained with the
symmetric InfoNCE contrastive loss of CLIP (Radford et al. 2021, "Learning Transferable Visual Models From
Natural Language Supervision", sec. 2.3 and fig. 3) on image/caption pairs of the world's ``train`` split, all
render styles mixed, with category-swap hard negatives (NegCLIP, Yuksekgonul et al. 2023). Its ViT image
tower is first pre-trained to name the shape of single-object scenes (LiT-style supervised image tower,
Zhai et al. 2022): from scratch, the contrastive loss alone teaches colours but no shapes within a CPU
budget (see :class:`WorldCLIPTrainConfig`). Batches are rendered on the fly with
:func:`~.dataset.render_batch` from seeds derived from ``seed + step``, so a run resumed from a checkpoint
(:mod:`~promptweave.prompt_modules.core.checkpointing`) equals an uninterrupted one. The optimiser is AdamW with
linear warmup and cosine decay.

:func:`evaluate_worldclip` measures zero-shot category and colour accuracy on single-object scenes (the
shared helpers of :mod:`.zero_shot`) and image<->caption recall@1.

Command line::

    python -m promptweave.world train clip --out weights/worldclip.safetensors --threads 1
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.artifacts import read_safetensors, save_safetensors_atomic
from ..core.checkpointing import load_training_state, save_training_state
from ..core.vlm import VisionLanguageModel, VLMConfig, get_config, load_vlm, save_vlm
from .captions import NUM_HARD_NEGATIVES, HardNegative
from .dataset import render_batch, style_for_seed
from .scene import Scene, sample_scene, split_seed_range
from .vocabulary import CATEGORY_NAMES, COLOUR_NAMES, FAMILIES, MAX_OBJECTS, STYLE_PHRASES, STYLES
from .web_captions import BASIC_COLOUR_NAMES, WebCaptionConfig, basic_colour_ids, web_caption
from .zero_shot import (
    category_prompts,
    colour_prompts,
    scenes_to_images,
    single_object_scenes,
    style_prompts,
    zero_shot_predict,
)

#: The shipped WorldCLIP shape: a 64 px ViT (patch 8) and a causal text transformer, both 128 wide.
WORLDCLIP_CONFIG = VLMConfig(
    name="worldclip",
    embed_dim=128,
    image_size=64,
    patch_size=8,
    vision_width=128,
    vision_layers=4,
    vision_heads=4,
    text_width=128,
    text_layers=3,
    text_heads=4,
)

#: WorldCLIP 2: the same ViT behind a convolutional stem (:class:`~promptweave.prompt_modules.core.vlm.ConvStem`,
#: 32-64-128 channels): the same 8x8 token grid, so every prompt method runs on it unchanged.
WORLDCLIP2_CONFIG = dataclasses.replace(WORLDCLIP_CONFIG, name="worldclip2", conv_stem=(32, 64, 128))

#: WorldCLIP-web: WorldCLIP 2's shape, pretrained on web-like captions (:mod:`.web_captions`, ``captions="web"``).
WORLDCLIP_WEB_CONFIG = dataclasses.replace(WORLDCLIP2_CONFIG, name="worldclip-web")

WORLD_VLM_CONFIGS = {c.name: c for c in (WORLDCLIP_CONFIG, WORLDCLIP2_CONFIG, WORLDCLIP_WEB_CONFIG)}

#: Caption sources of a training run: the world's own captions, or web-like alt-text (:mod:`.web_captions`).
CAPTION_SOURCES = ("world", "web")
#: Classes of the temporary label heads (:attr:`WorldCLIPTrainConfig.label_set`).
LABEL_SETS = ("auto", "fine", "coarse")

#: Keys of the dict :func:`evaluate_worldclip` returns.
METRIC_KEYS = ("zero_shot_acc", "zero_shot_colour_acc", "zero_shot_style_acc", "i2t_r1", "t2i_r1")


@dataclass
class WorldCLIPTrainConfig:
    """Everything that determines a WorldCLIP training run (stored in checkpoints and in the weights file).

    ``vlm`` is a :data:`~promptweave.prompt_modules.core.vlm.VLM_PRESETS` name, ``"worldclip"``
    (:data:`WORLDCLIP_CONFIG`) or a :meth:`VLMConfig.to_dict` dict. The learning rate warms up linearly over
    ``warmup`` steps, then follows a cosine down to ``lr * min_lr_ratio`` at ``steps``. ``hard_negatives``
    category-swap captions per image (:func:`~.captions.hard_negatives`) join the image->text candidates, as in
    NegCLIP (Yuksekgonul et al. 2023): without them, colours alone tell most in-batch captions apart and the
    shapes' names are learnt slowly. A ``partial_captions`` fraction of the captions is replaced by a partial
    description made of the scene's referring expressions (each object named with only the attributes that
    single it out, e.g. "the ring" or "the big star and the cyan down arrow"): the full captions always name
    every colour, and a model trained on them alone matches colour-free text such as "a picture of a ring."
    poorly. A ``style_captions`` fraction of the captions (and of their negatives) starts with the phrase
    naming the image's render style (:data:`~.vocabulary.STYLE_PHRASES`, e.g. "a neon glow picture. ..."),
    so that a style can be named in text: domain adaptation steers a generator towards such a phrase.

    The first ``pretrain_steps`` steps train the image tower alone to name the category of single-object
    scenes (``pretrain_pool`` of them, ``pretrain_batch_size`` a batch; a temporary linear head on the image
    embedding, cross-entropy), as supervised image towers are pre-trained before contrastive tuning in LiT
    (Zhai et al. 2022); the text tower stays at its initialisation meanwhile and both towers train
    contrastively afterwards (the learning rate warms up again over ``warmup`` steps), the category loss
    staying on with weight ``category_weight`` (soft targets over the scene's objects). Why: trained
    contrastively from scratch, both towers settle on colour, size and texture and the text tower learns to
    ignore the category words while the ViT has not learnt any shape yet; in our pilots the image features
    held no shape information (linear probe at chance) after 800 contrastive steps, with or without a
    locked text tower, while a supervised ViT leaves that plateau after ~200 steps. With ``colour_head``
    a second temporary head names the objects' colours too (multi-task): a tower pre-trained on shapes alone
    kept too little colour for the contrastive phase to recover (zero-shot colour accuracy 0.40 against 0.89
    without any pre-training, shape accuracy 0.60 against chance).

    After ``steps``, ``image_tune_steps`` more contrastive steps train the image tower alone against the
    frozen text tower (LiT's locked tower, Zhai et al. 2022, the other way round), with their own cosine
    learning rate from ``image_tune_lr``: the text features, which WorldGen is conditioned on, stay as they
    were, while the image features align better with the category words. ``image_tune_style_captions``
    (default: ``style_captions``) is the style-named fraction of those steps: a jointly trained text tower can
    leave two style phrases close together (cosine 0.98 for "a flat illustration" and "a pixel mosaic" in
    the WorldCLIP 2 pilot), and more style-named captions give the image tower more signal to reach their
    small difference.

    ``text_tower_from`` names a WorldCLIP file whose text tower and temperature this run starts from. With
    ``lock_text_tower`` they stay locked from the first step to the last, so that only the image tower
    trains (LiT, Zhai et al. 2022): a new image tower for an existing text space, recorded as the model's
    ``text_space``; WorldGen is conditioned on that text space, so it works with the new model unchanged.
    Without it the text tower is only initialised from the file and trains in the contrastive steps.

    ``captions="web"`` trains on web-like captions instead (:func:`~.web_captions.web_caption` with
    :class:`~.web_captions.WebCaptionConfig`'s defaults): families far more often than fine categories, basic
    colour words, some styles named, 20% wrong or unrelated text. No curated hard negatives exist for such
    text (``hard_negatives`` must be 0; ``partial_captions`` and the style fractions do not apply), and the
    label heads name what a coarse label set would give: the scene's shape families and basic colours.
    ``web_captions`` overrides :class:`~.web_captions.WebCaptionConfig`'s fields (``{"fine_rate": 0.8}``).

    ``label_set`` picks the label heads' classes: ``"auto"`` (fine for the world's captions, coarse for web
    captions), ``"fine"`` (fine categories and the 20 colours) or ``"coarse"`` (families and basic colours).
    Fine labels with web captions give the image tower a supervised start, as LiT's image towers pretrained
    on labelled images (Zhai et al. 2022), while the text tower learns names only from the web text.
    """

    vlm: str | dict[str, Any] = "worldclip"
    steps: int = 2400
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 50
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    hard_negatives: int = 2
    hard_negative_weight: float = 1.0
    partial_captions: float = 0.25
    style_captions: float = 0.3
    pretrain_steps: int = 1000
    pretrain_batch_size: int = 128
    pretrain_pool: int = 8192
    category_weight: float = 0.5
    colour_head: bool = True
    image_tune_steps: int = 1600
    image_tune_lr: float = 1e-3
    image_tune_style_captions: float | None = None
    text_tower_from: str = ""
    lock_text_tower: bool = True
    seed: int = 0
    styles: tuple[str, ...] = field(default_factory=lambda: tuple(STYLES))
    image_size: int = 64
    checkpoint_every: int = 100
    captions: str = "world"
    web_captions: dict[str, Any] = field(default_factory=dict)
    label_set: str = "auto"

    def __post_init__(self) -> None:
        self.styles = tuple(self.styles)
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        unknown = [s for s in self.styles if s not in STYLES]
        if unknown or not self.styles:
            raise ValueError(f"styles must be a non-empty subset of {STYLES}, got {self.styles}")
        if self.steps < 0 or self.batch_size < 2 or self.warmup < 0 or self.checkpoint_every < 1:
            raise ValueError("need steps >= 0, batch_size >= 2, warmup >= 0 and checkpoint_every >= 1")
        if not 0 <= self.pretrain_steps <= self.steps:
            raise ValueError(f"pretrain_steps ({self.pretrain_steps}) must be in 0..steps ({self.steps})")
        fractions = (self.partial_captions, self.style_captions, self.style_caption_fraction(self.steps))
        if not all(0.0 <= f <= 1.0 for f in fractions):
            raise ValueError("partial_captions, style_captions and image_tune_style_captions are fractions in [0, 1]")
        if not 0 <= self.hard_negatives <= NUM_HARD_NEGATIVES:
            raise ValueError(f"hard_negatives must be in 0..{NUM_HARD_NEGATIVES}")
        if self.captions not in CAPTION_SOURCES:
            raise ValueError(f"captions must be one of {CAPTION_SOURCES}, got {self.captions!r}")
        if self.captions == "web" and self.hard_negatives:
            raise ValueError("web captions have no curated hard negatives: use hard_negatives=0")
        if self.label_set not in LABEL_SETS:
            raise ValueError(f"label_set must be one of {LABEL_SETS}, got {self.label_set!r}")
        self.web_caption_config()  # fail early on an unknown field
        self.vlm_config()  # fail early on an unknown preset

    def web_caption_config(self) -> WebCaptionConfig:
        """The web caption source of this run: :class:`~.web_captions.WebCaptionConfig` with ``web_captions``."""
        fields = {f.name for f in dataclasses.fields(WebCaptionConfig)}
        unknown = sorted(set(self.web_captions) - fields)
        if unknown:
            raise ValueError(f"web_captions: unknown field(s) {unknown}; known: {sorted(fields)}")
        defaults = WebCaptionConfig()
        typed = {k: tuple(v) if isinstance(getattr(defaults, k), tuple) else v for k, v in self.web_captions.items()}
        return dataclasses.replace(defaults, **typed)  # lists from a checkpoint's JSON back to tuples

    def fine_labels(self) -> bool:
        """Whether the label heads name fine categories and colours (see ``label_set``)."""
        return self.label_set == "fine" or (self.label_set == "auto" and self.captions == "world")

    def label_sizes(self) -> tuple[int, int]:
        """Classes of the temporary shape and colour heads: fine categories and colours for the world's captions,
        families and basic colours for web captions."""
        if self.fine_labels():
            return len(CATEGORY_NAMES), len(COLOUR_NAMES)
        return len(FAMILIES), len(BASIC_COLOUR_NAMES)

    def style_caption_fraction(self, step: int) -> float:
        """The style-named fraction of batch ``step``'s captions (``image_tune_style_captions`` from ``steps`` on,
        when set)."""
        if step >= self.steps and self.image_tune_style_captions is not None:
            return self.image_tune_style_captions
        return self.style_captions

    def vlm_config(self) -> VLMConfig:
        """The model shape this run trains."""
        if isinstance(self.vlm, dict):
            return VLMConfig.from_dict(self.vlm)
        if self.vlm in WORLD_VLM_CONFIGS:
            return WORLD_VLM_CONFIGS[self.vlm]
        return get_config(self.vlm)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["styles"], data["betas"] = list(self.styles), list(self.betas)
        data["web_captions"] = json.loads(json.dumps(self.web_captions))  # tuples as lists, as checkpoints store
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorldCLIPTrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# ----- data -------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def single_object_seeds(seed: int, n: int) -> tuple[int, ...]:
    """The first ``n`` train-split seeds, from an offset given by ``seed``, whose scene holds one object."""
    train = split_seed_range("train")
    start = train.start + int(np.random.default_rng([seed, 3]).integers(0, len(train) // 2))
    found: list[int] = []
    candidate = start
    while len(found) < n:
        if len(sample_scene(candidate).objects) == 1:
            found.append(candidate)
        candidate += 1
    return tuple(found)


def batch_seeds(config: WorldCLIPTrainConfig, step: int) -> list[int]:
    """The train-split scene seeds of batch ``step`` (a function of ``config.seed + step`` only): any scene
    in the contrastive phase, single-object scenes (:func:`single_object_seeds`) in the pre-training."""
    rng = np.random.default_rng(config.seed + step)
    if step < config.pretrain_steps:
        pool = single_object_seeds(config.seed, config.pretrain_pool)
        return [pool[int(k)] for k in rng.integers(0, len(pool), size=config.pretrain_batch_size)]
    train = split_seed_range("train")
    offsets = rng.integers(0, len(train), size=config.batch_size)
    return [train.start + int(o) for o in offsets]


class TrainingBatch(NamedTuple):
    """One training batch: ``images`` ``[B, 3, H, W]`` in 0..1, ``captions`` (B), ``negatives`` (B * k
    hard negatives, image-major), ``category_ids`` and ``colour_ids`` ``[B, MAX_OBJECTS]`` (-1 padded)."""

    images: torch.Tensor
    captions: list[str]
    negatives: list[str]
    category_ids: torch.Tensor
    colour_ids: torch.Tensor


def training_batch(config: WorldCLIPTrainConfig, step: int) -> TrainingBatch:
    """Batch ``step``: images (styles mixed over ``config.styles``), their captions (a
    ``config.partial_captions`` fraction of them partial, see :func:`partial_caption`),
    ``config.hard_negatives`` category-swap negatives per image (a partial caption gets partial negatives)
    and the objects' category ids; a ``config.style_captions`` fraction of the images get their captions and
    negatives introduced by their style's phrase (:func:`styled_caption`).
    Every random choice is drawn from ``seed + step``."""
    seeds = batch_seeds(config, step)
    styles = [style_for_seed(s, config.styles) for s in seeds]
    batch = render_batch(seeds, size=config.image_size, style=styles)
    scenes: list[Scene] = batch["scenes"]
    if config.captions == "web":
        web = web_training_batch(config, step, batch["image"], scenes)
        if config.fine_labels():
            web = web._replace(category_ids=batch["category_ids"], colour_ids=batch["colour_ids"])
        return web
    partial = np.random.default_rng([config.seed + step, 2]).random(len(scenes)) < config.partial_captions
    captions = [partial_caption(sc) if p else sc.caption for sc, p in zip(scenes, partial, strict=True)]
    negatives: list[str] = []
    if config.hard_negatives:
        rng = np.random.default_rng([config.seed + step, 1])
        for scene, is_partial in zip(scenes, partial, strict=True):
            edits = scene.hard_negative_edits
            for k in rng.permutation(len(edits))[: config.hard_negatives]:
                edit = edits[int(k)]
                negatives.append(partial_caption(scene, edit) if is_partial else edit.text)
    named = np.random.default_rng([config.seed + step, 4]).random(len(scenes)) < config.style_caption_fraction(step)
    captions = [styled_caption(c, st) if n else c for c, st, n in zip(captions, styles, named, strict=True)]
    k = config.hard_negatives
    negatives = [styled_caption(c, styles[i // k]) if named[i // k] else c for i, c in enumerate(negatives)]
    return TrainingBatch(batch["image"], captions, negatives, batch["category_ids"], batch["colour_ids"])


def _padded(ids: Sequence[Sequence[int]]) -> torch.Tensor:
    out = torch.full((len(ids), MAX_OBJECTS), -1, dtype=torch.long)
    for row, values in enumerate(ids):
        out[row, : len(values)] = torch.tensor(values, dtype=torch.long)
    return out


def web_training_batch(
    config: WorldCLIPTrainConfig, step: int, images: torch.Tensor, scenes: list[Scene]
) -> TrainingBatch:
    """Batch ``step`` with web-like captions (:func:`~.web_captions.web_caption`; a wrong caption describes the
    next scene of the batch), no hard negatives, and family and basic-colour labels for the heads."""
    web = config.web_caption_config()
    others = scenes[1:] + scenes[:1]
    captions = [web_caption(sc, other, web, config.seed + step) for sc, other in zip(scenes, others, strict=True)]
    families = _padded([sc.family_ids for sc in scenes])
    colours = _padded([basic_colour_ids(sc) for sc in scenes])
    return TrainingBatch(images, captions, [], families, colours)


def styled_caption(caption: str, style: str) -> str:
    """``caption`` introduced by the phrase naming ``style``: ``"a neon glow picture. A red star ..."``."""
    return f"{STYLE_PHRASES[style]}. {caption}"


def partial_caption(scene: Scene, negative: HardNegative | None = None) -> str:
    """The scene described by its objects' referring expressions (``"the ring"``, ``"the big star and the cyan
    down arrow"``): every object is named, each with only the attributes that single it out in the scene.
    With ``negative`` (one of ``scene.hard_negative_edits``), that edit's object is named with the swapped
    category instead. Falls back to the full caption (or the edit's text) when an object has no referring
    expression."""
    texts = dict(scene.referring)
    if len(texts) != len(scene.objects):
        return scene.caption if negative is None else negative.text
    parts = [texts[k] for k in range(len(scene.objects))]
    if negative is not None:  # the referent's own category comes first in its phrase
        k = negative.object_index
        parts[k] = re.sub(rf"\b{re.escape(negative.original)}\b", negative.replacement, parts[k], count=1)
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def encode_captions(vlm: VisionLanguageModel, captions: Sequence[str]) -> torch.Tensor:
    """Normalised text features, running the text tower only up to the longest caption's end token.

    The text tower is causal and reads its output at the end-of-text token, so dropping the padding after
    the longest caption gives the same features as :meth:`VisionLanguageModel.encode_text` at a fraction of
    the cost (captions are ~20-50 tokens of the 77-token context).
    """
    tokens = vlm.tokenize(list(captions))
    eot = vlm.eot_index(tokens)
    length = int(eot.max()) + 1
    return vlm.encode_text_embeddings(vlm.embed_tokens(tokens[:, :length]), eot)


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    label_smoothing: float = 0.0,
    negative_features: torch.Tensor | None = None,
    hard_negative_weight: float = 0.0,
) -> torch.Tensor:
    """Symmetric InfoNCE loss of CLIP (Radford et al. 2021, fig. 3): the mean of the image->text and
    text->image cross-entropies over the in-batch similarity matrix of normalised features; pair ``i`` of the
    batch is the positive of row/column ``i``.

    ``negative_features`` ``[B * k, D]`` (``k`` hard negatives per image, image-major) are appended to the
    image->text candidates (NegCLIP, Yuksekgonul et al. 2023); with ``hard_negative_weight`` > 0 a second term,
    the cross-entropy of each image over its own caption and its ``k`` negatives only, is added with that
    weight: it isolates the category signal that the in-batch softmax dilutes among easy negatives.
    """
    logits = logit_scale * image_features @ text_features.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    i2t_logits = logits
    focus = None
    if negative_features is not None and negative_features.shape[0]:
        negative_logits = logit_scale * image_features @ negative_features.T
        i2t_logits = torch.cat([logits, negative_logits], dim=1)
        if hard_negative_weight > 0:
            batch = image_features.shape[0]
            own = negative_logits.view(batch, batch, -1)[labels, labels]  # [B, k]: image i vs its own negatives
            focus = F.cross_entropy(torch.cat([logits.diagonal()[:, None], own], dim=1), torch.zeros_like(labels))
    i2t = F.cross_entropy(i2t_logits, labels, label_smoothing=label_smoothing)
    t2i = F.cross_entropy(logits.T, labels, label_smoothing=label_smoothing)
    loss = (i2t + t2i) / 2
    return loss if focus is None else loss + hard_negative_weight * focus


def batch_loss(
    vlm: VisionLanguageModel,
    images: torch.Tensor,
    captions: Sequence[str],
    negatives: Sequence[str] = (),
    label_smoothing: float = 0.0,
    hard_negative_weight: float = 0.0,
    *,
    label_heads: Sequence[tuple[nn.Linear, torch.Tensor]] = (),
    label_weight: float = 0.0,
) -> torch.Tensor:
    """Contrastive loss of ``vlm`` on one batch of image/caption pairs (plus hard negatives, see
    :func:`contrastive_loss`), plus ``label_weight`` times the :func:`category_loss` of each
    ``(head, ids)`` of ``label_heads`` (the temporary category and colour heads)."""
    text = encode_captions(vlm, [*captions, *negatives])
    n = len(captions)
    embeddings = vlm.encode_image(images, normalize=False)
    loss = contrastive_loss(
        F.normalize(embeddings, dim=-1), text[:n], vlm.logit_scale, label_smoothing, text[n:], hard_negative_weight
    )
    if label_weight > 0:
        for head, ids in label_heads:
            loss = loss + label_weight * category_loss(head, embeddings, ids)
    return loss


def category_loss(head: nn.Linear, image_embeddings: torch.Tensor, category_ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``head(image_embeddings)`` against the scene's label distribution (each object of
    the scene counts once; ``category_ids`` ``[B, MAX_OBJECTS]`` is padded with -1). Used for the category
    head and, with colour ids, for the colour head."""
    valid = category_ids >= 0
    target = torch.zeros(category_ids.shape[0], head.out_features, device=image_embeddings.device)
    target.scatter_add_(1, category_ids.clamp(min=0), valid.float())
    target = target / target.sum(dim=1, keepdim=True)
    return F.cross_entropy(head(image_embeddings), target)


def learning_rate(config: WorldCLIPTrainConfig, step: int) -> float:
    """Linear warmup to ``lr`` over ``warmup`` steps, then cosine decay to ``lr * min_lr_ratio`` at ``steps``;
    the contrastive phase (from ``pretrain_steps`` on) warms up again over ``warmup`` steps. The image-tuning
    steps after ``steps`` follow their own cosine from ``image_tune_lr`` to ``image_tune_lr * min_lr_ratio``."""
    if step >= config.steps:
        top, low = config.image_tune_lr, config.image_tune_lr * config.min_lr_ratio
        progress = (step - config.steps) / max(1, config.image_tune_steps)
        return low + (top - low) * 0.5 * (1.0 + math.cos(math.pi * progress))
    floor = config.lr * config.min_lr_ratio
    span = max(1, config.steps - config.warmup)
    progress = min(1.0, max(0.0, (step - config.warmup) / span))
    lr = floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    since = step - config.pretrain_steps if 0 < config.pretrain_steps <= step else step
    if config.warmup and since < config.warmup:
        lr *= (since + 1) / config.warmup
    return lr


def make_optimizer(model: nn.Module, config: WorldCLIPTrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on gains, biases, embeddings of positions/class token and the logit scale."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        skip = param.ndim < 2 or "positional_embedding" in name or "class_embedding" in name
        (no_decay if skip else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=1e-6)


# ----- training ---------------------------------------------------------------------------------------------
# fields a resumed run may change
_RESUME_FREE = {"steps", "checkpoint_every", "image_tune_steps", "image_tune_lr", "image_tune_style_captions"}


def _check_resume(found: dict[str, Any], config: WorldCLIPTrainConfig, path: Path) -> None:
    if not found:
        return
    mine = config.to_dict()
    diff = sorted(k for k in mine if k not in _RESUME_FREE and k in found and found[k] != mine[k])
    if diff:
        raise ValueError(
            f"checkpoint {path} was written by a run with other settings ({', '.join(diff)}); "
            "use the same settings or another checkpoint path"
        )


def train_worldclip(
    config: WorldCLIPTrainConfig,
    out_path: str | os.PathLike[str] | None,
    *,
    checkpoint_path: str | os.PathLike[str] | None = None,
    progress: bool = True,
    threads: int | None = None,
    eval_n: int = 500,
    fp16: bool = True,
) -> VisionLanguageModel:
    """Train WorldCLIP with the CLIP contrastive loss (Radford et al. 2021) and return the float model.

    The first ``config.pretrain_steps`` steps pre-train the image tower on the scenes' categories (see
    :class:`WorldCLIPTrainConfig`). With ``checkpoint_path`` the full training state is saved every
    ``config.checkpoint_every`` steps and at the end; if the file exists the run continues from it (same
    result as never stopping). At the end the weights go to ``out_path`` (atomic, fp16 unless ``fp16=False``)
    with the training config and the test-split metrics of the stored weights (:func:`evaluate_worldclip`
    with ``n=eval_n``; ``eval_n=0`` skips them) in the metadata. ``threads`` sets ``torch.set_num_threads``
    (default: torch's choice).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    vlm = VisionLanguageModel(config.vlm_config(), seed=config.seed)
    locked_text = bool(config.text_tower_from) and config.lock_text_tower
    if config.text_tower_from:
        source = load_vlm(config.text_tower_from)
        copy_text_tower(source, vlm)
        if locked_text:
            vlm.config = dataclasses.replace(vlm.config, text_space=source.text_space)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        n_shapes, n_colours = config.label_sizes()
        head = nn.Linear(vlm.embed_dim, n_shapes)
        colour_head = nn.Linear(vlm.embed_dim, n_colours) if config.colour_head else None
    modules = {"clip": vlm.clip, "category_head": head}
    if colour_head is not None:
        modules["colour_head"] = colour_head
    trained = nn.ModuleDict(modules)
    optimizer = make_optimizer(trained, config)
    start = 0
    ckpt = Path(checkpoint_path) if checkpoint_path is not None else None
    if ckpt is not None and ckpt.exists():
        start, extra = load_training_state(ckpt, trained, optimizer, backbone=vlm.name)
        _check_resume(extra.get("train_config", {}), config, ckpt)
        if progress:
            print(f"resuming WorldCLIP from {ckpt} at step {start}", file=sys.stderr)

    def checkpoint(step: int) -> None:
        if ckpt is not None:
            extra = {"train_config": config.to_dict()}
            save_training_state(ckpt, trained, optimizer, step, backbone=vlm.name, extra=extra)

    vlm.train()
    total = config.steps + config.image_tune_steps
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=min(start, total), desc="WorldCLIP", dynamic_ncols=True)
    smoothed = None
    for step in range(start, total):
        if step >= config.steps or locked_text:  # the text tower and temperature stay as they are
            for name, param in vlm.clip.named_parameters():
                if not name.startswith("visual."):
                    param.requires_grad_(False)
        batch = training_batch(config, step)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        label_heads = [(head, batch.category_ids)]
        if colour_head is not None:
            label_heads.append((colour_head, batch.colour_ids))
        if step < config.pretrain_steps:
            embeddings = vlm.encode_image(batch.images, normalize=False)
            loss = sum(category_loss(h, embeddings, ids) for h, ids in label_heads)
        else:
            loss = batch_loss(
                vlm,
                batch.images,
                batch.captions,
                batch.negatives,
                config.label_smoothing,
                config.hard_negative_weight,
                label_heads=label_heads,
                label_weight=config.category_weight,
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trained.parameters(), config.grad_clip)
        optimizer.step()
        with torch.no_grad():  # CLIP clips the temperature so that the logit scale stays <= 100
            vlm.clip.logit_scale.clamp_(0.0, math.log(100.0))
        value = float(loss.detach())
        if step == config.pretrain_steps:
            smoothed = None  # another loss from here on
        smoothed = value if smoothed is None else 0.95 * smoothed + 0.05 * value
        if bar is not None:
            bar.update(1)
            phase = "categories" if step < config.pretrain_steps else "contrastive"
            phase = "image tuning" if step >= config.steps else phase
            bar.set_postfix(phase=phase, loss=f"{smoothed:.3f}", scale=f"{float(vlm.logit_scale):.1f}")
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < total:
            checkpoint(step + 1)
    if bar is not None:
        bar.close()
    vlm.clip.requires_grad_(True)
    if start < total or (ckpt is not None and not ckpt.exists()):
        checkpoint(total)
    vlm.eval()
    if out_path is not None:
        save_worldclip(vlm, out_path, config=config, eval_n=eval_n, fp16=fp16)
    return vlm


TEXT_TOWER_FIELDS = ("embed_dim", "context_length", "vocab_size", "text_width", "text_layers", "text_heads",
                     "mlp_ratio", "quick_gelu")


def copy_text_tower(source: VisionLanguageModel, target: VisionLanguageModel) -> None:
    """Copy ``source``'s text tower, text projection and temperature (every weight outside ``visual.``)
    into ``target``; the two must have the same text-tower shape."""
    differ = [f for f in TEXT_TOWER_FIELDS if getattr(source.config, f) != getattr(target.config, f)]
    if differ:
        raise ValueError(
            f"text_tower_from: '{source.name}' has another text tower shape than '{target.name}' ({', '.join(differ)})"
        )
    text_state = {k: v for k, v in source.clip.state_dict().items() if not k.startswith("visual.")}
    missing, unexpected = target.clip.load_state_dict(text_state, strict=False)
    assert not unexpected and all(k.startswith("visual.") for k in missing)


def save_worldclip(
    vlm: VisionLanguageModel,
    out_path: str | os.PathLike[str],
    *,
    config: WorldCLIPTrainConfig | None = None,
    eval_n: int = 500,
    fp16: bool = True,
) -> dict[str, float]:
    """Write ``vlm`` with :func:`save_vlm` (fp16 unless ``fp16=False``; ``load_vlm`` casts back to float),
    adding ``promptweave.train_config`` and ``promptweave.metrics`` (the test-split metrics of the stored
    weights) to its metadata. The file appears atomically, complete. Returns the metrics."""
    out_path = Path(out_path)
    stored = copy.deepcopy(vlm).eval()
    if fp16:
        stored.clip.half()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".part", dir=out_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        save_vlm(stored, tmp)
        metrics: dict[str, float] = {}
        if eval_n > 0:
            metrics = evaluate_worldclip(load_vlm(tmp), split="test", n=eval_n)
        tensors, metadata = read_safetensors(tmp)
        if config is not None:
            metadata["promptweave.train_config"] = json.dumps(config.to_dict())
        if metrics:
            metadata["promptweave.metrics"] = json.dumps({**metrics, "split": "test", "n": eval_n})
        save_safetensors_atomic(out_path, tensors, metadata)
    finally:
        tmp.unlink(missing_ok=True)
    return metrics


# ----- evaluation -------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_worldclip(
    vlm: VisionLanguageModel, *, split: str = "test", n: int = 500, style: str = "flat"
) -> dict[str, float]:
    """WorldCLIP metrics on ``split``, each in [0, 1].

    * ``zero_shot_acc``: fine-category accuracy (27-way) of zero-shot classification with
      :func:`~.zero_shot.category_prompts` on the first ``n`` single-object scenes of ``split``
      (:func:`~.zero_shot.single_object_scenes`, rendered in ``style``).
    * ``zero_shot_colour_acc``: the same with :func:`~.zero_shot.colour_prompts` (20-way).
    * ``zero_shot_style_acc``: render-style accuracy (4-way, :func:`~.zero_shot.style_prompts`) on the
      mixed-style retrieval scenes below.
    * ``i2t_r1`` / ``t2i_r1``: recall@1 of image->caption and caption->image retrieval among the first ``n``
      scenes of ``split`` (mixed styles); a retrieved caption (image) counts as correct when its caption
      text equals the query's, so identical captions of different scenes are not counted as misses.
    """
    was_training = vlm.training
    vlm.eval()
    try:
        scenes = list(single_object_scenes(split, n, style=style))
        images = scenes_to_images(scenes)
        truth_category = torch.tensor([scene.category_ids[0] for scene in scenes])
        truth_colour = torch.tensor([_colour_index(scene.objects[0].colour) for scene in scenes])
        category = zero_shot_predict(vlm, images, category_prompts())
        colour = zero_shot_predict(vlm, images, colour_prompts())

        r = split_seed_range(split)
        seeds = range(r.start, r.start + n)
        batch = render_batch(seeds, style="mixed")
        captions = list(batch["caption"])
        image_features = torch.cat([vlm.encode_image(chunk) for chunk in batch["image"].split(256)])
        truth_style = torch.tensor([STYLES.index(style_for_seed(s)) for s in seeds])
        style_scores = image_features @ encode_captions(vlm, style_prompts()).T
        text_features = torch.cat([encode_captions(vlm, captions[i : i + 256]) for i in range(0, n, 256)])
        similarity = image_features @ text_features.T
        same = _same_caption(captions)
        i2t = same[torch.arange(n), similarity.argmax(dim=1)].float().mean()
        t2i = same[torch.arange(n), similarity.argmax(dim=0)].float().mean()
    finally:
        vlm.train(was_training)
    return {
        "zero_shot_acc": float((category == truth_category).float().mean()),
        "zero_shot_colour_acc": float((colour == truth_colour).float().mean()),
        "zero_shot_style_acc": float((style_scores.argmax(dim=1) == truth_style).float().mean()),
        "i2t_r1": float(i2t),
        "t2i_r1": float(t2i),
    }


def _colour_index(colour: str) -> int:
    return COLOUR_NAMES.index(colour)


def _same_caption(captions: Sequence[str]) -> torch.Tensor:
    ids: dict[str, int] = {}
    index = torch.tensor([ids.setdefault(c, len(ids)) for c in captions])
    return index[:, None] == index[None, :]


# ----- command line -----------------------------------------------------------------------------------------
def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m promptweave.world train clip``."""
    defaults = WorldCLIPTrainConfig()
    parser.add_argument("--out", required=True, help="output weights (.safetensors), written when training ends")
    parser.add_argument(
        "--preset", default=defaults.vlm, help="model shape: 'worldclip' (default), 'worldclip2' or a VLM preset"
    )
    parser.add_argument("--steps", type=int, default=defaults.steps, help=f"training steps (default {defaults.steps})")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="image/caption pairs per step")
    parser.add_argument("--lr", type=float, default=defaults.lr, help=f"peak learning rate (default {defaults.lr})")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="linear warmup steps")
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="AdamW weight decay")
    parser.add_argument("--hard-negatives", type=int, default=defaults.hard_negatives, help="per image (0..6)")
    parser.add_argument("--hard-negative-weight", type=float, default=defaults.hard_negative_weight, help="focus")
    parser.add_argument("--pretrain-steps", type=int, default=defaults.pretrain_steps, help="image tower only")
    parser.add_argument("--pretrain-batch-size", type=int, default=defaults.pretrain_batch_size, help="phase 1")
    parser.add_argument("--category-weight", type=float, default=defaults.category_weight, help="phase 2")
    parser.add_argument("--no-colour-head", action="store_true", help="pre-train on categories only")
    parser.add_argument("--image-tune-steps", type=int, default=defaults.image_tune_steps, help="locked text")
    parser.add_argument("--image-tune-lr", type=float, default=defaults.image_tune_lr, help="their peak lr")
    parser.add_argument("--text-tower-from", default="", help="WorldCLIP file whose text tower to start from")
    parser.add_argument("--train-text-tower", action="store_true", help="train it too (default: locked)")
    parser.add_argument("--partial-captions", type=float, default=defaults.partial_captions, help="fraction")
    parser.add_argument("--style-captions", type=float, default=defaults.style_captions, help="fraction")
    parser.add_argument("--image-tune-style-captions", type=float, default=None, help="fraction (image tuning)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the init and of every batch")
    parser.add_argument("--checkpoint", default=None, help="resumable training state; resumes if it exists")
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every, help="steps between saves")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--eval-n", type=int, default=500, help="test scenes for the final metrics (0: skip)")
    parser.add_argument("--fp32", action="store_true", help="store float32 weights instead of fp16")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--captions", choices=CAPTION_SOURCES, default=defaults.captions,
                        help="the world's captions, or web-like alt-text (worldclip-web; needs --hard-negatives 0)")
    parser.add_argument("--web-caption", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a WebCaptionConfig field, e.g. fine_rate=0.8 (repeatable)")
    parser.add_argument("--label-set", choices=LABEL_SETS, default=defaults.label_set,
                        help="label heads' classes: auto (fine for world captions, coarse for web), fine or coarse")


def parse_web_caption_options(items: Sequence[str]) -> dict[str, Any]:
    """``["fine_rate=0.8", "named_styles=flat,sketch"]`` -> ``{"fine_rate": 0.8, "named_styles": ("flat",
    "sketch")}``, typed as :class:`~.web_captions.WebCaptionConfig`'s fields are."""
    types = {f.name: type(getattr(WebCaptionConfig(), f.name)) for f in dataclasses.fields(WebCaptionConfig)}
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise SystemExit(f"--web-caption {item!r}: expected FIELD=VALUE with FIELD one of {sorted(types)}")
        kind = types[key]
        options[key] = tuple(v for v in value.split(",") if v) if kind is tuple else kind(value)
    return options


def run_cli(args: argparse.Namespace) -> int:
    """Run ``train clip``: train, write ``--out``, print the final metrics as JSON."""
    config = WorldCLIPTrainConfig(
        vlm=args.preset,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        hard_negatives=args.hard_negatives,
        partial_captions=args.partial_captions,
        style_captions=args.style_captions,
        pretrain_steps=args.pretrain_steps,
        pretrain_batch_size=args.pretrain_batch_size,
        category_weight=args.category_weight,
        colour_head=not args.no_colour_head,
        image_tune_steps=args.image_tune_steps,
        image_tune_lr=args.image_tune_lr,
        image_tune_style_captions=args.image_tune_style_captions,
        text_tower_from=args.text_tower_from,
        lock_text_tower=not args.train_text_tower,
        hard_negative_weight=args.hard_negative_weight,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        captions=args.captions,
        web_captions=parse_web_caption_options(args.web_caption),
        label_set=args.label_set,
    )
    started = time.perf_counter()
    vlm = train_worldclip(
        config, None, checkpoint_path=args.checkpoint, progress=not args.no_progress, threads=args.threads
    )
    trained = time.perf_counter() - started
    metrics = save_worldclip(vlm, args.out, config=config, eval_n=args.eval_n, fp16=not args.fp32)
    report = {"out": str(args.out), "steps": config.steps, "train_seconds": round(trained, 1), **metrics}
    if args.eval_n > 0:
        compositional = evaluate_worldclip(load_vlm(args.out), split="compositional", n=args.eval_n)
        report["compositional"] = compositional
    print(json.dumps(report, indent=2))
    return 0
