"""The import-structure lint (scripts/check_imports.py, run by ``make lint``) finds what it is meant to find."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
while not (ROOT / "scripts" / "check_imports.py").is_file():
    ROOT = ROOT.parent


def _checker():
    spec = importlib.util.spec_from_file_location("check_imports", ROOT / "scripts" / "check_imports.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_function_level_cycle_and_a_method_importing_the_world_are_reported(tmp_path):
    _write(tmp_path, {
        "__init__.py": "",
        "prompt_modules/__init__.py": "",
        "prompt_modules/core/__init__.py": "",
        "prompt_modules/world/__init__.py": "",
        "prompt_modules/world/scene.py": "from ..core import data\n",
        "prompt_modules/core/data.py": "X = 1\n",
        "prompt_modules/dual_prompt/__init__.py": "",
        "prompt_modules/dual_prompt/model.py": "def f():\n    from ..pretraining import io\n",
        "prompt_modules/pretraining/__init__.py": "",
        "prompt_modules/pretraining/io.py": (
            "def g():\n    from ..dual_prompt.model import f\n    from ..world import scene\n"
        ),
    })
    problems = _checker().problems_in(tmp_path)
    assert any("cycle" in p and "dual_prompt.model" in p and "pretraining.io" in p for p in problems), problems
    assert any("pretraining.io imports the benchmark world" in p for p in problems), problems
    assert len(problems) == 2, problems  # the world importing core is allowed


@pytest.mark.slow
def test_the_package_itself_has_no_cycle_and_no_method_imports_the_world():
    assert _checker().problems_in(ROOT) == []


def test_every_method_package_has_the_same_files():
    """One shape for every method: config, model, losses, data, train and io in each package."""
    expected = {"__init__.py", "config.py", "model.py", "losses.py", "data.py", "train.py", "io.py"}
    for method in ("inversion", "adaptation", "dual_prompt", "diff_prompt", "pretraining"):
        files = {p.name for p in (ROOT / "prompt_modules" / method).glob("*.py")}
        assert expected <= files, (method, sorted(expected - files))
