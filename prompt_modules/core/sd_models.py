"""The published Stable Diffusion shapes as data, and the small config folder a single-file checkpoint needs.

Random-weight models of these shapes are what the real-shape tests and ``bench scale`` build: the structure
(levels, blocks, attention projections, conditioning widths) is the real one, so key names, LoRA coverage and
cost per step are those of the users' checkpoints.

diffusers' ``from_single_file`` fetches a pipeline's config files from the model hub unless ``config=`` names a
local folder holding them: :func:`write_pipeline_config` writes that folder (configs and tokenizer files, no
weights) for the family :func:`detect_family` reads from a checkpoint's keys (SD1.x, SD2.x, SDXL base). Given the
checkpoint's tensor shapes (:func:`read_checkpoint_shapes`) it reads the sizes that vary from them: U-Net widths,
levels, blocks, transformer depth, context width, linear or convolutional projections and SDXL's added-embedding
width; text encoders' width, depth, MLP width, vocabulary, positions and projection. So fine-tunes of other
sizes load too, and the published sizes come out as the published configs. Head counts are not in the tensors:
SD1.x has 8 per level, SD2.x, SDXL and every CLIP text tower 64-wide heads (:data:`HEAD_WIDTH`). Activations,
schedulers, VAE and sample sizes are the family's (the VAE has one shape in all three).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: SD1.x (v1.5): four levels (320, 640, 1280, 1280), two blocks each, cross-attention to 768-d CLIP-L tokens,
#: 8 heads; 860 M parameters.
SD15_FULL_UNET_CONFIG: dict[str, object] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "use_linear_projection": False,  # 1x1 convolutions around each transformer
}

#: SD 2.x (2.0 / 2.1, 768-v and 512-base): SD1.x's levels with linear projections, 64-wide heads (5, 10, 20, 20)
#: and cross-attention to 1024-d OpenCLIP ViT-H/14 tokens; 866 M parameters. 96 latents: the 768-v side.
SD2_FULL_UNET_CONFIG: dict[str, object] = {
    **SD15_FULL_UNET_CONFIG,
    "sample_size": 96,
    "cross_attention_dim": 1024,
    "attention_head_dim": (5, 10, 20, 20),
    "use_linear_projection": True,
}

#: SDXL base 1.0: three levels (320, 640, 1280), 2 and 10 transformer blocks on the deeper two, linear
#: projections, 2048-d context (CLIP-L + OpenCLIP bigG tokens) and the ``text_time`` added embedding of the pooled
#: bigG embedding with six size/crop ids (2816 inputs); 2.6 B parameters.
SDXL_FULL_UNET_CONFIG: dict[str, object] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}

#: The SD1.x text encoder: OpenAI CLIP ViT-L/14's text tower (random weights).
CLIP_L_CONFIG: dict[str, object] = {  # transformers CLIPTextConfig
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}

#: SD2.x's text encoder as diffusers runs it: OpenCLIP ViT-H/14's text tower (24 layers in the checkpoint) without
#: its last layer, since SD2 conditions on the penultimate layer's tokens (diffusers' converter drops layer 23).
OPEN_CLIP_H_TEXT_CONFIG: dict[str, object] = {
    **CLIP_L_CONFIG,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "hidden_act": "gelu",
    "projection_dim": 1024,
    "pad_token_id": 0,  # open_clip pads with 0 ("!")
}

#: SDXL's second text encoder: OpenCLIP ViT-bigG/14's text tower with its 1280-d projection (the pooled embedding).
CLIP_BIGG_TEXT_CONFIG: dict[str, object] = {
    **CLIP_L_CONFIG,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "hidden_act": "gelu",
    "projection_dim": 1280,
    "pad_token_id": 0,
}

#: The SD VAE (diffusers ``AutoencoderKL``): four levels (128, 256, 512, 512), 4 latent channels, 8x.
SD_VAE_CONFIG: dict[str, object] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

#: SD1.x's training schedule as its release ships it (PNDM, scaled-linear betas, epsilon prediction).
SD15_SCHEDULER_CONFIG: dict[str, object] = {
    "_class_name": "PNDMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

#: SD 2.x's VAE: SD1's, at 768 px.
SD2_VAE_CONFIG: dict[str, object] = {**SD_VAE_CONFIG, "sample_size": 768}

#: SDXL's VAE: the same shape, trained anew, latents scaled by 0.13025; fp16 overflows in it, so diffusers decodes
#: in fp32 (``force_upcast``).
SDXL_VAE_CONFIG: dict[str, object] = {**SD_VAE_CONFIG, "sample_size": 1024, "scaling_factor": 0.13025,
                                      "force_upcast": True}

#: SD 2.x's schedule (DDIM, SD1's betas). ``prediction_type`` is v-prediction, right for the 768-v models (2.0-v,
#: 2.1); the 512-base models predict noise: ``load_pipeline(..., prediction_type="epsilon")``.
SD2_SCHEDULER_CONFIG: dict[str, object] = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "v_prediction",
}

#: SDXL base's schedule as its release ships it (Euler, scaled-linear betas, epsilon, leading spacing).
SDXL_SCHEDULER_CONFIG: dict[str, object] = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}

#: What a scheduler's ``prediction_type`` may be set to here: the U-Net predicts the noise or v.
PREDICTION_TYPES = ("epsilon", "v_prediction")
#: Width of one attention head in SD2.x's and SDXL's U-Nets and in every CLIP text tower (SD1.x's U-Net has 8
#: heads per level instead).
HEAD_WIDTH = 64

#: Key prefixes that name a single-file checkpoint's family (original LDM / SGM layouts), checked in this order.
FAMILY_MARKERS: dict[str, str] = {
    "sdxl": "conditioner.embedders.1.model.",
    "sdxl_refiner": "conditioner.embedders.0.model.",
    "sd2": "cond_stage_model.model.",
    "sd1": "cond_stage_model.transformer.",
}
#: Where the U-Net sits in a single-file checkpoint.
UNET_PREFIX = "model.diffusion_model."


class UnsupportedCheckpointError(ValueError):
    """A single-file checkpoint whose family or shape has no local config here."""


@dataclass(frozen=True)
class TextEncoderSlot:
    """One text encoder of a pipeline: its diffusers component names, transformers class, published config, and
    where and in which layout the single file keeps it (``"transformers"``: ``text_model.*`` names;
    ``"open_clip"``: ``transformer.resblocks.*`` with fused q/k/v and ``text_projection``)."""

    name: str
    tokenizer: str
    model_class: str
    config: Mapping[str, object]
    prefix: str
    layout: str
    pad_token: str
    layers_unused: int = 0  # trailing checkpoint layers the pipeline does not run


@dataclass(frozen=True)
class PipelineLayout:
    """A family's diffusers pipeline: class, published component configs and ``model_index.json`` extras."""

    pipeline: str
    unet: Mapping[str, object]
    vae: Mapping[str, object]
    scheduler: Mapping[str, object]
    text_encoders: tuple[TextEncoderSlot, ...]
    heads_per_level: int | None  # SD1.x: a fixed head count; otherwise widths // HEAD_WIDTH
    extras: Mapping[str, object]


_SD_EXTRAS = {"safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}
#: The three families :func:`write_pipeline_config` writes.
PIPELINE_LAYOUTS: dict[str, PipelineLayout] = {
    "sd1": PipelineLayout(
        "StableDiffusionPipeline", SD15_FULL_UNET_CONFIG, SD_VAE_CONFIG, SD15_SCHEDULER_CONFIG,
        (TextEncoderSlot("text_encoder", "tokenizer", "CLIPTextModel", CLIP_L_CONFIG,
                         "cond_stage_model.transformer.text_model.", "transformers", "<|endoftext|>"),),
        heads_per_level=8, extras=_SD_EXTRAS,
    ),
    "sd2": PipelineLayout(
        "StableDiffusionPipeline", SD2_FULL_UNET_CONFIG, SD2_VAE_CONFIG, SD2_SCHEDULER_CONFIG,
        (TextEncoderSlot("text_encoder", "tokenizer", "CLIPTextModel", OPEN_CLIP_H_TEXT_CONFIG,
                         "cond_stage_model.model.", "open_clip", "!", layers_unused=1),),
        heads_per_level=None, extras=_SD_EXTRAS,
    ),
    "sdxl": PipelineLayout(
        "StableDiffusionXLPipeline", SDXL_FULL_UNET_CONFIG, SDXL_VAE_CONFIG, SDXL_SCHEDULER_CONFIG,
        (TextEncoderSlot("text_encoder", "tokenizer", "CLIPTextModel", CLIP_L_CONFIG,
                         "conditioner.embedders.0.transformer.text_model.", "transformers", "<|endoftext|>"),
         TextEncoderSlot("text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection", CLIP_BIGG_TEXT_CONFIG,
                         "conditioner.embedders.1.model.", "open_clip", "!")),
        heads_per_level=None, extras={"force_zeros_for_empty_prompt": True},
    ),
}

Shapes = Mapping[str, Sequence[int]]


def detect_family(keys: Iterable[str]) -> str:
    """``"sd1"``, ``"sd2"`` or ``"sdxl"`` from a single-file checkpoint's tensor names (its text encoder's
    prefix); :class:`UnsupportedCheckpointError` for anything else (an SDXL refiner included)."""
    keys = list(keys)
    for family, prefix in FAMILY_MARKERS.items():
        if any(k.startswith(prefix) for k in keys):
            if family not in PIPELINE_LAYOUTS:
                raise UnsupportedCheckpointError(
                    "an SDXL refiner checkpoint (only OpenCLIP bigG under conditioner.embedders.0): PromptWeave "
                    "loads SD1.x, SD2.x and SDXL base single files; load the refiner's diffusers folder instead"
                )
            return family
    raise UnsupportedCheckpointError(
        "not a Stable Diffusion 1.x / 2.x / XL single-file checkpoint (no text encoder under "
        + ", ".join(FAMILY_MARKERS.values()) + ")"
    )


def read_checkpoint_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in a safetensors file, from its header (no tensor is read)."""
    from safetensors import safe_open

    from .artifacts import read_safetensors_keys

    read_safetensors_keys(path)  # a missing or broken file is an ArtifactError naming it
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}


def _shape(shapes: Shapes, key: str) -> tuple[int, ...]:
    if key not in shapes:
        raise UnsupportedCheckpointError(f"the checkpoint has no {key!r}: not the layout of its family")
    return tuple(int(d) for d in shapes[key])


def _count(shapes: Shapes, prefix: str) -> int:
    """How many numbered children ``prefix<N>.`` the checkpoint has (the highest N + 1)."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
    found = {int(m.group(1)) for key in shapes if (m := pattern.match(key))}
    return max(found) + 1 if found else 0


def _heads(width: int, what: str) -> int:
    if width % HEAD_WIDTH or width < HEAD_WIDTH:
        raise UnsupportedCheckpointError(f"{what} is {width} wide, not a multiple of {HEAD_WIDTH}: its attention "
                                         "head count is not known")
    return width // HEAD_WIDTH


def text_config_from_shapes(slot: TextEncoderSlot, shapes: Shapes) -> dict[str, object]:
    """``slot``'s transformers ``CLIPTextConfig`` with the sizes the checkpoint's tensors give."""
    p = slot.prefix
    if slot.layout == "transformers":
        vocab, width = _shape(shapes, f"{p}embeddings.token_embedding.weight")
        positions = _shape(shapes, f"{p}embeddings.position_embedding.weight")[0]
        layers = _count(shapes, f"{p}encoder.layers.")
        mlp = _shape(shapes, f"{p}encoder.layers.0.mlp.fc1.weight")[0]
        projection = width  # CLIP-L's text tower comes without its projection in SD files
    else:
        vocab, width = _shape(shapes, f"{p}token_embedding.weight")
        positions = _shape(shapes, f"{p}positional_embedding")[0]
        layers = _count(shapes, f"{p}transformer.resblocks.")
        mlp = _shape(shapes, f"{p}transformer.resblocks.0.mlp.c_fc.weight")[0]
        projection = _shape(shapes, f"{p}text_projection")[1] if f"{p}text_projection" in shapes else width
    if layers <= slot.layers_unused:
        raise UnsupportedCheckpointError(f"the checkpoint's {slot.name} ({p}*) has {layers} layers")
    return {**slot.config, "vocab_size": vocab, "hidden_size": width, "intermediate_size": mlp,
            "num_hidden_layers": layers - slot.layers_unused, "num_attention_heads": _heads(width, slot.name),
            "max_position_embeddings": positions, "projection_dim": projection}


def unet_config_from_shapes(
    layout: PipelineLayout, shapes: Shapes, pooled_width: int | None = None
) -> dict[str, object]:
    """The family's U-Net config with the sizes the checkpoint's LDM-layout tensors give: levels, blocks per
    level, widths, which levels attend, transformer depth per level, context width, projection kind and (SDXL,
    ``pooled_width`` from the second text encoder) the width of each size/crop id's embedding."""
    p = UNET_PREFIX
    width, in_channels = _shape(shapes, f"{p}input_blocks.0.0.weight")[:2]
    if in_channels != layout.unet["in_channels"]:
        raise UnsupportedCheckpointError(
            f"the U-Net takes {in_channels} input channels, not {layout.unet['in_channels']}: an inpainting, depth "
            "or instruct-pix2pix model; load_pipeline reads text-to-image checkpoints (their diffusers folder loads "
            "in the matching diffusers pipeline)"
        )
    blocks = _count(shapes, f"{p}input_blocks.")
    downsamplers = sorted(i for i in range(blocks) if f"{p}input_blocks.{i}.0.op.weight" in shapes)
    per_level = (downsamplers[0] - 1) if downsamplers else blocks - 1
    levels = blocks // (per_level + 1) if per_level > 0 else 0
    if levels == 0 or blocks != levels * (per_level + 1):
        raise UnsupportedCheckpointError(f"the U-Net's {blocks} input blocks do not form levels of equal depth")
    channels, depths = [], []
    for level in range(levels):
        first = 1 + level * (per_level + 1)
        channels.append(_shape(shapes, f"{p}input_blocks.{first}.0.out_layers.3.weight")[0])
        depths.append(_count(shapes, f"{p}input_blocks.{first}.1.transformer_blocks."))
    attending = [d > 0 for d in depths]
    if not any(attending):
        raise UnsupportedCheckpointError("the U-Net has no cross-attention")
    first_attention = 1 + attending.index(True) * (per_level + 1)
    attention = f"{p}input_blocks.{first_attention}.1."
    config = {
        **layout.unet,
        "in_channels": in_channels,
        "out_channels": _shape(shapes, f"{p}out.2.weight")[0],
        "block_out_channels": tuple(channels),
        "layers_per_block": per_level,
        "down_block_types": tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attending),
        "up_block_types": tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attending)),
        "cross_attention_dim": _shape(shapes, f"{attention}transformer_blocks.0.attn2.to_k.weight")[1],
        "use_linear_projection": len(_shape(shapes, f"{attention}proj_in.weight")) == 2,
        "attention_head_dim": layout.heads_per_level or tuple(_heads(c, "a U-Net level") for c in channels),
    }
    if width != channels[0]:
        raise UnsupportedCheckpointError(f"the U-Net's input conv gives {width} channels, its first level "
                                         f"{channels[0]}")
    if len({d for d in depths if d}) > 1 or "transformer_layers_per_block" in layout.unet:
        config["transformer_layers_per_block"] = tuple(d or 1 for d in depths)
    if layout.unet.get("addition_embed_type") == "text_time":
        inputs = _shape(shapes, f"{p}label_emb.0.0.weight")[1]
        ids = inputs - (pooled_width or 0)
        if pooled_width is None or ids <= 0 or ids % 6:
            raise UnsupportedCheckpointError(f"the U-Net's added embedding takes {inputs} inputs: not the pooled "
                                             f"embedding ({pooled_width}) plus six size/crop ids")
        config["projection_class_embeddings_input_dim"] = inputs
        config["addition_time_embed_dim"] = ids // 6
    return config


def _write_json(path: Path, data: Mapping[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def write_pipeline_config(
    family: str,
    folder: str | os.PathLike[str],
    shapes: Shapes | None = None,
    prediction_type: str | None = None,
) -> Path:
    """Write the configs (no weights) of ``family``'s diffusers pipeline (``"sd1"``, ``"sd2"``: a
    ``StableDiffusionPipeline``; ``"sdxl"``: a ``StableDiffusionXLPipeline``) into ``folder``: what
    ``from_single_file(config=folder)`` reads instead of the hub. With the checkpoint's ``shapes``
    (:func:`read_checkpoint_shapes`) the U-Net and text encoders get the checkpoint's sizes, else the published
    ones. ``prediction_type`` (``"epsilon"`` / ``"v_prediction"``) overrides the family's scheduler."""
    from .tokenizer_files import write_clip_tokenizer_files

    if family not in PIPELINE_LAYOUTS:
        raise UnsupportedCheckpointError(f"no local diffusers config for a {family!r} checkpoint; families: "
                                         + ", ".join(PIPELINE_LAYOUTS))
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, not {prediction_type!r}")
    layout = PIPELINE_LAYOUTS[family]
    folder = Path(folder)
    scheduler = {**layout.scheduler, "prediction_type": prediction_type or layout.scheduler["prediction_type"]}
    index: dict[str, object] = {"_class_name": layout.pipeline,
                                "scheduler": ["diffusers", scheduler["_class_name"]],
                                "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    pooled_width = None
    for slot in layout.text_encoders:
        config = dict(slot.config) if shapes is None else text_config_from_shapes(slot, shapes)
        pooled_width = int(config["projection_dim"])  # the last encoder's projection is SDXL's pooled embedding
        index[slot.name] = ["transformers", slot.model_class]
        index[slot.tokenizer] = ["transformers", "CLIPTokenizer"]
        _write_json(folder / slot.name / "config.json",
                    {"architectures": [slot.model_class], "model_type": "clip_text_model", **config})
        write_clip_tokenizer_files(folder / slot.tokenizer)
        _write_json(folder / slot.tokenizer / "tokenizer_config.json", {
            "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": slot.pad_token,
        })
    unet = dict(layout.unet) if shapes is None else unet_config_from_shapes(layout, shapes, pooled_width)
    _write_json(folder / "model_index.json", {**index, **layout.extras})
    _write_json(folder / "unet" / "config.json", {"_class_name": "UNet2DConditionModel", **unet})
    _write_json(folder / "vae" / "config.json", {"_class_name": "AutoencoderKL", **layout.vae})
    _write_json(folder / "scheduler" / "scheduler_config.json", scheduler)
    return folder
