"""IPL on an SDXL-family model in ComfyUI (issue "real Stable Diffusion"): the U-Net receives SDXL's added
conditioning and the LoRA it saves loads in LoraLoader with every key. Its own module, so that the full-size SD1.5
fixtures of test_full_size_lora.py are released before these are built."""

from __future__ import annotations

import importlib

import pytest
import torch
from conftest import comfy_lora_patches
from safetensors.torch import load_file
from torch import nn

from promptweave.prompt_modules.adaptation import SD_ATTENTION_PATTERN, LoraWeights, save_lora
from promptweave.prompt_modules.core.sd_models import SDXL_FULL_UNET_CONFIG

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]


#: Segmind Vega, an SDXL-family U-Net ComfyUI supports (745 M): SDXL's widths, linear projections, 2048-d context
#: and 2816-d ADM input, with 1 and 2 transformer blocks per level instead of 2 and 10 (full SDXL's 2.6 B
#: parameters do not fit twice in this machine's memory; the layer naming is the same).
VEGA_UNET_CONFIG = {
    **SDXL_FULL_UNET_CONFIG,
    "transformer_layers_per_block": (1, 1, 2),
    "mid_block_type": "UNetMidBlock2D",  # Vega's middle block is one ResBlock (ComfyUI: transformer_depth_middle -1)
}
CLIP_G_TEXT = {"vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
               "num_attention_heads": 20, "max_position_embeddings": 77, "hidden_act": "gelu", "projection_dim": 1280}


@pytest.fixture(scope="module")
def comfy_sdxl(comfy, tmp_path_factory):
    """ComfyUI's own SDXL-family MODEL (Vega shape) and SDXL CLIP (clip_l + clip_g text encoders), random weights."""
    import comfy.sd
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from promptweave.testing.tiny import CLIP_L_CONFIG

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**VEGA_UNET_CONFIG)
    patcher = comfy.sd.load_diffusion_model_state_dict(unet.state_dict())
    del unet
    assert type(patcher.model.model_config).__name__ == "Segmind_Vega"
    folder = tmp_path_factory.mktemp("sdxl-clip")
    paths = []
    for name, model in (("clip_l", CLIPTextModel(CLIPTextConfig(**CLIP_L_CONFIG))),
                        ("clip_g", CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G_TEXT)))):
        state = {  # ComfyUI's layout (transformers 5 drops the text_model. prefix of CLIPTextModel's own keys)
            (k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}"): v.half().contiguous()
            for k, v in model.state_dict().items() if not k.endswith("position_ids")
        }
        save_file(state, str(folder / f"{name}.safetensors"))
        paths.append(str(folder / f"{name}.safetensors"))
        del model, state
    clip = comfy.sd.load_clip(paths, clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)
    return patcher, clip


def test_ipl_adapts_an_sdxl_family_model_in_comfyui_and_loraloader_takes_every_key(comfy, comfy_base, comfy_sdxl,
                                                                                 caplog):
    """PWAdaptModel on an SDXL-family MODEL: the U-Net gets SDXL's pooled embedding and size ids (y) at every
    call, and the saved LoRA covers all of its attention projections through LoraLoader's key map."""
    from promptweave.testing.defaults import TINY_SD15_NAME

    model, clip = comfy_sdxl
    key_map = importlib.import_module("comfy.lora").model_lora_keys_unet(model.model, {})  # (comfy: the fixture)
    projections = [n for n, m in model.model.diffusion_model.named_modules()
                   if SD_ATTENTION_PATTERN.search(n) and isinstance(m, nn.Linear)]
    nodes = comfy.nodes.NODE_CLASS_MAPPINGS
    with torch.inference_mode():
        vae = nodes["CheckpointLoaderSimple"]().load_checkpoint(TINY_SD15_NAME)[2]  # any 4-channel decoder
        vlm = comfy.pack_module("prompt_modules.core.vlm").VisionLanguageModel("tiny", seed=0)
        adapted, lora_path, _ = nodes["PWAdaptModel"].execute(
            model=model, clip=clip, vae=vae, vlm=vlm, source_text="photo", target_text="neon sign", method="nada",
            steps=1, rank=2, lambda_domain=1.0, seed=0, lora_name="pw-test-sdxl", mapper_steps=1, batch_size=2,
            learning_rate=0.0016, adaptive_layers=0, width=64, height=64, sample_steps=1,
        )
    patches = comfy_lora_patches(lora_path, key_map, caplog)
    assert len(patches) == len(adapted.patches) == len(projections) > 100
    weights = load_file(lora_path)
    ups = [v for k, v in weights.items() if k.endswith("lora_up.weight")]
    assert all(torch.isfinite(v).all() for v in weights.values()) and any(v.abs().max() > 0 for v in ups)  # trained


def test_learned_prompt_conditioning_on_comfyuis_sdxl_clip_has_both_towers_and_the_pooled_output(comfy, comfy_sdxl):
    """Apply Learned Prompt with ComfyUI's own SDXL CLIP (clip_l + clip_g): the vectors enter both towers, the
    conditioning is SDXL's 2048-d context with its 1280-d pooled output, and it differs from the plain encoding
    only where the prompt goes."""
    _, clip = comfy_sdxl
    vectors = comfy.pack_module("prompt_modules.core.learned_prompt")
    prompt = vectors.LearnedPrompt(vectors.LearnedPromptConfig(n_ctx=2, widths={"clip_l": 768, "clip_g": 1280},
                                                               backbone="sdxl"))
    with torch.inference_mode():
        cond = comfy.nodes.NODE_CLASS_MAPPINGS["PWApplyLearnedPrompt"].execute(
            clip=clip, learned_prompt=prompt, text="a photo of <pw> in the snow")[0]
        plain = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of x x in the snow"))
    context, extra = cond[0][0], cond[0][1]
    assert context.shape[-1] == 2048 and extra["pooled_output"].shape[-1] == 1280
    assert context.shape == plain[0][0].shape and torch.isfinite(context).all() and torch.isfinite(plain[0][0]).all()
    diff = (context - plain[0][0]).abs().amax(dim=-1)[0]
    changed = diff > 1e-4
    assert changed.any() and not changed[0]  # the start token's state is untouched (causal attention)


def test_the_inversion_white_box_refuses_an_sdxl_model_naming_the_input_and_the_fix(comfy, comfy_sdxl):
    from promptweave.testing.defaults import TINY_SD15_NAME

    model, clip = comfy_sdxl
    with torch.inference_mode():
        vae = comfy.nodes.NODE_CLASS_MAPPINGS["CheckpointLoaderSimple"]().load_checkpoint(TINY_SD15_NAME)[2]
    errors = comfy.pack_module("nodes._common")
    inversion = comfy.pack_module("nodes.nodes_inversion")
    with pytest.raises(errors.NodeInputError, match="input 'model'.*SDXL.*ADM.*not supported.*SD1.x or SD2.x"):
        inversion._sd_unet_encoder("PWTrainPromptInverter", model, vae, clip)


def _meta_lora(root: nn.Module, naming: str, num_res_blocks=()) -> LoraWeights:
    """A rank-1 LoRA on every attention projection of a U-Net built on the meta device (names and shapes only)."""
    targets = {n: m for n, m in root.named_modules() if SD_ATTENTION_PATTERN.search(n) and isinstance(m, nn.Linear)}
    down = {n: torch.randn(1, m.in_features) for n, m in targets.items()}
    up = {n: torch.randn(m.out_features, 1) for n, m in targets.items()}
    return LoraWeights(down=down, up=up, rank=1, alpha=1.0, kind="sd-unet", naming=naming, base="sdxl-meta",
                       num_res_blocks=list(num_res_blocks))


def test_loras_on_the_full_sdxl_unet_reach_every_projection_in_loraloader(comfy, tmp_path, caplog):
    """The full SDXL base U-Net (2.6 B parameters, built on the meta device: only names and shapes matter here):
    a LoRA on each of its 560 attention projections, named from ComfyUI's U-Net (LDM) or from diffusers', is a
    file whose every key ComfyUI's LoraLoader maps."""
    from diffusers import UNet2DConditionModel

    detection = importlib.import_module("comfy.model_detection")
    with torch.device("meta"):
        diffusers_unet = UNet2DConditionModel(**SDXL_FULL_UNET_CONFIG)
    unet_config = detection.unet_config_from_diffusers_unet(diffusers_unet.state_dict())
    config = detection.model_config_from_unet_config(unet_config)
    assert type(config).__name__ == "SDXL"
    with torch.device("meta"):
        base = config.get_model({})
    key_map = importlib.import_module("comfy.lora").model_lora_keys_unet(base, {})
    ldm = _meta_lora(base.diffusion_model, "ldm", base.model_config.unet_config["num_res_blocks"])
    named = _meta_lora(diffusers_unet, "diffusers")
    assert len(ldm.down) == len(named.down) == 70 * 2 * 4  # 70 transformer blocks x attn1/attn2 x q/k/v/out
    for lora in (ldm, named):
        patches = comfy_lora_patches(save_lora(lora, tmp_path / f"{lora.naming}.safetensors", fmt="comfyui"),
                                     key_map, caplog)
        assert len(patches) == len(lora.down), lora.naming
