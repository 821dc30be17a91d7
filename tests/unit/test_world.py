"""Tests of the procedural world (prompt_modules/world): determinism, exact masks, language, splits, CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from promptweave.prompt_modules.world import (
    BACKGROUNDS,
    CATEGORY_NAMES,
    COLOURS,
    FAMILIES,
    FAMILY_MEMBERS,
    HELD_OUT_COMBINATIONS,
    NUM_HARD_NEGATIVES,
    SPLITS,
    STYLES,
    TEXTURES,
    WorldDataset,
    collate_world,
    contains_held_out,
    family_of,
    is_held_out,
    relation_holds,
    render_batch,
    resolve,
    sample_scene,
    split_of_seed,
    split_seed_range,
)
from promptweave.prompt_modules.world.render import boxes_from_masks, secondary_shade, shape_template

REPO = Path(__file__).resolve().parents[2]
SEEDS = range(0, 300)


def test_vocabulary_sizes() -> None:
    assert len(CATEGORY_NAMES) >= 24 and len(set(CATEGORY_NAMES)) == len(CATEGORY_NAMES)
    assert len(FAMILIES) >= 6
    assert all(len(FAMILY_MEMBERS[f]) >= 3 for f in FAMILIES)
    assert len(COLOURS) >= 16 and len(set(COLOURS.values())) == len(COLOURS)
    assert len(STYLES) >= 4 and STYLES[0] == "flat"
    assert {"solid", "striped", "dotted", "checkered"} <= set(TEXTURES)
    assert family_of("five-point star") == "star" and family_of("crescent") == "round"
    assert not set(BACKGROUNDS.values()) & set(COLOURS.values())
    for name in CATEGORY_NAMES:  # every shape renders something that fits inside its template
        m = shape_template(name, "large")
        assert m.sum() > 0.2 * m.size and not m[0].all()


def test_determinism_and_variety() -> None:
    for style in STYLES:
        a, b = sample_scene(17, style=style), sample_scene(17, style=style)
        assert a.image.tobytes() == b.image.tobytes()
        assert a.caption == b.caption and a.hard_negatives == b.hard_negatives and a.referring == b.referring
        assert np.array_equal(a.masks, b.masks) and np.array_equal(a.boxes, b.boxes)
    scenes = [sample_scene(s) for s in range(40)]
    assert len({s.image.tobytes() for s in scenes}) == 40
    assert len({s.caption for s in scenes}) == 40
    # content (caption, masks) is the same in every style; only the pixels change (and the background's name
    # where the style paints it another colour: test_captions_name_the_background_that_is_drawn)
    flat = sample_scene(5)
    assert f"{flat.background} background" in flat.caption  # seed 5's template names the background
    for style in STYLES[1:]:
        other = sample_scene(5, style=style)
        named = _caption_background(other.caption)
        assert other.caption.replace(f"{named} background", f"{flat.background} background") == flat.caption
        assert np.array_equal(other.masks, flat.masks) and other.image.tobytes() != flat.image.tobytes()


def _caption_background(caption: str) -> str:
    """The background colour name a caption uses (for a template that names one)."""
    found = [name for name in BACKGROUNDS if re.search(rf"\b{name} background\b", caption)]
    assert len(found) == 1, (caption, found)
    return found[0]


def test_captions_name_the_background_that_is_drawn() -> None:
    """A caption's background colour is (about as light as) what the image shows: neon paints every background
    near black, so its captions say "charcoal", never "pale green" or "light grey" (a bug once)."""
    seen = set()
    for seed in range(60):
        for style in STYLES:
            scene = sample_scene(seed, style=style)
            if scene.noise_source is not None or "background" not in scene.caption:
                continue
            named = _caption_background(scene.caption)
            empty = scene.label < 0
            drawn = np.median(scene.image[empty].reshape(-1, 3), axis=0)
            lightness = np.array([0.299, 0.587, 0.114])
            assert abs(float(drawn @ lightness) - float(np.array(BACKGROUNDS[named]) @ lightness)) <= 60, (
                seed, style, scene.caption, drawn)
            seen.add((style, scene.background, named))
            if style == "neon":
                assert named == "charcoal", scene.caption
            # hard negatives keep the caption's wording, background included
            assert all(_caption_background(n.text) == named for n in scene.hard_negative_edits), seed
    assert {("neon", bg, "charcoal") for bg in ("pale green", "light grey")} <= seen
    assert ("flat", "pale green", "pale green") in seen


def test_masks_match_rendered_pixels() -> None:
    checked = 0
    for seed in SEEDS:
        s = sample_scene(seed)
        assert s.masks.shape == (len(s.objects), 64, 64) and s.masks.dtype == bool
        assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
        union = s.masks.any(0)
        assert (s.masks.sum(0) <= 1).all()  # visible pixels belong to one object
        assert (s.image[~union] == s.background_rgb).all()
        for obj, mask, box in zip(s.objects, s.masks, s.boxes, strict=True):
            assert mask.sum() >= 0.6 * shape_template(obj.category, obj.size).sum()  # occlusion bounded
            ys, xs = np.nonzero(mask)
            assert box.tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]
            if obj.texture == "solid":
                assert (s.image[mask] == obj.rgb).all()
                checked += 1
            else:  # textured: exactly the two shades of the object's colour, both present
                first = (s.image[mask] == obj.rgb).all(axis=-1)
                second = (s.image[mask] == secondary_shade(obj.rgb)).all(axis=-1)
                assert (first | second).all() and first.any()
    assert checked > 50


def test_occlusion_later_objects_cover_earlier() -> None:
    found = False
    for seed in SEEDS:
        s = sample_scene(seed)
        for k, obj in enumerate(s.objects):
            full = np.zeros((64, 64), bool)
            t = shape_template(obj.category, obj.size)
            full[obj.y0 : obj.y0 + obj.side, obj.x0 : obj.x0 + obj.side] = t
            later = s.masks[k + 1 :].any(0)
            assert np.array_equal(s.masks[k], full & ~later)
            found |= bool((full & later).any())
    assert found  # some scenes do have occlusion


def test_boxes_from_masks_empty() -> None:
    m = np.zeros((2, 8, 8), bool)
    m[1, 2:4, 5] = True
    assert boxes_from_masks(m).tolist() == [[-1, -1, -1, -1], [5, 2, 5, 3]]


def test_hard_negatives_swap_only_the_category() -> None:
    for seed in SEEDS:
        s = sample_scene(seed)
        assert len(s.hard_negatives) == NUM_HARD_NEGATIVES == len(set(s.hard_negatives)) >= 4
        cats = [o.category for o in s.objects]
        same_family = 0
        for h in s.hard_negative_edits:
            assert s.clean_caption[h.start : h.end] == h.original == cats[h.object_index]
            assert h.text == s.clean_caption[: h.start] + h.replacement + s.clean_caption[h.end :]
            assert h.replacement in CATEGORY_NAMES and h.replacement != h.original
            assert h.text != s.caption
            same_family += family_of(h.replacement) == family_of(h.original)
            # grammar never gives the negative away
            assert not re.search(r"\ba [aeiou]", h.text) and not re.search(r"\ban [^aeiou]", h.text)
        assert same_family >= 2


def _matches(obj, attrs: dict[str, str]) -> bool:
    return all((obj.position if k == "position" else getattr(obj, k)) == v for k, v in attrs.items())


def test_referring_expressions_are_unique() -> None:
    n_rel = 0
    for seed in SEEDS:
        s = sample_scene(seed)
        assert s.referring, "every scene has at least one referring expression"
        for spec in s.referring_specs:
            objs = s.objects
            target = objs[spec.object_index]
            assert spec.text.startswith("the ") and target.category in spec.text
            if "colour" in spec.attributes:  # colour names are never paraphrased
                assert spec.attributes["colour"] in spec.text
            cands = [i for i, o in enumerate(objs) if _matches(o, spec.attributes)]
            if spec.relation is None:
                assert cands == [spec.object_index]
            else:
                n_rel += 1
                anchors = [i for i, o in enumerate(objs) if _matches(o, spec.anchor_attributes)]
                assert anchors == [spec.anchor_index]
                a = objs[spec.anchor_index]
                hits = [i for i in cands if i != spec.anchor_index and relation_holds(spec.relation, objs[i], a)]
                assert hits == [spec.object_index]
            assert resolve(s.objects, spec) == [spec.object_index]
    assert n_rel > 20


def test_relations_geometry() -> None:
    s = next(sample_scene(i) for i in SEEDS if len(sample_scene(i).objects) >= 2)
    a, b = s.objects[:2]
    assert not (relation_holds("left of", a, b) and relation_holds("right of", a, b))
    assert relation_holds("left of", a, b) == relation_holds("right of", b, a)
    assert relation_holds("above", a, b) == relation_holds("below", b, a)


def test_splits_disjoint_and_inferred() -> None:
    ranges = [split_seed_range(s) for s in SPLITS]
    for i, r in enumerate(ranges):
        for q in ranges[i + 1 :]:
            assert r.stop <= q.start or q.stop <= r.start
    assert split_of_seed(split_seed_range("val").start) == "val"
    with pytest.raises(ValueError):
        sample_scene(0, split="test")
    with pytest.raises(ValueError):
        split_seed_range("nope")


def test_compositional_split() -> None:
    assert 0.05 < len(HELD_OUT_COMBINATIONS) / (len(CATEGORY_NAMES) * len(COLOURS)) < 0.15
    assert all(is_held_out(c, k) for c, k in HELD_OUT_COMBINATIONS)
    for split in ("train", "val", "test"):
        start = split_seed_range(split).start
        for seed in range(start, start + 300):
            assert not contains_held_out(sample_scene(seed))
    start = split_seed_range("compositional").start
    seen = set()
    for seed in range(start, start + 300):
        s = sample_scene(seed)
        assert contains_held_out(s) and s.held_out
        seen |= {(o.category, o.colour) for o in s.objects if is_held_out(o.category, o.colour)}
    assert len(seen) > 20


def test_noise_fraction_flagged() -> None:
    ds = WorldDataset("train", n=1000, noise_fraction=0.2)
    scenes = [ds.scene(i) for i in range(1000)]
    noisy = [s for s in scenes if s.is_noisy]
    assert 0.16 < len(noisy) / 1000 < 0.24
    for s in noisy[:50]:
        assert s.caption != s.clean_caption and s.noise_source is not None
        assert s.caption == sample_scene(s.noise_source).caption
        assert s.clean_caption == sample_scene(s.seed).caption  # content unchanged by noise
    assert all(s.caption == s.clean_caption for s in scenes if not s.is_noisy)
    clean = WorldDataset("train", n=200)
    assert not any(clean.scene(i).is_noisy for i in range(200))


def test_size_128() -> None:
    small, big = sample_scene(3), sample_scene(3, size=128)
    assert big.image.shape == (128, 128, 3) and big.masks.shape[1:] == (128, 128)
    assert big.caption == small.caption and big.objects == small.objects
    for m64, m128, obj in zip(small.masks, big.masks, big.objects, strict=True):
        assert abs(int(m128.sum()) - 4 * int(m64.sum())) < 0.25 * 4 * m64.sum()
        if obj.texture == "solid":
            assert (big.image[m128] == obj.rgb).all()
    assert (big.image[~big.masks.any(0)] == big.background_rgb).all()
    with pytest.raises(ValueError):
        sample_scene(3, size=96)


def test_dataset_and_batch() -> None:
    ds = WorldDataset("val", n=8, style="mixed")
    item = ds[0]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["masks"].shape == (4, 64, 64) and item["category_ids"].shape == (4,)
    batch = collate_world([ds[i] for i in range(8)])
    assert batch["image"].shape == (8, 3, 64, 64) and len(batch["hard_negatives"]) == 8
    assert len({*batch["style"]}) >= 2
    fast = render_batch([ds.seed(i) for i in range(8)], style=[ds.style_of(ds.seed(i)) for i in range(8)])
    assert torch.equal(fast["image"], batch["image"]) and fast["caption"] == batch["caption"]
    assert torch.equal(fast["masks"], batch["masks"]) and torch.equal(fast["boxes"], batch["boxes"])
    n = batch["n_objects"]
    assert ((batch["category_ids"] >= 0).sum(1) == n).all()
    for i in range(8):
        if batch["ref_index"][i] >= 0:
            assert torch.equal(batch["ref_mask"][i], batch["masks"][i, batch["ref_index"][i]])
    with pytest.raises(ValueError):
        WorldDataset("val", n=10**9)


@pytest.mark.slow
def test_preview_cli(tmp_path: Path) -> None:
    out = tmp_path / "p.png"
    res = subprocess.run(
        [sys.executable, "-m", "promptweave.world", "preview", "--n", "4", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    img = Image.open(out)
    assert img.format == "PNG" and img.size[0] >= 256
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]  # no temp file left behind
