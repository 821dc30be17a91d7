"""Packaging facts: metadata agrees, the library never imports ComfyUI, node ids and categories."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib

from promptweave import __version__
from promptweave.headless import PACK_DIR

COMFY_MODULES = ("comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "server", "execution")


def test_pyproject_and_requirements_agree():
    project = tomllib.loads((PACK_DIR / "pyproject.toml").read_text())
    deps = project["project"]["dependencies"]
    requirements = [line.strip() for line in (PACK_DIR / "requirements.txt").read_text().splitlines() if line.strip()]
    assert sorted(deps) == sorted(requirements)
    assert {"diffusers", "torch", "transformers", "open_clip_torch", "peft", "einops", "safetensors"} <= set(deps)
    assert not any("==" in dep for dep in deps), "user-facing dependencies stay unpinned"
    assert project["project"]["version"] == __version__
    comfy = project["tool"]["comfy"]
    assert comfy["DisplayName"] == "PromptWeave" and comfy["requires-comfyui"] == ">=0.3.75"
    assert "Repository" in project["project"]["urls"]


def test_library_imports_without_comfyui():
    """Every module of prompt_modules imports with ComfyUI's modules made unimportable."""
    code = f"""
import importlib, importlib.abc, pkgutil, sys
BLOCKED = {COMFY_MODULES!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked ComfyUI module: " + name)
sys.meta_path.insert(0, Block())
import promptweave.prompt_modules as pm
names = [m.name for m in pkgutil.walk_packages(pm.__path__, "promptweave.prompt_modules.")]
for name in names:
    importlib.import_module(name)
import promptweave
assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED]
print(len(names))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) >= 2


def test_pack_imports_under_any_folder_name(tmp_path):
    """ComfyUI imports the pack from custom_nodes/<any name>/: relative imports must hold."""
    link = tmp_path / "some-other-name"
    link.symlink_to(PACK_DIR, target_is_directory=True)
    code = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("{link}", "{link}/__init__.py")
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
assert callable(module.comfy_entrypoint) and module.WEB_DIRECTORY
print(module.__version__)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == __version__


def test_a_missing_optional_dependency_disables_its_nodes_not_the_pack(comfyui_dir):
    """With ``peft`` (or ``open_clip``) not installed, ComfyUI still loads the pack: the capabilities that need it
    are left out with an install hint in the log, every other node registers."""
    code = f"""
import asyncio, importlib.abc, importlib.util, sys
missing = sys.argv[1]
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == missing:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.path.insert(0, {str(comfyui_dir)!r})
sys.meta_path.insert(0, Missing())
spec = importlib.util.spec_from_file_location("pw_pack", {str(PACK_DIR / "__init__.py")!r},
                                              submodule_search_locations=[{str(PACK_DIR)!r}])
pack = importlib.util.module_from_spec(spec)
sys.modules["pw_pack"] = pack
spec.loader.exec_module(pack)
extension = asyncio.run(pack.comfy_entrypoint())
nodes = {{node.define_schema().node_id: node for node in asyncio.run(extension.get_node_list())}}
print(" ".join(nodes))
if missing == "open_clip":  # the world loader registers (it imports open_clip when run) and says what to install
    try:
        nodes["PWLoadWorldModels"].execute()
    except ModuleNotFoundError as exc:
        print("RUN-ERROR", exc, file=sys.stderr)
"""
    for missing, gone, kept in (("peft", "PWAdaptModel", "PWTrainDualPrompt"),
                                ("open_clip", "PWTrainDualPrompt", "PWApplyLearnedPrompt")):
        result = subprocess.run([sys.executable, "-c", code, missing], capture_output=True, text=True, cwd="/")
        assert result.returncode == 0, result.stderr[-2000:]
        node_ids = result.stdout.split()
        assert kept in node_ids and gone not in node_ids, (missing, node_ids)
        package = {"peft": "peft", "open_clip": "open_clip_torch"}[missing]
        assert f"pip install {package}" in result.stderr and "restart ComfyUI" in result.stderr
        if missing == "open_clip":
            assert "RUN-ERROR PWLoadWorldModels: the Python package 'open_clip_torch' is not installed" in result.stderr


def test_the_readme_overview_picture_is_drawn_by_its_script(tmp_path):
    out = tmp_path / "overview.png"
    code = (
        f"import runpy, sys; sys.argv = ['x', '--out', {str(out)!r}]; "
        "runpy.run_path('scripts/make_overview.py', run_name='__main__')"
    )
    subprocess.run([sys.executable, "-c", code], cwd=PACK_DIR, check=True, capture_output=True)
    from PIL import Image

    with Image.open(out) as image:
        assert image.width == 1200 and image.height >= 640
    assert "docs/overview.png" in (PACK_DIR / "README.md").read_text(encoding="utf-8")
    assert (PACK_DIR / "docs" / "overview.png").is_file()


#: Folders with Python code that are deliberately not part of the wheel.
NOT_SHIPPED = {"tests", "testing", "scripts", "diffusers_examples", ".venv", ".cache", "out", "build", "docs"}


def _package_folders() -> set[str]:
    found = {"promptweave"}
    for init in PACK_DIR.rglob("__init__.py"):
        rel = init.parent.relative_to(PACK_DIR)
        if rel.parts and not (set(rel.parts) & NOT_SHIPPED) and not any(p.startswith(".") for p in rel.parts):
            found.add(".".join(["promptweave", *rel.parts]))
    return found


def test_pyproject_lists_every_package_folder():
    """A package moved or added without a pyproject entry would silently drop out of an install."""
    listed = set(tomllib.loads((PACK_DIR / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert listed == _package_folders()


def test_the_built_wheel_carries_every_module_and_data_file_and_imports(tmp_path):
    """Build the wheel, install it into a bare folder and import every module of the library from there."""
    import zipfile

    wheel_dir = tmp_path / "wheel"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir),
         str(PACK_DIR)],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheel_dir.glob("promptweave-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected_modules = {
        "promptweave/" + str(p.relative_to(PACK_DIR))
        for package in _package_folders()
        for p in (PACK_DIR.joinpath(*package.split(".")[1:])).glob("*.py")
    }
    assert expected_modules <= names, sorted(expected_modules - names)[:10]
    harness = ("promptweave/testing/", "promptweave/tests/", "promptweave/scripts/")
    assert not [n for n in names if n.startswith(harness)]
    for pattern in ("workflows/*.json", "workflows/*.jpg", "workflows/api/*.json", "web/docs/*.md",
                    "weights/*.safetensors"):
        files = {"promptweave/" + str(p.relative_to(PACK_DIR)) for p in PACK_DIR.glob(pattern)}
        assert files and files <= names, (pattern, sorted(files - names)[:5])

    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    code = """
import importlib, pkgutil, sys
import promptweave
assert promptweave.__file__.startswith(sys.argv[1]), promptweave.__file__
import promptweave.prompt_modules as pm, promptweave.bench as bench
names = [m.name for m in pkgutil.walk_packages(pm.__path__, "promptweave.prompt_modules.")]
names += [m.name for m in pkgutil.walk_packages(bench.__path__, "promptweave.bench.")
          if not m.name.endswith("__main__")]
names += ["promptweave.diffusers_api", "promptweave.headless"]
for name in names:
    importlib.import_module(name)
from promptweave.prompt_modules.world.models import load_worldclip
load_worldclip()  # the shipped weights are found inside the installed package
print(len(names))
"""
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, cwd="/", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.strip().splitlines()[-1]) > 40
