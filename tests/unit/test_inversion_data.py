"""Prompt-inversion manifests: JSONL / JSON / CSV / parquet (image path, prompt) rows as DiffusionDB's metadata and
Hugging Face ``imagefolder``'s ``metadata.jsonl`` lay them out, images at the encoder's resolution, errors naming the
line or row."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from promptweave.prompt_modules.inversion import (
    load_pair_folder,
    load_pair_manifest,
    load_pairs,
    read_pair_manifest,
)

# DiffusionDB: images named by a UUID in part folders; metadata columns as its metadata.parquet
ROWS = [
    ("f3501e05-aef7-4225-a9e9-f516527408ac.png", "a red fox in the snow, digital art", 1, (220, 60, 20)),
    ("0b5ec3c7-2bc1-4b8e-9d0e-8d30f2a1d5a4.png", "portrait of a robot, oil painting", 1, (40, 40, 210)),
    ("a1c2e3f4-0000-4a4a-8b8b-123456789abc.png", "green forest at dawn", 2, (30, 190, 40)),
]
EXTRA = {"seed": 42, "step": 50, "cfg": 7.0, "sampler": "k_lms", "width": 512, "height": 768}


def diffusiondb(root: Path) -> Path:
    """``root/images/part-00000N/<uuid>.png`` (non-square, one colour each) as DiffusionDB's unzipped parts."""
    for name, _, part, colour in ROWS:
        folder = root / "images" / f"part-{part:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 72), colour).save(folder / name)
    return root


def metadata_rows(relative: bool = True) -> list[dict]:
    return [
        {"image_name": f"part-{part:06d}/{name}" if relative else name, "prompt": prompt, "part_id": part, **EXTRA}
        for name, prompt, part, _ in ROWS
    ]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def check_colours(images: torch.Tensor, order: list[int]) -> None:
    for image, k in zip(images, order, strict=True):
        assert torch.allclose(image.mean(dim=(1, 2)), torch.tensor(ROWS[k][3]) / 255, atol=0.02)


@pytest.mark.parametrize("size", [224, 64])
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_diffusiondb_like_manifest_relative_to_its_folder(tmp_path, fmt, size):
    root = diffusiondb(tmp_path)
    path = root / "images" / f"metadata.{fmt}"
    (write_jsonl if fmt == "jsonl" else write_csv)(path, metadata_rows())
    images, prompts = load_pair_manifest(path, size)
    assert images.shape == (3, 3, size, size) and images.dtype == torch.float32
    assert prompts == [r[1] for r in ROWS]
    check_colours(images, [0, 1, 2])
    assert load_pairs(path, size)[1] == prompts  # a manifest file through the folder-or-manifest entry point


def test_image_root_part_id_limit_and_skip_missing(tmp_path):
    root = diffusiondb(tmp_path / "data")
    # the metadata elsewhere, image names without their part folder: found through part_id under image_root
    path = write_jsonl(tmp_path / "metadata.jsonl", metadata_rows(relative=False))
    images, prompts = load_pair_manifest(path, 32, image_root=root / "images", limit=2)
    assert images.shape == (2, 3, 32, 32) and prompts == [ROWS[0][1], ROWS[1][1]]
    pairs = read_pair_manifest(path, image_root=root / "images")
    assert [p.path for p in pairs] == [root / "images" / f"part-{r[2]:06d}" / r[0] for r in ROWS]
    assert [p.where for p in pairs] == ["line 1", "line 2", "line 3"]
    # a manifest of the whole data set next to one downloaded part
    rows = metadata_rows() + [{"image_name": "part-000009/missing.png", "prompt": "not downloaded", "part_id": 9}]
    path = write_jsonl(root / "images" / "all.jsonl", rows)
    with pytest.raises(ValueError, match=r"all\.jsonl, line 4: image .*missing\.png does not exist"):
        read_pair_manifest(path)
    assert len(read_pair_manifest(path, skip_missing=True)) == 3


def test_column_names_imagefolder_and_explicit(tmp_path):
    diffusiondb(tmp_path)
    folder = tmp_path / "images" / "part-000001"
    # Hugging Face imagefolder: metadata.jsonl beside the images, columns file_name + text
    hf = write_jsonl(folder / "metadata.jsonl", [{"file_name": ROWS[0][0], "text": ROWS[0][1]},
                                                 {"file_name": ROWS[1][0], "text": ROWS[1][1]}])
    assert load_pair_manifest(hf, 16)[1] == [ROWS[0][1], ROWS[1][1]]
    # image / caption and path / prompt, absolute paths; blank lines and empty prompts are skipped
    absolute = str(folder / ROWS[0][0])
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"path": absolute, "caption": " a fox "}) + "\n\n"
                     + json.dumps({"path": absolute, "caption": ""}) + "\n", encoding="utf-8")
    assert load_pair_manifest(mixed, 16)[1] == ["a fox"]
    # explicit names win over the accepted ones
    odd = write_csv(tmp_path / "odd.csv", [{"img": absolute, "prompt": "unused", "desc": "the fox"}])
    assert read_pair_manifest(odd, image_column="img", prompt_column="desc")[0].prompt == "the fox"
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text(f"image\tprompt\n{absolute}\ta fox, in snow\n", encoding="utf-8")
    assert read_pair_manifest(tsv)[0].prompt == "a fox, in snow"


def test_diffusiondb_part_json(tmp_path):
    diffusiondb(tmp_path)
    folder = tmp_path / "images" / "part-000001"
    part = {name: {"p": prompt, "se": 1, "c": 7, "st": 50, "sa": "k_lms"} for name, prompt, p, _ in ROWS if p == 1}
    (folder / "part-000001.json").write_text(json.dumps(part), encoding="utf-8")
    images, prompts = load_pair_manifest(folder / "part-000001.json", 48)
    assert images.shape == (2, 3, 48, 48) and prompts == [ROWS[0][1], ROWS[1][1]]
    check_colours(images, [0, 1])


def test_parquet_diffusiondb_metadata(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (optional; needed only for parquet)")
    import pyarrow.parquet as pq

    root = diffusiondb(tmp_path)
    rows = metadata_rows(relative=False)
    table = pa.table({k: [r[k] for r in rows] for k in rows[0]})
    pq.write_table(table, root / "metadata.parquet")
    images, prompts = load_pair_manifest(root / "metadata.parquet", 224, image_root=root / "images")
    assert images.shape == (3, 3, 224, 224) and prompts == [r[1] for r in ROWS]
    check_colours(images, [0, 1, 2])
    (root / "broken.parquet").write_bytes(b"not a parquet file")
    with pytest.raises(ValueError, match=r"cannot read parquet manifest .*broken\.parquet"):
        read_pair_manifest(root / "broken.parquet")


def test_parquet_without_pyarrow_names_the_package(tmp_path, monkeypatch):
    (tmp_path / "metadata.parquet").write_bytes(b"PAR1")
    for name in ("pyarrow", "pyarrow.parquet", "pandas"):
        monkeypatch.setitem(sys.modules, name, None)  # importing it now raises ImportError
    with pytest.raises(ImportError, match=r"metadata\.parquet needs pyarrow: pip install pyarrow"):
        read_pair_manifest(tmp_path / "metadata.parquet")


@pytest.mark.parametrize(
    ("name", "text", "error"),
    [
        ("a.jsonl", '{"image": "x.png", "prompt": "ok"}\n{"image": "x.png", "prompt": \n',
         r"a\.jsonl, line 2: not valid JSON"),
        ("b.jsonl", '["x.png", "a prompt"]\n', r"b\.jsonl, line 1: a JSONL line must be an object"),
        ("c.jsonl", '{"image": "x.png", "prompt": "ok"}\n\n{"prompt": "no image"}\n',
         r"c\.jsonl, line 3: no 'image' field"),
        ("d.jsonl", '{"picture": "x.png", "prompt": "ok"}\n',
         r"d\.jsonl, line 1: no image column: expected one of \['image', 'image_name', 'file_name', 'path'\]"),
        ("e.jsonl", '{"image": "x.png", "prompt": 3}\n', r"e\.jsonl, line 1: the prompt 'prompt' must be text"),
        ("f.jsonl", '{"image": null, "prompt": "ok"}\n', r"f\.jsonl, line 1: the image 'image' must be a file path"),
        ("g.jsonl", '{"image": "nowhere.png", "prompt": "ok"}\n',
         r"g\.jsonl, line 1: image .*nowhere\.png does not exist; image paths are relative to the manifest folder"),
        ("h.jsonl", '{"image": "x.txt", "prompt": "ok"}\n', r"h\.jsonl, line 1: .*x\.txt is not an image file"),
        ("i.jsonl", '{"image": "x.png", "prompt": ""}\n', r"i\.jsonl has no usable \(image, prompt\) rows"),
        ("j.jsonl", '{"image": "corrupt.png", "prompt": "ok"}\n', r"j\.jsonl, line 1: cannot read image"),
        ("k.jsonl", '{"image_name": "y.png", "prompt": "ok", "part_id": "one"}\n',
         r"k\.jsonl, line 1: part_id 'one' is not an integer"),
        ("a.csv", "image,prompt\nx.png,ok\nx.png,a red, fox\n",
         r"a\.csv, line 3: 3 fields, the header has 2 \(an unquoted comma"),
        ("b.csv", "image,prompt\nx.png\n", r"b\.csv, line 2: 1 fields, the header has 2"),
        ("c.csv", "", r"c\.csv is empty: it needs a header row"),
        ("d.csv", "file,words\nx.png,ok\n", r"d\.csv: no image column"),
        ("e.csv", "image,image,prompt\n", r"e\.csv: the header .* names a column twice"),
        ("f.csv", 'image,prompt\nx.png,"unterminated\n', r"f\.csv, line \d+: malformed CSV"),
        ("a.json", '{"x.png": "just a string"}', r"a\.json, entry 'x\.png': a DiffusionDB part file maps"),
        ("b.json", "[1, 2]", r"b\.json, entry 1: must be an object"),
        ("c.json", "{nope", r"c\.json is not valid JSON"),
        ("pairs.xlsx", "", r"pairs\.xlsx: unknown format \.xlsx"),
    ],
)
def test_malformed_manifests(tmp_path, name, text, error):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    (tmp_path / "x.txt").write_text("not an image", encoding="utf-8")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG broken")
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=error):
        load_pair_manifest(tmp_path / name, 16)


def test_bad_arguments(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    path = write_jsonl(tmp_path / "m.jsonl", [{"image": "x.png", "prompt": "ok"}])
    with pytest.raises(ValueError, match=r"m\.jsonl, line 1: no prompt column 'words'; the columns are \['image', 'pr"):
        read_pair_manifest(path, prompt_column="words")
    with pytest.raises(ValueError, match="limit must be a positive int"):
        read_pair_manifest(path, limit=0)
    with pytest.raises(ValueError, match="size must be a positive int"):
        load_pair_manifest(path, 0)
    with pytest.raises(ValueError, match="image_root .*nowhere does not exist"):
        read_pair_manifest(path, image_root=tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"manifest .*absent\.jsonl does not exist"):
        read_pair_manifest(tmp_path / "absent.jsonl")
    with pytest.raises(ValueError, match="apply to manifests only"):
        load_pairs(tmp_path, 16, limit=3)


@pytest.mark.parametrize("size", [224, 64])
def test_pair_folder_keeps_the_requested_size(tmp_path, size):
    Image.new("RGB", (90, 40), (200, 10, 10)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a red square", encoding="utf-8")
    Image.new("RGB", (40, 90), (10, 10, 200)).save(tmp_path / "b.jpg")
    (tmp_path / "b.txt").write_text("a blue square", encoding="utf-8")
    images, prompts = load_pair_folder(tmp_path, size)
    assert images.shape == (2, 3, size, size) and prompts == ["a red square", "a blue square"]
    assert load_pairs(tmp_path, size)[0].shape == (2, 3, size, size)
