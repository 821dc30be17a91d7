"""Command line: caption a folder of images with a prompt inverter, ``<name>.txt`` beside every image.

    python -m promptweave.caption FOLDER --inverter inverter-worldclip.safetensors --worldclip
    python -m promptweave.caption FOLDER --inverter my-inverter.safetensors --vlm path/to/clip --existing append \\
        --trigger "ohwx" --manifest csv --dry-run

The same function as ComfyUI's Caption Folder node and ``diffusers_api.caption_folder``
(:func:`promptweave.prompt_modules.inversion.caption.caption_folder`). Sub-folders are captioned unless ``--flat``;
a re-run in the default ``--existing skip`` mode resumes where an interrupted run stopped. Exit status: 0 when
every image was captioned or skipped, 1 when some image could not be read (listed), 2 for bad arguments.
White-box inverters on a Stable Diffusion U-Net need the pipeline: use ``diffusers_api.caption_folder(pipe=...)``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .prompt_modules.core.artifacts import SHIPPED_WEIGHTS_DIR, ArtifactError
from .prompt_modules.inversion import (
    CAPTION_CONTENTS,
    EXISTING_MODES,
    MANIFEST_FORMATS,
    TRIGGER_POSITIONS,
    MissingEncoderInput,
    caption_folder,
    encoder_image_size,
    image_features,
    load_inverter,
)

#: What to pass when the inverter's image encoder is missing (``MissingEncoderInput.input`` -> option).
_NEEDS = {"vlm": "--vlm PATH (the CLIP it was trained on) or --worldclip", "worldgen": "--worldgen",
          "clip_vision": "--vlm CLIP_L_FILE --vision CLIP_VISION_FILE",
          "unet_features": "the pipeline: use diffusers_api.caption_folder(pipe=...)"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m promptweave.caption", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder of images (PNG, JPEG, WebP, BMP)")
    parser.add_argument("--inverter", required=True,
                        help="prompt inverter .safetensors, or the name of one shipped in the pack's weights/")
    parser.add_argument("--vlm", help="CLIP for inverters trained on a VLM: any file or folder load_vlm reads")
    parser.add_argument("--vision", help="CLIP-vision file paired with a clip_l/clip_g text encoder in --vlm")
    parser.add_argument("--worldclip", action="store_true", help="use the shipped WorldCLIP as the VLM")
    parser.add_argument("--worldgen", action="store_true", help="WorldGen and WorldCLIP, for white-box world inverters")
    parser.add_argument("--flat", action="store_true", help="only the folder itself, not its sub-folders")
    parser.add_argument("--caption", choices=CAPTION_CONTENTS, default="prompt",
                        help="prompt, keywords as comma-separated tags, or both (default: prompt)")
    parser.add_argument("--trigger", default="", help="words added to every new caption, e.g. a LoRA trigger word")
    parser.add_argument("--trigger-position", choices=TRIGGER_POSITIONS, default="prepend")
    parser.add_argument("--existing", choices=EXISTING_MODES, default="skip",
                        help="what to do with existing captions (default: skip, which resumes a stopped run)")
    parser.add_argument("--manifest", choices=MANIFEST_FORMATS, help="also write captions.csv / captions.jsonl")
    parser.add_argument("--dry-run", action="store_true", help="list what would change; write nothing")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=8, help="keywords per image (default: 8)")
    parser.add_argument("--threshold", type=float, default=0.5, help="keyword score for the caption (default: 0.5)")
    parser.add_argument("--no-dakl", action="store_true", help="skip the inverter's kernel refinement (DAKL)")
    return parser


def _inverter_path(name: str) -> Path:
    path = Path(name).expanduser()
    shipped = SHIPPED_WEIGHTS_DIR / name
    return shipped if not path.exists() and shipped.is_file() else path


def _encoders(ns: argparse.Namespace) -> tuple[Any, Any]:
    """``(vlm, worldgen)`` named by the options (``None`` where not asked for)."""
    from .prompt_modules.core.vlm import load_vlm
    from .prompt_modules.world.models import load_world_models, load_worldclip

    if ns.worldgen:
        return load_world_models()
    if ns.worldclip:
        return load_worldclip(), None
    return (load_vlm(ns.vlm, vision=ns.vision) if ns.vlm else None), None


class _Progress:
    """``progress(done, total)`` as a tqdm bar on stderr (a plain counter where tqdm is not installed)."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        try:
            from tqdm import tqdm
        except ImportError:
            print(f"\r{done}/{total} images", end="\n" if done == total else "", file=sys.stderr, flush=True)
            return
        if self.bar is None:
            self.bar = tqdm(total=total, unit="img", desc="captioning")
        self.bar.update(done - self.bar.n)
        if done == total:
            self.bar.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    ns = parser.parse_args(argv)
    if ns.batch_size < 1 or ns.top_k < 1:
        parser.error("--batch-size and --top-k must be at least 1")
    try:
        inverter = load_inverter(_inverter_path(ns.inverter))
        vlm, worldgen = _encoders(ns)

        def encode(pixels: torch.Tensor) -> tuple[str, torch.Tensor]:
            return image_features(inverter.backbone, pixels, vlm=vlm, worldgen=worldgen)

        size = encoder_image_size(inverter.backbone, vlm=vlm, worldgen=worldgen)
        summary = caption_folder(
            ns.folder, inverter, encode, size=size, recursive=not ns.flat, content=ns.caption, trigger=ns.trigger,
            trigger_position=ns.trigger_position, existing=ns.existing, manifest=ns.manifest,
            batch_size=ns.batch_size, top_k=ns.top_k, threshold=ns.threshold, use_dakl=not ns.no_dakl,
            dry_run=ns.dry_run, progress=None if ns.dry_run else _Progress(),
        )
    except MissingEncoderInput as exc:
        parser.error(f"{exc}: pass {_NEEDS.get(exc.input, exc.input)}")
    except (ArtifactError, ValueError, OSError) as exc:
        parser.error(str(exc))
    except KeyboardInterrupt:
        print("\ninterrupted: every caption file written so far is whole; run the same command again to resume",
              file=sys.stderr)
        return 130
    print(summary.report())
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
