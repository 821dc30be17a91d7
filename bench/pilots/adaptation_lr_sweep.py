"""How far the WorldGen LoRA moves under IPL and NADA at a given learning rate (a diagnostic for BENCHMARKS.md).

    .venv/bin/python -m promptweave.bench.pilots.adaptation_lr_sweep METHOD LR STEPS [--mapper-steps N] [--png out.png]

Adapts WorldGen's decoder from "a flat illustration" to "a neon glow picture" (the ``adaptation`` benchmark's
setting, one style) and prints, for 16 fixed source latents: the stage-2 loss at the start and the end, the
WorldCLIP style histogram (flat, sketch, mosaic, neon; nearest style prototype) before and after, the diversity
of the adapted samples and the mean absolute pixel change. ``--png`` writes the source row above the adapted row.
"""

from __future__ import annotations

import argparse
import time

import torch

from promptweave.bench.adaptation import diversity, style_prototypes
from promptweave.prompt_modules.adaptation import IPLConfig, WorldGenGenerator, run_adaptation, sample_worldgen_latents
from promptweave.prompt_modules.world.models import load_world_models
from promptweave.prompt_modules.world.zero_shot import single_object_scenes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=["ipl", "nada"])
    parser.add_argument("lr", type=float)
    parser.add_argument("steps", type=int)
    parser.add_argument("--mapper-steps", type=int, default=100)
    parser.add_argument("--png", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    vlm, gen = load_world_models()
    vlm.eval()
    captions = [s.caption for s in single_object_scenes("train", 64, style="flat")]
    pool = sample_worldgen_latents(gen, vlm, captions, steps=10, seed=1)
    generator = WorldGenGenerator(gen, pool)
    codes = pool[:16]
    with torch.no_grad():
        source = generator.generate(codes)
    config = IPLConfig(
        method=args.method, source_text="a flat illustration", target_text="a neon glow picture",
        ctx_init="a picture of a", steps=args.steps, mapper_steps=args.mapper_steps, mapper_batch=32,
        batch_size=2, lr=args.lr, auto_layer_k=9,
    )
    t0 = time.perf_counter()
    result = run_adaptation(generator, vlm, config)
    losses = result.losses
    with torch.no_grad():
        adapted = generator.generate(codes)
        protos = style_prototypes(vlm, 32)
        report = {"seconds": round(time.perf_counter() - t0, 1),
                  "loss_first10": round(sum(losses[:10]) / 10, 4), "loss_last10": round(sum(losses[-10:]) / 10, 4)}
        for name, images in (("source", source), ("adapted", adapted)):
            feats = vlm.encode_image(images)
            report[f"{name}_styles"] = torch.bincount((feats @ protos.T).argmax(1), minlength=4).tolist()
            report[f"{name}_diversity"] = round(diversity(feats), 4)
        report["mean_abs_change"] = round(float((adapted - source).abs().mean()), 4)
    print(report)
    if args.png:
        from torchvision.utils import save_image

        save_image(torch.cat([source[:8], adapted[:8]]), args.png, nrow=8)


if __name__ == "__main__":
    main()
