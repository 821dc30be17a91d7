"""The diffusers examples in ``diffusers_examples/``: each ``main()`` runs on the tiny pipeline, writes what it says."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

from promptweave.prompt_modules.world.models import WEIGHTS_DIR, WORLDCLIP_FILE

EXAMPLES = Path(__file__).resolve().parents[2] / "diffusers_examples"
SIZE = 64
needs_worldclip = pytest.mark.skipif(
    not (WEIGHTS_DIR / WORLDCLIP_FILE).is_file(), reason="the shipped WorldCLIP weights are missing"
)


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"promptweave_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_example(name: str, pipeline: Path, out: Path, *extra: str) -> list[Path]:
    torch.set_num_threads(1)
    paths = load_example(name).main(["--pipeline", str(pipeline), "--out", str(out), *extra])
    assert paths and all(p.is_file() and p.stat().st_size > 0 and p.parent == out for p in paths)
    return paths


def image(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.size == (SIZE, SIZE)
        return np.asarray(im)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    from promptweave.testing.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("examples") / "tiny-sd", seed=0)


@pytest.fixture(scope="module")
def worldclip():
    from promptweave.prompt_modules.world.models import load_worldclip

    return load_worldclip()


def test_every_example_has_a_docstring_and_the_common_options():
    names = sorted(p.stem for p in EXAMPLES.glob("diffusers_*.py"))
    assert names == [
        "diffusers_diff_prompt",
        "diffusers_dual_prompt",
        "diffusers_ipl_lora",
        "diffusers_learned_prompt",
        "diffusers_prompt_inversion",
        "diffusers_prompt_pretraining",
    ]
    papers = {  # each docstring names the paper it shows
        "diffusers_diff_prompt": "Yan et al., ICLR 2025",
        "diffusers_dual_prompt": "Wang et al. 2025",
        "diffusers_ipl_lora": "Guo et al., CVPR 2023",
        "diffusers_learned_prompt": "Zhou et al. 2022",
        "diffusers_prompt_inversion": "Croitoru et al., CVIU 2024",
        "diffusers_prompt_pretraining": "Chen et al. 2024",
    }
    for name in names:
        module = load_example(name)
        assert papers[name] in module.__doc__ and f"diffusers_examples/{name}.py" in module.__doc__
        args = module.parse_args([])
        assert args.pipeline is None and args.out.startswith("out/examples/")
        assert module.main.__annotations__["return"] == "list[Path]"


def test_learned_prompt(pipeline, tmp_path):
    from promptweave.prompt_modules.core.learned_prompt import LearnedPrompt

    paths = run_example("diffusers_learned_prompt", pipeline, tmp_path)
    assert [p.name for p in paths] == ["prompt.safetensors", "plain.png", "learned.png", "textual_inversion.png"]
    prompt = LearnedPrompt.load(paths[0])
    assert prompt.widths() == {"clip_l": 32} and prompt.n_ctx == 4
    plain, learned, via_ti = (image(p) for p in paths[1:])
    assert np.array_equal(learned, via_ti)  # diffusers' textual-inversion loader reads the same vectors
    assert not np.array_equal(learned, plain)


def test_prompt_inversion(pipeline, tmp_path):
    if not (WEIGHTS_DIR / "inverter-pixels-world.safetensors").is_file():
        pytest.skip("the shipped pixel inverter is missing")
    paths = run_example("diffusers_prompt_inversion", pipeline, tmp_path)
    assert [p.name for p in paths] == ["input.png", "prompt.txt", "regenerated.png"]
    image(paths[0])
    image(paths[2])
    lines = paths[1].read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("prompt: ") and len(lines[0]) > len("prompt: ") + 5
    assert lines[1].startswith("keywords: ") and "(" in lines[1]
    assert any(line.startswith("nearest: ") for line in lines)


@needs_worldclip
def test_dual_prompt(pipeline, tmp_path, worldclip):
    from promptweave.prompt_modules.dual_prompt import load_dual_prompt

    paths = run_example("diffusers_dual_prompt", pipeline, tmp_path, "--n-images", "3")
    names = [p.name for p in paths]
    assert names == [
        "dual_prompt.safetensors",
        "rank_0.png",
        "rank_1.png",
        "rank_2.png",
        "ranking.txt",
        "conditioned.png",
    ]
    dual = load_dual_prompt(paths[0], worldclip)
    assert bool((dual.text_token_ids >= 0).all())  # the vocabulary projection the SD prompt is read from
    for p in paths[1:4] + paths[5:]:
        image(p)
    scores = [float(line.rsplit(" ", 1)[1]) for line in paths[4].read_text(encoding="utf-8").splitlines()[1:]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)


@needs_worldclip
def test_ipl_lora(pipeline, tmp_path):
    from diffusers import StableDiffusionPipeline
    from peft.tuners.lora import LoraLayer

    from promptweave.prompt_modules.core.artifacts import read_metadata

    paths = run_example("diffusers_ipl_lora", pipeline, tmp_path)
    assert [p.name for p in paths] == ["neon-sign.safetensors", "before.png", "after.png"]
    meta = read_metadata(paths[0])
    assert meta["promptweave.format"] == "diffusers" and meta["promptweave.target"] == "sd-unet"
    image(paths[1])
    image(paths[2])
    pipe = StableDiffusionPipeline.from_pretrained(str(pipeline), local_files_only=True)
    x, t, context = torch.randn(1, 4, 8, 8), torch.tensor([500.0]), torch.randn(1, 77, 32)
    with torch.no_grad():
        base = pipe.unet(x, t, encoder_hidden_states=context).sample
        pipe.load_lora_weights(str(paths[0]))
        adapted = pipe.unet(x, t, encoder_hidden_states=context).sample
    assert any(isinstance(m, LoraLayer) for m in pipe.unet.modules())
    assert (adapted - base).abs().max() > 0  # the trained LoRA is not a no-op


@needs_worldclip
def test_diff_prompt_mask_and_inpainting(pipeline, tmp_path, worldclip):
    from promptweave.prompt_modules.diff_prompt import load_diff_prompt

    paths = run_example("diffusers_diff_prompt", pipeline, tmp_path)
    assert [p.name for p in paths] == ["diff_prompt.safetensors", "input.png", "mask.png", "inpainted.png", "mask.txt"]
    load_diff_prompt(paths[0], worldclip)  # the trained bundle is complete and reloads
    image(paths[1])
    mask = image(paths[2])
    assert mask.ndim == 2 and set(np.unique(mask).tolist()) <= {0, 255} and (mask > 0).any()
    image(paths[3])
    report = paths[4].read_text(encoding="utf-8")
    assert "expression: " in report and f"masked pixels: {int((mask > 0).sum())} of {SIZE * SIZE}" in report


@needs_worldclip
def test_prompt_pretraining_then_dual_prompt(pipeline, tmp_path, worldclip):
    from promptweave.prompt_modules.dual_prompt import load_dual_prompt
    from promptweave.prompt_modules.pretraining import load_pretrained_prompts

    paths = run_example("diffusers_prompt_pretraining", pipeline, tmp_path)
    assert [p.name for p in paths] == [
        "rpp_bundle.safetensors",
        "dual_prompt.safetensors",
        "summary.txt",
        "conditioned.png",
    ]
    bundle = load_pretrained_prompts(paths[0], worldclip)
    assert bundle.config.qkv_mode == "unshared" and bundle.info["steps"] == 10
    dual = load_dual_prompt(paths[1], worldclip)
    assert dual.config.init_from == str(paths[0])
    assert "RPP pretrained prompts for 'worldclip2'" in paths[2].read_text(encoding="utf-8")
    image(paths[3])


def test_grounding_output_masks_at_the_image_size():
    from promptweave.prompt_modules.diff_prompt import GroundingOutput

    logits = torch.full((1, 4, 4), -5.0)
    logits[0, 1:3, 2:4] = 5.0
    out = GroundingOutput(logits, torch.tensor([[0.0, 0.5, 0.25, 1.0]]))
    mask = out.masks_at(8, 8, within_box=False)
    assert mask.shape == (1, 8, 8) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert mask[0, 3, 5] == 1 and mask[0, 0, 0] == 0 and out.masks_at(8, 8, threshold=0.999).sum() == 0
    box = out.box_masks_at(8, 16)
    assert box.shape == (1, 8, 16) and box.sum() == 4 * 4 and box[0, 4:, :4].all()
    assert out.masks_at(8, 8).sum() == 0  # by default the mask stays inside the box, which it misses here
    inside = GroundingOutput(logits, torch.tensor([[0.5, 0.25, 1.0, 0.5]]))  # the mask's right half, top rows
    assert torch.equal(inside.masks_at(8, 8), mask * inside.box_masks_at(8, 8)) and inside.masks_at(8, 8)[0, 3, 5] == 1
