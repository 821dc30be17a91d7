"""The training lifecycle of every training node, in the real ComfyUI (issue "hardening").

For each of the six training nodes:

- a bad save target (a folder, a name over the file system's limit) is refused before the first step;
- a run stopped at a random step (ComfyUI's Cancel, the same exception a kill of the queue raises) keeps its
  checkpoint and writes no result; the rerun resumes and saves a result equal to an uninterrupted run's, removes
  its checkpoint (the one rule for every trainer: a checkpoint lives until its run's result is saved) and the stale
  temporary files of earlier killed saves;
- a write that fails at save time (a full disk) keeps the checkpoint, says where, and the rerun only saves;
- changed training data (same file names and count) is a new run, never a resume of the old one.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from promptweave.prompt_modules.core.artifacts import STALE_TEMP_SECONDS, read_safetensors
from promptweave.testing.defaults import TINY_SD15_NAME

pytestmark = pytest.mark.comfyui


@dataclass
class Trainer:
    """How to run one training node small: its arguments, its save-name input, its models sub-folder and steps."""

    node_id: str
    save_input: str
    folder: str
    steps: int  # TrainingProgress calls of one run
    saved_after: int  # steps done when the result is first written (Diff-Prompt writes its bundle after each stage)
    args: Callable[[dict], dict]


def _pairs(n: int = 8) -> tuple[torch.Tensor, str]:
    images = torch.zeros(n, 32, 32, 3)
    words = ["red", "green", "blue", "yellow"]
    for i in range(n):
        images[i, 8:24, 8:24, i % 3] = 1.0
    return images, "\n".join(f"a {words[i % 4]} square" for i in range(n))


def _grounding(n: int = 4) -> dict:
    images = torch.zeros(n, 64, 64, 3)
    masks = torch.zeros(n, 64, 64)
    for i in range(n):
        images[i, 16:48, 8 + 4 * i:40 + 4 * i, i % 3] = 1.0
        masks[i, 16:48, 8 + 4 * i:40 + 4 * i] = 1.0
    return {"images": images, "masks": masks, "expressions": "\n".join(f"the square number {i}" for i in range(n))}


IPL = dict(source_text="photo", target_text="neon sign", width=64, height=64, sample_steps=1, seed=0)
TRAINERS = {
    t.node_id: t
    for t in (
        Trainer("PWTrainPromptInverter", "filename", "promptweave", 6, 6, lambda m: dict(
            backbone="pixels", dataset_folder="", images=_pairs()[0], prompts=_pairs()[1], vocab_size=50, epochs=3,
            batch_size=4, learning_rate=1e-3, hidden_width=16, curriculum=False, checkpoint_every=100, seed=0)),
        Trainer("PWTrainDualPrompt", "save_name", "promptweave", 6, 6, lambda m: dict(
            vlm=m["vlm"], source="world", path="", steps=6, batch_size=4, learning_rate=0.002, seed=0, n_text=2,
            n_visual=2, depth=2)),
        Trainer("PWPretrainPrompts", "save_name", "promptweave", 6, 6, lambda m: dict(
            vlm=m["vlm"], source="world", path="", steps=6, batch_size=4, learning_rate=0.002, seed=0, n_text=2,
            n_visual=2, depth=2, qkv_prompts="unshared", soft_label_weight=1.0, temperature=1.0,
            classes_per_step=8)),
        Trainer("PWTrainDiffPrompt", "bundle_name", "promptweave", 6, 2, lambda m: dict(
            vlm=m["vlm"], stage="all", source="inputs", path="", steps=2, batch_size=2, seed=0, ddim_steps=2,
            **_grounding())),
        Trainer("PWTrainLatentMapper", "save_name", "promptweave", 4, 4, lambda m: dict(
            model=m["sd"][0], clip=m["sd"][1], vae=m["sd"][2], vlm=m["vlm"], steps=4, batch_size=2,
            lambda_domain=1.0, n_ctx=4, **IPL)),
        Trainer("PWAdaptModel", "lora_name", "loras", 5, 5, lambda m: dict(
            model=m["sd"][0], clip=m["sd"][1], vae=m["sd"][2], vlm=m["vlm"], method="ipl", steps=3, rank=2,
            lambda_domain=1.0, mapper_steps=2, batch_size=1, learning_rate=0.0016, adaptive_layers=0, **IPL)),
    )
}


def _node(comfy, node_id):
    return comfy.nodes.NODE_CLASS_MAPPINGS[node_id]


@pytest.fixture(scope="module")
def models(comfy):
    with torch.inference_mode():  # as ComfyUI's executor loads them
        vlm = comfy.pack_module("prompt_modules.core.vlm").VisionLanguageModel("tiny", seed=0)
        sd = _node(comfy, "CheckpointLoaderSimple")().load_checkpoint(TINY_SD15_NAME)
    return {"vlm": vlm, "sd": sd}


def _run(comfy, trainer: Trainer, models: dict, name: str, **overrides):
    args = {**_defaults(comfy, trainer.node_id), **trainer.args(models), trainer.save_input: name, **overrides}
    with torch.inference_mode():  # every node runs inside ComfyUI's inference mode
        return _node(comfy, trainer.node_id).execute(**args)


def _defaults(comfy, node_id: str) -> dict:
    info = comfy.node_info(node_id)["input"]
    return {name: spec[1]["default"] for group in ("required", "optional") for name, spec in info.get(group, {}).items()
            if len(spec) > 1 and isinstance(spec[1], dict) and "default" in spec[1]}


def _saved(comfy_base: Path, trainer: Trainer, name: str) -> Path:
    return comfy_base / "models" / trainer.folder / f"{name}.safetensors"


def _checkpoints(comfy_base: Path) -> set[str]:
    root = comfy_base / "output" / "promptweave" / "checkpoints"
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


class _StopAt:
    """Counts training steps (calls of the nodes' TrainingProgress) and raises ComfyUI's interrupt at step ``at``."""

    def __init__(self, comfy_mm, at: int | None) -> None:
        self.mm, self.at, self.steps = comfy_mm, at, 0
        self.real = comfy_mm.throw_exception_if_processing_interrupted

    def __call__(self) -> None:
        if type(sys._getframe(1).f_locals.get("self")).__name__ == "TrainingProgress":
            self.steps += 1
            if self.steps == self.at:
                raise self.mm.InterruptProcessingException()
        self.real()


def _stale_temp_file(comfy, folder: Path) -> Path:
    """A temporary file of a save killed over 10 minutes ago, as an earlier, killed ComfyUI process leaves it; the
    pack's record of swept folders is cleared, as a new process starts without one."""
    comfy.pack_module("prompt_modules.core.artifacts")._last_sweep.clear()
    folder.mkdir(parents=True, exist_ok=True)
    stale = folder / ".pw-killed-save.safetensors.k1ll3d00.tmp"
    stale.write_bytes(b"partial")
    old = time.time() - STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))
    return stale


@pytest.mark.parametrize("node_id", sorted(TRAINERS))
def test_a_run_stopped_at_a_random_step_resumes_to_the_uninterrupted_result(comfy, comfy_base, models, node_id,
                                                                            monkeypatch):
    import comfy.model_management as mm  # noqa: F811 - ComfyUI's module, not the fixture

    trainer = TRAINERS[node_id]
    at = random.Random(node_id).randint(1, trainer.steps - 1)  # a random step, fixed per node for reproducibility
    before = _checkpoints(comfy_base)
    full = f"pw-life-{node_id}-full"
    _run(comfy, trainer, models, full)
    assert _checkpoints(comfy_base) == before, "the finished run left its checkpoint behind"

    resumed = f"pw-life-{node_id}-resumed"
    stop = _StopAt(mm, at)
    with monkeypatch.context() as patch:
        patch.setattr(mm, "throw_exception_if_processing_interrupted", stop)
        with pytest.raises(mm.InterruptProcessingException):
            _run(comfy, trainer, models, resumed)
    assert not _saved(comfy_base, trainer, resumed).exists(), "a stopped run wrote its result"
    assert _checkpoints(comfy_base) - before, "a stopped run kept no checkpoint"
    stale = _stale_temp_file(comfy, _saved(comfy_base, trainer, resumed).parent)

    rerun = _StopAt(mm, None)
    with monkeypatch.context() as patch:
        patch.setattr(mm, "throw_exception_if_processing_interrupted", rerun)
        _run(comfy, trainer, models, resumed)
    assert rerun.steps == trainer.steps - at, "the rerun did not go on from the stopped step"
    assert _checkpoints(comfy_base) == before, "the resumed run left its checkpoint behind"
    assert not stale.exists(), "a stale temporary file of a killed save survived the next save"
    want, _ = read_safetensors(_saved(comfy_base, trainer, full))
    got, _ = read_safetensors(_saved(comfy_base, trainer, resumed))
    assert want.keys() == got.keys()
    worst = {k: float((want[k].float() - got[k].float()).abs().max()) for k in want}
    # trained tensors within 1e-6; RPP's derived layer tokens (``layers.*``, the prompts run through the VLM's
    # blocks after training) carry those rounding differences through a transformer, so 1e-4 there (CI saw one
    # above 1e-6 once; ten local runs never did)
    different = [k for k in want if worst[k] > (1e-4 if k.startswith("layers.") else 1e-6)]
    assert not different, f"resumed result differs from the uninterrupted one: { {k: worst[k] for k in different[:3]} }"


@pytest.mark.parametrize("node_id", sorted(TRAINERS))
def test_a_failed_save_keeps_the_checkpoint_and_the_rerun_only_saves(comfy, comfy_base, models, node_id,
                                                                      monkeypatch):
    import comfy.model_management as mm  # noqa: F811

    artifacts = sys.modules[comfy.pack_module("prompt_modules.core.artifacts").__name__]
    errors = comfy.pack_module("nodes._common")
    trainer = TRAINERS[node_id]
    name = f"pw-life-{node_id}-disk-full"
    target = _saved(comfy_base, trainer, name)
    before = _checkpoints(comfy_base)
    real_replace = os.replace

    def disk_full_for_the_result(src, dst):
        if Path(dst) == target:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    with monkeypatch.context() as patch:
        patch.setattr(artifacts.os, "replace", disk_full_for_the_result)
        with pytest.raises(errors.NodeInputError, match=rf"{node_id}: input '{trainer.save_input}': .*could not "
                           r"write .*No space left.*checkpoint is kept in .*run the node again"):
            _run(comfy, trainer, models, name)
    assert not target.exists()
    assert _checkpoints(comfy_base) - before, "the failed save lost the trained state"
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")], "a temporary file was left"
    rerun = _StopAt(mm, None)
    with monkeypatch.context() as patch:
        patch.setattr(mm, "throw_exception_if_processing_interrupted", rerun)
        _run(comfy, trainer, models, name)
    assert target.is_file()
    assert rerun.steps == trainer.steps - trainer.saved_after, "the rerun retrained what was done before the save"
    assert _checkpoints(comfy_base) == before


@pytest.mark.parametrize("node_id", sorted(TRAINERS))
@pytest.mark.parametrize("bad", ["folder", "too-long"])
def test_a_bad_save_target_is_refused_before_the_first_step(comfy, comfy_base, models, node_id, bad, monkeypatch):
    import comfy.model_management as mm  # noqa: F811

    trainer = TRAINERS[node_id]
    errors = comfy.pack_module("nodes._common")
    name = f"pw-life-{node_id}-{bad}"
    if bad == "folder":
        _saved(comfy_base, trainer, name).mkdir(parents=True, exist_ok=True)
        problem = "is a folder"
    else:
        name = "x" * 300
        problem = "too long"
    steps = _StopAt(mm, None)
    monkeypatch.setattr(mm, "throw_exception_if_processing_interrupted", steps)
    with pytest.raises(errors.NodeInputError, match=rf"{node_id}: input '{trainer.save_input}'.*{problem}"):
        _run(comfy, trainer, models, name)
    assert steps.steps == 0, "training started before the save target was checked"


#: The trainers that read files (the IPL ones train on the model and two texts, both in their checkpoint key).
FILE_TRAINERS = ("PWPretrainPrompts", "PWTrainDiffPrompt", "PWTrainDualPrompt", "PWTrainPromptInverter")


def _write_data(node_id: str, folder: Path, variant: int) -> dict:
    """The same file names and count, other contents for another ``variant``; returns the node's data inputs."""
    colours = [(255, 0, 0), (0, 0, 255), (0, 160, 0), (230, 200, 0)]
    colours = colours[variant:] + colours[:variant]
    names = ["red", "blue", "green", "yellow"]
    names = names[variant:] + names[:variant]
    if node_id == "PWPretrainPrompts":  # one sub-folder per class
        for c, colour in enumerate(colours[:2]):
            sub = folder / f"class{c}"
            sub.mkdir(parents=True, exist_ok=True)
            for i in range(2):
                Image.new("RGB", (32, 32), colour).save(sub / f"{i}.png")
        return {"source": "folder", "path": str(folder)}
    folder.mkdir(parents=True, exist_ok=True)
    for i, (colour, word) in enumerate(zip(colours, names, strict=True)):
        image = Image.new("RGB", (64, 64), (0, 0, 0))
        image.paste(colour, (16, 16, 48, 48))
        image.save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a {word} square")
        if node_id == "PWTrainDiffPrompt":
            mask = Image.new("L", (64, 64), 0)
            mask.paste(255, (16, 16, 48, 48))
            mask.save(folder / f"{i}_mask.png")
    if node_id == "PWTrainPromptInverter":
        return {"dataset_folder": str(folder), "images": None, "prompts": ""}
    return {"source": "folder", "path": str(folder)}


class _KeyOnly(Exception):
    pass


@pytest.mark.parametrize("node_id", FILE_TRAINERS)
def test_changed_training_data_is_a_new_run_never_a_resume(comfy, comfy_base, models, node_id, tmp_path,
                                                           monkeypatch):
    """Replace a dataset's images and texts (same names, same count): the checkpoint the node would resume from
    changes; with the data unchanged it is the same one."""
    trainer = TRAINERS[node_id]
    module = sys.modules[_node(comfy, node_id).__module__]
    real = module.run_checkpoint
    keys: list[str] = []

    def record_and_stop(stem, settings, **kwargs):
        keys.append(real(stem, settings, **kwargs).name)
        raise _KeyOnly

    monkeypatch.setattr(module, "run_checkpoint", record_and_stop)
    folder = tmp_path / "data"
    for variant in (0, None, 1):  # written, run again untouched, rewritten with other contents
        if variant is not None:
            time.sleep(0.01)  # a new modification time, as a user's edit gives
            inputs = _write_data(node_id, folder, variant)
        with pytest.raises(_KeyOnly):
            _run(comfy, trainer, models, f"pw-life-{node_id}-data", **inputs)
    assert keys[0] == keys[1] and keys[2] != keys[0]
