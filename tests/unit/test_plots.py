"""Loss plots: axes with round ticks, and stage boundaries marked where a run trains several stages."""

from __future__ import annotations

import numpy as np

from promptweave.prompt_modules.core.plots import STAGE, loss_curve_image, nice_ticks


def _pixels(image) -> np.ndarray:
    return (image.numpy() * 255).round().astype(np.uint8)


def _stage_columns(image) -> set[int]:
    hits = np.all(np.abs(_pixels(image).astype(int) - np.array(STAGE)) <= 8, axis=-1)
    return set(np.nonzero(hits.sum(0) >= 20)[0].tolist())  # a dashed vertical line, not a label's pixels


def test_ticks_are_round_and_cover_the_range():
    for lo, hi in ((0.35, 6.1), (1, 120), (0.0012, 0.0019), (-3.0, 250.0)):
        ticks = nice_ticks(lo, hi)
        assert 2 <= len(ticks) <= 6 and all(lo - 1e-12 <= t <= hi + 1e-12 for t in ticks), (lo, hi, ticks)
        steps = np.diff(ticks)
        assert np.allclose(steps, steps[0]), ticks
        mantissa = steps[0] / 10 ** np.floor(np.log10(steps[0]))
        assert any(abs(mantissa - m) < 1e-6 for m in (1, 2, 5)), ticks
    assert nice_ticks(1.0, 1.0) == [1.0]


def test_stage_boundaries_are_marked_between_the_stages():
    """Diff-Prompt's stages have different losses (about 0.9, then 5.7): the jump sits on a marked boundary."""
    losses = [0.9] * 10 + [5.7 - 0.1 * i for i in range(10)] + [0.6] * 10
    staged = loss_curve_image(losses, stages=[("1 Mask-VAE", 10), ("2 DiT", 10), ("3 prompts", 10)])
    plain = loss_curve_image(losses)
    assert staged.shape == plain.shape == (256, 512, 3) and 0 <= float(staged.min()) <= float(staged.max()) <= 1
    columns = sorted(_stage_columns(staged))
    assert columns and not _stage_columns(plain)
    groups = [c for i, c in enumerate(columns) if i == 0 or c != columns[i - 1] + 1 and c != columns[i - 1] + 2]
    assert len(groups) == 2, columns  # two boundaries for three stages
    left, right = 56, 512 - 12  # the plot area: step s of 30 at left + (s - 1) / 29 * width
    for boundary_step, x in zip((10.5, 20.5), groups, strict=True):
        assert abs(x - (left + (boundary_step - 1) / 29 * (right - left))) <= 3


def test_degenerate_curves_still_draw():
    for losses in ([], [1.0], [2.0, 2.0], [float("nan"), 1.0, float("inf")]):
        image = loss_curve_image(losses, stages=[("a", 1), ("b", 5)])
        assert image.shape == (256, 512, 3)
