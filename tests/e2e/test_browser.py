"""The pack in ComfyUI's own frontend, driven by Playwright in the system Chromium.

For every UI workflow of ``workflows/*.json``: load it into the served frontend (``app.loadGraphData``), check
that every node type is known and no node is flagged, queue it (``app.queuePrompt``), wait for ComfyUI to report
success and for the output node to show its image, and keep a screenshot in ``out/test-artifacts``.
Console errors and uncaught page errors that come from the pack or the workflows fail the test.
Then, for every UI workflow, the prompt the frontend builds from it (``app.graphToPrompt``) must be its API twin
in ``workflows/api/``: widget values and links survive the UI format.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import urlopen

import pytest
from conftest import IMAGE_GENERATORS

from promptweave.headless import PACK_DIR

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_WORKFLOWS = sorted((PACK_DIR / "workflows").glob("*.json"))
PAGE_READY_TIMEOUT_MS = 60_000
RUN_TIMEOUT_MS = 300_000  # the "use your own CLIP" workflows load and run a full-size ViT-L/14 on 2 CPU cores
IMAGE_TIMEOUT_MS = 20_000
SEED_WIDGETS = ("seed", "noise_seed")
PACK_MARKERS = re.compile(r"PromptWeave|promptweave|/extensions/PromptWeave|\bPW[A-Z]\w*")
# Harmless noise of a fresh, offline ComfyUI: optional user files that do not exist yet, the favicon.
HARMLESS_MISSING_FILES = ("/favicon.ico", "/user.css", "/api/userdata")

# In-page helpers: record execution events and the answers of POST /prompt (they hold the prompt ids).
INSTALL_RECORDERS = """() => {
  window.__pw = {events: [], queued: []};
  for (const type of ['execution_start', 'executed', 'execution_success', 'execution_error',
                      'execution_interrupted', 'status']) {
    app.api.addEventListener(type, (e) => window.__pw.events.push({type, detail: e.detail}));
  }
  const queuePrompt = app.api.queuePrompt.bind(app.api);
  app.api.queuePrompt = async (...args) => {
    const answer = await queuePrompt(...args);
    window.__pw.queued.push(answer);
    return answer;
  };
}"""
GRAPH_NODES = """() => app.graph.nodes.map((n) => ({
  id: n.id, type: n.type, title: n.title, has_errors: !!n.has_errors,
  registered: !!LiteGraph.registered_node_types[n.type],
}))"""
OPEN_DIALOGS = """() => [...document.querySelectorAll('.p-dialog')]
  .filter((d) => d.offsetParent !== null || d.getClientRects().length > 0)
  .map((d) => d.innerText.trim().slice(0, 500))"""
FRESH_SEEDS = """([base, names]) => {
  let next = base;
  for (const node of app.graph.nodes)
    for (const widget of node.widgets ?? [])
      if (names.includes(widget.name) && typeof widget.value === 'number') widget.value = next++;
}"""
FINAL_EVENTS = ("execution_success", "execution_error", "execution_interrupted")
RUN_FINISHED = """(id) => window.__pw.events.some(
  (e) => ['execution_success', 'execution_error', 'execution_interrupted'].includes(e.type)
         && e.detail?.prompt_id === id)"""
QUEUE_IDLE_AFTER = """(id) => {
  const events = window.__pw.events;
  const done = events.findIndex((e) => e.type === 'execution_success' && e.detail?.prompt_id === id);
  return done >= 0 && events.slice(done + 1).some(
    (e) => e.type === 'status' && e.detail?.exec_info?.queue_remaining === 0);
}"""
IMAGES_SHOWN = """(ids) => ids.every((id) => {
  const node = app.graph.getNodeById(id);
  return node?.imgs?.length > 0 && node.imgs.every((img) => img.complete && img.naturalWidth > 0);
})"""
SHOWN_IMAGES = """(ids) => Object.fromEntries(ids.map((id) => [id,
  (app.graph.getNodeById(id)?.imgs ?? [])
    .map((img) => ({src: img.src, w: img.naturalWidth, h: img.naturalHeight}))]))"""
FIT_VIEW = """() => {
  const command = app.extensionManager?.command;
  if (command) return command.execute('Comfy.Canvas.FitView');
  app.canvas.ds.offset = [0, 0]; app.canvas.ds.scale = 1;
}"""


def _require_browser():
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package")
    if missing:
        reason = "browser tests need " + " and ".join(missing)
        if os.environ.get("PW_REQUIRE_COMFYUI") == "1":
            pytest.fail(f"{reason}; `make test` requires them: run `make setup`")
        pytest.skip(reason)


class ConsoleLog:
    """Console errors and page errors, tagged with the phase they happened in; sorts out the harmless ones."""

    def __init__(self, server: str) -> None:
        self.host = urlparse(server).hostname
        self.phase = "startup"
        self.entries: list[dict] = []

    def on_console(self, message) -> None:
        if message.type == "error":
            location = message.location or {}
            self.entries.append(
                {"phase": self.phase, "kind": "console", "text": message.text, "url": location.get("url", "")}
            )

    def on_page_error(self, error) -> None:
        self.entries.append(
            {
                "phase": self.phase,
                "kind": "pageerror",
                "text": f"{error}\n{getattr(error, 'stack', '') or ''}",
                "url": "",
            }
        )

    def _why_harmless(self, entry: dict) -> str | None:
        text, url = entry["text"], entry["url"]
        if "Content Security Policy" in text or (url and urlparse(url).hostname not in (self.host, None)):
            return "network access to an external host (offline test machine)"
        if text.startswith("Failed to load resource") and any(
            urlparse(url).path.startswith(path) for path in HARMLESS_MISSING_FILES
        ):
            return "optional file that a fresh ComfyUI does not have"
        if entry["phase"] == "startup" and not PACK_MARKERS.search(text + url):
            return "frontend-internal, at startup, before any workflow was loaded, not from the pack"
        return None

    def relevant(self, phase: str | None = None) -> list[dict]:
        """Errors of ``phase`` (all phases when None) that are not known to be harmless; prints the others."""
        found = []
        for entry in self.entries:
            if phase is not None and entry["phase"] != phase:
                continue
            why = self._why_harmless(entry)
            if why:
                where = f"{entry['kind']} [{entry['phase']}]"
                print(f"ignored browser {where} ({why}): {entry['text'][:300]} {entry['url']}".rstrip())
            else:
                found.append(entry)
        return found


@pytest.fixture(scope="session")
def browser_available():
    _require_browser()


@pytest.fixture(scope="module")
def frontend(browser_available, comfy_server):
    """The ComfyUI frontend open in headless Chromium, ready (``window.app`` and its graph exist)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900}, device_scale_factor=2)  # sharp screenshots
            # the frontend's one-off "Introducing Nodes 2.0" banner (dismissal kept in localStorage) would cover
            # the top of every screenshot
            page.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true')")
            log = ConsoleLog(comfy_server)
            page.on("console", log.on_console)
            page.on("pageerror", log.on_page_error)
            page.set_default_timeout(30_000)
            page.goto(comfy_server, wait_until="domcontentloaded", timeout=PAGE_READY_TIMEOUT_MS)
            page.wait_for_function(
                "() => window.app?.graph && window.app.canvas && window.app.api && window.LiteGraph",
                timeout=PAGE_READY_TIMEOUT_MS,
            )
            _close_dialogs(page)
            page.evaluate(INSTALL_RECORDERS)
            # draw node titles and widgets at any zoom, so that the screenshots of large workflows stay readable
            page.evaluate("() => app.extensionManager.setting.set('LiteGraph.Canvas.MinFontSizeForLOD', 1)")
            startup_errors = log.relevant("startup")
            assert not startup_errors, "errors from the pack while the frontend started:\n" + _format(startup_errors)
            yield page, log
        finally:
            browser.close()


def _close_dialogs(page) -> None:
    """Close open dialogs (the base folder's settings already skip the templates dialog of a fresh frontend)."""
    for attempt in range(4):
        dialogs = page.evaluate(OPEN_DIALOGS)
        if not dialogs:
            return
        print(f"closing dialog(s): {dialogs}")
        if attempt < 2:
            page.keyboard.press("Escape")
        else:
            page.locator(".p-dialog .p-dialog-close-button").first.click(timeout=5_000)
        page.wait_for_timeout(300)
    pytest.fail(f"could not close the frontend's dialog(s): {page.evaluate(OPEN_DIALOGS)}")


def _format(entries: list[dict]) -> str:
    return "\n".join(f"- [{e['phase']}] {e['kind']}: {e['text'][:1500]} {e['url']}" for e in entries)


@pytest.mark.parametrize("workflow_path", UI_WORKFLOWS, ids=lambda path: path.stem)
def test_ui_workflow_loads_runs_and_shows_its_image(frontend, artifacts_dir, workflow_path):
    page, log = frontend
    name = workflow_path.stem
    log.phase = f"workflow {name}"
    workflow = json.loads(workflow_path.read_text())
    screenshot = artifacts_dir / f"browser-{name}.png"
    _close_dialogs(page)  # e.g. the error dialog of a previous workflow that failed

    try:
        # loadGraphData(graph, clean, restore_view, workflow name): opens it in a tab named after the file
        page.evaluate(
            "async ([graph, name]) => { await app.loadGraphData(graph, true, true, name); }", [workflow, name]
        )
        page.evaluate(FIT_VIEW)
        page.wait_for_timeout(300)

        nodes = page.evaluate(GRAPH_NODES)
        assert sorted(n["id"] for n in nodes) == sorted(n["id"] for n in workflow["nodes"]), nodes
        missing = [n for n in nodes if not n["registered"]]
        assert not missing, f"{name}: node types unknown to the frontend: {missing}"
        flagged = [n for n in nodes if n["has_errors"]]
        assert not flagged, f"{name}: nodes marked with errors after loading: {flagged}"
        dialogs = page.evaluate(OPEN_DIALOGS)
        assert not dialogs, f"{name}: the frontend opened a dialog on load (missing nodes or models?): {dialogs}"

        page.evaluate(FRESH_SEEDS, [int(time.time()) % 1_000_000 * 1000, list(SEED_WIDGETS)])
        queued_before = page.evaluate("() => window.__pw.queued.length")
        page.evaluate("() => app.queuePrompt(0, 1)")
        queued = page.evaluate("() => window.__pw.queued")[queued_before:]
        assert len(queued) == 1 and queued[0].get("prompt_id"), f"{name}: POST /prompt answered {queued}"
        assert not queued[0].get("node_errors"), f"{name}: validation errors: {queued[0]['node_errors']}"
        prompt_id = queued[0]["prompt_id"]

        page.wait_for_function(RUN_FINISHED, arg=prompt_id, timeout=RUN_TIMEOUT_MS, polling=250)
        events = [e for e in page.evaluate("() => window.__pw.events") if e["detail"].get("prompt_id") == prompt_id]
        finals = [e for e in events if e["type"] in FINAL_EVENTS]
        assert [e["type"] for e in finals] == ["execution_success"], f"{name}: run did not succeed: {finals}"
        image_nodes = [
            int(e["detail"]["node"])
            for e in events
            if e["type"] == "executed" and (e["detail"].get("output") or {}).get("images")
        ]
        assert image_nodes, f"{name}: no node reported an image: {events}"

        page.wait_for_function(IMAGES_SHOWN, arg=image_nodes, timeout=IMAGE_TIMEOUT_MS, polling=250)
        # the queue panel updates on the server's next status message; wait for it so the screenshot shows it
        page.wait_for_function(QUEUE_IDLE_AFTER, arg=prompt_id, timeout=IMAGE_TIMEOUT_MS, polling=250)
        shown = page.evaluate(SHOWN_IMAGES, image_nodes)
        sizes = []
        for node_id, images in shown.items():
            for image in images:
                assert "/view?" in image["src"] and "filename=" in image["src"], (node_id, image)
                assert image["w"] > 0 and image["h"] > 0, f"{name}: node {node_id} shows {image}"
                sizes.append((image["w"], image["h"]))
        # generated images are 64x64; plots such as loss curves have their own sizes
        if any(node["type"] in IMAGE_GENERATORS for node in workflow["nodes"]):
            assert (64, 64) in sizes, f"{name}: no 64x64 generated image shown among {sizes}"
        flagged = [n for n in page.evaluate(GRAPH_NODES) if n["has_errors"]]
        assert not flagged, f"{name}: nodes marked with errors after the run: {flagged}"
    except AssertionError as exc:
        errors = log.relevant(log.phase)
        raise AssertionError(f"{exc}\nbrowser console errors:\n{_format(errors) or '- none'}") from None
    finally:
        page.evaluate("() => app.canvas.setDirty(true, true)")
        page.wait_for_timeout(500)
        page.screenshot(path=str(screenshot))
        print(f"screenshot: {screenshot}")

    errors = log.relevant(log.phase)
    assert not errors, f"{name}: errors in the browser console:\n" + _format(errors)


def _same_inputs(built: dict, expected: dict) -> bool:
    if built.keys() != expected.keys():
        return False
    for name, value in expected.items():
        other = built[name]
        if isinstance(value, float) and isinstance(other, int | float):
            if abs(other - value) > 1e-9 * max(1.0, abs(value)):
                return False
        elif other != value:
            return False
    return True


@pytest.mark.parametrize("workflow_path", UI_WORKFLOWS, ids=lambda path: path.stem)
def test_ui_workflow_builds_its_api_twin(frontend, comfy_server, workflow_path):
    """The prompt the frontend builds from a UI workflow (its widget values and links) is its API twin.

    Inputs that the node's definition lacks are frontend-only widgets (e.g. the text shown by Preview as Text)
    and are left out of the comparison."""
    page, log = frontend
    log.phase = f"api twin {workflow_path.stem}"
    _close_dialogs(page)
    workflow = json.loads(workflow_path.read_text())
    twin = json.loads((workflow_path.parent / "api" / workflow_path.name).read_text())
    built = page.evaluate(
        "async ([graph, name]) => { await app.loadGraphData(graph, true, true, name); "
        "return (await app.graphToPrompt()).output; }",
        [workflow, workflow_path.stem],
    )
    assert sorted(built, key=int) == sorted(twin, key=int), (sorted(built), sorted(twin))
    for node in built.values():
        definition = json.loads(urlopen(f"{comfy_server}/object_info/{node['class_type']}", timeout=30).read())
        declared = {name for group in definition[node["class_type"]]["input"].values() for name in group}
        node["inputs"] = {name: value for name, value in node["inputs"].items() if name in declared}
    differ = {
        node_id: {"frontend": built[node_id]["inputs"], "api": node["inputs"]}
        for node_id, node in twin.items()
        if built[node_id]["class_type"] != node["class_type"]
        or not _same_inputs(built[node_id]["inputs"], node["inputs"])
    }
    assert not differ, f"{workflow_path.name}: the frontend builds other inputs than workflows/api/: {differ}"
    errors = log.relevant(log.phase)
    assert not errors, f"{workflow_path.stem}: errors in the browser console:\n" + _format(errors)
