"""Diff-Prompt in ComfyUI: ground a referring expression (mask + box), generated prompts as SD conditioning,
train the three stages, load a bundle."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from comfy_api.latest import io

from ..prompt_modules.core.artifacts import ArtifactError, ConfigError
from ..prompt_modules.core.data import files_fingerprint
from ..prompt_modules.core.learned_prompt import LearnedPrompt
from ..prompt_modules.core.plots import loss_curve_image
from ..prompt_modules.core.vlm import VisionLanguageModel, trainable_copy
from ..prompt_modules.diff_prompt import (
    STAGES,
    DiffPrompt,
    FolderGroundingSource,
    TensorGroundingSource,
    earlier_stages,
    load_bundle,
    load_diff_prompt,
    read_grounding_jsonl,
    read_refcoco,
    stage_batch_size,
    train_diff_prompt,
)
from ..prompt_modules.diff_prompt.data import PICKLE_SUFFIXES
from ..prompt_modules.world.sources import WorldGroundingSource
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
)
from ._types import DiffPromptType, PretrainedPromptsType, VLMType
from .nodes_dual_prompt import clip_token_tables
from .nodes_learned_prompt import tokens_with_learned_prompt

CATEGORY = "PromptWeave/diff prompt"
STAGE_CHOICES = ["vae", "dit", "prompt", "all"]
SOURCES = ["world", "folder", "inputs", "refcoco", "grounding_jsonl"]  # new options only ever appended
#: Sources read from annotation files whose images load lazily, per batch (they take image_root).
FILE_SOURCES = ("refcoco", "grounding_jsonl")
REFCOCO_INSTANCES = "instances.json"
REFS_SUFFIXES = (".json", ".jsonl")

#: Names of Diff-Prompt's stages on its loss plot.
STAGE_TITLES = {"vae": "1 Mask-VAE", "dit": "2 DiT", "prompt": "3 prompts"}


# ----- input checks ---------------------------------------------------------------------------------------------
def _check_model(node: str, model, vlm: VisionLanguageModel) -> DiffPrompt:
    try:
        model.check_vlm(vlm)
    except ArtifactError as exc:
        raise NodeInputError(node, "diff_prompt", str(exc), "connect the VLM the bundle was trained with") from None
    return model


def _images(node: str, image, input_name: str = "image") -> torch.Tensor:
    return rgb_batch(node, input_name, image)


def expressions_for_batch(node: str, text: str, batch: int, input_name: str = "text") -> list[str]:
    """One referring expression per image: one line for all images, or exactly one line per image."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        raise NodeInputError(
            node,
            input_name,
            "the referring expression is empty",
            "describe the object to find, e.g. 'the red star left of the arrow'",
        )
    if len(lines) == 1:
        return lines * batch
    if len(lines) != batch:
        raise NodeInputError(
            node,
            input_name,
            f"{batch} image(s) but {len(lines)} expression lines",
            "write one line per image, or a single line used for every image",
        )
    return lines


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def preview_strip(generated: torch.Tensor, size: int) -> torch.Tensor:
    """Generated masks ``[K, B, 1, S, S]`` -> IMAGE ``[B, S, K*S, 3]`` (one row per input, layer 0 leftmost)."""
    k, b = generated.shape[:2]
    if k == 0:
        return torch.zeros(b, size, size, 3)
    strip = torch.cat([generated[i, :, 0] for i in range(k)], dim=-1)  # [B, S, K*S]
    return strip.clamp(0, 1).unsqueeze(-1).expand(-1, -1, -1, 3).float().cpu().contiguous()


def _plan_error_input(field: str, first_stage: str) -> tuple[str, str]:
    """The node input a :func:`train_diff_prompt` plan error is about (by its ``field``), and how to fix it."""
    return {
        "init_prompts": (
            "pretrained_prompts",
            "use stage 'prompt' or 'all' with prompts pretrained on this VLM, or disconnect them",
        ),
        "stages": ("stage", f"train {list(earlier_stages(first_stage))} first"),
        "previous": ("bundle_name", "train stage 'vae' (then 'dit') into this bundle first"),
        "vlm": ("vlm", "connect that VLM, or retrain stage 'dit'"),
        "ddim_steps": ("ddim_steps", "use at least one DDIM step per prompted layer, or 0 (automatic)"),
        "keep_steps": ("ddim_steps", "use 0 (automatic) or at least one DDIM step per prompted layer"),
        "prompted_layers": ("prompted_layers", "use 0 (automatic) or at most the VLM's layers"),
        "text_depth": ("prompted_layers", "use 0 (automatic) or at most the VLM's layers"),
        "visual_depth": ("prompted_layers", "use 0 (automatic) or at most the VLM's layers"),
        "lr": ("learning_rate", "use a learning rate > 0, or 0 (each stage's default)"),
        "mask_size": ("mask_size", "use 0 (automatic: the VLM's image size) or a multiple of 16"),
    }.get(field, ("stage", "check the stage and the bundle"))


# ----- referring-expression files (RefCOCO layout, simple JSONL) -------------------------------------------------
_DATA_FIXES = {
    "path": "point 'path' at the RefCOCO folder (instances.json + one refs*.json / refs*.jsonl), its instances.json "
    "or refs file (source 'refcoco'), or at a JSONL of {image, expression, bbox, mask} lines (source "
    "'grounding_jsonl'), and fix the entry the message names",
    "image_root": "set 'image_root' to the folder that holds the images (RefCOCO: COCO's train2014; JSONL: the "
    "folder its relative paths start from), or leave it empty for the default",
    "split": "use one of the splits the message lists (several comma-separated), or leave 'split' empty for all",
}


def _data_input(message: str) -> str:
    """The node input a reader's ``ValueError`` is about: a split without refs, images not found or not fitting
    (under ``image_root``), else the annotation file itself."""
    if "no refs of split" in message:
        return "split"
    if "image_root" in message:
        return "image_root"
    return "path"


def _data_error(node: str, exc: Exception) -> NodeInputError:
    name = _data_input(str(exc))
    return NodeInputError(node, name, str(exc), _DATA_FIXES[name])


def _is_folder(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long ...
        return False


def _splits(split: str) -> str | list[str] | None:
    """The ``split`` input as :func:`read_refcoco` takes it: one name, several (comma-separated), empty = all."""
    names = [part.strip() for part in (split or "").split(",") if part.strip()]
    return None if not names else names[0] if len(names) == 1 else names


def refcoco_files(node: str, path: str) -> tuple[Path, Path, Path]:
    """``(instances, refs, folder)`` of the ``path`` input of source ``refcoco``: a folder holding
    ``instances.json`` and exactly one ``refs*.json`` / ``refs*.jsonl`` (the refer toolkit's ``data/refcoco`` after
    ``refs(unc).p`` is converted), a refs file (``instances.json`` beside it), or the instances file (the one refs
    file beside it). A folder with only a pickled ``refs*.p`` gets it, so the library refuses it with the
    command that converts it."""
    if not path:
        raise NodeInputError(node, "path", "no RefCOCO folder given", _DATA_FIXES["path"])
    given = Path(os.path.expanduser(path))
    if given.is_dir():
        folder, instances, refs = given, given / REFCOCO_INSTANCES, None
    elif given.is_file():
        folder = given.parent
        if given.name.lower().startswith("refs"):
            instances, refs = folder / REFCOCO_INSTANCES, given
        else:
            instances, refs = given, None
    else:
        raise NodeInputError(node, "path", f"{given} does not exist", _DATA_FIXES["path"])
    if not instances.is_file():
        raise NodeInputError(
            node,
            "path",
            f"{folder} holds no {REFCOCO_INSTANCES}",
            "use the refer toolkit's dataset folder (e.g. data/refcoco) with its instances.json, or point 'path' "
            "at the instances file",
        )
    if refs is None:
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().startswith("refs"))
        found = [p for p in files if p.suffix.lower() in REFS_SUFFIXES]
        pickles = [p for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
        if len(found) > 1:
            raise NodeInputError(
                node,
                "path",
                f"{folder} holds several refs files ({', '.join(p.name for p in found)})",
                "point 'path' at the refs file to use (instances.json is taken from its folder)",
            )
        if not found and not pickles:
            raise NodeInputError(
                node,
                "path",
                f"{folder} holds no refs file (refs(unc).json or refs(unc).jsonl next to {REFCOCO_INSTANCES})",
                "convert the refer toolkit's refs(unc).p to JSON next to instances.json, or point 'path' at the "
                "refs file",
            )
        refs = found[0] if found else pickles[0]  # a pickle: the library refuses it with the conversion command
    return instances, refs, folder


class _NamedReadErrors:
    """A lazily read source whose per-batch read errors (an image that cannot be read, or whose size is not the
    one its annotation gives: another image_root) name the node's input instead of escaping the training loop."""

    def __init__(self, node: str, source) -> None:
        self.node, self.source = node, source

    def __len__(self) -> int:
        return len(self.source)

    def batch(self, seed: int, step: int, batch_size: int):
        try:
            return self.source.batch(seed, step, batch_size)
        except (ValueError, OSError) as exc:
            raise _data_error(self.node, exc) from None


# ----- nodes ----------------------------------------------------------------------------------------------------
class LoadDiffPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PWLoadDiffPrompt",
            display_name="Load Diff-Prompt",
            category=CATEGORY,
            description="Loads a Diff-Prompt bundle (Mask-VAE, DiT prompt generator, adapters, global prompts and "
            "grounding head in one .safetensors) from ComfyUI/models/promptweave.",
            inputs=[
                io.Combo.Input(
                    "bundle_name",
                    options=model_files(),
                    tooltip="A bundle written by Train Diff-Prompt with all three stages.",
                )
            ],
            outputs=[DiffPromptType.Output(display_name="diff_prompt", tooltip="The Diff-Prompt model.")],
        )

    @classmethod
    @check_inputs
    def execute(cls, bundle_name: str) -> io.NodeOutput:
        node = "PWLoadDiffPrompt"
        path = resolve_model_file(node, "bundle_name", bundle_name)
        try:
            model = load_diff_prompt(path)
        except ArtifactError as exc:
            raise NodeInputError(
                node, "bundle_name", str(exc), "pick a bundle written by Train Diff-Prompt after stage 'prompt'"
            ) from None
        return io.NodeOutput(model)


class DiffPromptGround(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PWDiffPromptGround",
            display_name="Diff-Prompt Ground (text -> mask)",
            category=CATEGORY,
            description="Finds the object a referring expression describes (Diff-Prompt, Yan et al. ICLR 2025): a "
            "DiT generates masks from the image and the text, adapters turn them into prompts for the frozen VLM, "
            "and a grounding head outputs a mask and a box. Use the mask for inpainting or regional prompts.",
            inputs=[
                VLMType.Input("vlm", tooltip="The VLM the bundle was trained with (e.g. WorldCLIP)."),
                DiffPromptType.Input("diff_prompt", tooltip="From Load Diff-Prompt or Train Diff-Prompt."),
                io.Image.Input("image", tooltip="The image(s) to search."),
                io.String.Input(
                    "text",
                    multiline=True,
                    default="the red star",
                    tooltip="The referring expression; one line for all images, or one line per image.",
                ),
                io.Int.Input(
                    "seed", default=0, min=0, max=2**31 - 1, tooltip="Seed of the generator's starting noise."
                ),
                io.Float.Input(
                    "threshold",
                    default=0.5,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Mask probability above which a pixel belongs to the object.",
                ),
                io.Int.Input(
                    "ddim_steps",
                    default=0,
                    min=0,
                    max=200,
                    tooltip="DDIM steps of the generator; 0 = the bundle's setting.",
                ),
            ],
            outputs=[
                io.Mask.Output(display_name="mask", tooltip="The object's mask at the image's size."),
                io.Mask.Output(display_name="box_mask", tooltip="The predicted box as a filled mask."),
                io.String.Output(
                    display_name="boxes", tooltip="JSON list, per image: x0, y0, x1, y1, width, height in pixels."
                ),
                io.Image.Output(
                    display_name="generated_masks",
                    tooltip="The generator's intermediate masks, one per prompted layer, side by side.",
                ),
            ],
        )

    @classmethod
    @check_inputs
    def execute(cls, vlm, diff_prompt, image, text: str, seed: int, threshold: float, ddim_steps: int) -> io.NodeOutput:
        node = "PWDiffPromptGround"
        model = _check_model(node, diff_prompt, vlm)
        if 0 < ddim_steps < model.n_kept:
            raise NodeInputError(
                node,
                "ddim_steps",
                f"the bundle prompts {model.n_kept} layers, one generated mask each, so it needs at least "
                f"{model.n_kept} DDIM steps (got {ddim_steps})",
                f"use 0 (the bundle's setting) or at least {model.n_kept}",
            )
        images = _images(node, image)
        b, _, h, w = images.shape
        texts = expressions_for_batch(node, text, b)
        with torch.no_grad():
            out = model(vlm, images.to(vlm.device), texts, generator=_generator(seed), steps=ddim_steps or None)
        mask = out.masks_at(h, w, threshold)
        boxes = out.boxes.float().cpu()
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        report = []
        for row in (boxes * scale).round().long().tolist():
            x0, y0, x1, y1 = row
            report.append({"x0": x0, "y0": y0, "x1": x1, "y1": y1, "width": x1 - x0, "height": y1 - y0})
        preview = preview_strip(out.generated_masks.float().cpu(), model.mask_size)
        return io.NodeOutput(mask, out.box_masks_at(h, w), json.dumps(report), preview)


class DiffPromptConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PWDiffPromptConditioning",
            display_name="Diff-Prompt Conditioning",
            category=CATEGORY,
            description="CLIP text encode with the prompt tokens Diff-Prompt generates for an image and a referring "
            "expression spliced in (SD1.x and SDXL). The generated input-layer text tokens are read as their "
            "nearest vocabulary tokens in the VLM, and this CLIP's own embeddings of them are used.",
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP of an SD1.x or SDXL checkpoint."),
                VLMType.Input("vlm", tooltip="The VLM the bundle was trained with (e.g. WorldCLIP)."),
                DiffPromptType.Input("diff_prompt", tooltip="From Load Diff-Prompt or Train Diff-Prompt."),
                io.Image.Input(
                    "image",
                    tooltip="The image the prompts are generated for (one conditioning per image of the batch).",
                ),
                io.String.Input(
                    "expression",
                    multiline=True,
                    default="the red star",
                    tooltip="The referring expression; one line for all images, or one per image.",
                ),
                io.String.Input(
                    "text",
                    multiline=True,
                    dynamic_prompts=True,
                    default="a picture of <pw>",
                    tooltip="The SD prompt. Write <pw> where the generated tokens go; without it they go first.",
                ),
                io.Int.Input(
                    "seed", default=0, min=0, max=2**31 - 1, tooltip="Seed of the generator's starting noise."
                ),
            ],
            outputs=[io.Conditioning.Output(tooltip="Conditioning for KSampler, with the generated prompt tokens.")],
        )

    @classmethod
    @check_inputs
    def execute(cls, clip, vlm, diff_prompt, image, expression: str, text: str, seed: int) -> io.NodeOutput:
        node = "PWDiffPromptConditioning"
        model = _check_model(node, diff_prompt, vlm)
        images = _images(node, image)
        texts = expressions_for_batch(node, expression, images.shape[0], "expression")
        if not (text or "").strip():
            raise NodeInputError(node, "text", "the text is empty", "write an SD prompt, e.g. 'a picture of <pw>'")
        if model.config.n_tokens == 0 or model.text_depth == 0:
            raise NodeInputError(
                node,
                "diff_prompt",
                "the bundle has no text prompt tokens",
                "use CLIPTextEncode, or a bundle trained with text prompts",
            )
        tables = clip_token_tables(clip)
        if not tables:
            raise NodeInputError(node, "clip", "the CLIP has neither clip_l nor clip_g", "use an SD1.x or SDXL CLIP")
        with torch.no_grad():
            ids = model.text_prompt_token_ids(vlm, images.to(vlm.device), texts, generator=_generator(seed))
        conds, pooled = [], []
        for row in ids:
            tokens = tokens_with_learned_prompt(node, clip, text, LearnedPrompt.from_token_ids(row, tables))
            cond, pool = clip.encode_from_tokens(tokens, return_pooled=True)
            conds.append(cond)
            pooled.append(pool)
        extra = {} if pooled[0] is None else {"pooled_output": torch.cat(pooled)}
        return io.NodeOutput([[torch.cat(conds), extra]])


class TrainDiffPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PWTrainDiffPrompt",
            display_name="Train Diff-Prompt",
            category=CATEGORY,
            description="Trains one stage of Diff-Prompt (or all three) into a bundle in models/promptweave: 'vae' "
            "the Mask-VAE, 'dit' the DiT prompt generator (needs the VAE in the bundle), 'prompt' the adapters, "
            "global prompts and grounding head (needs both). Resumes from its checkpoint when run again.",
            inputs=[
                VLMType.Input(
                    "vlm",
                    tooltip="The frozen VLM (WorldCLIP from Load World Models, or a loaded CLIP); stage 'vae' reads "
                    "only its image size (the automatic mask size).",
                ),
                io.Combo.Input(
                    "stage",
                    options=STAGE_CHOICES,
                    default="all",
                    tooltip="Which stage to train; each needs the earlier stages in the bundle.",
                ),
                io.Combo.Input(
                    "source",
                    options=SOURCES,
                    default="world",
                    tooltip="world: the procedural world's train split; folder: name.png + "
                    "name_mask.png + name.txt files; inputs: the images, masks and expressions inputs; refcoco: "
                    "COCO-style instances.json + refs JSON/JSONL (RefCOCO, RefCOCO+, RefCOCOg); grounding_jsonl: one "
                    "{image, expression, bbox, mask} object per line.",
                ),
                io.String.Input(
                    "path",
                    default="",
                    tooltip="The dataset folder (source 'folder'); the RefCOCO folder holding instances.json and "
                    "one refs*.json(l), or that instances.json or refs file (source 'refcoco'); the .jsonl file "
                    "(source 'grounding_jsonl').",
                ),
                io.Int.Input("steps", default=200, min=1, max=1_000_000, tooltip="Optimisation steps per stage."),
                io.Int.Input(
                    "batch_size",
                    default=16,
                    min=1,
                    max=512,
                    tooltip="Samples per step of stage 'prompt'; stages 'vae' and 'dit' take at least 32 (the "
                    "library's recipe).",
                ),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seed of initialisation and batches."),
                io.String.Input(
                    "bundle_name",
                    default="diff_prompt",
                    tooltip="Bundle file in models/promptweave (no extension): read for the earlier "
                    "stages, written with the trained one.",
                ),
                io.Image.Input("images", optional=True, tooltip="Training images (source 'inputs')."),
                io.Mask.Input(
                    "masks", optional=True, tooltip="One mask per training image, of the same size (source 'inputs')."
                ),
                io.String.Input(
                    "expressions",
                    multiline=True,
                    default="",
                    optional=True,
                    tooltip="One referring expression per training image, one per line (source 'inputs').",
                ),
                PretrainedPromptsType.Input(
                    "pretrained_prompts",
                    optional=True,
                    tooltip="Optional RPP pretrained prompts (Pretrain Prompts or Load Pretrained Prompts, made for "
                    "this VLM): stage 'prompt' starts its global prompts from them.",
                ),
                io.Int.Input(
                    "ddim_steps",
                    default=0,
                    min=0,
                    max=200,
                    optional=True,
                    tooltip="DDIM steps of the prompt generator (stage 'prompt'); 0 = automatic (10; the paper "
                    "uses 25). Needs at least one step per prompted layer.",
                ),
                io.Int.Input(
                    "prompted_layers",
                    default=0,
                    min=0,
                    max=64,
                    optional=True,
                    tooltip="Layers (from the first) of each tower that get prompts (stage 'prompt'; a shallower "
                    "tower prompts all of its layers); 0 = automatic: every layer, at most 9 (the paper's) and at "
                    "most the DDIM steps.",
                ),
                io.Float.Input(
                    "learning_rate",
                    default=0.0,
                    min=0.0,
                    max=1.0,
                    step=1e-5,
                    optional=True,
                    tooltip="AdamW learning rate of every trained stage; 0 = each stage's default (vae 1e-3, dit "
                    "3e-4, prompt 1e-3; the paper uses 1e-4).",
                ),
                io.Int.Input(
                    "mask_size",
                    default=0,
                    min=0,
                    max=256,
                    step=16,
                    optional=True,
                    tooltip="Side of the masks the Mask-VAE encodes (stage 'vae'; later stages use the bundle's); "
                    "0 = automatic: the VLM's image size rounded to 16, within 64..224 (the paper's 224). A "
                    "multiple of 16.",
                ),
                io.String.Input(
                    "image_root",
                    default="",
                    optional=True,
                    tooltip="Folder of the images (sources 'refcoco' and 'grounding_jsonl'). Empty: for refcoco the "
                    "images/ sub-folder of the RefCOCO folder if there is one, else that folder; for "
                    "grounding_jsonl the JSONL's folder (relative paths are tried under image_root first).",
                ),
                io.String.Input(
                    "split",
                    default="train",
                    optional=True,
                    tooltip="The refs to train on (source 'refcoco'): train, val, testA, testB, test ...; several "
                    "comma-separated; empty = all.",
                ),
            ],
            outputs=[
                DiffPromptType.Output(
                    display_name="diff_prompt",
                    tooltip="The complete model once stage 'prompt' is trained, else nothing.",
                ),
                io.String.Output(display_name="bundle_path", tooltip="Where the bundle was written."),
                io.Image.Output(display_name="loss_plot", tooltip="The loss curve of the trained stage(s)."),
            ],
        )

    @classmethod
    @check_inputs
    def execute(
        cls,
        vlm,
        stage: str,
        source: str,
        path: str,
        steps: int,
        batch_size: int,
        seed: int,
        bundle_name: str,
        images=None,
        masks=None,
        expressions: str = "",
        pretrained_prompts=None,
        ddim_steps: int = 0,
        prompted_layers: int = 0,
        learning_rate: float = 0.0,
        mask_size: int = 0,
        image_root: str = "",
        split: str = "train",
    ) -> io.NodeOutput:
        node = "PWTrainDiffPrompt"
        if stage not in STAGE_CHOICES:
            raise NodeInputError(node, "stage", f"unknown stage {stage!r}", f"use one of {STAGE_CHOICES}")
        data = cls._source(node, source, path, images, masks, expressions, int(vlm.image_size), image_root, split)
        target = output_model_path(node, "bundle_name", bundle_name.strip())
        stages = list(STAGES) if stage == "all" else [stage]
        previous = None
        if earlier_stages(stages[0]):
            if not Path(target).is_file():
                raise NodeInputError(
                    node,
                    "bundle_name",
                    f"{target} does not exist, and stage '{stage}' needs the earlier stages",
                    "train stage 'vae' (then 'dit') into this bundle first",
                )
            try:
                previous = load_bundle(target)
            except ArtifactError as exc:
                raise NodeInputError(node, "bundle_name", str(exc), "pick another bundle name") from None
        init_key = None if pretrained_prompts is None else tensors_key(pretrained_prompts.rpp.state_dict())
        settings = [vlm.name, source, path, batch_size, seed, bundle_name, steps, len(getattr(data, "texts", []))]
        if init_key is not None:  # appended only when given, so earlier runs' checkpoints still resume
            settings.append(init_key)
        knobs = {"ddim": ddim_steps, "layers": prompted_layers, "lr": learning_rate, "mask": mask_size}
        settings += [f"{name}-{value}" for name, value in knobs.items() if value]  # likewise: only when set
        if source not in ("world", "inputs"):  # the data itself: replaced files never resume an old run
            settings.append(f"data-{files_fingerprint(path.strip(), image_root.strip() or None)}")
        if source in FILE_SOURCES:  # sources newer than the checkpoints above: their reading options and size
            settings += [f"root-{image_root.strip()}", f"split-{split.strip()}", f"samples-{len(data)}"]

        def checkpoint(name: str) -> Path:
            stage_batch = stage_batch_size(name, batch_size)
            # a stage that trains with another batch than asked keys its checkpoint by it (not one of another recipe)
            extra = [] if stage_batch == batch_size else [f"{name}-batch-{stage_batch}"]
            return run_checkpoint(f"{Path(target).stem}-{name}", [*settings, *extra])

        checkpoints = {name: checkpoint(name) for name in stages}
        with checkpointed_run(node, "bundle_name", *checkpoints.values()):
            try:
                run = train_diff_prompt(
                    trainable_copy(vlm),
                    data,
                    stages=stages,
                    previous=previous,
                    vae_steps=steps,
                    dit_steps=steps,
                    prompt_steps=steps,
                    batch_size=batch_size,
                    seed=seed,
                    bundle_path=target,
                    checkpoint_paths=checkpoints,
                    checkpoint_every=max(10, steps // 10),
                    callback=TrainingProgress(steps * len(stages)),
                    progress=False,
                    init_prompts=pretrained_prompts,
                    ddim_steps=ddim_steps or None,
                    prompted_layers=prompted_layers or None,
                    lr=learning_rate or None,
                    mask_size=mask_size or None,
                )
            except ConfigError as exc:
                input_name, fix = _plan_error_input(exc.field, stages[0])
                raise NodeInputError(node, input_name, str(exc), fix) from None
        model = run.model
        if model is not None:
            model = model.to(vlm.device).eval()
        stages = [(STAGE_TITLES.get(name, name), len(losses)) for name, losses in run.losses.items()]
        curve = loss_curve_image(run.all_losses, stages=stages, title="Diff-Prompt loss")
        return io.NodeOutput(model, str(target), curve.unsqueeze(0))

    @staticmethod
    def _source(
        node: str, source: str, path: str, images, masks, expressions: str, size: int, image_root: str, split: str
    ):
        """The grounding source of the ``source`` input, its images at ``size`` (the VLM's resolution)."""
        if source in FILE_SOURCES:
            return _NamedReadErrors(node, TrainDiffPrompt._file_source(node, source, path.strip(), size,
                                                                       image_root.strip(), split))
        try:
            if source == "world":
                return WorldGroundingSource()
            if source == "folder":
                return FolderGroundingSource(path.strip(), size=size)
            if source == "inputs":
                if images is None or masks is None:
                    raise NodeInputError(
                        node,
                        "images" if images is None else "masks",
                        "not connected",
                        "connect training images, one mask per image and their expressions",
                    )
                batch = _images(node, images, "images")
                m = masks if masks.ndim == 3 else masks.unsqueeze(0)
                if tuple(m.shape[-2:]) != tuple(batch.shape[-2:]):
                    raise NodeInputError(
                        node,
                        "masks",
                        f"the masks are {m.shape[-1]}x{m.shape[-2]} but the images {batch.shape[-1]}x{batch.shape[-2]}",
                        "give every image a mask of its own size (e.g. resize the mask with the image)",
                    )
                if m.shape[0] != batch.shape[0]:
                    raise NodeInputError(
                        node,
                        "masks",
                        f"{batch.shape[0]} image(s) but {m.shape[0]} mask(s)",
                        "give exactly one mask per image",
                    )
                texts = expressions_for_batch(node, expressions, batch.shape[0], "expressions")
                return TensorGroundingSource(batch, m.float().clone(), texts, size=size)
        except NodeInputError:
            raise
        except (ValueError, OSError) as exc:  # OSError: a path too long, unreadable ...
            if source == "folder":
                fix = (
                    "make every mask the size of its image"
                    if "size" in str(exc)
                    else "point 'path' at a folder of name.png + name_mask.png (white = the object) + name.txt files"
                )
                raise NodeInputError(node, "path", str(exc), fix) from None
            raise NodeInputError(
                node, "masks", str(exc), "give every image one non-empty mask of its own size"
            ) from None
        raise NodeInputError(node, "source", f"unknown source {source!r}", f"use one of {SOURCES}")

    @staticmethod
    def _file_source(node: str, source: str, path: str, size: int, image_root: str, split: str):
        """A RefCOCO-layout or simple-JSONL source through the library's readers; every problem names its input."""
        root = Path(os.path.expanduser(image_root)) if image_root else None
        if root is not None and not _is_folder(root):
            raise NodeInputError(node, "image_root", f"{root} is not a folder", _DATA_FIXES["image_root"])
        try:
            if source == "refcoco":
                instances, refs, folder = refcoco_files(node, path)
                if root is None:
                    root = folder / "images" if (folder / "images").is_dir() else folder
                return read_refcoco(instances, refs, root, split=_splits(split), size=size)
            if not path:
                raise NodeInputError(node, "path", "no JSONL file given", _DATA_FIXES["path"])
            return read_grounding_jsonl(Path(os.path.expanduser(path)), root, size=size)
        except NodeInputError:
            raise
        except (ValueError, OSError) as exc:  # OSError: a path too long, unreadable ...
            raise _data_error(node, exc) from None


NODES: list[type[io.ComfyNode]] = [LoadDiffPrompt, DiffPromptGround, DiffPromptConditioning, TrainDiffPrompt]
