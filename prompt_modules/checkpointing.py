"""Resumable training state as safetensors: model, optimizer, step and RNG, written atomically.

Every PromptWeave trainer saves its state with :func:`save_training_state` every few steps and resumes
with :func:`load_training_state`. The optimizer's per-parameter tensors are flattened to
``optim.<param index>.<name>`` and its hyper-parameters go to the metadata as JSON, so no pickle is ever
involved. Trainers derive each batch from ``seed + step``, so a resumed run reproduces an uninterrupted
one bit for bit on CPU.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .artifacts import ArtifactError, base_metadata, meta_field, read_safetensors, save_safetensors_atomic

METHOD = "training_state"


def save_training_state(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    *,
    backbone: str,
    extra: Mapping[str, object] | None = None,
    ema: nn.Module | None = None,
) -> Path:
    """Write the complete state needed to continue training at ``step`` (atomic replace of ``path``)."""
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    groups: list[dict] = []
    if optimizer is not None:
        state = optimizer.state_dict()
        for index, param_state in state["state"].items():
            for name, value in param_state.items():
                tensor = value if torch.is_tensor(value) else torch.tensor(value)
                tensors[f"optim.{index}.{name}"] = tensor
        groups = state["param_groups"]
    tensors["rng.torch"] = torch.get_rng_state()
    meta = base_metadata(METHOD, backbone, step=step, param_groups=groups, extra=dict(extra or {}))
    return save_safetensors_atomic(path, tensors, meta)


def load_training_state(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    backbone: str | None = None,
    ema: nn.Module | None = None,
) -> tuple[int, dict]:
    """Restore a state written by :func:`save_training_state`; returns ``(step, extra)``."""
    tensors, metadata = read_safetensors(path)
    if metadata.get("promptweave.method") != METHOD:
        raise ArtifactError(f"{path} is not a PromptWeave training checkpoint")
    found = str(meta_field(metadata, "backbone"))
    if backbone is not None and found != backbone:
        raise ArtifactError(f"{path} is a checkpoint for '{found}', not '{backbone}': start a new run")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    if optimizer is not None:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        groups = meta_field(metadata, "param_groups", [])
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    extra = meta_field(metadata, "extra", {})
    return int(meta_field(metadata, "step", 0)), extra if isinstance(extra, dict) else json.loads(extra)


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
) -> LoopResult:
    """The optimisation loop every prompt trainer shares: resumable, interruptible, deterministic.

    ``step_fn(step)`` returns the loss (or ``(loss, logs)`` with named floats to record per step); torch's
    global seed is set to ``seed * 7919 + step`` before it, so random choices inside depend on the step only.
    After each optimizer step ``after_step(step)`` runs (e.g. an EMA update of ``ema``). With
    ``checkpoint_path``, ``module`` (+ ``ema``), the optimizer, the losses and ``extra`` are saved every
    ``checkpoint_every`` steps, when ``callback`` returns ``False``, when an exception escapes (then
    re-raised) and at the end; an existing checkpoint is resumed, so a resumed run equals an uninterrupted one.
    """
    from tqdm.auto import tqdm

    start, losses, logs = 0, [], {}
    if checkpoint_path is not None and Path(checkpoint_path).is_file():
        start, saved = load_training_state(checkpoint_path, module, optimizer, backbone=backbone, ema=ema)
        losses = [float(x) for x in saved.get("losses", [])][:start]
        logs = {k: [float(x) for x in v][:start] for k, v in dict(saved.get("logs", {})).items()}

    def save(step: int) -> None:
        if checkpoint_path is not None:
            state = {**(extra or {}), "losses": losses, "logs": logs}
            save_training_state(checkpoint_path, module, optimizer, step, backbone=backbone, extra=state, ema=ema)

    interrupted = False
    bar = tqdm(total=steps, initial=start, disable=not progress, desc=desc)
    try:
        for step in range(start, steps):
            torch.manual_seed(seed * 7919 + step)
            out = step_fn(step)
            loss, named = out if isinstance(out, tuple) else (out, {})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step(step)
            losses.append(float(loss.detach()))
            for key, value in named.items():
                logs.setdefault(key, []).append(float(value))
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
