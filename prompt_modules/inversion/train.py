"""Training a prompt inverter: plain, then curriculum; resumable, seeded, interruptible.

Schedule (``config.curriculum``): phase 1 trains a first model on all pairs for ``epochs`` epochs and records
each sample's cosine score after every epoch; phase 2 trains a fresh model on the easiest 1/4, 1/3, 1/2 and
then all samples (``epochs`` epochs in total, split evenly over the stages; the learning rate follows one
cosine cycle per stage, so the final all-data stage starts from the full rate again). Without curriculum only phase 1
runs. Batch indices and dropout noise come from ``seed`` and the global step, so a run resumed from a
checkpoint (:mod:`..checkpointing`, written every ``checkpoint_every`` steps) reproduces the uninterrupted run.
After training: Platt calibration of the keyword scores on the training predictions, the training prompts as
the prompt bank, and optionally DAKL fitted on the training predictions.

Under ``torchrun`` (``parallel``, :mod:`..core.distributed`) every process holds all the features, draws the same
batch indices and trains on its part of them: the head's BatchNorm normalises with the whole batch's statistics and
its Dropout keeps the process's rows of the whole batch's mask, so N processes train what one process trains.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..core.artifacts import ArtifactError, ConfigError
from ..core.checkpointing import load_training_state, save_training_state
from ..core.distributed import SINGLE_PROCESS, DataParallel
from ..core.plots import loss_curve_image  # noqa: F401  (re-exported)
from .config import InverterConfig
from .curriculum import curriculum_subsets, weighted_scores
from .dakl import DAKL
from .data import prompt_targets
from .decode import PromptBank, fit_calibration
from .losses import inversion_loss
from .model import PIXELS, PromptInverter
from .targets import TextEmbedder, default_embedder
from .vocabulary import Vocabulary

StepCallback = Callable[[int, int, float], None]
"""``callback(step, total_steps, loss)`` after every step; raise from it to interrupt (the step is checkpointed
first)."""


@dataclass
class TrainResult:
    inverter: PromptInverter
    losses: list[float] = field(default_factory=list)
    scores: torch.Tensor | None = None  # weighted per-sample cosine of the first model (curriculum)
    seconds: float = 0.0
    resumed_from: int = 0


class _State(nn.Module):
    """What a checkpoint holds besides the optimizer: the model and the per-epoch score history."""

    def __init__(self, inverter: PromptInverter, epochs: int, n: int, total: int) -> None:
        super().__init__()
        self.inverter = inverter
        self.register_buffer("history", torch.zeros(epochs, n))
        self.register_buffer("losses", torch.full((total,), float("nan")))


def _fresh(config: InverterConfig, vocabulary: Vocabulary, seed: int) -> PromptInverter:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PromptInverter(config, vocabulary)


def _optimizer(model: nn.Module, config: InverterConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _lr(config: InverterConfig, step: int, steps: int) -> float:
    progress = min(1.0, step / max(1, steps))
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def _cosines(model: PromptInverter, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    emb, _ = model.predict(inputs, use_dakl=False)
    return F.cosine_similarity(emb, targets, dim=-1)


def train_inverter(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor,
    config: InverterConfig,
    vocabulary: Vocabulary,
    *,
    texts: Sequence[str] | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 200,
    callback: StepCallback | None = None,
    dakl_clusters: int = 0,
    progress: bool = False,
    parallel: DataParallel = SINGLE_PROCESS,
) -> TrainResult:
    """Train on ``inputs`` (features ``[N, feature_dim]``, or images ``[N, 3, H, W]`` for ``pixels``).

    ``targets`` are the prompts' MiniLM embeddings ``[N, 384]``, ``labels`` their multi-hot vocabulary labels.
    ``texts`` (the prompts) become the prompt bank. ``dakl_clusters > 0`` fits DAKL with that many centroids.
    ``parallel``: this process's place under torchrun (every rank passes all the pairs; the batch, the smaller of
    ``config.batch_size`` and the pair count, is split into equal parts; rank 0 alone writes the checkpoint).
    """
    n = inputs.shape[0]
    if n == 0:
        raise ValueError("no training pairs: the dataset is empty")
    if targets.shape[0] != n or labels.shape[0] != n:
        raise ValueError(f"{n} inputs but {targets.shape[0]} targets and {labels.shape[0]} label rows")
    start_time = time.perf_counter()
    spe = max(1, math.ceil(n / config.batch_size))
    plain_steps = config.epochs * spe
    stages = config.curriculum_fractions if config.curriculum else ()
    stage_steps = [max(1, plain_steps // len(stages)) for _ in stages] if stages else []
    total = plain_steps + sum(stage_steps)
    batch = min(config.batch_size, n)

    state = _State(_fresh(config, vocabulary, config.seed), config.epochs, n, total)
    opt = _optimizer(state.inverter, config)
    step = 0
    if checkpoint_path is not None and os.path.exists(checkpoint_path):
        try:
            step, _ = load_training_state(checkpoint_path, state, opt, backbone=config.backbone)
        except (RuntimeError, ValueError, KeyError) as exc:  # another dataset size, width or vocabulary
            raise ArtifactError(f"{checkpoint_path} does not fit this run: {str(exc)[:300]}") from None
    resumed_from = step
    subsets: list[torch.Tensor] | None = None
    if config.curriculum and step > plain_steps:
        subsets = curriculum_subsets(weighted_scores(state.history), stages)
    losses = state.losses[:step].tolist()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=step, desc="prompt inverter", disable=not parallel.is_main)
    while step < total:
        if config.curriculum and step == plain_steps:  # phase 2: a fresh model on easy -> hard subsets
            subsets = curriculum_subsets(weighted_scores(state.history), stages)
            state.inverter.load_state_dict(_fresh(config, vocabulary, config.seed + 1).state_dict())
            opt = _optimizer(state.inverter, config)
        if step < plain_steps:
            pool, local, steps = None, step, plain_steps
        else:
            offset, k = step - plain_steps, 0
            while offset >= stage_steps[k] and k < len(stage_steps) - 1:
                offset -= stage_steps[k]
                k += 1
            pool, local, steps = subsets[k], offset, stage_steps[k]  # a cosine cycle per stage
        for group in opt.param_groups:
            group["lr"] = _lr(config, local, steps)
        g = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        size = n if pool is None else pool.numel()
        idx = torch.randint(size, (batch,), generator=g)
        if pool is not None:
            idx = pool[idx]
        idx = parallel.rows(idx)  # this rank's part of the batch (all of it in one process)
        state.inverter.train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed * 7919 + step)
            with parallel.whole_batch_layers(state.inverter):
                emb, logits = state.inverter(inputs[idx])
            loss, _ = inversion_loss(emb, targets[idx], logits, labels[idx],
                                     vocab_weight=config.vocab_weight, huber_weight=config.huber_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        parallel.average_gradients(state.inverter.parameters())
        opt.step()
        losses.append(parallel.mean(float(loss.detach())))
        state.losses[step] = losses[-1]
        step += 1
        if config.curriculum and step <= plain_steps and step % spe == 0:
            state.history[step // spe - 1] = _cosines(state.inverter, inputs, targets)
        if checkpoint_path is not None and parallel.is_main and (step % checkpoint_every == 0 or step == total):
            save_training_state(checkpoint_path, state, opt, step, backbone=config.backbone)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if callback is not None:
            try:
                callback(step, total, losses[-1])
            except BaseException:  # interrupted: keep this step, as the shared loop (core.training) does
                if checkpoint_path is not None and parallel.is_main and step % checkpoint_every and step != total:
                    save_training_state(checkpoint_path, state, opt, step, backbone=config.backbone)
                raise
    if bar is not None:
        bar.close()
    inverter = state.inverter.eval()
    finish(inverter, inputs, targets, labels, texts=texts, dakl_clusters=dakl_clusters, seed=config.seed)
    scores = weighted_scores(state.history) if config.curriculum else None
    return TrainResult(inverter, losses, scores, time.perf_counter() - start_time, resumed_from)


@torch.no_grad()
def finish(
    inverter: PromptInverter, inputs: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, *,
    texts: Sequence[str] | None = None, dakl_clusters: int = 0, seed: int = 0,
) -> None:
    """Keyword calibration, prompt bank and (optionally) DAKL from the training data."""
    inverter.dakl = None
    emb, _ = inverter.predict(inputs, use_dakl=False)
    logits = inverter.vocab_head(emb)
    if labels.shape[1]:
        inverter.calibration.copy_(torch.tensor(fit_calibration(logits, labels)))
    if texts is not None:
        unique: dict[str, int] = {}
        for i, t in enumerate(texts):
            unique.setdefault(t, i)
        inverter.bank = PromptBank(list(unique), targets[list(unique.values())])
    if dakl_clusters > 0:
        inverter.dakl = DAKL.fit(emb, targets, clusters=dakl_clusters, seed=seed)




def train_inverter_on_prompts(
    inputs: torch.Tensor,
    texts: Sequence[str],
    backbone: str,
    *,
    vocab_size: int = 1000,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    hidden_width: int = 512,
    curriculum: bool = True,
    seed: int = 0,
    embedder: TextEmbedder | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 200,
    callback: StepCallback | None = None,
    progress: bool = False,
    parallel: DataParallel = SINGLE_PROCESS,
) -> TrainResult:
    """The recipe behind Train Prompt Inverter and ``diffusers_api.train_inverter``: image features (or pixels,
    ``backbone == "pixels"``) and their prompts -> vocabulary of the prompts' content words (sec. 3.2), MiniLM
    targets (sec. 3.1) -> :func:`train_inverter` with a two-layer head of ``hidden_width`` (dropout 0.5 on
    features, 0.1 on the pixel encoder). A plan that cannot work raises :class:`ConfigError` naming the argument.
    ``parallel``: as :func:`train_inverter` (``python -m promptweave.train inversion`` under torchrun).

    Runs with inference mode off and gradients on (so it works inside a ComfyUI node).
    """
    texts = [t.strip() for t in texts]
    if len(texts) != inputs.shape[0]:
        raise ConfigError("texts", f"{len(texts)} prompts for {inputs.shape[0]} images: give one prompt per image")
    if len(texts) < 2:  # the head's BatchNorm layers cannot train on a single sample
        raise ConfigError("texts", "there is only one training pair: give at least two image/prompt pairs")
    if batch_size < 2:
        raise ConfigError("batch_size", "the inverter's BatchNorm layers cannot train on batches of one")
    try:
        vocabulary = Vocabulary.build(texts, size=vocab_size)
    except ValueError as exc:
        raise ConfigError("texts", str(exc)) from None
    targets, labels = prompt_targets(texts, vocabulary, embedder or default_embedder())
    config = InverterConfig(
        backbone=backbone,
        feature_dim=128 if backbone == PIXELS else int(inputs.shape[1]),
        hidden=(hidden_width, hidden_width),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        curriculum=curriculum,
        seed=seed,
        dropout=0.5 if backbone != PIXELS else 0.1,
    )
    with torch.inference_mode(False), torch.enable_grad():
        return train_inverter(
            inputs.clone(), targets.clone(), labels.clone(), config, vocabulary, texts=texts,
            checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every, callback=callback, progress=progress,
            parallel=parallel,
        )
