"""A small grouped bar chart with error bars, drawn with PIL (no plotting library needed)."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont

PALETTE = [(46, 110, 190), (230, 140, 40), (90, 170, 90), (200, 70, 70), (140, 100, 190), (120, 120, 120),
           (60, 170, 170), (190, 160, 40)]


COST_MARKERS = ("seconds", "memory", "_mb", "per_s", "ms_per", "params", "time_rel")
#: Sizes a run was configured with (e.g. soak's 200 executions): reported in the table, not results to chart.
SETUP_METRICS = frozenset({"runs"})


def charted_metrics(metrics: set[str]) -> list[str]:
    """The metrics a chart shows: costs (time, memory, throughput, parameter counts) and set-up sizes live on
    scales of their own that would flatten every quality bar, so they stay in the table; a task of costs only is
    charted whole."""
    results = {m for m in metrics if m not in SETUP_METRICS}
    quality = sorted(m for m in results if not any(marker in m for marker in COST_MARKERS))
    return quality or sorted(results or metrics)


def bar_chart(title: str, summary: dict[str, dict[str, tuple[float, float]]], width: int = 900,
              height: int = 420) -> bytes:
    """PNG bytes: one group of bars per charted metric, one bar per row (method first), error bar = std."""
    metrics = charted_metrics({m for row in summary.values() for m in row})
    rows = list(summary)
    top = max([v[0] + v[1] for row in summary.values() for m, v in row.items() if m in metrics] + [1e-9])
    top = max(1.0, top) if top <= 1.0 else top * 1.1
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, right, upper, lower = 50, width - 170, 40, height - 50
    draw.text((left, 10), title, fill="black", font=font)
    draw.line([(left, lower), (right, lower)], fill="black")
    draw.line([(left, upper), (left, lower)], fill="black")
    for tick in range(6):
        value = top * tick / 5
        y = lower - (lower - upper) * tick / 5
        draw.line([(left - 4, y), (left, y)], fill="black")
        draw.text((4, y - 6), f"{value:.2f}", fill="black", font=font)
    group = (right - left) / max(1, len(metrics))
    bar = group * 0.8 / max(1, len(rows))
    for i, metric in enumerate(metrics):
        x0 = left + i * group + group * 0.1
        for j, row in enumerate(rows):
            if metric not in summary[row]:
                continue
            mean, std = summary[row][metric]
            xa, xb = x0 + j * bar, x0 + (j + 1) * bar - 2
            ya = lower - (lower - upper) * mean / top
            draw.rectangle([xa, ya, xb, lower], fill=PALETTE[j % len(PALETTE)])
            if std > 0:
                xm = (xa + xb) / 2
                y1, y2 = lower - (lower - upper) * (mean + std) / top, lower - (lower - upper) * (mean - std) / top
                draw.line([(xm, y1), (xm, y2)], fill="black")
        draw.text((x0, lower + 8), metric, fill="black", font=font)
    for j, row in enumerate(rows):
        y = upper + j * 18
        draw.rectangle([right + 15, y, right + 27, y + 12], fill=PALETTE[j % len(PALETTE)])
        draw.text((right + 33, y), "PromptWeave" if row == "method" else row, fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
