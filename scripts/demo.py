"""``make demo``: run every workflow in ``workflows/api/`` headless on the default models, report to out/demo.

With ``--serve`` it instead starts the real ComfyUI UI on 127.0.0.1:8188 with the pack and the default
models in place (``make demo SERVE=1``).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT.parent))

from promptweave.headless import find_comfyui_dir, prepare_base_directory  # noqa: E402
from promptweave.prompt_modules.core.artifacts import atomic_write_bytes  # noqa: E402
from promptweave.testing.defaults import install_default_models  # noqa: E402


def serve(comfyui: Path, base: Path, port: int) -> int:
    print(f"ComfyUI with PromptWeave: http://127.0.0.1:{port}  (Ctrl+C to stop)")
    command = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--disable-auto-launch", "--disable-api-nodes", "--base-directory", str(base),
               "--database-url", f"sqlite:///{base}/user/comfyui.db"]
    os.chdir(comfyui)
    os.execv(sys.executable, command)
    return 0


def run_all(comfyui: Path, base: Path, out: Path) -> int:
    from promptweave.headless import HeadlessComfyUI

    comfy = HeadlessComfyUI(comfyui, base)
    rows, failures = [], 0
    for workflow in sorted((ROOT / "workflows" / "api").glob("*.json")):
        name = workflow.stem
        start = time.perf_counter()
        try:
            history = comfy.run(json.loads(workflow.read_text()))
            error = None
        except Exception as exc:  # report every workflow, then fail at the end
            history, error = {}, str(exc)
            failures += 1
        seconds = time.perf_counter() - start
        images = []
        for index, path in enumerate(comfy.output_files(history) if history else []):
            target = out / name / f"{index:02d}{path.suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
            images.append(target.relative_to(out).as_posix())
        rows.append({"workflow": name, "seconds": round(seconds, 2), "images": images, "error": error})
        print(f"{name}: {'FAILED ' + error if error else 'ok'} ({seconds:.2f} s, {len(images)} image(s))")
    atomic_write_bytes(out / "report.json", json.dumps(rows, indent=1).encode())
    atomic_write_bytes(out / "report.html", render_report(rows).encode())
    print(f"report: {out / 'report.html'}")
    return 1 if failures else 0


def render_report(rows: list[dict]) -> str:
    body = []
    for row in rows:
        images = "".join(
            f'<img src="{html.escape(src)}" height="192" style="image-rendering:pixelated;margin:4px">'
            for src in row["images"]
        )
        status = f'<b style="color:#b00">failed: {html.escape(row["error"])}</b>' if row["error"] else "ok"
        body.append(
            f"<h2>{html.escape(row['workflow'])}</h2><p>{status}, {row['seconds']:.2f} s</p><div>{images}</div>"
        )
    return (
        "<!doctype html><meta charset='utf-8'><title>PromptWeave demo</title>"
        "<body style='font-family:sans-serif;max-width:960px;margin:auto'>"
        "<h1>PromptWeave demo</h1><p>Every workflow in <code>workflows/api/</code>, run headless in real ComfyUI "
        "on the embedded default models (random-weight tiny SD1.x: the images are noise; the wiring is real).</p>"
        + "".join(body)
        + "</body>"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="start the ComfyUI UI instead of running workflows")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--out", default=str(ROOT / "out" / "demo"))
    ns = parser.parse_args()
    comfyui = find_comfyui_dir()
    if comfyui is None:
        parser.error("no ComfyUI found: run `make setup` or set COMFYUI_DIR")
    base = prepare_base_directory(ROOT / "out" / "comfy-base")
    models = install_default_models(base)
    print("default models: " + ", ".join(f"{k}={v.name}" for k, v in models.items()))
    if ns.serve:
        return serve(comfyui, base, ns.port)
    out = Path(ns.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return run_all(comfyui, base, out)


if __name__ == "__main__":
    sys.exit(main())
