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
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from promptweave.prompt_modules.dual_prompt import DualPromptConfig, WorldSource, save_dual_prompt, train_dual_prompt
from promptweave.prompt_modules.learned_prompt import encode_prompt_for_pipeline
from promptweave.prompt_modules.prompt_pretraining import (
    RPPConfig,
    WorldClassSource,
    load_pretrained_prompts,
    pretrain_prompts,
    save_pretrained_prompts,
)
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
    pipe = load_pipeline(args.pipeline)
    worldclip = load_worldclip()

    # 1. pretrain RPP prompts (unshared q/k/v, soft labels) over the world's colour x category classes
    source = WorldClassSource(shots=args.shots)
    pretrained = pretrain_prompts(
        worldclip,
        source,
        RPPConfig(classes_per_step=32),
        steps=args.pretrain_steps,
        batch_size=8,
        seed=args.seed,
        progress=False,
    )
    info = {"steps": pretrained.steps_done, "final_loss": round(pretrained.losses[-1], 4)}
    bundle_path = save_pretrained_prompts(
        pretrained.rpp, out / "rpp_bundle.safetensors", worldclip, class_names=source.class_names, info=info
    )
    bundle = load_pretrained_prompts(bundle_path, worldclip)

    # 2. a DCAR dual prompt that starts from the pretrained prompts (one config switch)
    config = DualPromptConfig(init_from=str(bundle_path))
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
    tables = {"clip_l": pipe.text_encoder.get_input_embeddings().weight}
    sd_prompt = result.dual.sd_learned_prompt(tables)
    embeds = encode_prompt_for_pipeline(sd_prompt, args.caption, pipe.tokenizer, pipe.text_encoder)
    negative, _ = pipe.encode_prompt("", pipe.device, 1, False)
    image = pipe(
        prompt_embeds=embeds,
        negative_prompt_embeds=negative,
        num_inference_steps=args.steps,
        height=args.size,
        width=args.size,
        generator=torch.Generator().manual_seed(args.seed),
    ).images[0]
    image.save(out / "conditioned.png")
    summary = [bundle.summary(), f"dual prompt: {result.steps_done} steps, final loss {result.losses[-1]:.4f}"]
    (out / "summary.txt").write_text("\n".join(summary) + "\n", encoding="utf-8")
    return [bundle_path, dual_path, out / "summary.txt", out / "conditioned.png"]


if __name__ == "__main__":
    for path in main():
        print(path)
