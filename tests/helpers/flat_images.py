"""Images with flat regions, where UQI is 0/eps (torchmetrics issue 2281), and the float64 UQI
that stays exact there: shared by tests/test_uqi.py, tests/matrix/test_uqi_release.py and the
precision report (scripts/gen_docs.py)."""

from __future__ import annotations

import numpy as np
import torch

from tests.helpers.reference import correlate_axis, gaussian_window


def image_pair(shape, seed=0, dtype=torch.float64):
    """A float64 noise image and a correlated copy (0.6 x + 0.4 noise), cast to ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    return x.to(dtype), (0.6 * x + 0.4 * torch.rand(shape, generator=g, dtype=torch.float64)).to(dtype)


def flat_half(level, dtype=torch.float32, seed=11, shape=(2, 2, 64, 56)):
    """Images whose top half is flat at ``level`` in both and whose bottom half is noise in
    ``[0, 1.4 level]``, ``preds`` a noisier copy of ``target`` (torchmetrics issue 2281's example for
    0.7123: the noise's mean is not the flat level); and where they are flat."""
    g = torch.Generator().manual_seed(seed)
    t = torch.full(shape, level, dtype=torch.float64)
    half = shape[2] // 2
    t[..., half:, :] = 1.4 * level * torch.rand(t[..., half:, :].shape, generator=g, dtype=torch.float64)
    p = t.clone()
    noise = 0.07 * level * torch.randn(p[..., half:, :].shape, generator=g, dtype=torch.float64)
    p[..., half:, :] = (t[..., half:, :] + noise).clamp(0, 1.4 * level)
    flat = torch.zeros(shape[2:], dtype=torch.bool)
    flat[:half] = True
    return p.to(dtype), t.to(dtype), flat


def flat_frame(level, dtype=torch.float32, seed=12, shape=(2, 3, 48, 52), width=12):
    """Images with a constant frame ``width`` pixels wide at ``level`` in both; and where they are flat."""
    p, t = image_pair(shape, seed=seed)
    inner = (..., slice(width, -width), slice(width, -width))
    framed = [torch.full(shape, level, dtype=torch.float64) for _ in range(2)]
    for out, image in zip(framed, (p, t)):
        out[inner] = image[inner]
    flat = torch.ones(shape[2:], dtype=torch.bool)
    flat[inner[1:]] = False
    return framed[0].to(dtype), framed[1].to(dtype), flat


def flat_windows(flat, kernel_size=(11, 11)):
    """Where the whole window (reflect padding stays within its reach) lies in the flat pixels."""
    reach = [k // 2 for k in kernel_size]
    textured = (~flat).double()[None, None]
    touched = torch.nn.functional.max_pool2d(textured, [2 * r + 1 for r in reach], 1, reach)
    return ~touched[0, 0].bool()


def uqi_about(x, y, level, eps, kernel_size=(11, 11), sigma=(1.5, 1.5)):
    """The float64 UQI map with the variances taken about ``level`` (they do not depend on it), so
    that float64 rounding of a large mean does not enter a flat window's variance: there it is 0."""
    windows = [gaussian_window(s, k) for k, s in zip(kernel_size, sigma)]
    a, b = (np.asarray(v, dtype=np.float64) - level for v in (x, y))

    def blur(v):
        for i, w in enumerate(windows):
            v = correlate_axis(v, 2 + i, w, "same")
        return v

    ma, mb = blur(a), blur(b)
    vx, vy = np.maximum(blur(a * a) - ma * ma, 0.0), np.maximum(blur(b * b) - mb * mb, 0.0)
    cov = blur(a * b) - ma * mb
    mx, my = ma + level, mb + level
    return (2 * mx * my) * (2 * cov) / ((mx * mx + my * my) * (vx + vy) + eps)


FLAT_CASES = {
    "half-0.7123": (flat_half, 0.7123, torch.float32),
    "half-100": (flat_half, 100.3, torch.float32),
    "half-1e-3": (flat_half, 1.37e-3, torch.float32),
    "half-0.7123-float16": (flat_half, 0.7123, torch.float16),
    "frame-0.7123": (flat_frame, 0.7123, torch.float32),
    "frame-0.25": (flat_frame, 0.25, torch.float32),
    "frame-0": (flat_frame, 0.0, torch.float32),
}
