"""Dataclass configs of Diff-Prompt's three stages (Yan et al., ICLR 2025, arXiv 2504.21423).

Defaults are the paper's structure scaled to the procedural world (64x64 images and masks, a 4-layer VLM) so
that every stage trains on two CPU cores; the paper's sizes are noted field by field. The defaults fit a VLM of any
depth and image size: the prompted layers are capped by the tower's depth, by the paper's 9 and by the DDIM steps
(:meth:`PromptConfig.depths`), and the recipe (:func:`~.train.train_diff_prompt`) sizes the masks from the VLM's
image size (:func:`mask_size_for_image`). A value that cannot work raises
:class:`~promptweave.prompt_modules.core.artifacts.ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from ..core.artifacts import ConfigError, config_from_dict

#: The layers the paper prompts (9 of GLIP-T's 12): the cap of the automatic prompt depth.
PAPER_PROMPTED_LAYERS = 9
#: Bounds of the automatic mask size (:func:`mask_size_for_image`): the world's 64 and the paper's 224.
MIN_AUTO_MASK_SIZE, MAX_AUTO_MASK_SIZE = 64, 224


def mask_size_for_image(image_size: int, multiple: int = 16) -> int:
    """The automatic mask size for a VLM of ``image_size`` pixels: the image size rounded to a ``multiple`` (the
    Mask-VAE's down-sampling times the DiT's patch: 8 * 2 for the defaults) and kept within
    :data:`MIN_AUTO_MASK_SIZE` .. :data:`MAX_AUTO_MASK_SIZE` (64 .. 224: a 64 px world model keeps 64 px masks, a
    224 px CLIP gets the paper's 224 x 224 masks and 28 x 28 latents, larger images are not worth bigger masks)."""
    if image_size < 1 or multiple < 1:
        raise ConfigError("mask_size", f"image size {image_size} and multiple {multiple} must be positive")
    low = -(-MIN_AUTO_MASK_SIZE // multiple) * multiple
    high = max(low, MAX_AUTO_MASK_SIZE // multiple * multiple)
    return int(min(max(int(image_size / multiple + 0.5) * multiple, low), high))


def check_lr(lr: float, field: str = "lr") -> None:
    """Refuse a learning rate that is not a finite number > 0 (:class:`ConfigError` naming ``field``)."""
    try:
        value = float(lr)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(lr, bool) or not (math.isfinite(value) and value > 0):
        raise ConfigError(field, f"{field} must be a finite number > 0, got {lr!r}")


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
    ``mask_size`` 64 is the world's; :meth:`for_image_size` (what :func:`~.train.train_diff_prompt` uses when no
    config is given) sizes the masks from the VLM's image size instead (224 px CLIP: the paper's 224).

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
            raise ConfigError(
                "block_out_channels",
                f"every block width {self.block_out_channels} must be divisible by norm_num_groups "
                f"{self.norm_num_groups}",
            )
        if self.mask_size < 1 or self.mask_size % self.downsample:
            raise ConfigError(
                "mask_size",
                f"mask_size {self.mask_size} is not a positive multiple of the down-sampling {self.downsample}",
            )
        check_lr(self.lr)

    @classmethod
    def for_image_size(cls, image_size: int, patch_size: int = 2, **fields: Any) -> MaskVAEConfig:
        """A config whose ``mask_size`` follows a VLM's ``image_size`` (:func:`mask_size_for_image`, a multiple of
        the down-sampling times the DiT's ``patch_size``); ``fields`` set the others."""
        probe = cls(**fields)
        return dataclasses.replace(probe, mask_size=mask_size_for_image(image_size, probe.downsample * patch_size))

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
            raise ConfigError(
                "latent_size",
                f"latent_size {self.latent_size} is not a multiple of patch_size {self.patch_size} (mask sizes must "
                f"be multiples of the Mask-VAE's down-sampling times {self.patch_size})",
            )
        if self.hidden % self.heads:
            raise ConfigError("hidden", f"hidden {self.hidden} is not divisible by {self.heads} heads")
        if self.num_timesteps < 2:
            raise ConfigError("num_timesteps", "num_timesteps must be at least 2")
        check_lr(self.lr)

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

    ``text_depth`` / ``visual_depth`` are the prompted layers of each tower (from the first). ``None`` (the
    default) is automatic and fits any VLM: every layer of the tower, but at most ``max_depth`` (9, the paper's
    prompted layers; ``None``: no cap) and, when prompts are generated, at most the DDIM steps (one kept latent per
    layer), so a 4-layer world model prompts all 4 layers and a 12- or 24-layer CLIP its first 9. A given depth is
    used as it is and must fit the tower and the DDIM steps. :class:`~.model.DiffPrompt` stores the resolved depths
    in its config (the bundle records them). The generator keeps ``max(text_depth, visual_depth)`` latents, layer
    ``i`` of both towers reads kept latent ``i``. ``keep_steps`` (0-based DDIM step indices, ascending) picks them;
    ``None`` spreads them evenly over the trajectory, ending with the last step. ``kept="pred_x0"`` decodes the
    clean latent the DiT predicts at that step, ``"latent"`` the noisy DDIM state itself (closer to the paper's
    wording, noisier masks). The ablation "no global prompts" is ``n_global = 0``; ``n_generated = 0`` leaves
    static global prompts only (VPT-deep).
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
    max_depth: int | None = PAPER_PROMPTED_LAYERS

    def __post_init__(self) -> None:
        if self.n_generated < 0 or self.n_global < 0:
            raise ConfigError(
                "n_generated" if self.n_generated < 0 else "n_global", "n_generated and n_global must be >= 0"
            )
        for name in ("text_depth", "visual_depth", "max_depth"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(name, f"{name} must be >= 0 (or None: automatic), got {value}")
        if self.ddim_steps < 1:
            raise ConfigError("ddim_steps", f"ddim_steps must be at least 1, got {self.ddim_steps}")
        check_lr(self.lr)
        if self.kept not in ("pred_x0", "latent"):
            raise ConfigError("kept", f"kept must be 'pred_x0' or 'latent', got {self.kept!r}")
        if self.keep_steps is not None:
            self.keep_steps = tuple(int(s) for s in self.keep_steps)
            if list(self.keep_steps) != sorted(set(self.keep_steps)) or not all(
                0 <= s < self.ddim_steps for s in self.keep_steps
            ):
                raise ConfigError(
                    "keep_steps",
                    f"keep_steps {self.keep_steps} must be ascending, distinct DDIM step indices in "
                    f"0..{self.ddim_steps - 1}",
                )

    @property
    def n_tokens(self) -> int:
        """Prompt tokens per prompted layer and tower (generated + global)."""
        return self.n_generated + self.n_global

    def auto_depth(self, layers: int) -> int:
        """The automatic prompt depth of a tower with ``layers`` layers (see the class docstring)."""
        depth = layers if self.max_depth is None else min(layers, self.max_depth)
        if self.n_generated:  # one kept DDIM latent per prompted layer
            depth = min(depth, len(self.keep_steps) if self.keep_steps is not None else self.ddim_steps)
        return depth

    def depths(self, text_layers: int, vision_layers: int) -> tuple[int, int]:
        """``(text_depth, visual_depth)`` resolved for a VLM with these layer counts."""
        t = self.auto_depth(text_layers) if self.text_depth is None else self.text_depth
        v = self.auto_depth(vision_layers) if self.visual_depth is None else self.visual_depth
        for name, depth, layers, tower in (
            ("text_depth", t, text_layers, "text"),
            ("visual_depth", v, vision_layers, "vision"),
        ):
            if depth > layers or depth < 0:
                raise ConfigError(
                    name,
                    f"prompt depths (text {t}, visual {v}) do not fit a VLM with {text_layers} text and "
                    f"{vision_layers} vision layers: {name} {depth} > the {layers} {tower} layers",
                )
        return t, v

    def resolved(self, text_layers: int, vision_layers: int) -> PromptConfig:
        """This config with the depths resolved for a VLM with these layer counts (what a bundle records)."""
        t, v = self.depths(text_layers, vision_layers)
        return dataclasses.replace(self, text_depth=t, visual_depth=v)

    def resolved_keep_steps(self, n_kept: int) -> tuple[int, ...]:
        """The DDIM step indices whose latents are kept (``n_kept`` of them)."""
        if n_kept == 0:
            return ()
        if self.keep_steps is not None:
            if len(self.keep_steps) != n_kept:
                raise ConfigError(
                    "keep_steps", f"keep_steps has {len(self.keep_steps)} entries, the prompted layers need {n_kept}"
                )
            return self.keep_steps
        if n_kept > self.ddim_steps:
            raise ConfigError(
                "ddim_steps",
                f"{n_kept} prompted layers need at least {n_kept} DDIM steps (got {self.ddim_steps}): raise "
                f"ddim_steps to {n_kept} or prompt fewer layers",
            )
        stride = self.ddim_steps // n_kept
        return tuple(self.ddim_steps - 1 - (n_kept - 1 - i) * stride for i in range(n_kept))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptConfig:
        """The inverse of :meth:`to_dict`. A dict without ``max_depth`` was written before the automatic depth had
        a cap (``None`` then meant every layer): it keeps that meaning, so older bundles load as they were."""
        values = dict(data)
        values.setdefault("max_depth", None)
        return _from_dict(cls, values)
