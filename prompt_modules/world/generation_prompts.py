"""Generation prompts of world scenes: the text people type into a text-to-image model (issue 37).

Reverse Stable Diffusion (Croitoru et al. 2023) inverts prompts that only partly describe their images: they name
the subject and a style, add quality words ("masterpiece, 4k"), leave most attributes out and carry words that
no image shows (artists, render engines). :func:`generation_prompt` writes such a prompt for a world scene: the
fine category of each mentioned object (the first always), its colour most of the time, its size or texture
seldom, the render style in the words people use for it, sometimes the background, 0-3 quality tags and, in a
share of prompts, a word with no visual meaning. Deterministic given the scene and the seed.
"""

from __future__ import annotations

import random
import zlib

from .render import background_name_as_drawn
from .scene import Scene
from .vocabulary import BACKGROUNDS

STYLE_WORDS: dict[str, tuple[str, ...]] = {
    "flat": ("flat vector illustration", "flat design", "minimal vector art"),
    "sketch": ("pencil outline sketch", "line art", "outline drawing"),
    "mosaic": ("pixel art", "8-bit pixel mosaic", "low-res pixel art"),
    "neon": ("neon glow", "glowing neon sign", "neon lights"),
}
QUALITY_TAGS = ("masterpiece", "best quality", "highly detailed", "4k", "sharp focus", "award winning",
                "trending on artstation", "clean lines")  # fmt: skip
UNSEEN_WORDS = ("by greg rutkowski", "octane render", "unreal engine", "cinematic lighting", "bokeh",
                "studio ghibli", "hdr")  # fmt: skip


def generation_prompt(scene: Scene, seed: int = 0, *, unseen_rate: float = 0.3) -> str:
    """A text-to-image prompt a person might have written for ``scene`` (see the module docstring)."""
    rng = random.Random(zlib.crc32(f"gen-prompt:{seed}:{scene.seed}".encode()))
    subjects = []
    for k, obj in enumerate(scene.objects):
        if k and rng.random() >= 0.6:
            continue
        words = [obj.category]
        if rng.random() < 0.7:
            words.insert(0, obj.colour)
        if rng.random() < 0.2:
            words.insert(0, obj.size)
        if obj.texture != "solid" and rng.random() < 0.3:
            words.insert(0, obj.texture)
        subjects.append(" ".join(words))
    parts = [" and ".join(subjects)]
    if rng.random() < 0.8:
        parts.append(rng.choice(STYLE_WORDS[scene.style]))
    if rng.random() < 0.4:
        parts.append(f"{background_name_as_drawn(scene.background, scene.style, BACKGROUNDS)} background")
    parts += rng.sample(QUALITY_TAGS, rng.randint(0, 3))
    if rng.random() < unseen_rate:
        parts.append(rng.choice(UNSEEN_WORDS))
    return ", ".join(parts)


__all__ = ["QUALITY_TAGS", "STYLE_WORDS", "UNSEEN_WORDS", "generation_prompt"]
