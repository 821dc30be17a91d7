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
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .artifacts import (
    TRAINING_STATE,
    ArtifactError,
    base_metadata,
    meta_field,
    read_safetensors,
    save_safetensors_atomic,
)

METHOD = TRAINING_STATE


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
