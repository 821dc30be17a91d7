"""Shared pieces of the node layer: errors that name the node and input, and our models folder."""

from __future__ import annotations

import os

import folder_paths

from ..prompt_modules.artifacts import UnsafeNameError, safe_child_path

MODELS_FOLDER = "promptweave"
"""``folder_paths`` key of ``ComfyUI/models/promptweave/``, where PromptWeave artifacts live."""


class NodeInputError(ValueError):
    """Bad input to a node: the message names the node, the input and the fix."""

    def __init__(self, node: str, input_name: str, problem: str, fix: str) -> None:
        super().__init__(f"{node}: input '{input_name}': {problem}. Fix: {fix}")
        self.node, self.input_name = node, input_name


def register_models_folder() -> str:
    """Register ``models/promptweave`` with ComfyUI (idempotent) and return its path."""
    path = os.path.join(folder_paths.models_dir, MODELS_FOLDER)
    if MODELS_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[MODELS_FOLDER] = ([path], {".safetensors"})
    return folder_paths.folder_names_and_paths[MODELS_FOLDER][0][0]


def model_files() -> list[str]:
    """The ``.safetensors`` files in the PromptWeave models folder(s), for combo inputs."""
    register_models_folder()
    return folder_paths.get_filename_list(MODELS_FOLDER)


def resolve_model_file(node: str, input_name: str, name: str) -> str:
    """Full path of ``name`` in the PromptWeave models folder, or a clear error saying where to put it."""
    register_models_folder()
    path = folder_paths.get_full_path(MODELS_FOLDER, name) if name else None
    if path is None:
        folders = ", ".join(folder_paths.get_folder_paths(MODELS_FOLDER))
        raise NodeInputError(
            node, input_name, f"file '{name}' was not found",
            f"put the .safetensors file in {folders} and refresh the page (R)",
        )
    return path


def output_model_path(node: str, input_name: str, name: str, folder_key: str = MODELS_FOLDER) -> str:
    """Where a node may save ``name`` (``.safetensors`` added) inside a models folder; unsafe names refused."""
    if folder_key == MODELS_FOLDER:
        register_models_folder()
    folder = folder_paths.get_folder_paths(folder_key)[0]
    os.makedirs(folder, exist_ok=True)
    try:
        return str(safe_child_path(folder, name))
    except UnsafeNameError as exc:
        raise NodeInputError(
            node, input_name, str(exc), "use a plain file name such as 'my-style' (sub-folders with '/')"
        ) from None
