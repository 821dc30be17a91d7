"""The example workflows as files: each has its description, note and thumbnail, where ComfyUI and the demo look."""

from __future__ import annotations

import json
import re
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parents[2]
WORKFLOWS = PACK_DIR / "workflows"
DESCRIPTIONS = WORKFLOWS / "meta" / "descriptions.json"
API_NAMES = sorted(p.stem for p in (WORKFLOWS / "api").glob("*.json"))


def test_every_workflow_has_a_one_line_description_and_a_note():
    """workflows/meta/descriptions.json: the template's description (not its file name) and the note that
    scripts/make_ui_workflows.py puts into the UI workflow. A new workflow needs an entry."""
    assert API_NAMES
    descriptions = json.loads(DESCRIPTIONS.read_text())
    missing = [name for name in API_NAMES if name not in descriptions]
    assert not missing, f"add an entry for {missing} to {DESCRIPTIONS.relative_to(PACK_DIR)}"
    stale = sorted(set(descriptions) - set(API_NAMES))
    assert not stale, f"{DESCRIPTIONS.relative_to(PACK_DIR)} describes workflows that do not exist: {stale}"
    for name in API_NAMES:
        entry = descriptions[name]
        description, note = entry["description"].strip(), entry["note"].strip()
        assert "\n" not in description and 20 <= len(description) <= 200, (name, description)
        assert description.lower().replace(" ", "_") != name and name not in description, (name, description)
        assert "what it does" in note.lower() and "what to change" in note.lower(), (name, note)


def test_every_template_has_its_thumbnail_beside_it():
    """ComfyUI's template browser asks for /api/workflow_templates/<pack>/<name>.jpg, served from workflows/."""
    ui_names = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    assert ui_names == API_NAMES, "every UI workflow has an API twin in workflows/api/ and vice versa"
    missing = [name for name in ui_names if not (WORKFLOWS / f"{name}.jpg").is_file()]
    assert not missing, f"no thumbnail workflows/<name>.jpg for {missing} (a screenshot of the workflow)"
    for name in ui_names:
        assert (WORKFLOWS / f"{name}.jpg").read_bytes()[:3] == b"\xff\xd8\xff", f"{name}.jpg is not a JPEG"


def test_every_ui_workflow_carries_its_note():
    descriptions = json.loads(DESCRIPTIONS.read_text())
    for name in API_NAMES:
        ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
        notes = [n for n in ui["nodes"] if n["type"] == "MarkdownNote"]
        assert len(notes) == 1, f"{name}: run `make ui-workflows`"
        assert descriptions[name]["description"].strip() in notes[0]["widgets_values"][0], name


def test_readme_shows_the_served_thumbnails():
    readme = (PACK_DIR / "README.md").read_text()
    shown = set(re.findall(r'<img src="workflows/(\w+)\.jpg"', readme))
    assert shown == set(API_NAMES), sorted(shown ^ set(API_NAMES))
