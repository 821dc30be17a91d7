"""Learned prompt -> diffusers ``prompt_embeds`` (CoOp context vectors, Zhou et al. 2022, eq. 2).

Shows the learned-prompt primitive on a ``StableDiffusionPipeline``: ``n_ctx`` continuous vectors of the
pipeline's text-encoder width are spliced into a prompt where the placeholder ``<pw>`` stands (or right after
the start token), the text encoder runs on the result, and the pipeline renders from those ``prompt_embeds``.
The vectors are saved in the textual-inversion layout (``{"clip_l": [n, width]}``), so the same file also
loads with diffusers' own ``pipe.load_textual_inversion``.

Without ``--prompt-file`` a fresh prompt is made from the token embeddings of ``--init`` (CoOp's "a photo of a"
initialisation); pass a learned prompt trained elsewhere (ComfyUI node, dual prompt export) to use it instead.

Run::

    .venv/bin/python diffusers_examples/diffusers_learned_prompt.py --out out/examples/learned_prompt
    .venv/bin/python diffusers_examples/diffusers_learned_prompt.py --pipeline path/to/sd15 \\
        --prompt-file my-style.safetensors

Without ``--pipeline`` the tiny random-weight pipeline is built in a temporary folder (noise images, real code
path). Writes ``prompt.safetensors``, ``plain.png`` (the text alone), ``learned.png`` (with the vectors) and
``textual_inversion.png`` (the same file through ``pipe.load_textual_inversion``: identical to ``learned.png``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from promptweave import diffusers_api as pw
from promptweave.prompt_modules.core.learned_prompt import LearnedPrompt
from promptweave.testing.tiny import tiny_pipeline


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default=None, help="diffusers SD1.x folder (default: the tiny test pipeline)")
    parser.add_argument("--out", default="out/examples/learned_prompt", help="output folder")
    parser.add_argument("--prompt-file", default=None, help="a learned prompt .safetensors (default: a fresh one)")
    parser.add_argument("--init", default="watercolour painting", help="phrase a fresh prompt starts from")
    parser.add_argument("--n-ctx", type=int, default=4, help="vectors of a fresh prompt")
    parser.add_argument("--text", default="a red five-point star, <pw>", help="prompt; <pw> marks the vectors")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (512 for a real SD1.5)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Run the example; returns the paths it wrote."""
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = pw.load_pipeline(args.pipeline) if args.pipeline else tiny_pipeline()

    if args.prompt_file:
        prompt = LearnedPrompt.load(args.prompt_file)
    else:
        prompt = pw.new_learned_prompt(pipe, args.init, args.n_ctx)
    prompt_path = out / "prompt.safetensors"
    prompt.save(prompt_path)

    # the learned vectors spliced into the pipeline's text encoder (the file round-trips)
    embeds = pw.learned_prompt_embeds(pipe, prompt_path, args.text)
    learned = pw.generate(pipe, embeds, size=args.size, steps=args.steps, seed=args.seed)
    plain_text = args.text.replace(prompt.config.placeholder, "").strip(" ,")
    plain = pw.generate(pipe, *pw.encode_text(pipe, plain_text), size=args.size, steps=args.steps, seed=args.seed)
    # the same file is a textual-inversion embedding: diffusers' own loader gives the same prompt_embeds
    pipe.load_textual_inversion(str(prompt_path), token=prompt.config.placeholder)
    via_ti = pipe(
        prompt=args.text,
        negative_prompt="",
        num_inference_steps=args.steps,
        height=args.size,
        width=args.size,
        generator=torch.Generator().manual_seed(args.seed),
    ).images[0]
    paths = [prompt_path, out / "plain.png", out / "learned.png", out / "textual_inversion.png"]
    for image, path in zip((plain, learned, via_ti), paths[1:], strict=True):
        image.save(path)
    return paths


if __name__ == "__main__":
    for path in main():
        print(path)
