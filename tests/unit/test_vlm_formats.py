"""load_vlm reads every CLIP layout a user has, exactly: open_clip (hub folder, file + JSON, file + model name),
transformers CLIP folders, ComfyUI's split text-encoder + CLIP-vision files; pickles are refused.

Fixtures are random weights written in exactly the published layouts (transformers ``save_pretrained``, the
``text_model.*`` / ``vision_model.*`` halves of a ``CLIPModel`` state dict as ComfyUI's ``clip_l`` and
``clip_vision`` files, open_clip's hub folder). Exactness: ``encode_image`` / ``encode_text`` equal transformers'
``CLIPModel.get_image_features`` / ``get_text_features`` and open_clip's own ``encode_image`` / ``encode_text`` on
the same weights. The fast tests use small shapes; ViT-B/32 and ViT-L/14 at real shape are marked slow.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel
from transformers.activations import ACT2FN

from promptweave.prompt_modules.core import clip_formats
from promptweave.prompt_modules.core.artifacts import SHIPPED_WEIGHTS_DIR, ArtifactError, read_safetensors
from promptweave.prompt_modules.core.vlm import (
    VisionLanguageModel,
    VLMConfig,
    load_vlm,
    save_vlm,
    trainable_copy,
    vlm_from_state_dicts,
)

TEXTS = ["a photo of a cat", "a red star left of a blue arrow"]
OPENAI_MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
OPENAI_STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)


# ----- building fixtures in the published layouts -----------------------------------------------------------
def clip_config(
    text: tuple[int, int, int], vision: tuple[int, int, int], image: int, patch: int, proj: int, act: str
) -> CLIPConfig:
    """transformers CLIPConfig: ``text`` / ``vision`` are (width, layers, heads); MLP width 4x."""
    t_width, t_layers, t_heads = text
    v_width, v_layers, v_heads = vision
    return CLIPConfig(
        text_config={
            "hidden_size": t_width,
            "intermediate_size": 4 * t_width,
            "num_hidden_layers": t_layers,
            "num_attention_heads": t_heads,
            "max_position_embeddings": 77,
            "vocab_size": 49408,
            "hidden_act": act,
        },
        vision_config={
            "hidden_size": v_width,
            "intermediate_size": 4 * v_width,
            "num_hidden_layers": v_layers,
            "num_attention_heads": v_heads,
            "image_size": image,
            "patch_size": patch,
            "hidden_act": act,
        },
        projection_dim=proj,
    )


VIT_B_32 = dict(text=(512, 12, 8), vision=(768, 12, 12), image=224, patch=32, proj=512)
VIT_L_14 = dict(text=(768, 12, 12), vision=(1024, 24, 16), image=224, patch=14, proj=768)
#: ViT-B widths (so split files can infer the heads) with one layer per tower at 32 px: 36 M parameters.
SMALL = dict(text=(512, 1, 8), vision=(768, 1, 12), image=32, patch=16, proj=64)


@torch.no_grad()
def random_clip(config: CLIPConfig, seed: int = 0) -> CLIPModel:
    """A CLIPModel with random weights on the fp16 grid (so fp16 files hold exactly these weights). The
    one-dimensional tensors that transformers initialises to constants (layer norms, biases) get noise too, so
    a swapped key cannot hide behind equal values."""
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    for name, param in model.named_parameters():
        if param.ndim == 1 and name != "logit_scale":
            param.add_(torch.randn_like(param) * 0.05)
        param.copy_(param.half().float())
    return model


def set_activation(model: CLIPModel, act: str) -> None:
    """Switch every MLP of a CLIPModel to ``act`` (same weights, other activation) and its config with it."""
    for tower in (model.text_model, model.vision_model):
        for layer in tower.encoder.layers:
            layer.mlp.activation_fn = ACT2FN[act]
    model.config.text_config.hidden_act = model.config.vision_config.hidden_act = act


def half(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}


def open_clip_cfg(model: CLIPModel) -> dict:
    """The open_clip model config of a CLIPModel's shape, written by hand from its config."""
    t, v = model.config.text_config, model.config.vision_config
    return {
        "embed_dim": model.config.projection_dim,
        "quick_gelu": t.hidden_act == "quick_gelu",
        "vision_cfg": {
            "image_size": v.image_size,
            "layers": v.num_hidden_layers,
            "width": v.hidden_size,
            "head_width": v.hidden_size // v.num_attention_heads,
            "patch_size": v.patch_size,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": t.hidden_size,
            "heads": t.num_attention_heads,
            "layers": t.num_hidden_layers,
        },
    }


def write_transformers_folder(model: CLIPModel, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    return folder


def write_split_files(model: CLIPModel, folder: Path, text_projection: bool = True) -> tuple[Path, Path]:
    """ComfyUI's files: text encoder (``text_model.*`` + ``text_projection.weight``, as clip_l.safetensors) and
    CLIP-vision (``vision_model.*`` + ``visual_projection.weight``, as models/clip_vision files), fp16."""
    folder.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    text = {k: v for k, v in state.items() if k.startswith("text_model.")}
    if text_projection:
        text["text_projection.weight"] = state["text_projection.weight"]
    vision = {k: v for k, v in state.items() if k.startswith("vision_model.") or k == "visual_projection.weight"}
    save_file(half(text), str(folder / "clip_l.safetensors"))
    save_file(half(vision), str(folder / "clip_vision.safetensors"))
    return folder / "clip_l.safetensors", folder / "clip_vision.safetensors"


def write_hub_folder(state: dict[str, torch.Tensor], cfg: dict, folder: Path, preprocess: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(half(state), str(folder / "open_clip_model.safetensors"))
    preprocess = preprocess or {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess}))
    return folder


def write_file_with_json(state: dict[str, torch.Tensor], cfg: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(half(state), str(path))
    path.with_suffix(".json").write_text(json.dumps(cfg))
    return path


def images_at(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def hf_features(model: CLIPModel, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' reference features (5.x returns an output object with the projected pooler_output)."""
    img = model.get_image_features(pixel_values=(images - OPENAI_MEAN) / OPENAI_STD)
    txt = model.get_text_features(input_ids=tokens)
    img = img if isinstance(img, torch.Tensor) else img.pooler_output
    txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
    return F.normalize(img, dim=-1), F.normalize(txt, dim=-1)


@torch.no_grad()
def vlm_features(vlm: VisionLanguageModel, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return vlm.encode_image(images), vlm.encode_text(TEXTS)


def assert_same(a: torch.Tensor, b: torch.Tensor, min_cos: float = 0.9999) -> None:
    cos = F.cosine_similarity(a, b, dim=-1)
    assert cos.min().item() >= min_cos, cos


# ----- conversion and identity (no model run) --------------------------------------------------------------
FAMILY_CONFIGS = {  # transformers CLIPConfig shapes of the published models (text, vision as width/layers/heads)
    "ViT-B-32": VIT_B_32,
    "ViT-L-14": VIT_L_14,
    "ViT-H-14": dict(text=(1024, 24, 16), vision=(1280, 32, 16), image=224, patch=14, proj=1024),
    "ViT-bigG-14": dict(text=(1280, 32, 20), vision=(1664, 48, 16), image=224, patch=14, proj=1280),
}


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_conversion_gives_open_clip_keys_shapes_and_config_of_each_family(family: str) -> None:
    """transformers keys -> open_clip keys with open_clip's shapes, the shape read back from the tensors is
    open_clip's config (heads included), and the family name follows; on the meta device (no memory, no time)."""
    shape = FAMILY_CONFIGS[family]
    config = clip_config(**shape, act="gelu")
    if family == "ViT-bigG-14":  # bigG's vision MLP is 8192 wide (open_clip: mlp_ratio 4.9231)
        config.vision_config.intermediate_size = 8192
    with torch.device("meta"):
        hf = CLIPModel(config)
        reference = open_clip.create_model(family, pretrained=None, device="meta")
    converted = clip_formats.transformers_to_open_clip(hf.state_dict(), Path("hf"))
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected
    cfg = clip_formats.infer_open_clip_cfg(converted, Path("hf"))
    registry = open_clip.get_model_config(family)
    assert clip_formats.shape_signature(cfg) == clip_formats.shape_signature(registry)
    assert clip_formats.family_name(cfg, False) == family
    assert clip_formats.family_name(cfg, True) == f"{family}-quickgelu"
    assert clip_formats.quick_gelu_from_shape(cfg) == {"ViT-B-32": None, "ViT-L-14": True}.get(family, False)
    from_tf, _ = clip_formats.open_clip_cfg_from_transformers(config.to_dict(), Path("config.json"))
    assert clip_formats.shape_signature(from_tf) == clip_formats.shape_signature(registry)
    vlm_config = VLMConfig.from_open_clip_cfg(registry)
    with torch.device("meta"):
        vlm = VisionLanguageModel(vlm_config)
    assert {k: tuple(v.shape) for k, v in vlm.clip.state_dict().items()} == expected
    if family == "ViT-bigG-14":
        assert (vlm_config.mlp_ratio, vlm_config.text_mlp) == (4.9231, 4.0)
    quick = VLMConfig.from_open_clip_cfg(open_clip.get_model_config(f"{family}-quickgelu"))
    assert quick.quick_gelu and dataclasses.replace(quick, quick_gelu=False) == vlm_config


def test_q_k_v_are_stacked_in_order_and_projections_transposed() -> None:
    hf = {
        "text_model.encoder.layers.0.self_attn.q_proj.weight": torch.full((4, 4), 1.0),
        "text_model.encoder.layers.0.self_attn.k_proj.weight": torch.full((4, 4), 2.0),
        "text_model.encoder.layers.0.self_attn.v_proj.weight": torch.full((4, 4), 3.0),
        "text_projection.weight": torch.arange(8.0).view(2, 4),
        "text_model.embeddings.position_ids": torch.arange(77)[None],
    }
    out = clip_formats.transformers_to_open_clip(hf, Path("x"))
    assert set(out) == {"transformer.resblocks.0.attn.in_proj_weight", "text_projection"}
    assert out["transformer.resblocks.0.attn.in_proj_weight"][:, 0].tolist() == [1.0] * 4 + [2.0] * 4 + [3.0] * 4
    assert torch.equal(out["text_projection"], hf["text_projection.weight"].t())
    del hf["text_model.encoder.layers.0.self_attn.v_proj.weight"]
    with pytest.raises(ArtifactError, match="v_proj.weight"):
        clip_formats.transformers_to_open_clip(hf, Path("x"))


def test_fingerprint_is_the_same_in_fp16_and_fp32_and_changes_with_the_weights() -> None:
    g = torch.Generator().manual_seed(0)
    state = {"a.weight": torch.randn(300, 70, generator=g), "b": torch.randn(5, generator=g)}
    fp = clip_formats.weights_fingerprint(state)
    assert fp == clip_formats.weights_fingerprint(half(state))
    assert fp == clip_formats.weights_fingerprint({**state, "logit_scale": torch.tensor(1.0)})  # not hashed
    tuned = {**state, "a.weight": state["a.weight"] + 1e-2 * torch.randn(300, 70, generator=g)}
    assert clip_formats.weights_fingerprint(tuned) != fp
    assert clip_formats.weights_fingerprint({**state, "b": state["b"].view(1, 5)}) != fp  # shapes count
    assert len(fp) == 12 and int(fp, 16) >= 0


def test_open_clip_config_options() -> None:
    base = open_clip.get_model_config("ViT-B-32")
    noop = {
        **base,
        "vision_cfg": {**base["vision_cfg"], "patch_dropout": 0.5, "ls_init_value": None},
        "text_cfg": {**base["text_cfg"], "pool_type": "argmax"},
        "custom_text": False,
    }
    assert VLMConfig.from_open_clip_cfg(noop) == VLMConfig.from_open_clip_cfg(base)
    for bad in (
        {**base, "vision_cfg": {**base["vision_cfg"], "ls_init_value": 1e-5}},
        {**base, "text_cfg": {**base["text_cfg"], "pool_type": "eos"}},
        {**base, "init_logit_bias": -10},
    ):
        with pytest.raises(ValueError, match="unsupported"):
            VLMConfig.from_open_clip_cfg(bad)
    old = VLMConfig(name="x").to_dict()  # a config saved before the preprocessing fields: defaults apply
    for key in ("text_mlp_ratio", "image_mean", "image_std", "interpolation"):
        old.pop(key)
    assert VLMConfig.from_dict(old) == VLMConfig(name="x")
    with pytest.raises(ValueError, match="interpolation"):
        VLMConfig(interpolation="nearest")


def test_built_from_state_dict_equals_built_and_loaded() -> None:
    """The meta-device build (no random init) gives the same module, buffers included."""
    model = VisionLanguageModel(VLMConfig(name="t", text_mlp_ratio=2.0), seed=0)
    built = VisionLanguageModel.from_state_dict(model.config, model.clip.state_dict())
    assert {k: v for k, v in built.state_dict().items()}.keys() == model.state_dict().keys()
    for (name, a), (_, b) in zip(model.named_buffers(), built.named_buffers(), strict=True):
        assert torch.equal(a, b), name
    x = images_at(64)
    with torch.no_grad():
        assert torch.equal(built.encode_image(x), model.encode_image(x))
        assert torch.equal(built.encode_text(TEXTS), model.encode_text(TEXTS))
    with torch.inference_mode():  # as ComfyUI loads: the copy must still pass gradients to prompts
        loaded = VisionLanguageModel.from_state_dict(model.config, model.clip.state_dict())
    copy = trainable_copy(loaded)
    assert not any(p.requires_grad for p in copy.parameters()) and copy.name == "t"
    prompts = torch.zeros(2, copy.vision_width, requires_grad=True)
    copy.encode_image_with_prompts(x, prompts).sum().backward()
    assert prompts.grad is not None and prompts.grad.abs().sum() > 0


# ----- every layout of one small CLIP --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One small CLIP (ViT-B widths, one layer per tower, OpenAI's quick_gelu) in every layout."""
    root = tmp_path_factory.mktemp("small")
    model = random_clip(clip_config(**SMALL, act="quick_gelu"))
    folder = write_transformers_folder(model, root / "transformers")
    text, vision = write_split_files(model, root / "comfyui")
    reference = load_vlm(folder)
    state, cfg = reference.clip.state_dict(), open_clip_cfg(model)
    tokens = reference.tokenize(TEXTS)
    x = images_at(32)
    return {
        "model": model,
        "reference": reference,
        "state": state,
        "cfg": cfg,
        "images": x,
        "root": root,
        "hf": hf_features(model, x, tokens),
        "layouts": {
            "transformers folder": lambda: load_vlm(folder),
            "transformers file + config.json": lambda: load_vlm(folder / "model.safetensors"),
            "open_clip hub folder": lambda: load_vlm(write_hub_folder(state, cfg, root / "hub")),
            "open_clip file + json": lambda: load_vlm(write_file_with_json(state, cfg, root / "oc" / "m.safetensors")),
            "comfyui split files": lambda: load_vlm(text, vision=vision, quick_gelu=True),
            "comfyui text + open_clip visual": lambda: load_vlm(
                text, vision=_visual_file(state, root), quick_gelu=True
            ),
        },
        "text": text,
        "vision": vision,
    }


def _visual_file(state: dict[str, torch.Tensor], root: Path) -> Path:
    path = root / "open_clip_visual.safetensors"
    save_file(half({k: v for k, v in state.items() if k.startswith("visual.")}), str(path))
    return path


def test_small_clip_equals_transformers(small: dict) -> None:
    vlm = small["reference"]
    assert vlm.config.quick_gelu and vlm.image_size == 32 and vlm.config.interpolation == "bicubic"
    assert (vlm.token_width, vlm.vision_width, vlm.embed_dim) == (512, 768, 64)
    image, text = vlm_features(vlm, small["images"])
    assert_same(image, small["hf"][0], 0.99999)
    assert_same(text, small["hf"][1], 0.99999)
    assert vlm.clip.logit_scale.item() == pytest.approx(small["model"].logit_scale.item())


@pytest.mark.parametrize(
    "layout",
    [
        "transformers file + config.json",
        "open_clip hub folder",
        "open_clip file + json",
        "comfyui split files",
        "comfyui text + open_clip visual",
    ],
)
def test_every_layout_gives_the_same_features_and_name(small: dict, layout: str) -> None:
    vlm = small["layouts"][layout]()
    reference = small["reference"]
    assert vlm.name == reference.name and vlm.name.startswith("clip:custom-quickgelu:")
    assert vlm.config == reference.config
    image, text = vlm_features(vlm, small["images"])
    assert_same(image, small["hf"][0], 0.99999)
    assert_same(text, small["hf"][1], 0.99999)
    expected_scale = math.log(100) if "comfyui" in layout else reference.clip.logit_scale.item()
    assert vlm.clip.logit_scale.item() == pytest.approx(expected_scale, rel=1e-3)  # fp16 files


def test_state_dicts_in_memory_load_as_the_files(small: dict) -> None:
    """What ComfyUI's loaders hold in memory (transformers keys, text and vision halves) loads as the files do,
    into tensors of its own."""
    state = small["model"].state_dict()
    text = {k: v for k, v in state.items() if k.startswith("text_model.") or k == "text_projection.weight"}
    vision = {k: v for k, v in state.items() if k.startswith("vision_model.") or k == "visual_projection.weight"}
    vlm = vlm_from_state_dicts(text, vision, quick_gelu=True)
    assert vlm.name == small["reference"].name
    assert vlm.token_embedding.weight.data_ptr() != state["text_model.embeddings.token_embedding.weight"].data_ptr()
    full = vlm_from_state_dicts(small["reference"].clip.state_dict(), quick_gelu=True)  # open_clip keys, both towers
    assert full.name == small["reference"].name
    assert full.clip.visual.proj.data_ptr() != small["reference"].clip.visual.proj.data_ptr()
    with pytest.raises(ArtifactError, match="the text state dict is a text encoder without its text projection"):
        vlm_from_state_dicts({k: v for k, v in text.items() if "projection" not in k}, vision, quick_gelu=True)


def test_the_name_changes_with_the_weights_and_the_activation(small: dict, tmp_path: Path) -> None:
    gelu = load_vlm(small["text"], vision=small["vision"], quick_gelu=False)
    assert gelu.name.startswith("clip:custom:") and gelu.name.split(":")[2] == small["reference"].name.split(":")[2]
    tensors = read_safetensors(small["vision"])[0]
    tensors["vision_model.post_layernorm.weight"] = tensors["vision_model.post_layernorm.weight"] + 0.01  # a tune
    tuned = tmp_path / "tuned_vision.safetensors"
    save_file(tensors, str(tuned))
    assert load_vlm(small["text"], vision=tuned, quick_gelu=True).name != small["reference"].name


@pytest.fixture(scope="module")
def saved_small(small: dict) -> Path:
    """The small CLIP written by save_vlm (a PromptWeave file)."""
    return save_vlm(small["reference"], small["root"] / "saved.safetensors")


def test_saved_and_reloaded_keeps_name_config_and_features(small: dict, saved_small: Path) -> None:
    vlm = small["reference"]
    again = load_vlm(saved_small)
    assert again.name == vlm.name and again.config == vlm.config
    with torch.no_grad():
        assert torch.equal(again.encode_image(small["images"]), vlm.encode_image(small["images"]))


def test_preprocess_runs_at_the_model_resolution_with_bicubic_and_the_config_mean(small: dict) -> None:
    vlm = small["reference"]
    x = torch.rand(2, 3, 48, 72, generator=torch.Generator().manual_seed(3))
    out = vlm.preprocess(x)
    assert out.shape == (2, 3, 32, 32)
    # PIL's bicubic resize (open_clip's transform) of the shorter side to 32, then the centre crop
    pil = []
    for img in x:
        array = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        resized = Image.fromarray(array).resize((48, 32), Image.BICUBIC)
        pil.append(torch.from_numpy(np.array(resized)).permute(2, 0, 1).float()[:, :, 8:40] / 255)
    expected = (torch.stack(pil) - OPENAI_MEAN) / OPENAI_STD
    assert (out - expected).abs().mean() < 0.02
    world_like = VisionLanguageModel.from_state_dict(
        VLMConfig(**{**vlm.config.to_dict(), "interpolation": "bilinear"}), vlm.clip.state_dict()
    )
    assert not torch.allclose(world_like.preprocess(x), out)
    custom = load_vlm(
        write_hub_folder(
            small["state"],
            small["cfg"],
            small["root"] / "hub-mean",
            {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic"},
        )
    )
    assert custom.config.image_mean == (0.5, 0.5, 0.5)
    assert torch.allclose(custom.preprocess(torch.ones(1, 3, 32, 32)), torch.ones(1, 3, 32, 32))
    assert custom.name == vlm.name  # preprocessing is not part of the weights' identity


def test_model_name_overrides_and_old_positional_device(small: dict, saved_small: Path) -> None:
    path = saved_small
    assert load_vlm(path, "cpu").name == small["reference"].name  # load_vlm(path, device), the old signature
    assert load_vlm(path, torch.device("cpu")).device == torch.device("cpu")
    with pytest.raises(ArtifactError, match="PromptWeave VLM file"):
        load_vlm(path, vision=small["vision"])
    with pytest.raises(ArtifactError, match="not one of open_clip's built-in configs"):
        load_vlm(small["text"], vision=small["vision"], model_name="ViT-Nope")
    with pytest.raises(ArtifactError, match="does not fit"):  # a registry shape that is not this file's
        load_vlm(small["text"], vision=small["vision"], model_name="ViT-B-32")


# ----- errors ----------------------------------------------------------------------------------------------
def test_activation_of_an_ambiguous_shape_must_be_given(small: dict) -> None:
    with pytest.raises(ArtifactError, match="quick_gelu=True for OpenAI") as info:
        load_vlm(small["text"], vision=small["vision"])
    assert small["text"].name in str(info.value)


def test_text_encoder_without_projection_is_refused_with_the_fix(small: dict, tmp_path: Path) -> None:
    text, vision = write_split_files(small["model"], tmp_path, text_projection=False)
    with pytest.raises(ArtifactError, match="without its text projection") as info:
        load_vlm(text, vision=vision, quick_gelu=True)
    message = str(info.value)
    assert str(text) in message and "SD1.5" in message and "clip_l.safetensors" in message


def test_mismatched_pair_is_refused_naming_both_files_and_the_fix(small: dict, tmp_path: Path) -> None:
    tensors = {k: v.clone() for k, v in read_safetensors(small["vision"])[0].items()}
    tensors["visual_projection.weight"] = torch.randn(768, 768).half()  # projects to 768, as ViT-L/14's vision
    other = tmp_path / "clip_vision_vit_l.safetensors"
    save_file(tensors, str(other))
    with pytest.raises(ArtifactError, match="not one CLIP") as info:
        load_vlm(small["text"], vision=other, quick_gelu=True)
    message = str(info.value)
    assert str(small["text"]) in message and str(other) in message and "clip_l.safetensors" in message


def test_towers_alone_and_swapped_are_refused(small: dict, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="text tower only"):
        load_vlm(small["text"])
    with pytest.raises(ArtifactError, match="vision tower only"):
        load_vlm(small["vision"])
    with pytest.raises(ArtifactError, match="swapped"):
        load_vlm(small["vision"], vision=small["text"])
    with pytest.raises(ArtifactError, match="has no vision tower"):
        load_vlm(small["text"], vision=small["text"])
    with pytest.raises(ArtifactError, match="its own vision tower"):
        load_vlm(small["root"] / "transformers" / "model.safetensors", vision=small["vision"])
    with pytest.raises(ArtifactError, match="neither an open_clip hub folder"):
        load_vlm(tmp_path)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "clip.pth", "sd15.ckpt"])
def test_pickles_are_refused_with_the_fix(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / name
    torch.save({"w": torch.zeros(2)}, path)

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a pickle was opened")

    monkeypatch.setattr(torch, "load", never)
    with pytest.raises(ArtifactError, match="pickle") as info:
        load_vlm(path)
    assert name in str(info.value) and "safetensors" in str(info.value)
    folder = tmp_path / "tf"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(path.read_bytes())
    with pytest.raises(ArtifactError, match="save_pretrained"):
        load_vlm(folder)
    text = tmp_path / "text.safetensors"
    save_file({"text_model.final_layer_norm.weight": torch.ones(4)}, str(text))
    with pytest.raises(ArtifactError, match="pickle"):
        load_vlm(text, vision=path)


def test_unknown_width_needs_a_config(tmp_path: Path) -> None:
    vlm = VisionLanguageModel("tiny", seed=0)
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in vlm.clip.state_dict().items()}, str(path))
    with pytest.raises(ArtifactError, match="no VLM config.*attention heads"):
        load_vlm(path)


def test_tiny_transformers_gelu_and_unequal_widths(tmp_path: Path) -> None:
    """GELU (OpenCLIP's activation) and a text tower narrower than the vision tower, from config.json."""
    model = random_clip(clip_config(text=(64, 2, 2), vision=(96, 2, 3), image=32, patch=8, proj=48, act="gelu"))
    vlm = load_vlm(write_transformers_folder(model, tmp_path / "tf"))
    assert not vlm.config.quick_gelu and vlm.name.startswith("clip:custom:")
    assert (vlm.config.text_heads, vlm.config.vision_heads) == (2, 3)
    x = images_at(32)
    image, text = vlm_features(vlm, x)
    hf_image, hf_text = hf_features(model, x, vlm.tokenize(TEXTS))
    assert_same(image, hf_image, 0.99999)
    assert_same(text, hf_text, 0.99999)
    with torch.no_grad():
        prompted = vlm.encode_image_with_prompts(x, torch.zeros(2, 96))
    assert prompted.shape == (2, 48)


def test_shipped_worldclip_keeps_its_name_config_and_preprocessing() -> None:
    path = SHIPPED_WEIGHTS_DIR / "worldclip.safetensors"
    if not path.is_file():
        pytest.skip("WorldCLIP is not shipped")
    vlm = load_vlm(path)
    assert vlm.name == "worldclip2" and vlm.config.interpolation == "bilinear"
    assert vlm.config.image_mean == tuple(open_clip.OPENAI_DATASET_MEAN)


# ----- real shapes (slow) --------------------------------------------------------------------------------------
def _open_clip_reference(name: str, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = open_clip.create_model(name, pretrained=None)
    model.load_state_dict(state)
    return model.eval()


@torch.no_grad()
def _check_real_shape(model: CLIPModel, vlm: VisionLanguageModel, family: str, size: int = 224) -> None:
    """The loaded VLM equals transformers' CLIPModel and open_clip's own model of that family."""
    x = images_at(size, seed=1)
    image, text = vlm_features(vlm, x)
    hf_image, hf_text = hf_features(model, x, vlm.tokenize(TEXTS))
    assert_same(image, hf_image)
    assert_same(text, hf_text)
    reference = _open_clip_reference(family, vlm.clip.state_dict())
    assert_same(image, reference.encode_image(vlm.preprocess(x), normalize=True))
    assert_same(text, reference.encode_text(vlm.tokenize(TEXTS), normalize=True))


def _linked(weights: Path, folder: Path) -> Path:
    """``weights`` hard-linked into ``folder`` (another config beside the same weights, no copy)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / weights.name).hardlink_to(weights)
    return folder / weights.name


@pytest.fixture(scope="module")
def vit_b_32(tmp_path_factory: pytest.TempPathFactory) -> tuple[CLIPModel, dict[str, dict[str, object]]]:
    """A random ViT-B/32 in every layout, for each activation (the weights written once, fp16)."""
    root = tmp_path_factory.mktemp("vit-b-32")
    model = random_clip(clip_config(**VIT_B_32, act="quick_gelu"), seed=2)
    model.half().save_pretrained(root / "tf-quick_gelu", safe_serialization=True)
    model.float()
    text, vision = write_split_files(model, root / "comfyui")
    with torch.no_grad():
        state = VisionLanguageModel.from_state_dict(
            "vit-b-32", clip_formats.to_open_clip_layout(model.state_dict(), root)
        ).clip.state_dict()
    oc_file = write_file_with_json(state, open_clip_cfg(model), root / "oc-quick_gelu" / "vit-b-32.safetensors")
    hub = root / "hub-quick_gelu"
    _linked(oc_file, hub).rename(hub / "open_clip_model.safetensors")
    layouts: dict[str, dict[str, object]] = {}
    for act in ("quick_gelu", "gelu"):
        family = "ViT-B-32-quickgelu" if act == "quick_gelu" else "ViT-B-32"
        tf, oc, hub = root / f"tf-{act}", root / f"oc-{act}" / "vit-b-32.safetensors", root / f"hub-{act}"
        if act == "gelu":  # the same weights files beside configs that say GELU
            _linked(root / "tf-quick_gelu" / "model.safetensors", tf)
            config = json.loads((root / "tf-quick_gelu" / "config.json").read_text())
            config["text_config"]["hidden_act"] = config["vision_config"]["hidden_act"] = "gelu"
            (tf / "config.json").write_text(json.dumps(config))
            _linked(oc_file, oc.parent)
            _linked(oc_file, hub).rename(hub / "open_clip_model.safetensors")
        cfg = {**open_clip_cfg(model), "quick_gelu": act == "quick_gelu"}
        oc.with_suffix(".json").write_text(json.dumps(cfg))
        (hub / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
        layouts[act] = {
            "family": family,
            "transformers folder": tf,
            "open_clip hub folder": hub,
            "open_clip file + json": oc,
            "open_clip file + model_name": (oc, {"model_name": family}),
            "comfyui split files": (text, {"vision": vision, "quick_gelu": act == "quick_gelu"}),
        }
    return model, layouts


@pytest.mark.slow
@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_vit_b_32_every_layout_equals_transformers_and_open_clip(vit_b_32: tuple, act: str) -> None:
    model, layouts = vit_b_32
    set_activation(model, act)
    layouts = dict(layouts[act])
    family = layouts.pop("family")
    vlm = load_vlm(layouts.pop("transformers folder"))
    assert vlm.name.startswith(f"clip:{family}:")
    _check_real_shape(model, vlm, family)
    expected = vlm.clip.state_dict()
    for layout, source in layouts.items():
        path, kwargs = source if isinstance(source, tuple) else (source, {})
        loaded = load_vlm(path, **kwargs)
        assert loaded.name == vlm.name and loaded.config == vlm.config, layout
        # the same tensors in the same model: the same features (split files carry no logit_scale: CLIP's 100)
        for key, value in loaded.clip.state_dict().items():
            if key == "logit_scale":
                assert value.item() == pytest.approx(math.log(100) if "comfyui" in layout else expected[key].item())
            else:
                assert torch.equal(value, expected[key]), (layout, key)
        del loaded


@pytest.fixture(scope="module")
def vit_l_14(tmp_path_factory: pytest.TempPathFactory) -> tuple[CLIPModel, Path, Path, Path]:
    """A random ViT-L/14 as ComfyUI's clip_l + CLIP-vision files and as an open_clip file (fp16, written once)."""
    root = tmp_path_factory.mktemp("vit-l-14")
    model = random_clip(clip_config(**VIT_L_14, act="quick_gelu"), seed=3)
    text, vision = write_split_files(model, root)
    oc_file = root / "open_clip_vit_l.safetensors"
    save_file(half(clip_formats.to_open_clip_layout(model.state_dict(), root)), str(oc_file))
    return model, text, vision, oc_file


@pytest.mark.slow
@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_vit_l_14_split_files_equal_transformers_and_open_clip(vit_l_14: tuple, act: str) -> None:
    """ComfyUI's clip_l + ViT-L/14 CLIP-vision pair (quick_gelu inferred from the shape as ComfyUI does; GELU
    given), equal to both references; the same weights as an open_clip file with a model name get the same
    name; token embeddings and visual prompts work with text width 768 != vision width 1024."""
    model, text, vision, oc_file = vit_l_14
    set_activation(model, act)
    family = "ViT-L-14-quickgelu" if act == "quick_gelu" else "ViT-L-14"
    vlm = load_vlm(text, vision=vision, quick_gelu=None if act == "quick_gelu" else False)
    assert vlm.name.startswith(f"clip:{family}:") and vlm.config.vision_heads == 16
    _check_real_shape(model, vlm, family)
    with torch.no_grad():
        tokens = vlm.tokenize(TEXTS)
        via_embeddings = vlm.encode_text_embeddings(vlm.embed_tokens(tokens), vlm.eot_index(tokens))
        assert torch.allclose(via_embeddings, vlm.encode_text(tokens), atol=1e-5)
        prompted = vlm.encode_image_with_prompts(images_at(224, batch=1), torch.randn(2, 1024) * 0.02)
        assert prompted.shape == (1, 768) and torch.isfinite(prompted).all()
    assert len(vlm.text_blocks) == 12 and len(vlm.visual.transformer.resblocks) == 24
    name = vlm.name
    del vlm
    assert load_vlm(oc_file, model_name=family).name == name


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ViT-H-14", "ViT-bigG-14"])
def test_vit_h_and_bigg_widths_equal_transformers_and_open_clip_at_two_layers(family: str, tmp_path: Path) -> None:
    """OpenCLIP's ViT-H/14 and ViT-bigG/14 at their published widths, heads and MLP widths (bigG's 8192-wide
    vision MLP), GELU, with two layers per tower (every layer converts the same way; the full 1-2.5 B parameter
    models do not fit three copies in this machine's memory): as a transformers folder and as ComfyUI's split
    files, equal to transformers' CLIPModel and to open_clip's own model of that config."""
    shape = dict(FAMILY_CONFIGS[family])
    (t_width, _, t_heads), (v_width, _, v_heads) = shape["text"], shape["vision"]
    shape["text"], shape["vision"] = (t_width, 2, t_heads), (v_width, 2, v_heads)
    config = clip_config(**shape, act="gelu")
    if family == "ViT-bigG-14":
        config.vision_config.intermediate_size = 8192
    model = random_clip(config, seed=4)
    model.half().save_pretrained(tmp_path / "transformers", safe_serialization=True)
    model.float()
    text, vision = write_split_files(model, tmp_path / "comfyui")
    cfg = copy.deepcopy(open_clip.get_model_config(family))
    cfg["vision_cfg"]["layers"] = cfg["text_cfg"]["layers"] = 2
    reference = open_clip.CLIP(**cfg).eval()
    x = images_at(224, seed=1)
    for source, kwargs in ((tmp_path / "transformers", {}), (text, {"vision": vision, "quick_gelu": False})):
        vlm = load_vlm(source, **kwargs)
        assert not vlm.config.quick_gelu and vlm.embed_dim == shape["proj"]
        image, text_features = vlm_features(vlm, x)
        hf_image, hf_text = hf_features(model, x, vlm.tokenize(TEXTS))
        assert_same(image, hf_image)
        assert_same(text_features, hf_text)
        reference.load_state_dict(vlm.clip.state_dict())
        with torch.no_grad():
            assert_same(image, reference.encode_image(vlm.preprocess(x), normalize=True))
            assert_same(text_features, reference.encode_text(vlm.tokenize(TEXTS), normalize=True))
        del vlm
