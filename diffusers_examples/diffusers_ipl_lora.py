"""IPL adaptation of a diffusers U-Net -> a diffusers LoRA -> ``pipe.load_lora_weights`` -> generate.

IPL (Guo et al., CVPR 2023): a latent mapper turns each image's latent code (for diffusion: the starting noise)
into image-specific prompt vectors for a frozen vision-language model (stage 1), then a LoRA on the generator is
trained with the image-specific directional loss from ``--source`` to ``--target`` (stage 2). The generator is
the pipeline's U-Net (LoRA on the attention projections) sampled with a few differentiable DDIM steps and
decoded by its VAE (``sd_generator_from_diffusers``); the VLM is the shipped WorldCLIP. The LoRA is exported with
diffusers/PEFT names (``save_lora(..., fmt="diffusers")``) and loaded back with diffusers' own
``pipe.load_lora_weights``.

Run::

    .venv/bin/python diffusers_examples/diffusers_ipl_lora.py --out out/examples/ipl_lora
    .venv/bin/python diffusers_examples/diffusers_ipl_lora.py --pipeline path/to/sd15 --size 512 --adapt-steps 300

Without ``--pipeline`` the tiny random-weight pipeline is built in a temporary folder (noise images, real code
path; the run is far too short to change the domain visibly). Writes ``<target>.safetensors`` (the LoRA),
``before.png`` and ``after.png`` (same seed, without and with the LoRA).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from promptweave import diffusers_api as pw
from promptweave.testing.tiny import tiny_pipeline


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default=None, help="diffusers SD1.x folder (default: the tiny test pipeline)")
    parser.add_argument("--out", default="out/examples/ipl_lora", help="output folder")
    parser.add_argument("--prompt", default="a picture of a red five-point star, flat", help="source-domain prompt")
    parser.add_argument("--source", default="flat", help="source domain text")
    parser.add_argument("--target", default="neon sign", help="target domain text")
    parser.add_argument("--mapper-steps", type=int, default=4, help="stage 1 steps (paper: 300)")
    parser.add_argument("--adapt-steps", type=int, default=3, help="stage 2 steps (paper: 300)")
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank")
    parser.add_argument("--sample-steps", type=int, default=2, help="DDIM steps inside the training loop")
    parser.add_argument("--size", type=int, default=64, help="image side (512 for a real SD1.5)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps of the final images")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Run the example; returns the paths it wrote."""
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = pw.load_pipeline(args.pipeline) if args.pipeline else tiny_pipeline()
    worldclip = pw.load_worldclip()

    # the LoRA is trained on a frozen copy of the pipeline's U-Net and VAE, conditioned on the source prompt
    config = pw.IPLConfig(
        source_text=args.source,
        target_text=args.target,
        mapper_steps=args.mapper_steps,
        mapper_batch=4,
        steps=args.adapt_steps,
        batch_size=2,
        rank=args.rank,
        ema_decay=0.0 if args.adapt_steps < 100 else 0.99,  # an EMA over a handful of steps stays at the start
    )
    name = re.sub(r"[^A-Za-z0-9]+", "-", args.target).strip("-") or "lora"
    lora_path = pw.adapt_to_domain(
        pipe,
        worldclip,
        out / f"{name}.safetensors",
        prompt=args.prompt,
        source=args.source,
        target=args.target,
        config=config,
        image_size=args.size,
        sample_steps=args.sample_steps,
    )

    common = dict(prompt=args.prompt, num_inference_steps=args.steps, height=args.size, width=args.size)
    before = pipe(generator=torch.Generator().manual_seed(args.seed), **common).images[0]
    pipe.load_lora_weights(str(lora_path))  # diffusers' own loader reads the exported file
    after = pipe(generator=torch.Generator().manual_seed(args.seed), **common).images[0]
    before.save(out / "before.png")
    after.save(out / "after.png")
    return [lora_path, out / "before.png", out / "after.png"]


if __name__ == "__main__":
    for path in main():
        print(path)
