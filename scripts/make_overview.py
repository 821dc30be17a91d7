"""Draw ``docs/overview.png``: what PromptWeave does, in one picture (the top of the README).

Inputs on the left, the five capabilities in the middle, what each gives on the right. The example row is
real: a scene of the world's test split, inverted by the shipped pixel inverter.

    .venv/bin/python scripts/make_overview.py [--out docs/overview.png]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
WIDTH, HEIGHT = 1200, 640
CAPABILITIES = [  # (name, paper, what it learns / does, what you get, colour)
    ("Prompt inversion", "Reverse Stable Diffusion, CVIU 2024", "image -> MiniLM prompt embedding + keywords",
     "prompt text, keywords, CONDITIONING", "#dbeafe"),
    ("Latent-mapper adaptation", "IPL, CVPR 2023", "image-specific prompts -> U-Net LoRA for a named domain",
     "a PEFT LoRA (ComfyUI + diffusers)", "#dcfce7"),
    ("Dual prompt conditioning", "DCAR, 2025", "attribute + category prompts on both CLIP branches",
     "ranked images, fine-grained CONDITIONING", "#fef9c3"),
    ("Diff-Prompt generation", "Diff-Prompt, ICLR 2025", "Mask-VAE + DiT generate prompts from image + text",
     "masks and boxes -> inpainting", "#fce7f3"),
    ("Prompt pretraining", "RPP, 2024", "unshared q/k/v prompts + teacher soft labels; initialises 3",
     "a pretrained prompt bundle", "#ede9fe"),
]
INPUTS = ["images", "captions / referring expressions", "your SD1.x checkpoint or diffusers pipeline",
          "a CLIP-like model (open_clip, CLIP vision, WorldCLIP)"]


def font(size: int, bold: bool = False) -> ImageFont.ImageFont:
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(str(FONT_DIR / name), size)
    except OSError:
        return ImageFont.load_default()


def box(draw: ImageDraw.ImageDraw, xy: tuple[int, int, int, int], fill: str, outline: str = "#475569") -> None:
    draw.rounded_rectangle(xy, radius=10, fill=fill, outline=outline, width=2)


def arrow(draw: ImageDraw.ImageDraw, start: tuple[int, int], end: tuple[int, int], colour: str = "#334155") -> None:
    draw.line([start, end], fill=colour, width=2)
    x, y = end
    dx, dy = x - start[0], y - start[1]
    length = max(1.0, (dx * dx + dy * dy) ** 0.5)
    ux, uy = dx / length, dy / length
    left = (x - 10 * ux + 5 * uy, y - 10 * uy - 5 * ux)
    right = (x - 10 * ux - 5 * uy, y - 10 * uy + 5 * ux)
    draw.polygon([end, left, right], fill=colour)


def example_inversion() -> tuple[Image.Image, str, str] | None:
    """A world test scene, its true caption and the shipped pixel inverter's prompt for it (None without weights)."""
    from promptweave.prompt_modules.inversion import load_inverter
    from promptweave.prompt_modules.world import render_batch, split_seed_range
    from promptweave.prompt_modules.world.models import WEIGHTS_DIR

    path = WEIGHTS_DIR / "inverter-pixels-world.safetensors"
    if not path.is_file():
        return None
    batch = render_batch([split_seed_range("test").start])  # the first test scene, not a picked one
    prompt = load_inverter(path).invert(batch["image"])[0]["prompt"]
    array = (batch["image"][0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    return Image.fromarray(array).resize((96, 96), Image.NEAREST), batch["clean_caption"][0], prompt


def draw_overview() -> Image.Image:
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    draw.text((24, 16), "PromptWeave: learned prompts for Stable Diffusion", font=font(24, bold=True), fill="#0f172a")
    draw.text((24, 50), "ComfyUI nodes and a diffusers library over one pure-torch core, five papers",
              font=font(15), fill="#334155")

    # you bring
    draw.text((24, 92), "you bring", font=font(15, bold=True), fill="#0f172a")
    in_boxes = []
    for i, text in enumerate(INPUTS):
        y = 120 + i * 92
        box(draw, (24, y, 264, y + 70), "#f1f5f9")
        lines = _wrap(text, 26)
        for j, line in enumerate(lines):
            draw.text((36, y + 12 + j * 19), line, font=font(14), fill="#0f172a")
        in_boxes.append((264, y + 35))

    # capabilities
    draw.text((330, 92), "five capabilities", font=font(15, bold=True), fill="#0f172a")
    centres = []
    for i, (name, paper, learns, _, colour) in enumerate(CAPABILITIES):
        y = 120 + i * 92
        box(draw, (330, y, 790, y + 78), colour)
        draw.text((344, y + 8), f"{i + 1}. {name}", font=font(16, bold=True), fill="#0f172a")
        draw.text((344, y + 31), paper, font=font(13), fill="#475569")
        draw.text((344, y + 51), learns, font=font(13), fill="#0f172a")
        centres.append(y + 39)
    # every input can feed every capability: a bus between the two columns
    bus_x = 296
    draw.line([(bus_x, centres[0]), (bus_x, centres[-1])], fill="#334155", width=2)
    for x, y in in_boxes:
        draw.line([(x, y), (bus_x, y)], fill="#334155", width=2)
    for y in centres:
        arrow(draw, (bus_x, y), (326, y))

    # you get
    draw.text((850, 92), "you get", font=font(15, bold=True), fill="#0f172a")
    for i, (*_, gets, _colour) in enumerate(CAPABILITIES):
        y = 120 + i * 92
        box(draw, (850, y + 10, 1176, y + 68), "white", outline="#94a3b8")
        for j, line in enumerate(_wrap(gets, 34)):
            draw.text((862, y + 20 + j * 19), line, font=font(14), fill="#0f172a")
        arrow(draw, (790, centres[i]), (846, centres[i]))

    # a real example
    example = example_inversion()
    footer_y = 590
    if example is not None:
        draw.line([(24, footer_y - 10), (WIDTH - 24, footer_y - 10)], fill="#e2e8f0", width=1)
    draw.text((24, footer_y + 4), "Benchmarked offline on a procedural world with the WorldCLIP and WorldGen "
              "backbones shipped in weights/ (BENCHMARKS.md).", font=font(13), fill="#475569")
    if example is not None:
        image = _with_example(image, *example)
    return image


def _with_example(image: Image.Image, scene: Image.Image, truth: str, prompt: str) -> Image.Image:
    """Append a strip: a world scene -> the prompt the shipped inverter reads from it, under its true caption."""
    strip = Image.new("RGB", (WIDTH, 156), "white")
    draw = ImageDraw.Draw(strip)
    draw.text((24, 8), "example (real output)", font=font(13, bold=True), fill="#0f172a")
    strip.paste(scene, (24, 26))
    arrow(draw, (132, 74), (190, 74))
    draw.text((200, 26), "true caption:", font=font(13), fill="#475569")
    for j, line in enumerate(_wrap(truth, 120)[:2]):
        draw.text((200, 44 + j * 19), line, font=font(14), fill="#0f172a")
    draw.text((200, 86), "prompt inversion (shipped pixel inverter) reads:", font=font(13), fill="#475569")
    for j, line in enumerate(_wrap(f'"{prompt}"', 120)[:2]):
        draw.text((200, 104 + j * 19), line, font=font(14), fill="#0f172a")
    out = Image.new("RGB", (WIDTH, image.height + strip.height), "white")
    out.paste(image, (0, 0))
    out.paste(strip, (0, image.height))
    return out


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/overview.png")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".png", delete=False) as tmp:
        draw_overview().save(tmp.name, optimize=True)
    os.replace(tmp.name, out)
    return out


if __name__ == "__main__":
    print(main())
