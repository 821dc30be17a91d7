"""Small plots drawn with PIL (no plotting library needed): loss curves for training nodes and logs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

#: Colours of the raw loss, its running mean, the axes and the stage boundaries.
RAW, SMOOTH, AXIS, GRID, STAGE = (170, 190, 230), (20, 60, 160), (60, 60, 60), (232, 232, 232), (200, 90, 30)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2 or 5 times a power of ten apart) covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count - 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, value = [], first
    while value <= hi + 1e-9 * step:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.0e}"
    return f"{value:.4g}"


def loss_curve_image(
    losses: Sequence[float],
    width: int = 512,
    height: int = 256,
    *,
    stages: Sequence[tuple[str, int]] = (),
    title: str = "loss",
) -> torch.Tensor:
    """A plot of the loss per step as a float image ``[H, W, 3]`` in 0..1: the raw loss, its running mean,
    axes with ticks (loss and step) and, for a run of several stages (``stages``: ``(name, steps)`` in order,
    e.g. Diff-Prompt's ``vae``, ``dit``, ``prompt``), a dashed line and the stage's name where each stage
    starts. Stages minimise different losses, so a jump at a boundary is a new loss, not a divergence; the
    running mean restarts at each stage."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    small, large = _font(max(10, height // 20)), _font(max(11, height // 17))
    values = np.asarray(list(losses), dtype=np.float64)
    left, right, top, bottom = 56, width - 12, 30, height - 34
    finite = values[np.isfinite(values)]
    if not finite.size:
        draw.text((left, 8), f"{title}: no steps", fill=(0, 0, 0), font=large)
        draw.rectangle([left, top, right, bottom], outline=AXIS)
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)

    lo, hi = float(finite.min()), float(finite.max())
    pad = (hi - lo) * 0.05 if hi > lo else max(abs(hi) * 0.05, 1e-6)
    lo, hi = lo - pad, hi + pad
    n = values.size

    def x_of(step: float) -> float:  # steps are 1-based on the axis; step s is drawn at index s - 1
        return left + (step - 1) / max(1, n - 1) * (right - left)

    def y_of(value: float) -> float:
        return bottom - (value - lo) / (hi - lo) * (bottom - top)

    for tick in nice_ticks(lo, hi):  # loss axis: grid lines and labels
        y = y_of(tick)
        draw.line([(left, y), (right, y)], fill=GRID)
        draw.line([(left - 4, y), (left, y)], fill=AXIS)
        text = _label(tick)
        draw.text((left - 7 - draw.textlength(text, font=small), y - small.size / 2 - 1), text, fill=AXIS, font=small)
    for tick in nice_ticks(1, max(2, n), count=6):  # step axis
        if tick != int(tick) or tick > n:
            continue
        x = x_of(tick)
        draw.line([(x, bottom), (x, bottom + 4)], fill=AXIS)
        text = str(int(tick))
        draw.text((x - draw.textlength(text, font=small) / 2, bottom + 6), text, fill=AXIS, font=small)
    draw.rectangle([left, top, right, bottom], outline=AXIS)
    step_label = "step"
    draw.text(((left + right) / 2 - draw.textlength(step_label, font=small) / 2, height - small.size - 3),
              step_label, fill=AXIS, font=small)

    spans = _stage_spans(stages, n)
    for index, (name, start, end) in enumerate(spans):
        segment = values[start:end]
        xs = [x_of(i + 1) for i in range(start, end)]
        points = [(x, y_of(v)) for x, v in zip(xs, segment, strict=True) if math.isfinite(v)]
        if len(points) > 1:
            draw.line(points, fill=RAW, width=1)
            w = max(1, min(50, len(points) // 20))
            smooth = np.convolve([p[1] for p in points], np.ones(w) / w, mode="valid")
            draw.line(list(zip([p[0] for p in points][w - 1:], smooth.tolist(), strict=True)), fill=SMOOTH, width=2)
        elif points:
            x, y = points[0]
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=SMOOTH)
        if len(spans) > 1:
            x0 = x_of(start + 1) if index else left
            if index:
                boundary = (x_of(start) + x_of(start + 1)) / 2
                for y in range(int(top), int(bottom), 8):
                    draw.line([(boundary, y), (boundary, min(bottom, y + 4))], fill=STAGE, width=2)
                x0 = boundary
            draw.text((x0 + 4, top + 3), name, fill=STAGE, font=small)

    parts = [f"{title}: {n} steps", f"last {_label(float(finite[-1]))}", f"min {_label(float(finite.min()))}"]
    if len(spans) > 1:
        parts[0] = f"{title}: {len(spans)} stages, each with its own loss"
    heading = ", ".join(parts)
    while len(parts) > 1 and draw.textlength(heading, font=large) > width - left:
        parts.pop()
        heading = ", ".join(parts)
    draw.text((left, 7), heading, fill=(0, 0, 0), font=large)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)


def _stage_spans(stages: Sequence[tuple[str, int]], n: int) -> list[tuple[str, int, int]]:
    """``(name, start, end)`` index ranges of the stages over ``n`` losses; one unnamed span without stages.
    Steps beyond the stages' total form a last span (``more``); stages without steps are left out."""
    spans, start = [], 0
    for name, steps in stages:
        end = min(n, start + max(0, int(steps)))
        if end > start:
            spans.append((str(name), start, end))
        start = end
    if start < n:
        spans.append(("more" if spans else "", start, n))
    return spans
