"""The embedded default models that ``make demo`` and the tests install into a ComfyUI base folder.

No pretrained weights can be downloaded here, so the defaults are built on demand and cached under
``.cache/tiny`` (never committed): the tiny random-weight SD1.x checkpoint from :mod:`promptweave.testing.tiny`, and
a learned prompt initialised CoOp-style from that checkpoint's token embeddings of a phrase, and a tiny
random-weight CLIP in transformers' layout in ``models/vlm``, and a random-weight OpenAI CLIP ViT-L/14 as ComfyUI's
two files (``models/text_encoders`` and ``models/clip_vision``: ViT-L is the smallest tower ComfyUI's
``CLIPVisionLoader`` recognises), and links the trained world artifacts of ``weights/`` that the demo workflows load
(:data:`DEMO_ARTIFACT_NAMES`) into ``models/promptweave``. The "use your own CLIP" workflows load those two CLIPs.
The caption workflow captions ``input/promptweave-caption-demo``, a folder of world scenes
(:mod:`promptweave.testing.caption_demo`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from open_clip.tokenizer import SimpleTokenizer

from ..prompt_modules.core.artifacts import SHIPPED_WEIGHTS_DIR, read_safetensors
from ..prompt_modules.core.learned_prompt import LearnedPrompt, LearnedPromptConfig
from .caption_demo import CAPTION_DEMO_FOLDER, write_caption_demo_folder
from .tiny import build_tiny_clip_folder, build_tiny_sd15, build_vit_l_14_files

PACK_DIR = Path(__file__).resolve().parents[1]
CACHE_DIR = PACK_DIR / ".cache" / "tiny"
TINY_SD15_NAME = "promptweave-tiny-sd15.safetensors"
DEFAULT_PROMPT_NAME = "promptweave-default-sd15.safetensors"
#: The demo's stand-in for a CLIP a user has: a tiny random transformers CLIP folder in ``models/vlm``.
DEMO_CLIP_NAME = "pw-demo-clip"
#: The demo's stand-in for ComfyUI users' clip_l text encoder + ViT-L/14 CLIP-vision file (random weights).
DEMO_CLIP_L_TEXT_NAME = "pw-random-clip-l.safetensors"
DEMO_CLIP_L_VISION_NAME = "pw-random-clip-vision-vit-l-14.safetensors"
DEFAULT_PROMPT_PHRASE = "a photo of a"
#: The trained world artifacts shipped in ``weights/`` (``python -m promptweave.bench.demo_artifacts``) that the demo
#: workflows load from ``models/promptweave``: a DCAR dual prompt, an RPP bundle, a Diff-Prompt bundle and the IPL
#: latent mapper and its LoRA on WorldGen's decoder (which Apply IPL LoRA to WorldGen merges).
DEMO_ARTIFACT_NAMES = (
    "dcar-world.safetensors",
    "rpp-world.safetensors",
    "diff-prompt-world.safetensors",
    "ipl-sketch-mapper.safetensors",
    "ipl-sketch-worldgen-lora.safetensors",
)
SD1_TOKEN_EMBEDDING_KEY = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"


def learned_prompt_from_checkpoint(
    checkpoint: str | os.PathLike[str], phrase: str = DEFAULT_PROMPT_PHRASE, backbone: str = "sd1"
) -> LearnedPrompt:
    """A CLIP-L learned prompt whose vectors start as the token embeddings of ``phrase`` (CoOp, sec. 3.2)."""
    tensors, _ = read_safetensors(checkpoint)
    if SD1_TOKEN_EMBEDDING_KEY not in tensors:
        raise ValueError(f"{checkpoint} has no SD1.x CLIP-L token embedding ({SD1_TOKEN_EMBEDDING_KEY})")
    table = tensors[SD1_TOKEN_EMBEDDING_KEY].float()
    ids = SimpleTokenizer().encode(phrase)
    prompt = LearnedPrompt(LearnedPromptConfig(n_ctx=len(ids), widths={"clip_l": table.shape[1]}, backbone=backbone))
    prompt.init_from_token_embeddings("clip_l", table[torch.tensor(ids)])
    return prompt


def cached_tiny_sd15(cache_dir: Path = CACHE_DIR) -> Path:
    """The tiny SD1.x checkpoint, built once (about 10 s) and cached."""
    path = cache_dir / TINY_SD15_NAME
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        build_tiny_sd15(path, seed=0)
    return path


def cached_vit_l_14_files(cache_dir: Path = CACHE_DIR) -> tuple[Path, Path]:
    """The random ViT-L/14 text encoder and CLIP-vision files, built once (about 20 s, 816 MiB) and cached."""
    text, vision = cache_dir / DEMO_CLIP_L_TEXT_NAME, cache_dir / DEMO_CLIP_L_VISION_NAME
    if not (text.exists() and vision.exists()):
        cache_dir.mkdir(parents=True, exist_ok=True)
        build_vit_l_14_files(text, vision, seed=0)
    return text, vision


def _link(target: Path, link: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target.resolve())
    return link


def install_default_models(base_dir: str | os.PathLike[str], cache_dir: Path = CACHE_DIR) -> dict[str, Path]:
    """Put the default models into a ComfyUI base folder (the big files as symlinks to the cache)."""
    models = Path(base_dir) / "models"
    checkpoint = cached_tiny_sd15(cache_dir)
    link = _link(checkpoint, models / "checkpoints" / TINY_SD15_NAME)
    prompt_path = models / "promptweave" / DEFAULT_PROMPT_NAME
    prompt_path.parent.mkdir(parents=True, exist_ok=True)
    learned_prompt_from_checkpoint(checkpoint).save(prompt_path)
    clip = models / "vlm" / DEMO_CLIP_NAME
    if not (clip / "model.safetensors").is_file():
        build_tiny_clip_folder(clip, seed=0)
    text, vision = cached_vit_l_14_files(cache_dir)
    artifacts = {name: _link(SHIPPED_WEIGHTS_DIR / name, models / "promptweave" / name)
                 for name in DEMO_ARTIFACT_NAMES if (SHIPPED_WEIGHTS_DIR / name).is_file()}
    captions = Path(base_dir) / "input" / CAPTION_DEMO_FOLDER  # the folder the caption workflow captions
    if not captions.is_dir():
        write_caption_demo_folder(captions)
    return {**artifacts, "checkpoint": link, "caption_demo": captions, "learned_prompt": prompt_path, "clip": clip,
            "clip_l_text": _link(text, models / "text_encoders" / DEMO_CLIP_L_TEXT_NAME),
            "clip_l_vision": _link(vision, models / "clip_vision" / DEMO_CLIP_L_VISION_NAME)}
