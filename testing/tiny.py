"""Tiny random-weight models on demand, for tests, demos and CI (no downloads, no ComfyUI import).

Usage::

    python -m promptweave.testing.tiny sd15 PATH.safetensors [--seed 0]   # SD1.x single-file checkpoint ComfyUI loads
    python -m promptweave.testing.tiny vlm PATH.safetensors [--seed 0]    # the "tiny" VisionLanguageModel
    python -m promptweave.testing.tiny pipeline FOLDER [--seed 0]         # a diffusers StableDiffusionPipeline folder
    python -m promptweave.testing.tiny sdxl-pipeline FOLDER [--seed 0]    # a diffusers StableDiffusionXLPipeline folder

Every builder is deterministic for a seed and writes atomically (temporary name in the target folder, then a
rename). Weights are random: the models produce noise, but every shape, key name and code path is real.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..prompt_modules.core.artifacts import base_metadata, save_safetensors_atomic
from ..prompt_modules.core.sd_models import CLIP_L_CONFIG
from ..prompt_modules.core.vlm import VisionLanguageModel, save_vlm

# ----- SD1.x checkpoint ----------------------------------------------------------------------------------------

#: diffusers ``UNet2DConditionModel`` arguments of the tiny SD1.x UNet: one 320-channel level with
#: cross-attention to 768-d CLIP-L tokens (what ComfyUI needs to detect SD1.x), 25.8 M parameters.
SD15_UNET_CONFIG: dict[str, object] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320,),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D",),
    "up_block_types": ("CrossAttnUpBlock2D",),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,  # diffusers' name for the number of heads in SD1.x
    "norm_num_groups": 32,
}

SD15_LATENT_SCALE = 0.18215  # SD1.x VAE latent scale; TAESD for SD1 stores it as ``vae_scale``

_RESNET_NAMES = {  # diffusers ResnetBlock2D -> LDM ResBlock
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_TOP_LEVEL_NAMES = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL's added (pooled text + size ids) embedding
    "add_embedding.linear_2": "label_emb.0.2",
}
_BLOCK_KEY = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$")
_MID_KEY = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")


def _resnet_rest(rest: str) -> str:
    module, _, param = rest.partition(".")
    if module not in _RESNET_NAMES:
        raise KeyError(rest)
    return f"{_RESNET_NAMES[module]}.{param}"


def diffusers_unet_key_to_ldm(key: str, layers_per_block: int, up_blocks_with_attention: set[int]) -> str:
    """Map one diffusers ``UNet2DConditionModel`` key to the original LDM ``UNetModel`` layout.

    Down level ``b`` holds ``layers_per_block`` (resnet, attention) pairs in ``input_blocks`` after the input
    conv, followed by its downsampler; up level ``b`` holds ``layers_per_block + 1`` pairs in
    ``output_blocks``, its upsampler sitting in the last one after the resnet (and attention, if any).
    Transformer internals (``norm``, ``proj_in``, ``transformer_blocks.*``, ``proj_out``) keep their names.
    """
    per_level = layers_per_block + 1
    for prefix, target in _TOP_LEVEL_NAMES.items():
        if key.startswith(prefix + "."):
            return target + key[len(prefix) :]
    match = _MID_KEY.match(key)
    if match:
        kind, index, rest = match.group(1), int(match.group(2)), match.group(3)
        if kind == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{2 * index}.{_resnet_rest(rest)}"
    match = _BLOCK_KEY.match(key)
    if not match:
        raise KeyError(f"unmapped diffusers UNet key: {key}")
    side, level, kind, index, rest = (
        match.group(1),
        int(match.group(2)),
        match.group(3),
        int(match.group(4)),
        match.group(5),
    )
    if side == "down_blocks":
        if kind == "downsamplers":  # conv.weight -> op.weight
            return f"input_blocks.{1 + level * per_level + layers_per_block}.0.op.{rest.removeprefix('conv.')}"
        slot = 1 + level * per_level + index
        return f"input_blocks.{slot}.0.{_resnet_rest(rest)}" if kind == "resnets" else f"input_blocks.{slot}.1.{rest}"
    if kind == "upsamplers":
        position = 2 if level in up_blocks_with_attention else 1
        return f"output_blocks.{level * per_level + layers_per_block}.{position}.{rest}"
    slot = level * per_level + index
    return f"output_blocks.{slot}.0.{_resnet_rest(rest)}" if kind == "resnets" else f"output_blocks.{slot}.1.{rest}"


def diffusers_unet_to_ldm(
    state_dict: Mapping[str, torch.Tensor], config: Mapping[str, object]
) -> dict[str, torch.Tensor]:
    """Rename a diffusers UNet state dict (built from ``config``) to LDM keys (no ``model.diffusion_model.``)."""
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise ValueError("per-level layers_per_block is not supported")
    with_attention = {i for i, kind in enumerate(config["up_block_types"]) if "CrossAttn" in str(kind)}
    out = {diffusers_unet_key_to_ldm(k, layers, with_attention): v for k, v in state_dict.items()}
    if len(out) != len(state_dict):
        raise ValueError("the diffusers -> LDM key mapping is not one-to-one")
    return out


class _Clamp(nn.Module):
    """TAESD's soft latent clamp."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class _TAEBlock(nn.Module):
    """Residual block of three 3x3 convs (all TAESD blocks are 64 -> 64, so the skip is the identity)."""

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


def tiny_autoencoder(latent_channels: int = 4) -> nn.ModuleDict:
    """A module with the parameter layout of a TAESD (tiny autoencoder) file: ``taesd_encoder.*`` (image ->
    latent at 1/8 size: three stride-2 stages of three blocks) and ``taesd_decoder.*`` (the mirror image with
    nearest upsampling), 2.4 M parameters."""
    width = 64
    encoder: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), _TAEBlock(width)]
    for _ in range(3):
        encoder += [nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False)] + [_TAEBlock(width) for _ in range(3)]
    encoder.append(nn.Conv2d(width, latent_channels, 3, padding=1))
    decoder: list[nn.Module] = [_Clamp(), nn.Conv2d(latent_channels, width, 3, padding=1), nn.ReLU()]
    for _ in range(3):
        decoder += [_TAEBlock(width) for _ in range(3)]
        decoder += [nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1, bias=False)]
    decoder += [_TAEBlock(width), nn.Conv2d(width, 3, 3, padding=1)]
    return nn.ModuleDict({"taesd_encoder": nn.Sequential(*encoder), "taesd_decoder": nn.Sequential(*decoder)})


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed the CPU RNG for a block without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _prefixed(prefix: str, state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().to(dtype).contiguous() for k, v in state_dict.items()}


def build_tiny_sd15(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write a random-weight SD1.x single-file checkpoint (fp16 safetensors, ~289 MiB) that ComfyUI's
    ``CheckpointLoaderSimple`` loads as SD15: a one-level 320-channel UNet under ``model.diffusion_model.*``,
    the full CLIP-L text encoder under ``cond_stage_model.transformer.text_model.*`` and a TAESD-format VAE
    under ``first_stage_model.taesd_{encoder,decoder}.*`` (with ``vae_scale`` 0.18215, ``vae_shift`` 0)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    half = torch.float16
    with _seeded(seed):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
    tensors = _prefixed("model.diffusion_model.", diffusers_unet_to_ldm(unet.state_dict(), SD15_UNET_CONFIG), half)
    del unet
    with _seeded(seed + 1):
        text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_L_CONFIG))
    clip_sd = {
        "text_model." + k.removeprefix("text_model."): v
        for k, v in text_encoder.state_dict().items()
        if not k.endswith("position_ids")
    }
    tensors.update(_prefixed("cond_stage_model.transformer.", clip_sd, half))
    del text_encoder
    with _seeded(seed + 2):
        vae = tiny_autoencoder()
    with torch.no_grad():  # random latents then decode to mid-grey noise (std ~0.13), not near-black
        last = vae["taesd_decoder"][-1]
        last.weight.mul_(12.0)
        last.bias.fill_(0.5)
    tensors.update(_prefixed("first_stage_model.", vae.state_dict(), half))
    tensors["first_stage_model.vae_scale"] = torch.tensor(SD15_LATENT_SCALE)
    tensors["first_stage_model.vae_shift"] = torch.tensor(0.0)
    metadata = base_metadata("tiny-sd15", "sd15", seed=seed)
    return save_safetensors_atomic(path, tensors, metadata)


# ----- VLM -----------------------------------------------------------------------------------------------------


def build_tiny_vlm(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write the random-weight ``tiny`` :class:`VisionLanguageModel` with :func:`save_vlm` (~13 MiB)."""
    return save_vlm(VisionLanguageModel("tiny", seed=seed), path)


#: OpenAI CLIP ViT-L/14's vision tower (transformers names): the 24-layer tower ComfyUI's ``CLIPVisionLoader``
#: recognises as ViT-L (it picks configs by layer count), and the partner of the ``clip_l`` text encoder.
VIT_L_14_VISION_CONFIG: dict[str, object] = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}


def build_vit_l_14_files(text_path: str | os.PathLike[str], vision_path: str | os.PathLike[str],
                         seed: int = 0) -> tuple[Path, Path]:
    """Write a random-weight OpenAI CLIP ViT-L/14 as the two files ComfyUI users keep (fp16, ~850 MiB in all):
    ``clip_l.safetensors``'s layout (``text_model.*`` + ``text_projection.weight``) for ``models/text_encoders``
    and a CLIP-vision file (``vision_model.*`` + ``visual_projection.weight``) for ``models/clip_vision``."""
    from transformers import CLIPConfig, CLIPModel

    half = torch.float16
    with _seeded(seed):
        model = CLIPModel(CLIPConfig(text_config=CLIP_L_CONFIG, vision_config=VIT_L_14_VISION_CONFIG,
                                     projection_dim=768))
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    del model
    text = {k: v for k, v in state.items() if k.startswith("text_model.") or k == "text_projection.weight"}
    vision = {k: v for k, v in state.items() if k.startswith("vision_model.") or k == "visual_projection.weight"}
    metadata = {"format": "pt"}  # as transformers writes them: no PromptWeave metadata in a user's CLIP files
    return (save_safetensors_atomic(text_path, _prefixed("", text, half), metadata),
            save_safetensors_atomic(vision_path, _prefixed("", vision, half), metadata))


# ----- diffusers pipeline --------------------------------------------------------------------------------------


#: A tiny CLIP in transformers' layout (random weights, the real CLIP vocabulary): what a user's CLIP folder looks
#: like, small enough to build in a second. 32 px images, 8 px patches, quick_gelu as OpenAI's CLIPs.
TINY_CLIP_CONFIG = {
    "text_config": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 2,
                    "vocab_size": 49408, "max_position_embeddings": 77, "hidden_act": "quick_gelu"},
    "vision_config": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 2,
                      "image_size": 32, "patch_size": 8, "hidden_act": "quick_gelu"},
    "projection_dim": 64,
}


def build_tiny_clip_folder(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write a tiny random-weight transformers ``CLIPModel`` folder (``config.json`` + ``model.safetensors``), the
    layout of a CLIP a user puts in ``models/vlm``. The folder is replaced atomically."""
    from transformers import CLIPConfig, CLIPModel

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        with _seeded(seed):
            model = CLIPModel(CLIPConfig(**TINY_CLIP_CONFIG)).eval()
        model.save_pretrained(staging / "clip", safe_serialization=True)
        _swap_folder(staging / "clip", path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


#: The tiny pipeline's U-Net: two levels (32, 64), cross-attention on the second, 32-d context.
TINY_UNET_CONFIG: dict[str, object] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "norm_num_groups": 32,
}
#: The tiny SDXL U-Net: SDXL's structure (linear projections, two transformer blocks on the deeper level, the
#: ``text_time`` added embedding of a 32-d pooled text embedding and six 8-d size ids) over a 64-d context.
TINY_SDXL_UNET_CONFIG: dict[str, object] = {
    **TINY_UNET_CONFIG,
    "cross_attention_dim": 64,
    "attention_head_dim": (2, 4),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "transformer_layers_per_block": (1, 2),
    "projection_class_embeddings_input_dim": 32 + 6 * 8,
}


def _tiny_pipeline_components(seed: int, tokenizer_dir: Path) -> dict[str, object]:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from ..prompt_modules.core.tokenizer_files import write_clip_tokenizer_files

    with _seeded(seed):
        unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
    with _seeded(seed + 1):
        vae = AutoencoderKL(  # four levels: 8x downscaling, as in SD
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(32, 32, 64, 64),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1,
            norm_num_groups=32,
            sample_size=64,
        )
    with _seeded(seed + 2):
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                **{
                    **CLIP_L_CONFIG,
                    "hidden_size": 32,
                    "intermediate_size": 64,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 4,
                    "projection_dim": 32,
                }
            )
        )
    vocab, merges = write_clip_tokenizer_files(tokenizer_dir)
    tokenizer = CLIPTokenizer(vocab=str(vocab), merges=str(merges), model_max_length=77)
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


def _tiny_sdxl_components(seed: int, tokenizer_dir: Path) -> dict[str, object]:
    """SDXL's shape in miniature: two text encoders (the second with a projection: the pooled embedding), their
    hidden states concatenated as the 64-d context, and the U-Net's ``text_time`` added conditioning (pooled
    embedding + six size/crop ids)."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    parts = _tiny_pipeline_components(seed, tokenizer_dir)
    with _seeded(seed):
        unet = UNet2DConditionModel(**TINY_SDXL_UNET_CONFIG)
    text_config = {**CLIP_L_CONFIG, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "projection_dim": 32, "hidden_act": "gelu"}
    with _seeded(seed + 3):
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_config))
    with _seeded(seed + 2):
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading")
    vocab, merges = tokenizer_dir / "vocab.json", tokenizer_dir / "merges.txt"
    tokenizer_2 = CLIPTokenizer(vocab=str(vocab), merges=str(merges), model_max_length=77, pad_token="!")
    return {**parts, "unet": unet, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2,
            "tokenizer_2": tokenizer_2, "scheduler": scheduler}


def _write_pipeline(path: str | os.PathLike[str], make: Callable[[Path], object]) -> Path:
    """``make(tokenizer_dir).save_pretrained`` into ``path``, atomically, with ``vocab.json``/``merges.txt`` beside
    every tokenizer (transformers 5 saves only tokenizer.json; 4.x needs them)."""
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {parent} does not exist")
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder")
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=parent))
    try:
        pipe = make(staging / "_tokenizer_src")
        out = staging / "pipeline"
        pipe.save_pretrained(out, safe_serialization=True)
        for folder in ("tokenizer", "tokenizer_2"):
            if (out / folder).is_dir():
                for name in ("vocab.json", "merges.txt"):
                    shutil.copyfile(staging / "_tokenizer_src" / name, out / folder / name)
        _swap_folder(out, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def build_tiny_pipeline(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write a tiny random-weight diffusers ``StableDiffusionPipeline`` folder (``save_pretrained``,
    safetensors): UNet (32, 64) with 32-d cross-attention, a 2-layer 32-wide CLIP text encoder over the real
    CLIP vocabulary, a 4-level AutoencoderKL (8x), DDIM, no safety checker, and a ``CLIPTokenizer`` whose
    ``vocab.json``/``merges.txt`` are derived from open_clip's bundled BPE (ids equal open_clip's).
    ``StableDiffusionPipeline.from_pretrained(path)`` loads it offline. The folder is replaced atomically."""
    from diffusers import StableDiffusionPipeline

    def make(tokenizer_dir: Path):
        parts = _tiny_pipeline_components(seed, tokenizer_dir)
        return StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)

    return _write_pipeline(path, make)


def build_tiny_sdxl_pipeline(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write a tiny random-weight diffusers ``StableDiffusionXLPipeline`` folder (SDXL's two text encoders, pooled
    embedding and ``text_time`` conditioning at toy widths; Euler scheduler), loadable offline."""
    from diffusers import StableDiffusionXLPipeline

    return _write_pipeline(path, lambda tokenizer_dir: StableDiffusionXLPipeline(
        **_tiny_sdxl_components(seed, tokenizer_dir)))


def tiny_pipeline(seed: int = 0, torch_dtype: torch.dtype | None = None):
    """The tiny random-weight ``StableDiffusionPipeline``, loaded (built in a temporary folder with ``seed``):
    the real code path of every diffusers function, with noise images."""
    from diffusers import StableDiffusionPipeline

    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_pipeline(Path(tmp) / "tiny-sd", seed=seed)
        return StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True, torch_dtype=torch_dtype)


def tiny_sdxl_pipeline(seed: int = 0, torch_dtype: torch.dtype | None = None):
    """The tiny random-weight ``StableDiffusionXLPipeline``, loaded (see :func:`build_tiny_sdxl_pipeline`)."""
    from diffusers import StableDiffusionXLPipeline

    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_sdxl_pipeline(Path(tmp) / "tiny-sdxl", seed=seed)
        return StableDiffusionXLPipeline.from_pretrained(str(folder), local_files_only=True, torch_dtype=torch_dtype)


def _swap_folder(new: Path, target: Path) -> None:
    """Move folder ``new`` to ``target``, replacing an existing ``target`` with two renames."""
    if not target.exists():
        os.replace(new, target)
        return
    old = new.parent / "old"
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise


# ----- command line --------------------------------------------------------------------------------------------

BUILDERS: dict[str, Callable[[str | os.PathLike[str], int], Path]] = {
    "sd15": build_tiny_sd15,
    "vlm": build_tiny_vlm,
    "pipeline": build_tiny_pipeline,
    "sdxl-pipeline": build_tiny_sdxl_pipeline,
}


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: ``python -m promptweave.testing.tiny {sd15,vlm,pipeline} PATH [--seed N]``."""
    parser = argparse.ArgumentParser(prog="python -m promptweave.testing.tiny", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=sorted(BUILDERS), help="what to build")
    parser.add_argument("path", type=Path, help="output file (sd15, vlm) or folder (pipeline)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out = BUILDERS[args.kind](args.path, args.seed)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({_size(out) / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
