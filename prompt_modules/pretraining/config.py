"""RPP's hyper-parameters (:class:`RPPConfig`; the choices are argued in the package docstring)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..core.artifacts import ConfigError, config_from_dict
from ..core.deep_prompts import DeepPromptConfig

METHOD = "rpp"
QKV_MODES = ("unshared", "shared")
QKV_FORMS = ("absolute", "offset")
TOWERS = ("text", "visual")


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
            raise ConfigError("qkv_mode", f"qkv_mode must be one of {QKV_MODES}, got {self.qkv_mode!r}")
        if self.qkv_form not in QKV_FORMS:
            raise ConfigError("qkv_form", f"qkv_form must be one of {QKV_FORMS}, got {self.qkv_form!r}")
        if self.qkv_lr_scale <= 0:
            raise ConfigError("qkv_lr_scale", f"qkv_lr_scale must be > 0, got {self.qkv_lr_scale}")
        if self.soft_weight < 0:
            raise ConfigError("soft_weight", f"soft_weight must be >= 0, got {self.soft_weight}")
        if self.temperature <= 0:
            raise ConfigError("temperature", f"temperature must be > 0, got {self.temperature}")
        if self.classes_per_step < 0:
            raise ConfigError(
                "classes_per_step", f"classes_per_step must be >= 0 (0: all classes), got {self.classes_per_step}"
            )
        for name in ("class_template", "teacher_template"):
            if getattr(self, name).count("{}") != 1:
                raise ConfigError(name, f"{name} must contain '{{}}' exactly once, got {getattr(self, name)!r}")

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
