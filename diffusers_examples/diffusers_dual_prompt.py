"""Dual prompt (DCAR) with diffusers: train on WorldCLIP, rank a pipeline's images, condition the pipeline.

DCAR (Wang et al. 2025, arXiv 2508.04028) learns prompts for both towers of a frozen vision-language model for
fine-grained retrieval (mutual-information token re-weighting, category-aware hard negatives). Here:

1. a few training steps on the procedural world with the shipped WorldCLIP (``train_dual_prompt``);
2. the pipeline draws a batch for a caption and the dual prompt ranks it (``rank_images``: best match first);
3. the dual prompt's text context, read as vocabulary tokens, becomes a learned prompt for the pipeline's text
   encoder (``DualPrompt.sd_learned_prompt``) and conditions the pipeline (``encode_prompt_for_pipeline``).

Run::

    .venv/bin/python diffusers_examples/diffusers_dual_prompt.py --out out/examples/dual_prompt
    .venv/bin/python diffusers_examples/diffusers_dual_prompt.py --pipeline path/to/sd15 --size 512 --train-steps 300

Without ``--pipeline`` the tiny random-weight pipeline is built in a temporary folder (noise images, real code
path). Writes ``dual_prompt.safetensors``, ``rank_<k>.png`` (the batch, best first), ``ranking.txt`` and
``conditioned.png``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from promptweave import diffusers_api as pw
from promptweave.prompt_modules.dual_prompt import DualPromptConfig, save_dual_prompt, train_dual_prompt
from promptweave.prompt_modules.world.sources import WorldSource
from promptweave.testing.tiny import tiny_pipeline


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default=None, help="diffusers SD1.x folder (default: the tiny test pipeline)")
    parser.add_argument("--out", default="out/examples/dual_prompt", help="output folder")
    parser.add_argument("--train-steps", type=int, default=10, help="DCAR training steps (the benchmark uses 300+)")
    parser.add_argument("--caption", default="a large red five-point star and a small blue circle.")
    parser.add_argument("--n-images", type=int, default=4, help="images drawn and ranked")
    parser.add_argument("--size", type=int, default=64, help="generated image side (512 for a real SD1.5)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Run the example; returns the paths it wrote."""
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = pw.load_pipeline(args.pipeline) if args.pipeline else tiny_pipeline()
    worldclip = pw.load_worldclip()

    # 1. train DCAR prompts on the world (frozen WorldCLIP), save and reload them
    result = train_dual_prompt(
        worldclip,
        WorldSource("train"),
        DualPromptConfig(),
        steps=args.train_steps,
        batch_size=8,
        seed=args.seed,
        progress=False,
        bank_batches=1,
    )
    dual_path = save_dual_prompt(result.dual, out / "dual_prompt.safetensors")
    dual = pw.load_dual_prompt(dual_path, worldclip)

    # 2. draw a batch with the pipeline and rank it by the dual prompt's image-text similarity
    images = (
        pipe(
            prompt=args.caption,
            num_images_per_prompt=args.n_images,
            num_inference_steps=args.steps,
            height=args.size,
            width=args.size,
            generator=torch.Generator().manual_seed(args.seed),
            output_type="pt",
        )
        .images.float()
        .cpu()
    )  # [N, 3, H, W] in 0..1
    scores, order = pw.rank_images(worldclip, images, args.caption, dual)
    paths = [dual_path]
    lines = [f"caption: {args.caption}"]
    for rank, index in enumerate(order.tolist()):
        path = out / f"rank_{rank}.png"
        pw.to_pil(images[index])[0].save(path)
        paths.append(path)
        lines.append(f"{rank}: image {index} score {float(scores[index]):.4f}")
    (out / "ranking.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    paths.append(out / "ranking.txt")

    # 3. the dual prompt's text context as a learned prompt for the pipeline's text encoder
    embeds = pw.dual_prompt_embeds(pipe, dual, args.caption)
    conditioned = pw.generate(pipe, embeds, size=args.size, steps=args.steps, seed=args.seed)
    conditioned.save(out / "conditioned.png")
    paths.append(out / "conditioned.png")
    return paths


if __name__ == "__main__":
    for path in main():
        print(path)
