"""Prompt inversion -> diffusers: image -> prompt text and keywords -> ``prompt_embeds`` -> a new image.

Reverse Stable Diffusion (Croitoru et al., CVIU 2024): an inverter predicts the prompt embedding (all-MiniLM-L6-v2
space) of an image and the prompt's keywords (vocabulary head); decoding gives the nearest known prompt and a
composed prompt. That text goes through the pipeline's own ``encode_prompt`` into ``prompt_embeds`` and the
pipeline regenerates the image from it.

The default inverter is the one shipped in ``weights/inverter-pixels-world.safetensors`` (a pixel CNN trained on
the procedural world, so it reads world-like images); train your own with
``promptweave.prompt_modules.inversion.train_inverter`` (see that package's docstring) and pass it with
``--inverter``. Without ``--image`` a scene of the world's test split is the input.

Run::

    .venv/bin/python diffusers_examples/diffusers_prompt_inversion.py --out out/examples/prompt_inversion
    .venv/bin/python diffusers_examples/diffusers_prompt_inversion.py --pipeline path/to/sd15 \\
        --image photo.png --size 512

Without ``--pipeline`` the tiny random-weight pipeline is built in a temporary folder (noise images, real code
path). Writes ``input.png``, ``prompt.txt`` (composed prompt, keywords, nearest prompts) and ``regenerated.png``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from promptweave import diffusers_api as pw
from promptweave.prompt_modules.world import render_batch, split_seed_range
from promptweave.prompt_modules.world.models import WEIGHTS_DIR
from promptweave.testing.tiny import tiny_pipeline

DEFAULT_INVERTER = WEIGHTS_DIR / "inverter-pixels-world.safetensors"


def load_image(path: str | None, seed: int) -> Image.Image:
    """The RGB image at ``path``, or a 64 px scene of the world's test split."""
    if path:
        return Image.open(path).convert("RGB")
    scene = render_batch([split_seed_range("test").start + seed])["image"][0]
    return pw.to_pil(scene)[0]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default=None, help="diffusers SD1.x folder (default: the tiny test pipeline)")
    parser.add_argument("--out", default="out/examples/prompt_inversion", help="output folder")
    parser.add_argument("--inverter", default=str(DEFAULT_INVERTER), help="a prompt inverter .safetensors")
    parser.add_argument("--image", default=None, help="input image (default: a world scene)")
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
    inverter = pw.load_inverter(args.inverter)
    vlm = None if inverter.backbone == "pixels" else pw.load_worldclip()  # a vlm:* inverter reads its features

    image = load_image(args.image, args.seed)
    result = pw.invert_images(inverter, image, vlm=vlm)[0]  # {"prompt", "keywords", "nearest", "embedding"}
    text = result["prompt"]
    report = [f"prompt: {text}", "keywords: " + ", ".join(f"{w} ({s:.2f})" for w, s in result["keywords"])]
    report += [f"nearest: {p} (cosine {c:.3f})" for p, c in result["nearest"]]

    regenerated = pw.generate(pipe, *pw.encode_text(pipe, text), size=args.size, steps=args.steps, seed=args.seed)
    paths = [out / "input.png", out / "prompt.txt", out / "regenerated.png"]
    image.save(paths[0])
    paths[1].write_text("\n".join(report) + "\n", encoding="utf-8")
    regenerated.save(paths[2])
    return paths


if __name__ == "__main__":
    for path in main():
        print(path)
