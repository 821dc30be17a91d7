"""Small plots drawn with PIL (no plotting library needed): loss curves for training nodes and logs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def loss_curve_image(losses: Sequence[float], width: int = 512, height: int = 256) -> torch.Tensor:
    """A plot of the loss per step (and its running mean) as a float image ``[H, W, 3]`` in 0..1."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    pad = 24
    draw.rectangle([pad, 8, width - 8, height - pad], outline=(160, 160, 160))
    vals = np.asarray(list(losses), dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if vals.size:
        lo, hi = float(vals.min()), float(vals.max())
        hi = hi if hi > lo else lo + 1e-6
        w = max(1, min(50, vals.size // 20))
        smooth = np.convolve(vals, np.ones(w) / w, mode="valid") if vals.size >= w else vals

        def pts(v: np.ndarray) -> list[tuple[float, float]]:
            xs = np.linspace(pad, width - 8, num=max(2, v.size)) if v.size > 1 else np.array([pad])
            ys = (height - pad) - (v - lo) / (hi - lo) * (height - pad - 8)
            return list(zip(xs.tolist(), ys.tolist(), strict=False))

        if vals.size > 1:
            draw.line(pts(vals), fill=(170, 190, 230), width=1)
            draw.line(pts(smooth), fill=(20, 60, 160), width=2)
        draw.text((pad + 4, 10), f"loss {vals[-1]:.4f} (min {lo:.4f}, {vals.size} steps)", fill=(0, 0, 0))
    else:
        draw.text((pad + 4, 10), "no steps", fill=(0, 0, 0))
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
