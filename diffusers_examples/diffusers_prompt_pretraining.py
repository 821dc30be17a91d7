"""RPP prompt pretraining -> a dual prompt started from it -> diffusers conditioning.

RPP (Chen et al. 2024, "Revisiting Prompt Pretraining of Vision-Language Models", arXiv 2409.06166): deep
prompts with unshared query/key/value prompts are pretrained on a frozen vision-language model as a zero-shot
classifier over many classes (soft labels from the unprompted teacher, POMP class sampling) and saved as a
*pretrained prompt bundle* (``save_pretrained_prompts``). Other capabilities start from it: here a DCAR dual
prompt (``DualPromptConfig(init_from=bundle_path)``; ``train_dual_prompt(..., init_prompts=bundle)`` does the same
for a bundle in memory), whose text context then conditions the pipeline (``DualPrompt.sd_learned_prompt`` +
``encode_prompt_for_pipeline``). Both trainings run a few steps on the procedural world with the shipped
WorldCLIP.

Run::

    .venv/bin/python diffusers_examples/diffusers_prompt_pretraining.py --out out/examples/prompt_pretraining
    .venv/bin/python diffusers_examples/diffusers_prompt_pretraining.py --pipeline path/to/sd15 --size 512 \\
        --pretrain-steps 500 --train-steps 300

Without ``--pipeline`` the tiny random-weight pipeline is built in a temporary folder (noise images, real code
path). Writes ``rpp_bundle.safetensors``, ``dual_prompt.safetensors``, ``summary.txt`` and ``conditioned.png``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from promptweave import diffusers_api as pw
from promptweave.prompt_modules.dual_prompt import save_dual_prompt, train_dual_prompt
from promptweave.prompt_modules.pretraining import save_pretrained_prompts
from promptweave.prompt_modules.world.sources import WorldClassSource, WorldSource
from promptweave.testing.tiny import tiny_pipeline


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default=None, help="diffusers SD1.x folder (default: the tiny test pipeline)")
    parser.add_argument("--out", default="out/examples/prompt_pretraining", help="output folder")
    parser.add_argument("--pretrain-steps", type=int, default=10, help="RPP pretraining steps")
    parser.add_argument("--train-steps", type=int, default=10, help="DCAR steps from the pretrained prompts")
    parser.add_argument("--shots", type=int, default=2, help="renders per world class for pretraining")
    parser.add_argument("--caption", default="a large red five-point star and a small blue circle.")
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

    # 1. pretrain RPP prompts (unshared q/k/v, soft labels) over the world's colour x category classes
    source = WorldClassSource(shots=args.shots)
    pretrained = pw.pretrain_prompts(
        worldclip,
        source,
        pw.RPPConfig(classes_per_step=32),
        steps=args.pretrain_steps,
        batch_size=8,
        seed=args.seed,
        progress=False,
    )
    info = {"steps": pretrained.steps_done, "final_loss": round(pretrained.losses[-1], 4)}
    bundle_path = save_pretrained_prompts(
        pretrained.rpp, out / "rpp_bundle.safetensors", worldclip, class_names=source.class_names, info=info
    )
    bundle = pw.load_pretrained_prompts(bundle_path, worldclip)

    # 2. a DCAR dual prompt that starts from the pretrained prompts (one config switch)
    config = pw.DualPromptConfig(init_from=str(bundle_path))
    result = train_dual_prompt(
        worldclip,
        WorldSource("train"),
        config,
        steps=args.train_steps,
        batch_size=8,
        seed=args.seed,
        progress=False,
        bank_batches=1,
    )
    dual_path = save_dual_prompt(result.dual, out / "dual_prompt.safetensors")

    # 3. its text context conditions the pipeline
    embeds = pw.dual_prompt_embeds(pipe, result.dual, args.caption)
    image = pw.generate(pipe, embeds, size=args.size, steps=args.steps, seed=args.seed)
    image.save(out / "conditioned.png")
    summary = [bundle.summary(), f"dual prompt: {result.steps_done} steps, final loss {result.losses[-1]:.4f}"]
    (out / "summary.txt").write_text("\n".join(summary) + "\n", encoding="utf-8")
    return [bundle_path, dual_path, out / "summary.txt", out / "conditioned.png"]


if __name__ == "__main__":
    for path in main():
        print(path)
