"""SSIM on CPU tensors: the work cut into cache-sized pieces, filtered in place, 2-D and 3-D,
float32 and float64.

A piece is a few whole planes (``N * C`` planes in all), or a band of rows of one plane with the
window's halo, about ``_CHUNK`` samples. For each piece the forward writes the four shifted maps
``s', d', s'^2, d'^2`` into a reused buffer, blurs them in place (:class:`BandBlur`: shifted
multiply-adds over views made once per window and shape), applies the formula (its temporaries
in reused buffers too) and adds the piece's sums to the per-image sums; for a per-image SSIM (a
loss) it also forms the adjoint maps for a unit upstream gradient while the piece is in cache,
for the map and cs outputs it keeps the terms. The backward goes plane by plane: ``W^T`` of the
stacked adjoint maps in reused buffers (the reflect pads folded back by ``index_add_``),
recombined straight into the gradient (``_algebra.combine``).

The pieces are the unit of parallel work: where the caller has several torch threads and a call
several pieces, the library's own workers (:mod:`ssim_patch.backends._pool`) take them one at a
time and run their ops single-threaded, so that a call waits at one barrier instead of one per
op; else the caller runs them in order. Each piece adds nothing to shared results: its sums go to
rows that are added in band order after, the order one thread would add them in.

The reused buffers are each thread's workspace (:mod:`ssim_patch.backends._workspace`), kept
from call to call: a call allocates only what it returns and keeps for the backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Optional

import torch
from torch import Tensor

from ssim_patch import _filters, _formula
from ssim_patch._torch_features import is_fake
from ssim_patch.backends import _algebra, _pool
from ssim_patch.backends._protocol import Backend, Grads, Kept, Needs, Plan
from ssim_patch.backends._workspace import Workspace, workspace

#: Tensor types the library's workers may compute on (others keep their handling in the caller's thread).
_PLAIN = (Tensor, torch.nn.Parameter)

#: The work is cut into pieces of about this many samples (whole planes, or bands of rows of one
#: plane), so that the moment maps and their filtered copies stay in cache.
_CHUNK = 1 << 16


def source_rows(n: int, k: int, mode: _filters.Mode, lo: int, hi: int) -> Tensor:
    """Indices of the input rows that output rows ``lo:hi`` of a ``k``-tap window read.

    "same" reflects about the edges (torch's reflect); "valid" reads whole windows only.
    """
    if mode == "valid":
        return torch.arange(lo, hi + k - 1)
    pad = (k - 1) // 2
    idx = torch.arange(lo - pad, hi + pad).abs()
    return torch.where(idx > n - 1, 2 * (n - 1) - idx, idx)


#: One pass of a window along an axis: the output, the shifted views it sums, the taps.
_Pass = tuple[Tensor, list[Tensor], tuple[float, ...]]
#: One fold of reflect padding: the image's rows on the axis, the axis, where the pad rows go, the pad.
_Fold = tuple[Tensor, int, Tensor, Tensor]


class BandBlur:
    """``W`` and ``W^T`` on CPU, without autograd, in the buffers of a :class:`Workspace`.

    ``filter`` blurs a stack ``(S, P, *padded)`` of gathered rows (the first spatial axis with its
    halo, from :meth:`rows`; the others padded by :meth:`pad_rest`). The views each pass reads and
    writes are made once per window and shape and kept in the workspace's ``plans``: a call runs
    the same few shapes many times, a training loop the same call, and each view made costs as
    much as a small multiply-add.
    """

    def __init__(self, blur: _filters.Blur, spatial: tuple[int, ...], work: Workspace) -> None:
        self.blur = blur
        self.spatial = spatial
        self.work = work

    def rows(self, r0: int, r1: int) -> Tensor:
        """The input rows (with the halo, reflected at the edges) that output rows r0:r1 read."""
        return source_rows(self.spatial[0], len(self.blur.taps[0]), self.blur.padding, r0, r1)

    def pad_rest(self, t: Tensor) -> Tensor:
        """Reflect-pad every spatial axis but the first (already gathered with its halo)."""
        return _filters.reflect_pad(t, self.blur.pads[1:])

    def filter(self, stack: Tensor) -> Tensor:
        """Correlate every axis of a gathered, padded stack ``(S, P, *padded)``; a buffer view.

        The passes are kept by the stack's address, shape and strides; a fake tensor (shape
        inference) has no address, and its passes are made each time and not kept."""
        key = None
        if not is_fake(stack):
            key = ("filter", self.blur, stack.data_ptr(), tuple(stack.shape), tuple(stack.stride()))
        passes: Optional[list[_Pass]] = None if key is None else self.work.plans.get(key)
        if passes is None:
            passes = []
            nd = len(self.blur.taps)
            src = stack
            for i, taps in enumerate(self.blur.taps):
                dim = stack.ndim - nd + i
                shape = list(src.shape)
                shape[dim] -= len(taps) - 1
                out = self.work.take(f"blur-{i % 2}", tuple(shape), stack)
                passes.append((out, [src.narrow(dim, j, shape[dim]) for j in range(len(taps))], taps))
                src = out
            if key is not None:
                self.work.remember(key, passes)
        for out, sources, taps in passes:
            torch.mul(sources[0], taps[0], out=out)
            for source, w in zip(sources[1:], taps[1:]):
                out.add_(source, alpha=w)
        return passes[-1][0]

    def adjoint(self, g: Tensor, slot: str = "") -> Tensor:
        """``W^T g`` for whole planes ``(..., *out)``: a view of a buffer ``(..., *spatial)`` that
        stays valid until the next call with the same ``slot``. The plan is kept by everything
        its buffers were taken for: window, shape, dtype, device and inference mode."""
        key = (
            "adjoint",
            self.blur,
            self.spatial,
            slot,
            tuple(g.shape),
            g.dtype,
            g.device,
            torch.is_inference_mode_enabled(),
        )
        plan: Optional[tuple[list[_Pass], list[_Fold], Tensor]] = self.work.plans.get(key)
        if plan is None:
            nd = len(self.blur.taps)
            spreads: list[_Pass] = []
            shape = list(g.shape)
            for i in reversed(range(nd)):
                dim, n = g.ndim - nd + i, shape[g.ndim - nd + i]
                shape[dim] += len(self.blur.taps[i]) - 1
                spread = self.work.take(f"adjoint{slot}-{i % 2}", tuple(shape), g)
                taps = self.blur.taps[i]
                spreads.append((spread, [spread.narrow(dim, j, n) for j in range(len(taps))], taps))
            folds: list[_Fold] = []
            core = spreads[-1][0]
            for i, pad in enumerate(self.blur.pads):
                if pad:
                    dim, n = g.ndim - nd + i, self.spatial[i]
                    inner = core.narrow(dim, pad, n)
                    # padded sample j < pad is image sample pad - j; padded n + pad + j is n - 2 - j
                    folds.append((inner, dim, torch.arange(pad, 0, -1), core.narrow(dim, 0, pad)))
                    folds.append(
                        (inner, dim, torch.arange(n - 2, n - 2 - pad, -1), core.narrow(dim, n + pad, pad))
                    )
                    core = inner
            plan = (spreads, folds, core)
            self.work.remember(key, plan)
        spreads, folds, core = plan
        source = g
        for spread, dests, taps in spreads:
            spread.zero_()
            for dest, w in zip(dests, taps):
                dest.add_(source, alpha=w)
            source = spread
        for inner, dim, index, pad_part in folds:
            inner.index_add_(dim, index, pad_part)
        return core


def _pieces(
    planes: int, spatial: Sequence[int], out_rows: int
) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """Pieces of work: (first plane, end plane, output row bands) of about ``_CHUNK`` samples."""
    row = math.prod(spatial[1:])
    plane = out_rows * row
    if plane <= _CHUNK:
        per = max(1, _CHUNK // max(1, plane))
        return [(lo, min(lo + per, planes), [(0, out_rows)]) for lo in range(0, planes, per)]
    band = max(8, _CHUNK // max(1, row))
    bands = [(r0, min(r0 + band, out_rows)) for r0 in range(0, out_rows, band)]
    return [(p, p + 1, bands) for p in range(planes)]


class CpuBackend:
    """Cache-sized pieces on CPU (see the module's docstring)."""

    name = "cpu"
    reads_reduced_precision = False

    def unsupported(self, x: Tensor, plan: Plan) -> Optional[str]:
        del plan
        if x.device.type != "cpu":
            return f"it runs on CPU tensors only, and the images are on {x.device}"
        return None

    def forward(
        self, x: Tensor, y: Tensor, k: _formula.Constants, plan: Plan, keep: Optional[Needs]
    ) -> tuple[Tensor, Optional[Tensor], Optional[Kept]]:
        n, channels, *spatial_list = x.shape
        spatial = tuple(spatial_list)
        planes, nd = n * channels, len(spatial)
        xp, yp = x.reshape(planes, *spatial), y.reshape(planes, *spatial)
        out = plan.blur.out_size(spatial)
        dims = tuple(range(1, nd + 1))
        pieces = _pieces(planes, spatial, out[0])
        bands = len(pieces[0][2])
        # The shifts (2, P, 1, ..), taken where the pieces run (no op of the caller's opens a
        # parallel region): a piece of whole planes takes its own; bands of a plane share the
        # plane's, taken first, a plane a task.
        shift = x.new_empty((2, planes, *[1] * nd))
        large = planes * math.prod(spatial) >= _CHUNK  # worth a worker alone
        if bands > 1:

            def plane_shift(work: Workspace, p: int) -> None:
                del work
                shift[:, p : p + 1].copy_(_algebra.sd_shift(xp[None, p : p + 1], yp[None, p : p + 1])[:, 0])

            _run(plane_shift, [(p,) for p in range(planes)], x, alone=large)
        # Each piece's sums go to a row of its band; the rows are added in band order after
        # (the numbers of adding them as the bands come, in one thread).
        sums = x.new_zeros((bands, planes))
        cs_sums = x.new_zeros((bands, planes)) if plan.output == "cs" else None
        full = x.new_empty((planes, *out)) if plan.output == "map" else None
        adjoints = keep is not None and plan.output == "ssim"
        kept: dict[str, Tensor] = {}
        unit: Optional[Tensor] = None
        c_sums: Optional[Tensor] = None
        if keep is not None and adjoints:
            rows = _algebra.adjoint_rows(keep)
            kept = {"adjoints": x.new_empty((rows, planes, *out))}
            c_sums = x.new_zeros((bands, 2, planes))
            unit = _algebra.unit_gradient((n, channels, *out), x)
        elif keep is not None:
            # One tensor each, under glibc's largest mmap threshold: reused from call to call.
            kept = {"mu": x.new_empty((2, planes, *out)), "contrast": x.new_empty((2, planes, *out))}

        def piece(work: Workspace, p0: int, p1: int, b: int, r0: int, r1: int) -> None:
            band = BandBlur(plan.blur, spatial, work)
            sh = shift[:, p0:p1]
            if bands == 1:
                sh.copy_(_algebra.sd_shift(xp[None, p0:p1], yp[None, p0:p1])[:, 0])
                xb = _filters.reflect_pad(xp[p0:p1], plan.blur.pads)
                yb = _filters.reflect_pad(yp[p0:p1], plan.blur.pads)
            else:
                rows_in = band.rows(r0, r1)
                xb = band.pad_rest(xp[p0:p1].index_select(1, rows_in))
                yb = band.pad_rest(yp[p0:p1].index_select(1, rows_in))
            stack = work.take("stack", (4, *xb.shape), xb)
            sd, squares = stack.tensor_split(2)
            torch.add(xb, yb, out=stack[0])
            torch.sub(xb, yb, out=stack[1])
            torch.mul(sd.sub_(sh), sd, out=squares)
            t = _formula.terms(band.filter(stack), sh, k, buffers=work.formula)
            made = _formula.similarity_map(t, k, work.formula)
            maps = made.s
            torch.sum(maps, dims, out=sums[b, p0:p1])
            if cs_sums is not None:
                torch.sum(_formula.contrast(t, work.formula), dims, out=cs_sums[b, p0:p1])
            if full is not None:
                full[p0:p1, r0:r1] = maps
            if keep is not None and adjoints:
                into = kept["adjoints"][:, p0:p1, r0:r1]
                adj = _formula.adjoints(t, sh, k, unit, None, keep.x, keep.y, made, into, work.formula)
                if c_sums is not None and (keep.c1 or keep.c2):
                    torch.sum(adj.g_c1, dims, out=c_sums[b, 0, p0:p1])
                    torch.sum(adj.g_c2, dims, out=c_sums[b, 1, p0:p1])
            elif keep is not None:
                kept["mu"][:, p0:p1, r0:r1] = t.mu
                kept["contrast"][0, p0:p1, r0:r1] = t.c_num
                kept["contrast"][1, p0:p1, r0:r1] = t.c_den

        tasks = [(p0, p1, b, r0, r1) for p0, p1, rows in pieces for b, (r0, r1) in enumerate(rows)]
        _run(piece, tasks, x, alone=large)
        size = math.prod(out) * channels
        per_image = _in_order(sums).view(n, channels).sum(1) / size
        extra: Optional[Tensor] = None
        if full is not None:
            extra = full.view(n, channels, *out)
        elif cs_sums is not None:
            extra = _in_order(cs_sums).view(n, channels).sum(1) / size
        if keep is None:
            return per_image, extra, None
        if c_sums is not None:
            kept["c_sums"] = _in_order(c_sums)
        images = {name: t.view(t.shape[0], n, channels, *t.shape[2:]) for name, t in kept.items()}
        held = _algebra.TermsKept(shift.view(2, n, channels, *[1] * nd), **images)
        return per_image, extra, held.tensors(plan)

    def kept_like(self, x: Tensor, plan: Plan, keep: Needs) -> Kept:
        return _algebra.TermsKept.like(x, plan, keep)

    def backward(
        self,
        x: Tensor,
        y: Tensor,
        k: _formula.Constants,
        kept: Kept,
        g_image: Optional[Tensor],
        g_extra: Optional[Tensor],
        plan: Plan,
        needs: Needs,
    ) -> Grads:
        """Plane by plane: ``W^T`` in reused buffers, recombined straight into the gradients."""
        held = _algebra.TermsKept.of(plan, kept)
        up = _algebra.scaled_upstream(held, g_image, g_extra, plan, x)
        n, channels, *spatial_list = x.shape
        spatial = tuple(spatial_list)
        planes, nd = n * channels, len(spatial)
        out = plan.blur.out_size(spatial)
        xp, yp = x.reshape(planes, *spatial), y.reshape(planes, *spatial)
        gx = x.new_empty((planes, *spatial)) if needs.x else None
        gy = x.new_empty((planes, *spatial)) if needs.y else None

        def planar(g: Optional[Tensor]) -> Optional[Tensor]:
            return None if g is None else g.expand(n, channels, *g.shape[2:]).reshape(planes, *g.shape[2:])

        shift = held.shift.reshape(2, planes, *[1] * nd)
        own = _algebra.own_shifts(shift)  # a_x, a_y per plane
        scale_p = planar(up.scale)
        per = max(1, _CHUNK // max(1, math.prod(out)))
        starts = range(0, planes, per)
        c_parts: Optional[Tensor] = None
        c_sums: Optional[Tensor] = None
        if held.adjoints is not None:
            adj_p = held.adjoints.reshape(held.adjoints.shape[0], planes, *out)
            c_sums = up.c_sums
        else:
            grad_map_p, grad_cs_p = planar(up.grad_map), planar(up.grad_cs)
            terms = held.terms
            mu = terms.mu.reshape(2, planes, *out)
            c_num, c_den = (v.reshape(planes, *out) for v in (terms.c_num, terms.c_den))
            c_parts = x.new_zeros((len(starts), 2))

        def piece(work: Workspace, i: int, p0: int) -> None:
            p1 = min(p0 + per, planes)
            sh = shift[:, p0:p1]
            if held.adjoints is not None:
                stacked = adj_p[:, p0:p1]
            else:
                assert c_parts is not None
                t = _formula.Terms(mu[:, p0:p1], c_num[p0:p1], c_den[p0:p1])
                grad_map_c = None if grad_map_p is None else grad_map_p[p0:p1]
                grad_cs_c = None if grad_cs_p is None else grad_cs_p[p0:p1]
                stacked = work.take("adjoint stack", (_algebra.adjoint_rows(needs), p1 - p0, *out), x)
                adj = _formula.adjoints(
                    t, sh, k, grad_map_c, grad_cs_c, needs.x, needs.y, None, stacked, work.formula
                )
                c_parts[i, 0] = adj.g_c1.sum()
                c_parts[i, 1] = adj.g_c2.sum()
            if needs.x or needs.y:
                targets = (None if gx is None else gx[p0:p1], None if gy is None else gy[p0:p1])
                back = _algebra.unstack(BandBlur(plan.blur, spatial, work).adjoint(stacked), needs.x, needs.y)
                xs, ys = (
                    torch.sub(v[p0:p1], a[p0:p1], out=work.take(f"centred {j}", tuple(v[p0:p1].shape), v))
                    for j, (v, a) in enumerate(((xp, own[0]), (yp, own[1])))
                )
                _algebra.combine(back, xs, ys, targets, in_place=True)
                if scale_p is not None:
                    for g in targets:
                        if g is not None:
                            g.mul_(scale_p[p0:p1])

        _run(piece, list(enumerate(starts)), x, alone=planes * math.prod(spatial) >= _CHUNK)
        if c_parts is not None:
            c_sums = _in_order(c_parts)
        assert c_sums is not None
        return (
            None if gx is None else gx.view(x.shape),
            None if gy is None else gy.view(y.shape),
            c_sums[0] if needs.c1 else None,
            c_sums[1] if needs.c2 else None,
        )


def _in_order(parts: Tensor) -> Tensor:
    """``parts[0] + parts[1] + ...``, added in that order (as one thread adding them as they come)."""
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def _run(
    piece: Callable[..., None], tasks: Sequence[tuple[int, ...]], x: Tensor, alone: bool = False
) -> None:
    """``piece(work, *task)`` for every task: on the library's workers (:mod:`._pool`) where the
    call has several pieces (or ``alone``: one too large to run here) and its caller several
    threads, each in the worker's own workspace; else here, in order, in this thread's."""
    count = 0 if is_fake(x) or type(x) not in _PLAIN else _pool.width(len(tasks), alone)
    if count:

        def run_one(task: tuple[int, ...]) -> Callable[[], None]:
            def go() -> None:
                with workspace() as work:
                    piece(work, *task)

            return go

        _pool.run([run_one(task) for task in tasks], count)
        return
    with workspace() as work:
        for task in tasks:
            piece(work, *task)


BACKEND: Backend = CpuBackend()  # mypy checks it against the protocol
