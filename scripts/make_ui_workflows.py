"""Write the UI-format twin of every API-format workflow in ``workflows/api/``.

The UI format (what the ComfyUI window loads, saves and shows in its templates browser) is derived from the
API format and the real ComfyUI node definitions (``/object_info``), so widget order always matches the
nodes. Run after editing a workflow::

    .venv/bin/python scripts/make_ui_workflows.py          # rewrite workflows/*.json
    .venv/bin/python scripts/make_ui_workflows.py --check  # exit 1 if any file is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
NODE_WIDTH, COLUMN_GAP, ROW_GAP = 320, 40, 40


def _is_widget(spec: list) -> bool:
    kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if options.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _ordered_inputs(info: dict) -> list[tuple[str, list]]:
    order = info.get("input_order", {})
    specs = info["input"]
    return [(name, specs[group][name]) for group in ("required", "optional") for name in order.get(group, [])]


def _node_height(info: dict, inputs: list, widgets: list, class_type: str) -> int:
    """Height the frontend gives a node: slot rows, widget rows (multiline text is tall), image preview."""
    slots = max(len(inputs), len(info["output"]))
    multiline = sum(1 for _, spec in _ordered_inputs(info)
                    if len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("multiline"))
    preview = 200 if class_type in {"SaveImage", "PreviewImage"} else 0
    return 36 + 24 * slots + 26 * (len(widgets) - multiline) + 110 * multiline + preview


def _depths(prompt: dict) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(node_id: str) -> int:
        if node_id not in depth:
            parents = [v[0] for v in prompt[node_id]["inputs"].values() if isinstance(v, list) and len(v) == 2]
            depth[node_id] = 1 + max((visit(p) for p in parents), default=-1)
        return depth[node_id]

    for node_id in prompt:
        visit(node_id)
    return depth


def api_to_ui(prompt: dict, node_info: dict[str, dict]) -> dict:
    """Convert an API-format prompt to a LiteGraph/ComfyUI UI workflow (version 0.4)."""
    depth = _depths(prompt)
    rows: dict[int, int] = {}
    links: list[list] = []
    nodes: list[dict] = []
    outputs_links: dict[tuple[str, int], list[int]] = {}
    for node_id in sorted(prompt, key=int):
        for value in prompt[node_id]["inputs"].values():
            if isinstance(value, list) and len(value) == 2:
                outputs_links.setdefault((str(value[0]), int(value[1])), [])
    for order, node_id in enumerate(sorted(prompt, key=lambda n: (depth[n], int(n)))):
        node = prompt[node_id]
        info = node_info[node["class_type"]]
        inputs, widgets = [], []
        for name, spec in _ordered_inputs(info):
            value = node["inputs"].get(name)
            if isinstance(value, list) and len(value) == 2:
                link_id = len(links) + 1
                origin, slot = str(value[0]), int(value[1])
                out_type = node_info[prompt[origin]["class_type"]]["output"][slot]
                links.append([link_id, int(origin), slot, int(node_id), len(inputs), out_type])
                outputs_links[(origin, slot)].append(link_id)
                entry = {"name": name, "type": spec[0] if isinstance(spec[0], str) else "COMBO", "link": link_id}
                if _is_widget(spec):
                    entry["widget"] = {"name": name}
                inputs.append(entry)
            elif _is_widget(spec):
                widgets.append(value)
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                # The frontend adds a "control after generate" widget where the option asks for one, and by
                # default to INT inputs named seed/noise_seed (useIntWidget in comfyui-frontend-package).
                default_control = spec[0] == "INT" and name in ("seed", "noise_seed")
                if options.get("control_after_generate", default_control):
                    widgets.append("fixed")
            else:
                inputs.append({"name": name, "type": spec[0], "link": None})
        column = depth[node_id]
        row = rows.get(column, 0)
        height = _node_height(info, inputs, widgets, node["class_type"])
        rows[column] = row + height + ROW_GAP
        nodes.append(
            {
                "id": int(node_id),
                "type": node["class_type"],
                "pos": [40 + column * (NODE_WIDTH + COLUMN_GAP), 40 + row],
                "size": [NODE_WIDTH, height],
                "flags": {},
                "order": order,
                "mode": 0,
                "title": node.get("_meta", {}).get("title", info.get("display_name", node["class_type"])),
                "inputs": inputs,
                "outputs": [],
                "properties": {"Node name for S&R": node["class_type"]},
                "widgets_values": widgets,
                "_outputs": [(slot, name, kind) for slot, (name, kind) in
                             enumerate(zip(info["output_name"], info["output"], strict=True))],
            }
        )
    for node in nodes:
        node["outputs"] = [
            {"name": name, "type": kind, "slot_index": slot, "links": outputs_links.get((str(node["id"]), slot), [])}
            for slot, name, kind in node.pop("_outputs")
        ]
    nodes.sort(key=lambda n: n["id"])
    return {
        "last_node_id": max(n["id"] for n in nodes),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}},
        "version": 0.4,
    }


def build_all(node_info_for) -> dict[Path, str]:
    """Map each UI workflow path to its expected text, from every ``workflows/api/*.json``."""
    result = {}
    for api_path in sorted((ROOT / "workflows" / "api").glob("*.json")):
        prompt = json.loads(api_path.read_text())
        info = {node["class_type"]: node_info_for(node["class_type"]) for node in prompt.values()}
        ui = api_to_ui(prompt, info)
        result[ROOT / "workflows" / api_path.name] = json.dumps(ui, indent=1) + "\n"
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the UI files are up to date")
    ns = parser.parse_args()
    sys.path.insert(0, str(ROOT.parent))
    from promptweave.headless import HeadlessComfyUI, find_comfyui_dir

    comfy = HeadlessComfyUI(find_comfyui_dir(), tempfile.mkdtemp(prefix="pw-ui-"))
    stale = []
    for path, text in build_all(comfy.node_info).items():
        if not path.exists() or path.read_text() != text:
            stale.append(path)
            if not ns.check:
                path.write_text(text)
    for path in stale:
        print(("out of date: " if ns.check else "wrote ") + str(path.relative_to(ROOT)))
    return 1 if ns.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
