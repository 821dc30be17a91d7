"""Training, saving and loading of Diff-Prompt's three stages; grounding datasets.

Each stage trains on its own, resumes from its own checkpoint (:mod:`~promptweave.prompt_modules.core.checkpointing`:
weights, optimizer, step, RNG; batches derive from ``seed + step``, so a resumed run equals an uninterrupted one)
and adds its artifact to one **bundle**, a single safetensors file (:mod:`~promptweave.prompt_modules.core.artifacts`)
with tensors ``vae.*`` (stage 1), ``dit.*`` (stage 2, EMA weights) and ``prompt.*`` (stage 3: adapters, global
prompts, head) and the configs, the finished stages and the VLM (backbone, widths, layers) in its metadata.

1. :func:`train_mask_vae` - masks only (no VLM); paper eq. 3.
2. :func:`train_dit` - needs the stage-1 VAE and the frozen VLM (its image and expression features condition the
   DiT); epsilon loss, AdamW, EMA.
3. :func:`train_prompts` - needs both and the VLM; the grounding loss of :func:`~.model.grounding_loss`.
   :func:`train_grounder` is the same loop for any grounder (the CoOp / VPT baselines of the benchmark).

Datasets (:class:`GroundingBatch`: images, target masks, normalised boxes, expressions): the procedural world
(:class:`WorldGroundingSource`; one referring expression per scene, drawn by seed), a folder of
``name.png`` + ``name_mask.png`` + ``name.txt`` (:class:`FolderGroundingSource`), or tensors
(:class:`TensorGroundingSource`, e.g. from a ComfyUI graph).
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.artifacts import (
    ArtifactError,
    BackboneMismatchError,
    base_metadata,
    check_method,
    meta_field,
    read_safetensors,
    save_safetensors_atomic,
)
from ..core.training import StepCallback, run_resumable_loop
from ..core.vlm import VisionLanguageModel
from .config import DiTConfig, MaskVAEConfig, PromptConfig
from .dit import EMA, DiT
from .mask_vae import MaskVAE
from .model import DiffPrompt

METHOD = "diff_prompt"
STAGES = ("vae", "dit", "prompt")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MASK_SUFFIX = "_mask"


# ----- data -----------------------------------------------------------------------------------------------------
@dataclass
class GroundingBatch:
    """``images`` ``[B, 3, S, S]`` in 0..1, ``masks`` ``[B, S, S]`` in {0, 1}, ``boxes`` ``[B, 4]`` normalised
    ``x0, y0, x1, y1`` (0..1), ``texts`` one referring expression per image."""

    images: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor
    texts: list[str]


class GroundingSource(Protocol):
    def batch(self, seed: int, step: int, batch_size: int) -> GroundingBatch: ...


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """Normalised tight boxes ``[B, 4]`` of masks ``[B, H, W]`` (an empty mask gives a zero box)."""
    b, h, w = masks.shape
    out = torch.zeros(b, 4)
    for i in range(b):
        ys, xs = torch.nonzero(masks[i] > 0.5, as_tuple=True)
        if len(ys):
            out[i] = torch.tensor([xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h])
    return out


def _square_images(images: torch.Tensor, size: int) -> torch.Tensor:
    if tuple(images.shape[-2:]) == (size, size):
        return images.float().clamp(0, 1)
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.clamp(0, 1)


def _resize_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    if tuple(masks.shape[-2:]) == (size, size):
        return (masks > 0.5).float()
    return (
        F.interpolate(masks.float().unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False)[:, 0] > 0.5
    ).float()


class WorldGroundingSource:
    """Scenes of one world split; each sample is one object of a scene and its unique referring expression."""

    def __init__(self, split: str = "train", size: int = 64, style: str = "flat") -> None:
        from ..world.scene import split_seed_range

        self.range = split_seed_range(split)
        self.size, self.style = size, style

    def seeds(self, seed: int, step: int, batch_size: int) -> list[int]:
        base = (seed * 100_003_331 + step * batch_size) % (len(self.range) - batch_size)
        return [self.range.start + base + k for k in range(batch_size)]

    def batch(self, seed: int, step: int, batch_size: int) -> GroundingBatch:
        return self.from_seeds(self.seeds(seed, step, batch_size), pick_seed=seed * 1_000_003 + step)

    def from_seeds(self, seeds: Sequence[int], pick_seed: int = 0, prefer_held_out: bool = False) -> GroundingBatch:
        """The batch of these scenes (the expression of each is drawn with ``pick_seed``; with
        ``prefer_held_out`` an object of a held-out category-colour pair is chosen where there is one)."""
        from ..world.dataset import render_batch
        from ..world.scene import is_held_out

        seeds = list(seeds)
        data = render_batch(seeds, size=self.size, style=self.style)
        images, scenes = data["image"], list(data["scenes"])
        for k, scene in enumerate(scenes):
            probe = seeds[k]
            while not scene.referring:  # rare: no object can be picked out uniquely; use the next scene that can
                probe = self.range.start + (probe + 1 - self.range.start) % len(self.range)
                substitute = render_batch([probe], size=self.size, style=self.style)
                scene, images[k] = substitute["scenes"][0], substitute["image"][0]
            scenes[k] = scene
        rng = random.Random(pick_seed)
        masks, boxes, texts = [], [], []
        for scene in scenes:
            options = scene.referring
            if prefer_held_out:
                held = [(i, t) for i, t in options if is_held_out(scene.objects[i].category, scene.objects[i].colour)]
                options = held or options
            index, text = options[rng.randrange(len(options))]
            masks.append(torch.from_numpy(scene.masks[index]).float())
            x0, y0, x1, y1 = (int(v) for v in scene.boxes[index])
            s = scene.size
            boxes.append(torch.tensor([x0 / s, y0 / s, (x1 + 1) / s, (y1 + 1) / s]))
            texts.append(text)
        return GroundingBatch(images, torch.stack(masks), torch.stack(boxes), texts)


def evaluation_set(split: str, n: int, size: int = 64) -> GroundingBatch:
    """The first ``n`` scenes of ``split`` with one expression each (fixed for every seed); on the compositional
    split the expression refers to an object of a held-out category-colour pair where one is describable."""
    from ..world.scene import split_seed_range

    start = split_seed_range(split).start
    return WorldGroundingSource(split, size=size).from_seeds(
        range(start, start + n), pick_seed=12345, prefer_held_out=split == "compositional"
    )


def _load_rgb(path: Path) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    except OSError as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None


def _load_mask(path: Path) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as im:
            if "A" in im.getbands() and im.mode != "L":  # ComfyUI-style masks can live in the alpha channel
                array = np.asarray(im.getchannel("A"), dtype=np.float32) / 255.0
                if array.min() == array.max():
                    array = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
            else:
                array = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except OSError as exc:
        raise ValueError(f"cannot read mask {path}: {exc}") from None
    return torch.from_numpy(array)


class TensorGroundingSource:
    """Samples from tensors: images ``[N, 3, H, W]`` (0..1), masks ``[N, H, W]`` of the same size, expressions.

    Raises ``ValueError`` for a mask of another size than its image, a count mismatch or an empty expression.
    """

    def __init__(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        texts: Sequence[str],
        size: int = 64,
        names: Sequence[str] | None = None,
    ) -> None:
        texts = list(texts)
        names = list(names) if names is not None else [f"sample {i}" for i in range(len(texts))]
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
            raise ValueError(f"images must be a non-empty [N, 3, H, W] batch, got {tuple(images.shape)}")
        if masks.ndim == 2:
            masks = masks.unsqueeze(0)
        if masks.ndim != 3:
            raise ValueError(f"masks must be [N, H, W], got {tuple(masks.shape)}")
        if tuple(masks.shape[-2:]) != tuple(images.shape[-2:]):
            raise ValueError(
                f"the masks are {masks.shape[-1]}x{masks.shape[-2]} but the images {images.shape[-1]}x"
                f"{images.shape[-2]}: each mask must have its image's size"
            )
        if not (masks.shape[0] == images.shape[0] == len(texts)):
            raise ValueError(
                f"{images.shape[0]} images, {masks.shape[0]} masks and {len(texts)} expressions: give one mask and "
                "one expression per image"
            )
        empty = [names[i] for i, t in enumerate(texts) if not t.strip()]
        if empty:
            raise ValueError(f"empty referring expression for {empty[:5]}")
        self.images = _square_images(images, size)
        self.masks = _resize_masks(masks.float(), size)
        if bool((self.masks.flatten(1).sum(1) == 0).any()):
            bad = [names[i] for i in torch.nonzero(self.masks.flatten(1).sum(1) == 0).flatten().tolist()]
            raise ValueError(f"empty mask for {bad[:5]}: every sample needs a non-empty mask")
        self.boxes = boxes_from_masks(self.masks)
        self.texts = [t.strip() for t in texts]

    def __len__(self) -> int:
        return len(self.texts)

    def batch(self, seed: int, step: int, batch_size: int) -> GroundingBatch:
        rng = random.Random(seed * 1_000_003 + step)
        n = len(self.texts)
        picks = rng.sample(range(n), batch_size) if batch_size <= n else [rng.randrange(n) for _ in range(batch_size)]
        idx = torch.tensor(picks)
        return GroundingBatch(self.images[idx], self.masks[idx], self.boxes[idx], [self.texts[i] for i in picks])


class FolderGroundingSource(TensorGroundingSource):
    """A folder of ``name.png`` (image) + ``name_mask.png`` (white = the object) + ``name.txt`` (the referring
    expression, first non-empty line). Images may have any size; each mask must have its image's size."""

    def __init__(self, folder: str | os.PathLike[str], size: int = 64) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"dataset folder {folder} does not exist")
        images = sorted(
            p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.stem.endswith(MASK_SUFFIX)
        )
        if not images:
            raise ValueError(f"{folder} holds no images (expected name.png + name{MASK_SUFFIX}.png + name.txt)")
        rows_i, rows_m, texts = [], [], []
        for path in images:
            masks = [path.with_name(path.stem + MASK_SUFFIX + ext) for ext in IMAGE_EXTENSIONS]
            mask_path = next((m for m in masks if m.is_file()), None)
            if mask_path is None:
                raise ValueError(f"{path.name} has no mask: add {path.stem}{MASK_SUFFIX}.png next to it")
            text_path = path.with_suffix(".txt")
            if not text_path.is_file():
                raise ValueError(f"{path.name} has no referring expression: add {text_path.name}")
            lines = [ln.strip() for ln in text_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            if not lines:
                raise ValueError(f"{text_path.name} is empty: write the referring expression in it")
            image, mask = _load_rgb(path), _load_mask(mask_path)
            if tuple(mask.shape) != tuple(image.shape[-2:]):
                raise ValueError(
                    f"the mask {mask_path.name} is {mask.shape[1]}x{mask.shape[0]} but its image {path.name} is "
                    f"{image.shape[2]}x{image.shape[1]}: each mask must have its image's size"
                )
            rows_i.append(
                F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
            )
            rows_m.append(_resize_masks(mask[None], size)[0])
            texts.append(lines[0])
        super().__init__(torch.stack(rows_i), torch.stack(rows_m), texts, size=size, names=[p.name for p in images])


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
    steps: int,
    seed: int,
    backbone: str,
    checkpoint_path: str | os.PathLike[str] | None,
    checkpoint_every: int,
    callback: Callback | None,
    progress: bool,
    ema: EMA | None = None,
    extra: dict | None = None,
) -> tuple[list[float], int, bool]:
    """AdamW over ``params`` in the shared :func:`~..checkpointing.run_resumable_loop`; ``step_fn(step)``
    returns the loss; ``ema`` (if any) is updated after every step and saved/resumed with ``module``."""
    loop = run_resumable_loop(
        module,
        torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay),
        step_fn,
        steps=steps,
        seed=seed,
        backbone=backbone,
        checkpoint_path=checkpoint_path,
        checkpoint_every=checkpoint_every,
        callback=callback,
        progress=progress,
        desc=f"Diff-Prompt {name}",
        ema=None if ema is None else ema.module,
        after_step=None if ema is None else (lambda step: ema.update(module, step)),
        extra={"stage": name, **(extra or {})},
    )
    return loop.losses, loop.steps_done, loop.interrupted


def _frozen(vlm: VisionLanguageModel):
    flags = [(p, p.requires_grad) for p in vlm.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    vlm.eval()
    return flags


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
) -> TrainResult:
    """Stage 1: the Mask-VAE on the source's target masks (paper eq. 3)."""
    config = config or MaskVAEConfig()
    with torch.inference_mode(False), torch.enable_grad():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = MaskVAE(config)
        vae.train()

        def step_fn(step: int) -> torch.Tensor:
            masks = _resize_masks(source.batch(seed, step, batch_size).masks, config.mask_size)
            return vae.loss(masks)[0]

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
        )
    return TrainResult(vae.eval(), losses, done, interrupted)


@torch.no_grad()
def _features(vlm: VisionLanguageModel, batch: GroundingBatch) -> tuple[torch.Tensor, torch.Tensor]:
    from .model import _square

    return vlm.encode_image(_square(batch.images, vlm.image_size)), vlm.encode_text(batch.texts)


@torch.no_grad()
def measure_latent_scale(vae: MaskVAE, source: GroundingSource, seed: int = 0, n: int = 256) -> float:
    """``1 / std`` of Mask-VAE latents on ``n`` training masks (LDM's scaling factor)."""
    masks = _resize_masks(source.batch(seed, 30_000_000, n).masks, vae.config.mask_size)
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
) -> TrainResult:
    """Stage 2: the DiT on Mask-VAE latents conditioned on the frozen VLM's image and expression features.

    ``result.model`` is the EMA DiT (the one that samples); its config carries the latent scaling factor.
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
        flags = _frozen(vlm)
        dit.train()

        def step_fn(step: int) -> torch.Tensor:
            batch = source.batch(seed, step, batch_size)
            f_img, f_txt = _features(vlm, batch)
            with torch.no_grad():
                z0 = vae.encode(_resize_masks(batch.masks, vae_cfg.mask_size).to(vlm.device)) * config.scaling_factor
            return dit.loss(z0, f_img, f_txt)

        try:
            losses, done, interrupted = _loop(
                "dit",
                dit,
                list(dit.parameters()),
                step_fn,
                lr=config.lr,
                weight_decay=config.weight_decay,
                steps=steps,
                seed=seed,
                backbone=vlm.name,
                checkpoint_path=checkpoint_path,
                checkpoint_every=checkpoint_every,
                callback=callback,
                progress=progress,
                ema=ema,
            )
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
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
) -> TrainResult:
    """Train a grounder's ``trainable_parameters()`` with its ``loss`` on a frozen ``vlm`` (stage 3's loop)."""
    with torch.inference_mode(False), torch.enable_grad():
        flags = _frozen(vlm)
        params = grounder.trainable_parameters()
        grounder.train()
        size = getattr(grounder, "mask_size", 64)

        def step_fn(step: int) -> torch.Tensor:
            batch = source.batch(seed, step, batch_size)
            out = grounder(vlm, batch.images.to(vlm.device), batch.texts)
            return grounder.loss(out, _resize_masks(batch.masks, size), batch.boxes)

        try:
            losses, done, interrupted = _loop(
                name,
                grounder,
                params,
                step_fn,
                lr=lr,
                weight_decay=weight_decay,
                steps=steps,
                seed=seed,
                backbone=vlm.name,
                checkpoint_path=checkpoint_path,
                checkpoint_every=checkpoint_every,
                callback=callback,
                progress=progress,
            )
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
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
        if pretrained:  # RPP pretrained prompts as the initialisation (prompt_pretraining.py)
            from ..prompt_pretraining import init_diff_prompt_from_bundle

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
    )


# ----- the bundle -----------------------------------------------------------------------------------------------
@dataclass
class Bundle:
    """What a bundle file holds: any prefix of the three stages (``stages``), and the backbone it needs."""

    vae: MaskVAE | None = None
    dit: DiT | None = None
    model: DiffPrompt | None = None
    backbone: str = "any"

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(s for s, m in zip(STAGES, (self.vae, self.dit, self.model), strict=True) if m is not None)


def _prompt_state(model: DiffPrompt) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith(("vae.", "dit."))}


def save_bundle(
    path: str | os.PathLike[str],
    *,
    vae: MaskVAE | None = None,
    dit: DiT | None = None,
    model: DiffPrompt | None = None,
    backbone: str | None = None,
) -> Path:
    """Write the finished stages to one safetensors file (atomic). ``model`` carries its own VAE and DiT."""
    if model is not None:
        vae, dit = model.vae, model.dit
    if vae is None:
        raise ValueError("a Diff-Prompt bundle needs at least the stage-1 Mask-VAE")
    if model is None and dit is None and backbone is None:
        backbone = "any"
    if backbone is None:
        if model is None:
            raise ValueError("name the VLM the DiT was trained with (backbone=...)")
        backbone = model.backbone
    tensors = {f"vae.{k}": v for k, v in vae.vae.state_dict().items()}
    fields: dict[str, object] = {"vae_config": vae.config.to_dict(), "stages": ["vae"]}
    if dit is not None:
        tensors.update({f"dit.{k}": v for k, v in dit.state_dict().items()})
        fields.update(dit_config=dit.config.to_dict(), stages=["vae", "dit"])
    if model is not None:
        tensors.update({f"prompt.{k}": v for k, v in _prompt_state(model).items()})
        fields.update(
            prompt_config=model.config.to_dict(),
            stages=list(STAGES),
            vlm={
                "text_width": model.text_width,
                "vision_width": model.vision_width,
                "text_layers": model.text_layers,
                "vision_layers": model.vision_layers,
                "embed_dim": model.embed_dim,
            },
        )
    path = Path(path)
    return save_safetensors_atomic(path, tensors, base_metadata(METHOD, backbone, **fields))


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Read a bundle written by :func:`save_bundle` (any number of finished stages)."""
    tensors, metadata = read_safetensors(path)
    check_method(metadata, METHOD, path)
    backbone = str(meta_field(metadata, "backbone", "any"))
    stages = list(meta_field(metadata, "stages", []) or [])

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    try:
        vae = MaskVAE(MaskVAEConfig.from_dict(dict(meta_field(metadata, "vae_config"))))
        vae.vae.load_state_dict(part("vae."))
        bundle = Bundle(vae=vae.eval(), backbone=backbone)
        if "dit" in stages:
            dit = DiT(DiTConfig.from_dict(dict(meta_field(metadata, "dit_config"))))
            dit.load_state_dict(part("dit."))
            bundle.dit = dit.eval()
        if "prompt" in stages:
            vlm_meta = dict(meta_field(metadata, "vlm"))
            model = DiffPrompt(
                vae.config,
                bundle.dit.config,
                PromptConfig.from_dict(dict(meta_field(metadata, "prompt_config"))),
                backbone=backbone,
                **{k: int(v) for k, v in vlm_meta.items()},
            )
            model.vae.load_state_dict(vae.state_dict())
            model.dit.load_state_dict(bundle.dit.state_dict())
            missing, unexpected = model.load_state_dict(part("prompt."), strict=False)
            missing = [k for k in missing if not k.startswith(("vae.", "dit."))]
            if missing or unexpected:
                raise ValueError(f"missing weights {missing[:5]}, unexpected weights {unexpected[:5]}")
            bundle.model = model.eval()
    except (TypeError, ValueError, KeyError, RuntimeError, AttributeError) as exc:
        raise ArtifactError(f"{path}: not a usable Diff-Prompt bundle: {exc}") from None
    return bundle


def load_diff_prompt(path: str | os.PathLike[str], vlm: VisionLanguageModel | None = None) -> DiffPrompt:
    """The complete (three-stage) model of a bundle; with ``vlm`` given, a bundle for another VLM is refused."""
    bundle = load_bundle(path)
    if bundle.model is None:
        missing = [s for s in STAGES if s not in bundle.stages]
        raise ArtifactError(
            f"{path} holds only the stage(s) {list(bundle.stages)} of Diff-Prompt: train the "
            f"missing stage(s) {missing} first"
        )
    if vlm is not None:
        try:
            bundle.model.check_vlm(vlm)
        except BackboneMismatchError as exc:
            raise BackboneMismatchError(f"{path}: {exc}") from None
        bundle.model.to(vlm.device)
    return bundle.model


def train_all(
    vlm: VisionLanguageModel,
    source: GroundingSource,
    *,
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
    progress: bool = True,
) -> DiffPrompt:
    """The three stages in order (each resumable from ``checkpoint_dir``), the bundle written after each."""

    def ckpt(stage: str) -> Path | None:
        return None if checkpoint_dir is None else Path(checkpoint_dir) / f"diff_prompt-{stage}.state.safetensors"

    vae = train_mask_vae(
        source,
        vae_config,
        steps=vae_steps,
        batch_size=max(batch_size, 32),
        seed=seed,
        checkpoint_path=ckpt("vae"),
        progress=progress,
    ).model
    if bundle_path:
        save_bundle(bundle_path, vae=vae)
    dit = train_dit(
        vlm,
        vae,
        source,
        dit_config,
        steps=dit_steps,
        batch_size=max(batch_size, 32),
        seed=seed,
        checkpoint_path=ckpt("dit"),
        progress=progress,
    ).model
    if bundle_path:
        save_bundle(bundle_path, vae=vae, dit=dit, backbone=vlm.name)
    model = train_prompts(
        vlm,
        vae,
        dit,
        source,
        prompt_config,
        steps=prompt_steps,
        batch_size=batch_size,
        seed=seed,
        checkpoint_path=ckpt("prompt"),
        progress=progress,
    ).model
    if bundle_path:
        save_bundle(bundle_path, model=model)
    return model
