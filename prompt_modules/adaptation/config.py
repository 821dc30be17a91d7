"""Configuration of an IPL (or NADA) adaptation run: one frozen dataclass, stored as JSON in every artifact.

Defaults follow the IPL paper and its official code (Guo et al., CVPR 2023, sec. 4 "Implementation details";
``train.py`` / ``options/train_options.py`` of Picsart-AI-Research/IPL-Zero-Shot-Generative-Model-Adaptation):
stage 1 trains the latent mapper with Adam (lr 0.05, batch 32, 300 iterations, lambda = 1); stage 2 trains the
generator with Adam (lr 0.002 * 4/5 = 0.0016, betas (0, 0.99 ** 0.8), batch 2, 300 iterations) and keeps an
EMA copy (decay 0.99) which is what gets exported.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..core.artifacts import ConfigError, config_from_dict
from .data import DEFAULT_TEMPLATES

METHODS = ("ipl", "nada")


@dataclass(frozen=True)
class IPLConfig:
    """Everything that defines an adaptation run (``method="nada"`` is the StyleGAN-NADA baseline).

    Prompt (paper sec. 3.2, eq. 1): ``[SOS] + F(w) + tokens(domain) + [EOS]`` through the frozen VLM text
    tower; ``F(w)`` are ``n_ctx`` vectors from the latent mapper. As in the official code, the text feature of
    that prompt is added to the feature of the plain prompt ``f"{ctx_init} {domain}."`` before normalising
    (``add_base_feature``; the mapper then learns an image-specific *offset* of the domain feature).

    Stage 1 (eq. 2-3): symmetric contrastive loss between source images and their own source prompts, plus
    ``lambda_domain`` times the domain loss ``1 - cos(prompt feature of the target, template feature of the
    target)`` (and ``lambda_source`` times the same for the source; 0 in the paper).

    Stage 2 (eq. 4): image-specific directional loss with the mapper frozen, LoRA (PEFT ``LoraConfig``, rank
    ``rank``, scale ``alpha / rank``) on the generator, EMA ``ema_decay``.

    NADA's adaptive layer selection (Gal et al. 2022, sec. 4.2): every ``layer_select_every`` steps, each
    candidate layer gets its own learnable input offset (the analogue of NADA's per-layer W+ code), the
    offsets are optimised for ``auto_layer_iters`` SGD steps on the global CLIP loss towards the target
    text, and only the LoRA of the ``auto_layer_k`` layers whose offsets moved most is trained in that step;
    ``auto_layer_k = 0`` trains every LoRA layer.

    A value that cannot work raises :class:`~promptweave.prompt_modules.core.artifacts.ConfigError` (a
    ``ValueError``) whose ``field`` names the config field, so callers map it to their own input names.
    """

    method: str = "ipl"
    source_text: str = "photo"
    target_text: str = ""
    # prompts
    n_ctx: int = 4
    ctx_init: str = "a photo of a"
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    add_base_feature: bool = True
    # latent mapper
    mapper_hidden: int = 512
    mapper_layers: int = 3
    mapper_lr_mul: float = 0.01
    # stage 1
    mapper_steps: int = 300
    mapper_batch: int = 32
    mapper_lr: float = 0.05
    lambda_domain: float = 1.0
    lambda_source: float = 0.0
    # stage 2
    steps: int = 300
    batch_size: int = 2
    lr: float = 0.0016
    betas: tuple[float, float] = (0.0, 0.99**0.8)
    ema_decay: float = 0.99
    rank: int = 4
    alpha: float = 4.0
    lora_dropout: float = 0.0
    auto_layer_k: int = 0
    auto_layer_iters: int = 1
    auto_layer_batch: int = 4
    auto_layer_lr: float = 0.01
    layer_select_every: int = 1
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "templates", tuple(self.templates))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.method not in METHODS:
            raise ConfigError("method", f"unknown method {self.method!r}; expected one of {METHODS}")
        if not isinstance(self.target_text, str) or not self.target_text.strip():
            raise ConfigError(
                "target_text", "target_text is empty: name the target domain, e.g. 'neon sign' or 'ukiyo-e print'"
            )
        if not isinstance(self.source_text, str) or not self.source_text.strip():
            raise ConfigError("source_text", "source_text is empty: name the source domain, e.g. 'photo'")
        if self.target_text.strip().lower() == self.source_text.strip().lower():
            raise ConfigError("target_text", "target_text equals source_text: there is no direction to adapt along")
        if self.rank < 1:
            raise ConfigError("rank", f"rank must be at least 1 (LoRA rank), got {self.rank}")
        if self.alpha <= 0:
            raise ConfigError("alpha", f"alpha must be positive, got {self.alpha}")
        if self.n_ctx < 1:
            raise ConfigError("n_ctx", f"n_ctx must be at least 1, got {self.n_ctx}")
        if self.mapper_layers < 1 or self.mapper_hidden < 1:
            field_name = "mapper_layers" if self.mapper_layers < 1 else "mapper_hidden"
            raise ConfigError(field_name, "the mapper needs at least one hidden layer of positive width")
        for name in ("mapper_steps", "steps"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"{name} must be >= 0")
        for name in ("mapper_batch", "batch_size", "auto_layer_batch", "auto_layer_iters", "layer_select_every"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"{name} must be >= 1")
        if self.mapper_batch < 2 and self.method == "ipl" and self.mapper_steps > 0:
            raise ConfigError(
                "mapper_batch", "mapper_batch must be >= 2: the contrastive loss needs other images in the batch"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError("ema_decay", f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.auto_layer_k < 0:
            raise ConfigError("auto_layer_k", "auto_layer_k must be >= 0 (0 = train every LoRA layer)")
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ConfigError("templates", "templates must be a non-empty list of strings with a '{}' placeholder")
        if self.lambda_domain < 0 or self.lambda_source < 0:
            field_name = "lambda_domain" if self.lambda_domain < 0 else "lambda_source"
            raise ConfigError(field_name, "lambda_domain and lambda_source must be >= 0")

    @property
    def scale(self) -> float:
        """LoRA scale ``alpha / rank`` (PEFT's and kohya's convention)."""
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["templates"] = list(self.templates)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IPLConfig:
        return config_from_dict(cls, data)

    def replace(self, **changes: Any) -> IPLConfig:
        return dataclasses.replace(self, **changes)
