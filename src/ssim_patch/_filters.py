"""Separable window filtering: 1-D windows, reflect source indices, shifted multiply-adds.

A window is applied along one axis as ``sum_j w[j] * x[j : j + m]`` over a copy of the axis that
already holds its padding (gathered with :func:`source_rows`). Along a non-innermost axis every
shifted slice is a run of whole rows, so each multiply-add streams contiguous memory; the engine
swaps the innermost axis outwards once to filter it the same way. The weights are Python floats,
so no device data is read and no matrix product (and so no TF32) is involved.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

Mode = Literal["same", "valid"]


def gaussian_size(sigma: float) -> int:
    """Size of the Gaussian window torchmetrics uses for ``sigma``: ``2*int(3.5*sigma+0.5)+1``."""
    return 2 * int(3.5 * sigma + 0.5) + 1


def window_values(gaussian: bool, sigma: float, size: int) -> tuple[float, ...]:
    """The 1-D window in float64: normalised ``exp(-(d/sigma)^2/2)`` or ``size`` taps of ``1/size``."""
    if gaussian:
        n = gaussian_size(sigma)
        raw = [math.exp(-(((d - (n - 1) / 2) / sigma) ** 2) / 2) for d in range(n)]
        total = math.fsum(raw)
        return tuple(v / total for v in raw)
    return (1.0 / size,) * size


def source_rows(n: int, k: int, mode: Mode, lo: int, hi: int, device: torch.device) -> Tensor:
    """Indices of the input samples that outputs ``lo:hi`` of a ``k``-tap window read.

    "same" reflects about the edges (torch's reflect: the edge sample is not repeated);
    "valid" reads whole windows only. Gathering them gives the band with its halo, ready for
    :func:`correlate_valid`.
    """
    if mode == "valid":
        return torch.arange(lo, hi + k - 1, device=device)
    pad = (k - 1) // 2
    idx = torch.arange(lo - pad, hi + pad, device=device).abs()
    return torch.where(idx > n - 1, 2 * (n - 1) - idx, idx)


def _shifted_sum(x: Tensor, dim: int, weights: tuple[float, ...], out: Optional[Tensor] = None) -> Tensor:
    k = len(weights)
    m = x.shape[dim] - k + 1
    out = (
        torch.mul(x.narrow(dim, 0, m), weights[0], out=out)
        if out is not None
        else x.narrow(dim, 0, m) * weights[0]
    )
    for j in range(1, k):
        out.add_(x.narrow(dim, j, m), alpha=weights[j])
    return out


def _spread(g: Tensor, dim: int, weights: tuple[float, ...]) -> Tensor:
    """The adjoint of :func:`_shifted_sum`: each output's gradient spread back over its window."""
    k = len(weights)
    shape = list(g.shape)
    shape[dim] += k - 1
    grad = g.new_zeros(shape)
    for j, w in enumerate(weights):
        grad.narrow(dim, j, g.shape[dim]).add_(g, alpha=w)
    return grad


class _CorrelateValid(torch.autograd.Function):
    # Autograd through k narrow views would allocate a full zero gradient per tap; the adjoint
    # written out needs one buffer and k multiply-adds.
    @staticmethod
    def forward(ctx: Any, x: Tensor, dim: int, weights: tuple[float, ...]) -> Tensor:
        ctx.dim, ctx.weights = dim, weights
        return _shifted_sum(x, dim, weights)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        return _CorrelateValidAdjoint.apply(g, ctx.dim, ctx.weights), None, None  # type: ignore[no-untyped-call]


class _CorrelateValidAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, g: Tensor, dim: int, weights: tuple[float, ...]) -> Tensor:
        ctx.dim, ctx.weights = dim, weights
        return _spread(g, dim, weights)

    @staticmethod
    def backward(ctx: Any, gg: Tensor) -> tuple[Tensor, None, None]:
        return _CorrelateValid.apply(gg, ctx.dim, ctx.weights), None, None  # type: ignore[no-untyped-call]


def correlate_valid(x: Tensor, dim: int, weights: tuple[float, ...], out: Optional[Tensor] = None) -> Tensor:
    """``sum_j weights[j] * x[j : j + m]`` along ``dim``, with ``m = x.shape[dim] - k + 1``.

    ``out`` (no autograd only): a buffer of the result's shape to write into.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        result: Tensor = _CorrelateValid.apply(x, dim % x.ndim, weights)  # type: ignore[no-untyped-call]
        return result
    return _shifted_sum(x, dim, weights, out)


def reflect_pad(x: Tensor, pads: tuple[int, ...]) -> Tensor:
    """Reflect-pad the last ``len(pads)`` axes of ``x`` by ``pads[i]`` on both sides."""
    flat: list[int] = []
    for pad in reversed(pads):
        flat += [pad, pad]
    if not any(flat):
        return x
    lead = x.shape[: x.ndim - len(pads)]
    return F.pad(x.reshape(-1, *x.shape[x.ndim - len(pads) :]), flat, mode="reflect").reshape(
        *lead, *(n + 2 * p for n, p in zip(x.shape[x.ndim - len(pads) :], pads))
    )


class Workspace:
    """Reusable scratch buffers for one call: fresh large allocations cost page faults on CPU."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        size = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < size:
            buf = like.new_empty(size)
            self._buffers[name] = buf
        return buf[:size].view(shape)
