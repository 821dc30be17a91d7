"""IPL training (Guo et al., CVPR 2023): stage 1 trains the latent mapper, stage 2 a PEFT LoRA on the generator.

Notation of the paper: ``G_s`` the frozen source generator, ``G_t`` its adapted copy (here: the same network
with LoRA adapters switched on), ``w`` the per-image latent code, ``F`` the latent mapper, ``E_I`` / ``E_T``
the frozen VLM's image / text encoders, ``N`` L2 normalisation.

* Prompt features (sec. 3.2): ``f(w, d) = E_T([SOS] F(w) tokens(d) [EOS]) + E_T(ctx_init d.)`` (the second term
  is the official code's base feature, ``IPLConfig.add_base_feature``): :class:`~.model.PromptEncoder`.
* Stage 1 (sec. 3.2, eq. 2-3): ``L = L_contr + lambda * L_domain`` with the symmetric InfoNCE between
  ``E_I(G_s(w_i))`` and ``N(f(w_i, source))`` (logit scale of the VLM) and
  ``L_domain = mean_i 1 - cos(f(w_i, target), T(target))``, ``T(d)`` the mean template feature of ``d``
  (:func:`~.losses.mapper_loss`).
* Stage 2 (sec. 3.3, eq. 4): ``L = mean_i 1 - cos(dI_i, dT_i)`` with
  ``dI_i = N(E_I(G_t(w_i))) - N(E_I(G_s(w_i)))`` and ``dT_i = N(f(w_i, target)) - N(f(w_i, source))``
  (:func:`~.losses.directional_loss`). NADA (Gal et al. 2022) is the same loop with one fixed
  ``dT = N(T(target) - T(source))`` and no mapper.
* The LoRA (PEFT ``LoraConfig``; B initialised to zero, so ``G_t = G_s`` at step 0) is trained with Adam and
  tracked by an EMA (decay 0.99); the EMA weights are the result. NADA's adaptive layer selection is
  :func:`select_layers`.

Both stages run on the one training runner (:func:`~promptweave.prompt_modules.core.training.train_frozen`: the
VLM frozen, a resumable loop, the VLM's flags restored). Every batch derives from ``seed``, the stage and the step
number (:func:`~.data.step_seed`) and every trainer writes resumable checkpoints
(:mod:`~promptweave.prompt_modules.core.checkpointing`), so an interrupted run resumed from its checkpoint equals an
uninterrupted one on CPU.

Under ``torchrun`` (``parallel``, :mod:`~promptweave.prompt_modules.core.distributed`) every process draws the
step's codes for the whole batch (cheap) and generates and encodes only its part of them; stage 1 gathers the
features, so every process computes the whole batch's contrastive loss, stage 2's loss is a mean over images. N
processes then train what one process trains, and rank 0 alone writes checkpoints and files.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.distributed import SINGLE_PROCESS, DataParallel
from ..core.training import LoopResult, train_frozen
from .config import IPLConfig
from .data import step_codes, step_seed
from .export import LoraWeights
from .generators import AdaptableGenerator
from .io import check_checkpoint, load_mapper, save_mapper
from .losses import directional_loss, image_specific_direction, mapper_loss, nada_direction
from .mapper import LatentMapper, TrainedMapper
from .model import LoRAAdapter, PromptEncoder

Callback = Callable[[int, int, float], None]


# ----- helpers ----------------------------------------------------------------------------------------------
def peak_memory_mb(device: torch.device | None = None) -> float:
    """Peak accelerator memory (CUDA) since the last reset, else the process's peak resident set size."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _StepTimer:
    """Seconds per optimisation step of this call, from the batch draw to the end of the optimizer step."""

    def __init__(self) -> None:
        self.elapsed, self.steps, self._t0 = 0.0, 0, 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        self.elapsed += time.perf_counter() - self._t0
        self.steps += 1

    @property
    def seconds_per_step(self) -> float:
        return self.elapsed / max(self.steps, 1)


def _run_stage(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    step_fn: Callable[[int], torch.Tensor],
    vlm: Any,
    config: IPLConfig,
    stage: int,
    callback: Callback | None,
    extra: dict[str, Any] | None = None,
    **loop_kwargs: Any,
) -> LoopResult:
    """One stage on the one training runner: the VLM frozen, the run's seed, the run's config and the ``stage`` in
    every checkpoint (+ ``extra``), no progress bar. ``callback`` reports progress (raise from it to stop; the
    runner saves a checkpoint first); its return value is ignored."""

    def on_step(step: int, total: int, loss: float) -> None:
        if callback is not None:
            callback(step, total, loss)

    return train_frozen(
        module,
        optimizer,
        step_fn,
        frozen_modules=(vlm,),
        seed=config.seed,
        callback=on_step,
        progress=False,
        extra={"config": config.to_dict(), "stage": stage, **(extra or {})},
        **loop_kwargs,
    )


# ----- NADA adaptive layer selection --------------------------------------------------------------------------
def _offset_for(module: nn.Module, device: torch.device) -> torch.Tensor:
    base = getattr(module, "base_layer", module)
    if isinstance(base, nn.Conv2d):
        return torch.zeros(1, base.in_channels, 1, 1, device=device, requires_grad=True)
    if isinstance(base, nn.Linear):
        return torch.zeros(base.in_features, device=device, requires_grad=True)
    raise TypeError(f"layer selection supports Linear and Conv2d layers, not {type(base).__name__}")


def select_layers(
    generator: AdaptableGenerator, adapter: LoRAAdapter, vlm: Any, target: torch.Tensor, config: IPLConfig, seed: int
) -> list[str]:
    """NADA's adaptive layer selection (Gal et al. 2022, sec. 4.2), transposed to LoRA layers.

    NADA gives every generator layer its own copy of the W+ code, optimises those copies for a few steps on the
    global CLIP loss ``1 - cos(E_I(G_t(w)), T(target))`` and trains the ``k`` layers whose codes moved most. A
    LoRA'd layer has no code of its own, so each candidate layer gets a learnable offset added to its *input*
    (zeros, per channel), optimised the same way (SGD, ``auto_layer_iters`` steps, lr ``auto_layer_lr``); the
    score is the mean absolute offset. Returns the ``auto_layer_k`` chosen layer names.
    """
    names = adapter.names()
    k = min(config.auto_layer_k, len(names))
    if k <= 0 or k == len(names):
        return names
    device = generator.device
    offsets = {n: _offset_for(adapter.layers[n], device) for n in names}
    hooks = []
    for n in names:

        def hook(_module: nn.Module, args: tuple, _off: torch.Tensor = offsets[n]) -> tuple:
            return (args[0] + _off.to(args[0].dtype), *args[1:])

        hooks.append(adapter.layers[n].register_forward_pre_hook(hook))
    opt = torch.optim.SGD(list(offsets.values()), lr=config.auto_layer_lr)
    codes = generator.sample_codes(config.auto_layer_batch, seed)
    try:
        for _ in range(config.auto_layer_iters):
            feats = vlm.encode_image(generator.generate(codes))
            loss = (1.0 - feats @ target.to(feats.device).T).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        for h in hooks:
            h.remove()
        for p in adapter.parameters():
            p.grad = None
    scores = torch.stack([offsets[n].detach().abs().mean() for n in names])
    chosen = torch.topk(scores, k).indices.tolist()
    return [names[i] for i in sorted(chosen)]


# ----- stage 1 -----------------------------------------------------------------------------------------------
@dataclass
class MapperResult:
    trained: TrainedMapper
    losses: list[float]
    seconds_per_step: float = 0.0


STAGE1_KEYS = (
    "method",
    "source_text",
    "target_text",
    "n_ctx",
    "ctx_init",
    "templates",
    "add_base_feature",
    "mapper_hidden",
    "mapper_layers",
    "mapper_lr_mul",
    "mapper_steps",
    "mapper_batch",
    "mapper_lr",
    "lambda_domain",
    "lambda_source",
    "seed",
)
STAGE2_KEYS = (
    *STAGE1_KEYS,
    "steps",
    "batch_size",
    "lr",
    "betas",
    "ema_decay",
    "rank",
    "alpha",
    "lora_dropout",
    "auto_layer_k",
    "auto_layer_iters",
    "auto_layer_batch",
    "auto_layer_lr",
    "layer_select_every",
)


def train_mapper(
    generator: AdaptableGenerator,
    vlm: Any,
    config: IPLConfig,
    *,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 50,
    callback: Callback | None = None,
    parallel: DataParallel = SINGLE_PROCESS,
) -> MapperResult:
    """Stage 1: train the latent mapper F with the generator and the VLM frozen (paper eq. 2-3). Under
    ``parallel`` each rank generates its part of the batch and the features are gathered (the contrastive loss
    sees the whole batch)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        mapper = LatentMapper(
            generator.latent_dim,
            vlm.token_width,
            config.n_ctx,
            config.mapper_hidden,
            config.mapper_layers,
            config.mapper_lr_mul,
        ).to(generator.device)
    optimizer = torch.optim.Adam(mapper.parameters(), lr=config.mapper_lr)
    path = Path(checkpoint_path) if checkpoint_path else None
    if path is not None and path.is_file():
        check_checkpoint(config, path, STAGE1_KEYS)
    source = PromptEncoder(vlm, config.source_text, config)
    target = PromptEncoder(vlm, config.target_text, config)
    timer = _StepTimer()

    def step_fn(step: int) -> torch.Tensor:
        timer.start()
        codes = parallel.rows(step_codes(generator, config.mapper_batch, config.seed, 1, step))
        with torch.no_grad():
            images = generator.generate(codes)
            image_feats = parallel.gather(vlm.encode_image(images))
        ctx = mapper(generator.latent_code(codes).to(generator.device))
        f_src = parallel.gather(F.normalize(source.features(ctx), dim=-1))
        f_tgt = parallel.gather(F.normalize(target.features(ctx), dim=-1))
        return mapper_loss(image_feats, f_src, f_tgt, source.template, target.template, vlm.logit_scale, config)

    mapper.train()
    loop = _run_stage(
        mapper,
        optimizer,
        step_fn,
        vlm,
        config,
        1,
        callback,
        steps=config.mapper_steps,
        backbone=vlm.name,
        checkpoint_path=path,
        checkpoint_every=checkpoint_every,
        after_step=lambda _step: timer.stop(),
        parallel=parallel,
    )
    mapper.eval()
    for p in mapper.parameters():
        p.requires_grad_(False)
    trained = TrainedMapper(mapper, vlm.name, generator.name, config.to_dict())
    return MapperResult(trained, loop.losses, timer.seconds_per_step)


# ----- stage 2 -----------------------------------------------------------------------------------------------
@dataclass
class AdaptationResult:
    """Stage 2's outcome: the exported (EMA) LoRA, the adapter left in the generator, losses and costs."""

    lora: LoraWeights
    adapter: LoRAAdapter
    losses: list[float]
    mapper: TrainedMapper | None = None
    mapper_losses: list[float] = field(default_factory=list)
    selected_layers: list[str] = field(default_factory=list)
    seconds_per_step: float = 0.0
    mapper_seconds_per_step: float = 0.0
    peak_memory_mb: float = 0.0


class _TensorBag(nn.Module):
    """Tensors under sanitised names, so that a training checkpoint holds only them (not the whole U-Net)."""

    def __init__(self, tensors: dict[str, torch.Tensor], as_parameters: bool) -> None:
        super().__init__()
        for name, tensor in tensors.items():
            key = name.replace(".", "__")
            if as_parameters:
                self.register_parameter(key, tensor)  # shares the Parameter object
            else:
                self.register_buffer(key, tensor)

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {k.replace("__", "."): v for k, v in self.state_dict().items()}


def adapt_generator(
    generator: AdaptableGenerator,
    vlm: Any,
    config: IPLConfig,
    mapper: TrainedMapper | None = None,
    *,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 50,
    callback: Callback | None = None,
    use_ema: bool = True,
    parallel: DataParallel = SINGLE_PROCESS,
) -> AdaptationResult:
    """Stage 2: train a LoRA on ``generator`` with the image-specific (IPL) or fixed (NADA) directional loss.

    IPL needs the stage-1 ``mapper`` (its VLM and latent width are checked). On return the generator's LoRA
    holds the EMA weights (``use_ema``), i.e. ``generator.generate`` draws from the adapted model. Under
    ``parallel`` each rank generates its part of the batch (LoRA dropout: its rows of the whole batch's mask);
    NADA's layer selection runs alike on every rank.
    """
    if config.method == "ipl":
        if mapper is None:
            raise ValueError("IPL stage 2 needs the latent mapper of stage 1 (train_mapper)")
        mapper.check_vlm(vlm)
        mapper.check_generator(generator.latent_dim)
    adapter = LoRAAdapter(
        generator.lora_root, generator.lora_targets, config.rank, config.alpha, config.lora_dropout, seed=config.seed
    )
    params = adapter.parameters()
    optimizer = torch.optim.Adam(params, lr=config.lr, betas=config.betas)
    bag = _TensorBag(adapter.named_tensors(), as_parameters=True)
    ema = _TensorBag(adapter.state(), as_parameters=False)
    chosen = adapter.names()  # updated in place: the checkpoint's extra holds the current choice
    path = Path(checkpoint_path) if checkpoint_path else None
    if path is not None and path.is_file():
        chosen = list(check_checkpoint(config, path, STAGE2_KEYS).get("chosen", chosen))
    device = generator.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if config.method == "ipl":
        src_prompts = PromptEncoder(vlm, config.source_text, config)
        tgt_prompts = PromptEncoder(vlm, config.target_text, config)
        fixed = None
    else:
        fixed = nada_direction(vlm, config)
    target_template = PromptEncoder(vlm, config.target_text, config).template if config.auto_layer_k else None
    timer = _StepTimer()

    def step_fn(step: int) -> torch.Tensor:
        timer.start()
        seed = step_seed(config.seed, 2, step)
        if config.auto_layer_k and step % config.layer_select_every == 0:
            chosen[:] = select_layers(generator, adapter, vlm, target_template, config, seed + 1)
        codes = parallel.rows(generator.sample_codes(config.batch_size, seed))
        with torch.no_grad():
            with adapter.disabled():
                src_feats = vlm.encode_image(generator.generate(codes))
            if fixed is None:
                ctx = mapper.mapper(generator.latent_code(codes).to(next(mapper.mapper.parameters()).device))
                d_text = image_specific_direction(src_prompts.features(ctx), tgt_prompts.features(ctx))
            else:
                d_text = fixed.expand(codes.shape[0], -1)
        with parallel.whole_batch_layers(generator.lora_root):
            tgt_feats = vlm.encode_image(generator.generate(codes))
        return directional_loss(tgt_feats - src_feats, d_text)

    def train_chosen_only(_optimizer: torch.optim.Optimizer, _args: tuple, _kwargs: dict) -> None:
        """Before each Adam step: drop the gradients of the layers not chosen (Adam skips them)."""
        if len(chosen) < len(adapter.layers):
            keep = {id(p) for n in chosen for p in adapter.module_parameters(n)}
            for p in params:
                if id(p) not in keep:
                    p.grad = None

    def update_ema(_step: int) -> None:
        with torch.no_grad():
            for key, value in bag.state_dict().items():
                ema_t = getattr(ema, key)
                ema_t.mul_(config.ema_decay).add_(value.detach(), alpha=1.0 - config.ema_decay)
        timer.stop()

    hook = optimizer.register_step_pre_hook(train_chosen_only)
    try:
        loop = _run_stage(
            bag,
            optimizer,
            step_fn,
            vlm,
            config,
            2,
            callback,
            {"chosen": chosen},
            steps=config.steps,
            backbone=generator.name,
            checkpoint_path=path,
            checkpoint_every=checkpoint_every,
            ema=ema,
            after_step=update_ema,
            parallel=parallel,
        )
    finally:
        hook.remove()
    final = ema.as_dict() if use_ema else adapter.state()
    adapter.load_state(final)
    for p in params:
        p.requires_grad_(False)
    down, up = adapter.weights(final)
    lora = LoraWeights(
        down=down,
        up=up,
        rank=config.rank,
        alpha=config.alpha,
        kind=generator.kind,
        naming=getattr(generator, "naming", "native"),
        base=generator.name,
        num_res_blocks=list(getattr(generator, "num_res_blocks", []) or []),
        info={
            "method": config.method,
            "source_text": config.source_text,
            "target_text": config.target_text,
            "steps": config.steps,
            "ema": use_ema,
        },
    )
    return AdaptationResult(
        lora=lora,
        adapter=adapter,
        losses=loop.losses,
        mapper=mapper,
        selected_layers=chosen,
        seconds_per_step=timer.seconds_per_step,
        peak_memory_mb=peak_memory_mb(device),
    )


def run_adaptation(
    generator: AdaptableGenerator,
    vlm: Any,
    config: IPLConfig,
    mapper: TrainedMapper | None = None,
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 50,
    callback: Callable[[str, int, int, float], None] | None = None,
    parallel: DataParallel = SINGLE_PROCESS,
) -> AdaptationResult:
    """Both stages (IPL) or stage 2 alone (NADA, or IPL with a given ``mapper``); ``callback(stage, step, total,
    loss)``. With ``checkpoint_dir``, stage checkpoints (``mapper.state.safetensors``, ``lora.state.safetensors``)
    and the finished mapper (``mapper.safetensors``) go there so that a rerun resumes. The mapper's state file is
    removed once the mapper is saved there; the LoRA's stays, so that a rerun after a failed save of the LoRA (the
    caller's to save) only returns it: remove the folder once the LoRA is saved, as the nodes do. ``parallel``:
    both stages under torchrun (rank 0 writes the folder's files)."""
    folder = Path(checkpoint_dir) if checkpoint_dir else None
    mapper_losses: list[float] = []
    mapper_sps = 0.0
    if config.method == "ipl" and mapper is None:
        done_file = folder / "mapper.safetensors" if folder else None
        if done_file is not None and done_file.is_file():
            mapper = load_mapper(done_file, vlm)
            mapper_losses = [float(v) for v in mapper.config.get("extra", {}).get("losses", [])]
        else:
            stage1 = train_mapper(
                generator,
                vlm,
                config,
                checkpoint_path=folder / "mapper.state.safetensors" if folder else None,
                checkpoint_every=checkpoint_every,
                callback=(lambda s, t, v: callback("mapper", s, t, v)) if callback else None,
                parallel=parallel,
            )
            mapper, mapper_losses, mapper_sps = stage1.trained, stage1.losses, stage1.seconds_per_step
            if folder is not None and parallel.is_main:
                mapper.config = {**mapper.config, "extra": {**config.extra, "losses": mapper_losses}}
                save_mapper(mapper, folder / "mapper.safetensors")
                (folder / "mapper.state.safetensors").unlink(missing_ok=True)
    lora_state = folder / "lora.state.safetensors" if folder else None
    result = adapt_generator(
        generator,
        vlm,
        config,
        mapper if config.method == "ipl" else None,
        checkpoint_path=lora_state,
        checkpoint_every=checkpoint_every,
        callback=(lambda s, t, v: callback("lora", s, t, v)) if callback else None,
        parallel=parallel,
    )
    result.mapper_losses, result.mapper_seconds_per_step = mapper_losses, mapper_sps
    return result
