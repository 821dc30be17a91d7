"""RPP's class-folder reader: the ImageFolder layout with WordNet-id folders (ImageNet / ImageNet-21K), class-name
mapping files in their published forms, K shots per class, and images at the encoder's resolution."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from promptweave.prompt_modules.pretraining import FolderClassSource, read_class_map

# Three ImageNet classes with their real WordNet ids and LOC_synset_mapping.txt / words.txt names.
CLASSES = {
    "n01440764": ("tench, Tinca tinca", (200, 40, 40)),
    "n01443537": ("goldfish, Carassius auratus", (40, 200, 40)),
    "n01484850": ("great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias", (40, 40, 200)),
}
NAMES = ["tench", "goldfish", "great white shark"]


def make_imagefolder(root: Path, counts: dict[str, int] | None = None) -> Path:
    """``root/<wnid>/<wnid>_<k>.JPEG`` as ImageNet's train folders (non-square images of one colour per class)."""
    for wnid, (_, colour) in CLASSES.items():
        (root / wnid).mkdir(parents=True)
        for k in range((counts or {}).get(wnid, 3)):
            Image.new("RGB", (50 + k, 37), colour).save(root / wnid / f"{wnid}_{k}.JPEG", format="JPEG")
    return root


def test_text_mapping_with_space_or_tab_and_imagefolder(tmp_path):
    root = make_imagefolder(tmp_path / "train")
    spaced = tmp_path / "LOC_synset_mapping.txt"  # ImageNet (Kaggle): "n01440764 tench, Tinca tinca"
    spaced.write_text("".join(f"{w} {names}\n" for w, (names, _) in CLASSES.items()), encoding="utf-8")
    tabbed = tmp_path / "words.txt"  # WordNet / ImageNet-21K: "n01440764\ttench, Tinca tinca", plus other synsets
    tabbed.write_text(
        "# comment\nn00001740\tentity\n\n" + "".join(f"{w}\t{names}\n" for w, (names, _) in CLASSES.items()),
        encoding="utf-8",
    )
    assert read_class_map(spaced) == dict(zip(CLASSES, NAMES, strict=True))
    assert read_class_map(tabbed)["n00001740"] == "entity"
    for mapping in (spaced, tabbed, str(tabbed)):
        src = FolderClassSource(root, size=64, class_map=mapping)
        assert src.class_names == NAMES and src.class_folders == list(CLASSES) and len(src) == 9
    # without a mapping the folder name is the class name (the existing behaviour)
    assert FolderClassSource(root, size=64).class_names == list(CLASSES)


def test_json_mapping_forms(tmp_path):
    root = make_imagefolder(tmp_path / "train")
    forms = {
        "names.json": {w: n.split(", ") for w, (n, _) in CLASSES.items()},  # {wnid: [names]}
        "name.json": {w: n for w, (n, _) in CLASSES.items()},  # {wnid: "name, synonym"}
        "first.json": dict(zip(CLASSES, NAMES, strict=True)),  # {wnid: name}
        # Keras' imagenet_class_index.json: {"0": ["n01440764", "tench"]}; lemmas with underscores
        "imagenet_class_index.json": {
            str(i): [w, n.replace(" ", "_")] for i, (w, n) in enumerate(zip(CLASSES, NAMES, strict=True))
        },
    }
    for name, data in forms.items():
        (tmp_path / name).write_text(json.dumps(data), encoding="utf-8")
        assert read_class_map(tmp_path / name) == dict(zip(CLASSES, NAMES, strict=True)), name
        assert FolderClassSource(root, class_map=tmp_path / name).class_names == NAMES
    # a dict works as the mapping too
    assert FolderClassSource(root, class_map={w: f"class {w}" for w in CLASSES}).class_names[0] == "class n01440764"


@pytest.mark.parametrize("size", [224, 64])
def test_images_load_at_the_requested_size(tmp_path, size):
    root = make_imagefolder(tmp_path / "train")
    src = FolderClassSource(root, size=size, shots=2)
    batch = src.batch(seed=0, step=0, batch_size=5)
    assert batch.images.shape == (5, 3, size, size) and batch.images.dtype == torch.float32
    colours = torch.tensor([c for _, c in CLASSES.values()], dtype=torch.float32) / 255
    for image, label in zip(batch.images, batch.labels, strict=True):  # the label matches the folder's colour
        assert torch.allclose(image.mean(dim=(1, 2)), colours[int(label)], atol=0.03)


def test_shots_first_k_sorted_or_seeded(tmp_path):
    root = make_imagefolder(tmp_path / "train", counts=dict.fromkeys(CLASSES, 6))
    first = FolderClassSource(root, shots=2)
    assert len(first) == 6 and first.short_classes == {}
    files = [p.name for p, _ in first.items]
    assert files[:2] == ["n01440764_0.JPEG", "n01440764_1.JPEG"]  # the first K in sorted order
    seeded = FolderClassSource(root, shots=2, shot_seed=7)
    again = FolderClassSource(root, shots=2, shot_seed=7)
    assert [p for p, _ in seeded.items] == [p for p, _ in again.items]  # deterministic
    per_class = [[p.name for p, c in seeded.items if c == k] for k in range(3)]
    assert all(len(names) == 2 and names == sorted(names) for names in per_class)
    others = {tuple(p.name for p, _ in FolderClassSource(root, shots=2, shot_seed=s).items) for s in range(6)}
    assert len(others) > 1  # the seed chooses
    assert len(FolderClassSource(root, shots=0)) == 18  # 0: every image


def test_short_class_is_used_and_reported(tmp_path):
    root = make_imagefolder(tmp_path / "train", counts={"n01440764": 1, "n01443537": 4, "n01484850": 4})
    with pytest.warns(UserWarning, match=r"fewer than 3 images .*n01440764 \(1\)"):
        src = FolderClassSource(root, shots=3)
    assert src.short_classes == {"n01440764": 1}
    assert len(src) == 1 + 3 + 3 and src.class_names == list(CLASSES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FolderClassSource(root, shots=1)  # every class has one: no warning


def test_mapping_lacking_a_folder_names_it(tmp_path):
    root = make_imagefolder(tmp_path / "train")
    mapping = tmp_path / "map.txt"
    mapping.write_text("n01440764 tench\nn01443537 goldfish\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"map\.txt has no entry for class folder .*n01484850"):
        FolderClassSource(root, class_map=mapping)


@pytest.mark.parametrize(
    ("name", "text", "error"),
    [
        ("ids.txt", "n01440764 tench\nn01443537\n", r"ids\.txt, line 2: 'n01443537' has an id but no name"),
        ("twice.txt", "n01440764 tench\nn01440764 goldfish\n", r"twice\.txt, line 2: id 'n01440764' is mapped twice"),
        ("empty.txt", "# only a comment\n\n", r"empty\.txt holds no 'id name' lines"),
        ("bad.json", '{"n01440764": "tench",}', r"bad\.json is not valid JSON"),
        ("list.json", '["tench", "goldfish"]', r"list\.json must be a non-empty JSON object"),
        ("num.json", '{"n01440764": 3}', r"num\.json, entry 'n01440764': the class name must be a string"),
        ("blank.json", '{"n01440764": ["  "]}', r"blank\.json, entry 'n01440764': the class name is empty"),
    ],
)
def test_malformed_mapping_files(tmp_path, name, text, error):
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=error):
        read_class_map(tmp_path / name)


def test_bad_arguments(tmp_path):
    root = make_imagefolder(tmp_path / "train")
    with pytest.raises(ValueError, match="mapping file .*missing.txt does not exist"):
        FolderClassSource(root, class_map=tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="shots must be an int >= 0"):
        FolderClassSource(root, shots=-1)
    with pytest.raises(ValueError, match="image size must be a positive int"):
        FolderClassSource(root, size=0)
    with pytest.raises(ValueError, match="does not exist"):
        FolderClassSource(tmp_path / "nowhere")


def test_world_class_source_renders_only_the_part_it_is_asked_for():
    from promptweave.prompt_modules.world.sources import WorldClassSource, world_classes

    source = WorldClassSource(world_classes(["ring", "square", "crescent"]), shots=4)
    whole = source.batch(2, 5, 6)
    part = source.batch_part(2, 5, 6, slice(3, 6))
    assert torch.equal(part.images, whole.images[3:]) and torch.equal(part.labels, whole.labels[3:])
    assert torch.equal(source.batch_labels(2, 5, 6), whole.labels)
