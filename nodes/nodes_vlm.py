"""Load any CLIP a user has as PromptWeave's VLM: the type every capability's nodes take (issue: "any CLIP").

Sources: a CLIP in ``models/vlm`` (an open_clip hub folder, a transformers CLIP folder, or a safetensors file
with its config beside it or an open_clip model name), a text encoder from ``models/text_encoders`` (``clip_l``,
``clip_g`` layout) with a CLIP-vision file from ``models/clip_vision``, or the CLIP / CLIP_VISION outputs of
ComfyUI's own loaders. All of it is :func:`~..prompt_modules.core.vlm.load_vlm` /
:func:`~..prompt_modules.core.vlm.vlm_from_state_dicts`; this node only finds the files and unwraps the objects.
"""

from __future__ import annotations

import os

import folder_paths
import torch
from comfy_api.latest import io

from ..prompt_modules.core.artifacts import ArtifactError, UnsafeNameError, read_safetensors, safe_child_path
from ..prompt_modules.core.vlm import load_vlm, vlm_from_state_dicts
from ._common import NodeInputError, check_inputs, register_models_folder
from ._types import VLMType

NODE = "PWLoadVLM"
NONE = "none"
VLM_FOLDER = "vlm"
"""``folder_paths`` key of ``ComfyUI/models/vlm/``: whole CLIPs (open_clip or transformers folders, or files)."""
TEXT_FOLDER, VISION_FOLDER = "text_encoders", "clip_vision"
ACTIVATIONS = ("auto", "quick_gelu", "gelu")
TOWERS = ("auto", "clip_l", "clip_g")
#: Files that describe a CLIP model folder (open_clip hub layout, transformers layout).
FOLDER_MARKERS = ("open_clip_config.json", "config.json")


def _vlm_roots() -> list[str]:
    """The ``models/vlm`` folders (registered with ComfyUI on first use)."""
    register_models_folder(VLM_FOLDER)
    return folder_paths.get_folder_paths(VLM_FOLDER)


def _vlm_entries() -> list[str]:
    """``vlm/<name>`` for each model folder and safetensors file in ``models/vlm``."""
    names = []
    for root in _vlm_roots():
        if not os.path.isdir(root):
            continue
        for name in sorted(os.listdir(root)):
            path = os.path.join(root, name)
            is_model_folder = os.path.isdir(path) and any(os.path.isfile(os.path.join(path, m)) for m in FOLDER_MARKERS)
            if is_model_folder or name.endswith(".safetensors"):
                names.append(f"{VLM_FOLDER}/{name}")
    return names


def _files(folder: str) -> list[str]:
    try:
        return [n for n in folder_paths.get_filename_list(folder) if n.endswith(".safetensors")]
    except KeyError:  # a ComfyUI without that models folder
        return []


def _clip_choices() -> list[str]:
    return [NONE, *_vlm_entries(), *_files(TEXT_FOLDER)]


def _resolve(input_name: str, name: str) -> str:
    """Full path of a ``clip_name`` / ``clip_vision_name`` choice, or an error saying where to put the file."""
    if name.startswith(f"{VLM_FOLDER}/"):
        for root in _vlm_roots():
            try:
                path = safe_child_path(root, name[len(VLM_FOLDER) + 1:], suffix="")
            except UnsafeNameError as exc:
                raise NodeInputError(NODE, input_name, str(exc), "pick an entry of the list") from None
            if path.exists():
                return str(path)
        where = ", ".join(_vlm_roots())
    else:
        folder = VISION_FOLDER if input_name == "clip_vision_name" else TEXT_FOLDER
        path = folder_paths.get_full_path(folder, name)
        if path is not None:
            return path
        where = ", ".join(folder_paths.get_folder_paths(folder))
    raise NodeInputError(NODE, input_name, f"'{name}' was not found", f"put it in {where} and refresh the page (R)")


def _state_dict(input_name: str, model) -> dict[str, torch.Tensor]:
    """The weights of a connected ComfyUI CLIP / CLIP_VISION (``get_sd()``), or an error naming the input."""
    state = model.get_sd() if callable(getattr(model, "get_sd", None)) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        kind = "CLIP" if input_name == "clip" else "CLIP_VISION"
        raise NodeInputError(NODE, input_name, f"this is not a ComfyUI {kind} with weights",
                             "connect Load CLIP" if input_name == "clip" else "connect Load CLIP Vision")
    return state


def _text_state(clip, tower: str) -> tuple[str, dict[str, torch.Tensor]]:
    """``(tower, text state dict in transformers keys)`` of a ComfyUI CLIP (``clip_l``/``clip_g`` inside)."""
    state = _state_dict("clip", clip)
    towers = sorted({k.split(".", 1)[0] for k in state if ".transformer.text_model." in k})
    if not towers:
        raise NodeInputError(NODE, "clip", "this CLIP holds no CLIP text tower (clip_l / clip_g)",
                             "connect the CLIP of an SD1.x/SD2.x/SDXL checkpoint or of Load CLIP")
    if tower == "auto":
        tower = "clip_g" if "clip_g" in towers else towers[0]
    if tower not in towers:
        raise NodeInputError(NODE, "clip_tower", f"this CLIP has the towers {towers}, not '{tower}'",
                             f"pick one of {towers} or 'auto'")
    prefix = f"{tower}.transformer."
    text = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    projection = text.get("text_projection.weight")
    # ComfyUI leaves a checkpoint's missing projection as it allocated it (zeros here); identity or non-finite
    # values are no trained projection either
    untrained = projection is None or not bool(projection.any()) or not bool(torch.isfinite(projection).all())
    if untrained or torch.equal(projection.float(), torch.eye(projection.shape[0], dtype=torch.float32)):
        raise NodeInputError(NODE, "clip", f"the {tower} text tower of this CLIP has no trained text projection "
                             "(SD checkpoints do not carry one)",
                             f"load the {tower}.safetensors text encoder with clip_name (models/text_encoders)")
    return tower, text


class LoadVLM(io.ComfyNode):
    """Any CLIP as PromptWeave's VLM, for every capability (DCAR, RPP, Diff-Prompt, IPL's judge, inversion)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PWLoadVLM",
            display_name="Load VLM (any CLIP)",
            category="PromptWeave/models",
            description="Loads a CLIP model you have as the VLM every PromptWeave capability takes: a whole CLIP "
            "from models/vlm (open_clip hub folder, transformers CLIP folder, or a .safetensors with its config "
            "or an open_clip model name), or a text encoder from models/text_encoders (clip_l / clip_g) with a "
            "CLIP-vision file of the same model, or the CLIP and CLIP_VISION outputs of ComfyUI's loaders. "
            "Random-weight files work too; no weights are downloaded.",
            inputs=[
                io.Combo.Input("clip_name", options=_clip_choices(), default=NONE,
                               tooltip="A whole CLIP (vlm/...) or a text encoder file (clip_l.safetensors, "
                               "clip_g.safetensors); 'none' to use the connected CLIP instead."),
                io.Combo.Input("clip_vision_name", options=[NONE, *_files(VISION_FOLDER)], default=NONE,
                               tooltip="The CLIP-vision file of the same model as the text encoder (ViT-L/14 for "
                               "clip_l, ViT-bigG/14 for clip_g); 'none' for a whole CLIP or a connected "
                               "CLIP_VISION."),
                io.String.Input("open_clip_model", default="",
                                tooltip="For a bare open_clip .safetensors without a config beside it: the open_clip "
                                "model name (ViT-B-32, ViT-L-14, ViT-H-14, ViT-bigG-14, ...-quickgelu)."),
                io.Combo.Input("activation", options=list(ACTIVATIONS), default="auto",
                               tooltip="auto: from the config or the model family (OpenAI CLIPs use quick_gelu, "
                               "OpenCLIP's ViT-H/bigG GELU); set it when a file does not say."),
                io.Combo.Input("clip_tower", options=list(TOWERS), default="auto",
                               tooltip="Which text tower of a connected CLIP to use (SDXL carries clip_l and "
                               "clip_g); auto = clip_g when present."),
                io.Clip.Input("clip", optional=True,
                              tooltip="ComfyUI's CLIP (Load CLIP with clip_l/clip_g); used when clip_name is none."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="ComfyUI's CLIP_VISION (Load CLIP Vision); used when clip_vision_name is "
                                    "none."),
            ],
            outputs=[VLMType.Output(display_name="vlm", tooltip="The CLIP as a PromptWeave VLM (eval mode).")],
        )

    @classmethod
    @check_inputs
    def execute(cls, clip_name: str, clip_vision_name: str, open_clip_model: str, activation: str,
                clip_tower: str, clip=None, clip_vision=None) -> io.NodeOutput:
        quick_gelu = {"auto": None, "quick_gelu": True, "gelu": False}.get(activation)
        if activation not in ACTIVATIONS:
            raise NodeInputError(NODE, "activation", f"unknown activation {activation!r}", f"use one of {ACTIVATIONS}")
        model_name = open_clip_model.strip() or None
        vision_path = None if clip_vision_name == NONE else _resolve("clip_vision_name", clip_vision_name)
        try:
            if clip_name != NONE:
                source = _resolve("clip_name", clip_name)
                if vision_path is None and clip_vision is not None:
                    vlm = vlm_from_state_dicts(read_safetensors(source)[0], _state_dict("clip_vision", clip_vision),
                                               model_name=model_name, quick_gelu=quick_gelu, source=source,
                                               vision_source="the connected CLIP_VISION")
                else:
                    vlm = load_vlm(source, vision_path, model_name=model_name, quick_gelu=quick_gelu)
            elif clip is not None:
                tower, text = _text_state(clip, clip_tower)
                if vision_path is not None:
                    vision, vision_source = read_safetensors(vision_path)[0], vision_path
                elif clip_vision is not None:
                    vision, vision_source = _state_dict("clip_vision", clip_vision), "the connected CLIP_VISION"
                else:
                    raise NodeInputError(NODE, "clip_vision", f"the {tower} text tower needs the vision tower of its "
                                         "model", "connect Load CLIP Vision or pick clip_vision_name")
                vlm = vlm_from_state_dicts(text, vision, model_name=model_name, quick_gelu=quick_gelu,
                                           source=f"the connected CLIP ({tower})", vision_source=str(vision_source))
            else:
                raise NodeInputError(NODE, "clip_name", "no CLIP is chosen or connected",
                                     "pick a file in clip_name or connect a CLIP")
        except ArtifactError as exc:
            blame = "clip_name" if clip_name != NONE else "clip"
            if "vision" in str(exc).lower() and (vision_path is not None or clip_vision is not None):
                blame = "clip_vision_name" if vision_path is not None else "clip_vision"
            raise NodeInputError(NODE, blame, str(exc), "use a matching file: the message says which") from None
        return io.NodeOutput(vlm)


NODES: list[type[io.ComfyNode]] = [LoadVLM]
