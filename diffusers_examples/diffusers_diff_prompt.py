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
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline
from PIL import Image

from promptweave.prompt_modules.diff_prompt import WorldGroundingSource, evaluation_set, load_diff_prompt, train_all
from promptweave.prompt_modules.world.models import load_worldclip
from promptweave.tiny import build_tiny_pipeline


def load_pipeline(path: str | None) -> StableDiffusionPipeline:
    """The diffusers pipeline at ``path`` (local files only), or the tiny random-weight one built in a temp folder."""
    if path:
        return StableDiffusionPipeline.from_pretrained(path, local_files_only=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_pipeline(Path(tmp) / "tiny-sd", seed=0)
        return StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)


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
    pipe = load_pipeline(args.pipeline)
    worldclip = load_worldclip()
    paths: list[Path] = []

    if args.bundle:
        model = load_diff_prompt(args.bundle, worldclip)
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
        array = (scene.images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        image, text = Image.fromarray(array), args.text or scene.texts[0]
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]

    with torch.no_grad():
        grounded = model(worldclip, pixels, [text], generator=torch.Generator().manual_seed(args.seed))
    mask = grounded.masks_at(args.size, args.size, args.threshold)[0]
    source = "mask head"
    if mask.sum() == 0:  # a very short run: use the predicted box
        mask, source = grounded.box_masks_at(args.size, args.size)[0], "predicted box (the mask was empty)"
    mask_image = Image.fromarray((mask.numpy() * 255).astype(np.uint8), mode="L")

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
    (out / "mask.txt").write_text(
        f"expression: {text}\nmask from: {source}\nmasked pixels: {int(mask.sum())} of {mask.numel()}\n"
        f"box (x0, y0, x1, y1, normalised): {[round(v, 3) for v in grounded.boxes[0].tolist()]}\n",
        encoding="utf-8",
    )
    paths.append(out / "mask.txt")
    return paths


if __name__ == "__main__":
    for path in main():
        print(path)
