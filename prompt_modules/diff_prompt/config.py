"""Dataclass configs of Diff-Prompt's three stages (Yan et al., ICLR 2025, arXiv 2504.21423).

Defaults are the paper's structure scaled to the procedural world (64x64 images and masks, a 4-layer VLM) so
that every stage trains on two CPU cores; the paper's sizes are noted field by field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from ..core.artifacts import config_from_dict


def _from_dict(cls, data: dict[str, Any]):
    values = dict(data)
    for f in dataclasses.fields(cls):  # JSON turns tuples into lists
        if f.name in values and isinstance(values[f.name], list):
            values[f.name] = tuple(values[f.name])
    return config_from_dict(cls, values)


@dataclass
class MaskVAEConfig:
    """Stage 1: a 1-channel ``AutoencoderKL`` (paper sec. 3.1: blocks 4, 8, 16, 16; 4 latent channels; a 224
    mask becomes a 4x28x28 latent). Here a 64x64 mask becomes a 4x8x8 latent (three down-samplings).

    The block widths are the paper's; ``norm_num_groups`` is 4 so that GroupNorm fits the 4-channel block.

    Loss (paper eq. 3): ``MSE(decode(z), m) + kl_weight * KL(q(z|m) || N(0, I))`` with the paper's
    ``kl_weight = 0.00037732``. Masks are scaled to ``[-1, 1]`` on the way in.
    """

    mask_size: int = 64
    block_out_channels: tuple[int, ...] = (4, 8, 16, 16)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 4
    kl_weight: float = 0.00037732
    lr: float = 1e-3

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(
                f"every block width {self.block_out_channels} must be divisible by norm_num_groups "
                f"{self.norm_num_groups}"
            )
        if self.mask_size % self.downsample:
            raise ValueError(f"mask_size {self.mask_size} is not a multiple of the down-sampling {self.downsample}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.mask_size // self.downsample

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MaskVAEConfig:
        return _from_dict(cls, data)


@dataclass
class DiTConfig:
    """Stage 2: the prompt generator, a DiT (Peebles & Xie 2023) that denoises mask latents.

    Paper: depth 12, hidden 512, patch 2, 8 heads, T = 100 with a linear schedule, epsilon prediction,
    AdamW 1e-4, EMA 0.9999, conditioned through adaLN-Zero on ``[image feature + t ; caption feature + t]``.
    ``cond_dim`` is the VLM's ``embed_dim`` (set from the VLM when the stage is built). The linear schedule
    is the DDPM one rescaled to ``num_timesteps`` (``beta`` from ``1e-4 * 1000/T`` to ``0.02 * 1000/T``) so
    that T = 100 ends as noisy as DDPM's T = 1000. ``scaling_factor`` multiplies VAE latents (LDM-style
    unit variance); it is measured on training masks when the stage starts and stored with the weights.
    The paper's learned sigma is left out: DDIM sampling (eta = 0) never uses it. ``lr`` 3e-4 and ``ema_decay``
    0.999 (paper 1e-4 and 0.9999) suit runs of a few thousand steps; the EMA warms up as ``(1+n)/(10+n)``.
    """

    latent_channels: int = 4
    latent_size: int = 8
    patch_size: int = 2
    hidden: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    cond_dim: int = 64
    num_timesteps: int = 100
    beta_start: float = 1e-4
    beta_end: float = 0.02
    ema_decay: float = 0.999
    lr: float = 3e-4
    weight_decay: float = 0.0
    scaling_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.latent_size % self.patch_size:
            raise ValueError(f"latent_size {self.latent_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not divisible by {self.heads} heads")
        if self.num_timesteps < 2:
            raise ValueError("num_timesteps must be at least 2")

    @property
    def tokens(self) -> int:
        return (self.latent_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiTConfig:
        return _from_dict(cls, data)


Kept = Literal["pred_x0", "latent"]


@dataclass
class PromptConfig:
    """Stage 3: generated + global deep prompts for a frozen VLM and the grounding head.

    Paper: DDIM 25 steps; one kept latent per prompted layer (9 layers of GLIP-T); 4 generated tokens per layer
    and modality from a small conv adapter, plus 4 learnable global tokens per layer; AdamW 1e-4, wd 0.05.

    ``text_depth`` / ``visual_depth`` (``None``: every layer of that tower) are the prompted layers; the
    generator keeps ``max(text_depth, visual_depth)`` latents, layer ``i`` of both towers reads kept latent
    ``i``. ``keep_steps`` (0-based DDIM step indices, ascending) picks them; ``None`` spreads them evenly over the
    trajectory, ending with the last step. ``kept="pred_x0"`` decodes the clean latent the DiT predicts at that
    step, ``"latent"`` the noisy DDIM state itself (closer to the paper's wording, noisier masks). The ablation
    "no global prompts" is ``n_global = 0``; ``n_generated = 0`` leaves static global prompts only (VPT-deep).
    ``ddim_steps`` is 10 (paper 25) to keep CPU inference affordable; ``lr`` 1e-3 (paper 1e-4) for short runs.
    ``init_from``: a pretrained prompt bundle (RPP, :mod:`~..pretraining`) whose prompts start the global
    prompts (:func:`~.model.init_diff_prompt_from_bundle`); ``""``: the plain initialisation.
    """

    n_generated: int = 4
    n_global: int = 4
    text_depth: int | None = None
    visual_depth: int | None = None
    ddim_steps: int = 10
    keep_steps: tuple[int, ...] | None = None
    kept: Kept = "pred_x0"
    adapter_channels: int = 16
    adapter_features: int = 128
    head_hidden: int = 64
    keep_positions: bool = True
    init_std: float = 0.02
    lr: float = 1e-3
    weight_decay: float = 0.05
    mask_loss_weight: float = 1.0
    box_loss_weight: float = 2.0
    init_from: str = ""

    def __post_init__(self) -> None:
        if self.n_generated < 0 or self.n_global < 0:
            raise ValueError("n_generated and n_global must be >= 0")
        if self.ddim_steps < 1:
            raise ValueError("ddim_steps must be at least 1")
        if self.kept not in ("pred_x0", "latent"):
            raise ValueError(f"kept must be 'pred_x0' or 'latent', got {self.kept!r}")
        if self.keep_steps is not None:
            self.keep_steps = tuple(int(s) for s in self.keep_steps)
            if list(self.keep_steps) != sorted(set(self.keep_steps)) or not all(
                0 <= s < self.ddim_steps for s in self.keep_steps
            ):
                raise ValueError(
                    f"keep_steps {self.keep_steps} must be ascending, distinct DDIM step indices in "
                    f"0..{self.ddim_steps - 1}"
                )

    @property
    def n_tokens(self) -> int:
        """Prompt tokens per prompted layer and tower (generated + global)."""
        return self.n_generated + self.n_global

    def depths(self, text_layers: int, vision_layers: int) -> tuple[int, int]:
        """``(text_depth, visual_depth)`` resolved for a VLM with these layer counts."""
        t = text_layers if self.text_depth is None else self.text_depth
        v = vision_layers if self.visual_depth is None else self.visual_depth
        if t > text_layers or v > vision_layers or t < 0 or v < 0:
            raise ValueError(
                f"prompt depths (text {t}, visual {v}) do not fit a VLM with {text_layers} text and "
                f"{vision_layers} vision layers"
            )
        return t, v

    def resolved_keep_steps(self, n_kept: int) -> tuple[int, ...]:
        """The DDIM step indices whose latents are kept (``n_kept`` of them)."""
        if n_kept == 0:
            return ()
        if self.keep_steps is not None:
            if len(self.keep_steps) != n_kept:
                raise ValueError(f"keep_steps has {len(self.keep_steps)} entries, the prompted layers need {n_kept}")
            return self.keep_steps
        if n_kept > self.ddim_steps:
            raise ValueError(f"{n_kept} prompted layers need at least {n_kept} DDIM steps (got {self.ddim_steps})")
        stride = self.ddim_steps // n_kept
        return tuple(self.ddim_steps - 1 - (n_kept - 1 - i) * stride for i in range(n_kept))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptConfig:
        return _from_dict(cls, data)
