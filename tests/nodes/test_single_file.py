"""``diffusers_api.load_pipeline`` on single-file SD1.5, SD2.x and SDXL checkpoints, offline (issue "real Stable
Diffusion").

diffusers' ``from_single_file`` fetches the pipeline's config files from the hub unless a local folder holds them;
PromptWeave writes that folder, with the sizes read from the checkpoint's tensors. The SD1.5 checkpoint here is
built at full size with random weights in the original LDM layout (the U-Net renamed by
``testing.tiny.diffusers_unet_to_ldm``, the VAE by ComfyUI's own diffusers -> LDM converter). The SD2.x and SDXL
ones keep their family's full key structure (levels, blocks, SDXL's 1 / 2 / 10 transformer blocks, every text
layer, the full VAE) at small U-Net and text widths, so the CI machine builds them in seconds; their open_clip
text towers are written by ``core.clip_formats.transformers_to_open_clip``. Each pipeline read back must hold
exactly the weights written, with the family's pipeline, scheduler and sizes, and generate.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from promptweave import diffusers_api as pw
from promptweave.prompt_modules.core.artifacts import read_safetensors_keys
from promptweave.prompt_modules.core.clip_formats import transformers_to_open_clip
from promptweave.prompt_modules.core.sd_models import (
    CLIP_BIGG_TEXT_CONFIG,
    CLIP_L_CONFIG,
    OPEN_CLIP_H_TEXT_CONFIG,
    SD2_FULL_UNET_CONFIG,
    SD15_FULL_UNET_CONFIG,
    SD_VAE_CONFIG,
    SDXL_FULL_UNET_CONFIG,
    UnsupportedCheckpointError,
    detect_family,
)
from promptweave.testing.tiny import diffusers_unet_to_ldm

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

#: SD 2.x's U-Net structure (4 levels, 2 blocks, linear projections) at 64-128 channels, 128-d context.
SMALL_SD2_UNET = {**SD2_FULL_UNET_CONFIG, "block_out_channels": (64, 64, 128, 128),
                  "attention_head_dim": (1, 1, 2, 2), "cross_attention_dim": 128}
#: OpenCLIP ViT-H's text tower with all 24 layers, 128 wide.
SMALL_OPEN_CLIP_H = {**OPEN_CLIP_H_TEXT_CONFIG, "hidden_size": 128, "intermediate_size": 512,
                     "num_hidden_layers": 24, "num_attention_heads": 2, "projection_dim": 128}
#: SDXL's text encoders at all 12 and 32 layers, 64 and 128 wide (their widths must differ, as 768 and 1280 do:
#: diffusers tells the two apart by width).
SMALL_CLIP_L = {**CLIP_L_CONFIG, "hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 1,
                "projection_dim": 64}
SMALL_BIGG = {**CLIP_BIGG_TEXT_CONFIG, "hidden_size": 128, "intermediate_size": 512, "num_attention_heads": 2,
              "projection_dim": 128}
#: SDXL's U-Net structure (3 levels, transformer depth 1 / 2 / 10, linear projections) at 64-128 channels; the
#: context is both encoders' tokens (64 + 128), the added embedding the pooled 128 plus six 32-d ids.
SMALL_SDXL_UNET = {**SDXL_FULL_UNET_CONFIG, "block_out_channels": (64, 128, 128), "attention_head_dim": (1, 2, 2),
                   "cross_attention_dim": 192, "addition_time_embed_dim": 32,
                   "projection_class_embeddings_input_dim": 128 + 6 * 32}
#: The U-Net settings a loaded pipeline must have read from the checkpoint.
INFERRED = ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types", "cross_attention_dim",
            "attention_head_dim", "use_linear_projection", "transformer_layers_per_block",
            "projection_class_embeddings_input_dim", "addition_time_embed_dim")


def _half(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.half() for k, v in module.state_dict().items() if not k.endswith("position_ids")}


def _ldm_unet_and_vae(unet_config: dict, unet: dict[str, torch.Tensor], vae: dict[str, torch.Tensor]):
    tensors = {f"model.diffusion_model.{k}": v for k, v in diffusers_unet_to_ldm(unet, unet_config).items()}
    converted = importlib.import_module("comfy.diffusers_convert").convert_vae_state_dict(vae)  # ComfyUI's own
    tensors.update({f"first_stage_model.{k}": v for k, v in converted.items()})
    return tensors


def _open_clip(prefix: str, tower: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers ``CLIPTextModelWithProjection`` state dict as open_clip's text tower under ``prefix``."""
    return {prefix + k: v for k, v in transformers_to_open_clip(tower, Path("test")).items()}


def _save(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def sd_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    return _half(AutoencoderKL(**SD_VAE_CONFIG))


@pytest.fixture(scope="module")
def sd15_file(comfy, tmp_path_factory, sd_vae):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    half = {"unet": _half(UNet2DConditionModel(**SD15_FULL_UNET_CONFIG)), "vae": sd_vae,
            "text_encoder": _half(CLIPTextModel(CLIPTextConfig(**CLIP_L_CONFIG)))}
    tensors = _ldm_unet_and_vae(SD15_FULL_UNET_CONFIG, half["unet"], sd_vae)
    tensors.update({f"cond_stage_model.transformer.text_model.{k.removeprefix('text_model.')}": v
                    for k, v in half["text_encoder"].items()})
    return _save(tensors, tmp_path_factory.mktemp("single-file") / "sd15-random.safetensors"), half


@pytest.fixture(scope="module")
def sd2_file(comfy, tmp_path_factory, sd_vae):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(2)
    unet = _half(UNet2DConditionModel(**SMALL_SD2_UNET))
    tower = _half(CLIPTextModelWithProjection(CLIPTextConfig(**SMALL_OPEN_CLIP_H)))
    tensors = {**_ldm_unet_and_vae(SMALL_SD2_UNET, unet, sd_vae), **_open_clip("cond_stage_model.model.", tower)}
    # SD 2 conditions on the penultimate layer: the pipeline's encoder is the tower less its last layer
    last = f"text_model.encoder.layers.{SMALL_OPEN_CLIP_H['num_hidden_layers'] - 1}."
    text = {k.removeprefix("text_model."): v for k, v in tower.items()
            if k.startswith("text_model.") and not k.startswith(last)}
    path = _save(tensors, tmp_path_factory.mktemp("single-file") / "sd2-small.safetensors")
    return path, {"unet": unet, "vae": sd_vae, "text_encoder": text}


@pytest.fixture(scope="module")
def sdxl_file(comfy, tmp_path_factory, sd_vae):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(3)
    unet = _half(UNet2DConditionModel(**SMALL_SDXL_UNET))
    clip_l = _half(CLIPTextModel(CLIPTextConfig(**SMALL_CLIP_L)))
    big_g = _half(CLIPTextModelWithProjection(CLIPTextConfig(**SMALL_BIGG)))
    tensors = _ldm_unet_and_vae(SMALL_SDXL_UNET, unet, sd_vae)
    tensors.update(_open_clip("conditioner.embedders.1.model.", big_g))
    tensors.update({f"conditioner.embedders.0.transformer.text_model.{k}": v for k, v in clip_l.items()})
    path = _save(tensors, tmp_path_factory.mktemp("single-file") / "sdxl-small.safetensors")
    return path, {"unet": unet, "vae": sd_vae, "text_encoder": clip_l, "text_encoder_2": big_g}


def _assert_every_weight(pipe, expected: dict[str, dict[str, torch.Tensor]]) -> None:
    for name, want in expected.items():
        loaded = {k: v for k, v in getattr(pipe, name).state_dict().items() if not k.endswith("position_ids")}
        assert loaded.keys() == want.keys(), name
        assert all(torch.equal(loaded[k].half(), want[k]) for k in want), name


def _assert_unet_read_from_checkpoint(pipe, config: dict) -> None:
    for key in INFERRED:
        if key in config:
            got = pipe.unet.config[key]
            assert (tuple(got) if isinstance(got, list) else got) == config[key], key


def _one_step_image(pipe) -> torch.Tensor:
    out = pipe(prompt="a photo of a cat", num_inference_steps=1, height=64, width=64, output_type="pt",
               generator=torch.Generator().manual_seed(0))
    return out.images


def test_a_single_file_sd15_checkpoint_loads_offline_with_every_weight(sd15_file):
    path, expected = sd15_file
    assert detect_family(read_safetensors_keys(path)) == "sd1"
    pipe = pw.load_pipeline(path)
    assert type(pipe).__name__ == "StableDiffusionPipeline" and pipe.scheduler.config.prediction_type == "epsilon"
    _assert_every_weight(pipe, expected)
    _assert_unet_read_from_checkpoint(pipe, SD15_FULL_UNET_CONFIG)
    assert pipe.text_encoder.config.num_hidden_layers == 12 and pipe.text_encoder.config.hidden_act == "quick_gelu"
    tokens = pipe.tokenizer(["a photo"], return_tensors="pt").input_ids
    assert tokens[0, 0] == 49406 and tokens[0, -1] == 49407  # CLIP's start and end tokens


def test_a_single_file_sd2_checkpoint_loads_as_v_prediction_unless_told(sd2_file):
    path, expected = sd2_file
    assert detect_family(read_safetensors_keys(path)) == "sd2"
    pipe = pw.load_pipeline(path)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.scheduler.config.prediction_type == "v_prediction" and pipe.unet.config.sample_size == 96
    _assert_every_weight(pipe, expected)
    _assert_unet_read_from_checkpoint(pipe, SMALL_SD2_UNET)
    text = pipe.text_encoder.config
    assert (text.hidden_size, text.num_hidden_layers, text.hidden_act) == (128, 23, "gelu")
    assert pipe.tokenizer("a", padding="max_length", max_length=8).input_ids[-1] == 0  # open_clip pads with 0
    image = _one_step_image(pipe)
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()
    base = pw.load_pipeline(path, prediction_type="epsilon")  # SD 2.x 512-base
    assert base.scheduler.config.prediction_type == "epsilon"


def test_a_single_file_sdxl_checkpoint_loads_both_text_encoders(sdxl_file):
    path, expected = sdxl_file
    assert detect_family(read_safetensors_keys(path)) == "sdxl"
    pipe = pw.load_pipeline(path)
    assert type(pipe).__name__ == "StableDiffusionXLPipeline" and pw.is_sdxl(pipe)
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert pipe.scheduler.config.prediction_type == "epsilon"
    assert pipe.vae.config.scaling_factor == 0.13025 and pipe.vae.config.force_upcast
    _assert_every_weight(pipe, expected)
    _assert_unet_read_from_checkpoint(pipe, SMALL_SDXL_UNET)
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert (pipe.text_encoder.config.hidden_act, pipe.text_encoder_2.config.hidden_act) == ("quick_gelu", "gelu")
    assert pipe.text_encoder_2.config.num_hidden_layers == 32
    image = _one_step_image(pipe)
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()


def test_single_files_that_cannot_load_say_why(tmp_path):
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(ValueError, match="no pickles.*convert the checkpoint to safetensors"):
        pw.load_pipeline(pickle)
    refiner = _save({"conditioner.embedders.0.model.ln_final.weight": torch.ones(2)}, tmp_path / "refiner.safetensors")
    with pytest.raises(UnsupportedCheckpointError, match="SDXL refiner.*diffusers folder"):
        pw.load_pipeline(refiner)
    truncated = _save({"conditioner.embedders.1.model.ln_final.weight": torch.ones(2)}, tmp_path / "sdxl.safetensors")
    with pytest.raises(UnsupportedCheckpointError, match="no 'conditioner.embedders.0.transformer.text_model"):
        pw.load_pipeline(truncated)
    other = _save({"lora_unet_x.lora_down.weight": torch.ones(2)}, tmp_path / "lora.safetensors")
    with pytest.raises(UnsupportedCheckpointError, match="not a Stable Diffusion"):
        pw.load_pipeline(other)
    with pytest.raises(ValueError, match="prediction_type must be one of epsilon, v_prediction"):
        pw.load_pipeline(other, prediction_type="v")
