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
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
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
        return [path for _, path in self.node_images(history)]

    def node_images(self, history: dict) -> list[tuple[str, Path]]:
        """``(node id, path)`` of every image the workflow's output nodes wrote, in the order they ran."""
        files = []
        for node_id, node_output in history.get("outputs", {}).items():
            for image in node_output.get("images", []):
                root = {"output": "output", "temp": "temp"}.get(image.get("type", "output"), "output")
                folder = Path(self.folder_paths.get_directory_by_type(root) or self.base_dir / root)
                files.append((str(node_id), folder / image.get("subfolder", "") / image["filename"]))
        return files

    @staticmethod
    def node_texts(history: dict) -> list[tuple[str, str]]:
        """``(node id, text)`` of every text the workflow's output nodes showed (Preview as Text: ``ui.text``)."""
        return [
            (str(node_id), str(text))
            for node_id, node_output in history.get("outputs", {}).items()
            for text in node_output.get("text", [])
        ]


class ServerStartError(RuntimeError):
    """The ComfyUI server process exited or did not answer in time; the message points at its log."""


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_tree_rss_mb(pid: int) -> float:
    """Resident memory (``VmRSS`` of ``/proc/<pid>/status``) of a process and all its descendants, in MiB."""

    def children(p: int) -> list[int]:
        found: list[int] = []
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
        return found

    total_kb, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
                    break
        except OSError:  # exited meanwhile
            continue
        todo += children(p)
    return total_kb / 1024.0


class ComfyUIServer:
    """A real ComfyUI server (``main.py``) as a child process on loopback, with ``base_dir`` as its base directory.

    Use as a context manager (or ``start()`` / ``stop()``); ``stop()`` terminates the process, then kills it after
    ``stop_timeout`` seconds. ``run(prompt)`` queues an API workflow with ``POST /prompt`` and polls
    ``GET /history/{id}`` until ComfyUI reports it finished. The server's output goes to ``log_path``.
    """

    def __init__(
        self,
        comfyui_dir: str | os.PathLike[str],
        base_dir: str | os.PathLike[str],
        *,
        log_path: str | os.PathLike[str] | None = None,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.comfyui_dir = Path(comfyui_dir).resolve()
        self.base_dir = Path(base_dir).resolve()
        self.log_path = Path(log_path) if log_path else self.base_dir / "user" / "comfyui-server.log"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = tuple(extra_args)
        self.env = env
        self.client_id = f"promptweave-{uuid.uuid4().hex[:8]}"
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the ComfyUI server is not started")
        return self.process.pid

    def rss_mb(self) -> float:
        """Resident memory of the server process and its children, in MiB."""
        return process_tree_rss_mb(self.pid)

    def start(self, timeout: float = 120.0) -> str:
        """Start the server and wait until ``/object_info/KSampler`` answers; returns its URL."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w")
        command = [
            sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-auto-launch", "--disable-api-nodes", "--base-directory", str(self.base_dir),
            "--database-url", f"sqlite:///{self.base_dir}/user/comfyui.db", *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, cwd=self.comfyui_dir, stdout=self._log, stderr=subprocess.STDOUT, env=self.env
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise ServerStartError(f"ComfyUI server exited early; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/object_info/KSampler", timeout=2):
                    return self.url
            except OSError:
                if time.monotonic() > deadline:
                    raise ServerStartError(
                        f"ComfyUI server did not answer within {timeout:.0f} s; see {self.log_path}"
                    ) from None
                time.sleep(0.5)

    def stop(self, stop_timeout: float = 20.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ComfyUIServer:
        """Starts the server unless ``start()`` was called already."""
        try:
            if self.process is None:
                self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def get_json(self, path: str, timeout: float = 30.0) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=timeout) as response:
            return json.loads(response.read())

    def queue(self, prompt: dict) -> str:
        """``POST /prompt``; returns the prompt id, or raises :class:`WorkflowError` with ComfyUI's report."""
        request = urllib.request.Request(
            f"{self.url}/prompt",
            data=json.dumps({"prompt": prompt, "client_id": self.client_id}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # ComfyUI answers 400 with its validation report
            detail = exc.read().decode(errors="replace")[:4000]
            raise WorkflowError(f"POST /prompt answered {exc.code}: {detail}") from None
        if answer.get("node_errors"):
            raise WorkflowError(f"workflow did not validate: {json.dumps(answer['node_errors'])[:4000]}")
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 120.0, poll: float = 0.05) -> dict:
        """Poll ``GET /history/{id}`` until the run finished; returns its history entry (``status``, ``outputs``)."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            status = (entry or {}).get("status") or {}
            if status.get("completed") or status.get("status_str") in ("success", "error"):
                return entry
            if self.process is not None and self.process.poll() is not None:
                raise WorkflowError(f"ComfyUI server exited while running {prompt_id}; see {self.log_path}")
            if time.monotonic() > deadline:
                raise WorkflowError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")
            time.sleep(poll)

    def run(self, prompt: dict, timeout: float = 120.0, poll: float = 0.05) -> dict:
        """Queue ``prompt`` and wait for its history entry."""
        return self.wait(self.queue(prompt), timeout=timeout, poll=poll)


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
