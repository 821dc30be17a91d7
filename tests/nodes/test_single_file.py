"""``diffusers_api.load_pipeline`` on a single-file SD1.5 checkpoint, offline (issue "real Stable Diffusion").

diffusers' ``from_single_file`` fetches the pipeline's config files from the hub unless a local folder holds them;
PromptWeave writes that folder. The checkpoint here is built at full SD1.5 size with random weights in the
original LDM layout (the U-Net renamed by ``testing.tiny.diffusers_unet_to_ldm``, the VAE by ComfyUI's own
diffusers -> LDM converter), and the pipeline read back must hold exactly those weights.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from safetensors.torch import save_file

from promptweave import diffusers_api as pw
from promptweave.prompt_modules.core.artifacts import read_safetensors_keys
from promptweave.prompt_modules.core.sd_models import (
    CLIP_L_CONFIG,
    SD15_FULL_UNET_CONFIG,
    SD_VAE_CONFIG,
    UnsupportedCheckpointError,
    detect_family,
)
from promptweave.testing.tiny import diffusers_unet_to_ldm

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]


@pytest.fixture(scope="module")
def sd15_file(comfy, tmp_path_factory):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    parts = {
        "unet": UNet2DConditionModel(**SD15_FULL_UNET_CONFIG),
        "vae": AutoencoderKL(**SD_VAE_CONFIG),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_L_CONFIG)),
    }
    half = {name: {k: v.half() for k, v in m.state_dict().items()} for name, m in parts.items()}
    unet = diffusers_unet_to_ldm(half["unet"], SD15_FULL_UNET_CONFIG)
    tensors = {f"model.diffusion_model.{k}": v for k, v in unet.items()}
    vae = importlib.import_module("comfy.diffusers_convert").convert_vae_state_dict(half["vae"])  # ComfyUI's own
    tensors.update({f"first_stage_model.{k}": v for k, v in vae.items()})
    tensors.update({f"cond_stage_model.transformer.text_model.{k.removeprefix('text_model.')}": v
                    for k, v in half["text_encoder"].items() if not k.endswith("position_ids")})
    path = tmp_path_factory.mktemp("single-file") / "sd15-random.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path, half


def test_a_single_file_sd15_checkpoint_loads_offline_with_every_weight(sd15_file):
    path, expected = sd15_file
    assert detect_family(read_safetensors_keys(path)) == "sd1"
    pipe = pw.load_pipeline(path)
    assert type(pipe).__name__ == "StableDiffusionPipeline" and pipe.scheduler.config.prediction_type == "epsilon"
    for name in ("unet", "vae", "text_encoder"):
        loaded = {k: v for k, v in getattr(pipe, name).state_dict().items() if not k.endswith("position_ids")}
        want = {k: v for k, v in expected[name].items() if not k.endswith("position_ids")}
        assert loaded.keys() == want.keys(), name
        assert all(torch.equal(loaded[k].half(), want[k]) for k in want), name
    tokens = pipe.tokenizer(["a photo"], return_tensors="pt").input_ids
    assert tokens[0, 0] == 49406 and tokens[0, -1] == 49407  # CLIP's start and end tokens


def test_single_files_that_cannot_load_say_why(tmp_path):
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(ValueError, match="no pickles.*convert the checkpoint to safetensors"):
        pw.load_pipeline(pickle)
    sdxl = tmp_path / "sdxl.safetensors"
    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.ones(2)}, str(sdxl))
    with pytest.raises(UnsupportedCheckpointError, match="SDXL.*diffusers folder.*Load Checkpoint"):
        pw.load_pipeline(sdxl)
    other = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.ones(2)}, str(other))
    with pytest.raises(UnsupportedCheckpointError, match="not a Stable Diffusion"):
        pw.load_pipeline(other)
