"""Benchmark ``inversion_unet``: does a U-Net fine-tuned on prompt inversion generate better-aligned images?

The second finding of Reverse Stable Diffusion (Croitoru et al. 2023), on WorldGen 3 and WorldCLIP 2. A
white-box inverter head is trained on the frozen encoder half of WorldGen's denoiser (flat train scenes, their
captions' MiniLM embeddings), then head and U-Net are fine-tuned together on the inversion loss with the
denoising loss kept (:func:`~promptweave.prompt_modules.world.inversion_finetune.finetune_worldgen_unet`), and the
fine-tuned WorldGen samples the split's single-object captions. Metrics (of the fine-tuned model): WorldCLIP's
``gen_category_agreement`` / ``gen_colour_agreement`` with the prompt (the ``world`` task's measure, 20 DDIM
steps at the default guidance) and ``white_box_cosine`` (MiniLM cosine of the white-box inversion on the split's
rendered scenes). Baselines: ``original`` (the shipped WorldGen; its frozen white box) and ``denoise_only`` (the
same fine-tuning loop with the inversion loss off: as much extra denoising training, no inversion task).
"""

from __future__ import annotations

import time

import torch

from ..prompt_modules.inversion import (
    InverterConfig,
    Vocabulary,
    WorldGenEncoder,
    default_embedder,
    mean_cosine,
    prompt_targets,
    train_inverter,
)
from ..prompt_modules.world.gen_training import evaluate_worldgen
from ..prompt_modules.world.inversion_finetune import UNetFinetuneConfig, finetune_worldgen_unet
from ..prompt_modules.world.models import load_world_models
from ..prompt_modules.world.worldgen import DEFAULT_GUIDANCE
from .harness import TaskResult
from .inversion import world_pairs


@torch.no_grad()
def latent_codes(gen, vlm, images: torch.Tensor, captions: list[str], chunk: int = 256):
    """``(latents, caption token features in fp16)`` of the pairs, chunk by chunk."""
    lat, ctx = [], []
    for i in range(0, len(captions), chunk):
        lat.append(gen.encode(images[i : i + chunk]).float())
        ctx.append(gen.text_context(captions[i : i + chunk], vlm).half())
    return torch.cat(lat), torch.cat(ctx)


def white_box_cosine(gen, vlm, head, images: torch.Tensor, targets: torch.Tensor) -> float:
    return mean_cosine(head.predict(WorldGenEncoder(gen, vlm)(images), use_dakl=False)[0], targets)


def run(seed: int, split: str, quick: bool) -> TaskResult:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    n_train, n_test, steps, n_gen, epochs = (256, 64, 10, 48, 3) if quick else (4000, 500, 300, 200, 15)
    vlm, gen = load_world_models()
    embedder = default_embedder()
    # flat scenes: WorldGen's training style
    images, captions, _ = world_pairs("train", n_train, offset=seed * 1_000_000, style="flat")
    test_images, test_captions, _ = world_pairs(split, n_test, style="flat")
    vocab = Vocabulary.build(captions, size=1000)
    targets, labels = prompt_targets(captions, vocab, embedder)
    test_targets = embedder(test_captions).float()
    latents, context = latent_codes(gen, vlm, images, captions)

    t0 = time.perf_counter()
    encoder = WorldGenEncoder(gen, vlm)
    head_config = InverterConfig(backbone=encoder.name, feature_dim=encoder.dim, hidden=(512, 512), epochs=epochs,
                                 batch_size=64, lr=3e-3, dropout=0.3, curriculum=False, seed=seed)
    head = train_inverter(encoder(images), targets, labels, head_config, vocab, progress=False).inverter
    seconds = {"head": round(time.perf_counter() - t0, 1)}
    results: dict[str, dict[str, float]] = {"original": {"white_box_cosine": white_box_cosine(
        gen, vlm, head, test_images, test_targets)}}
    models = {"original": gen}
    for name, inversion_weight in (("inversion", 1.0), ("denoise_only", 0.0)):
        t0 = time.perf_counter()
        config = UNetFinetuneConfig(steps=steps, inversion_weight=inversion_weight, seed=seed)
        tuned, tuned_head, losses = finetune_worldgen_unet(gen, vlm, latents, context, targets, labels, head, config)
        seconds[name] = round(time.perf_counter() - t0, 1)
        models[name] = tuned
        results[name] = {"final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4)}
        if inversion_weight > 0:
            results[name]["white_box_cosine"] = white_box_cosine(tuned, vlm, tuned_head, test_images, test_targets)
    for name, model in models.items():
        gen_metrics = evaluate_worldgen(model, vlm, n=n_gen, seed=seed, steps=20, guidance=DEFAULT_GUIDANCE,
                                        split=split)
        results[name]["gen_category_agreement"] = gen_metrics["gen_category_agreement"]
        results[name]["gen_colour_agreement"] = gen_metrics["gen_colour_agreement"]
    method = results.pop("inversion")
    notes = {"n_train": n_train, "n_test": n_test, "finetune_steps": steps, "batch_size": 32, "lr": 1e-4,
             "head_epochs": epochs, "n_gen": n_gen, "ddim_steps": 20, "guidance": DEFAULT_GUIDANCE,
             "train_seconds": seconds, "final_loss": {"inversion": method.pop("final_loss"),
                                                      "denoise_only": results["denoise_only"].pop("final_loss")},
             "worldgen": encoder.name}
    return TaskResult(metrics=method, baselines=results, notes=notes)
