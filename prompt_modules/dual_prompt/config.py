"""DCAR's hyper-parameters (:class:`DualPromptConfig`; the choices are argued in the package docstring)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..core.artifacts import ConfigError, config_from_dict
from ..core.deep_prompts import DeepPromptConfig

METHOD = "dcar"
FDRD_NEGATIVES = 4


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
    init_from: str = ""  # a pretrained prompt bundle (RPP, pretraining/) to start from; "": scratch
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
                raise ConfigError(name, f"{name} must be >= 0")
        for name in ("bank_size", "max_negatives"):
            if getattr(self, name) < 0:
                raise ConfigError(name, "bank_size and max_negatives must be >= 0")

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
