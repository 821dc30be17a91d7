"""Configuration of a prompt inverter (stored as JSON in every inverter file)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..core.artifacts import ConfigError, config_from_dict

#: all-MiniLM-L6-v2 sentence embeddings, the target space of Reverse Stable Diffusion (Croitoru et al. 2023).
TARGET_DIM = 384


@dataclass
class InverterConfig:
    """Shape and training recipe of a :class:`~.model.PromptInverter`.

    ``backbone`` names the image encoder the head was trained on (``"vlm:<name>"``, ``"pixels"``,
    ``"clip_vision:<dim>"``, ``"worldgen:<weights fingerprint>"``, ``"sd-unet:<shape>"``); an inverter is refused
    with any other.
    ``hidden`` are the MLP widths (the paper uses 1024 -> 8192 -> 8192 -> 384 on CLIP features; the default is
    smaller for CPU training). Loss = cosine + ``vocab_weight`` * BCE(vocabulary) + ``huber_weight`` * Huber.
    Optimiser as the paper: AdamW ``lr`` with cosine decay to ``min_lr``, batch ``batch_size``.
    A value that cannot work raises :class:`~promptweave.prompt_modules.core.artifacts.ConfigError` naming the field.
    """

    backbone: str = "pixels"
    feature_dim: int = 128
    hidden: tuple[int, ...] = (1024, 1024)
    target_dim: int = TARGET_DIM
    vocab_size: int = 0
    dropout: float = 0.5
    # training
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-4
    min_lr: float = 1e-6
    weight_decay: float = 1e-2
    vocab_weight: float = 0.1
    huber_weight: float = 1.0
    curriculum: bool = True
    curriculum_fractions: tuple[float, ...] = (1 / 4, 1 / 3, 1 / 2, 1.0)
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        self.curriculum_fractions = tuple(float(f) for f in self.curriculum_fractions)
        if self.feature_dim < 1 or any(h < 1 for h in self.hidden) or self.target_dim < 1:
            bad = "feature_dim" if self.feature_dim < 1 else "target_dim" if self.target_dim < 1 else "hidden"
            raise ConfigError(bad, "feature_dim, hidden widths and target_dim must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", f"dropout must be in [0, 1), got {self.dropout}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs" if self.epochs < 1 else "batch_size", "epochs and batch_size must be at least 1")
        fr = self.curriculum_fractions
        if not fr or any(not 0 < f <= 1 for f in fr) or list(fr) != sorted(fr) or fr[-1] != 1.0:
            raise ConfigError(
                "curriculum_fractions", f"curriculum_fractions must rise within (0, 1] and end at 1, got {fr}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InverterConfig:
        return config_from_dict(cls, data)
