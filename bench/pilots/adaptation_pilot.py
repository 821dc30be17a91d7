"""Val pilot for the ``adaptation`` benchmark: one style, one method, chosen stage-2 settings (BENCHMARKS.md).

    .venv/bin/python -m promptweave.bench.pilots.adaptation_pilot METHOD STYLE [--lr LR [LR ...]] [--steps N]
        [--batch-size B] [--lambda-domain L] [--seed S] [--mapper-file F] [--backbone NAME] [--png out.png]

Same setting as ``python -m promptweave.bench adaptation`` (WorldGen's decoder, latents sampled from flat
single-object train captions, NADA's layer selection on 2/3 of the layers, the bench's metrics and judge) but
evaluated on the first 64 **val** scenes, so that settings can be chosen without touching the test split.
``--backbone`` picks the guide as the benchmark's does (WorldCLIP 2 always judges and conditions WorldGen).
Several ``--lr`` values run one after the other on the same latents (and, for IPL, the same stage-1 mapper),
one JSON line each.
For IPL it also prints how image-specific the stage-1 prompts are: the mean pairwise cosine distance of the
normalised source and target prompt features of the evaluation latents, and the mean cosine between the
image-specific text directions and NADA's fixed one (1.0 = IPL reduces to NADA).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F

from promptweave.bench.adaptation import (
    SETTINGS,
    SOURCE_STYLE,
    SOURCE_TEXT,
    STAGE2_LR,
    STYLE_TEXTS,
    diversity,
    layer_selection_k,
    load_backbones,
    measure,
    source_content,
    style_prototypes,
)
from promptweave.bench.harness import BACKBONE_ENV, BACKBONES
from promptweave.prompt_modules.adaptation import (
    IPLConfig,
    PromptEncoder,
    WorldGenGenerator,
    load_mapper,
    nada_direction,
    run_adaptation,
    sample_worldgen_latents,
    save_mapper,
    train_mapper,
)
from promptweave.prompt_modules.world.zero_shot import single_object_scenes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=["ipl", "nada"])
    parser.add_argument("style", choices=sorted(STYLE_TEXTS))
    parser.add_argument("--lr", type=float, nargs="+", default=None,
                        help="stage-2 lr, one run each (default: the bench's STAGE2_LR for METHOD on WorldCLIP 2)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--mapper-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=None, help="stage-2 batch (default: the bench's)")
    parser.add_argument("--lambda-domain", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", choices=BACKBONES, default=BACKBONES[0], help="the guide (default worldclip2)")
    parser.add_argument("--png", default="", help="write 8 source samples above their adapted versions (last lr)")
    parser.add_argument("--mapper-file", default="", help="IPL: reuse this stage-1 mapper (trained, saved if absent)")
    args = parser.parse_args()
    lrs = args.lr or [STAGE2_LR[args.method]]
    torch.set_num_threads(1)
    os.environ[BACKBONE_ENV] = args.backbone
    guide, vlm, gen, _ = load_backbones()  # ``vlm``: the judge and WorldGen's text encoder
    vlm.eval()
    guide.eval()
    s = dict(SETTINGS)
    eval_scenes = list(single_object_scenes("val", s["n_eval"], style=SOURCE_STYLE))
    pool_scenes = list(single_object_scenes("train", s["n_pool"], style=SOURCE_STYLE))
    eval_latents = sample_worldgen_latents(gen, vlm, [sc.caption for sc in eval_scenes], steps=s["gen_steps"], seed=0)
    pool = sample_worldgen_latents(gen, vlm, [sc.caption for sc in pool_scenes], steps=s["gen_steps"], seed=1)
    protos = style_prototypes(vlm, s["n_proto"])
    generator = WorldGenGenerator(gen, pool)
    with torch.no_grad():
        source_images = generator.generate(eval_latents)
    source = source_content(vlm, source_images)
    with torch.no_grad():  # the same for every lr: measured once
        source_metrics = {k: round(v, 4) for k, v in measure(vlm, source_images, source, protos, args.style).items()}
    mapper = None
    for lr in lrs:
        config = IPLConfig(
            method=args.method, source_text=SOURCE_TEXT, target_text=STYLE_TEXTS[args.style],
            ctx_init="a picture of a", steps=args.steps, mapper_steps=args.mapper_steps, mapper_batch=s["mapper_batch"],
            batch_size=args.batch_size or s["batch_size"], lr=lr, lambda_domain=args.lambda_domain,
            auto_layer_k=layer_selection_k(len(generator.lora_targets)), seed=args.seed,
        )
        t0 = time.perf_counter()
        if args.method == "ipl" and mapper is None:  # stage 1 does not depend on the stage-2 lr: train it once
            if args.mapper_file and os.path.isfile(args.mapper_file):
                mapper = load_mapper(args.mapper_file, guide)
            else:
                mapper = train_mapper(generator, guide, config).trained
                if args.mapper_file:
                    save_mapper(mapper, args.mapper_file)
        generator = WorldGenGenerator(gen, pool)
        result = run_adaptation(generator, guide, config, mapper)
        report: dict[str, object] = {"method": args.method, "style": args.style, "backbone": args.backbone, "lr": lr,
                                     "steps": args.steps, "batch_size": config.batch_size,
                                     "lambda_domain": args.lambda_domain, "seed": args.seed,
                                     "seconds": round(time.perf_counter() - t0, 1)}
        with torch.no_grad():
            adapted = generator.generate(eval_latents)
            report["source"] = source_metrics
            report["adapted"] = {k: round(v, 4) for k, v in measure(vlm, adapted, source, protos, args.style).items()}
            report["mean_abs_change"] = round(float((adapted - source_images).abs().mean()), 4)
            if result.mapper is not None:
                ctx = result.mapper.mapper(generator.latent_code(eval_latents))
                f_src = F.normalize(PromptEncoder(guide, config.source_text, config).features(ctx), dim=-1)
                f_tgt = F.normalize(PromptEncoder(guide, config.target_text, config).features(ctx), dim=-1)
                d_text = F.normalize(f_tgt - f_src, dim=-1)
                report["prompt_spread_source"] = round(diversity(f_src), 4)
                report["prompt_spread_target"] = round(diversity(f_tgt), 4)
                report["cos_to_nada_direction"] = round(float((d_text @ nada_direction(guide, config).T).mean()), 4)
                report["direction_spread"] = round(diversity(d_text), 4)
        print(json.dumps(report), flush=True)
    if args.png:
        from torchvision.utils import save_image

        save_image(torch.cat([source_images[:8], adapted[:8]]), args.png, nrow=8)


if __name__ == "__main__":
    main()
