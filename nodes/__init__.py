"""PromptWeave's ComfyUI nodes: thin wrappers that convert ComfyUI types and call ``prompt_modules``.

One file per capability (``nodes_<capability>.py``), each exporting ``NODES``. Only ever imported as a
subpackage of the pack: ComfyUI owns the top-level name ``nodes``.
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import (
    nodes_adaptation,
    nodes_diff_prompt,
    nodes_dual_prompt,
    nodes_inversion,
    nodes_learned_prompt,
    nodes_pretraining,
    nodes_world,
)
from ._common import register_models_folder

NODE_MODULES = [
    nodes_learned_prompt,
    nodes_world,
    nodes_inversion,
    nodes_adaptation,
    nodes_dual_prompt,
    nodes_diff_prompt,
    nodes_pretraining,
]


def all_nodes() -> list[type[io.ComfyNode]]:
    return [node for module in NODE_MODULES for node in module.NODES]


class PromptWeaveExtension(ComfyExtension):
    async def on_load(self) -> None:
        register_models_folder()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        register_models_folder()
        return all_nodes()
