"""``bench scale``'s measurements on small shapes: every capability runs and is reported ok with its timings, a
failing capability is reported as not ok (the others still run), and the peak memory is the process's."""

from __future__ import annotations

import math

import pytest
import torch

from promptweave.bench import scale
from promptweave.prompt_modules.core.vlm import VisionLanguageModel, VLMConfig
from promptweave.testing.tiny import TINY_SDXL_UNET_CONFIG, TINY_UNET_CONFIG

TINY_VAE = {"block_out_channels": (32, 32, 64, 64), "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4, "layers_per_block": 1, "norm_num_groups": 32}


@pytest.fixture(scope="module")
def vlm():
    return VisionLanguageModel(VLMConfig(name="scale-test", vision_layers=2, text_layers=2), seed=0).eval()


@pytest.mark.slow
def test_every_vlm_capability_is_ok_with_step_and_inference_times(vlm):
    metrics = scale.vlm_capabilities(vlm, "tiny", seed=0)
    for name in ("dcar", "rpp", "diff_prompt", "inversion"):
        assert metrics[f"tiny_{name}_ok"] == 1.0, name
        assert metrics[f"tiny_{name}_step_s"] > 0 and metrics[f"tiny_{name}_infer_s"] > 0, name
        assert metrics[f"tiny_{name}_peak_rss_mb"] > 50, name  # the whole process, models included
    for name in ("dcar", "rpp", "diff_prompt"):
        expected = metrics[f"tiny_{name}_step_s"] / metrics["tiny_backbone_step_s"]
        assert metrics[f"tiny_{name}_overhead"] == pytest.approx(expected)


@pytest.mark.slow
def test_ipl_is_measured_beside_a_plain_lora_step(vlm):
    unet = {**TINY_UNET_CONFIG, "cross_attention_dim": 32}
    metrics = scale.ipl_on_sd15(vlm, size=64, seed=0, unet_config=unet, vae_config=TINY_VAE)
    assert metrics["ipl_sd15_ok"] == 1.0 and metrics["ipl_sd15_lora_baseline_step_s"] > 0
    assert metrics["ipl_sd15_overhead"] == pytest.approx(
        metrics["ipl_sd15_step_s"] / metrics["ipl_sd15_lora_baseline_step_s"])


@pytest.mark.slow
def test_ipl_on_an_sdxl_unet_gets_its_added_conditioning_in_both_steps(vlm):
    metrics = scale.ipl_on_unet(vlm, size=64, seed=0, key="ipl_sdxl", unet_config=TINY_SDXL_UNET_CONFIG,
                                vae_config=TINY_VAE)
    assert metrics["ipl_sdxl_ok"] == 1.0 and metrics["ipl_sdxl_lora_baseline_step_s"] > 0
    assert metrics["ipl_sdxl_lora_baseline_peak_rss_mb"] > 50
    assert metrics["ipl_sdxl_overhead"] == pytest.approx(
        metrics["ipl_sdxl_step_s"] / metrics["ipl_sdxl_lora_baseline_step_s"])
    added = scale.sdxl_added_cond(TINY_SDXL_UNET_CONFIG, 64)
    assert added["text_embeds"].shape == (1, 32) and added["time_ids"].tolist() == [[64, 64, 0, 0, 64, 64]]


def test_a_failing_capability_is_recorded_as_not_ok():
    def broken(clock):
        raise RuntimeError("no")

    record = scale.measure("broken", broken, lambda trained: trained)
    assert record["broken_ok"] == 0.0 and math.isnan(record["broken_infer_s"])
    nan_output = scale.measure("nan", lambda clock: None, lambda trained: torch.full((1,), float("nan")))
    assert nan_output["nan_ok"] == 0.0
