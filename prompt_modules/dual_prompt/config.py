"""DCAR's hyper-parameters (:class:`DualPromptConfig`; the choices are argued in the package docstring)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..core.artifacts import ConfigError, config_from_dict
from ..core.deep_prompts import DeepPromptConfig

METHOD = "dcar"
FDRD_NEGATIVES = 4
#: MaPLe prompts 9 of CLIP ViT-B's 12 layers: the automatic prompt depth is this fraction of a tower's layers.
MAPLE_DEPTH_FRACTION = 0.75


def maple_depth(layers: int) -> int:
    """The automatic prompt depth of a tower with ``layers`` layers: ``round(0.75 * layers)`` (half up), as MaPLe
    prompts 9 of 12; 2 for a 2-layer tower, 3 for 4, 9 for 12, 18 for 24, 24 for 32, 36 for 48."""
    return int(MAPLE_DEPTH_FRACTION * max(int(layers), 0) + 0.5)


@dataclass
class DualPromptConfig:
    """DCAR hyper-parameters (see the package docstring).

    ``text_depth`` / ``visual_depth``: the layers (from the first) that get their own prompt vectors. ``None``
    (the default) scales with the tower: :func:`maple_depth`, ``round(0.75 * layers)`` as MaPLe prompts 9 of 12
    (with ``coupling``, an automatic visual depth is at most the text depth). :class:`DualPrompt` resolves them for
    its VLM and stores the resolved depths (:meth:`resolved`), so files record them. The benchmarks on the
    4-layer WorldCLIP give depth 2 explicitly (the value chosen there before the rule; the rule gives 3), and
    the ComfyUI node's ``depth`` widget keeps its default 2.
    """

    n_text: int = 4
    n_visual: int = 4
    text_depth: int | None = None
    visual_depth: int | None = None
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
        # validates the prompt shape (automatic depths by stand-ins that pass wherever a resolved depth would)
        t = self.text_depth if self.text_depth is not None else max(1, self.visual_depth or 0)
        v = self.visual_depth if self.visual_depth is not None else (min(1, t) if self.coupling else 1)
        self._deep(t, v)
        for name in ("same_family_weight", "other_family_weight", "batch_family_weight",
                     "batch_same_category_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"{name} must be >= 0")
        for name in ("bank_size", "max_negatives"):
            if getattr(self, name) < 0:
                raise ConfigError(name, "bank_size and max_negatives must be >= 0")

    def depths(self, text_layers: int, vision_layers: int) -> tuple[int, int]:
        """``(text_depth, visual_depth)`` for a VLM with these layer counts (given ones as they are)."""
        t = maple_depth(text_layers) if self.text_depth is None else self.text_depth
        if self.visual_depth is not None:
            v = self.visual_depth
        else:
            v = maple_depth(vision_layers)
            if self.coupling and self.n_text > 0 and self.n_visual > 0:
                v = min(v, t)  # MaPLe couples layer i's text and image prompts
        return t, v

    def resolved(self, text_layers: int, vision_layers: int) -> DualPromptConfig:
        """This config with the depths resolved for a VLM with these layer counts."""
        t, v = self.depths(text_layers, vision_layers)
        return dataclasses.replace(self, text_depth=t, visual_depth=v)

    def deep_config(self, text_layers: int | None = None, vision_layers: int | None = None) -> DeepPromptConfig:
        """The prompt shape; automatic depths need the VLM's layer counts."""
        t, v = self.text_depth, self.visual_depth
        if t is None or v is None:
            if text_layers is None or vision_layers is None:
                raise ConfigError(
                    "text_depth" if t is None else "visual_depth",
                    "the depth is automatic: give the VLM's text_layers and vision_layers to resolve it",
                )
            t, v = self.depths(text_layers, vision_layers)
        return self._deep(t, v)

    def _deep(self, text_depth: int, visual_depth: int) -> DeepPromptConfig:
        return DeepPromptConfig(
            n_text=self.n_text, n_visual=self.n_visual, text_depth=text_depth,
            visual_depth=visual_depth, coupling=self.coupling, init_std=self.init_std,
            keep_positions=self.keep_positions,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DualPromptConfig:
        return config_from_dict(cls, data)
