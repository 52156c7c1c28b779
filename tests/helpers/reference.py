"""Independent float64 SSIM reference, written from the definition (docs/semantics.md), in numpy.

Per spatial axis, a 1-D correlation with the window, after mirror padding by (size-1)//2
("same", numpy's "reflect": the edge sample is not repeated) or over whole windows only
("valid"). Nothing here is shared with ssim_patch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np


def gaussian_window(sigma: float, size: Optional[int] = None) -> np.ndarray:
    """``size`` taps (SSIM's default: ``2*int(3.5*sigma+0.5)+1``) of exp(-(d/sigma)^2/2), normalised."""
    size = size if size is not None else 2 * int(3.5 * sigma + 0.5) + 1
    d = np.arange(size, dtype=np.float64) - (size - 1) / 2
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
    out = np.zeros((*a.shape[:axis], m, *a.shape[axis + 1 :]))
    for j in range(k):
        out += w[j] * np.take(a, np.arange(j, j + m), axis=axis)
    return out


def _moments(x: np.ndarray, y: np.ndarray, windows: list, padding: str) -> tuple:
    """Window means, variances (clamped at 0) and covariance of x and y."""

    def blur(a: np.ndarray) -> np.ndarray:
        for i, w in enumerate(windows):
            a = correlate_axis(a, 2 + i, w, padding)
        return a

    mx, my = blur(x), blur(y)
    vx = np.maximum(blur(x * x) - mx * mx, 0.0)
    vy = np.maximum(blur(y * y) - my * my, 0.0)
    return mx, my, vx, vy, blur(x * y) - mx * my


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

    mx, my, vx, vy, cov = _moments(x, y, windows, padding)
    cs_map = (2 * cov + c2) / (vx + vy + c2)
    ssim_map = (2 * mx * my + c1) / (mx * mx + my * my + c1) * cs_map
    n = x.shape[0]
    return Ref(ssim_map.reshape(n, -1).mean(1), cs_map.reshape(n, -1).mean(1), ssim_map)


def uqi_reference(
    preds,
    target,
    kernel_size: Sequence[int] = (11, 11),
    sigma: Sequence[float] = (1.5, 1.5),
    eps: float = float(np.finfo(np.float32).eps),
    padding: str = "same",
) -> np.ndarray:
    """The UQI map (Wang and Bovik 2002, as torchmetrics defines it): a Gaussian window of
    ``kernel_size`` taps per axis, variances clamped at 0, ``eps`` in the denominator."""
    x = np.asarray(preds, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    windows = [gaussian_window(s, k) for k, s in zip(kernel_size, sigma)]
    mx, my, vx, vy, cov = _moments(x, y, windows, padding)
    return (2 * mx * my) * (2 * cov) / ((mx * mx + my * my) * (vx + vy) + eps)


def reduce(values: np.ndarray, reduction) -> np.ndarray:
    if reduction == "elementwise_mean":
        return np.asarray(values.mean())
    if reduction == "sum":
        return np.asarray(values.sum())
    return values


def zeroed_border(images):
    """The README's zeroed-border target: the images with a one-pixel frame set to 0."""
    out = images.clone()
    out[..., 0, :] = 0
    out[..., -1, :] = 0
    out[..., :, 0] = 0
    out[..., :, -1] = 0
    return out


def min_same_size(sigma: float = 1.5) -> int:
    return int(3.5 * sigma + 0.5) + 1


__all__ = [
    "Ref",
    "correlate_axis",
    "gaussian_window",
    "ms_ssim_reference",
    "reduce",
    "ssim_reference",
    "uqi_reference",
    "zeroed_border",
]


def _avg_pool2(a: np.ndarray) -> np.ndarray:
    """2x2 (or 2x2x2) average pooling with floor, as torch's avg_pool2d/3d."""
    nd = a.ndim - 2
    for axis in range(2, 2 + nd):
        m = a.shape[axis] // 2
        a = 0.5 * (
            np.take(a, np.arange(0, 2 * m, 2), axis=axis) + np.take(a, np.arange(1, 2 * m, 2), axis=axis)
        )
    return a


def ms_ssim_reference(preds, target, betas=(0.0448, 0.2856, 0.3001, 0.2363, 0.1333), **kwargs) -> np.ndarray:
    """Per-image MS-SSIM: prod_i relu(cs_i)^beta_i over the first scales, times relu(ssim)^beta at the last."""
    x = np.asarray(preds, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    out = np.ones(x.shape[0])
    for i, beta in enumerate(betas):
        ref = ssim_reference(x, y, **kwargs)
        term = ref.per_image if i == len(betas) - 1 else ref.cs
        out = out * np.maximum(term, 0.0) ** beta
        x, y = _avg_pool2(x), _avg_pool2(y)
    return out
