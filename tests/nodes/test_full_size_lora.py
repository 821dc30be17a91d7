"""IPL LoRAs from the full-size SD1.5 U-Net load with no key left behind (issue "real Stable Diffusion").

The tiny U-Net has 32 attention projections; SD1.5 has 128 across three down levels, the middle block and three
up levels, where LDM (ComfyUI) and diffusers number the blocks differently. A LoRA on every projection, made on
ComfyUI's U-Net (LDM names) and on diffusers' (diffusers names), is exported in both formats and loaded by
ComfyUI's ``LoraLoader`` key map and by diffusers' ``load_lora_weights``: every tensor must reach its layer and the
loaded model must compute what the PEFT-adapted one computes. Random weights, built once per module.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import comfy_lora_patches
from torch import nn

from promptweave.prompt_modules.adaptation import (
    LoraWeights,
    StableDiffusionGenerator,
    save_lora,
)
from promptweave.prompt_modules.adaptation.model import LoRAAdapter
from promptweave.prompt_modules.core.sd_models import SD15_FULL_UNET_CONFIG

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]
SD15_ATTENTION_PROJECTIONS = 16 * 2 * 4  # 16 transformer blocks x (attn1, attn2) x (q, k, v, out)


@pytest.fixture(scope="module")
def diffusers_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(**SD15_FULL_UNET_CONFIG).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def comfy_sd15(comfy, diffusers_unet):
    """ComfyUI's own SD15 model of the same weights (its loader converts diffusers keys to LDM), with the key map
    LoraLoader uses, taken before any LoRA is injected."""
    import comfy.lora
    import comfy.sd

    patcher = comfy.sd.load_diffusion_model_state_dict(diffusers_unet.state_dict())
    assert type(patcher.model.model_config).__name__ == "SD15"
    return patcher, comfy.lora.model_lora_keys_unet(patcher.model, {})


def _random_lora(generator: StableDiffusionGenerator, seed: int) -> LoraWeights:
    """A LoRA on every attention projection of the generator's U-Net with random up and down matrices."""
    adapter = LoRAAdapter(generator.lora_root, generator.lora_targets, rank=2, alpha=4.0, seed=seed)
    rng = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=rng) * 0.02 for k, v in adapter.state().items()}
    adapter.load_state(state)
    down, up = adapter.weights(state)
    return LoraWeights(down=down, up=up, rank=2, alpha=4.0, kind=generator.kind, naming=generator.naming,
                       base=generator.name, num_res_blocks=list(generator.num_res_blocks))


def _diffusers_loaded(unet: nn.Module, lora_path) -> nn.Module:
    """``load_lora_weights`` of a pipeline around a copy of ``unet``: every file tensor must land."""
    from diffusers import StableDiffusionPipeline
    from peft.tuners.lora import LoraLayer

    from promptweave.testing.tiny import tiny_pipeline

    tiny = tiny_pipeline()
    pipe = StableDiffusionPipeline(vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer,
                                   unet=copy.deepcopy(unet),
                                   scheduler=tiny.scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.load_lora_weights(str(lora_path), adapter_name="pw")
    wrapped = [n for n, m in pipe.unet.named_modules() if isinstance(m, LoraLayer)]
    assert len(wrapped) == SD15_ATTENTION_PROJECTIONS
    return pipe.unet


def test_a_lora_on_comfyuis_full_sd15_unet_loads_in_comfyui_and_diffusers(comfy_sd15, diffusers_unet, tmp_path,
                                                                          caplog):
    patcher, key_map = comfy_sd15
    base = patcher.model
    generator = StableDiffusionGenerator(
        base.diffusion_model, lambda m, x, t, c: m(x, timesteps=t, context=c), nn.Identity(), lambda m, x: x,
        torch.zeros(1, 77, 768), naming="ldm", num_res_blocks=base.model_config.unet_config["num_res_blocks"],
        copy_modules=False, label="sd15",
    )
    assert len(generator.lora_targets) == SD15_ATTENTION_PROJECTIONS
    lora = _random_lora(generator, seed=1)
    comfy_file = save_lora(lora, tmp_path / "ldm-comfyui.safetensors", fmt="comfyui")
    patches = comfy_lora_patches(comfy_file, key_map, caplog)
    assert len(patches) == SD15_ATTENTION_PROJECTIONS
    diffusers_file = save_lora(lora, tmp_path / "ldm-diffusers.safetensors", fmt="diffusers")
    unet = _diffusers_loaded(diffusers_unet, diffusers_file)
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([500.0]), torch.randn(1, 77, 768) * 0.1
    with torch.no_grad():
        ours = generator.lora_root(x, timesteps=t, context=c)
        loaded = unet(x, t, encoder_hidden_states=c).sample
        unet.disable_lora()
        plain = unet(x, t, encoder_hidden_states=c).sample
        unet.enable_lora()
    assert (ours - plain).abs().max() > 1e-3  # the LoRA changes the output ...
    assert torch.allclose(ours, loaded, atol=2e-4)  # ... and diffusers computes the same adapted U-Net


def test_a_lora_on_diffusers_full_sd15_unet_loads_in_comfyui(comfy_sd15, diffusers_unet, tmp_path, caplog):
    _, key_map = comfy_sd15
    generator = StableDiffusionGenerator(
        diffusers_unet, lambda m, x, t, c: m(x, t, encoder_hidden_states=c).sample, nn.Identity(), lambda m, x: x,
        torch.zeros(1, 77, 768), naming="diffusers", label="sd15",
    )
    assert len(generator.lora_targets) == SD15_ATTENTION_PROJECTIONS
    lora = _random_lora(generator, seed=2)
    patches = comfy_lora_patches(save_lora(lora, tmp_path / "d-comfyui.safetensors", fmt="comfyui"), key_map, caplog)
    assert len(patches) == SD15_ATTENTION_PROJECTIONS
