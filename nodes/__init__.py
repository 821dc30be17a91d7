"""PromptWeave's ComfyUI nodes: thin wrappers that convert ComfyUI types and call ``prompt_modules``.

One file per capability (``nodes_<capability>.py``), each exporting ``NODES``. Only ever imported as a
subpackage of the pack: ComfyUI owns the top-level name ``nodes``.
"""

from __future__ import annotations

import importlib
import logging

from comfy_api.latest import ComfyExtension, io

from ._common import OPTIONAL_DEPENDENCIES, missing_dependency_hint, register_models_folder

#: The capability modules, in menu order. Each is imported on its own, so that a missing optional dependency
#: disables that capability's nodes (with an install hint in the log) instead of the whole pack.
NODE_MODULE_NAMES = (
    "nodes_learned_prompt",
    "nodes_world",
    "nodes_vlm",
    "nodes_inversion",
    "nodes_adaptation",
    "nodes_dual_prompt",
    "nodes_diff_prompt",
    "nodes_pretraining",
)
LOG = logging.getLogger("promptweave")


def _import_node_modules() -> tuple[list, dict[str, str]]:
    """``(modules, unavailable)``: the capability modules that import, and for the others the install hint."""
    modules, unavailable = [], {}
    for name in NODE_MODULE_NAMES:
        try:
            modules.append(importlib.import_module(f".{name}", __name__))
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").split(".")[0]
            if missing not in OPTIONAL_DEPENDENCIES:
                raise
            hint = missing_dependency_hint(missing)
            unavailable[name] = hint
            LOG.warning("PromptWeave: the %s nodes are unavailable: %s.", name.removeprefix("nodes_"), hint)
    return modules, unavailable


NODE_MODULES, UNAVAILABLE = _import_node_modules()


def all_nodes() -> list[type[io.ComfyNode]]:
    return [node for module in NODE_MODULES for node in module.NODES]


class PromptWeaveExtension(ComfyExtension):
    async def on_load(self) -> None:
        register_models_folder()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        register_models_folder()
        return all_nodes()
