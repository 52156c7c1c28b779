"""The CPU backend's path for small images: the window as one dense matrix per spatial axis.

For an axis of ``n`` samples the matrix ``A`` (``out x n``) holds the window's taps with the
reflect padding folded in (a tap that reads a padded sample adds to the image sample it mirrors;
"valid": the plain band), so ``W`` is one product per axis and ``W^T`` the same with ``A``
transposed: no padding, no per-tap ops, no folding back. Where the products keep the working
precision (float64, or float32 at torch's "highest" matmul precision, CPU autocast off:
:func:`products`), a product is a BLAS matrix product, one op (on an axis before the last, the
axes after it flattened); elsewhere (at "medium" or under autocast, which would multiply in
bfloat16) a broadcast multiply and a sum over the axis. Its work grows as ``n`` times a shifted
multiply-add's, so it is for small planes only (:func:`takes`): there a call's cost is the number
of ops it dispatches, and this path dispatches about a quarter of the pieces' ops (16x16: 29
forward instead of 128).

The whole batch at once, in fresh tensors (a small call allocates little); the same formula
(``_formula``), the same kept tensors (``_algebra.TermsKept``) as the pieces, so the forward of
one path and the backward of the other fit together.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ssim_patch import _filters, _formula
from ssim_patch._torch_features import autocast_on, fake_mode_active, plain_eager
from ssim_patch.backends import _algebra, _dtypes
from ssim_patch.backends._kept import KeptTensors
from ssim_patch.backends._protocol import Grads, Kept, Needs, Plan

#: A call takes this path where its largest product has at most this many elements: the stack of
#: four maps times the longest axis. Measured against the pieces (torch 2.13, 1 thread, forward /
#: forward+backward time, products as broadcast multiplies and sums): 1x1x16x16 (16384) 0.54 / 0.62,
#: 1x1x32x32 0.67 / 0.73, 4x3x16x16 (196608) 0.94 / 0.85, 1x1x16x16x16 (262144) 1.03 / 1.02,
#: 1x3x32x32 (393216) 0.99 / 1.01, 1x1x64x64 1.9 / 2.2.
MAX_WORK = 1 << 18
#: Calls whose products are BLAS products (:func:`ssim_patch.backends._dtypes.exact_products`)
#: take this path up to ``MAX_WORK * PRODUCT_FACTOR`` (above ``MAX_WORK`` on the caller alone,
#: single-threaded: ``cpu._on_dense``). Measured against the pieces (torch 2.13, torch's 2 threads,
#: quiet; forward / forward+backward time): 1x3x32x32 0.45 / 0.58, 1x1x64x64 0.45 / 0.61,
#: 4x3x32x32 0.46 / 0.58, 1x3x64x64 (3.1M) 0.57 / 0.66 (beside a busy loop 0.56 / 0.60),
#: 1x1x96x96 (3.5M) 0.57 / 0.69; 4x3x64x64 (12.6M) 1.39 / 1.02. Against the pieces with the reflect
#: padding folded into their products (cpu.BandBlur._folded): 1x3x64x64 0.81 / 0.76, 1x1x96x96
#: 0.85 / 0.77, 4x3x32x32 0.73 / 0.65; 2x3x64x64 (6.3M, above the bound) both ways the same.
PRODUCT_FACTOR = 16
#: The same for 3-D calls, whose pieces blur by shifted multiply-adds (no band products): the
#: dense path / the pieces, torch's 2 threads, forward / forward+backward time (measured beside
#: a CI run): 1x1x32x32x32 (4.2M) 0.41 / 0.80, 2x1x48x48x48 (42M) 0.53 / 0.48, 1x1x64x64x64
#: 0.64 / 0.55, 4x1x64x64x64 (268M) 0.48 / 0.92, 1x1x96x96x96 (340M) 0.60 / 0.65; 1x1x128x128x128
#: (1.07G) 1.34 / 0.77. Up to 2^28, the largest call's maps take under 100 MB.
VOLUME_FACTOR = 1 << 10
#: Matrices already made, by everything that decides them (:func:`_matrix`); emptied at 64; safe
#: across CUDA streams (:mod:`._kept`).
_MATRICES: KeptTensors[Tensor] = KeptTensors()


def work(x: Tensor) -> int:
    """A call's largest product on images ``x``: the four moment maps of every plane times the
    longest axis."""
    spatial = x.shape[2:]
    return 4 * x.shape[0] * x.shape[1] * math.prod(spatial) * max(spatial)


def takes(x: Tensor, plan: Plan) -> bool:
    """True when a call on images ``x`` takes this path: its :func:`work` is at most
    :data:`MAX_WORK`, or, where its products are BLAS products, ``MAX_WORK * PRODUCT_FACTOR``
    (2-D) or ``MAX_WORK * VOLUME_FACTOR`` (3-D)."""
    del plan
    size = work(x)
    if size <= MAX_WORK:
        return True
    factor = PRODUCT_FACTOR if x.ndim == 4 else VOLUME_FACTOR
    return size <= MAX_WORK * factor and products(x.dtype)


def products(dtype: torch.dtype) -> bool:
    """Whether this path's products may be BLAS products (``torch.matmul``): where they keep
    ``dtype``'s precision (:func:`ssim_patch.backends._dtypes.exact_products`) and CPU autocast
    is off (it would run ``matmul`` in bfloat16)."""
    return _dtypes.exact_products(dtype) and not autocast_on("cpu")


def band_rows(
    taps: tuple[float, ...], padding: _filters.Mode, n: int, first: int, last: int
) -> tuple[int, list[list[float]]]:
    """Rows ``first:last`` of ``A`` (an axis of ``n`` samples) over the columns they reach only:
    ``(lo, rows)``, row ``i - first`` holding output sample ``i``'s taps at columns ``lo`` on, a
    padded sample's added to the image sample it reflects."""
    size = len(taps)
    pad = (size - 1) // 2 if padding == "same" else 0
    reads: list[list[tuple[int, float]]] = []
    for i in range(first, last):
        row = []
        for j, w in enumerate(taps):
            src = abs(i - pad + j)  # torch's reflect: the edge sample is not repeated
            if src > n - 1:
                src = 2 * (n - 1) - src
            row.append((src, w))
        reads.append(row)
    if not reads:
        return 0, []
    lo = min(src for row in reads for src, _ in row)
    hi = max(src for row in reads for src, _ in row) + 1
    rows = [[0.0] * (hi - lo) for _ in reads]
    for values, row in zip(rows, reads):
        for src, w in row:
            values[src - lo] += w
    return lo, rows


def matrix_values(taps: tuple[float, ...], padding: _filters.Mode, n: int) -> list[list[float]]:
    """``A`` for one axis of ``n`` samples, as rows of float64 numbers: row ``i`` holds the taps
    output sample ``i`` reads, a padded sample's added to the image sample it reflects."""
    out = n if padding == "same" else n - len(taps) + 1
    lo, rows = band_rows(taps, padding, n, 0, out)
    return [[0.0] * lo + row + [0.0] * (n - lo - len(row)) for row in rows]


def _matrix(taps: tuple[float, ...], padding: _filters.Mode, n: int, trailing: int, like: Tensor) -> Tensor:
    """``A`` shaped ``(out, n, 1, ...)`` (``trailing`` ones) in ``like``'s dtype and device, kept by
    everything that decides it: taps, padding, ``n``, ``trailing``, dtype and device (made
    outside inference mode, so that any call may read it). Under a fake-tensor mode it is made
    fake and not kept."""
    fake = not plain_eager(like) and fake_mode_active(like)

    def make() -> Tensor:
        with torch.inference_mode(False):
            values = torch.tensor(matrix_values(taps, padding, n), dtype=torch.float64)
            return values.to(dtype=like.dtype, device=like.device).view(*values.shape, *[1] * trailing)

    if fake:
        return make()
    return _MATRICES.get((taps, padding, n, trailing, like.dtype, like.device), like.device, make)


def _product(a: Tensor, t: Tensor, trailing: int, transposed: bool = False) -> Tensor:
    """``a`` ``(out, n)`` (``transposed``: ``a^T``) times ``t`` along its axis ``-trailing - 1``,
    one matrix product: on the last axis ``t a^T``; on another ``a t``, the axes after it
    flattened into one."""
    if trailing == 0:
        return torch.matmul(t, a if transposed else a.mT)
    m = a.mT if transposed else a
    if trailing == 1:
        return torch.matmul(m, t)
    rest = t.shape[t.ndim - trailing :]
    flat = t.reshape(*t.shape[: t.ndim - trailing], -1)
    return torch.matmul(m, flat).view(*flat.shape[:-2], m.shape[0], *rest)


def blur(t: Tensor, blur: _filters.Blur, spatial: tuple[int, ...]) -> Tensor:
    """``W t`` for ``t`` ``(..., *spatial)``: one product per axis."""
    nd = len(spatial)
    blas = products(t.dtype)
    for i, taps in enumerate(blur.taps):
        trailing = nd - 1 - i
        if blas:
            t = _product(_matrix(taps, blur.padding, spatial[i], 0, t), t, trailing)
        else:
            a = _matrix(taps, blur.padding, spatial[i], trailing, t)
            t = torch.mul(t.unsqueeze(-trailing - 2), a).sum(-trailing - 1)
    return t


def blur_adjoint(g: Tensor, blur: _filters.Blur, spatial: tuple[int, ...]) -> Tensor:
    """``W^T g`` for ``g`` ``(..., *out)``: one product per axis with ``A`` transposed."""
    nd = len(spatial)
    blas = products(g.dtype)
    for i, taps in enumerate(blur.taps):
        trailing = nd - 1 - i
        if blas:
            g = _product(_matrix(taps, blur.padding, spatial[i], 0, g), g, trailing, transposed=True)
        else:
            a = _matrix(taps, blur.padding, spatial[i], trailing, g)  # (out, n, 1, ...)
            g = torch.mul(g.unsqueeze(-trailing - 1), a).sum(-trailing - 2)
    return g


def forward(
    x: Tensor, y: Tensor, k: _formula.Constants, plan: Plan, keep: Optional[Needs]
) -> tuple[Tensor, Optional[Tensor], Optional[Kept]]:
    """:meth:`ssim_patch.backends.cpu.CpuBackend.forward` for a call this path :func:`takes`."""
    spatial = tuple(x.shape[2:])
    dims = tuple(range(1, x.ndim))
    sd = torch.stack((x + y, x - y))
    shift = sd.mean(tuple(range(3, sd.ndim)), keepdim=True)  # the per-plane means of s and d
    sd.sub_(shift)
    t = _formula.terms(blur(torch.cat((sd, sd * sd)), plan.blur, spatial), shift, k)
    made = _formula.similarity_map(t, k)
    per_image = made.s.mean(dims)
    extra: Optional[Tensor] = None
    if plan.output == "map":
        extra = made.s
    elif plan.output == "cs":
        extra = _formula.contrast(t).mean(dims)
    if keep is None:
        return per_image, extra, None
    if plan.output != "ssim":
        held = _algebra.TermsKept(shift, mu=t.mu, contrast=torch.stack((t.c_num, t.c_den)))
        return per_image, extra, held.tensors(plan)
    unit = _algebra.unit_gradient(made.s.shape, x)
    adj = _formula.adjoints(t, shift, k, unit, None, keep.x, keep.y, made)
    adjoints = torch.stack(_algebra.adjoint_stack(adj))
    if keep.c1 or keep.c2:
        c_sums = torch.stack((adj.g_c1.sum(dims[1:]), adj.g_c2.sum(dims[1:])))
    else:  # never read: a backward asked for c1's or c2's gradient recomputes
        c_sums = x.new_empty((2, *x.shape[:2]))
    held = _algebra.TermsKept(shift, adjoints=adjoints, c_sums=c_sums)
    return per_image, extra, held.tensors(plan)


def backward(
    x: Tensor,
    y: Tensor,
    k: _formula.Constants,
    held: _algebra.TermsKept,
    up: _algebra.Upstream,
    plan: Plan,
    needs: Needs,
) -> Grads:
    """:meth:`ssim_patch.backends.cpu.CpuBackend.backward` for a call this path :func:`takes`, from
    what the forward kept and the scaled upstream gradients."""
    stacked, c_sums = _algebra.stacked_adjoints(held, up, k, needs)
    gx = gy = None
    if needs.x or needs.y:
        back = _algebra.unstack(blur_adjoint(stacked, plan.blur, tuple(x.shape[2:])), needs.x, needs.y)
        gx, gy = _algebra.combine_shifted(back, x, y, held.shift, needs.x, needs.y)
        if up.scale is not None:
            gx = None if gx is None else gx.mul_(up.scale)
            gy = None if gy is None else gy.mul_(up.scale)
    return (gx, gy, *_algebra.constant_grads(c_sums, needs))
