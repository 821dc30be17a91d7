"""Generated grounding samples for Diff-Prompt (``prompt_modules/world/sources.py``): WorldGen images of train scenes
with colour-segmented masks of an object whose colour is unique in its scene, pooled once and mixed into the
grounding source's batches. The shipped WorldGen samples with 2 DDIM steps here (speed, not quality)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from promptweave.prompt_modules.world.models import load_world_models
from promptweave.prompt_modules.world.scene import sample_scene
from promptweave.prompt_modules.world.sources import (
    MIN_MASK_PIXELS,
    GeneratedGroundingPool,
    WorldGroundingSource,
    box_of_mask,
    colour_mask,
    generate_grounding_pool,
    largest_piece,
    load_or_generate_pool,
    segment_generated,
    unique_colour_referents,
)

RED, BLUE, WHITE = (230, 30, 30), (30, 60, 225), (255, 255, 255)


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    return load_world_models()


@pytest.fixture(scope="module")
def pool(models) -> GeneratedGroundingPool:
    vlm, gen = models
    return generate_grounding_pool(gen, vlm, 12, seed=3, steps=2, batch_size=8)


def _two_squares() -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.tensor(WHITE, dtype=torch.uint8).view(3, 1, 1).repeat(1, 32, 32)
    image[:, 4:12, 5:14] = torch.tensor(RED, dtype=torch.uint8).view(3, 1, 1)
    image[:, 18:28, 16:30] = torch.tensor(BLUE, dtype=torch.uint8).view(3, 1, 1)
    truth = torch.zeros(32, 32, dtype=torch.bool)
    truth[4:12, 5:14] = True
    return image, truth


def test_colour_mask_is_the_square_of_the_colour():
    image, truth = _two_squares()
    assert torch.equal(colour_mask(image, RED, [BLUE, WHITE]), truth)
    assert torch.equal(colour_mask(image.float() / 255, RED, [BLUE, WHITE]), truth)  # float images in 0..1 too
    noisy = (image.float() + torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0)) * 12).clamp(0, 255)
    assert torch.equal(colour_mask(noisy.round().to(torch.uint8), RED, [BLUE, WHITE]), truth)
    # a two-pixel line of the colour (a blend at an edge) goes with the opening, stays without it; a thin tip of a
    # piece with a 3x3 core stays
    image[:, 29:31, 2:20] = torch.tensor(RED, dtype=torch.uint8).view(3, 1, 1)
    image[:, 12:16, 8] = torch.tensor(RED, dtype=torch.uint8).view(3, 1)
    truth[12:16, 8] = True
    assert torch.equal(colour_mask(image, RED, [BLUE, WHITE]), truth)
    assert colour_mask(image, RED, [BLUE, WHITE], opening=False)[29:31, 2:20].all()
    # too far from the target: nothing, even when nearer to it than to the other colours
    assert not colour_mask(image, (120, 0, 0), [BLUE, WHITE], max_distance=40).any()


def test_largest_piece_and_box():
    image, truth = _two_squares()
    both = colour_mask(image, RED, [WHITE]) | colour_mask(image, BLUE, [WHITE])
    blue = both & ~truth
    assert torch.equal(largest_piece(both), blue)  # 10 x 14 beats 8 x 9
    assert not largest_piece(torch.zeros(5, 5, dtype=torch.bool)).any()
    assert torch.allclose(box_of_mask(truth), torch.tensor([5 / 32, 4 / 32, 14 / 32, 12 / 32]))


def test_only_objects_of_a_unique_colour_are_referents():
    scene = next(s for s in map(sample_scene, range(200)) if len(s.objects) >= 2 and len(s.referring) >= 2)
    scene = dataclasses.replace(scene, background="white")
    same = dataclasses.replace(scene, objects=[dataclasses.replace(o, colour="red") for o in scene.objects])
    assert unique_colour_referents(same) == []  # the colour repeats: the scene is skipped
    near = [dataclasses.replace(o, colour="crimson" if k == 0 else "red") for k, o in enumerate(scene.objects)]
    assert unique_colour_referents(dataclasses.replace(scene, objects=near)) == []  # red / crimson: too near
    apart = ["red", "blue", "green", "purple"]
    far = [dataclasses.replace(o, colour=apart[k]) for k, o in enumerate(scene.objects)]
    assert unique_colour_referents(dataclasses.replace(scene, objects=far)) == scene.referring
    pink = [dataclasses.replace(o, colour="pink") if k == 0 else o for k, o in enumerate(far)]
    grey = dataclasses.replace(scene, objects=pink, background="light grey")  # pink / light grey: too near
    assert unique_colour_referents(grey) == [(i, t) for i, t in scene.referring if i != 0]


def test_segmenting_a_perfect_image_finds_the_object_and_blank_images_are_skipped():
    """On the rendered scene itself (a generator that draws it exactly) the mask is the object's true mask (its
    largest piece where another object cuts it in two); an image without the colour, or all of it, is skipped."""
    found = 0
    for scene in map(sample_scene, range(100)):
        for index, _ in unique_colour_referents(scene):
            if scene.objects[index].texture != "solid":
                continue
            image = torch.from_numpy(scene.image.copy()).permute(2, 0, 1)
            mask, why = segment_generated(scene, index, image)
            truth = torch.from_numpy(scene.masks[index])
            if why == "tiny":  # only pieces with a 3x3 core count (a small ring's walls are 2 pixels)
                assert not colour_mask(truth[None].float(), (1, 1, 1), [(0, 0, 0)]).any()
                continue
            assert why == "kept" and (mask & truth).sum() / (mask | truth).sum() > 0.8, (scene.seed, index)
            assert not (mask & ~truth).any()
            blank = torch.tensor(scene.background_rgb, dtype=torch.uint8).view(3, 1, 1).repeat(1, 64, 64)
            assert segment_generated(scene, index, blank) == (None, "tiny")
            full = torch.tensor(scene.objects[index].rgb, dtype=torch.uint8).view(3, 1, 1).repeat(1, 64, 64)
            assert segment_generated(scene, index, full) == (None, "border_colour")
            found += 1
    assert found >= 5


def test_pool_samples_are_aligned(pool):
    assert len(pool) == 12 and pool.images.dtype == torch.uint8 and pool.size == 64
    info = pool.info
    assert info["scenes_tried"] == 12 + sum(info["skipped"].values())
    for k in range(len(pool)):
        mask = pool.masks[k]
        assert int(mask.sum()) >= MIN_MASK_PIXELS
        ys, xs = mask.nonzero(as_tuple=True)
        x0, y0, x1, y1 = (pool.boxes[k] * 64).round().long().tolist()
        assert (x0, y0, x1, y1) == (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        scene = sample_scene(int(pool.scene_seeds[k]))
        index = next(i for i, t in unique_colour_referents(scene) if t == pool.texts[k])
        assert colour_mask(pool.images[k], scene.objects[index].rgb, [])[mask].all()  # near the object's colour


def test_pool_is_deterministic_and_saved(models, pool, tmp_path):
    vlm, gen = models
    again = generate_grounding_pool(gen, vlm, 12, seed=3, steps=2, batch_size=8)
    assert torch.equal(again.images, pool.images) and torch.equal(again.masks, pool.masks)
    assert again.texts == pool.texts
    other = generate_grounding_pool(gen, vlm, 4, seed=4, steps=2, batch_size=8)
    assert not torch.equal(other.scene_seeds, pool.scene_seeds[:4])
    path = pool.save(tmp_path / "pool.safetensors")
    loaded = GeneratedGroundingPool.load(path)
    assert torch.equal(loaded.images, pool.images) and torch.equal(loaded.masks, pool.masks)
    assert torch.equal(loaded.boxes, pool.boxes) and loaded.texts == pool.texts and loaded.info == pool.info

    def no_worldgen():
        raise AssertionError("a cached pool of the same settings is loaded, not generated")

    cached = load_or_generate_pool(path, no_worldgen, vlm, 12, seed=3, steps=2)
    assert cached.texts == pool.texts
    with pytest.raises(ValueError, match="fewer|gave only"):
        generate_grounding_pool(gen, vlm, 4, steps=2, batch_size=1, max_scenes=1)


def test_source_mixes_the_generated_share(pool):
    plain = WorldGroundingSource("train")
    mixed = WorldGroundingSource("train", generated=pool, generated_fraction=0.25)
    batch, base = mixed.batch(0, 7, 16), plain.batch(0, 7, 16)
    rows, picks = mixed.generated_rows(0, 7, 16)
    listed = rows.tolist()
    assert len(rows) == 4 and len(set(listed)) == 4
    assert torch.equal(batch.images[rows], pool.images[picks].float() / 255)
    assert torch.equal(batch.masks[rows], pool.masks[picks].float())
    assert torch.equal(batch.boxes[rows], pool.boxes[picks])
    kept = torch.tensor([r not in listed for r in range(16)])
    assert torch.equal(batch.images[kept], base.images[kept]) and torch.equal(batch.masks[kept], base.masks[kept])
    for r in range(16):
        assert batch.texts[r] == (pool.texts[int(picks[listed.index(r)])] if r in listed else base.texts[r])
    again = mixed.batch(0, 7, 16)  # the same (seed, step): the same batch
    assert torch.equal(again.images, batch.images) and again.texts == batch.texts
    rows8, picks8 = mixed.generated_rows(0, 8, 16)  # another step: other rows or samples
    assert not (torch.equal(rows8, rows) and torch.equal(picks8, picks))
    assert len(WorldGroundingSource("train", generated=pool, generated_fraction=1.0).generated_rows(0, 0, 8)[0]) == 8
    with pytest.raises(ValueError, match="generated_fraction"):
        WorldGroundingSource("train", generated=pool, generated_fraction=1.5)
    with pytest.raises(ValueError, match="pixels"):
        WorldGroundingSource("train", size=128, generated=pool)
