"""The local config folder of a single-file checkpoint (``core.sd_models.write_pipeline_config``): sizes read from
the tensors' shapes give the published configs back for the published SD1.5, SD2.x and SDXL shapes, other sizes
for other checkpoints, and clear refusals for what it cannot describe.

Shapes come from models built on the meta device (no memory), renamed to the single-file layout as the real
checkpoints name them (``testing.tiny.diffusers_unet_to_ldm``, ``core.clip_formats.transformers_to_open_clip``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from promptweave.prompt_modules.core import sd_models as sm
from promptweave.prompt_modules.core.clip_formats import transformers_to_open_clip
from promptweave.testing.tiny import diffusers_unet_to_ldm

SD1_TEXT = ("cond_stage_model.transformer.text_model.", "transformers")
SD2_TEXT = ("cond_stage_model.model.", "open_clip")
SDXL_TEXT = (("conditioner.embedders.0.transformer.text_model.", "transformers"),
             ("conditioner.embedders.1.model.", "open_clip"))


def checkpoint_shapes(unet_config, encoders) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a single file with this U-Net and these ``(prefix, layout, CLIPTextConfig kwargs)``."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config).state_dict()
        shapes = {sm.UNET_PREFIX + k: tuple(v.shape) for k, v in diffusers_unet_to_ldm(unet, unet_config).items()}
        for prefix, layout, config in encoders:
            tower = CLIPTextModelWithProjection(CLIPTextConfig(**config)).state_dict()
            if layout == "open_clip":
                tower = transformers_to_open_clip(tower, Path("meta"))
            else:
                tower = {k.removeprefix("text_model."): v for k, v in tower.items() if k != "text_projection.weight"}
            shapes.update({prefix + k: tuple(v.shape) for k, v in tower.items()})
    return shapes


def folder_json(folder: Path) -> dict[str, dict]:
    return {str(p.relative_to(folder)): json.loads(p.read_text()) for p in sorted(folder.rglob("*.json"))}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_the_published_shapes_give_the_published_configs(family, tmp_path):
    full = {
        "sd1": (sm.SD15_FULL_UNET_CONFIG, [(*SD1_TEXT, sm.CLIP_L_CONFIG)]),
        "sd2": (sm.SD2_FULL_UNET_CONFIG, [(*SD2_TEXT, {**sm.OPEN_CLIP_H_TEXT_CONFIG, "num_hidden_layers": 24})]),
        "sdxl": (sm.SDXL_FULL_UNET_CONFIG, [(*SDXL_TEXT[0], sm.CLIP_L_CONFIG),
                                            (*SDXL_TEXT[1], sm.CLIP_BIGG_TEXT_CONFIG)]),
    }[family]
    shapes = checkpoint_shapes(*full)
    assert sm.detect_family(shapes) == family
    read = folder_json(sm.write_pipeline_config(family, tmp_path / "read", shapes=shapes))
    published = folder_json(sm.write_pipeline_config(family, tmp_path / "published"))
    assert read == published
    index = read["model_index.json"]
    assert index["_class_name"] == sm.PIPELINE_LAYOUTS[family].pipeline
    assert read["scheduler/scheduler_config.json"]["prediction_type"] == ("v_prediction" if family == "sd2" else
                                                                          "epsilon")


def test_other_sizes_are_read_from_the_tensors(tmp_path):
    unet = {**sm.SDXL_FULL_UNET_CONFIG, "block_out_channels": (128, 256, 384),
            "transformer_layers_per_block": (1, 2, 4), "attention_head_dim": (2, 4, 6), "cross_attention_dim": 192,
            "addition_time_embed_dim": 16,
            "projection_class_embeddings_input_dim": 128 + 6 * 16}
    clip_l = {**sm.CLIP_L_CONFIG, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
              "num_attention_heads": 1}
    big_g = {**sm.CLIP_BIGG_TEXT_CONFIG, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 5,
             "num_attention_heads": 2, "projection_dim": 128}
    shapes = checkpoint_shapes(unet, [(*SDXL_TEXT[0], clip_l), (*SDXL_TEXT[1], big_g)])
    read = folder_json(sm.write_pipeline_config("sdxl", tmp_path, shapes=shapes, prediction_type="v_prediction"))
    got = read["unet/config.json"]
    for key in ("block_out_channels", "transformer_layers_per_block", "attention_head_dim"):
        assert tuple(got[key]) == unet[key], key
    for key in ("cross_attention_dim", "addition_time_embed_dim", "projection_class_embeddings_input_dim"):
        assert got[key] == unet[key], key
    for name, config in (("text_encoder", clip_l), ("text_encoder_2", big_g)):
        text = read[f"{name}/config.json"]
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            assert text[key] == config[key], (name, key)
    assert read["text_encoder/config.json"]["hidden_act"] == "quick_gelu"
    assert read["text_encoder_2/config.json"]["hidden_act"] == "gelu"
    assert read["scheduler/scheduler_config.json"]["prediction_type"] == "v_prediction"


def test_what_the_configs_cannot_describe_is_refused(tmp_path):
    text = [(*SD1_TEXT, {**sm.CLIP_L_CONFIG, "num_hidden_layers": 1})]
    two_levels = {"block_out_channels": (32, 64), "down_block_types": ("CrossAttnDownBlock2D",) * 2,
                  "up_block_types": ("CrossAttnUpBlock2D",) * 2}
    small = {**sm.SD15_FULL_UNET_CONFIG, **two_levels}
    inpainting = checkpoint_shapes({**small, "in_channels": 9}, text)
    with pytest.raises(sm.UnsupportedCheckpointError, match="9 input channels.*inpainting"):
        sm.write_pipeline_config("sd1", tmp_path / "a", shapes=inpainting)
    sd2_text = [(*SD2_TEXT, {**sm.OPEN_CLIP_H_TEXT_CONFIG, "hidden_size": 96, "num_attention_heads": 1,
                             "num_hidden_layers": 2, "intermediate_size": 96})]
    odd_width = checkpoint_shapes({**small, "use_linear_projection": True, "attention_head_dim": (1, 1)}, sd2_text)
    with pytest.raises(sm.UnsupportedCheckpointError, match="96 wide, not a multiple of 64"):
        sm.write_pipeline_config("sd2", tmp_path / "b", shapes=odd_width)
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        sm.write_pipeline_config("sd1", tmp_path / "c", prediction_type="sample")
    with pytest.raises(sm.UnsupportedCheckpointError, match="SDXL refiner"):
        sm.detect_family(["conditioner.embedders.0.model.text_projection"])
