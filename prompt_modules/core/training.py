"""The one training runner every prompt trainer shares: freeze the backbones -> resumable loop -> unfreeze.

A trainer builds its learnable module, its optimizer and a ``step_fn(step) -> loss``; :func:`train_frozen`
runs it with gradients on (also inside ComfyUI's ``torch.inference_mode()``), the given backbones frozen
and in eval mode, and their ``requires_grad`` flags restored afterwards, whatever happens.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .checkpointing import load_training_state, save_training_state
from .distributed import SINGLE_PROCESS, DataParallel

#: ``callback(step, steps, loss)`` after each step; returning ``False`` interrupts the run.
StepCallback = Callable[[int, int, float], "bool | None"]


class LoopResult(NamedTuple):
    """What :func:`run_resumable_loop` did: every step's loss (resumed ones included), any extra per-step
    ``logs`` series, the number of steps done and whether ``callback`` interrupted the run."""

    losses: list[float]
    logs: dict[str, list[float]]
    steps_done: int
    interrupted: bool


def run_resumable_loop(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    step_fn: Callable[[int], torch.Tensor | tuple[torch.Tensor, Mapping[str, float]]],
    *,
    steps: int,
    seed: int,
    backbone: str,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 50,
    callback: StepCallback | None = None,
    progress: bool = True,
    desc: str = "training",
    ema: nn.Module | None = None,
    after_step: Callable[[int], None] | None = None,
    extra: Mapping[str, object] | None = None,
    parallel: DataParallel = SINGLE_PROCESS,
) -> LoopResult:
    """The optimisation loop every prompt trainer shares: resumable, interruptible, deterministic.

    ``step_fn(step)`` returns the loss (or ``(loss, logs)`` with named floats to record per step); torch's
    global seed is set to ``seed * 7919 + step`` before it, so random choices inside depend on the step only.
    After each optimizer step ``after_step(step)`` runs (e.g. an EMA update of ``ema``). With
    ``checkpoint_path``, ``module`` (+ ``ema``), the optimizer, the losses and ``extra`` are saved every
    ``checkpoint_every`` steps, when ``callback`` returns ``False``, when an exception escapes (then
    re-raised) and at the end; an existing checkpoint is resumed, so a resumed run equals an uninterrupted one.

    Under ``parallel`` (:mod:`.distributed`) ``step_fn`` returns the loss of this rank's part of the step's
    global batch; the trainable gradients and the recorded losses are averaged over the ranks, and only rank 0
    writes the checkpoint and shows progress (``callback`` must decide alike on every rank).
    """
    from tqdm.auto import tqdm

    start, losses, logs = 0, [], {}
    if checkpoint_path is not None and Path(checkpoint_path).is_file():
        start, saved = load_training_state(checkpoint_path, module, optimizer, backbone=backbone, ema=ema)
        losses = [float(x) for x in saved.get("losses", [])][:start]
        logs = {k: [float(x) for x in v][:start] for k, v in dict(saved.get("logs", {})).items()}

    trainable = [p for group in optimizer.param_groups for p in group["params"]]

    def save(step: int) -> None:
        if checkpoint_path is not None and parallel.is_main:
            state = {**(extra or {}), "losses": losses, "logs": logs}
            save_training_state(checkpoint_path, module, optimizer, step, backbone=backbone, extra=state, ema=ema)

    interrupted = False
    bar = tqdm(total=steps, initial=start, disable=not (progress and parallel.is_main), desc=desc)
    try:
        for step in range(start, steps):
            torch.manual_seed(seed * 7919 + step)
            out = step_fn(step)
            loss, named = out if isinstance(out, tuple) else (out, {})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            parallel.average_gradients(trainable)
            optimizer.step()
            if after_step is not None:
                after_step(step)
            losses.append(parallel.mean(float(loss.detach())))
            for key, value in named.items():
                logs.setdefault(key, []).append(parallel.mean(float(value)))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            done = step + 1
            if checkpoint_every and done % checkpoint_every == 0:
                save(done)
            if callback is not None and callback(done, steps, losses[-1]) is False:
                interrupted = True
                save(done)
                break
    except BaseException:
        save(len(losses))
        raise
    finally:
        bar.close()
    if not interrupted:
        save(len(losses))
    return LoopResult(losses, logs, len(losses), interrupted)


@contextlib.contextmanager
def frozen(*modules: nn.Module | None, eval_mode: bool = True) -> Iterator[None]:
    """``requires_grad`` off for every parameter of ``modules`` (and ``eval()`` with ``eval_mode``) for the
    block; the flags are restored afterwards (the train/eval mode is left as eval)."""
    flags = [(p, p.requires_grad) for m in modules if m is not None for p in m.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    if eval_mode:
        for m in modules:
            if m is not None:
                m.eval()
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def train_frozen(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    step_fn: Callable[[int], torch.Tensor | tuple[torch.Tensor, Mapping[str, float]]],
    *,
    frozen_modules: tuple[nn.Module | None, ...] = (),
    **loop_kwargs,
) -> LoopResult:
    """:func:`run_resumable_loop` with gradients on (inference mode off) and ``frozen_modules`` frozen: the
    freeze -> resumable loop -> unfreeze block of every trainer. ``loop_kwargs`` go to the loop unchanged."""
    with torch.inference_mode(False), torch.enable_grad(), frozen(*frozen_modules):
        return run_resumable_loop(module, optimizer, step_fn, **loop_kwargs)
