"""Command line for the procedural world: ``python -m promptweave.world preview --n 16 out.png``.

Subcommands:

* ``preview``: a PNG grid of N scenes in mixed styles, each tile captioned with its scene's caption.
* ``train clip``: train WorldCLIP, the world's vision-language backbone (``prompt_modules/world/clip_training.py``).
* ``train gen``: train WorldGen, the world's latent-diffusion generator (``prompt_modules/world/gen_training.py``).
"""

from __future__ import annotations

import argparse
import io
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .prompt_modules.core.artifacts import atomic_write_bytes
from .prompt_modules.world import MIXED, SPLITS, STYLES, sample_scene, split_seed_range, style_for_seed


def _font(size: int = 11) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # old Pillow or no FreeType: the bitmap font
        return ImageFont.load_default()


def preview_image(
    n: int = 16,
    *,
    split: str = "train",
    base_seed: int = 0,
    size: int = 128,
    style: str = MIXED,
    noise_fraction: float = 0.0,
    tile: int = 256,
) -> Image.Image:
    """A grid of ``n`` scenes (``tile`` pixels wide) with style, seed and caption under each image."""
    font = _font()
    char_w = max(1.0, font.getlength("abcdefghijklmnopqrstuvwxyz") / 26)
    wrap = max(10, int((tile - 8) / char_w))
    line_h = 14
    lines_max = 6
    text_h = line_h * (lines_max + 1) + 6
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    sheet = Image.new("RGB", (cols * tile, rows * (tile + text_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    start = split_seed_range(split).start + base_seed
    for k in range(n):
        seed = start + k
        st = style_for_seed(seed) if style == MIXED else style
        scene = sample_scene(seed, size=size, style=st, split=split, noise_fraction=noise_fraction)
        img = Image.fromarray(np.ascontiguousarray(scene.image)).resize((tile, tile), Image.NEAREST)
        x, y = (k % cols) * tile, (k // cols) * (tile + text_h)
        sheet.paste(img, (x, y))
        head = f"#{seed} {st}" + (" NOISY" if scene.is_noisy else "")
        body = textwrap.wrap(scene.caption, wrap)
        if len(body) > lines_max:
            body = body[: lines_max - 1] + [body[lines_max - 1][: wrap - 3] + "..."]
        draw.text((x + 4, y + tile + 3), head, fill=(120, 0, 0), font=font)
        for i, line in enumerate(body):
            draw.text((x + 4, y + tile + 3 + line_h * (i + 1)), line, fill=(0, 0, 0), font=font)
        draw.rectangle([x, y, x + tile - 1, y + tile + text_h - 1], outline=(180, 180, 180))
    return sheet


def save_atomic(image: Image.Image, path: str) -> None:
    """Write ``image`` as PNG atomically (temporary file next to ``path``, then a rename)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    target = Path(path).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, buffer.getvalue())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m promptweave.world", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("preview", help="draw a captioned grid of scenes to a PNG file")
    p.add_argument("out", help="output PNG path")
    p.add_argument("--n", type=int, default=16, help="number of scenes (default 16)")
    p.add_argument("--split", default="train", choices=tuple(SPLITS), help="seed range to draw from")
    p.add_argument("--base-seed", type=int, default=0, help="offset inside the split's seed range")
    p.add_argument("--size", type=int, default=128, choices=(64, 128), help="render size (default 128)")
    p.add_argument("--style", default=MIXED, choices=(MIXED, *STYLES), help="render style (default mixed)")
    p.add_argument("--noise", type=float, default=0.0, help="fraction of mismatched captions")
    train = sub.add_parser("train", help="train a world backbone with fixed seeds and resumable checkpoints")
    models = train.add_subparsers(dest="model", required=True)
    from .prompt_modules.world import clip_training, gen_training

    clip_training.add_cli_arguments(models.add_parser("clip", help="train WorldCLIP (contrastive, all styles)"))
    gen_training.add_cli_arguments(models.add_parser("gen", help="train WorldGen (autoencoder + latent diffusion)"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "preview":
        img = preview_image(
            args.n,
            split=args.split,
            base_seed=args.base_seed,
            size=args.size,
            style=args.style,
            noise_fraction=args.noise,
        )
        save_atomic(img, args.out)
        print(f"wrote {args.out} ({args.n} scenes)")
    elif args.command == "train":
        from .prompt_modules.world import clip_training, gen_training

        return (clip_training if args.model == "clip" else gen_training).run_cli(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
