"""Run ComfyUI workflows headless: real ComfyUI code, in this process, with PromptWeave loaded.

Used by the test-suite and by ``make demo``; also handy for batch runs::

    python -m promptweave.headless --comfyui /path/to/ComfyUI --base out/comfy-base workflows/*.api.json

ComfyUI is configured with ``--base-directory`` semantics (models, custom_nodes, input, output and user
folders live under ``base_dir``), so a run never touches the files of a ComfyUI installation.
The recipe (import order, CPU flag, executor without cache) follows ComfyUI's own ``main.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

PACK_DIR = Path(__file__).resolve().parent
PACK_LINK_NAME = "PromptWeave"
BASE_SUBDIRS = ("models/checkpoints", "models/loras", "models/promptweave", "custom_nodes", "input", "output", "user")


class WorkflowError(RuntimeError):
    """A workflow failed validation or execution; the message holds ComfyUI's own error report."""


def prepare_base_directory(base_dir: str | os.PathLike[str], pack_dir: Path = PACK_DIR) -> Path:
    """Create the ComfyUI base folders and install the pack as ``custom_nodes/PromptWeave`` (a symlink)."""
    base = Path(base_dir).resolve()
    for sub in BASE_SUBDIRS:
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_LINK_NAME
    if link.is_symlink() and link.resolve() != pack_dir.resolve():
        link.unlink()
    if not link.exists():
        link.symlink_to(pack_dir, target_is_directory=True)
    settings = base / "user" / "default" / "comfy.settings.json"
    if not settings.exists():
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    return base


def find_comfyui_dir(explicit: str | None = None) -> Path | None:
    """The ComfyUI to use: ``explicit``, ``$COMFYUI_DIR``, the path recorded by the setup script, or none."""
    candidates = [explicit, os.environ.get("COMFYUI_DIR")]
    record = PACK_DIR / ".venv" / "comfyui-dir"
    if record.is_file():
        candidates.append(record.read_text().strip())
    candidates.append(str(PACK_DIR / ".cache" / "ComfyUI"))
    for candidate in candidates:
        if candidate and (Path(candidate) / "main.py").is_file():
            return Path(candidate).resolve()
    return None


class _ServerStub:
    """The few attributes ``execution.PromptExecutor`` uses from ``server.PromptServer``."""

    def __init__(self) -> None:
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages: list[tuple[str, Any]] = []

    def send_sync(self, event: str, data: Any, sid: Any = None) -> None:
        self.messages.append((event, data))

    def queue_updated(self) -> None:
        pass


class HeadlessComfyUI:
    """One real ComfyUI (nodes, validation, executor) in this process, with the pack loaded.

    ComfyUI's modules are process-global: create one instance per process.
    """

    def __init__(self, comfyui_dir: str | os.PathLike[str], base_dir: str | os.PathLike[str]) -> None:
        self.comfyui_dir = Path(comfyui_dir).resolve()
        self.base_dir = prepare_base_directory(base_dir)
        if str(self.comfyui_dir) not in sys.path[:1]:
            sys.path.insert(0, str(self.comfyui_dir))
        from comfy.cli_args import args

        args.cpu = True
        args.base_directory = str(self.base_dir)
        args.disable_api_nodes = True
        import folder_paths
        import utils.extra_config  # noqa: F401  (must come before `import nodes`, see environment notes)

        folder_paths.set_output_directory(str(self.base_dir / "output"))
        folder_paths.set_input_directory(str(self.base_dir / "input"))
        folder_paths.set_user_directory(str(self.base_dir / "user"))
        import execution

        import nodes

        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        pack_path = str(self.base_dir / "custom_nodes" / PACK_LINK_NAME)
        if not asyncio.run(nodes.load_custom_node(pack_path)):
            raise WorkflowError(f"ComfyUI could not load the PromptWeave pack from {pack_path}")
        self.pack_module_name = pack_path.replace(".", "_x_")  # the name ComfyUI registers the pack under
        self.nodes, self.execution, self.folder_paths = nodes, execution, folder_paths
        self.server = _ServerStub()
        self.executor = execution.PromptExecutor(
            self.server, cache_type=execution.CacheType.NONE, cache_args={"lru": 0, "ram": 0}
        )

    def pack_module(self, name: str):
        """A submodule of the pack as ComfyUI loaded it (its classes are the ones the nodes check against)."""
        return importlib.import_module(f"{self.pack_module_name}.{name}")

    def pack_node_ids(self) -> list[str]:
        return sorted(name for name in self.nodes.NODE_CLASS_MAPPINGS if name.startswith("PW"))

    def node_info(self, node_id: str) -> dict:
        """The ``/object_info`` entry of one node, built the way ComfyUI's server builds it."""
        node_class = self.nodes.NODE_CLASS_MAPPINGS[node_id]
        if hasattr(node_class, "GET_NODE_INFO_V1"):  # V3 nodes describe themselves
            return node_class.GET_NODE_INFO_V1()
        input_types = node_class.INPUT_TYPES()
        outputs = node_class.RETURN_TYPES
        return {
            "input": input_types,
            "input_order": {group: list(specs) for group, specs in input_types.items()},
            "output": list(outputs),
            "output_name": list(getattr(node_class, "RETURN_NAMES", outputs)),
            "name": node_id,
            "display_name": self.nodes.NODE_DISPLAY_NAME_MAPPINGS.get(node_id, node_id),
            "description": getattr(node_class, "DESCRIPTION", ""),
            "category": getattr(node_class, "CATEGORY", "sd"),
        }

    def run(self, prompt: dict) -> dict:
        """Validate and execute an API-format workflow; returns ComfyUI's history entry (outputs per node)."""
        prompt_id = str(uuid.uuid4())
        valid = asyncio.run(self.execution.validate_prompt(prompt_id, prompt, None))
        if not valid[0]:
            raise WorkflowError(f"workflow did not validate: {json.dumps(valid[1])} {json.dumps(valid[3])}")
        self.server.messages.clear()
        self.executor.execute(prompt, prompt_id, {"client_id": None}, valid[2])
        if not self.executor.success:
            errors = [data for event, data in self.executor.status_messages if event == "execution_error"]
            detail = errors[0] if errors else self.executor.status_messages
            raise WorkflowError(f"workflow failed: {json.dumps(detail, default=str)[:4000]}")
        return self.executor.history_result

    def output_files(self, history: dict) -> list[Path]:
        """Paths of the images the workflow's output nodes wrote."""
        files = []
        for node_output in history.get("outputs", {}).values():
            for image in node_output.get("images", []):
                root = {"output": "output", "temp": "temp"}.get(image.get("type", "output"), "output")
                folder = Path(self.folder_paths.get_directory_by_type(root) or self.base_dir / root)
                files.append(folder / image.get("subfolder", "") / image["filename"])
        return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m promptweave.headless", description=__doc__.splitlines()[0])
    parser.add_argument("workflows", nargs="+", help="API-format workflow JSON files")
    parser.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_DIR or the test install)")
    parser.add_argument("--base", default="out/comfy-base", help="ComfyUI base directory (models, output...)")
    ns = parser.parse_args(argv)
    comfyui = find_comfyui_dir(ns.comfyui)
    if comfyui is None:
        parser.error("no ComfyUI found: pass --comfyui or set COMFYUI_DIR")
    comfy = HeadlessComfyUI(comfyui, ns.base)
    for workflow in ns.workflows:
        history = comfy.run(json.loads(Path(workflow).read_text()))
        for path in comfy.output_files(history):
            print(f"{workflow}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
