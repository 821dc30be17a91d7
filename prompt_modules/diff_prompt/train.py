"""Training of Diff-Prompt's three stages, and the one recipe that runs them in order.

Each stage trains on its own, resumes from its own checkpoint (:mod:`~promptweave.prompt_modules.core.checkpointing`:
weights, optimizer, step, RNG; batches derive from ``seed + step``, so a resumed run equals an uninterrupted one)
in the shared freeze -> resumable loop -> unfreeze runner (:func:`~..core.training.train_frozen`):

1. :func:`train_mask_vae` - masks only (no VLM); paper eq. 3 (:func:`~.losses.mask_vae_loss`).
2. :func:`train_dit` - needs the stage-1 VAE and the frozen VLM (its image and expression features condition the
   DiT, paper sec. 3.2); epsilon loss (:func:`~.losses.epsilon_loss`), AdamW, EMA.
3. :func:`train_prompts` - needs both and the VLM; the grounding loss of :func:`~.losses.grounding_loss`.
   :func:`train_grounder` is the same loop for any grounder (the CoOp / VPT baselines of the benchmark).

:func:`train_diff_prompt` is **the recipe**: the stages in order (all three, or a later run of them that starts
from a partial bundle), each stage's batch size decided in one place (:func:`stage_batch_size`) and the bundle
(:mod:`.io`) written after each stage. The ComfyUI node ``PWTrainDiffPrompt``, the benchmark and
:func:`train_all` all train through it. Data sources: :mod:`.data` (files, tensors) or the procedural world's
(:mod:`promptweave.prompt_modules.world.sources`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.artifacts import ConfigError
from ..core.data import GroundingBatch, GroundingSource, read_part, resize_masks
from ..core.distributed import SINGLE_PROCESS, DataParallel
from ..core.training import StepCallback, train_frozen
from ..core.vlm import VisionLanguageModel
from .config import DiTConfig, MaskVAEConfig, PromptConfig, check_lr
from .dit import EMA, DiT
from .io import STAGES, Bundle, load_bundle, save_bundle
from .mask_vae import MaskVAE
from .model import DiffPrompt, _square, init_diff_prompt_from_bundle

#: The smallest batch of the Mask-VAE and DiT stages in :func:`train_diff_prompt` (the benchmarked recipe).
MIN_GENERATOR_BATCH = 32


# ----- the training loop ----------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """A trained stage: ``model`` (a MaskVAE, the EMA DiT, or a grounder), its losses and steps."""

    model: nn.Module
    losses: list[float]
    steps_done: int
    interrupted: bool = False


Callback = StepCallback


def _loop(
    name: str,
    module: nn.Module,
    params: list[nn.Parameter],
    step_fn: Callable[[int], torch.Tensor],
    *,
    lr: float,
    weight_decay: float,
    frozen_modules: tuple[nn.Module, ...] = (),
    ema: EMA | None = None,
    **loop_kwargs: Any,
) -> tuple[list[float], int, bool]:
    """AdamW over ``params`` in the shared :func:`~..core.training.train_frozen` (``frozen_modules`` frozen);
    ``step_fn(step)`` returns the loss; ``ema`` (if any) is updated after every step and saved/resumed with
    ``module``. ``loop_kwargs``: steps, seed, backbone, checkpoint_path, checkpoint_every, callback, progress."""
    loop = train_frozen(
        module,
        torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay),
        step_fn,
        frozen_modules=frozen_modules,
        desc=f"Diff-Prompt {name}",
        ema=None if ema is None else ema.module,
        after_step=None if ema is None else (lambda step: ema.update(module, step)),
        extra={"stage": name},
        **loop_kwargs,
    )
    return loop.losses, loop.steps_done, loop.interrupted


def train_mask_vae(
    source: GroundingSource,
    config: MaskVAEConfig | None = None,
    *,
    steps: int = 500,
    batch_size: int = 32,
    seed: int = 0,
    checkpoint_path=None,
    checkpoint_every: int = 100,
    callback: Callback | None = None,
    progress: bool = True,
    parallel: DataParallel = SINGLE_PROCESS,
) -> TrainResult:
    """Stage 1: the Mask-VAE on the source's target masks (paper eq. 3). Under ``parallel`` (torchrun) every
    rank trains on its part of each batch (:func:`~..core.data.read_part`), as the other stages do."""
    config = config or MaskVAEConfig()
    with torch.inference_mode(False), torch.enable_grad():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = MaskVAE(config)
        vae.train()

        def step_fn(step: int) -> torch.Tensor:
            masks = resize_masks(read_part(source, seed, step, batch_size, parallel).masks, config.mask_size)
            return vae.loss(masks, parallel)[0]

        losses, done, interrupted = _loop(
            "vae",
            vae,
            list(vae.parameters()),
            step_fn,
            lr=config.lr,
            weight_decay=0.0,
            steps=steps,
            seed=seed,
            backbone="any",
            checkpoint_path=checkpoint_path,
            checkpoint_every=checkpoint_every,
            callback=callback,
            progress=progress,
            parallel=parallel,
        )
    return TrainResult(vae.eval(), losses, done, interrupted)


@torch.no_grad()
def _features(vlm: VisionLanguageModel, batch: GroundingBatch) -> tuple[torch.Tensor, torch.Tensor]:
    return vlm.encode_image(_square(batch.images, vlm.image_size)), vlm.encode_text(batch.texts)


@torch.no_grad()
def measure_latent_scale(vae: MaskVAE, source: GroundingSource, seed: int = 0, n: int = 256) -> float:
    """``1 / std`` of Mask-VAE latents on ``n`` training masks (LDM's scaling factor)."""
    masks = resize_masks(source.batch(seed, 30_000_000, n).masks, vae.config.mask_size)
    latents = torch.cat([vae.encode(masks[i : i + 64]) for i in range(0, len(masks), 64)])
    return float(1.0 / latents.std().clamp(min=1e-6))


def train_dit(
    vlm: VisionLanguageModel,
    vae: MaskVAE,
    source: GroundingSource,
    config: DiTConfig | None = None,
    *,
    steps: int = 1000,
    batch_size: int = 32,
    seed: int = 0,
    measure_scale: bool = True,
    checkpoint_path=None,
    checkpoint_every: int = 100,
    callback: Callback | None = None,
    progress: bool = True,
    parallel: DataParallel = SINGLE_PROCESS,
) -> TrainResult:
    """Stage 2: the DiT on Mask-VAE latents conditioned on the frozen VLM's image and expression features.

    ``result.model`` is the EMA DiT (the one that samples); its config carries the latent scaling factor (measured
    alike on every rank under ``parallel``).
    """
    config = config or DiTConfig()
    vae_cfg = vae.config
    config = dataclasses.replace(
        config, cond_dim=vlm.embed_dim, latent_channels=vae_cfg.latent_channels, latent_size=vae_cfg.latent_size
    )
    vae = vae.eval().requires_grad_(False)
    if measure_scale:
        config = dataclasses.replace(config, scaling_factor=round(measure_latent_scale(vae, source, seed), 6))
    with torch.inference_mode(False), torch.enable_grad():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            dit = DiT(config).to(vlm.device)
        ema = EMA(dit, config.ema_decay)
        dit.train()

        def step_fn(step: int) -> torch.Tensor:
            batch = read_part(source, seed, step, batch_size, parallel)
            f_img, f_txt = _features(vlm, batch)
            with torch.no_grad():
                z0 = vae.encode(resize_masks(batch.masks, vae_cfg.mask_size).to(vlm.device)) * config.scaling_factor
            return dit.loss(z0, f_img, f_txt, parallel=parallel)

        losses, done, interrupted = _loop(
            "dit",
            dit,
            list(dit.parameters()),
            step_fn,
            lr=config.lr,
            weight_decay=config.weight_decay,
            frozen_modules=(vlm,),
            ema=ema,
            steps=steps,
            seed=seed,
            backbone=vlm.name,
            checkpoint_path=checkpoint_path,
            checkpoint_every=checkpoint_every,
            callback=callback,
            progress=progress,
            parallel=parallel,
        )
    return TrainResult(ema.module.eval(), losses, done, interrupted)


def train_grounder(
    grounder: nn.Module,
    vlm: VisionLanguageModel,
    source: GroundingSource,
    *,
    steps: int = 500,
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    seed: int = 0,
    checkpoint_path=None,
    checkpoint_every: int = 100,
    callback: Callback | None = None,
    progress: bool = True,
    name: str = "prompt",
    parallel: DataParallel = SINGLE_PROCESS,
) -> TrainResult:
    """Train a grounder's ``trainable_parameters()`` with its ``loss`` on a frozen ``vlm`` (stage 3's loop).
    Under ``parallel`` each rank grounds its part of the batch; the grounder's ``forward`` then gets
    ``parallel=`` (for the starting noise of :class:`~.model.DiffPrompt`'s DDIM)."""
    with torch.inference_mode(False), torch.enable_grad():
        params = grounder.trainable_parameters()
        grounder.train()
        size = getattr(grounder, "mask_size", 64)
        options = {"parallel": parallel} if parallel.active else {}

        def step_fn(step: int) -> torch.Tensor:
            batch = read_part(source, seed, step, batch_size, parallel)
            out = grounder(vlm, batch.images.to(vlm.device), batch.texts, **options)
            return grounder.loss(out, resize_masks(batch.masks, size), batch.boxes)

        losses, done, interrupted = _loop(
            name,
            grounder,
            params,
            step_fn,
            lr=lr,
            weight_decay=weight_decay,
            frozen_modules=(vlm,),
            steps=steps,
            seed=seed,
            backbone=vlm.name,
            checkpoint_path=checkpoint_path,
            checkpoint_every=checkpoint_every,
            callback=callback,
            progress=progress,
            parallel=parallel,
        )
    return TrainResult(grounder.eval(), losses, done, interrupted)


def train_prompts(
    vlm: VisionLanguageModel,
    vae: MaskVAE,
    dit: DiT,
    source: GroundingSource,
    config: PromptConfig | None = None,
    *,
    steps: int = 500,
    batch_size: int = 16,
    seed: int = 0,
    checkpoint_path=None,
    checkpoint_every: int = 100,
    callback: Callback | None = None,
    progress: bool = True,
    init_prompts: Any = None,
    parallel: DataParallel = SINGLE_PROCESS,
) -> TrainResult:
    """Stage 3: adapters, global prompts and head on the frozen VLM, Mask-VAE and DiT (``result.model`` is the
    whole :class:`~.model.DiffPrompt`).

    ``init_prompts``: a pretrained prompt bundle (RPP; an object or a path) whose prompts start the global
    prompts, like ``config.init_from`` but also for a bundle held in memory (a ComfyUI node's input)."""
    config = config or PromptConfig()
    with torch.inference_mode(False):
        model = DiffPrompt.for_vlm(vlm, vae, dit, config, seed=seed)
        sample = source.batch(seed, 20_000_000, 16)
        model.init_from_vlm(
            vlm, sample.texts, sample.images.to(vlm.device), generator=torch.Generator().manual_seed(seed)
        )
        pretrained = init_prompts if init_prompts is not None else config.init_from
        if pretrained:  # RPP pretrained prompts as the initialisation (:mod:`..pretraining`)
            init_diff_prompt_from_bundle(model, pretrained, vlm)
    return train_grounder(
        model,
        vlm,
        source,
        steps=steps,
        batch_size=batch_size,
        lr=config.lr,
        weight_decay=config.weight_decay,
        seed=seed,
        checkpoint_path=checkpoint_path,
        checkpoint_every=checkpoint_every,
        callback=callback,
        progress=progress,
        name="prompt",
        parallel=parallel,
    )


# ----- the recipe -----------------------------------------------------------------------------------------------
def stage_batch_size(stage: str, batch_size: int) -> int:
    """The batch size ``stage`` trains with in :func:`train_diff_prompt` for a requested ``batch_size``: the
    Mask-VAE and the DiT take at least :data:`MIN_GENERATOR_BATCH` samples per step (the benchmarked recipe: the
    generator learns the distribution of masks), the prompt stage exactly ``batch_size``."""
    return max(batch_size, MIN_GENERATOR_BATCH) if stage in ("vae", "dit") else batch_size


def earlier_stages(stage: str) -> tuple[str, ...]:
    """The stages a run starting at ``stage`` needs in its bundle (``()`` for ``"vae"``)."""
    return STAGES[: STAGES.index(stage)]


@dataclass
class DiffPromptRun:
    """What :func:`train_diff_prompt` did.

    ``bundle``: the stages there are now (those it started from plus those it trained); ``losses`` and
    ``settings`` (``steps``, ``batch_size``, ``seed``) of each stage it trained, in order; ``interrupted``:
    ``callback`` stopped the run (the interrupted stage is left out of ``bundle``; its checkpoint resumes it)."""

    bundle: Bundle
    losses: dict[str, list[float]] = field(default_factory=dict)
    settings: dict[str, dict[str, int]] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def model(self) -> DiffPrompt | None:
        """The complete model, once stage ``prompt`` is trained."""
        return self.bundle.model

    @property
    def all_losses(self) -> list[float]:
        """Every step's loss of the trained stages, in order (one loss curve)."""
        return [loss for stage in self.losses.values() for loss in stage]


def _check_plan(
    vlm: VisionLanguageModel, stages: tuple[str, ...], previous: Bundle | None, init_prompts: Any
) -> None:
    """Refuse a run that cannot work, before anything trains (:class:`ConfigError` naming the argument)."""
    start = STAGES.index(stages[0]) if stages and stages[0] in STAGES else -1
    if start < 0 or stages != STAGES[start : start + len(stages)]:
        raise ConfigError("stages", f"stages {list(stages)} are not consecutive stages of {list(STAGES)} in order")
    backbone = getattr(init_prompts, "backbone", None)
    if backbone is not None and backbone != vlm.name:
        raise ConfigError("init_prompts", f"they were pretrained for the VLM '{backbone}', not '{vlm.name}'")
    if init_prompts is not None and "prompt" not in stages:
        names = ", ".join(f"'{s}'" for s in stages)
        raise ConfigError("init_prompts", f"stage {names} has no prompts to start from them")
    need = earlier_stages(stages[0])
    if not need:
        return
    if previous is None:
        raise ConfigError(
            "previous", f"stage '{stages[0]}' needs the earlier stage(s) {list(need)}: pass the bundle holding them"
        )
    if [s for s in need if s not in previous.stages]:
        raise ConfigError("stages", f"the bundle holds only {list(previous.stages)}")
    if stages[0] == "prompt" and previous.backbone != vlm.name:
        raise ConfigError(
            "vlm", f"the bundle's DiT was trained with the VLM '{previous.backbone}', not '{vlm.name}'"
        )


def resolve_configs(
    vlm: VisionLanguageModel,
    stages: Sequence[str] = STAGES,
    previous: Bundle | None = None,
    *,
    vae_config: MaskVAEConfig | None = None,
    dit_config: DiTConfig | None = None,
    prompt_config: PromptConfig | None = None,
    ddim_steps: int | None = None,
    prompted_layers: int | None = None,
    lr: float | None = None,
    mask_size: int | None = None,
) -> tuple[MaskVAEConfig, DiTConfig, PromptConfig]:
    """The three stage configs :func:`train_diff_prompt` trains ``stages`` with on ``vlm``, checked before anything
    trains (:class:`~..core.artifacts.ConfigError` naming the field or argument).

    - ``vae_config`` ``None``: :meth:`~.config.MaskVAEConfig.for_image_size`, masks sized from ``vlm.image_size``
      (a 64 px world model: 64, a 224 px CLIP: the paper's 224). ``mask_size`` (``None`` or 0: automatic) sets it;
      a run that starts after stage ``vae`` uses the bundle's Mask-VAE, so a ``mask_size`` other than its size is
      refused.
    - ``ddim_steps`` and ``prompted_layers`` (``None``: the prompt config's) set the prompt stage's DDIM steps and
      its prompted layers per tower (a shallower tower prompts all of its layers); with neither the depth is
      automatic and fits any VLM (:meth:`~.config.PromptConfig.depths`).
    - ``lr`` (``None``: each config's own) sets the learning rate of every stage.
    """
    stages = tuple(stages)
    text_layers, vision_layers = len(vlm.text_blocks), len(vlm.visual.transformer.resblocks)
    if lr is not None:
        check_lr(lr)
    dit = dit_config or DiTConfig()
    if lr is not None:
        dit = dataclasses.replace(dit, lr=float(lr))
    if previous is not None and previous.vae is not None and stages and stages[0] != "vae":
        vae = previous.vae.config
        if mask_size and int(mask_size) != vae.mask_size:
            raise ConfigError(
                "mask_size",
                f"the bundle's Mask-VAE works on {vae.mask_size} px masks, not {mask_size}: leave the mask size "
                "automatic (0) or retrain stage 'vae'",
            )
    else:
        vae = vae_config or MaskVAEConfig.for_image_size(vlm.image_size, dit.patch_size)
        if mask_size:
            step = vae.downsample * dit.patch_size
            if int(mask_size) < step or int(mask_size) % step:
                raise ConfigError(
                    "mask_size",
                    f"mask size {mask_size} must be a positive multiple of {step} (the Mask-VAE's down-sampling "
                    f"{vae.downsample} times the DiT's patch {dit.patch_size}); 0 = automatic",
                )
            vae = dataclasses.replace(vae, mask_size=int(mask_size))
        if lr is not None:
            vae = dataclasses.replace(vae, lr=float(lr))
    if "dit" in stages and vae.latent_size % dit.patch_size:
        raise ConfigError(
            "mask_size",
            f"{vae.mask_size} px masks give {vae.latent_size} x {vae.latent_size} latents, not a multiple of the "
            f"DiT's patch {dit.patch_size}: use a mask size that is a multiple of {vae.downsample * dit.patch_size}",
        )
    prompt = prompt_config or PromptConfig()
    changes: dict[str, Any] = {}
    if ddim_steps is not None:
        changes["ddim_steps"] = int(ddim_steps)
    if lr is not None:
        changes["lr"] = float(lr)
    if prompted_layers is not None:
        deepest = max(text_layers, vision_layers)
        if not 0 <= int(prompted_layers) <= deepest:
            raise ConfigError(
                "prompted_layers",
                f"{prompted_layers} prompted layers do not fit the VLM '{vlm.name}' ({text_layers} text and "
                f"{vision_layers} vision layers): use 0..{deepest}",
            )
        changes.update(
            text_depth=min(int(prompted_layers), text_layers), visual_depth=min(int(prompted_layers), vision_layers)
        )
    if changes:
        prompt = dataclasses.replace(prompt, **changes)
    if "prompt" in stages:
        resolved = prompt.resolved(text_layers, vision_layers)
        n_kept = max(resolved.text_depth, resolved.visual_depth) if resolved.n_generated else 0
        resolved.resolved_keep_steps(n_kept)
    return vae, dit, prompt


def train_diff_prompt(
    vlm: VisionLanguageModel,
    source: GroundingSource,
    *,
    stages: Sequence[str] = STAGES,
    previous: Bundle | None = None,
    vae_config: MaskVAEConfig | None = None,
    dit_config: DiTConfig | None = None,
    prompt_config: PromptConfig | None = None,
    vae_steps: int = 500,
    dit_steps: int = 1000,
    prompt_steps: int = 500,
    batch_size: int = 16,
    seed: int = 0,
    bundle_path: str | os.PathLike[str] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_paths: Mapping[str, str | os.PathLike[str]] | None = None,
    checkpoint_every: int = 100,
    callback: Callback | None = None,
    progress: bool = True,
    init_prompts: Any = None,
    ddim_steps: int | None = None,
    prompted_layers: int | None = None,
    lr: float | None = None,
    mask_size: int | None = None,
    parallel: DataParallel = SINGLE_PROCESS,
) -> DiffPromptRun:
    """Diff-Prompt's recipe: ``stages`` (consecutive, in the order vae -> dit -> prompt) trained one after the
    other, each resumable from its checkpoint, the bundle at ``bundle_path`` written after each.

    - Batch size: :func:`stage_batch_size` (vae and dit at least :data:`MIN_GENERATOR_BATCH`, prompt
      ``batch_size``); steps per stage ``vae_steps``, ``dit_steps``, ``prompt_steps``; every stage uses ``seed``.
    - A run that starts after ``vae`` takes the earlier stages from ``previous`` (a :class:`~.io.Bundle`), or
      else from the bundle already at ``bundle_path``; the prompt stage needs the VLM its DiT was trained with.
    - Checkpoints: ``checkpoint_paths[stage]`` where given, else ``checkpoint_dir/diff_prompt-<stage>.state
      .safetensors`` (none without either), saved every ``checkpoint_every`` steps.
    - ``callback(step, total, loss)`` counts steps over all the run's stages (``total`` = their sum); returning
      ``False`` stops the run after that step (``interrupted``), an exception it raises propagates.
    - ``init_prompts``: RPP pretrained prompts (a bundle or its path) that start the global prompts.
    - Configs (:func:`resolve_configs`): ``vae_config`` ``None`` sizes the masks from the VLM's image size; the
      knobs ``ddim_steps``, ``prompted_layers``, ``lr`` and ``mask_size`` (``None``: the configs' own, automatic
      where they are) override the configs; the defaults fit a VLM of any depth (the prompted layers are capped by
      the tower, the paper's 9 and the DDIM steps). The bundle records the resolved configs.

    A plan that cannot work is refused before anything trains: :class:`~..core.artifacts.ConfigError` whose
    ``field`` names the argument (``stages``, ``previous``, ``vlm``, ``init_prompts``, ``ddim_steps``,
    ``prompted_layers``, ``lr``, ``mask_size``) or the config field (e.g. ``text_depth``, ``keep_steps``).

    Under ``parallel`` (``torchrun``, :mod:`~..core.distributed`) ``batch_size`` is the global batch: each rank
    trains on its part of every batch (reading only it where the source can), with the whole batch's noise and
    timesteps, so the result is a one-process run's; rank 0 alone writes checkpoints and the bundle.
    """
    stages = tuple(stages)
    if previous is None and stages and stages[0] in STAGES[1:] and bundle_path and Path(bundle_path).is_file():
        previous = load_bundle(bundle_path)
    _check_plan(vlm, stages, previous, init_prompts)
    vae_config, dit_config, prompt_config = resolve_configs(
        vlm,
        stages,
        previous,
        vae_config=vae_config,
        dit_config=dit_config,
        prompt_config=prompt_config,
        ddim_steps=ddim_steps,
        prompted_layers=prompted_layers,
        lr=lr,
        mask_size=mask_size,
    )
    steps = {"vae": vae_steps, "dit": dit_steps, "prompt": prompt_steps}
    total = sum(steps[s] for s in stages)

    def checkpoint(stage: str) -> Path | None:
        if checkpoint_paths is not None and stage in checkpoint_paths:
            return Path(checkpoint_paths[stage])
        return None if checkpoint_dir is None else Path(checkpoint_dir) / f"diff_prompt-{stage}.state.safetensors"

    def stage_callback(offset: int) -> Callback | None:
        if callback is None:
            return None
        return lambda step, _steps, loss: callback(offset + step, total, loss)

    bundle = Bundle() if previous is None else dataclasses.replace(previous)  # the caller's bundle stays as it is
    run = DiffPromptRun(bundle)
    offset = 0
    with torch.inference_mode(False), torch.enable_grad():
        for stage in stages:
            settings = {"steps": steps[stage], "batch_size": stage_batch_size(stage, batch_size), "seed": seed}
            common = dict(
                **settings,
                checkpoint_path=checkpoint(stage),
                checkpoint_every=checkpoint_every,
                callback=stage_callback(offset),
                progress=progress,
                parallel=parallel,
            )
            if stage == "vae":
                result = train_mask_vae(source, vae_config, **common)
            elif stage == "dit":
                result = train_dit(vlm, bundle.vae, source, dit_config, **common)
            else:
                result = train_prompts(
                    vlm, bundle.vae, bundle.dit, source, prompt_config, init_prompts=init_prompts, **common
                )
            run.losses[stage], run.settings[stage] = result.losses, settings
            if result.interrupted:
                run.interrupted = True
                break
            write = bool(bundle_path) and parallel.is_main  # rank 0 writes the bundle
            if stage == "vae":
                bundle.vae, bundle.dit, bundle.model, bundle.backbone = result.model, None, None, "any"
                if write:
                    save_bundle(bundle_path, vae=bundle.vae)
            elif stage == "dit":
                bundle.dit, bundle.model, bundle.backbone = result.model, None, vlm.name
                if write:
                    save_bundle(bundle_path, vae=bundle.vae, dit=bundle.dit, backbone=vlm.name)
            else:
                bundle.model = result.model
                if write:
                    save_bundle(bundle_path, model=bundle.model)
            offset += steps[stage]
    return run


def train_all(vlm: VisionLanguageModel, source: GroundingSource, **kwargs: Any) -> DiffPrompt | None:
    """The three stages in order (each resumable from ``checkpoint_dir``), the bundle written after each: the
    complete model of :func:`train_diff_prompt` (same arguments; ``None`` only when ``stages`` leaves out
    ``prompt`` or ``callback`` interrupts the run)."""
    return train_diff_prompt(vlm, source, **kwargs).model


__all__ = [
    "MIN_GENERATOR_BATCH",
    "Callback",
    "DiffPromptRun",
    "TrainResult",
    "earlier_stages",
    "measure_latent_scale",
    "resolve_configs",
    "stage_batch_size",
    "train_all",
    "train_diff_prompt",
    "train_dit",
    "train_grounder",
    "train_mask_vae",
    "train_prompts",
]
