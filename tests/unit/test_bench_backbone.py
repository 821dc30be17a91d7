"""The benchmark's world backbone choice (``--backbone``) and the headroom task's pieces (issue 37)."""

from __future__ import annotations

import pytest
import torch

from promptweave.bench import harness
from promptweave.bench.headroom import fine_train_set, isolated_objects, linear_probe, referring_scenes
from promptweave.prompt_modules.world.models import WORLDCLIP_FILES, load_worldclip
from promptweave.prompt_modules.world.vocabulary import CATEGORY_NAMES, COLOUR_NAMES


def test_backbone_defaults_to_worldclip2_and_refuses_unknown_names(monkeypatch):
    monkeypatch.delenv(harness.BACKBONE_ENV, raising=False)
    assert harness.bench_backbone_name() == "worldclip2"
    monkeypatch.setenv(harness.BACKBONE_ENV, "worldclip3")
    with pytest.raises(SystemExit, match="worldclip-web"):
        harness.bench_backbone_name()
    assert set(harness.BACKBONES) == set(WORLDCLIP_FILES)


def test_load_worldclip_names_the_missing_file_and_refuses_unknown_backbones(tmp_path):
    with pytest.raises(ValueError, match="worldclip2"):
        load_worldclip(tmp_path, name="nope")
    with pytest.raises(Exception, match="worldclip-web.safetensors"):
        load_worldclip(tmp_path, name="worldclip-web")


def test_the_command_line_passes_the_backbone_to_the_tasks(monkeypatch):
    seen = {}

    def fake_run(seed, split, quick):
        seen["backbone"] = harness.bench_backbone_name()
        return harness.TaskResult(metrics={"x": 1.0})

    monkeypatch.setenv(harness.BACKBONE_ENV, "worldclip2")  # restored after the test, whatever main() sets
    monkeypatch.setattr(harness, "task_runner", lambda task: fake_run)
    assert harness.main(["world", "--backbone", "worldclip-web", "--split", "val"]) == 0
    assert seen["backbone"] == "worldclip-web"


def test_headroom_probe_data_and_probe():
    images, categories, colours = fine_train_set(seed=0, shots=2)
    assert images.shape == (2 * (len(CATEGORY_NAMES) + len(COLOUR_NAMES)), 3, 64, 64)
    assert torch.bincount(categories[categories >= 0]).tolist() == [2] * len(CATEGORY_NAMES)
    assert torch.bincount(colours[colours >= 0]).tolist() == [2] * len(COLOUR_NAMES)
    assert ((categories >= 0) != (colours >= 0)).all()
    # the probe learns a linearly separable problem
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 16, generator=generator) * 3
    y = torch.arange(5).repeat(20)
    x = centres[y] + 0.3 * torch.randn(100, 16, generator=generator)
    head = linear_probe(x, y, 5, steps=200)
    assert float((head(torch.nn.functional.normalize(x, dim=-1)).argmax(1) == y).float().mean()) > 0.95


def test_grounding_headroom_shows_each_object_alone_and_names_one_of_them():
    items = referring_scenes("val", 5)
    for scene, index, text in items:
        assert len(scene.objects) >= 2 and 0 <= index < len(scene.objects) and text
        family = scene.objects[index].family  # RefCOCO's rule: a distractor of the referent's family
        assert sum(o.family == family for o in scene.objects) >= 2
        crops = isolated_objects(scene)
        assert crops.shape == (len(scene.objects), 3, scene.size, scene.size)
        background = torch.tensor(scene.background_rgb, dtype=torch.float32)[:, None, None] / 255.0
        for k, crop in enumerate(crops):
            differs = (crop - background).abs().sum(0) > 1e-6
            assert not (differs & ~torch.from_numpy(scene.masks[k])).any()  # nothing outside the object's mask


def test_backbone_file_is_measured_instead_of_a_named_backbone(tmp_path, monkeypatch):
    from promptweave.prompt_modules.core.vlm import VisionLanguageModel, save_vlm

    path = tmp_path / "pilot.safetensors"
    save_vlm(VisionLanguageModel("tiny", seed=0), path)
    seen = {}

    def fake_run(seed, split, quick):
        seen["name"], vlm = harness.bench_backbone()
        seen["config"] = vlm.config.name
        return harness.TaskResult(metrics={"x": 1.0})

    monkeypatch.setenv(harness.BACKBONE_FILE_ENV, "")  # restored after the test, whatever main() sets
    monkeypatch.setattr(harness, "task_runner", lambda task: fake_run)
    assert harness.main(["world", "--backbone-file", str(path)]) == 0
    assert seen == {"name": f"file:{path.resolve()}", "config": "tiny"}
    with pytest.raises(SystemExit, match="no such file"):
        harness.main(["world", "--backbone-file", str(tmp_path / "missing.safetensors")])


def test_adaptation_is_guided_by_the_backbone_and_judged_by_worldclip2(monkeypatch):
    from promptweave.bench.adaptation import load_backbones
    from promptweave.prompt_modules.world.models import WEIGHTS_DIR

    if not all((WEIGHTS_DIR / f).is_file() for f in ("worldclip.safetensors", "worldclip-web.safetensors",
                                                      "worldgen.safetensors")):
        pytest.skip("the shipped world weights are not in this checkout")
    monkeypatch.delenv("PW_BENCH_VLM", raising=False)
    monkeypatch.delenv(harness.BACKBONE_FILE_ENV, raising=False)
    monkeypatch.setenv(harness.BACKBONE_ENV, "worldclip-web")
    guide, judge, gen, note = load_backbones()
    assert guide.name == "worldclip-web" and judge.name == "worldclip2" and note is None
    assert gen.config.backbone == judge.name  # WorldGen reads WorldCLIP 2's text space
    monkeypatch.setenv(harness.BACKBONE_ENV, "worldclip2")
    guide, judge, _, _ = load_backbones()
    assert guide is judge
