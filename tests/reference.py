"""Independent float64 SSIM reference, written from the definition (SPEC.md), in numpy.

Per spatial axis, a 1-D correlation with the window, after mirror padding by (size-1)//2
("same", numpy's "reflect": the edge sample is not repeated) or over whole windows only
("valid"). Nothing here is shared with ssim_patch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np


def gaussian_window(sigma: float) -> np.ndarray:
    half = int(3.5 * sigma + 0.5)
    d = np.arange(-half, half + 1, dtype=np.float64)
    w = np.exp(-((d / sigma) ** 2) / 2)
    return w / w.sum()


def uniform_window(size: int) -> np.ndarray:
    return np.full(size, 1.0 / size)


def correlate_axis(a: np.ndarray, axis: int, w: np.ndarray, padding: str) -> np.ndarray:
    k = len(w)
    if padding == "same":
        pad = (k - 1) // 2
        widths = [(0, 0)] * a.ndim
        widths[axis] = (pad, pad)
        a = np.pad(a, widths, mode="reflect")
    m = a.shape[axis] - k + 1
    out = np.zeros(a.shape[:axis] + (m,) + a.shape[axis + 1 :])
    for j in range(k):
        out += w[j] * np.take(a, np.arange(j, j + m), axis=axis)
    return out


@dataclass
class Ref:
    per_image: np.ndarray  # (N,)
    cs: np.ndarray  # (N,)
    ssim_map: np.ndarray  # (N, C, *spatial)


def _axes(v: Union[float, Sequence[float]], nd: int) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v] * nd


def ssim_reference(
    preds,
    target,
    gaussian_kernel: bool = True,
    sigma: Union[float, Sequence[float]] = 1.5,
    kernel_size: Union[int, Sequence[int]] = 11,
    data_range: Optional[Union[float, tuple]] = None,
    k1: float = 0.01,
    k2: float = 0.03,
    padding: str = "same",
) -> Ref:
    x = np.asarray(preds, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    nd = x.ndim - 2
    if data_range is None:
        big = max(x.max() - x.min(), y.max() - y.min())
        big = big if big > 0 else 1.0
    elif isinstance(data_range, tuple):
        lo, hi = data_range
        x, y = np.clip(x, lo, hi), np.clip(y, lo, hi)
        big = hi - lo
    else:
        big = float(data_range)
    c1, c2 = (k1 * big) ** 2, (k2 * big) ** 2
    windows = (
        [gaussian_window(s) for s in _axes(sigma, nd)]
        if gaussian_kernel
        else [uniform_window(k) for k in _axes(kernel_size, nd)]
    )

    def blur(a: np.ndarray) -> np.ndarray:
        for i, w in enumerate(windows):
            a = correlate_axis(a, 2 + i, w, padding)
        return a

    mx, my = blur(x), blur(y)
    vx = np.maximum(blur(x * x) - mx * mx, 0.0)
    vy = np.maximum(blur(y * y) - my * my, 0.0)
    cov = blur(x * y) - mx * my
    cs_map = (2 * cov + c2) / (vx + vy + c2)
    ssim_map = (2 * mx * my + c1) / (mx * mx + my * my + c1) * cs_map
    n = x.shape[0]
    return Ref(ssim_map.reshape(n, -1).mean(1), cs_map.reshape(n, -1).mean(1), ssim_map)


def reduce(values: np.ndarray, reduction) -> np.ndarray:
    if reduction == "elementwise_mean":
        return np.asarray(values.mean())
    if reduction == "sum":
        return np.asarray(values.sum())
    return values


def zeroed_border(images):
    """The SPEC's example target: the images with a one-pixel frame set to 0."""
    out = images.clone()
    out[..., 0, :] = 0
    out[..., -1, :] = 0
    out[..., :, 0] = 0
    out[..., :, -1] = 0
    return out


def min_same_size(sigma: float = 1.5) -> int:
    return int(3.5 * sigma + 0.5) + 1


__all__ = ["Ref", "correlate_axis", "gaussian_window", "reduce", "ssim_reference", "zeroed_border"]
