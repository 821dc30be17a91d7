"""Zero-shot classification with a vision-language model over the world's label sets.

One definition shared by every world metric (WorldCLIP's ``zero_shot_acc``, WorldGen's
``gen_category_agreement``/``gen_colour_agreement``, and the capability benchmarks): an image is assigned
the label whose prompt has the highest cosine similarity to it, CLIP-style (Radford et al. 2021, sec. 3.1.2).
Evaluation scenes hold a single object, so "the category of the image" is unambiguous.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .scene import Scene, sample_scene, split_seed_range
from .vocabulary import CATEGORY_NAMES, COLOUR_NAMES, STYLE_PHRASES, STYLES

CATEGORY_TEMPLATE = "a picture of a {}."
COLOUR_TEMPLATE = "a picture of a {} shape."


def category_prompts() -> list[str]:
    return [CATEGORY_TEMPLATE.format(name) for name in CATEGORY_NAMES]


def colour_prompts() -> list[str]:
    return [COLOUR_TEMPLATE.format(name) for name in COLOUR_NAMES]


def style_prompts() -> list[str]:
    """One prompt per render style, in :data:`~.vocabulary.STYLES` order: the style's phrase."""
    return [f"{STYLE_PHRASES[style]}." for style in STYLES]


def single_object_scenes(split: str, n: int, *, style: str = "flat", size: int = 64) -> Iterator[Scene]:
    """The first ``n`` scenes of ``split`` (in seed order) that hold exactly one object."""
    found = 0
    for seed in split_seed_range(split):
        if found == n:
            return
        scene = sample_scene(seed, size=size, style=style)
        if len(scene.objects) == 1:
            found += 1
            yield scene


@torch.no_grad()
def zero_shot_predict(vlm, images: torch.Tensor, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Index of the best-matching prompt for each image ``[B, 3, H, W]`` in 0..1."""
    text = vlm.encode_text(list(prompts))
    predictions = []
    for start in range(0, images.shape[0], batch_size):
        features = vlm.encode_image(images[start : start + batch_size].to(vlm.device))
        predictions.append((features @ text.T).argmax(dim=1).cpu())
    return torch.cat(predictions)


def scenes_to_images(scenes: Sequence[Scene]) -> torch.Tensor:
    """Stack scene images into a float ``[B, 3, H, W]`` tensor in 0..1."""
    array = np.stack([scene.image for scene in scenes])
    return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255.0
