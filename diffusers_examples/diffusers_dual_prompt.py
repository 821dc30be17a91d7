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
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from promptweave.prompt_modules.dual_prompt import (
    DualPromptConfig,
    WorldSource,
    load_dual_prompt,
    rank_images,
    save_dual_prompt,
    train_dual_prompt,
)
from promptweave.prompt_modules.learned_prompt import encode_prompt_for_pipeline
from promptweave.prompt_modules.world.models import load_worldclip
from promptweave.tiny import build_tiny_pipeline


def load_pipeline(path: str | None) -> StableDiffusionPipeline:
    """The diffusers pipeline at ``path`` (local files only), or the tiny random-weight one built in a temp folder."""
    if path:
        return StableDiffusionPipeline.from_pretrained(path, local_files_only=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_pipeline(Path(tmp) / "tiny-sd", seed=0)
        return StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)


def to_pil(image: torch.Tensor) -> Image.Image:
    """``[3, H, W]`` in 0..1 -> PIL image."""
    return Image.fromarray((image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


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
    pipe = load_pipeline(args.pipeline)
    worldclip = load_worldclip()

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
    dual = load_dual_prompt(dual_path, worldclip)

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
    scores, order = rank_images(worldclip, images, args.caption, dual)
    paths = [dual_path]
    lines = [f"caption: {args.caption}"]
    for rank, index in enumerate(order.tolist()):
        path = out / f"rank_{rank}.png"
        to_pil(images[index]).save(path)
        paths.append(path)
        lines.append(f"{rank}: image {index} score {float(scores[index]):.4f}")
    (out / "ranking.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    paths.append(out / "ranking.txt")

    # 3. the dual prompt's text context as a learned prompt for the pipeline's text encoder
    tables = {"clip_l": pipe.text_encoder.get_input_embeddings().weight}
    sd_prompt = dual.sd_learned_prompt(tables)
    embeds = encode_prompt_for_pipeline(sd_prompt, args.caption, pipe.tokenizer, pipe.text_encoder)
    negative, _ = pipe.encode_prompt("", pipe.device, 1, False)
    conditioned = pipe(
        prompt_embeds=embeds,
        negative_prompt_embeds=negative,
        num_inference_steps=args.steps,
        height=args.size,
        width=args.size,
        generator=torch.Generator().manual_seed(args.seed),
    ).images[0]
    conditioned.save(out / "conditioned.png")
    paths.append(out / "conditioned.png")
    return paths


if __name__ == "__main__":
    for path in main():
        print(path)
