"""PromptWeave for diffusers users: the five capabilities as plain functions on a ``StableDiffusionPipeline``.

The module is named ``diffusers_api`` (not ``diffusers``) so that it can never shadow the diffusers package when
the repository root is the working directory. Each function is a few lines over :mod:`promptweave.prompt_modules`;
read it to see which library call does the work. A session reads top to bottom::

    from promptweave import diffusers_api as pw

    pipe = pw.load_pipeline("path/to/stable-diffusion-v1-5")      # a local folder; never downloads
    worldclip, worldgen = pw.load_world_models()                    # the backbones shipped with the pack
    clip = pw.load_vlm("clip_l.safetensors", vision="clip_vision_vit_l.safetensors")  # or any CLIP you have

    # 1. prompt inversion (Croitoru et al., CVIU 2024): image -> prompt text -> prompt_embeds -> a new image
    result = pw.invert_images(pw.load_inverter("inverter.safetensors"), images, vlm=worldclip)[0]
    print(pw.caption_folder("my-dataset/", "inverter.safetensors", vlm=worldclip).report())  # <name>.txt per image
    image = pw.generate(pipe, *pw.encode_text(pipe, result["prompt"]))
    name, features = pw.white_box_features(pipe, images)            # the white box: the pipeline's own U-Net

    # learned prompt vectors (CoOp / textual inversion) spliced into the pipeline's text encoder
    image = pw.generate(pipe, pw.learned_prompt_embeds(pipe, "prompt.safetensors", "a photo of <pw-prompt>"))

    # 3. DCAR dual prompts (Wang et al. 2025): rank images, then condition the pipeline
    scores, order = pw.rank_images(worldclip, images, "a dotted crimson star", dual)
    image = pw.generate(pipe, pw.dual_prompt_embeds(pipe, dual, "a dotted crimson star"))

    # 2. IPL (Guo et al., CVPR 2023): adapt the pipeline's U-Net to a text-named domain, as a PEFT LoRA file
    lora = pw.adapt_to_domain(pipe, worldclip, "out/neon.safetensors", prompt="a star",
                              source="a flat drawing", target="a neon sign")
    pipe.load_lora_weights(str(lora))

    # 4. Diff-Prompt (Yan et al., ICLR 2025): referring expression -> mask at the image size -> inpainting
    masks = pw.ground(model, worldclip, images, ["the red star left of the arrow"])

    # 5. RPP (Chen et al. 2024): pretrain (Pretrain Prompts' recipe), then start DCAR from the bundle
    result, bundle = pw.pretrain_bundle(worldclip, source, save_path="rpp.safetensors", teacher=bigger_clip)
    config = pw.DualPromptConfig(init_from="rpp.safetensors")

    # training, with the recipes the ComfyUI training nodes run (same library functions)
    inverter = pw.train_inverter(images, prompts, vlm=worldclip, out="inverter.safetensors")
    dual = pw.train_dual_prompt(worldclip, pw.FDRDSource("pets_test.json", size=worldclip.image_size)).dual
    run = pw.train_diff_prompt(worldclip, pw.read_refcoco("instances.json", "refs.json", "images/", size=64),
                               bundle_path="grounder.safetensors")

Images are PIL images or float tensors ``[B, 3, H, W]`` in 0..1 (:func:`to_tensor` / :func:`to_pil` convert).
The runnable scripts in ``diffusers_examples/`` use these functions end to end, one per capability.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from .prompt_modules.adaptation import IPLConfig, run_adaptation, save_lora, sd_generator_from_diffusers
from .prompt_modules.core.learned_prompt import LearnedPrompt, LearnedPromptConfig, encode_prompt_for_pipeline
from .prompt_modules.core.vlm import VisionLanguageModel, load_vlm
from .prompt_modules.diff_prompt import (
    DiffPrompt,
    FolderGroundingSource,
    load_diff_prompt,
    read_grounding_jsonl,
    read_refcoco,
    train_diff_prompt,
)
from .prompt_modules.dual_prompt import (
    DualPrompt,
    DualPromptConfig,
    FDRDSource,
    FolderSource,
    load_dual_prompt,
    rank_images,
    rank_texts,
    save_dual_prompt,
    train_dual_prompt,
)
from .prompt_modules.inversion import (
    PIXELS,
    CaptionSummary,
    MissingEncoderInput,
    PromptInverter,
    UNetEncoder,
    encoder_image_size,
    image_features,
    load_inverter,
    save_inverter,
    train_inverter_on_prompts,
)
from .prompt_modules.inversion import caption as inversion_caption
from .prompt_modules.inversion.encoders import SD_IMAGE_SIZE
from .prompt_modules.pretraining import RPPConfig, load_pretrained_prompts, pretrain_bundle, pretrain_prompts
from .prompt_modules.world.models import load_world_models, load_worldclip

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

ImagesLike = Image.Image | Sequence[Image.Image] | torch.Tensor

__all__ = [
    "DualPromptConfig",
    "FDRDSource",
    "FolderGroundingSource",
    "FolderSource",
    "IPLConfig",
    "RPPConfig",
    "adapt_to_domain",
    "caption_folder",
    "dual_prompt_embeds",
    "encode_text",
    "generate",
    "ground",
    "invert_images",
    "learned_prompt_embeds",
    "load_diff_prompt",
    "load_dual_prompt",
    "load_inverter",
    "load_pipeline",
    "load_pretrained_prompts",
    "load_vlm",
    "load_world_models",
    "load_worldclip",
    "new_learned_prompt",
    "pretrain_bundle",
    "pretrain_prompts",
    "rank_images",
    "rank_texts",
    "read_grounding_jsonl",
    "read_refcoco",
    "save_dual_prompt",
    "to_pil",
    "to_tensor",
    "train_diff_prompt",
    "train_dual_prompt",
    "train_inverter",
    "white_box_features",
]


# ----- pipeline and images ----------------------------------------------------------------------------------
#: The diffusers pipelines :func:`load_pipeline` reads: SD1.x / SD2.x and SDXL (base).
PIPELINE_CLASSES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")


def load_pipeline(
    path: str | os.PathLike[str],
    *,
    torch_dtype: torch.dtype | None = None,
    prediction_type: str | None = None,
) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """A local Stable Diffusion pipeline, never downloaded: a diffusers folder (SD1.x / SD2.x
    ``StableDiffusionPipeline`` or SDXL ``StableDiffusionXLPipeline``, by its ``model_index.json``) or a single-file
    ``.safetensors`` checkpoint of SD1.x, SD2.x or SDXL base (``from_single_file`` with the configs written locally
    at the checkpoint's own sizes, :func:`~.prompt_modules.core.sd_models.write_pipeline_config`). Pickled
    ``.ckpt`` files are refused.

    ``prediction_type`` (``"epsilon"`` or ``"v_prediction"``) sets what the scheduler reads the U-Net's output
    as. The single file does not say: by default SD1.x and SDXL are epsilon and SD2.x is v-prediction (the 768-v
    models 2.0-v and 2.1, as diffusers' own single-file loader assumes); pass ``"epsilon"`` for SD 2.x 512-base
    files. For a folder it overrides the scheduler config the folder ships."""
    import json
    import tempfile

    import diffusers

    from .prompt_modules.core.sd_models import (
        PIPELINE_LAYOUTS,
        PREDICTION_TYPES,
        detect_family,
        read_checkpoint_shapes,
        write_pipeline_config,
    )

    if path is None:
        raise ValueError(
            "load_pipeline needs the local folder of a diffusers pipeline (the one holding model_index.json) or a "
            "single-file .safetensors checkpoint; tests and examples build the tiny random-weight one with "
            "promptweave.testing.tiny.tiny_pipeline()"
        )
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, not {prediction_type!r}")
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"{path} is not a .safetensors file: PromptWeave reads no pickles (.ckpt, .pt, .bin); "
                             "convert the checkpoint to safetensors first")
        shapes = read_checkpoint_shapes(path)
        family = detect_family(shapes)
        name = PIPELINE_LAYOUTS[family].pipeline
        extra = {"safety_checker": None, "requires_safety_checker": False} if name == "StableDiffusionPipeline" else {}
        with tempfile.TemporaryDirectory(prefix="pw-sd-config-") as config:
            write_pipeline_config(family, config, shapes=shapes, prediction_type=prediction_type)
            return getattr(diffusers, name).from_single_file(
                str(path), config=config, local_files_only=True, torch_dtype=torch_dtype, **extra
            )
    index = path / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"no diffusers pipeline folder at {path}: pass the folder that holds model_index.json "
                                "or a single-file .safetensors checkpoint")
    name = json.loads(index.read_text()).get("_class_name", "")
    if name not in PIPELINE_CLASSES:
        raise ValueError(f"{index} describes a {name or 'pipeline of no class'}; PromptWeave runs on "
                         f"{', '.join(PIPELINE_CLASSES)}")
    pipe = getattr(diffusers, name).from_pretrained(str(path), local_files_only=True, torch_dtype=torch_dtype)
    if prediction_type is not None:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=prediction_type)
    return pipe


def is_sdxl(pipe: StableDiffusionPipeline | StableDiffusionXLPipeline) -> bool:
    """Whether ``pipe``'s U-Net takes SDXL's added conditioning (pooled text embedding + size ids)."""
    return getattr(pipe.unet.config, "addition_embed_type", None) == "text_time"


def to_tensor(images: ImagesLike, size: int | None = None) -> torch.Tensor:
    """PIL image(s) or a ``[B, 3, H, W]`` tensor -> float ``[B, 3, H, W]`` in 0..1 (RGB; resized to ``size``)."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        return images.float()
    batch = [images] if isinstance(images, Image.Image) else list(images)
    if not batch:
        raise ValueError("no images given")
    arrays = []
    for image in batch:
        image = image.convert("RGB")
        if size is not None:
            image = image.resize((size, size), Image.BICUBIC)
        arrays.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(arrays)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """``[B, 3, H, W]`` (or ``[3, H, W]``) in 0..1 -> RGB PIL images."""
    batch = images[None] if images.ndim == 3 else images
    arrays = (batch.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round()
    return [Image.fromarray(a.astype(np.uint8)) for a in arrays]


def encode_text(pipe: StableDiffusionPipeline, text: str, negative: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """``(prompt_embeds, negative_prompt_embeds)`` of ``text`` from the pipeline's own text encoder."""
    return pipe.encode_prompt(text, pipe.device, 1, True, negative)


def generate(
    pipe: StableDiffusionPipeline,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None = None,
    *,
    size: int | None = None,
    steps: int = 25,
    seed: int = 0,
    **pipeline_kwargs: Any,
) -> Image.Image:
    """One image from ``prompt_embeds`` (negative: the empty prompt unless given); ``size`` defaults to the
    pipeline's native side (512 for SD1.5)."""
    if negative_prompt_embeds is None:
        negative_prompt_embeds, _ = pipe.encode_prompt("", pipe.device, 1, False)
    side = size or pipe.unet.config.sample_size * pipe.vae_scale_factor
    return pipe(
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_prompt_embeds,
        num_inference_steps=steps,
        height=side,
        width=side,
        generator=torch.Generator().manual_seed(seed),
        **pipeline_kwargs,
    ).images[0]


# ----- learned prompts (CoOp-style vectors; the file is also a textual-inversion embedding) ----------------
def new_learned_prompt(pipe: StableDiffusionPipeline, init: str, n_ctx: int = 4) -> LearnedPrompt:
    """A fresh :class:`LearnedPrompt` for the pipeline's text encoder, initialised from the tokens of ``init``."""
    table = pipe.text_encoder.get_input_embeddings().weight
    prompt = LearnedPrompt(LearnedPromptConfig(n_ctx=n_ctx, widths={"clip_l": int(table.shape[1])}, backbone="any"))
    ids = pipe.tokenizer(init, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError("init must contain at least one token, e.g. 'a photo of'")
    prompt.init_from_token_embeddings("clip_l", table.detach()[ids].float())
    return prompt


def learned_prompt_embeds(
    pipe: StableDiffusionPipeline, prompt: LearnedPrompt | str | os.PathLike[str], text: str
) -> torch.Tensor:
    """``prompt_embeds`` of ``text`` with the learned vectors at the placeholder (or in front of the text)."""
    if not isinstance(prompt, LearnedPrompt):
        prompt = LearnedPrompt.load(prompt)
    return encode_prompt_for_pipeline(prompt, text, pipe.tokenizer, pipe.text_encoder)


# ----- 1. prompt inversion ----------------------------------------------------------------------------------
def white_box_features(pipe: StableDiffusionPipeline, images: ImagesLike) -> tuple[str, torch.Tensor]:
    """``(backbone name, features)`` of the pipeline's own U-Net encoder (Croitoru et al., sec. 3.2): the VAE
    latent of each image at t=0, the empty prompt as context; train an inverter on them with ``train_inverter``."""
    encoder = UNetEncoder(pipe.unet, pipe.vae)
    context, _ = pipe.encode_prompt("", pipe.device, 1, False)
    pixels = to_tensor(images).to(pipe.device, pipe.vae.dtype)
    return encoder.name, encoder(pixels, context)


def invert_images(
    inverter: PromptInverter | str | os.PathLike[str],
    images: ImagesLike,
    *,
    vlm: VisionLanguageModel | None = None,
    pipe: StableDiffusionPipeline | None = None,
) -> list[dict[str, Any]]:
    """Per image: ``prompt`` (composed text), ``keywords`` [(word, score)], ``nearest`` [(prompt, cosine)] and the
    predicted MiniLM ``embedding`` (Croitoru et al., sec. 3). A ``vlm:*`` inverter needs the VLM it was trained on,
    a white-box ``sd-unet:*`` one the pipeline (:func:`white_box_features`)."""
    if not isinstance(inverter, PromptInverter):
        inverter = load_inverter(inverter)
    return inverter.invert(_inverter_features(inverter, to_tensor(images), vlm, pipe)[1])


def _inverter_features(inverter: PromptInverter, pixels: torch.Tensor, vlm: VisionLanguageModel | None,
                       pipe: StableDiffusionPipeline | None) -> tuple[str, torch.Tensor]:
    """The features of the image encoder ``inverter`` was trained on (a missing or other encoder is an error)."""
    unet_features = (lambda images: white_box_features(pipe, images)) if pipe is not None else None
    try:
        name, features = image_features(inverter.backbone, pixels, vlm=vlm, unet_features=unet_features)
    except MissingEncoderInput as exc:
        needs = _INVERT_NEEDS.get(exc.input, f"invert_images computes no {exc.kind} features (no {exc.input} input)")
        raise ValueError(f"this inverter reads '{inverter.backbone}' features: {needs}") from None
    inverter.check_backbone(name)
    return name, features


def caption_folder(
    folder: str | os.PathLike[str],
    inverter: PromptInverter | str | os.PathLike[str],
    *,
    vlm: VisionLanguageModel | None = None,
    pipe: StableDiffusionPipeline | None = None,
    **options: Any,
) -> CaptionSummary:
    """Write ``<name>.txt`` beside every image of ``folder`` and its sub-folders with the prompt the inverter
    predicts (Croitoru et al., sec. 3), as ComfyUI's Caption Folder node and ``python -m promptweave.caption`` do:
    :func:`~promptweave.prompt_modules.inversion.caption.caption_folder` (``options``: ``recursive``, ``content``
    prompt/keywords/both, ``trigger``, ``trigger_position``, ``existing`` skip/overwrite/prepend/append,
    ``manifest`` csv/jsonl, ``batch_size``, ``top_k``, ``threshold``, ``use_dakl``, ``dry_run``, ``progress``).
    Encoders as :func:`invert_images`; images are read at the encoder's resolution. Returns the summary (written,
    skipped, failed files: ``summary.report()``)."""
    if not isinstance(inverter, PromptInverter):
        inverter = load_inverter(inverter)
    sd_side = pipe.unet.config.sample_size * pipe.vae_scale_factor if pipe is not None else SD_IMAGE_SIZE
    size = encoder_image_size(inverter.backbone, vlm=vlm, sd_size=sd_side)
    return inversion_caption.caption_folder(
        folder, inverter, lambda pixels: _inverter_features(inverter, pixels, vlm, pipe), size=size, **options
    )


def train_inverter(
    images: ImagesLike,
    prompts: Sequence[str],
    *,
    vlm: VisionLanguageModel | None = None,
    pipe: StableDiffusionPipeline | None = None,
    out: str | os.PathLike[str] | None = None,
    **recipe: Any,
) -> PromptInverter:
    """Train a prompt inverter on images and their prompts (Croitoru et al., sec. 3), the recipe of ComfyUI's
    Train Prompt Inverter (:func:`~promptweave.prompt_modules.inversion.train_inverter_on_prompts`; ``recipe``:
    ``vocab_size``, ``epochs``, ``batch_size``, ``lr``, ``hidden_width``, ``curriculum``, ``seed``, checkpointing).

    The image encoder: ``vlm``'s image features when given, else the pipeline's own U-Net (the white box,
    :func:`white_box_features`) when ``pipe`` is given, else a trainable pixel encoder. Saved to ``out`` if given.
    """
    pixels = to_tensor(images)
    if vlm is not None:
        name, inputs = image_features(f"vlm:{vlm.name}", pixels, vlm=vlm)
    elif pipe is not None:
        name, inputs = white_box_features(pipe, pixels)
    else:
        name, inputs = PIXELS, pixels
    inverter = train_inverter_on_prompts(inputs.float().cpu(), list(prompts), name, **recipe).inverter
    if out is not None:
        save_inverter(inverter, out)
    return inverter


#: What :func:`invert_images` asks for when an image encoder's input is missing (``MissingEncoderInput.input``).
_INVERT_NEEDS = {"vlm": "pass vlm= (the model it was trained on)", "unet_features": "pass pipe= (its U-Net and VAE)"}


# ----- 3. DCAR dual prompts ---------------------------------------------------------------------------------
def dual_prompt_embeds(
    pipe: StableDiffusionPipeline,
    dual: DualPrompt | str | os.PathLike[str],
    text: str,
    vlm: VisionLanguageModel | None = None,
) -> torch.Tensor:
    """``prompt_embeds`` of ``text`` with the dual prompt's text context mapped onto the pipeline's token table."""
    if not isinstance(dual, DualPrompt):
        dual = load_dual_prompt(dual, vlm)
    tables = {"clip_l": pipe.text_encoder.get_input_embeddings().weight}
    return encode_prompt_for_pipeline(dual.sd_learned_prompt(tables), text, pipe.tokenizer, pipe.text_encoder)


# ----- 2. IPL domain adaptation -----------------------------------------------------------------------------
def adapt_to_domain(
    pipe: StableDiffusionPipeline,
    vlm: VisionLanguageModel,
    out: str | os.PathLike[str],
    *,
    prompt: str,
    source: str,
    target: str,
    config: IPLConfig | None = None,
    image_size: int | None = None,
    sample_steps: int = 4,
) -> Path:
    """Adapt a frozen copy of the pipeline's U-Net from domain ``source`` to ``target`` with image-specific
    prompts (IPL, Guo et al. 2023, eq. 3-5) and write the LoRA at ``out`` in diffusers format; load it with
    ``pipe.load_lora_weights(path)``. The pipeline itself is left unchanged. The scheduler's ``prediction_type``
    (epsilon or SD2.x's v) and noise schedule are honoured; an fp16 / bf16 U-Net stays in its dtype while the
    LoRA trains in fp32. SDXL pipelines adapt with their added conditioning (pooled embedding, size ids).
    ``config`` overrides the defaults (its source/target texts are replaced by ``source``/``target``)."""
    side = image_size or pipe.unet.config.sample_size * pipe.vae_scale_factor
    added_cond = None
    if is_sdxl(pipe):  # both text encoders' tokens, the pooled embedding and (size, crop, target size) ids
        context, _, pooled, _ = pipe.encode_prompt(prompt, device=pipe.device, do_classifier_free_guidance=False)
        time_ids = torch.tensor([[side, side, 0, 0, side, side]], dtype=pooled.dtype, device=pooled.device)
        added_cond = {"text_embeds": pooled, "time_ids": time_ids}
    else:
        context, _ = pipe.encode_prompt(prompt, pipe.device, 1, False)
    scheduler = pipe.scheduler
    generator = sd_generator_from_diffusers(
        pipe.unet, pipe.vae, context, image_size=side, sample_steps=sample_steps,
        prediction_type=getattr(scheduler.config, "prediction_type", "epsilon"),
        alphas_cumprod=getattr(scheduler, "alphas_cumprod", None), added_cond=added_cond,
    )
    config = IPLConfig(**{**(config.to_dict() if config else {}), "source_text": source, "target_text": target})
    result = run_adaptation(generator, vlm, config)
    return save_lora(result.lora, out, fmt="diffusers")


# ----- 4. Diff-Prompt grounding -----------------------------------------------------------------------------
@torch.no_grad()
def ground(
    model: DiffPrompt | str | os.PathLike[str],
    vlm: VisionLanguageModel,
    images: ImagesLike,
    texts: Sequence[str],
    *,
    threshold: float = 0.5,
    seed: int = 0,
) -> list[Image.Image]:
    """One ``L`` mask per image (255 inside) at the image's size for its referring expression; where the mask head
    finds nothing above ``threshold`` the predicted box is used instead (Diff-Prompt, Yan et al. 2025)."""
    if not isinstance(model, DiffPrompt):
        model = load_diff_prompt(model, vlm)
    pixels = to_tensor(images)
    if len(texts) != pixels.shape[0]:
        raise ValueError(f"{pixels.shape[0]} images but {len(texts)} texts: give one expression per image")
    out = model(vlm, pixels, list(texts), generator=torch.Generator().manual_seed(seed))
    h, w = pixels.shape[-2:]
    masks, boxes = out.masks_at(h, w, threshold), out.box_masks_at(h, w)
    picked = [m if m.any() else b for m, b in zip(masks, boxes, strict=True)]
    return [Image.fromarray((m.numpy() * 255).astype(np.uint8), mode="L") for m in picked]
