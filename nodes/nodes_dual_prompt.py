"""DCAR dual prompts in ComfyUI: train / load, rank images or texts with a VLM, SD conditioning."""

from __future__ import annotations

import json
import os

import torch
from comfy_api.latest import io

from ..prompt_modules.core.artifacts import ArtifactError, ConfigError
from ..prompt_modules.core.data import files_fingerprint
from ..prompt_modules.core.learned_prompt import COMFY_TO_TI_KEY
from ..prompt_modules.core.plots import loss_curve_image
from ..prompt_modules.core.vlm import VisionLanguageModel, trainable_copy
from ..prompt_modules.dual_prompt import (
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
from ..prompt_modules.world.sources import WorldSource
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
    tensors_key,
    text_lines,
)
from ._types import DualPromptType, PretrainedPromptsType, VLMType
from .nodes_learned_prompt import tokens_with_learned_prompt

CATEGORY = "PromptWeave/dual prompt"
SOURCES = ["world", "fdrd_json", "folder"]


def _check_dual(node: str, dual, vlm: VisionLanguageModel | None = None) -> DualPrompt:
    if vlm is not None:
        try:
            dual.check_vlm(vlm)
        except ArtifactError as exc:
            raise NodeInputError(node, "dual_prompt", str(exc), "train or load a dual prompt for this VLM") from None
    return dual


def _images_bchw(node: str, images: torch.Tensor, input_name: str = "images") -> torch.Tensor:
    return rgb_batch(node, input_name, images)


def _score_report(labels: list[str], scores: torch.Tensor, order: torch.Tensor) -> str:
    return json.dumps([{"rank": r + 1, "index": int(i), "score": round(float(scores[i]), 5), "item": labels[int(i)]}
                       for r, i in enumerate(order)], indent=1)


class LoadDualPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PWLoadDualPrompt",
            display_name="Load Dual Prompt",
            category=CATEGORY,
            description="Loads a DCAR dual prompt (text + image prompts trained for one VLM) from "
            "ComfyUI/models/promptweave.",
            inputs=[io.Combo.Input("prompt_name", options=model_files(),
                                   tooltip="A .safetensors dual prompt written by Train Dual Prompt.")],
            outputs=[DualPromptType.Output(display_name="dual_prompt", tooltip="The DCAR dual prompt.")],
        )

    @classmethod
    @check_inputs
    def execute(cls, prompt_name: str) -> io.NodeOutput:
        path = resolve_model_file("PWLoadDualPrompt", "prompt_name", prompt_name)
        try:
            dual = load_dual_prompt(path)
        except ArtifactError as exc:
            raise NodeInputError("PWLoadDualPrompt", "prompt_name", str(exc),
                                 "pick a dual prompt file written by Train Dual Prompt") from None
        return io.NodeOutput(dual)


class TrainDualPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PWTrainDualPrompt",
            display_name="Train Dual Prompt (DCAR)",
            category=CATEGORY,
            description="Trains DCAR dual prompts (Wang et al. 2025) on a frozen VLM for fine-grained image-text "
            "retrieval: text + image prompts, MI token re-weighting, category-aware hard negatives. Resumes from "
            "its checkpoint when run again with the same settings.",
            inputs=[
                VLMType.Input("vlm", tooltip="The frozen VLM to adapt (e.g. WorldCLIP from Load World Models)."),
                io.Combo.Input("source", options=SOURCES, default="world",
                               tooltip="world: the procedural world's train split; fdrd_json: an FDRD-style JSON "
                               "of {file_name, positive, negative[4]}; folder: images with same-named .txt captions."),
                io.String.Input("path", default="",
                                tooltip="The FDRD JSON file or the dataset folder (unused for 'world')."),
                io.Int.Input("steps", default=100, min=1, max=100_000, tooltip="Optimisation steps."),
                io.Int.Input("batch_size", default=16, min=2, max=512, tooltip="Images per step."),
                io.Float.Input("learning_rate", default=0.005, min=1e-6, max=1.0, step=0.0005,
                               tooltip="AdamW learning rate of the prompts."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seed of initialisation and batches."),
                io.Int.Input("n_text", default=4, min=0, max=32, tooltip="Learned text context tokens."),
                io.Int.Input("n_visual", default=4, min=0, max=32,
                             tooltip="Learned image prompt tokens (must equal n_text when coupled)."),
                io.Int.Input("depth", default=2, min=0, max=24,
                             tooltip="Layers (from the first) that get their own prompt vectors in both towers "
                             "(capped at each tower's layers). Kept at 2 for saved workflows; MaPLe prompts 9 of 12 "
                             "layers, the library's default when no depth is given is round(0.75 x layers)."),
                io.String.Input("save_name", default="dcar_prompt",
                                tooltip="File name in models/promptweave (no extension); empty: do not save."),
                PretrainedPromptsType.Input(
                    "pretrained_prompts", optional=True,
                    tooltip="Optional RPP pretrained prompts (Pretrain Prompts or Load Pretrained Prompts, made for "
                    "this VLM) to start from instead of the plain initialisation."),
                io.String.Input("image_root", default="", optional=True,
                                tooltip="Source 'fdrd_json': the folder that holds the images (found by file_name or "
                                "the base name of file_path, also inside <class_name>/ folders); empty: the JSON's "
                                "folder, then its images/ sub-folder."),
            ],
            outputs=[
                DualPromptType.Output(display_name="dual_prompt", tooltip="The trained dual prompt."),
                io.Image.Output(display_name="loss_plot", tooltip="The training loss curve."),
            ],
        )

    @classmethod
    @check_inputs
    def execute(cls, vlm, source: str, path: str, steps: int, batch_size: int, learning_rate: float, seed: int,
                n_text: int, n_visual: int, depth: int, save_name: str, pretrained_prompts=None,
                image_root: str = "") -> io.NodeOutput:
        node = "PWTrainDualPrompt"
        try:
            config = DualPromptConfig(n_text=n_text, n_visual=n_visual, text_depth=min(depth, len(vlm.text_blocks)),
                                      visual_depth=min(depth, len(vlm.visual.transformer.resblocks)),
                                      coupling=n_text == n_visual and n_text > 0)
        except ConfigError as exc:
            name = {"text_depth": "depth", "visual_depth": "depth"}.get(exc.field, exc.field)
            fix = "use n_visual equal to n_text, or 0" if name in ("n_text", "n_visual") else f"change {name}"
            raise NodeInputError(node, name, str(exc), fix) from None
        size = vlm.image_size
        root = (image_root or "").strip()
        if source == "fdrd_json" and root and not os.path.isdir(os.path.expanduser(root)):
            raise NodeInputError(node, "image_root", f"{root} is not a folder", _IMAGE_ROOT_FIX)
        try:
            if source == "world":
                data = WorldSource(size=64, config=config)
            elif source == "fdrd_json":
                data = FDRDSource(path.strip(), os.path.expanduser(root) if root else None, size=size, config=config)
            elif source == "folder":
                data = FolderSource(path.strip(), size=size)
            else:
                raise NodeInputError(node, "source", f"unknown source {source!r}", f"use one of {SOURCES}")
        except (ValueError, OSError) as exc:  # OSError: a path too long, unreadable ...
            if isinstance(exc, NodeInputError):
                raise
            if source == "fdrd_json" and "does not exist under" in str(exc):  # the JSON is fine, its images are not
                raise NodeInputError(node, "image_root", str(exc), _IMAGE_ROOT_FIX) from None
            raise NodeInputError(node, "path", str(exc), "point 'path' at a valid FDRD JSON file or "
                                 "dataset folder") from None
        name = save_name.strip()
        if name and (os.sep in name or "/" in name or name.startswith(".")):
            raise NodeInputError(node, "save_name", f"'{name}' is not a plain file name", "use a name like dcar_cats")
        target = output_model_path(node, "save_name", name) if name else None
        if pretrained_prompts is not None and pretrained_prompts.backbone != vlm.name:
            raise NodeInputError(
                node, "pretrained_prompts", f"they were pretrained for the VLM '{pretrained_prompts.backbone}', "
                f"not '{vlm.name}'", "pretrain prompts on this VLM, or disconnect them")
        init_key = None if pretrained_prompts is None else tensors_key(pretrained_prompts.rpp.state_dict())
        settings = [vlm.name, source, path, batch_size, learning_rate, seed, config.to_dict(), init_key]
        if source == "fdrd_json" and root:  # appended only when set, so earlier runs' checkpoints still resume
            settings.append(f"image_root-{root}")
        if source != "world":  # the data itself: replaced files never resume an old run
            settings.append(f"data-{files_fingerprint(path.strip(), os.path.expanduser(root) if root else None)}")
        ckpt = run_checkpoint(name or "dcar", settings)
        on_step = TrainingProgress(steps)
        with checkpointed_run(node, "save_name", ckpt):
            result = train_dual_prompt(trainable_copy(vlm), data, config, steps=steps, batch_size=batch_size,
                                       lr=learning_rate, seed=seed, checkpoint_path=ckpt,
                                       checkpoint_every=max(10, steps // 10), callback=on_step, progress=False,
                                       init_prompts=pretrained_prompts)
            dual = result.dual
            if target is not None:
                save_dual_prompt(dual, target)
        return io.NodeOutput(dual, loss_curve_image(result.losses, title="dual prompt loss").unsqueeze(0))


_IMAGE_ROOT_FIX = (
    "set 'image_root' to the folder that holds the FDRD images (the authors' file_path is not needed), or leave it "
    "empty to look in the JSON's folder and its images/ sub-folder"
)


class RankImages(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PWRankImages",
            display_name="Rank Images by Text (DCAR)",
            category=CATEGORY,
            description="Scores every image of a batch against a fine-grained description with a VLM (and a DCAR "
            "dual prompt, if connected) and returns the batch sorted best first; keep the top k.",
            inputs=[
                VLMType.Input("vlm", tooltip="The VLM the dual prompt was trained for (e.g. WorldCLIP)."),
                io.Image.Input("images", tooltip="The image batch to rank."),
                io.String.Input("text", multiline=True, default="a large red five-point star",
                                tooltip="The description to rank the images by."),
                io.Int.Input("top_k", default=1, min=1, max=4096,
                             tooltip="How many of the best images to output (capped at the batch size)."),
                DualPromptType.Input("dual_prompt", optional=True,
                                     tooltip="Optional DCAR dual prompt; without it the VLM ranks zero-shot."),
            ],
            outputs=[
                io.Image.Output(display_name="best_images", tooltip="The top_k images, best first."),
                io.String.Output(display_name="scores", tooltip="JSON list of rank, batch index and cosine score."),
                io.Int.Output(display_name="best_index", tooltip="Batch index of the best image."),
            ],
        )

    @classmethod
    @check_inputs
    def execute(cls, vlm, images: torch.Tensor, text: str, top_k: int, dual_prompt=None) -> io.NodeOutput:
        node = "PWRankImages"
        dual = None if dual_prompt is None else _check_dual(node, dual_prompt, vlm)
        batch = _images_bchw(node, images)
        if not text.strip():
            raise NodeInputError(node, "text", "the text is empty", "describe the image you want")
        scores, order = rank_images(vlm, batch, text.strip(), dual)
        keep = order[: min(top_k, len(order))]
        labels = [f"image {i}" for i in range(len(order))]
        return io.NodeOutput(images[keep.to(images.device)], _score_report(labels, scores, order), int(order[0]))


class RankTexts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PWRankTexts",
            display_name="Rank Texts by Image (DCAR)",
            category=CATEGORY,
            description="Scores candidate descriptions (one per line) against an image with a VLM (and a DCAR "
            "dual prompt, if connected); returns them sorted best first. With several images the mean score "
            "over the batch is used.",
            inputs=[
                VLMType.Input("vlm", tooltip="The VLM the dual prompt was trained for (e.g. WorldCLIP)."),
                io.Image.Input("images", tooltip="The image (or batch; scores are averaged over it)."),
                io.String.Input("texts", multiline=True,
                                default="a red five-point star\na red six-point star\na red burst",
                                tooltip="Candidate descriptions, one per line."),
                DualPromptType.Input("dual_prompt", optional=True,
                                     tooltip="Optional DCAR dual prompt; without it the VLM ranks zero-shot."),
            ],
            outputs=[
                io.String.Output(display_name="best_text", tooltip="The best-matching description."),
                io.String.Output(display_name="sorted_texts", tooltip="All descriptions, best first, one per line."),
                io.String.Output(display_name="scores", tooltip="JSON list of rank, line index and cosine score."),
            ],
        )

    @classmethod
    @check_inputs
    def execute(cls, vlm, images: torch.Tensor, texts: str, dual_prompt=None) -> io.NodeOutput:
        node = "PWRankTexts"
        dual = None if dual_prompt is None else _check_dual(node, dual_prompt, vlm)
        batch = _images_bchw(node, images)
        lines = text_lines(node, "texts", texts)
        if not lines:
            raise NodeInputError(node, "texts", "there are no texts", "write one candidate description per line")
        scores, order = rank_texts(vlm, batch, lines, dual)
        ranked = [lines[int(i)] for i in order]
        return io.NodeOutput(ranked[0], "\n".join(ranked), _score_report(lines, scores, order))


def clip_token_tables(clip) -> dict[str, torch.Tensor]:
    """Token-embedding table of each text encoder of a ComfyUI CLIP, keyed ``clip_l`` / ``clip_g``."""
    tables = {}
    for ti_key in COMFY_TO_TI_KEY.values():
        encoder = getattr(clip.cond_stage_model, ti_key, None)
        if encoder is not None:
            tables[ti_key] = encoder.transformer.get_input_embeddings().weight
    return tables


class DualPromptConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PWDualPromptConditioning",
            display_name="Dual Prompt Conditioning",
            category=CATEGORY,
            description="CLIP text encode with the text part of a DCAR dual prompt spliced in (SD1.x and SDXL; "
            "pooled output from the same tokens). Uses the SD vectors attached to the dual prompt, else its "
            "learned context read as the nearest vocabulary tokens in this CLIP's own embedding.",
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP of the checkpoint (SD1.x: clip_l, SDXL: clip_l + clip_g)."),
                DualPromptType.Input("dual_prompt", tooltip="From Load Dual Prompt or Train Dual Prompt."),
                io.String.Input("text", multiline=True, dynamic_prompts=True, default="a picture of <pw>",
                                tooltip="The prompt. Write <pw> where the learned context goes; without it, it "
                                "goes first."),
            ],
            outputs=[io.Conditioning.Output(tooltip="Conditioning for KSampler, with the dual prompt's context.")],
        )

    @classmethod
    @check_inputs
    def execute(cls, clip, dual_prompt, text: str) -> io.NodeOutput:
        node = "PWDualPromptConditioning"
        dual = _check_dual(node, dual_prompt)
        tables = clip_token_tables(clip)
        if not tables:
            raise NodeInputError(node, "clip", "the CLIP has neither clip_l nor clip_g", "use an SD1.x or SDXL CLIP")
        try:
            prompt = dual.sd_learned_prompt(tables)
        except (ArtifactError, ValueError) as exc:
            raise NodeInputError(node, "dual_prompt", str(exc),
                                 "use a dual prompt whose attached SD vectors match this CLIP (SDXL needs clip_g), "
                                 "or one without attached vectors") from None
        if prompt is None:
            raise NodeInputError(node, "dual_prompt", "the dual prompt has no text context (n_text = 0)",
                                 "use CLIPTextEncode, or train with n_text > 0")
        tokens = tokens_with_learned_prompt(node, clip, text, prompt)
        return io.NodeOutput(clip.encode_from_tokens_scheduled(tokens))


NODES: list[type[io.ComfyNode]] = [LoadDualPrompt, TrainDualPrompt, RankImages, RankTexts, DualPromptConditioning]
