"""Diff-Prompt grounding -> mask -> diffusers inpainting of the referred object.

Diff-Prompt (Yan et al., ICLR 2025, arXiv 2504.21423): a Mask-VAE and a DiT generate intermediate masks from an
image and a referring expression; adapters turn them into prompts for a frozen vision-language model whose
grounding head predicts the object's mask and box. Here the three stages are trained for a few steps on the
procedural world with the shipped WorldCLIP (``train_all``; pass a trained bundle with ``--bundle`` instead), the
expression is grounded in an image (``GroundingOutput.masks_at`` gives the mask at the image's size), and
``StableDiffusionInpaintPipeline`` built from the same components as the text-to-image pipeline
(``from_pipe``) repaints the masked object. With the tiny 4-channel U-Net diffusers inpaints by blending latents
outside the mask; a real SD1.5 inpainting checkpoint (9-channel U-Net) works the same way.

A short run can predict an empty mask; the predicted box is then used as the mask (``box_masks_at``) and
``mask.txt`` says so.

Run::

    .venv/bin/python diffusers_examples/diffusers_diff_prompt.py --out out/examples/diff_prompt
    .venv/bin/python diffusers_examples/diffusers_diff_prompt.py --pipeline path/to/sd15-inpainting \\
        --bundle diff.safetensors \\
        --image photo.png --text "the red star" --size 512

Without ``--pipeline`` the tiny random-weight pipeline is built in a temporary folder (noise images, real code
path). Without ``--image`` a scene of the world's test split and one of its referring expressions are used.
Writes ``diff_prompt.safetensors`` (when trained here), ``input.png``, ``mask.png``, ``mask.txt`` and
``inpainted.png``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionInpaintPipeline
from PIL import Image

from promptweave import diffusers_api as pw
from promptweave.prompt_modules.diff_prompt import train_all
from promptweave.prompt_modules.world.sources import WorldGroundingSource, evaluation_set
from promptweave.testing.tiny import tiny_pipeline


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default=None, help="diffusers SD1.x folder (default: the tiny test pipeline)")
    parser.add_argument("--out", default="out/examples/diff_prompt", help="output folder")
    parser.add_argument("--bundle", default=None, help="a trained Diff-Prompt bundle (default: train a short one)")
    parser.add_argument(
        "--train-steps",
        type=int,
        nargs=3,
        default=(20, 20, 40),
        metavar=("VAE", "DIT", "PROMPT"),
        help="steps of the three stages when training here",
    )
    parser.add_argument("--image", default=None, help="image to ground in (default: a world scene)")
    parser.add_argument("--text", default=None, help="referring expression (default: the scene's)")
    parser.add_argument("--inpaint-prompt", default="a blue hexagon", help="what to paint into the mask")
    parser.add_argument("--threshold", type=float, default=0.5, help="mask probability threshold")
    parser.add_argument("--size", type=int, default=64, help="image side (512 for a real SD1.5)")
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
    paths: list[Path] = []

    if args.bundle:
        model = pw.load_diff_prompt(args.bundle, worldclip)
    else:
        vae_steps, dit_steps, prompt_steps = args.train_steps
        bundle_path = out / "diff_prompt.safetensors"
        model = train_all(
            worldclip,
            WorldGroundingSource("train"),
            vae_steps=vae_steps,
            dit_steps=dit_steps,
            prompt_steps=prompt_steps,
            batch_size=8,
            seed=args.seed,
            bundle_path=bundle_path,
            progress=False,
        )
        paths.append(bundle_path)

    if args.image:
        image = Image.open(args.image).convert("RGB").resize((args.size, args.size), Image.BICUBIC)
        text = args.text or "the object"
    else:
        scene = evaluation_set("test", 1, size=args.size)
        image, text = pw.to_pil(scene.images[0])[0], args.text or scene.texts[0]

    # the mask of the referred object at the image size (the predicted box where the mask head finds nothing)
    mask_image = pw.ground(model, worldclip, image, [text], threshold=args.threshold, seed=args.seed)[0]

    inpaint = StableDiffusionInpaintPipeline.from_pipe(pipe)
    inpainted = inpaint(
        prompt=args.inpaint_prompt,
        image=image,
        mask_image=mask_image,
        height=args.size,
        width=args.size,
        num_inference_steps=args.steps,
        strength=1.0,
        generator=torch.Generator().manual_seed(args.seed),
    ).images[0]
    for name, item in (("input.png", image), ("mask.png", mask_image), ("inpainted.png", inpainted)):
        item.save(out / name)
        paths.append(out / name)
    masked = int((np.asarray(mask_image) > 0).sum())
    (out / "mask.txt").write_text(
        f"expression: {text}\nmasked pixels: {masked} of {args.size * args.size}\n", encoding="utf-8"
    )
    paths.append(out / "mask.txt")
    return paths


if __name__ == "__main__":
    for path in main():
        print(path)
