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
#: The shipped WorldCLIPs by backbone name: WorldCLIP 2 (trained on the world's own captions; WorldGen is
#: conditioned on its text space) and WorldCLIP-web (the same shape, pretrained on web-like captions, issue 37).
WORLDCLIP_FILES = {"worldclip2": WORLDCLIP_FILE, "worldclip-web": "worldclip-web.safetensors"}
DEFAULT_WORLDCLIP = "worldclip2"


def _weights(name: str, weights_dir: Path) -> Path:
    path = weights_dir / name
    if not path.is_file():
        raise ArtifactError(
            f"the world backbone {path} is missing: reinstall PromptWeave, or rebuild it with "
            f"`python -m promptweave.world train {'gen' if name == WORLDGEN_FILE else 'clip'}`"
        )
    return path


def load_worldclip(weights_dir: Path = WEIGHTS_DIR, name: str = DEFAULT_WORLDCLIP):
    """WorldCLIP ``name`` (a key of :data:`WORLDCLIP_FILES`) as a
    :class:`~promptweave.prompt_modules.core.vlm.VisionLanguageModel` (eval mode)."""
    from ..core.vlm import load_vlm

    if name not in WORLDCLIP_FILES:
        raise ValueError(f"unknown world backbone {name!r}; choose one of {sorted(WORLDCLIP_FILES)}")
    return load_vlm(_weights(WORLDCLIP_FILES[name], weights_dir)).eval()


def load_worldgen(weights_dir: Path = WEIGHTS_DIR):
    """WorldGen (eval mode); it is conditioned on WorldCLIP's text features."""
    from .worldgen import load_worldgen as load

    return load(_weights(WORLDGEN_FILE, weights_dir)).eval()


def load_world_models(weights_dir: Path = WEIGHTS_DIR):
    """``(worldclip, worldgen)``, the defaults every world workflow and benchmark runs on."""
    return load_worldclip(weights_dir), load_worldgen(weights_dir)
