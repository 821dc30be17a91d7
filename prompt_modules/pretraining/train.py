"""RPP pretraining on a frozen VLM (:func:`pretrain_prompts`: POMP class subsets, the prompted classifier and
:func:`~.losses.rpp_loss` against a frozen teacher, through the shared frozen, resumable runner
:func:`~..core.training.train_frozen`), zero-shot evaluation (:func:`classify`, :func:`accuracy`) and
pretraining straight into a bundle (:func:`pretrain_bundle`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.data import ClassSource
from ..core.distributed import SINGLE_PROCESS, DataParallel
from ..core.training import train_frozen
from ..core.vlm import VisionLanguageModel
from .config import RPPConfig
from .data import sample_class_subset
from .io import PretrainedPromptBundle, save_pretrained_prompts
from .losses import rpp_loss
from .model import RPPPrompts


@dataclass
class PretrainResult:
    rpp: RPPPrompts
    losses: list[float]
    steps_done: int
    interrupted: bool = False
    class_names: list[str] = field(default_factory=list)
    parts: dict[str, list[float]] = field(default_factory=dict)


@torch.no_grad()
def teacher_class_features(teacher: VisionLanguageModel, class_names: Sequence[str], template: str, chunk: int = 256):
    """The frozen teacher's normalised zero-shot class features ``[C, D]`` (hand-written template)."""
    texts = [template.format(n) for n in class_names]
    return torch.cat([teacher.encode_text(texts[i : i + chunk]) for i in range(0, len(texts), chunk)])


class LazyTeacherClassFeatures:
    """:func:`teacher_class_features`, each class encoded the first time a step's class subset holds it.

    The paper's teacher is a larger CLIP; its text tower over thousands of classes costs minutes on a CPU before
    the first step, while a short run touches only its steps' classes. The rows are the same features."""

    def __init__(self, teacher: VisionLanguageModel, class_names: Sequence[str], template: str, chunk: int = 256):
        self.teacher, self.class_names, self.template, self.chunk = teacher, list(class_names), template, chunk
        self._rows: dict[int, torch.Tensor] = {}

    def __call__(self, subset: torch.Tensor) -> torch.Tensor:
        """``[len(subset), D]``: the features of the classes ``subset`` (indices into ``class_names``)."""
        indices = [int(i) for i in subset.tolist()]
        missing = sorted(set(indices) - self._rows.keys())
        if missing:
            names = [self.class_names[i] for i in missing]
            features = teacher_class_features(self.teacher, names, self.template, self.chunk)
            self._rows.update(zip(missing, features, strict=True))
        return torch.stack([self._rows[i] for i in indices])


def pretrain_prompts(
    vlm: VisionLanguageModel,
    source: ClassSource,
    config: RPPConfig | None = None,
    *,
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    teacher: VisionLanguageModel | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 50,
    callback: Callable[[int, int, float], bool | None] | None = None,
    progress: bool = True,
    parallel: DataParallel = SINGLE_PROCESS,
) -> PretrainResult:
    """Pretrain RPP prompts on a frozen ``vlm`` as a classifier over ``source.class_names``.

    Each step: a batch ``source.batch(seed, step, batch_size)``, a POMP class subset
    (:func:`sample_class_subset`), the prompted image and class features, and :func:`rpp_loss` against the
    frozen ``teacher``'s zero-shot probabilities (default: ``vlm`` without prompts). Deterministic for a seed;
    with ``checkpoint_path`` the state is saved every ``checkpoint_every`` steps, on interruption and at the
    end, and an existing checkpoint is resumed (same result as an uninterrupted run). ``callback(step,
    steps, loss)`` runs after each step; returning ``False`` stops early (``interrupted=True``), an exception
    it raises propagates after the state has been saved. Runs with inference mode off and gradients on.
    Under ``parallel`` (``torchrun``, :mod:`~..core.distributed`) ``batch_size`` is the global batch: each rank
    takes its part of every batch (the class subset is drawn from the whole batch's labels; a source with
    ``batch_labels`` and ``batch_part`` renders or loads only the rank's images), and the result equals a
    one-process run's.
    """
    with torch.inference_mode(False), torch.enable_grad():
        return _pretrain(
            vlm,
            source,
            config or RPPConfig(),
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            teacher=teacher or vlm,
            checkpoint_path=checkpoint_path,
            checkpoint_every=checkpoint_every,
            callback=callback,
            progress=progress,
            parallel=parallel,
        )


def _pretrain(
    vlm, source, config, *, steps, batch_size, lr, seed, teacher, checkpoint_path, checkpoint_every, callback, progress,
    parallel=SINGLE_PROCESS,
) -> PretrainResult:
    names = list(source.class_names)
    if len(names) < 2:
        raise ValueError(f"prompt pretraining needs at least 2 classes, the source has {len(names)}")
    sample = source.batch(seed, 20_000_000, min(batch_size, 32))
    sample_texts = [config.class_template.format(names[int(c)]) for c in sample.labels]
    rpp = RPPPrompts.for_vlm(vlm, config, seed=seed, sample_texts=sample_texts, sample_images=sample.images)
    teacher_text = LazyTeacherClassFeatures(teacher, names, config.teacher_template) if config.soft_labels else None
    qkv_ids = {id(p) for p in [*rpp.text_qkv, *rpp.visual_qkv]}
    trainable = [p for p in rpp.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) not in qkv_ids], "lr": lr},
        {"params": [p for p in trainable if id(p) in qkv_ids], "lr": lr * config.qkv_lr_scale},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, weight_decay=0.0)

    def step_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        part = parallel.part(batch_size)  # the whole batch in one process
        if parallel.active and hasattr(source, "batch_labels") and hasattr(source, "batch_part"):
            labels = source.batch_labels(seed, step, batch_size)  # the class subset needs every label
            images = source.batch_part(seed, step, batch_size, part).images  # only this rank's images
        else:
            batch = source.batch(seed, step, batch_size)
            labels, images = batch.labels, batch.images[part]
        generator = torch.Generator().manual_seed(seed * 104_729 + step)
        subset, local = sample_class_subset(labels, len(names), config.classes_per_step, generator)
        images, local = images.to(vlm.device), local[part]
        image_features = rpp.encode_images(vlm, images)
        class_features = rpp.encode_classes(vlm, [names[int(i)] for i in subset])
        logits = vlm.logit_scale.detach() * image_features @ class_features.T
        teacher_logits = None
        if teacher_text is not None:
            with torch.no_grad():
                t_img = teacher.encode_image(images.to(teacher.device)).to(logits.device)
                sub = teacher_text(subset).to(logits.device)
                teacher_logits = teacher.logit_scale.to(logits.device) * t_img @ sub.T
        loss, part = rpp_loss(
            logits,
            local.to(logits.device),
            teacher_logits,
            soft_weight=config.soft_weight,
            temperature=config.temperature,
        )
        return loss, {"hard": part["hard"], "soft": part["soft"]}

    loop = train_frozen(
        rpp,
        optimizer,
        step_fn,
        frozen_modules=(vlm,),
        steps=steps,
        seed=seed,
        backbone=vlm.name,
        checkpoint_path=checkpoint_path,
        checkpoint_every=checkpoint_every,
        callback=callback,
        progress=progress,
        desc="RPP",
        parallel=parallel,
    )
    parts = {key: loop.logs.get(key, []) for key in ("hard", "soft")}
    rpp.eval()
    return PretrainResult(rpp, loop.losses, loop.steps_done, loop.interrupted, names, parts)


# ----- zero-shot evaluation ----------------------------------------------------------------------------------------
@torch.no_grad()
def classify(
    vlm: VisionLanguageModel,
    images: torch.Tensor,
    class_names: Sequence[str],
    rpp: RPPPrompts | None = None,
    *,
    template: str = "a picture of a {}.",
    chunk: int = 256,
) -> torch.Tensor:
    """Predicted class index per image ``[N]``: CLIP zero-shot with ``template`` (``rpp=None``) or with the
    (pre)trained prompts and their ``class_template``."""
    if rpp is not None:
        rpp.check_vlm(vlm)
        text = rpp.encode_classes(vlm, class_names, chunk)
    else:
        text = teacher_class_features(vlm, class_names, template, chunk)
    preds = []
    for i in range(0, images.shape[0], chunk):
        part = images[i : i + chunk].to(vlm.device)
        feats = vlm.encode_image(part) if rpp is None else rpp.encode_images(vlm, part)
        preds.append((feats @ text.T).argmax(dim=1).cpu())
    return torch.cat(preds)


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * float((predictions.cpu() == labels.cpu()).float().mean())



# ----- pretraining straight into a bundle -----------------------------------------------------------------------------
def pretrain_bundle(
    vlm: VisionLanguageModel,
    source: ClassSource,
    config: RPPConfig | None = None,
    *,
    save_path: str | os.PathLike[str] | None = None,
    info: dict[str, Any] | None = None,
    **train_kwargs: Any,
) -> tuple[PretrainResult, PretrainedPromptBundle]:
    """:func:`pretrain_prompts` (``train_kwargs`` go to it unchanged), then the pretrained prompt bundle other
    methods start from, written to ``save_path`` (:func:`~.io.save_pretrained_prompts`) when given.

    The bundle's ``info`` holds the number of classes, the steps done, the final loss (mean of the last 10
    steps) and ``info``. Runs with inference mode off and gradients on, so the bundle's tensors are ordinary
    tensors also when called inside ComfyUI."""
    with torch.inference_mode(False), torch.enable_grad():
        result = pretrain_prompts(vlm, source, config, **train_kwargs)
        tail = result.losses[-10:]
        summary = {"steps": result.steps_done, "final_loss": round(sum(tail) / max(1, len(tail)), 5), **(info or {})}
        tokens = result.rpp.layer_tokens(vlm)
        if save_path is not None and train_kwargs.get("parallel", SINGLE_PROCESS).is_main:  # rank 0 writes
            save_pretrained_prompts(result.rpp, save_path, vlm, class_names=result.class_names, info=summary)
    bundle = PretrainedPromptBundle(result.rpp, tokens, {"n_classes": len(result.class_names), **summary})
    return result, bundle
