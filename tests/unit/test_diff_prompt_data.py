"""Referring-expression readers for Diff-Prompt on fixtures in the published layouts: a COCO ``instances.json``
(polygon, uncompressed RLE, COCO compressed RLE, box only) with refs as JSON and JSONL (the refer toolkit's refs
after conversion from ``refs(unc).p``), and the simple JSONL. Masks, split filtering, every malformed case's error,
pickle refusal, and Diff-Prompt training steps reading these sources."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from promptweave.prompt_modules.core.data import image_file_size, load_image
from promptweave.prompt_modules.core.deep_prompts import DeepPromptConfig
from promptweave.prompt_modules.core.vlm import VisionLanguageModel
from promptweave.prompt_modules.diff_prompt import (
    DiffPrompt,
    DiT,
    DiTConfig,
    MaskVAE,
    MaskVAEConfig,
    PromptConfig,
    ReferringGroundingSource,
    StaticPromptGrounder,
    read_grounding_jsonl,
    read_refcoco,
    train_diff_prompt,
    train_grounder,
    train_prompts,
)
from promptweave.prompt_modules.diff_prompt.data import (
    box_mask,
    polygon_mask,
    rle_counts_from_string,
    rle_decode,
)


# ----- a COCO compressed-RLE encoder written from the format (the inverse of pycocotools' rleFrString) -----------
def _runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts: alternating 0 / 1 runs over the column-major pixels, starting with 0s."""
    flat = mask.astype(bool).flatten(order="F")
    counts, current, run = [], False, 0
    for value in flat:
        if bool(value) != current:
            counts.append(run)
            current, run = bool(value), 0
        run += 1
    counts.append(run)
    return counts


def _compress(counts: list[int]) -> str:
    """Counts after the third are stored as differences to the count two before; each value is written in
    5-bit chunks (low first), char = chunk + 48, 0x20 = more chunks follow, 0x10 of the last chunk = sign."""
    chars = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            chunk = x & 0x1F
            x >>= 5
            more = x != -1 if chunk & 0x10 else x != 0
            chars.append(chr((chunk | (0x20 if more else 0)) + 48))
    return "".join(chars)


def test_compressed_rle_round_trips_and_matches_a_hand_computed_example():
    rng = np.random.default_rng(0)
    shapes = [(1, 1), (5, 7), (33, 20), (64, 48)]
    masks = [np.zeros((6, 5), bool), np.ones((6, 5), bool)]
    for h, w in shapes:
        masks.append(rng.random((h, w)) < 0.5)  # many short runs
        blob = np.zeros((h, w), bool)
        blob[h // 4 : h // 4 + max(1, h // 2), w // 3 :] = True  # a few long runs (multi-chunk counts)
        masks.append(blob)
    for mask in masks:
        counts = _runs(mask)
        assert rle_counts_from_string(_compress(counts)) == counts
        assert np.array_equal(rle_decode(_compress(counts), *mask.shape), mask)
        assert np.array_equal(rle_decode(counts, *mask.shape), mask)
    # Worked by hand: 40 = 0b01000 + (1 << 5) -> 'X' (8 | 0x20, + 48) then '1'; 5 -> '5'; 3 -> '3'; the fourth
    # count 2 is stored as 2 - 5 = -3 -> chunk 29 (0x10 = negative, no more chunks) -> 'M'.
    assert _compress([40, 5, 3, 2]) == "X153M"
    assert rle_counts_from_string("X153M") == [40, 5, 3, 2]
    expected = np.zeros((5, 10), bool)  # column-major: 40 zeros = columns 0-7, 5 ones = column 8, ...
    expected[:, 8] = True
    expected[3:, 9] = True
    assert np.array_equal(rle_decode("X153M", 5, 10), expected)
    with pytest.raises(ValueError, match="ends in the middle of a count"):
        rle_counts_from_string("X")
    with pytest.raises(ValueError, match="add up to 50 pixels but its size"):
        rle_decode("X153M", 5, 11)


def test_polygon_and_box_masks_follow_pixel_centres():
    expected = np.zeros((10, 12), bool)
    expected[2:6, 2:8] = True  # the square [2, 8) x [2, 6): its 24 pixels, COCO's area
    assert np.array_equal(polygon_mask([[2, 2, 8, 2, 8, 6, 2, 6]], 10, 12), expected)
    assert np.array_equal(box_mask([2, 2, 6, 4], 10, 12), expected)
    two = polygon_mask([[2, 2, 8, 2, 8, 6, 2, 6], [9, 7, 11, 7, 11, 9, 9, 9]], 10, 12)  # the union of both
    assert two.sum() == 24 + 4 and two[7:9, 9:11].all()
    triangle = polygon_mask([[0, 0, 40, 0, 0, 40]], 48, 48)
    assert abs(int(triangle.sum()) - 800) <= 40  # close to the area, 800
    assert box_mask([3.2, 3.2, 0.1, 0.1], 8, 8).sum() == 1  # a tiny box keeps one pixel


def test_large_jpegs_load_whole_at_the_requested_size(tmp_path):
    y, x = np.mgrid[0:600, 0:900]
    photo = np.stack([x * 255 // 900, y * 255 // 600, (x + y) * 255 // 1500], -1).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=95)
    image = load_image(tmp_path / "photo.jpg", 64, fit="stretch")
    original = image_file_size(tmp_path / "photo.jpg")
    assert image.shape == (3, 64, 64) and original == (900, 600)
    full = np.asarray(Image.fromarray(photo).resize((64, 64), Image.BILINEAR), np.float32) / 255
    assert float((image - torch.from_numpy(full).permute(2, 0, 1)).abs().mean()) < 0.02  # the reduced decode agrees


# ----- fixtures in the refer toolkit's layout ---------------------------------------------------------------------
SIZES = {1: (24, 16), 2: (20, 20), 3: (16, 12)}  # image id -> (width, height)


def _rle_mask() -> np.ndarray:
    mask = np.zeros((20, 20), bool)
    mask[3:9, 4:15] = True
    mask[9:17, 4:7] = True  # an L shape
    return mask


def _compressed_mask() -> np.ndarray:
    mask = np.zeros((12, 16), bool)
    mask[1:11, 9:15] = True
    mask[4:7, 11:13] = False  # a hole
    return mask


def _png(path: Path, width: int, height: int, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _refs() -> list[dict]:
    return [
        {"ref_id": 0, "ann_id": 11, "image_id": 1, "split": "train", "category_id": 1,
         "sentences": [{"sent": "the red box", "sent_id": 0}, {"raw": "THE  RED BOX ", "sent_id": 1}]},
        {"ref_id": 1, "ann_id": 12, "image_id": 2, "split": "train", "category_id": 1,
         "sentences": [{"tokens": ["the", "l", "shape"], "sent_id": 2}]},
        {"ref_id": 2, "ann_id": 13, "image_id": 3, "split": "val", "category_id": 1,
         "sentences": [{"sent": "the thing with a hole", "sent_id": 3}]},
        {"ref_id": 3, "ann_id": 14, "image_id": 1, "split": "testA", "category_id": 1,
         "sentences": [{"sent": "the box on the right", "sent_id": 4}]},
    ]  # fmt: skip


def _instances() -> dict:
    rle, compressed = _rle_mask(), _compressed_mask()
    return {
        "images": [
            {"id": i, "file_name": f"COCO_train2014_{i:012d}.png", "width": w, "height": h}
            for i, (w, h) in SIZES.items()
        ],
        "annotations": [
            {"id": 11, "image_id": 1, "bbox": [2, 2, 6, 4], "category_id": 1, "area": 24.0, "iscrowd": 0,
             "segmentation": [[2, 2, 8, 2, 8, 6, 2, 6]]},
            {"id": 12, "image_id": 2, "bbox": [4, 3, 11, 14], "category_id": 1, "iscrowd": 1,
             "segmentation": {"counts": _runs(rle), "size": [20, 20]}},
            {"id": 13, "image_id": 3, "bbox": [9, 1, 6, 10], "category_id": 1, "iscrowd": 0,
             "segmentation": {"counts": _compress(_runs(compressed)), "size": [12, 16]}},
            {"id": 14, "image_id": 1, "bbox": [15, 4, 5, 6], "category_id": 1, "iscrowd": 0, "segmentation": []},
        ],
        "categories": [{"id": 1, "name": "thing", "supercategory": "thing"}],
    }  # fmt: skip


def _expected_masks() -> dict[int, np.ndarray]:
    first = np.zeros((16, 24), bool)
    first[2:6, 2:8] = True
    box = np.zeros((16, 24), bool)
    box[4:10, 15:20] = True
    return {11: first, 12: _rle_mask(), 13: _compressed_mask(), 14: box}


@pytest.fixture
def coco(tmp_path):
    root = tmp_path / "refcoco"
    images = tmp_path / "train2014"
    root.mkdir()
    images.mkdir()
    for i, (w, h) in SIZES.items():
        _png(images / f"COCO_train2014_{i:012d}.png", w, h, seed=i)
    (root / "instances.json").write_text(json.dumps(_instances()))
    (root / "refs(unc).json").write_text(json.dumps(_refs()))
    (root / "refs(unc).jsonl").write_text("".join(json.dumps(r) + "\n" for r in _refs()))
    return root, images


def _ann_ids(source: ReferringGroundingSource) -> list[int]:
    return [int(s.name.rsplit(" ", 1)[1]) for s in source.samples]


def test_refcoco_masks_splits_and_batches(coco):
    root, images = coco
    source = read_refcoco(root / "instances.json", root / "refs(unc).json", images, split=None, size=32)
    assert _ann_ids(source) == [11, 12, 13, 14] and len(source) == 5  # one sample per sentence
    expected = _expected_masks()
    for sample in source.samples:
        assert np.array_equal(sample.mask(), expected[int(sample.name.rsplit(" ", 1)[1])]), sample.name
    assert source.samples[0].texts == ("the red box", "THE RED BOX") and source.samples[1].texts == ("the l shape",)

    train = read_refcoco(root / "instances.json", root / "refs(unc).jsonl", images, size=32)  # JSONL refs, "train"
    assert _ann_ids(train) == [11, 12] and len(train) == 3
    assert _ann_ids(read_refcoco(root / "instances.json", root / "refs(unc).json", images, split="val")) == [13]
    both = read_refcoco(root / "instances.json", root / "refs(unc).json", images, split=["val", "testA"])
    assert _ann_ids(both) == [13, 14]
    with pytest.raises(ValueError, match=r"no refs of split \['testB'\]; its splits are \['testA', 'train', 'val'\]"):
        read_refcoco(root / "instances.json", root / "refs(unc).json", images, split="testB")

    batch = train.batch(0, 0, 3)
    assert batch.images.shape == (3, 3, 32, 32) and batch.masks.shape == (3, 32, 32) and batch.boxes.shape == (3, 4)
    assert sorted(batch.texts) == ["THE RED BOX", "the l shape", "the red box"]  # every sentence once
    assert set(batch.masks.unique().tolist()) <= {0.0, 1.0} and bool((batch.masks.flatten(1).sum(1) > 0).all())
    i = batch.texts.index("the l shape")
    assert torch.allclose(batch.boxes[i], torch.tensor([4 / 20, 3 / 20, 15 / 20, 17 / 20]))
    rle = torch.from_numpy(_rle_mask()).float()[None, None]
    want = torch.nn.functional.interpolate(rle, size=(32, 32), mode="bilinear", align_corners=False)[0, 0] > 0.5
    assert torch.equal(batch.masks[i], want.float())
    with Image.open(images / "COCO_train2014_000000000002.png") as im:
        pixels = np.asarray(im.convert("RGB").resize((32, 32), Image.BILINEAR), np.float32) / 255
    assert torch.equal(batch.images[i], torch.from_numpy(pixels).permute(2, 0, 1))  # the whole image, resized
    again = train.batch(0, 0, 3)
    assert again.texts == batch.texts and torch.equal(again.images, batch.images)

    per_ref = read_refcoco(root / "instances.json", root / "refs(unc).json", images, size=16, per="ref")
    assert len(per_ref) == 2
    picked = {t for step in range(12) for t in per_ref.batch(3, step, 2).texts}
    assert picked == {"the red box", "THE RED BOX", "the l shape"}  # a sentence per ref, chosen per (seed, step)
    assert per_ref.batch(3, 5, 2).texts == per_ref.batch(3, 5, 2).texts


def test_refcoco_box_only_fallback(coco):
    root, images = coco
    data = _instances()
    for ann in data["annotations"]:
        ann.pop("segmentation")  # no masks at all: every object is its box
    (root / "boxes.json").write_text(json.dumps(data))
    source = read_refcoco(root / "boxes.json", root / "refs(unc).json", images, split=None, size=24)
    for sample in source.samples:
        w, h = SIZES[{11: 1, 12: 2, 13: 3, 14: 1}[int(sample.name.rsplit(" ", 1)[1])]]
        assert np.array_equal(sample.mask(), box_mask(sample.bbox, h, w))
    assert np.array_equal(source.samples[0].mask(), _expected_masks()[11])  # the box of the square is the square
    batch = source.batch(0, 0, 5)
    assert bool((batch.masks.flatten(1).sum(1) > 0).all())
    data = _instances()
    data["annotations"][1]["segmentation"] = {"counts": [400], "size": [20, 20]}  # an empty RLE: the box too
    (root / "empty_rle.json").write_text(json.dumps(data))
    source = read_refcoco(root / "empty_rle.json", root / "refs(unc).json", images, size=24)
    assert np.array_equal(source.samples[1].mask(), box_mask([4, 3, 11, 14], 20, 20))


def _write_case(root: Path, instances: dict | None = None, refs: list | None = None) -> tuple[Path, Path]:
    inst, ref = root / "case_instances.json", root / "case_refs.json"
    inst.write_text(json.dumps(instances if instances is not None else _instances()))
    ref.write_text(json.dumps(refs if refs is not None else _refs()))
    return inst, ref


def test_refcoco_errors_name_the_file_the_entry_and_the_fix(coco):
    root, images = coco

    def fails(match: str, instances=None, refs=None, **kwargs) -> None:
        inst, ref = _write_case(root, instances, refs)
        with pytest.raises(ValueError, match=match):
            read_refcoco(inst, ref, images, **{"split": None, **kwargs})

    (root / "bad.json").write_text('{"images": [}')
    with pytest.raises(ValueError, match=r"bad.json is not valid JSON \(line 1, column 13"):
        read_refcoco(root / "bad.json", root / "refs(unc).json", images)
    (root / "bad.jsonl").write_text(json.dumps(_refs()[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: not valid JSON .*one JSON object per line"):
        read_refcoco(root / "instances.json", root / "bad.jsonl", images)
    with pytest.raises(ValueError, match=r"is not a COCO instances file: expected an object with 'images'"):
        read_refcoco(root / "refs(unc).json", root / "refs(unc).json", images)

    refs = _refs()
    del refs[1]["sentences"]
    fails(r"case_refs.json, entry 1 has no 'sentences': write it as \{\"ref_id\"", refs=refs)
    refs = _refs()
    del refs[2]["split"]
    fails(r"case_refs.json, entry 2 has no 'split'", refs=refs, split="train")
    refs = _refs()
    refs[0]["ann_id"] = 999
    fails(r"case_refs.json, entry 0: ann_id 999 is not an annotation of .*case_instances.json: the refs and", refs=refs)
    refs = _refs()
    refs[1]["image_id"] = 3
    fails(r"entry 1: image_id 3 but its annotation 12 is on image 2: the refs and the instances", refs=refs)
    refs = _refs()
    refs[3]["sentences"] = [{"sent": "  "}]
    fails(r"case_refs.json, entry 3, sentences\[0\] is an empty expression", refs=refs)
    refs = _refs()
    refs[3]["sentences"] = []
    fails(r"entry 3: 'sentences' must be a non-empty list", refs=refs)

    data = _instances()
    data["annotations"][1]["image_id"] = 77
    refs = _refs()
    del refs[1]["image_id"]  # optional in a ref: the annotation's image is used
    fails(r"annotations\[1\] \(id 12\): image_id 77 is not in .*images", instances=data, refs=refs)
    data = _instances()
    del data["images"][2]["height"]
    fails(r"case_instances.json, images\[2\] has no 'height'", instances=data)
    data = _instances()
    data["annotations"][0]["bbox"] = [20, 2, 6, 4]
    fails(r"annotations\[0\] \(id 11\): the box .* outside its 24x16 image .*not \[x0, y0, x1, y1\]", instances=data)
    data = _instances()
    data["annotations"][3]["bbox"] = [15, 4, 9.5, 6]  # 0.5 px past the border (float rounding): clipped
    inst, ref = _write_case(root, data)
    assert read_refcoco(inst, ref, images, split=None).samples[3].bbox == (15.0, 4.0, 9.0, 6.0)
    data = _instances()
    data["annotations"][1]["segmentation"]["size"] = [19, 20]
    fails(r"annotations\[1\] \(id 12\): the RLE size \[19, 20\] is not its image's \[height, width\] = \[20, 20\]",
          instances=data)  # fmt: skip
    data = _instances()
    data["annotations"][1]["segmentation"]["counts"][-1] += 1
    fails(r"annotations\[1\] \(id 12\): bad RLE segmentation: the RLE counts add up to 401 pixels", instances=data)
    data = _instances()
    data["annotations"][2]["segmentation"]["counts"] += "1"
    fails(r"annotations\[2\] \(id 13\): bad RLE segmentation: the counts add up to", instances=data)
    data = _instances()
    data["annotations"][0]["segmentation"] = [[2, 2, 8, 2]]
    fails(r"annotations\[0\] \(id 11\): polygon 0 is not a list of 3 or more points", instances=data)

    (images / "COCO_train2014_000000000003.png").rename(images / "moved.png")
    fails(r"entry 2: its image COCO_train2014_000000000003.png \(image 3\) is not in .*train2014: pass the image_root")
    with pytest.raises(ValueError, match="image_root .* is not a folder"):
        read_refcoco(root / "instances.json", root / "refs(unc).json", images / "nope")
    _png(images / "COCO_train2014_000000000003.png", 8, 8, seed=3)  # another size than instances.json says
    source = read_refcoco(root / "instances.json", root / "refs(unc).json", images, split="val")
    with pytest.raises(ValueError, match=r"COCO_train2014_000000000003.png is 8x8 but .* gives it as 16x12"):
        source.batch(0, 0, 1)


def test_pickled_refs_are_refused_with_the_conversion_command(coco):
    root, images = coco
    pickled = root / "refs(unc).p"
    pickled.write_bytes(pickle.dumps(_refs(), protocol=2))  # written, never read back: the reader must refuse it
    with pytest.raises(ValueError, match=r"refs\(unc\).p is a Python pickle") as err:
        read_refcoco(root / "instances.json", pickled, images)
    message = str(err.value)
    assert "json.dump(pickle.load(open(" in message and "refs(unc).json" in message
    disguised = root / "refs_pickle.json"
    disguised.write_bytes(pickle.dumps(_refs(), protocol=4))
    with pytest.raises(ValueError, match="refs_pickle.json is a Python pickle"):
        read_refcoco(root / "instances.json", disguised, images)
    with pytest.raises(ValueError, match=r"instances.pkl is a Python pickle .*as the instances file"):
        (root / "instances.pkl").write_bytes(pickle.dumps({}))
        read_refcoco(root / "instances.pkl", root / "refs(unc).json", images)
    with pytest.raises(ValueError, match="the refs file .*missing.json does not exist"):
        read_refcoco(root / "instances.json", root / "missing.json", images)


# ----- the simple JSONL -------------------------------------------------------------------------------------------
@pytest.fixture
def simple(tmp_path):
    (tmp_path / "img").mkdir()
    _png(tmp_path / "img" / "a.png", 20, 10, seed=1)
    _png(tmp_path / "img" / "b.png", 12, 12, seed=2)
    mask = np.zeros((10, 20), np.uint8)
    mask[2:7, 3:9] = 255
    Image.fromarray(mask).save(tmp_path / "img" / "a_mask.png")
    rows = [
        {"image": "img/a.png", "expression": "the left thing", "bbox": [3, 2, 6, 5], "mask": "img/a_mask.png"},
        {"image": "img/b.png", "expression": "the middle", "bbox": [4, 4, 4, 4]},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    return path, rows


def _lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_simple_jsonl_masks_paths_and_batches(simple, tmp_path):
    path, rows = simple
    source = read_grounding_jsonl(path, size=16)
    assert len(source) == 2 and [s.texts for s in source.samples] == [("the left thing",), ("the middle",)]
    mask = np.zeros((10, 20), bool)
    mask[2:7, 3:9] = True
    assert np.array_equal(source.samples[0].mask(), mask)  # from the file
    square = np.zeros((12, 12), bool)
    square[4:8, 4:8] = True
    assert np.array_equal(source.samples[1].mask(), square)  # no mask file: the box
    batch = source.batch(1, 0, 2)
    assert batch.images.shape == (2, 3, 16, 16) and batch.masks.shape == (2, 16, 16)
    i = batch.texts.index("the middle")
    assert torch.allclose(batch.boxes[i], torch.tensor([4 / 12, 4 / 12, 8 / 12, 8 / 12]))
    want = torch.nn.functional.interpolate(torch.from_numpy(square).float()[None, None], size=16, mode="bilinear")
    assert torch.equal(batch.masks[i], (want[0, 0] > 0.5).float())

    elsewhere = tmp_path / "lists"
    elsewhere.mkdir()
    local = [{**rows[0], "image": "a.png", "mask": "a_mask.png"}, {**rows[1], "image": "b.png"}]
    moved = _lines(elsewhere / "rows.jsonl", local)
    assert len(read_grounding_jsonl(moved, image_root=tmp_path / "img")) == 2  # relative to image_root
    Image.fromarray(np.zeros((10, 20), np.uint8)).save(tmp_path / "img" / "black.png")
    black = read_grounding_jsonl(_lines(tmp_path / "black.jsonl", [{**rows[0], "mask": "img/black.png"}]))
    assert np.array_equal(black.samples[0].mask(), box_mask([3, 2, 6, 5], 10, 20))  # an empty mask file: the box
    absolute = _lines(elsewhere / "abs.jsonl", [{**rows[1], "image": str(tmp_path / "img" / "b.png")}])
    assert read_grounding_jsonl(absolute).samples[0].image == tmp_path / "img" / "b.png"


def test_simple_jsonl_errors(simple, tmp_path):
    path, rows = simple

    def fails(match: str, bad: dict, **kwargs) -> None:
        case = _lines(tmp_path / "case.jsonl", [rows[0], bad])
        with pytest.raises(ValueError, match=match):
            read_grounding_jsonl(case, **kwargs)

    (tmp_path / "broken.jsonl").write_text(json.dumps(rows[0]) + "\n" + '{"image": "img/b.png",\n')
    with pytest.raises(ValueError, match=r"broken.jsonl, line 2: not valid JSON"):
        read_grounding_jsonl(tmp_path / "broken.jsonl")
    fails(r"case.jsonl, line 2 has no 'bbox': write it as \{\"image\"", {"image": "img/b.png", "expression": "x"})
    fails(r"case.jsonl, line 2 is a list, not a JSON object", [1, 2])
    fails(r"case.jsonl, line 2: the expression is empty", {**rows[1], "expression": " "})
    fails(
        r"line 2: the box \[x, y, w, h\] = \[4, 4, 10, 4\] lies outside its 12x12", {**rows[1], "bbox": [4, 4, 10, 4]}
    )
    fails(r"line 2: bbox \[0.1, 0.2\] is not four numbers", {**rows[1], "bbox": [0.1, 0.2]})
    fails(r"line 2: the image file img/c.png does not exist \(looked for .*c.png\)", {**rows[1], "image": "img/c.png"})
    fails(r"line 2: the mask file nope.png does not exist", {**rows[1], "mask": "nope.png"})
    fails(r"line 2: the mask a_mask.png is 20x10 but its image b.png is 12x12: each mask must have its image's size",
          {**rows[1], "mask": "img/a_mask.png"})  # fmt: skip
    (tmp_path / "img" / "junk.png").write_text("not an image")
    fails(r"line 2: cannot read image .*junk.png", {**rows[1], "image": "img/junk.png"})
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl holds no samples"):
        read_grounding_jsonl(tmp_path / "empty.jsonl")
    (tmp_path / "data.pkl").write_bytes(pickle.dumps(rows))
    with pytest.raises(ValueError, match="data.pkl is a Python pickle"):
        read_grounding_jsonl(tmp_path / "data.pkl")


# ----- Diff-Prompt trains on them ---------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


VAE_CFG = MaskVAEConfig(mask_size=32, block_out_channels=(8, 16, 16), norm_num_groups=8)
DIT_CFG = DiTConfig(hidden=32, depth=1, heads=2, lr=1e-3)
PROMPT_CFG = PromptConfig(ddim_steps=4, adapter_channels=4, adapter_features=16, head_hidden=16, lr=3e-3)


@pytest.fixture(scope="module")
def vlm():
    return VisionLanguageModel("tiny", seed=0)


def test_prompt_stage_steps_read_a_refcoco_source(vlm, coco):
    root, images = coco
    refcoco = read_refcoco(root / "instances.json", root / "refs(unc).json", images, split=None, size=vlm.image_size)
    vae = MaskVAE(VAE_CFG)
    dit = DiT(dataclasses.replace(DIT_CFG, cond_dim=vlm.embed_dim))
    result = train_prompts(vlm, vae, dit, refcoco, PROMPT_CFG, steps=2, batch_size=4, progress=False)
    assert isinstance(result.model, DiffPrompt) and result.steps_done == 2
    assert all(np.isfinite(loss) for loss in result.losses)


def test_a_grounder_trains_on_a_jsonl_source(vlm, simple):
    jsonl = read_grounding_jsonl(simple[0], size=vlm.image_size)
    coop = StaticPromptGrounder(
        vlm, DeepPromptConfig(n_text=4, n_visual=0, text_depth=1, visual_depth=0), head_hidden=16, mask_size=32
    )
    before = [p.detach().clone() for p in coop.trainable_parameters()]
    grounded = train_grounder(coop, vlm, jsonl, steps=2, batch_size=2, progress=False, name="coop")
    assert grounded.steps_done == 2 and all(np.isfinite(loss) for loss in grounded.losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, coop.trainable_parameters(), strict=True))


@pytest.mark.slow
def test_the_diff_prompt_recipe_trains_on_refcoco_data(vlm, coco):
    root, images = coco
    source = read_refcoco(root / "instances.json", root / "refs(unc).json", images, split=None, size=vlm.image_size)
    run = train_diff_prompt(
        vlm,
        source,
        vae_config=VAE_CFG,
        dit_config=DIT_CFG,
        prompt_config=PROMPT_CFG,
        vae_steps=1,
        dit_steps=1,
        prompt_steps=2,
        batch_size=4,
        progress=False,
    )
    assert isinstance(run.model, DiffPrompt) and len(run.losses["prompt"]) == 2
    assert all(np.isfinite(loss) for loss in run.all_losses)


def test_world_grounding_source_round_trips_a_fraction_of_its_images_and_keeps_the_masks():
    from promptweave.prompt_modules.world.sources import WorldGroundingSource

    plain = WorldGroundingSource("train").batch(3, 7, 16)
    seen = []

    def darker(images):
        seen.append(len(images))
        return images * 0.5

    mixed = WorldGroundingSource("train", roundtrip=darker, roundtrip_fraction=0.5).batch(3, 7, 16)
    again = WorldGroundingSource("train", roundtrip=darker, roundtrip_fraction=0.5).batch(3, 7, 16)
    changed = (mixed.images != plain.images).flatten(1).any(1)
    assert 0 < int(changed.sum()) < 16 and seen[0] == int(changed.sum())
    assert torch.equal(mixed.images[changed], plain.images[changed] * 0.5)
    assert torch.equal(mixed.masks, plain.masks) and torch.equal(mixed.boxes, plain.boxes)
    assert mixed.texts == plain.texts
    assert torch.equal(mixed.images, again.images)  # the rows are a function of (seed, step)


def test_same_family_grounding_keeps_only_referents_with_a_same_family_distractor():
    from promptweave.prompt_modules.world.scene import sample_scene
    from promptweave.prompt_modules.world.sources import WorldGroundingSource, evaluation_set, same_family_referring

    source = WorldGroundingSource("train", same_family=True)
    batch = source.batch(0, 3, 32)
    assert len(set(batch.texts)) >= 28  # substitutes jump far: neighbouring seeds do not share one scene
    data = evaluation_set("val", 40, same_family=True)
    plain = evaluation_set("val", 40)
    assert len(set(data.texts)) >= 36 and data.texts != plain.texts
    # every chosen referent has a same-family distractor, and the evaluation scenes are the first such ones
    seeds, seed = [], WorldGroundingSource("val").range.start
    while len(seeds) < 40:
        if same_family_referring(sample_scene(seed)):
            seeds.append(seed)
        seed += 1
    for k, seed in enumerate(seeds):
        scene = sample_scene(seed)
        options = same_family_referring(scene)
        assert data.texts[k] in [text for _, text in options]
        index = next(i for i, text in options if text == data.texts[k])
        family = scene.objects[index].family
        assert sum(o.family == family for o in scene.objects) >= 2
        assert torch.equal(data.masks[k], torch.from_numpy(scene.masks[index]).float())
