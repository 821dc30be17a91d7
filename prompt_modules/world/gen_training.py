"""Training, evaluation and command line of WorldGen (``python -m promptweave.world train gen``).

Two stages, as in latent diffusion (Rombach et al. 2022):

1. :func:`train_autoencoder`: the light-KL VAE on **flat-style** train scenes only (the other styles stay
   unseen domains). Loss: L1 reconstruction in -1..1, pixels inside objects weighted ``1 + object_weight``
   (objects are small, the flat background is easy), plus ``kl_weight`` times the mean per-element KL to
   N(0, I). The decoder sees posterior samples. Afterwards the latent shift/scale are measured on fresh
   scenes so that the diffusion latents have zero mean and unit variance.
2. :func:`train_diffusion`: the epsilon-prediction denoiser (Ho et al. 2020; LDM's scaled-linear betas,
   T = 1000; Min-SNR-5 loss weighting, Hang et al. 2023; the command line samples training timesteps
   logit-normally, Esser et al. 2024, which on val at 1,500 steps nearly doubled category agreement over
   uniform timesteps) on the (frozen) autoencoder's latents of flat train
   scenes, conditioned on the frozen WorldCLIP's text token features of the scene captions; the caption is
   replaced by the empty caption 10% of the time for classifier-free guidance (Ho & Salimans 2022); an EMA
   of the weights is what gets shipped. Latents and text features are computed once for a pool of scenes
   (the text tower is the costliest part otherwise); half of the pool are single-object scenes, half the
   natural 1-4 object mix (:func:`pool_seeds`).

Both are resumable through :mod:`~promptweave.prompt_modules.core.checkpointing` and derive every batch from
``(seed, step)``, so a resumed run equals an uninterrupted one. With ``precision="bf16"`` the forward pass
runs under CPU bfloat16 autocast (about twice as fast on CPUs with AVX512-BF16; master weights stay fp32).

:func:`evaluate_worldgen` measures ``gen_category_agreement`` / ``gen_colour_agreement``: one image per
single-object flat **test** scene, generated from that scene's own caption (``prompts="caption"``, the
default; captions have varied templates and may mention size, texture, position and background) or from
``"a {size} {colour} {category}."`` built from its attributes (``prompts="attributes"``), classified
zero-shot by WorldCLIP with :func:`~.zero_shot.category_prompts` / :func:`~.zero_shot.colour_prompts`; the
agreement is the fraction predicted equal to the prompt's category / colour. The same numbers on the real
rendered images (``real_*``: WorldCLIP's own ceiling) and on their autoencoder reconstructions (``recon_*``:
the decoder's ceiling) are reported for context.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.artifacts import ArtifactError, read_safetensors
from ..core.checkpointing import load_training_state, save_training_state
from .dataset import render_batch
from .scene import sample_layout, split_seed_range
from .vocabulary import CATEGORY_IDS, COLOUR_IDS
from .worldgen import DEFAULT_GUIDANCE, WORLDGEN_PRESETS, WorldGen, WorldGenConfig, copy_module, save_worldgen
from .zero_shot import category_prompts, colour_prompts, scenes_to_images, single_object_scenes, zero_shot_predict

AE_STAGE = "autoencoder"
DIFFUSION_STAGE = "diffusion"
#: Offset of the diffusion pool inside the train split (the autoencoder draws seeds from the whole split).
POOL_OFFSET = 100_000_000


# ----- helpers ----------------------------------------------------------------------------------------------
def resolve_precision(precision: str) -> torch.dtype | None:
    """``"bf16"`` -> bfloat16 autocast, ``"fp32"`` -> none, ``"auto"`` -> bf16 where the CPU supports it."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {precision!r}")
    try:
        supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        supported = False
    return torch.bfloat16 if supported else None


def _autocast(dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _step_rng(seed: int, step: int, tag: int) -> tuple[np.random.Generator, torch.Generator]:
    """Independent numpy/torch generators for (seed, step, stage tag): batches never depend on history."""
    entropy = np.random.SeedSequence([int(seed), int(step), int(tag)]).generate_state(2)
    return np.random.default_rng(entropy), torch.Generator().manual_seed(int(entropy[0]) << 32 | int(entropy[1]))


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10% of ``lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def _flat_batch(seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Flat-style 64x64 images in 0..1, union object masks ``[B, 1, 64, 64]`` and captions."""
    batch = render_batch(seeds, size=64, style="flat")
    mask = batch["masks"].any(dim=1, keepdim=True).float()
    return batch["image"], mask, list(batch["caption"])


def _progress(iterable: range, enabled: bool, desc: str, start: int) -> Iterator[int] | tqdm:
    return tqdm(iterable, desc=desc, initial=start, total=iterable.stop, disable=not enabled, mininterval=2.0)


# ----- stage 1: autoencoder ---------------------------------------------------------------------------------
def autoencoder_loss(
    gen: WorldGen,
    images: torch.Tensor,
    mask: torch.Tensor,
    noise: torch.Tensor,
    *,
    kl_weight: float,
    object_weight: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Object-weighted L1 of the reconstruction of a posterior sample + ``kl_weight`` * mean KL."""
    mean, logvar = gen.autoencoder.posterior(images)
    z = mean + (0.5 * logvar).exp() * noise
    recon = gen.autoencoder.decode_raw(z).float()
    weight = 1.0 + object_weight * mask
    l1 = ((recon - (images * 2.0 - 1.0)).abs() * weight).sum() / (weight.sum() * 3.0)
    kl = 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).mean()
    loss = l1 + kl_weight * kl
    return loss, {"l1": float(l1.detach()), "kl": float(kl.detach())}


def train_autoencoder(
    gen: WorldGen,
    *,
    steps: int = 3000,
    batch_size: int = 16,
    lr: float = 2e-3,
    kl_weight: float = 1e-3,
    object_weight: float = 4.0,
    warmup: int = 100,
    seed: int = 0,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 200,
    precision: str = "auto",
    progress: bool = True,
    stats_images: int = 1024,
) -> dict[str, Any]:
    """Train ``gen.autoencoder`` on flat train scenes (resumable); sets the latent shift/scale. Returns a log."""
    ae = gen.autoencoder
    ae.train()
    dtype = resolve_precision(precision)
    optimizer = torch.optim.AdamW(ae.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    start = 0
    if checkpoint_path is not None and Path(checkpoint_path).is_file():
        start, _ = load_training_state(checkpoint_path, ae, optimizer, backbone=AE_STAGE)
    train = split_seed_range("train")
    log: dict[str, Any] = {"losses": []}
    t0 = time.time()
    bar = _progress(range(start, steps), progress, "worldgen autoencoder", start)
    for step in bar:
        rng, gen_t = _step_rng(seed, step, 1)
        images, mask, _ = _flat_batch(rng.integers(train.start, train.stop, size=batch_size).tolist())
        noise = torch.randn((batch_size, *gen.config.latent_shape), generator=gen_t)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup)
        with _autocast(dtype):
            loss, parts = autoencoder_loss(gen, images, mask, noise, kl_weight=kl_weight, object_weight=object_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
        optimizer.step()
        value = float(loss.detach())
        log["losses"].append(value)
        if progress:
            bar.set_postfix(loss=f"{value:.4f}", l1=f"{parts['l1']:.4f}", kl=f"{parts['kl']:.2f}")
        done = step + 1
        if checkpoint_path is not None and (done % checkpoint_every == 0 or done == steps):
            save_training_state(checkpoint_path, ae, optimizer, done, backbone=AE_STAGE, extra={"stage": AE_STAGE})
    log["seconds"] = time.time() - t0
    log["steps_run"] = max(0, steps - start)
    ae.eval()
    shift, scale, post_std = measure_latent_stats(gen, n=stats_images, seed=seed)
    gen.set_latent_stats(shift, scale)
    log.update(latent_shift=shift, latent_scale=scale, posterior_std_over_latent_std=post_std)
    return log


@torch.no_grad()
def measure_latent_stats(gen: WorldGen, *, n: int = 1024, seed: int = 0) -> tuple[float, float, float]:
    """Shift (mean), scale (1/std) of posterior means on fresh flat scenes; and mean posterior std * scale."""
    rng, _ = _step_rng(seed, 0, 99)
    val = split_seed_range("val")
    seeds = rng.integers(val.start, val.stop, size=n).tolist()
    means, stds = [], []
    for i in range(0, n, 256):
        images, _, _ = _flat_batch(seeds[i : i + 256])
        mean, logvar = gen.autoencoder.posterior(images)
        means.append(mean)
        stds.append((0.5 * logvar).exp().mean())
    allm = torch.cat(means)
    shift, std = float(allm.mean()), float(allm.std())
    return shift, 1.0 / std, float(torch.stack(stds).mean()) / std


@torch.no_grad()
def evaluate_autoencoder(gen: WorldGen, *, n: int = 256, style: str = "flat") -> dict[str, float]:
    """Reconstruction L1 / MSE (0..1 pixel scale) on single-object test scenes of ``style``."""
    images = scenes_to_images(list(single_object_scenes("test", n, style=style)))
    recon = gen.decode(gen.encode(images))
    return {"l1": float((recon - images).abs().mean()), "mse": float((recon - images).pow(2).mean())}


# ----- stage 2: diffusion -----------------------------------------------------------------------------------
def pool_seeds(size: int, *, seed: int = 0, single_object_fraction: float = 0.5) -> list[int]:
    """Train seeds of the diffusion pool: ``single_object_fraction`` of them single-object scenes, the rest the
    natural 1-4 object mix (consecutive seeds). Evaluation prompts name one object, and one-object captions
    bind a name to a shape most directly; the natural mix keeps multi-object captions working.
    """
    train = split_seed_range("train")
    start = train.start + POOL_OFFSET + seed * 10 * size
    n_single = int(round(size * single_object_fraction))
    seeds = list(range(start, start + size - n_single))
    candidate = start + 5 * size
    while len(seeds) < size:
        _, objects = sample_layout(random.Random(candidate), "train")  # the layout alone (no rendering)
        if len(objects) == 1:
            seeds.append(candidate)
        candidate += 1
    return seeds


@torch.no_grad()
def build_pool(
    gen: WorldGen,
    vlm: Any,
    *,
    size: int,
    seed: int = 0,
    single_object_fraction: float = 0.5,
    chunk: int = 256,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents ``[N, C, h, w]`` (fp32) and caption token features ``[N, 77, W]`` (fp16) of the
    :func:`pool_seeds` flat train scenes."""
    seeds = pool_seeds(size, seed=seed, single_object_fraction=single_object_fraction)
    latents = torch.empty((size, *gen.config.latent_shape))
    context = torch.empty((size, vlm.context_length, vlm.token_width), dtype=torch.float16)
    for i in tqdm(range(0, size, chunk), desc="worldgen pool", disable=not progress, mininterval=2.0):
        images, _, captions = _flat_batch(seeds[i : i + chunk])
        latents[i : i + len(captions)] = gen.encode(images)
        context[i : i + len(captions)] = gen.text_context(captions, vlm).half()
    return latents, context


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(p.detach(), 1.0 - decay)


def diffusion_loss(
    gen: WorldGen,
    latents: torch.Tensor,
    context: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    snr_gamma: float | None = 5.0,
) -> torch.Tensor:
    """Epsilon-prediction MSE (Ho et al. 2020) at timesteps ``t``, Min-SNR-gamma weighted per sample.

    Min-SNR (Hang et al. 2023) weighs a sample by ``min(SNR_t, gamma) / SNR_t`` for epsilon prediction, so
    the nearly clean timesteps (fine detail) do not dominate the gradient and the coarse layout (which
    object, which colour) is learnt several times faster; ``snr_gamma=None`` is the plain DDPM loss.
    """
    noisy = gen.add_noise(latents, noise, t)
    err = (gen.unet(noisy, t, context).float() - noise).pow(2).mean(dim=(1, 2, 3))
    if snr_gamma is None:
        return err.mean()
    a = gen.alphas_cumprod.to(t.device)[t]
    snr = a / (1.0 - a)
    return (err * snr.clamp(max=snr_gamma) / snr).mean()


TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")


def check_timestep_sampling(sampling: str) -> None:
    if sampling not in TIMESTEP_SAMPLINGS:
        raise ValueError(f"timestep sampling must be one of {TIMESTEP_SAMPLINGS}, got {sampling!r}")


def sample_timesteps(
    n: int, num_train_timesteps: int, sampling: str, generator: torch.Generator
) -> torch.Tensor:
    """Training timesteps: ``"uniform"`` over 0..T-1 (Ho et al. 2020), or ``"logit_normal"``: t/T =
    sigmoid(u), u ~ N(0, 1), which puts more of the steps at medium noise where layout is decided
    (the logit-normal sampling of Esser et al. 2024, section 3.1)."""
    check_timestep_sampling(sampling)
    if sampling == "uniform":
        return torch.randint(0, num_train_timesteps, (n,), generator=generator)
    u = torch.sigmoid(torch.randn(n, generator=generator))
    return (u * num_train_timesteps).long().clamp(0, num_train_timesteps - 1)


def train_diffusion(
    gen: WorldGen,
    vlm: Any,
    *,
    steps: int = 5000,
    batch_size: int = 64,
    lr: float = 1e-3,
    warmup: int = 200,
    cond_drop: float = 0.1,
    ema_decay: float = 0.999,
    pool_size: int = 20000,
    single_object_fraction: float = 0.5,
    snr_gamma: float | None = 5.0,
    timestep_sampling: str = "uniform",
    seed: int = 0,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 250,
    precision: str = "auto",
    progress: bool = True,
    pool: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train ``gen.unet`` (autoencoder frozen) on a pool of flat train scenes; ends with the EMA weights loaded."""
    gen.check_vlm(vlm)
    check_timestep_sampling(timestep_sampling)  # before the pool is built
    dtype = resolve_precision(precision)
    gen.autoencoder.eval().requires_grad_(False)
    t0 = time.time()
    if pool is None:
        pool = build_pool(
            gen, vlm, size=pool_size, seed=seed, single_object_fraction=single_object_fraction, progress=progress
        )
    latents, context = pool
    pool_seconds = time.time() - t0
    null = gen.null_context(vlm)
    unet = gen.unet
    unet.train()
    ema = copy_module(unet)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    start = 0
    if checkpoint_path is not None and Path(checkpoint_path).is_file():
        start, _ = load_training_state(checkpoint_path, unet, optimizer, backbone=vlm.text_space, ema=ema)
    n_pool, T = latents.shape[0], gen.config.num_train_timesteps
    log: dict[str, Any] = {"losses": [], "pool_seconds": pool_seconds}
    t1 = time.time()
    bar = _progress(range(start, steps), progress, "worldgen diffusion", start)
    for step in bar:
        _, g = _step_rng(seed, step, 2)
        idx = torch.randint(0, n_pool, (batch_size,), generator=g)
        t = sample_timesteps(batch_size, T, timestep_sampling, g)
        noise = torch.randn((batch_size, *gen.config.latent_shape), generator=g)
        drop = torch.rand(batch_size, generator=g) < cond_drop
        ctx = torch.where(drop[:, None, None], null.to(context.dtype), context[idx]).float()
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup)
        with _autocast(dtype):
            loss = diffusion_loss(gen, latents[idx], ctx, t, noise, snr_gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        ema_update(ema, unet, min(ema_decay, (1.0 + step) / (10.0 + step)))
        value = float(loss.detach())
        log["losses"].append(value)
        if progress:
            bar.set_postfix(loss=f"{value:.4f}")
        done = step + 1
        if checkpoint_path is not None and (done % checkpoint_every == 0 or done == steps):
            save_training_state(
                checkpoint_path, unet, optimizer, done,
                backbone=vlm.text_space, extra={"stage": DIFFUSION_STAGE}, ema=ema,
            )
    log["seconds"] = time.time() - t1
    log["steps_run"] = max(0, steps - start)
    unet.load_state_dict(ema.state_dict())
    unet.eval()
    return log


# ----- evaluation -------------------------------------------------------------------------------------------
def attribute_prompt(scene: Any) -> str:
    """``"a {size} {colour} {category}."`` for the scene's (first) object."""
    o = scene.objects[0]
    return f"a {o.size} {o.colour} {o.category}."


def _agreement(vlm: Any, images: torch.Tensor, cats: torch.Tensor, cols: torch.Tensor) -> tuple[float, float]:
    cat = zero_shot_predict(vlm, images, category_prompts())
    col = zero_shot_predict(vlm, images, colour_prompts())
    return float((cat == cats).float().mean()), float((col == cols).float().mean())


@torch.no_grad()
def evaluate_worldgen(
    gen: WorldGen,
    vlm: Any,
    *,
    n: int = 200,
    seed: int = 0,
    steps: int = 20,
    guidance: float = DEFAULT_GUIDANCE,
    prompts: str = "caption",
    batch_size: int = 50,
    return_images: bool = False,
    split: str = "test",
) -> dict[str, Any]:
    """Text-image agreement of generated images under WorldCLIP zero-shot (see the module docstring).

    Batch ``k`` is sampled with seed ``seed + k``; ``split="val"`` is for choosing sampler settings.
    Returns ``gen_category_agreement``, ``gen_colour_agreement``, ``real_*`` (the rendered scenes),
    ``recon_*`` (their autoencoder reconstructions), ``n`` and the sampling settings; with
    ``return_images`` also ``images``/``texts``.
    """
    if prompts not in ("caption", "attributes"):
        raise ValueError("prompts must be 'caption' or 'attributes'")
    scenes = list(single_object_scenes(split, n, style="flat"))
    texts = [s.caption if prompts == "caption" else attribute_prompt(s) for s in scenes]
    cats = torch.tensor([CATEGORY_IDS[s.objects[0].category] for s in scenes])
    cols = torch.tensor([COLOUR_IDS[s.objects[0].colour] for s in scenes])
    real = scenes_to_images(scenes)
    generated = torch.cat(
        [
            gen.sample(texts[i : i + batch_size], vlm, steps=steps, guidance=guidance, seed=seed + k)
            for k, i in enumerate(range(0, len(texts), batch_size))
        ]
    )
    recon = gen.decode(gen.encode(real))
    g_cat, g_col = _agreement(vlm, generated, cats, cols)
    r_cat, r_col = _agreement(vlm, real, cats, cols)
    a_cat, a_col = _agreement(vlm, recon, cats, cols)
    out: dict[str, Any] = {
        "gen_category_agreement": g_cat,
        "gen_colour_agreement": g_col,
        "real_category_agreement": r_cat,
        "real_colour_agreement": r_col,
        "recon_category_agreement": a_cat,
        "recon_colour_agreement": a_col,
        "n": len(scenes),
        "prompts": prompts,
        "sample_steps": steps,
        "guidance": guidance,
        "seed": seed,
        "split": split,
    }
    if return_images:
        out["images"], out["texts"] = generated, texts
    return out


def save_sample_grid(images: torch.Tensor, path: str | os.PathLike[str], *, columns: int = 8, scale: int = 2) -> Path:
    """Write images ``[B, 3, H, W]`` in 0..1 as one PNG grid (nearest-neighbour enlarged ``scale`` times)."""
    from PIL import Image

    b, _, h, w = images.shape
    rows = math.ceil(b / columns)
    sheet = torch.ones(3, rows * (h + 2), columns * (w + 2))
    for i in range(b):
        r, c = divmod(i, columns)
        sheet[:, r * (h + 2) + 1 : r * (h + 2) + 1 + h, c * (w + 2) + 1 : c * (w + 2) + 1 + w] = images[i]
    array = (sheet.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    img = Image.fromarray(array)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def with_trained_autoencoder(
    path: str | os.PathLike[str], vlm: Any, *, seed: int = 0, preset: str = "default", **overrides: Any
) -> WorldGen:
    """A WorldGen for ``vlm`` (fresh ``preset`` denoiser with config ``overrides``) carrying the autoencoder
    and latent statistics of the file at ``path``.

    Only the ``autoencoder.*`` weights are read, so a file written after the autoencoder stage works even if
    the denoiser's layout changed since.
    """
    tensors, metadata = read_safetensors(path)
    raw = json.loads(metadata.get("promptweave.config", "{}"))
    if metadata.get("promptweave.method") != "worldgen" or not raw:
        raise ArtifactError(f"{path} is not a WorldGen file (run --stage autoencoder first)")
    known = {f.name for f in dataclasses.fields(WorldGenConfig)}
    base = {**WORLDGEN_PRESETS[preset].to_dict(), **overrides}
    ae_keys = ("image_size", "latent_channels", "ae_channels", "latent_shift", "latent_scale")
    config = WorldGenConfig.from_dict(
        {
            **base,
            **{k: raw[k] for k in ae_keys if k in known and k in raw},
            "backbone": vlm.text_space,  # WorldGen reads text features only
            "context_dim": vlm.token_width,
        }
    )
    gen = WorldGen(config, seed=seed)
    prefix = "autoencoder."
    gen.autoencoder.load_state_dict({k[len(prefix) :]: v.float() for k, v in tensors.items() if k.startswith(prefix)})
    return gen


# ----- command line -----------------------------------------------------------------------------------------
def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m promptweave.world train gen``."""
    parser.add_argument("--stage", choices=(AE_STAGE, DIFFUSION_STAGE, "all"), default="all")
    parser.add_argument(
        "--out", default="weights/worldgen.safetensors", help="WorldGen file to write (read by --stage diffusion)"
    )
    parser.add_argument("--clip", default="weights/worldclip.safetensors", help="WorldCLIP weights (diffusion stage)")
    parser.add_argument("--preset", default="default", choices=sorted(WORLDGEN_PRESETS))
    parser.add_argument("--steps", type=int, default=None, help="steps of the stage(s) run (overrides the two below)")
    parser.add_argument("--ae-steps", type=int, default=3000)
    parser.add_argument("--diffusion-steps", type=int, default=8000)
    parser.add_argument("--ae-batch-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64, help="diffusion batch size")
    parser.add_argument("--ae-lr", type=float, default=2e-3)
    parser.add_argument("--kl-weight", type=float, default=1e-3, help="autoencoder KL weight (per-element mean)")
    parser.add_argument("--lr", type=float, default=1e-3, help="diffusion learning rate")
    parser.add_argument(
        "--timestep-sampling", choices=TIMESTEP_SAMPLINGS, default="logit_normal", help="diffusion training timesteps"
    )
    parser.add_argument("--pool-size", type=int, default=20000, help="flat train scenes in the diffusion pool")
    parser.add_argument("--single-object-fraction", type=float, default=0.7, help="of the pool (rest: natural mix)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    parser.add_argument("--checkpoint-dir", default=None, help="resumable training state goes here")
    parser.add_argument("--eval-n", type=int, default=200, help="single-object test scenes to evaluate (0: skip)")
    parser.add_argument("--sample-steps", type=int, default=20, help="DDIM steps for evaluation")
    parser.add_argument(
        "--guidance", type=float, default=DEFAULT_GUIDANCE, help="classifier-free guidance scale for evaluation"
    )
    parser.add_argument("--grid", default=None, help="also write a PNG grid of evaluation samples here")
    parser.add_argument("--no-progress", action="store_true")


def _checkpoint(args: argparse.Namespace, stage: str) -> Path | None:
    if not args.checkpoint_dir:
        return None
    folder = Path(args.checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"worldgen-{stage}-seed{args.seed}.safetensors"


def run_cli(args: argparse.Namespace) -> int:
    """Run the stage(s) given by ``args`` and print the metrics as JSON."""
    from ..core.vlm import load_vlm

    torch.set_num_threads(max(1, int(args.threads)))
    progress = not args.no_progress
    out = Path(args.out)
    report: dict[str, Any] = {"out": str(out)}
    stages = (AE_STAGE, DIFFUSION_STAGE) if args.stage == "all" else (args.stage,)
    vlm = None
    if DIFFUSION_STAGE in stages or (args.stage == AE_STAGE and Path(args.clip).is_file()):
        vlm = load_vlm(args.clip)
    if AE_STAGE in stages:
        config = WORLDGEN_PRESETS[args.preset]
        if vlm is not None:
            config = WorldGenConfig.from_dict(
                {**config.to_dict(), "backbone": vlm.text_space, "context_dim": vlm.token_width}
            )
        gen = WorldGen(config, seed=args.seed)
        log = train_autoencoder(
            gen,
            steps=args.steps or args.ae_steps,
            batch_size=args.ae_batch_size,
            lr=args.ae_lr,
            kl_weight=args.kl_weight,
            seed=args.seed,
            checkpoint_path=_checkpoint(args, AE_STAGE),
            precision=args.precision,
            progress=progress,
        )
        report[AE_STAGE] = {k: v for k, v in log.items() if k != "losses"} | {
            "final_loss": float(np.mean(log["losses"][-50:])) if log["losses"] else None,
            "recon_flat": evaluate_autoencoder(gen, n=128),
        }
        save_worldgen(gen, out, stages=[AE_STAGE])
    if DIFFUSION_STAGE in stages:
        assert vlm is not None
        gen = with_trained_autoencoder(out, vlm, seed=args.seed, preset=args.preset)
        log = train_diffusion(
            gen,
            vlm,
            steps=args.steps or args.diffusion_steps,
            batch_size=args.batch_size,
            lr=args.lr,
            pool_size=args.pool_size,
            single_object_fraction=args.single_object_fraction,
            timestep_sampling=args.timestep_sampling,
            seed=args.seed,
            checkpoint_path=_checkpoint(args, DIFFUSION_STAGE),
            precision=args.precision,
            progress=progress,
        )
        report[DIFFUSION_STAGE] = {k: v for k, v in log.items() if k != "losses"} | {
            "final_loss": float(np.mean(log["losses"][-100:])) if log["losses"] else None,
        }
        save_worldgen(gen, out, stages=[AE_STAGE, DIFFUSION_STAGE])
        if args.eval_n > 0:
            metrics = evaluate_worldgen(
                gen, vlm, n=args.eval_n, steps=args.sample_steps, guidance=args.guidance, return_images=bool(args.grid)
            )
            if args.grid:
                save_sample_grid(metrics.pop("images")[:64], args.grid)
                metrics.pop("texts")
            report["metrics"] = metrics
    print(json.dumps(report, indent=2))
    return 0
