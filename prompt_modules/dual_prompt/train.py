"""Training DCAR prompts on a frozen VLM (:func:`train_dual_prompt`): the category-aware loss of
:meth:`~.model.DualPrompt.loss` through the shared frozen, resumable runner (:func:`~..core.training.train_frozen`),
then the vocabulary projection of the text context and the MI reference bank."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..core.data import RetrievalSource
from ..core.distributed import SINGLE_PROCESS, DataParallel
from ..core.training import train_frozen
from ..core.vlm import VisionLanguageModel
from .config import DualPromptConfig
from .model import DualPrompt, init_dual_prompt_from_bundle


@dataclass
class TrainResult:
    dual: DualPrompt
    losses: list[float]
    steps_done: int
    interrupted: bool = False


def train_dual_prompt(
    vlm: VisionLanguageModel,
    source: RetrievalSource,
    config: DualPromptConfig | None = None,
    *,
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 5e-3,
    seed: int = 0,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 50,
    callback: Callable[[int, int, float], bool | None] | None = None,
    progress: bool = True,
    bank_batches: int = 4,
    init_prompts: Any = None,
    parallel: DataParallel = SINGLE_PROCESS,
) -> TrainResult:
    """Train DCAR prompts on a frozen ``vlm``; batches come from ``source.batch(seed, step, batch_size)``.

    ``init_prompts``: a pretrained prompt bundle (RPP, :mod:`..pretraining`; an object or a path) to start
    from, like ``config.init_from`` but also for a bundle held in memory (e.g. a ComfyUI node's input).

    Deterministic for a seed. With ``checkpoint_path`` the state is saved every ``checkpoint_every`` steps,
    on interruption and at the end, and an existing checkpoint is resumed (same result as an uninterrupted
    run). ``callback(step, steps, loss)`` runs after each step; returning ``False`` stops early
    (``interrupted=True``), an exception it raises propagates after the state has been saved.

    Runs with inference mode off and gradients on (so it works inside a ComfyUI node); the VLM's weights
    must be ordinary tensors (clone a model that was loaded under ``torch.inference_mode()``).
    """
    with torch.inference_mode(False), torch.enable_grad():
        return _train(vlm, source, config, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                      checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every, callback=callback,
                      progress=progress, bank_batches=bank_batches, init_prompts=init_prompts, parallel=parallel)


def _train(vlm, source, config, *, steps, batch_size, lr, seed, checkpoint_path, checkpoint_every, callback,
           progress, bank_batches, init_prompts, parallel=SINGLE_PROCESS) -> TrainResult:
    config = config or DualPromptConfig()
    sample = source.batch(seed, 20_000_000, min(batch_size, 32))
    dual = DualPrompt.for_vlm(vlm, config, seed=seed, sample=sample)
    if init_prompts is not None:
        init_dual_prompt_from_bundle(dual, init_prompts, vlm)
    params = [p for p in dual.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    loop = train_frozen(
        dual,
        optimizer,
        lambda step: dual.loss(vlm, source.batch(seed, step, batch_size), parallel),
        frozen_modules=(vlm,),
        steps=steps,
        seed=seed,
        backbone=vlm.name,
        checkpoint_path=checkpoint_path,
        checkpoint_every=checkpoint_every,
        callback=callback,
        progress=progress,
        desc="DCAR",
        parallel=parallel,
    )
    dual.eval()
    with torch.no_grad():
        dual.project_to_vocabulary(vlm)
        if config.token_reweighting and config.bank_size:
            images = torch.cat([source.batch(seed, 10_000_000 + k, batch_size).images for k in range(bank_batches)])
            dual.refresh_bank(vlm, images)
    return TrainResult(dual, loop.losses, loop.steps_done, loop.interrupted)
