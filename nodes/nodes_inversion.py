"""Prompt inversion nodes (Reverse Stable Diffusion): image -> prompt text, keywords, embedding, conditioning."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from comfy_api.latest import io

from ..prompt_modules.core.artifacts import (
    SHIPPED_WEIGHTS_DIR,
    ArtifactError,
    ConfigError,
    UnsafeNameError,
    artifact_method,
    safe_child_path,
)
from ..prompt_modules.core.data import files_fingerprint
from ..prompt_modules.inversion import (
    CAPTION_CONTENTS,
    EXISTING_MODES,
    MANIFEST_FORMATS,
    TRIGGER_POSITIONS,
    LDMUNetEncoder,
    MissingEncoderInput,
    UnknownImageEncoder,
    caption_folder,
    encoder_image_size,
    encoder_kind,
    image_features,
    load_inverter,
    load_pairs,
    loss_curve_image,
    save_inverter,
    train_inverter_on_prompts,
)
from ._common import (
    NodeInputError,
    TrainingProgress,
    check_inputs,
    checkpointed_run,
    model_files,
    output_model_path,
    resolve_model_file,
    rgb_batch,
    run_checkpoint,
    sd_unet,
    tensors_key,
)
from ._types import PromptEmbeddingType, PromptInverterType, VLMType, WorldGenType

SHIPPED_DIR = SHIPPED_WEIGHTS_DIR
SHIPPED_PREFIX = "inverter-"
BACKBONES = ("vlm", "pixels", "clip_vision", "worldgen", "sd_unet")


def _inverter_files() -> list[str]:
    """Shipped inverters (``weights/inverter-*.safetensors``) and prompt inverters in models/promptweave."""
    names = sorted(p.name for p in SHIPPED_DIR.glob(f"{SHIPPED_PREFIX}*.safetensors"))
    for name in model_files():
        try:
            path = resolve_model_file("PWLoadPromptInverter", "inverter_name", name)
        except (ValueError, OSError):
            continue
        if artifact_method(path) == "prompt_inversion" and name not in names:  # never raises for a file's content
            names.append(name)
    return names


def _images_bchw(node: str, image, input_name: str = "image") -> torch.Tensor:
    """ComfyUI IMAGE ``[B, H, W, 3]`` -> float ``[B, 3, H, W]``; RGBA and grayscale are refused."""
    return rgb_batch(node, input_name, image, alpha=False)


def _sd_unet_encoder(node: str, model, vae, clip) -> LDMUNetEncoder:
    """The white-box encoder on a ComfyUI SD1.x/SD2.x checkpoint: its U-Net's encoder half on the VAE latent at
    t=0, with the empty prompt's CLIP encoding as context (Prompt Inversion has no caption either)."""
    import comfy.model_management

    for name, value, output in (("model", model, "MODEL"), ("vae", vae, "VAE"), ("clip", clip, "CLIP")):
        if value is None:
            raise NodeInputError(node, name, f"the white-box 'sd_unet' encoder needs the checkpoint's {output}",
                                 f"connect the {output} output of Load Checkpoint")
    base, unet = sd_unet(node, model)
    latent_channels = getattr(base.latent_format, "latent_channels", 4)
    if getattr(unet, "in_channels", latent_channels) != latent_channels:
        raise NodeInputError(node, "model", f"the U-Net takes {unet.in_channels} input channels, not the VAE's "
                             f"{latent_channels} (an inpainting checkpoint?)", "use a text-to-image checkpoint")
    comfy.model_management.load_models_gpu([model])  # applies any patches (LoRAs) to the weights
    context = clip.encode_from_tokens_scheduled(clip.tokenize(""))[0][0]

    def to_latents(images: torch.Tensor) -> torch.Tensor:
        return base.process_latent_in(vae.encode(images.permute(0, 2, 3, 1)).float())

    try:
        return LDMUNetEncoder(unet, int(context.shape[-1]), to_latents=to_latents, context=context)
    except ValueError as exc:
        raise NodeInputError(node, "model", str(exc), "use an SD1.x or SD2.x checkpoint") from None


def _dataset_size(backbone: str, vlm, clip_vision, worldgen) -> int:
    """The side a dataset folder's images are read at: the chosen encoder's own resolution
    (:func:`encoder_image_size`: the VLM's ``image_size``, CLIP vision's, WorldGen's, the pixel CNN's, SD's 512), so
    training and captioning see the images inference sees; nothing is 64 px unless the model is."""
    vision_size = None if clip_vision is None else int(getattr(clip_vision, "image_size", 224))
    return encoder_image_size(backbone, vlm=vlm, clip_vision_size=vision_size, worldgen=worldgen)


#: How to connect what an image encoder is missing (MissingEncoderInput.kind -> fix).
_CONNECT = {
    "vlm": "connect WorldCLIP (Load World Models) or the VLM the inverter was trained on",
    "clip_vision": "connect Load CLIP Vision",
    "worldgen": "connect both outputs of Load World Models",
}


def _features(node: str, kind: str, images: torch.Tensor, vlm, clip_vision, worldgen,
              captions: list[str] | None = None, model=None, vae=None, clip=None) -> tuple[str, torch.Tensor]:
    """``(backbone name, features or pixels)`` for the image encoder ``kind`` (:func:`image_features`), with the
    ComfyUI encoders passed in: CLIP vision's ``encode_image`` and the SD U-Net built from model, vae and clip."""

    def clip_vision_embeds(pixels: torch.Tensor) -> torch.Tensor:
        return clip_vision.encode_image(pixels.permute(0, 2, 3, 1))["image_embeds"]

    def sd_unet_features(pixels: torch.Tensor) -> tuple[str, torch.Tensor]:
        encoder = _sd_unet_encoder(node, model, vae, clip)
        return encoder.name, encoder(pixels)

    embeds = clip_vision_embeds if clip_vision is not None else None
    try:
        return image_features(kind, images, vlm=vlm, clip_vision=embeds, worldgen=worldgen,
                              unet_features=sd_unet_features, captions=captions)
    except MissingEncoderInput as exc:
        raise NodeInputError(node, exc.input, str(exc), _CONNECT[exc.kind]) from None
    except UnknownImageEncoder:
        raise NodeInputError(node, "inverter", f"image encoder '{kind}' is not available in ComfyUI",
                             "use an inverter trained on pixels, a VLM, CLIP vision, WorldGen or an SD U-Net") from None


def _inverter_features(node: str, inverter, images: torch.Tensor, vlm, clip_vision, worldgen, model, vae, clip
                       ) -> tuple[str, torch.Tensor]:
    """:func:`_features` of the encoder the inverter was trained on; another connected encoder is an error."""
    name, inputs = _features(node, inverter.backbone, images, vlm, clip_vision, worldgen, model=model, vae=vae,
                             clip=clip)
    if name != inverter.backbone:
        fix = "connect the encoder the inverter was trained on"
        if inverter.backbone == "worldgen":  # saved before the WorldGen encoder's name held a weights fingerprint
            fix = "retrain it (it does not record which WorldGen weights it was trained on)"
        raise NodeInputError(node, "inverter", f"the inverter was trained on '{inverter.backbone}', the "
                             f"connected encoder is '{name}'", fix)
    return name, inputs


class LoadPromptInverter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PWLoadPromptInverter",
            display_name="Load Prompt Inverter",
            category="PromptWeave/inversion",
            description="Loads a prompt inverter (image -> prompt embedding, keywords and prompt text) from "
            "ComfyUI/models/promptweave or the ones shipped with the pack.",
            inputs=[io.Combo.Input("inverter_name", options=_inverter_files(),
                                   tooltip="A prompt inverter .safetensors (trained by Train Prompt Inverter).")],
            outputs=[PromptInverterType.Output(display_name="inverter", tooltip="The prompt inverter.")],
        )

    @classmethod
    @check_inputs
    def execute(cls, inverter_name: str) -> io.NodeOutput:
        shipped = SHIPPED_DIR / inverter_name
        if inverter_name.startswith(SHIPPED_PREFIX) and shipped.is_file():
            path = str(shipped)
        else:
            path = resolve_model_file("PWLoadPromptInverter", "inverter_name", inverter_name)
        try:
            inverter = load_inverter(path)
        except ArtifactError as exc:
            raise NodeInputError("PWLoadPromptInverter", "inverter_name", str(exc),
                                 "pick a prompt inverter file (written by Train Prompt Inverter)") from None
        return io.NodeOutput(inverter)


def _encoder_inputs() -> list:
    """The optional image-encoder inputs every inverting node offers, in this order (saved workflows rely on it)."""
    return [
        VLMType.Input("vlm", optional=True, tooltip="Image encoder for inverters trained on a VLM (e.g. WorldCLIP)."),
        io.ClipVision.Input("clip_vision", optional=True,
                            tooltip="Image encoder for inverters trained on CLIP vision features."),
        WorldGenType.Input("worldgen", optional=True,
                           tooltip="For white-box inverters trained on WorldGen's denoiser."),
    ]


class PromptInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PWPromptInversion",
            display_name="Prompt Inversion",
            category="PromptWeave/inversion",
            description="Predicts the prompt of each image (Reverse Stable Diffusion, Croitoru et al. 2023): its "
            "sentence embedding, keywords with calibrated scores, the nearest known prompts composed into a prompt "
            "string, and (with a CLIP) the conditioning of that prompt.",
            inputs=[
                io.Image.Input("image", tooltip="RGB images; one prompt per image."),
                PromptInverterType.Input("inverter", tooltip="From Load Prompt Inverter or Train Prompt Inverter."),
                io.Clip.Input("clip", optional=True, tooltip="Text encoder for the conditioning output (optional)."),
                *_encoder_inputs(),
                io.Int.Input("top_k", default=8, min=1, max=100, tooltip="Number of keywords per image."),
                io.Float.Input("threshold", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Keywords scoring at least this are added to the composed prompt."),
                io.Boolean.Input("use_dakl", default=True,
                                 tooltip="Apply the kernel refinement (DAKL) if the inverter has one."),
                io.Model.Input("model", optional=True,
                               tooltip="For white-box inverters trained on an SD checkpoint's U-Net (with vae and "
                               "clip)."),
                io.Vae.Input("vae", optional=True, tooltip="The checkpoint's VAE, for white-box SD inverters."),
            ],
            outputs=[
                io.String.Output(display_name="prompt", tooltip="Composed prompt per image, one per line."),
                io.String.Output(display_name="keywords", tooltip="Keywords with scores per image, one line each."),
                PromptEmbeddingType.Output(display_name="embedding",
                                           tooltip="Predicted MiniLM prompt embeddings [B, 384]."),
                io.Conditioning.Output(display_name="conditioning",
                                       tooltip="The composed prompts encoded with the CLIP (batch = images)."),
            ],
        )

    @classmethod
    @check_inputs
    def execute(cls, image, inverter, clip=None, vlm=None, clip_vision=None, worldgen=None, top_k: int = 8,
                threshold: float = 0.5, use_dakl: bool = True, model=None, vae=None) -> io.NodeOutput:
        node = "PWPromptInversion"
        images = _images_bchw(node, image)
        name, inputs = _inverter_features(node, inverter, images, vlm, clip_vision, worldgen, model, vae, clip)
        results = inverter.invert(inputs, top_k=top_k, threshold=threshold, use_dakl=use_dakl)
        prompts = [r["prompt"] for r in results]
        kw_lines = [", ".join(f"{w}:{s:.2f}" for w, s in r["keywords"]) for r in results]
        embedding = torch.stack([r["embedding"] for r in results])
        conditioning = None
        if clip is not None:
            conds = [clip.encode_from_tokens_scheduled(clip.tokenize(p or " ")) for p in prompts]
            conditioning = [[torch.cat([c[0][0] for c in conds]),
                             {**conds[0][0][1], **_pooled_cat(conds)}]]
        return io.NodeOutput("\n".join(prompts), "\n".join(kw_lines), embedding, conditioning)


def _pooled_cat(conds: list) -> dict:
    pooled = [c[0][1].get("pooled_output") for c in conds]
    return {"pooled_output": torch.cat(pooled)} if all(p is not None for p in pooled) else {}


def _safe_name(node: str, name: str) -> str:
    stem = name.strip().removesuffix(".safetensors")
    if not stem or not re.fullmatch(r"[A-Za-z0-9_.\-]+", stem) or stem.startswith("."):
        raise NodeInputError(node, "filename", f"'{name}' is not a usable file name",
                             "use letters, digits, '-', '_' and '.' only")
    return stem


class TrainPromptInverter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PWTrainPromptInverter",
            display_name="Train Prompt Inverter",
            category="PromptWeave/inversion",
            description="Trains a prompt inverter on image/prompt pairs (a folder of name.png + name.txt, or images "
            "and prompts generated in the graph): MLP head on a frozen image encoder (or a pixel CNN), loss cosine "
            "+ 0.1 BCE(vocabulary) + Huber, curriculum learning against noisy pairs. Saves to "
            "ComfyUI/models/promptweave; resumes from its checkpoint in output/promptweave/checkpoints.",
            is_output_node=True,
            inputs=[
                io.Combo.Input("backbone", options=list(BACKBONES), default="vlm",
                               tooltip="Image encoder: vlm (connect vlm), pixels (trainable CNN), clip_vision "
                               "(connect clip_vision), worldgen (white box: connect worldgen and vlm) or sd_unet "
                               "(white box: connect the checkpoint's model, vae and clip)."),
                io.String.Input("filename", default="my-inverter",
                                tooltip="Name of the .safetensors written to models/promptweave."),
                io.String.Input("dataset_folder", default="", optional=True,
                                tooltip="Folder of image.png + image.txt pairs, or a manifest file (.jsonl, .json, "
                                ".csv, .tsv, .parquet) of (image path, prompt) rows such as DiffusionDB's metadata; "
                                "leave empty to use images/prompts."),
                io.Image.Input("images", optional=True, tooltip="Training images generated in the graph."),
                io.String.Input("prompts", multiline=True, default="", optional=True,
                                tooltip="One prompt per line, one line per image of 'images'."),
                VLMType.Input("vlm", optional=True, tooltip="The VLM image encoder (e.g. WorldCLIP)."),
                io.ClipVision.Input("clip_vision", optional=True, tooltip="A CLIP vision image encoder."),
                WorldGenType.Input("worldgen", optional=True, tooltip="WorldGen, for the white-box encoder."),
                io.Int.Input("vocab_size", default=1000, min=1, max=20000, tooltip="Keyword vocabulary size."),
                io.Int.Input("epochs", default=20, min=1, max=10000, tooltip="Epochs (per curriculum phase)."),
                io.Int.Input("batch_size", default=64, min=1, max=4096, tooltip="Batch size."),
                io.Float.Input("learning_rate", default=1e-3, min=1e-6, max=1.0, step=1e-5,
                               tooltip="AdamW learning rate (cosine decay to 1e-6)."),
                io.Int.Input("hidden_width", default=512, min=8, max=8192, tooltip="Width of the MLP layers."),
                io.Boolean.Input("curriculum", default=True,
                                 tooltip="Curriculum learning (easy pairs first): the paper's remedy for noisy "
                                 "captions."),
                io.Int.Input("checkpoint_every", default=200, min=1, max=100000,
                             tooltip="Steps between resumable checkpoints."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Random seed."),
                io.Model.Input("model", optional=True,
                               tooltip="SD1.x/SD2.x checkpoint MODEL, for the white-box sd_unet encoder."),
                io.Vae.Input("vae", optional=True, tooltip="The checkpoint's VAE, for the sd_unet encoder."),
                io.Clip.Input("clip", optional=True,
                              tooltip="The checkpoint's CLIP (the empty prompt as context), for the sd_unet encoder."),
            ],
            outputs=[
                PromptInverterType.Output(display_name="inverter", tooltip="The trained prompt inverter."),
                io.Image.Output(display_name="loss_curve", tooltip="Training loss per step."),
                io.String.Output(display_name="path", tooltip="Where the inverter was saved."),
            ],
        )

    @classmethod
    @check_inputs
    def execute(cls, backbone: str, filename: str, dataset_folder: str = "", images=None, prompts: str = "",
                vlm=None, clip_vision=None, worldgen=None, vocab_size: int = 1000, epochs: int = 20,
                batch_size: int = 64, learning_rate: float = 1e-3, hidden_width: int = 512, curriculum: bool = True,
                checkpoint_every: int = 200, seed: int = 0, model=None, vae=None, clip=None) -> io.NodeOutput:
        node = "PWTrainPromptInverter"
        stem = _safe_name(node, filename)
        if backbone not in BACKBONES:
            raise NodeInputError(node, "backbone", f"unknown encoder '{backbone}'", f"pick one of {BACKBONES}")
        folder = (dataset_folder or "").strip()
        if folder:
            try:
                size = _dataset_size(backbone, vlm, clip_vision, worldgen)
                pixels, texts = load_pairs(os.path.expanduser(folder), size)
            except ImportError as exc:  # a parquet manifest without pyarrow (or pandas)
                raise NodeInputError(node, "dataset_folder", str(exc), "run `pip install pyarrow` in ComfyUI's "
                                     "Python environment and restart ComfyUI, or convert the manifest to JSONL or "
                                     "CSV") from None
            except (ValueError, OSError) as exc:  # OSError: a path too long, unreadable ...
                raise NodeInputError(node, "dataset_folder", str(exc), _DATASET_FIX) from None
        elif images is not None:
            pixels = _images_bchw(node, images, "images")
            texts = [line.strip() for line in (prompts or "").splitlines() if line.strip()]
            if len(texts) != pixels.shape[0]:
                raise NodeInputError(node, "prompts", f"{len(texts)} prompt lines for {pixels.shape[0]} images",
                                     "write exactly one prompt line per image")
        else:
            raise NodeInputError(node, "dataset_folder", "no training data", "set a dataset folder of image.png + "
                                 "image.txt pairs, or connect images and write their prompts")
        # no captions as WorldGen context: Prompt Inversion has none at inference either (empty caption both ways)
        name, inputs = _features(node, backbone, pixels, vlm, clip_vision, worldgen, model=model, vae=vae, clip=clip)
        target = output_model_path(node, "filename", stem)
        settings = [vocab_size, epochs, batch_size, learning_rate, hidden_width, curriculum, seed]
        ckpt = run_checkpoint(stem, [name, settings, texts, tensors_key({"inputs": inputs})])
        with checkpointed_run(node, "filename", ckpt):
            try:
                result = train_inverter_on_prompts(
                    inputs, texts, name, vocab_size=vocab_size, epochs=epochs, batch_size=batch_size,
                    lr=learning_rate, hidden_width=hidden_width, curriculum=curriculum, seed=seed,
                    checkpoint_path=ckpt, checkpoint_every=checkpoint_every, callback=TrainingProgress(),
                )
            except ConfigError as exc:
                input_name = {"texts": "dataset_folder" if folder else "prompts"}.get(exc.field, exc.field)
                raise NodeInputError(node, input_name, str(exc),
                                     _TRAIN_FIXES.get(exc.field, "change this input")) from None
            except ImportError as exc:
                raise NodeInputError(node, "(MiniLM)", str(exc), "install the packages named above") from None
            except ArtifactError as exc:
                raise NodeInputError(node, "filename", f"the checkpoint {ckpt} does not fit this run: {exc}",
                                     f"delete {ckpt} or choose another filename") from None
            path = save_inverter(result.inverter, target)
        curve = loss_curve_image(result.losses, title="inverter loss").unsqueeze(0)
        return io.NodeOutput(result.inverter, curve, str(path))


_DATASET_FIX = (
    "point it at a folder holding image.png + image.txt pairs, or at a .jsonl / .json / .csv / .tsv / .parquet "
    "manifest with an image column (image, image_name, file_name or path; relative to the manifest's folder) and a "
    "prompt column (prompt, text or caption)"
)
#: The fix a Train Prompt Inverter error suggests, by the recipe's ``ConfigError.field``.
_TRAIN_FIXES = {
    "texts": "give at least two image/prompt pairs with descriptive prompts, one prompt per image",
    "batch_size": "use a batch_size of 2 or more",
}


def _input_subfolder(node: str, folder: str) -> Path:
    """A sub-folder of ComfyUI's input folder: the node writes caption files there, and PromptWeave writes only
    inside ComfyUI's folders (SECURITY.md), so absolute paths and names leaving the folder are refused."""
    import folder_paths

    root = folder_paths.get_input_directory()
    fix = (f"name a sub-folder of ComfyUI's input folder {root}, such as 'my-dataset' or 'datasets/cats' (copy or "
           "move the images there; for a folder elsewhere run `python -m promptweave.caption FOLDER`)")
    try:
        path = safe_child_path(root, folder.strip().rstrip("/"), suffix="")
        if not path.is_dir():
            raise NodeInputError(node, "folder", f"{path} is not a folder", fix)
    except UnsafeNameError as exc:
        raise NodeInputError(node, "folder", str(exc), fix) from None
    except OSError as exc:  # a name too long for the file system ...
        raise NodeInputError(node, "folder", f"cannot open it ({exc.strerror or exc})", fix) from None
    return path


def _one_line(text: str) -> str:
    return " ".join(text.split())


class CaptionFolder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PWCaptionFolder",
            display_name="Caption Folder",
            category="PromptWeave/inversion",
            description="Writes a caption file <name>.txt beside every image of a folder in ComfyUI's input folder "
            "(and its sub-folders), predicted by a prompt inverter: the layout kohya_ss, EveryDream and Train Prompt "
            "Inverter read. Existing captions are skipped, overwritten, or the new caption goes before or after "
            "them; unreadable images are reported and skipped; a re-run resumes.",
            is_output_node=True,
            inputs=[
                io.String.Input("folder", default="", tooltip="A sub-folder of ComfyUI's input folder holding the "
                                "images (PNG, JPEG, WebP, BMP), e.g. 'my-dataset'."),
                PromptInverterType.Input("inverter", tooltip="From Load Prompt Inverter or Train Prompt Inverter."),
                io.Boolean.Input("recursive", default=True, tooltip="Caption the images of sub-folders too."),
                io.Combo.Input("caption", options=list(CAPTION_CONTENTS), default="prompt",
                               tooltip="prompt: the composed prompt; keywords: the confident keywords as "
                               "comma-separated tags; both: the prompt, then the tags it lacks."),
                io.String.Input("trigger_words", default="", tooltip="Words added to every new caption, e.g. a "
                                "LoRA's trigger word (optional)."),
                io.Combo.Input("trigger_position", options=list(TRIGGER_POSITIONS), default="prepend",
                               tooltip="Put the trigger words before or after the caption."),
                io.Combo.Input("existing_captions", options=list(EXISTING_MODES), default="skip",
                               tooltip="For images that have a caption file: skip (keep it; a re-run resumes), "
                               "overwrite, prepend (new caption first) or append (new caption last)."),
                io.Combo.Input("manifest", options=["none", *MANIFEST_FORMATS], default="none",
                               tooltip="Also write captions.csv or captions.jsonl (file_name, text) in the folder."),
                io.Boolean.Input("dry_run", default=False,
                                 tooltip="List what would change in the summary; invert and write nothing."),
                io.Int.Input("batch_size", default=16, min=1, max=1024, tooltip="Images inverted at once."),
                io.Int.Input("top_k", default=8, min=1, max=100, tooltip="Number of keywords per image."),
                io.Float.Input("threshold", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Keywords scoring at least this go into the caption."),
                io.Boolean.Input("use_dakl", default=True,
                                 tooltip="Apply the kernel refinement (DAKL) if the inverter has one."),
                *_encoder_inputs(),
                io.Model.Input("model", optional=True,
                               tooltip="For white-box inverters trained on an SD checkpoint's U-Net (with vae and "
                               "clip)."),
                io.Vae.Input("vae", optional=True, tooltip="The checkpoint's VAE, for white-box SD inverters."),
                io.Clip.Input("clip", optional=True, tooltip="The checkpoint's CLIP, for white-box SD inverters."),
            ],
            outputs=[
                io.String.Output(display_name="captions",
                                 tooltip="The caption of each captioned image, one per line (same order as paths)."),
                io.String.Output(display_name="paths", tooltip="The captioned image files, one per line."),
                io.String.Output(display_name="summary",
                                 tooltip="Written, skipped and failed counts, and each failed file with the reason."),
                io.String.Output(display_name="folder",
                                 tooltip="The folder's full path: connect it to Train Prompt Inverter's "
                                 "dataset_folder."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs) -> str:
        """Run again whenever the folder's files changed (ComfyUI would otherwise reuse the last result)."""
        try:
            return str(files_fingerprint(_input_subfolder("PWCaptionFolder", kwargs.get("folder"))))
        except (OSError, ValueError, AttributeError):  # a bad name: execute reports it
            return ""

    @classmethod
    @check_inputs
    def execute(cls, folder: str, inverter, recursive: bool = True, caption: str = "prompt",
                trigger_words: str = "", trigger_position: str = "prepend", existing_captions: str = "skip",
                manifest: str = "none", dry_run: bool = False, batch_size: int = 16, top_k: int = 8,
                threshold: float = 0.5, use_dakl: bool = True, vlm=None, clip_vision=None, worldgen=None,
                model=None, vae=None, clip=None) -> io.NodeOutput:
        node = "PWCaptionFolder"
        path = _input_subfolder(node, folder)
        try:
            kind = encoder_kind(inverter.backbone)
        except UnknownImageEncoder:
            raise NodeInputError(node, "inverter", f"image encoder '{inverter.backbone}' is not available in "
                                 "ComfyUI", "use an inverter trained on pixels, a VLM, CLIP vision, WorldGen or an SD "
                                 "U-Net") from None
        progress = TrainingProgress()

        def encode(pixels: torch.Tensor) -> tuple[str, torch.Tensor]:
            return _inverter_features(node, inverter, pixels, vlm, clip_vision, worldgen, model, vae, clip)

        try:
            summary = caption_folder(
                path, inverter, encode, size=_dataset_size(kind, vlm, clip_vision, worldgen), recursive=recursive,
                content=caption, trigger=trigger_words, trigger_position=trigger_position,
                existing=existing_captions, manifest=None if manifest == "none" else manifest, batch_size=batch_size,
                top_k=top_k, threshold=threshold, use_dakl=use_dakl, dry_run=dry_run,
                progress=lambda done, total: progress(done, total, 0.0),
            )
        except NodeInputError:
            raise
        except OSError as exc:  # the manifest could not be written (disk full, permissions)
            raise NodeInputError(node, "manifest", str(exc), "free disk space or make the folder writable, or set "
                                 "manifest to none") from None
        except ValueError as exc:  # a folder without images
            raise NodeInputError(node, "folder", str(exc), "put PNG, JPEG or WebP images in it, or turn on "
                                 "recursive for its sub-folders") from None
        done = summary.captioned
        return io.NodeOutput("\n".join(_one_line(r.text) for r in done), "\n".join(str(r.image) for r in done),
                             summary.report(), str(path))


NODES: list[type[io.ComfyNode]] = [LoadPromptInverter, PromptInversion, TrainPromptInverter, CaptionFolder]
