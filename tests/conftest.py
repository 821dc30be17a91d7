"""Shared fixtures: the real ComfyUI (in-process and as a server), tiny models built on demand.

Tiny models are cached under ``.cache/tiny`` (ignored by git) and rebuilt only when missing.
``make test`` sets ``PW_REQUIRE_COMFYUI=1`` so that a missing ComfyUI fails instead of skipping.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from promptweave.headless import (
    PACK_DIR,
    ComfyUIServer,
    ServerStartError,
    find_comfyui_dir,
    prepare_base_directory,
)
from promptweave.testing.defaults import CACHE_DIR, TINY_SD15_NAME, install_default_models

ARTIFACTS = PACK_DIR / "out" / "test-artifacts"
# Node types that generate images (64x64 in the example workflows); a workflow without one (e.g. RPP pretraining)
# shows only plots, which have their own sizes.
IMAGE_GENERATORS = frozenset(
    {"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced", "PWWorldGenSample"}
)


def _require(what: str) -> None:
    if os.environ.get("PW_REQUIRE_COMFYUI") == "1":
        pytest.fail(f"{what} is required by `make test` but missing: run `make setup`")
    pytest.skip(f"{what} not available")


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def comfyui_dir() -> Path:
    found = find_comfyui_dir()
    if found is None:
        _require("ComfyUI (COMFYUI_DIR or the test install in .cache/ComfyUI)")
    return found


@pytest.fixture(scope="session")
def tiny_sd15_path() -> Path:
    """The tiny SD1.x checkpoint, built by ``python -m promptweave.testing.tiny sd15`` once and cached."""
    path = CACHE_DIR / TINY_SD15_NAME
    if not path.exists():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "promptweave.testing.tiny", "sd15", str(path)], check=True)
    return path


@pytest.fixture(scope="session")
def comfy_base(tmp_path_factory, tiny_sd15_path) -> Path:
    """A ComfyUI base directory with the pack installed and the default models in place."""
    base = prepare_base_directory(tmp_path_factory.mktemp("comfy-base"))
    install_default_models(base)
    return base


@pytest.fixture(scope="session")
def comfy(comfyui_dir, comfy_base):
    """The real ComfyUI, in this process, with PromptWeave loaded (one per test session)."""
    from promptweave.headless import HeadlessComfyUI

    return HeadlessComfyUI(comfyui_dir, comfy_base)


def load_api_workflow(name: str) -> dict:
    return json.loads((PACK_DIR / "workflows" / "api" / name).read_text())


@pytest.fixture(scope="session")
def comfy_server(comfyui_dir, comfy_base, artifacts_dir):
    """The real ComfyUI server on loopback (its own process), with the pack and the tiny models."""
    server = ComfyUIServer(comfyui_dir, comfy_base, log_path=artifacts_dir / "comfyui-server.log")
    try:
        try:
            server.start(timeout=120)
        except ServerStartError as exc:
            pytest.fail(str(exc))
        yield server.url
    finally:
        server.stop()


def comfy_lora_patches(lora_path, key_map, caplog) -> dict:
    """ComfyUI's LoRA patches of the file at ``lora_path`` through ``key_map`` (LoraLoader's own path); fails if
    ComfyUI logs any key as not loaded."""
    import comfy.lora
    import comfy.utils

    state = comfy.utils.load_torch_file(str(lora_path), safe_load=True)
    with caplog.at_level(logging.WARNING):
        patches = comfy.lora.load_lora(state, key_map)
    assert not [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage()]
    return patches
