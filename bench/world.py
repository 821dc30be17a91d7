"""Task ``world``: how good the shipped world backbones are (WorldCLIP and WorldGen).

Metrics: ``zero_shot_acc`` (WorldCLIP 27-way fine-category zero-shot accuracy on single-object scenes; also
the colour (20-way) and render-style (4-way) zero-shot accuracies),
``i2t_r1`` / ``t2i_r1`` (image <-> caption retrieval), and WorldGen's ``gen_category_agreement`` /
``gen_colour_agreement`` (WorldCLIP agreement of generated images with the prompt's category and colour).
Baseline ``untrained``: the same architecture with random weights (chance level). WorldCLIP's evaluation
scenes are fixed per split; the seed drives WorldGen's sampling noise and the untrained baseline's weights.
"""

from __future__ import annotations

import torch

from ..prompt_modules.core.vlm import VisionLanguageModel
from ..prompt_modules.world.models import load_world_models
from ..prompt_modules.world.worldgen import DEFAULT_GUIDANCE
from .harness import TaskResult


def run(seed: int, split: str, quick: bool) -> TaskResult:
    from ..prompt_modules.world.clip_training import evaluate_worldclip
    from ..prompt_modules.world.gen_training import evaluate_worldgen

    torch.manual_seed(seed)
    worldclip, worldgen = load_world_models()
    n_clip, n_gen, steps = (200, 48, 10) if quick else (1000, 200, 20)
    clip_metrics = evaluate_worldclip(worldclip, split=split, n=n_clip)
    gen_metrics = evaluate_worldgen(
        worldgen, worldclip, n=n_gen, seed=seed, steps=steps, guidance=DEFAULT_GUIDANCE, split=split
    )
    metrics = {
        "zero_shot_acc": clip_metrics["zero_shot_acc"],
        "zero_shot_colour_acc": clip_metrics["zero_shot_colour_acc"],
        "zero_shot_style_acc": clip_metrics["zero_shot_style_acc"],
        "i2t_r1": clip_metrics["i2t_r1"],
        "t2i_r1": clip_metrics["t2i_r1"],
        "gen_category_agreement": gen_metrics["gen_category_agreement"],
        "gen_colour_agreement": gen_metrics["gen_colour_agreement"],
    }
    untrained = VisionLanguageModel(worldclip.config, seed=seed).eval()
    baseline = evaluate_worldclip(untrained, split=split, n=n_clip)
    return TaskResult(
        metrics=metrics,
        baselines={"untrained": {k: v for k, v in baseline.items() if k in metrics}},
        notes={
            "n_clip": n_clip,
            "n_gen": n_gen,
            "ddim_steps": steps,
            "guidance": DEFAULT_GUIDANCE,
            # WorldCLIP's agreement on the real rendered scenes and on their autoencoder reconstructions:
            # the ceilings the generated images are judged against.
            **{k: gen_metrics[k] for k in gen_metrics if k.startswith(("real_", "recon_"))},
        },
    )
