"""Separable window filtering along one axis, as matrix products.

A window applied along one axis is a banded matrix. Reflect padding ("same") is folded into
the matrix, so no padded copy of the image is made. Short axes use the dense band; long axes use
blocks: the padded axis is cut into blocks of ``b`` samples and each output block is the sum of
two small products (its own input block and the next one), which costs ``2*b`` multiply-adds per
output instead of the axis length.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor

Mode = Literal["same", "valid"]

#: Axes up to this length use the dense banded matrix; longer ones use blocks.
_DENSE_MAX = 96
_CACHE_SIZE = 64
_cache: OrderedDict[tuple[object, ...], Tensor] = OrderedDict()
_cache_lock = threading.Lock()


def gaussian_size(sigma: float) -> int:
    """Size of the Gaussian window torchmetrics uses for ``sigma``: ``2*int(3.5*sigma+0.5)+1``."""
    return 2 * int(3.5 * sigma + 0.5) + 1


def window(
    gaussian: bool, sigma: float, size: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """1-D window: normalised Gaussian of ``gaussian_size(sigma)`` taps, or ``size`` uniform taps.

    Built on ``device`` with device ops (no host-to-device copy), weights computed in float64.
    """
    if gaussian:
        n = gaussian_size(sigma)
        d = torch.arange(n, dtype=torch.float64, device=device) - (n - 1) / 2
        w = torch.exp(-((d / sigma) ** 2) / 2)
        w = w / w.sum()
    else:
        w = torch.full((size,), 1.0 / size, dtype=torch.float64, device=device)
    return w.to(dtype)


def window_values(gaussian: bool, sigma: float, size: int) -> tuple[float, ...]:
    """The 1-D window as Python floats (float64), for multiply-adds that need no device data."""
    if gaussian:
        n = gaussian_size(sigma)
        raw = [math.exp(-(((d - (n - 1) / 2) / sigma) ** 2) / 2) for d in range(n)]
        total = math.fsum(raw)
        return tuple(v / total for v in raw)
    return (1.0 / size,) * size


def source_rows(n: int, k: int, mode: Mode, lo: int, hi: int, device: torch.device) -> Tensor:
    """Indices of the input samples that output samples ``lo:hi`` read, reflect-mapped for "same".

    Gathering them gives the band with its halo, ready for :func:`correlate_valid`.
    """
    if mode == "valid":
        return torch.arange(lo, hi + k - 1, device=device)
    pad = (k - 1) // 2
    idx = torch.arange(lo - pad, hi + pad, device=device).abs()
    return torch.where(idx > n - 1, 2 * (n - 1) - idx, idx)


def correlate_valid(x: Tensor, dim: int, weights: tuple[float, ...]) -> Tensor:
    """``sum_j weights[j] * x[j : j + m]`` along ``dim`` (m = len - k + 1): shifted multiply-adds.

    Along a non-innermost axis each shifted slice is a run of whole rows, so this streams memory
    at full speed while the band is in cache.
    """
    k = len(weights)
    m = x.shape[dim] - k + 1
    out = x.narrow(dim, 0, m) * weights[0]
    for j in range(1, k):
        out.add_(x.narrow(dim, j, m), alpha=weights[j])
    return out


def _source_index(n: int, k: int, mode: Mode, device: torch.device) -> tuple[Tensor, Tensor]:
    """For output i and tap j, the input sample read: reflect-mapped for "same"."""
    m = n if mode == "same" else n - k + 1
    pad = (k - 1) // 2 if mode == "same" else 0
    out = torch.arange(m, device=device).unsqueeze(1)
    src = out + torch.arange(k, device=device).unsqueeze(0) - pad
    if mode == "same":
        src = src.abs()
        src = torch.where(src > n - 1, 2 * (n - 1) - src, src)
    return src, out.expand_as(src)


def _cached(key: tuple[object, ...], build: object) -> Tensor:
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    value = build()  # type: ignore[operator]
    with _cache_lock:
        _cache[key] = value
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return value  # type: ignore[no-any-return]


def _key(w: Tensor, *rest: object) -> tuple[object, ...]:
    # A window is identified by the caller's tag (its kind and sigma or size): reading the
    # tensor's values to key the cache would sync a GPU.
    return (*rest, w.dtype, w.device)


def dense_band(w: Tensor, tag: object, n: int, mode: Mode) -> Tensor:
    """Matrix ``B`` (n, m) with ``x @ B`` the window applied along x's last axis."""

    def build() -> Tensor:
        k = w.numel()
        src, out = _source_index(n, k, mode, w.device)
        band = torch.zeros(n, out.shape[0], dtype=w.dtype, device=w.device)
        band.index_put_((src.reshape(-1), out.reshape(-1)), w.repeat(out.shape[0]), accumulate=True)
        return band

    return _cached(_key(w, "dense", tag, n, mode), build)


def _block_pair(w: Tensor, tag: object, b: int) -> Tensor:
    """Matrix (b, 2b): ``[A | C]`` with block j's output = P_j @ A + P_{j+1} @ C."""

    def build() -> Tensor:
        k = w.numel()
        t = torch.arange(b, device=w.device).unsqueeze(1)
        s = torch.arange(b, device=w.device).unsqueeze(0)
        pair = torch.zeros(b, 2 * b, dtype=w.dtype, device=w.device)
        for offset, cols in ((0, slice(0, b)), (b, slice(b, 2 * b))):
            tap = t + offset - s
            ok = (tap >= 0) & (tap < k)
            pair[:, cols] = torch.where(ok, w[tap.clamp(0, k - 1)], pair.new_zeros(()))
        return pair

    return _cached(_key(w, "pair", tag, b), build)


def _block_size(k: int) -> int:
    return max(16, -(-(k - 1) // 8) * 8)


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Run matrix products in true float32 (no TF32/bf16), restoring the user's setting after.

    Reference-counted under a lock so concurrent callers never leave the setting changed.
    """
    global _exact_depth, _saved_precision
    with _precision_lock:
        if _exact_depth == 0:
            _saved_precision = torch.get_float32_matmul_precision()
            if _saved_precision != "highest":
                torch.set_float32_matmul_precision("highest")
        _exact_depth += 1
    try:
        yield
    finally:
        with _precision_lock:
            _exact_depth -= 1
            if _exact_depth == 0 and _saved_precision != "highest":
                torch.set_float32_matmul_precision(_saved_precision)


_precision_lock = threading.Lock()
_exact_depth = 0
_saved_precision = "highest"


def _padded(xv: Tensor, pad: int, total: int) -> Tensor:
    """(pre, n, post) reflect-padded by ``pad`` on both sides, zero-filled to ``total`` samples."""
    pre, n, post = xv.shape
    left = xv[:, 1 : pad + 1].flip(1)
    right = xv[:, n - 1 - pad : n - 1].flip(1)
    if torch.is_grad_enabled() and xv.requires_grad:
        fill = xv.new_zeros(pre, total - n - 2 * pad, post)
        return torch.cat([left, xv, right, fill], dim=1)
    buf = xv.new_empty(pre, total, post)
    buf[:, pad : pad + n] = xv
    buf[:, :pad] = left
    buf[:, pad + n : n + 2 * pad] = right
    buf[:, n + 2 * pad :] = 0
    return buf


def correlate(x: Tensor, dim: int, w: Tensor, tag: object, mode: Mode) -> Tensor:
    """Apply the 1-D window ``w`` along ``dim`` of ``x`` ("same": reflect, "valid": no padding).

    The result may be a strided view; its shape is ``x``'s with ``dim`` of length ``n`` ("same")
    or ``n - k + 1`` ("valid").
    """
    dim = dim % x.ndim
    n = x.shape[dim]
    k = w.numel()
    pre = math.prod(x.shape[:dim])
    post = math.prod(x.shape[dim + 1 :])
    m = n if mode == "same" else n - k + 1
    out_shape = (*x.shape[:dim], m, *x.shape[dim + 1 :])
    xv = x.reshape(pre, n, post)
    if n <= _DENSE_MAX or k == 1:
        band = dense_band(w, tag, n, mode)
        y = xv.reshape(pre, n) @ band if post == 1 else band.t() @ xv
        return y.reshape(out_shape)
    # Blocked: the padded axis is cut into blocks of b samples; output block j is
    # P_j @ A + P_{j+1}[:k-1] @ C, the second product accumulated in place into the first.
    b = _block_size(k)
    blocks = -(-m // b) + 1
    pad = (k - 1) // 2 if mode == "same" else 0
    padded = _padded(xv, pad, blocks * b)
    pair = _block_pair(w, tag, b)
    a, c = pair[:, :b], pair[: k - 1, b:]
    if post == 1:
        p2 = padded.reshape(pre * blocks, b)
        z = p2 @ a
        z[:-1].addmm_(p2[1:, : k - 1], c)
        y = z.view(pre, blocks * b)[:, :m]
    else:
        p3 = padded.reshape(pre * blocks, b, post)
        z = a.t() @ p3
        z[:-1].baddbmm_(c.t().expand(pre * blocks - 1, b, k - 1), p3[1:, : k - 1])
        y = z.view(pre, blocks * b, post)[:, :m]
    return y.reshape(out_shape)  # splits only the leading dim: a view, no copy
