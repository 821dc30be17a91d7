"""RPP prompt pretraining in ComfyUI: pretrain a prompt bundle on a class set, load one."""

from __future__ import annotations

import os
import warnings

from comfy_api.latest import io

from ..prompt_modules.core.artifacts import ArtifactError, ConfigError
from ..prompt_modules.core.data import files_fingerprint
from ..prompt_modules.core.plots import loss_curve_image
from ..prompt_modules.core.vlm import trainable_copy
from ..prompt_modules.pretraining import (
    QKV_MODES,
    FolderClassSource,
    RPPConfig,
    load_pretrained_prompts,
    pretrain_bundle,
    read_class_map,
)
from ..prompt_modules.world.sources import WorldClassSource, world_classes
from ._common import (
    NodeInputError,
    TrainingProgress,
    check_inputs,
    checkpointed_run,
    model_files,
    output_model_path,
    resolve_model_file,
    run_checkpoint,
)
from ._types import PretrainedPromptsType, VLMType

CATEGORY = "PromptWeave/pretraining"
SOURCES = ["world", "folder"]


class PretrainPrompts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PWPretrainPrompts",
            display_name="Pretrain Prompts (RPP)",
            category=CATEGORY,
            description="Pretrains deep prompts for both towers of a frozen VLM as a zero-shot classifier over a "
            "large class set (RPP, Chen et al. 2024): unshared query/key/value prompts, soft labels from the "
            "VLM's own zero-shot probabilities, POMP class sampling. The bundle initialises dual prompts "
            "(Train Dual Prompt) and Diff-Prompt's global prompts (Train Diff-Prompt). Resumes from its checkpoint "
            "when run again with the same settings.",
            inputs=[
                VLMType.Input("vlm", tooltip="The frozen VLM (e.g. WorldCLIP from Load World Models)."),
                io.Combo.Input(
                    "source",
                    options=SOURCES,
                    default="world",
                    tooltip="world: all (colour, shape) classes of the procedural world (493); folder: one "
                    "sub-folder of images per class, named after the class.",
                ),
                io.String.Input("path", default="", tooltip="The class folder (unused for 'world')."),
                io.Int.Input("steps", default=200, min=1, max=100_000, tooltip="Optimisation steps."),
                io.Int.Input("batch_size", default=32, min=2, max=512, tooltip="Images per step."),
                io.Float.Input(
                    "learning_rate",
                    default=0.002,
                    min=1e-6,
                    max=1.0,
                    step=0.0005,
                    tooltip="AdamW learning rate of the prompts.",
                ),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seed of initialisation and batches."),
                io.Int.Input("n_text", default=4, min=0, max=32, tooltip="Learned text context tokens."),
                io.Int.Input("n_visual", default=4, min=0, max=32, tooltip="Learned image prompt tokens."),
                io.Int.Input(
                    "depth",
                    default=2,
                    min=0,
                    max=24,
                    tooltip="Layers (from the first) with their own prompts in both towers (capped at the VLM's).",
                ),
                io.Combo.Input(
                    "qkv_prompts",
                    options=list(QKV_MODES),
                    default="unshared",
                    tooltip="unshared: learned query, key and value prompts per prompted layer (RPP); shared: one "
                    "token projected by the frozen attention (classic deep prompts, POMP).",
                ),
                io.Float.Input(
                    "soft_label_weight",
                    default=0.1,
                    min=0.0,
                    max=100.0,
                    step=0.1,
                    tooltip="Weight of the soft labels (KL to the frozen VLM's zero-shot probabilities); 0: hard "
                    "labels only.",
                ),
                io.Float.Input(
                    "temperature",
                    default=1.0,
                    min=0.05,
                    max=20.0,
                    step=0.05,
                    tooltip="Distillation temperature of the soft labels.",
                ),
                io.Int.Input(
                    "classes_per_step",
                    default=64,
                    min=0,
                    max=100_000,
                    tooltip="Classes in each step's softmax (the batch's plus random others, POMP); 0: all.",
                ),
                io.String.Input(
                    "save_name",
                    default="rpp_prompts",
                    tooltip="File name in models/promptweave (no extension); empty: do not save.",
                ),
                io.String.Input(
                    "class_map",
                    default="",
                    optional=True,
                    tooltip="Source 'folder': a file naming the class folders, WordNet id -> name as ImageNet / "
                    "ImageNet-21K (text lines 'n01440764 tench, Tinca tinca' or JSON {\"n01440764\": \"tench\"}); "
                    "empty: the folder names are the class names.",
                ),
                io.Int.Input(
                    "shots",
                    default=0,
                    min=0,
                    max=1_000_000,
                    optional=True,
                    tooltip="Source 'folder': images kept per class, the first by file name (RPP / POMP use 16); "
                    "0 = all.",
                ),
                VLMType.Input(
                    "teacher",
                    optional=True,
                    tooltip="The frozen VLM whose zero-shot probabilities are the soft labels, e.g. a larger CLIP as "
                    "in the paper; not connected: the VLM itself without prompts.",
                ),
            ],
            outputs=[
                PretrainedPromptsType.Output(display_name="pretrained_prompts", tooltip="The pretrained bundle."),
                io.Image.Output(display_name="loss_plot", tooltip="The training loss curve."),
                io.String.Output(display_name="summary", tooltip="Settings, classes, final loss, conversion error."),
            ],
        )

    @classmethod
    @check_inputs
    def execute(
        cls,
        vlm,
        source: str,
        path: str,
        steps: int,
        batch_size: int,
        learning_rate: float,
        seed: int,
        n_text: int,
        n_visual: int,
        depth: int,
        qkv_prompts: str,
        soft_label_weight: float,
        temperature: float,
        classes_per_step: int,
        save_name: str,
        class_map: str = "",
        shots: int = 0,
        teacher=None,
    ) -> io.NodeOutput:
        node = "PWPretrainPrompts"
        if qkv_prompts not in QKV_MODES:
            raise NodeInputError(node, "qkv_prompts", f"unknown mode {qkv_prompts!r}", f"use one of {QKV_MODES}")
        if (n_text == 0 and n_visual == 0) or depth == 0:
            raise NodeInputError(
                node, "depth", "there is nothing to pretrain (no prompt tokens or depth 0)", "use depth >= 1 and tokens"
            )
        try:
            config = RPPConfig(
                n_text=n_text,
                n_visual=n_visual,
                text_depth=min(depth, len(vlm.text_blocks)),
                visual_depth=min(depth, len(vlm.visual.transformer.resblocks)),
                qkv_mode=qkv_prompts,
                soft_weight=soft_label_weight,
                temperature=temperature,
                classes_per_step=classes_per_step,
            )
        except ConfigError as exc:
            name = {"soft_weight": "soft_label_weight", "qkv_mode": "qkv_prompts", "text_depth": "depth",
                    "visual_depth": "depth"}.get(exc.field, exc.field)
            raise NodeInputError(node, name, str(exc), f"change {name}: see its tooltip for the valid range") from None
        class_file = (class_map or "").strip()
        short: dict[str, int] = {}
        if source == "world":
            data = WorldClassSource(world_classes(), size=64)
        elif source == "folder":
            data = cls._folder(node, path.strip(), int(vlm.image_size), class_file, shots)
            short = data.short_classes
        else:
            raise NodeInputError(node, "source", f"unknown source {source!r}", f"use one of {SOURCES}")
        name = save_name.strip()
        target = output_model_path(node, "save_name", name) if name else None
        settings = [vlm.name, source, path, batch_size, learning_rate, seed, config.to_dict()]
        info = {"source": source}
        if source == "folder" and (class_file or shots):  # appended only when set: earlier checkpoints resume
            settings += [f"class_map-{class_file}", f"shots-{shots}"]
            info["shots"] = shots
            if class_file:
                info["class_map"] = os.path.basename(class_file)
        if teacher is not None:
            settings.append(f"teacher-{teacher.name}")
            info["teacher"] = teacher.name
        if source != "world":  # the data itself: replaced files never resume an old run
            settings.append(f"data-{files_fingerprint(path.strip(), class_file or None)}")
        ckpt = run_checkpoint(name or "rpp", settings)
        on_step = TrainingProgress(steps)
        with checkpointed_run(node, "save_name", ckpt):
            result, bundle = pretrain_bundle(
                trainable_copy(vlm),
                data,
                config,
                save_path=target,
                info=info,
                teacher=teacher,
                steps=steps,
                batch_size=batch_size,
                lr=learning_rate,
                seed=seed,
                checkpoint_path=ckpt,
                checkpoint_every=max(10, steps // 10),
                callback=on_step,
                progress=False,
            )
        summary = bundle.summary()
        if teacher is not None:
            summary += f"\nsoft-label teacher: {teacher.name}"
        if source == "folder" and shots:
            summary += f"\nshots: {shots} per class"
            if short:
                listed = ", ".join(f"{k} ({v})" for k, v in list(short.items())[:10])
                more = " ..." if len(short) > 10 else ""
                summary += f"; {len(short)} class(es) with fewer, used with all they have: {listed}{more}"
        summary += f"\nsaved: {target}" if target else ""
        return io.NodeOutput(bundle, loss_curve_image(result.losses, title="RPP loss").unsqueeze(0), summary)

    @staticmethod
    def _folder(node: str, path: str, size: int, class_map: str, shots: int) -> FolderClassSource:
        """The ImageFolder source (:class:`FolderClassSource`); a bad mapping file names ``class_map``, anything
        else about the folder ``path``."""
        if class_map:
            try:
                read_class_map(os.path.expanduser(class_map))  # its own errors name class_map
            except (ValueError, OSError) as exc:  # OSError: a path too long ...
                raise NodeInputError(node, "class_map", str(exc), _CLASS_MAP_FIX) from None
        try:
            with warnings.catch_warnings():  # classes with fewer than `shots` images: reported in the summary
                warnings.simplefilter("ignore", UserWarning)
                return FolderClassSource(
                    path,
                    size=size,
                    class_map=os.path.expanduser(class_map) if class_map else None,
                    shots=shots,
                )
        except (ValueError, OSError) as exc:  # OSError: a path too long, unreadable ...
            if class_map and "class-name mapping" in str(exc):  # a class folder the mapping does not name
                raise NodeInputError(node, "class_map", str(exc), _CLASS_MAP_FIX) from None
            raise NodeInputError(
                node, "path", str(exc), "point 'path' at a folder with one sub-folder of images per class"
            ) from None


_CLASS_MAP_FIX = (
    "point 'class_map' at a mapping file with one line per class folder ('n01440764 tench, Tinca tinca', as "
    "ImageNet's LOC_synset_mapping.txt or words.txt) or a JSON object {folder id: name}, or leave it empty to use "
    "the folder names"
)


class LoadPretrainedPrompts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PWLoadPretrainedPrompts",
            display_name="Load Pretrained Prompts (RPP)",
            category=CATEGORY,
            description="Loads an RPP pretrained prompt bundle from ComfyUI/models/promptweave.",
            inputs=[
                io.Combo.Input(
                    "prompt_name",
                    options=model_files(),
                    tooltip="A .safetensors bundle written by Pretrain Prompts (RPP).",
                )
            ],
            outputs=[
                PretrainedPromptsType.Output(display_name="pretrained_prompts", tooltip="The pretrained bundle."),
                io.String.Output(display_name="summary", tooltip="Backbone, prompt shape, classes, training."),
            ],
        )

    @classmethod
    @check_inputs
    def execute(cls, prompt_name: str) -> io.NodeOutput:
        node = "PWLoadPretrainedPrompts"
        path = resolve_model_file(node, "prompt_name", prompt_name)
        try:
            bundle = load_pretrained_prompts(path)
        except ArtifactError as exc:
            raise NodeInputError(
                node, "prompt_name", str(exc), "pick a bundle written by Pretrain Prompts (RPP)"
            ) from None
        return io.NodeOutput(bundle, bundle.summary())


NODES: list[type[io.ComfyNode]] = [PretrainPrompts, LoadPretrainedPrompts]
