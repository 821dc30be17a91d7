"""A dataset folder the way users have them, made of world scenes: the input of the caption-a-folder workflow
and its tests. Nested sub-folders; PNG, JPEG and WebP; an RGBA cut-out, a palette image and a 16-bit grey image;
and one corrupt file that must be reported and skipped."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..prompt_modules.world import render_batch

#: The demo folder's name inside ComfyUI's input folder (the workflow ``inversion_caption_folder_then_train``).
CAPTION_DEMO_FOLDER = "promptweave-caption-demo"
#: The corrupt file of the demo folder, relative to it.
BROKEN_NAME = "sub/broken.png"


def write_caption_demo_folder(folder: str | os.PathLike[str], size: int = 64, seed: int = 3_000_000_000
                              ) -> dict[str, Path | list[Path]]:
    """Write ten world scenes (plus a corrupt ``sub/broken.png``) under ``folder``; returns the image files by
    kind: ``png``, ``jpeg``, ``webp``, ``rgba``, ``palette``, ``grey16``, ``nested`` (four, one and two levels deep) and
    ``broken``."""
    folder = Path(folder)
    (folder / "sub" / "deeper").mkdir(parents=True, exist_ok=True)
    batch = render_batch([seed + k for k in range(10)], size=size)
    arrays = [np.ascontiguousarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
              for image in batch["image"]]
    scenes = [Image.fromarray(a, "RGB") for a in arrays]
    files = {
        "png": folder / "scene-0.png",
        "jpeg": folder / "scene-1.jpg",
        "webp": folder / "scene-2.webp",
        "rgba": folder / "cutout.png",
        "palette": folder / "palette.png",
        "grey16": folder / "grey16.png",
    }
    scenes[0].save(files["png"])
    scenes[1].save(files["jpeg"], quality=90)
    scenes[2].save(files["webp"], quality=90)
    alpha = np.full((size, size), 255, np.uint8)
    alpha[:, : size // 4] = 0  # a transparent strip whose hidden pixels are black, as cut-out tools leave them
    rgba = arrays[3].copy()
    rgba[alpha == 0] = 0
    Image.fromarray(np.dstack([rgba, alpha]), "RGBA").save(files["rgba"])
    scenes[4].quantize(colors=16).save(files["palette"])
    grey = (arrays[5].mean(axis=2) * 257).astype(np.uint16)
    Image.fromarray(grey).save(files["grey16"])  # mode I;16: a 16-bit grey PNG
    nested = [folder / "sub" / "scene-6.png", folder / "sub" / "scene-7.png", folder / "sub" / "deeper" / "scene-8.png",
              folder / "sub" / "deeper" / "scene-9.jpg"]
    for path, scene in zip(nested, scenes[6:], strict=True):
        scene.save(path)
    broken = folder / BROKEN_NAME
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature and nothing readable after it
    return {**files, "nested": nested, "broken": broken}
