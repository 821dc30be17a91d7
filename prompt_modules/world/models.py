"""The shipped world backbones: WorldCLIP (vision-language) and WorldGen (latent-diffusion generator).

They are trained on the procedural world by ``python -m promptweave.world train clip|gen`` (commands, times
and metrics in BENCHMARKS.md) and shipped in the pack's ``weights/`` folder as safetensors.
"""

from __future__ import annotations

from pathlib import Path

from ..core.artifacts import SHIPPED_WEIGHTS_DIR, ArtifactError

WEIGHTS_DIR = SHIPPED_WEIGHTS_DIR
WORLDCLIP_FILE = "worldclip.safetensors"
WORLDGEN_FILE = "worldgen.safetensors"


def _weights(name: str, weights_dir: Path) -> Path:
    path = weights_dir / name
    if not path.is_file():
        raise ArtifactError(
            f"the world backbone {path} is missing: reinstall PromptWeave, or rebuild it with "
            f"`python -m promptweave.world train {'clip' if name == WORLDCLIP_FILE else 'gen'}`"
        )
    return path


def load_worldclip(weights_dir: Path = WEIGHTS_DIR):
    """WorldCLIP as a :class:`~promptweave.prompt_modules.core.vlm.VisionLanguageModel` (eval mode)."""
    from ..core.vlm import load_vlm

    return load_vlm(_weights(WORLDCLIP_FILE, weights_dir)).eval()


def load_worldgen(weights_dir: Path = WEIGHTS_DIR):
    """WorldGen (eval mode); it is conditioned on WorldCLIP's text features."""
    from .worldgen import load_worldgen as load

    return load(_weights(WORLDGEN_FILE, weights_dir)).eval()


def load_world_models(weights_dir: Path = WEIGHTS_DIR):
    """``(worldclip, worldgen)``, the defaults every world workflow and benchmark runs on."""
    return load_worldclip(weights_dir), load_worldgen(weights_dir)
