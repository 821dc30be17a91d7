"""Write the UI-format twin of every API-format workflow in ``workflows/api/``.

The UI format (what the ComfyUI window loads, saves and shows in its templates browser) is derived from the
API format and the real ComfyUI node definitions (``/object_info``), so widget order always matches the
nodes. Each UI workflow also gets a note (a frontend-only MarkdownNote node, above the graph) with the
workflow's one-line description and its note from ``workflows/meta/descriptions.json``; every API workflow
needs an entry there. Run after editing a workflow::

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
MAX_COLUMNS = 10  # a deeper graph is laid out in bands of columns, one below the other, to stay legible
# Not workflows/*.json: ComfyUI lists every .json file of the templates folder as a template.
DESCRIPTIONS = ROOT / "workflows" / "meta" / "descriptions.json"
NOTE_WIDTH, NOTE_CHARS_PER_LINE, NOTE_LINE_HEIGHT = 2 * NODE_WIDTH + COLUMN_GAP, 80, 22


def load_descriptions() -> dict[str, dict[str, str]]:
    """``{workflow name: {"description": one line, "note": markdown}}`` from workflows/meta/descriptions.json."""
    return json.loads(DESCRIPTIONS.read_text())


def describe(name: str, descriptions: dict[str, dict[str, str]]) -> dict[str, str]:
    """The entry of workflow ``name``; a clear error names the file to edit when it is missing or incomplete."""
    entry = descriptions.get(name) or {}
    missing = [key for key in ("description", "note") if not str(entry.get(key, "")).strip()]
    if missing:
        raise KeyError(
            f"{DESCRIPTIONS.relative_to(ROOT)} lacks {' and '.join(missing)} for workflow {name!r}: add "
            f'"{name}": {{"description": "<one line: what it shows>", "note": "<what it does, what to change>"}}'
        )
    return entry


def note_text(entry: dict[str, str]) -> str:
    return f"**{entry['description'].strip()}**\n\n{entry['note'].strip()}"


def _note_height(text: str) -> int:
    lines = sum(max(1, -(-len(line) // NOTE_CHARS_PER_LINE)) for line in text.splitlines())
    return 60 + NOTE_LINE_HEIGHT * lines


def add_note(ui: dict, entry: dict[str, str]) -> dict:
    """Put a MarkdownNote ("About this workflow") above the graph; the nodes move down to make room."""
    text = note_text(entry)
    height = _note_height(text)
    for node in ui["nodes"]:
        node["pos"][1] += height + ROW_GAP
        node["order"] += 1
    note_id = ui["last_node_id"] + 1
    ui["nodes"].append(
        {
            "id": note_id,
            "type": "MarkdownNote",
            "pos": [40, 40],
            "size": [NOTE_WIDTH, height],
            "flags": {},
            "order": 0,
            "mode": 0,
            "inputs": [],
            "outputs": [],
            "title": "About this workflow",
            "properties": {},
            "widgets_values": [text],
            "color": "#432",
            "bgcolor": "#653",
        }
    )
    ui["last_node_id"] = note_id
    return ui


def _is_widget(spec: list) -> bool:
    kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if options.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _default_value(spec: list):
    """The value a widget starts with: its default, else the first option of a combo, else the type's zero."""
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in options:
        return options["default"]
    choices = spec[0] if isinstance(spec[0], list) else options.get("options")
    if choices:
        return choices[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(spec[0])


def _widget_values(name: str, spec: list, value) -> list:
    """The widgets_values entries of one widget input: its value, plus the "control after generate" mode
    where the frontend adds one (where the option asks for it, and by default to INT inputs named
    seed/noise_seed: useIntWidget in comfyui-frontend-package)."""
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    default_control = spec[0] == "INT" and name in ("seed", "noise_seed")
    return [value, "fixed"] if options.get("control_after_generate", default_control) else [value]


def _ordered_inputs(info: dict) -> list[tuple[str, list]]:
    order = info.get("input_order", {})
    specs = info["input"]
    return [(name, specs[group][name]) for group in ("required", "optional") for name in order.get(group, [])]


def _node_height(info: dict, inputs: list, widgets: list, class_type: str) -> int:
    """Height the frontend gives a node: slot rows, widget rows (multiline text is tall), image preview."""
    slots = max(len(inputs), len(info["output"]))
    multiline = sum(1 for _, spec in _ordered_inputs(info)
                    if len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("multiline"))
    preview = 200 if class_type in {"SaveImage", "PreviewImage"} else 140 if class_type == "PreviewAny" else 0
    return 36 + 24 * slots + 26 * (len(widgets) - multiline) + 130 * multiline + preview


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


def _late_depths(prompt: dict, depth: dict[str, int]) -> dict[str, int]:
    """Columns for a deep graph: each node that feeds others moves right, to just before its first consumer
    (output nodes stay where they are), so that no column collects every node that only needs a loader."""
    consumers: dict[str, list[str]] = {node_id: [] for node_id in prompt}
    for node_id, node in prompt.items():
        for value in node["inputs"].values():
            if isinstance(value, list) and len(value) == 2:
                consumers[str(value[0])].append(node_id)
    late: dict[str, int] = {}

    def visit(node_id: str) -> int:
        if node_id not in late:
            after = [visit(c) for c in consumers[node_id]]
            late[node_id] = max(depth[node_id], min(after) - 1) if after else depth[node_id]
        return late[node_id]

    for node_id in prompt:
        visit(node_id)
    return late


def _wrap_columns(nodes: list[dict], depth: dict[str, int], rows: dict[int, int]) -> None:
    """Lay the columns of a graph deeper than MAX_COLUMNS out in bands (equal numbers of columns), each band
    below the previous one, so that the whole graph fits a screen at a readable zoom."""
    n_columns = max(depth.values()) + 1
    if n_columns <= MAX_COLUMNS:
        return
    n_bands = -(-n_columns // MAX_COLUMNS)
    per_band = -(-n_columns // n_bands)
    band_top, top = [], 0
    for band in range(n_bands):
        band_top.append(top)
        top += max(rows.get(c, 0) for c in range(band * per_band, (band + 1) * per_band)) + 2 * ROW_GAP
    for node in nodes:
        column = depth[str(node["id"])]
        band = column // per_band
        node["pos"] = [40 + (column % per_band) * (NODE_WIDTH + COLUMN_GAP), node["pos"][1] + band_top[band]]


def api_to_ui(prompt: dict, node_info: dict[str, dict]) -> dict:
    """Convert an API-format prompt to a LiteGraph/ComfyUI UI workflow (version 0.4)."""
    depth = _depths(prompt)
    if max(depth.values()) + 1 > MAX_COLUMNS:
        depth = _late_depths(prompt, depth)
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
                    # A linked widget keeps its widget (and its slot in widgets_values) in the frontend.
                    widgets.extend(_widget_values(name, spec, _default_value(spec)))
                inputs.append(entry)
            elif _is_widget(spec):
                value = _default_value(spec) if name not in node["inputs"] else value  # an optional input left out
                widgets.extend(_widget_values(name, spec, value))
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
    _wrap_columns(nodes, depth, rows)
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
    descriptions = load_descriptions()
    for api_path in sorted((ROOT / "workflows" / "api").glob("*.json")):
        prompt = json.loads(api_path.read_text())
        info = {node["class_type"]: node_info_for(node["class_type"]) for node in prompt.values()}
        ui = add_note(api_to_ui(prompt, info), describe(api_path.stem, descriptions))
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
