"""SSIM on CPU tensors: the work cut into cache-sized pieces, filtered in place, 2-D and 3-D,
float32 and float64.

A piece is a few whole planes (``N * C`` planes in all), or a band of rows of one plane with the
window's halo, about ``_CHUNK`` samples. For each piece the forward writes the four shifted maps
``s', d', s'^2, d'^2`` into a reused buffer and blurs them (:class:`BandBlur`), applies the
formula (its temporaries in reused buffers too) and adds the piece's sums to the per-image sums;
for a per-image SSIM (a loss) it also forms the adjoint maps for a unit upstream gradient while
the piece is in cache, for the map and cs outputs it keeps the terms. The backward goes by pieces
of whole planes (a plane larger than a piece of a loss: by bands of its rows): ``W^T`` of the
stacked adjoint maps in reused buffers (the reflect pads folded back by ``index_add_``),
recombined straight into the gradient (``_algebra.combine``).

The blur, 2-D, is a few matrix products with band matrices per piece where the thread's ops run
single-threaded (a worker's, or a caller's with one thread). A piece of whole planes is not
padded: the reflect padding is folded into the matrices of the blocks at the edges
(:meth:`BandBlur._folded`); along the rows, every row of every map at once times a block of 32
output columns' matrix; down the columns, a block of 32 output rows' matrix times every map at
once. A band of rows, gathered with its halo, goes along the rows in blocks of 16 of one flat
signal (:meth:`BandBlur._banded`). Each output is a sum of ``32 + h`` (``16 + h``) products of
which only the window's are not 0, yet a product runs several times faster than the window's
shifted multiply-adds (memory passes over the whole piece), which are the blur in 3-D and where
a product would open a parallel region.

The pieces are the unit of parallel work: where the caller has several torch threads and a call
several pieces, the library's own workers (:mod:`ssim_patch.backends._pool`) take them one at a
time and run their ops single-threaded, so that a call waits at one barrier instead of one per
op; else the caller runs them in order. Each piece adds nothing to shared results: its sums go to
rows that are added in band order after, the order one thread would add them in.

The reused buffers are each thread's workspace (:mod:`ssim_patch.backends._workspace`), kept
from call to call: a call allocates only what it returns and keeps for the backward.

Small calls (:func:`ssim_patch.backends._dense.takes`) take the dense-matrix path of
:mod:`ssim_patch.backends._dense` instead: a third of the ops, which is what such a call costs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, Optional, TypeVar

import torch
from torch import Tensor

from ssim_patch import _filters, _formula
from ssim_patch._torch_features import is_fake
from ssim_patch.backends import _algebra, _dense, _dtypes, _pool
from ssim_patch.backends._protocol import Backend, Grads, Kept, Needs, Plan
from ssim_patch.backends._workspace import Workspace, workspace

#: Tensor types the library's workers may compute on (others keep their handling in the caller's thread).
_PLAIN = (Tensor, torch.nn.Parameter)

#: :meth:`BandBlur._banded`'s smallest block along the rows, and its block of rows.
_BLOCK, _ROWS = 16, 32

#: The work is cut into pieces of about this many samples (whole planes, or bands of rows of one
#: plane), so that the moment maps and their filtered copies stay in cache.
_CHUNK = 1 << 16
#: A forward without a gradient of at most this many samples runs its pieces on the caller's thread
#: alone, single-threaded. Measured (torch 2.13, 2 threads, 2 cores; 2 threads / caller alone, ms):
#: quiet 32x1x64x64 4.76 / 4.60, 16x1x128x128 6.45 / 5.93, 4x3x128x128 6.01 / 6.32, 2x3x256x256
#: 9.58 / 11.51; beside a busy loop 4.09 / 3.56, 9.20 / 8.07, 7.51 / 7.18, 12.39 / 11.48 (a
#: second thread pays for its hand-over only above this size, and only on quiet cores).
_SERIAL_FORWARD = 1 << 18


def _products_here() -> bool:
    """Whether this thread's matrix products run single-threaded (a worker's, or a caller with
    one thread): a product opens a parallel region where an elementwise op of a piece's size
    opens none, and a region per product is what the workers are there to avoid."""
    return torch.get_num_threads() == 1


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

    :meth:`moments` blurs the four maps of a piece, :meth:`adjoint` and :meth:`adjoint_rows` give
    ``W^T``: by matrix products with band matrices in 2-D where :func:`_products_here`, else
    by shifted multiply-adds. ``filter`` blurs a stack ``(S, P, *padded)`` of gathered rows (the first spatial axis with its
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

    def _by_products(self, dtype: torch.dtype) -> bool:
        """Whether this blur runs as band-matrix products: 2-D, where this thread's products run
        single-threaded (:func:`_products_here`) and keep ``dtype``'s exact products."""
        return len(self.spatial) == 2 and _products_here() and _dtypes.exact_products(dtype)

    def pad_rest(self, t: Tensor) -> Tensor:
        """Reflect-pad every spatial axis but the first (already gathered with its halo)."""
        return _filters.reflect_pad(t, self.blur.pads[1:])

    def moments(self, xb: Tensor, yb: Tensor, shift: Tensor) -> Tensor:
        """``W`` of the four shifted maps ``s', d', s'^2, d'^2`` of gathered, padded rows ``xb``,
        ``yb`` ``(P, *padded)``, ``shift`` ``(2, P, 1, ..)``: a view ``(4, P, *out)`` of a buffer.

        2-D, where this thread's ops run single-threaded: :meth:`_banded` (matrix products);
        else the shifted multiply-adds of :meth:`filter`, which open no parallel region of their
        own where a piece is small."""
        if self._by_products(xb.dtype):
            return self._banded(xb, yb, shift)
        stack = self.work.take("stack", (4, *xb.shape), xb)
        sd, squares = stack.tensor_split(2)
        torch.add(xb, yb, out=stack[0])
        torch.sub(xb, yb, out=stack[1])
        torch.mul(sd.sub_(shift), sd, out=squares)
        return self.filter(stack)

    def _kept(self, key: tuple[object, ...], like: Tensor) -> Any:
        """What the workspace keeps under ``key`` (None for a fake tensor: shape inference has no
        memory to view, so its plans are made each time and not kept)."""
        return None if is_fake(like) else self.work.plans.get(key)

    def _keep(self, key: tuple[object, ...], plan: object, like: Tensor) -> None:
        """Keeps ``plan`` under ``key`` (not for a fake tensor)."""
        if not is_fake(like):
            self.work.remember(key, plan)

    def plane_moments(self, xp: Tensor, yp: Tensor, shift: Tensor) -> Tensor:
        """:meth:`moments` of whole planes ``xp``, ``yp`` ``(P, *spatial)``, not padded: by
        :meth:`_folded` where this thread's products run single-threaded (2-D), else padded and
        blurred by :meth:`moments`."""
        if self._by_products(xp.dtype):
            return self._folded(xp, yp, shift)
        pads = self.blur.pads
        return self.moments(_filters.reflect_pad(xp, pads), _filters.reflect_pad(yp, pads), shift)

    def _folded(self, xp: Tensor, yp: Tensor, shift: Tensor) -> Tensor:
        """:meth:`moments` of whole planes by matrix products with the reflect padding folded into
        the matrices (:func:`ssim_patch.backends._dense.band_rows`): no padded copy of either image.

        The maps are laid out ``(rows, 4, P, width)``. Along the rows, each block of ``_ROWS``
        output columns is every row of every map (the columns the block reaches: a strided view)
        times the block's matrix; down the columns, each block of ``_ROWS`` output rows is the
        block's matrix times the rows it reaches. An output is a sum of at most ``_ROWS + h``
        products of which only the window's are not 0; a product's zero weights spread a NaN or
        inf through its block, never outside the plane it is in.
        """
        plan = self._folded_plan(xp)
        xt, yt = xp.transpose(0, 1), yp.transpose(0, 1)
        torch.add(xt, yt, out=plan.s)
        torch.sub(xt, yt, out=plan.d)
        torch.mul(plan.sd.sub_(shift.reshape(2, xp.shape[0], 1)), plan.sd, out=plan.squares)
        for a, source, dest in plan.along:
            torch.mm(source, a, out=dest)
        for a, source, dest in plan.down:
            torch.mm(a, source, out=dest)
        return plan.moments

    def _folded_plan(self, xp: Tensor) -> _FoldedPlan:
        """:meth:`_folded`'s matrices and views of its buffers for planes of ``xp``'s shape (kept
        in the workspace's plans, but for a fake tensor)."""
        planes, rows, width = xp.shape
        rows_out, width_out = self.blur.out_size((rows, width))
        stack = self.work.take("banded in", (rows, 4, planes, width), xp)
        across = self.work.take("banded across", (rows, 4, planes, width_out), xp)
        # the moments over the maps, spent once the products along the rows have read them
        moments = self.work.take("banded in", (rows_out, 4, planes, width_out), xp)
        key = ("folded", self.blur, tuple(xp.shape), xp.dtype, xp.device, torch.is_inference_mode_enabled())
        plan: Optional[_FoldedPlan] = self._kept(key, xp)
        if plan is not None:
            return plan

        def blocks(taps: tuple[float, ...], n: int, out: int) -> Iterator[tuple[int, int, int, Tensor]]:
            for o0 in range(0, out, _ROWS):
                o1 = min(o0 + _ROWS, out)
                lo, values = _dense.band_rows(taps, self.blur.padding, n, o0, o1)
                a = torch.tensor(values, dtype=torch.float64).to(dtype=xp.dtype, device=xp.device)
                yield o0, o1, lo, a  # a: (o1 - o0, columns reached from lo)

        taps_v, taps_h = self.blur.taps
        flat_in, flat_across = stack.view(-1, width), across.view(-1, width_out)
        along = [
            (a.t(), flat_in[:, lo : lo + a.shape[1]], flat_across[:, c0:c1])
            for c0, c1, lo, a in blocks(taps_h, width, width_out)
        ]
        source, dest = across.view(rows, -1), moments.view(rows_out, -1)
        down = [
            (a, source[lo : lo + a.shape[1]], dest[r0:r1]) for r0, r1, lo, a in blocks(taps_v, rows, rows_out)
        ]
        plan = _FoldedPlan(
            s=stack[:, 0],
            d=stack[:, 1],
            sd=stack[:, :2],
            squares=stack[:, 2:],
            along=along,
            down=down,
            moments=moments.permute(1, 2, 0, 3),
        )
        self._keep(key, plan, xp)
        return plan

    def _banded(self, xb: Tensor, yb: Tensor, shift: Tensor) -> Tensor:
        """:meth:`moments` in 2-D by matrix products with band matrices (:func:`_band`).

        The maps are laid out ``(rows, 4, P, wide)``, each row padded to ``wide``, a multiple of
        the block ``b``. Along the rows (the last axis) all rows are one flat signal cut into
        blocks of ``b``: a block's outputs are its ``b`` inputs times ``B`` plus the next block's
        first ``h`` inputs times ``C`` (added to its last ``h`` outputs only, which at a row's
        end lie past the row's outputs: no output reads another row). Down the columns, each
        block of rows of every map and plane at once is one product. A product's zero
        weights spread a NaN or inf through its block, never outside the plane it is in.
        """
        planes = xb.shape[0]
        plan = self._banded_plan(xb)
        xt, yt = xb.transpose(0, 1), yb.transpose(0, 1)
        torch.add(xt, yt, out=plan.s)
        torch.sub(xt, yt, out=plan.d)
        if plan.margin is not None:  # read with weight 0: finite
            plan.margin.zero_()
        torch.mul(plan.sd.sub_(shift.reshape(2, planes, 1)), plan.sd, out=plan.squares)
        torch.mm(plan.blocks, plan.along, out=plan.across)
        if plan.next_blocks is not None:
            plan.ends.addmm_(plan.next_blocks, plan.tail)
        for down, source, dest in plan.down:
            torch.mm(down, source, out=dest)
        return plan.moments

    def _banded_plan(self, xb: Tensor) -> _BandedPlan:
        """:meth:`_banded`'s views of its buffers for gathered rows of ``xb``'s shape (kept in the
        workspace's plans, but for a fake tensor)."""
        hv, hh = (len(t) - 1 for t in self.blur.taps)
        planes, rows_in, width = xb.shape
        rows_out, width_out = rows_in - hv, width - hh
        b = max(_BLOCK, -(-hh // 8) * 8)
        wide = -(-width // b) * b
        size = rows_in * 4 * planes * wide
        flat = self.work.take("banded in", (size + b,), xb)  # b more: the last block's next one
        across = self.work.take("banded across", (size,), xb)
        # the moments over the maps, spent once the products along the rows have read them
        moments = self.work.take("banded in", (rows_out, 4, planes, wide), xb)
        key = ("banded", self.blur, tuple(xb.shape), xb.dtype, xb.device, torch.is_inference_mode_enabled())
        plan: Optional[_BandedPlan] = self._kept(key, xb)
        if plan is not None:
            return plan
        along, tail, down = self._bands(b, xb)
        stack = flat[:size].view(rows_in, 4, planes, wide)
        count = size // b
        out = across.view(count, b)
        source = across.view(rows_in, 4 * planes * wide)
        dest = moments.view(rows_out, 4 * planes * wide)
        products = []
        for r0 in range(0, rows_out, _ROWS):
            r1 = min(r0 + _ROWS, rows_out)
            products.append((down[: r1 - r0, : r1 - r0 + hv], source[r0 : r1 + hv], dest[r0:r1]))
        plan = _BandedPlan(
            s=stack[:, 0, :, :width],
            d=stack[:, 1, :, :width],
            margin=stack[..., width:] if wide > width else None,
            sd=stack[:, :2],
            squares=stack[:, 2:],
            blocks=flat[:size].view(count, b),
            along=along,
            across=out,
            next_blocks=flat[b : b + size].view(count, b)[:, :hh] if hh else None,
            tail=tail,
            ends=out[:, b - hh :],
            down=products,
            moments=moments[..., :width_out].permute(1, 2, 0, 3),
        )
        self._keep(key, plan, xb)
        return plan

    def _banded_adjoint(self, g: Tensor, slot: str) -> Tensor:
        """:meth:`adjoint` of ``(S, P, *out)`` by the transposed products of :meth:`_banded`,
        in the same layout (rows first, each padded to a multiple of the block)."""
        plan = self._adjoint_plan(g, slot)
        plan.grad.copy_(g.movedim(-2, 0))
        for zero in plan.zeros:  # past g's edges; the outputs past a row's end have no gradient
            zero.zero_()
        for flipped, source, dest in plan.down:
            torch.mm(flipped, source, out=dest)
        torch.mm(plan.blocks, plan.along, out=plan.back)
        if plan.ends is not None:
            plan.next_blocks.addmm_(plan.ends, plan.tail)
        for inner, dim, index, pad_part in plan.folds:
            inner.index_add_(dim, index, pad_part)
        return plan.core

    def adjoint_rows(self, g: Tensor, i0: int, i1: int) -> Tensor:
        """Rows ``i0:i1`` of ``W^T g`` for the stacked maps of one plane ``(S, *out)``, 2-D, by
        matrix products: a view ``(S, i1 - i0, width)`` of a buffer.

        The rows are those of the padded spread that land on them (``i + pad``, and the pad
        rows that fold onto rows near an edge), each the flipped window times the rows of ``g``
        it reaches (zero past ``g``'s edges); then along the rows as :meth:`_banded_adjoint`."""
        hv, hh = (len(t) - 1 for t in self.blur.taps)
        stacked, rows_out, width_out = g.shape
        n, width_in = self.spatial[0], width_out + hh
        pad = self.blur.pads[0]
        padded = rows_out + hv
        q0 = 0 if i0 <= pad else i0 + pad
        q1 = padded if pad and i1 - 1 >= n - 1 - pad else i1 + pad
        count_q = q1 - q0
        b = max(_BLOCK, -(-hh // 8) * 8)
        wide = -(-width_in // b) * b
        cols = stacked * wide
        size = count_q * cols
        reach = self.work.take("rows adjoint in", (count_q + hv, stacked, wide), g)
        spread = self.work.take("rows adjoint down", (size,), g)
        back = self.work.take("rows adjoint out", (size + b,), g)
        along, tail, _ = self._bands(b, g)
        flipped = self._flipped(g)
        # g's rows q0 - hv .. q1 - 1, zero past its edges and past each row's outputs
        lo, hi = max(0, q0 - hv), min(rows_out, q1)
        reach.zero_()
        if hi > lo:
            reach[lo - (q0 - hv) : hi - (q0 - hv), :, :width_out].copy_(g[:, lo:hi].transpose(0, 1))
        source, dest = reach.view(count_q + hv, cols), spread.view(count_q, cols)
        for r0 in range(0, count_q, _ROWS):
            r1 = min(r0 + _ROWS, count_q)
            torch.mm(flipped[: r1 - r0, : r1 - r0 + hv], source[r0 : r1 + hv], out=dest[r0:r1])
        count = size // b
        blocks = spread.view(count, b)
        torch.mm(blocks, along.t(), out=back[:size].view(count, b))
        if hh:
            back[b : b + size].view(count, b)[:, :hh].addmm_(blocks[:, b - hh :], tail.t())
        core = back[:size].view(count_q, stacked, wide)[..., :width_in]
        folds, core = self._folds(core, [-1, 2], axes=(1,))
        for inner, dim, index, pad_part in folds:
            inner.index_add_(dim, index, pad_part)
        rows = core[i0 + pad - q0 : i1 + pad - q0]
        if pad:
            # padded row j < pad is image row pad - j; padded row n + pad + j is n - 2 - j (a row
            # of an image of at most 2 pad rows receives from both)
            top = [(i, pad - i) for i in range(i0, i1) if 1 <= i <= pad]
            bottom = [(i, 2 * n + pad - 2 - i) for i in range(i0, i1) if n - 1 - pad <= i <= n - 2]
            into = [i for i, _ in top + bottom]
            sources = [q for _, q in top + bottom]
            if into:
                reflected = core.index_select(0, torch.tensor(sources) - q0)
                rows.index_add_(0, torch.tensor(into) - i0, reflected)
        return rows.transpose(0, 1)

    def _flipped(self, like: Tensor) -> Tensor:
        """``(_ROWS, _ROWS + h)``: row ``i`` holds the flipped taps of the first axis at ``i``
        to ``i + h`` (the adjoint of the products down the columns, as a correlation)."""
        key = ("flipped", self.blur, like.dtype, like.device, torch.is_inference_mode_enabled())
        found: Optional[Tensor] = self._kept(key, like)
        if found is None:
            found = _band(self.blur.taps[0][::-1], _ROWS, like).t().contiguous()
            self._keep(key, found, like)
        return found

    def _adjoint_plan(self, g: Tensor, slot: str) -> _AdjointPlan:
        hv, hh = (len(t) - 1 for t in self.blur.taps)
        stacked, planes, rows_out, width_out = g.shape
        rows_in, width = rows_out + hv, width_out + hh
        b = max(_BLOCK, -(-hh // 8) * 8)
        wide = -(-width // b) * b
        cols = stacked * planes * wide
        size = rows_in * cols
        grad = self.work.take(f"banded adjoint in{slot}", (rows_out + 2 * hv, stacked, planes, wide), g)
        spread = self.work.take(f"banded adjoint down{slot}", (size,), g)
        back = self.work.take(f"banded adjoint out{slot}", (size + b,), g)  # b more: the last block's next
        inference = torch.is_inference_mode_enabled()
        key = ("banded adjoint", self.blur, self.spatial, slot, tuple(g.shape), g.dtype, g.device, inference)
        plan: Optional[_AdjointPlan] = self._kept(key, g)
        if plan is not None:
            return plan
        along, tail, _ = self._bands(b, g)
        flipped = self._flipped(g)
        # spread row q is the flipped window times g's rows q - h .. q: rows of grad q .. q + h
        source = grad.view(rows_out + 2 * hv, cols)
        dest = spread.view(rows_in, cols)
        products = []
        for q0 in range(0, rows_in, _ROWS):
            q1 = min(q0 + _ROWS, rows_in)
            products.append((flipped[: q1 - q0, : q1 - q0 + hv], source[q0 : q1 + hv], dest[q0:q1]))
        zeros = [grad[:hv], grad[hv + rows_out :]] if hv else []
        if wide > width_out:
            zeros.append(grad[hv : hv + rows_out, ..., width_out:])
        count = size // b
        blocks = spread.view(count, b)
        full = back[:size].view(rows_in, stacked, planes, wide)[..., :width]
        folds, core = self._folds(full, [0, 3])
        plan = _AdjointPlan(
            grad=grad[hv : hv + rows_out, ..., :width_out],
            zeros=zeros,
            down=products,
            blocks=blocks,
            along=along.t(),
            back=back[:size].view(count, b),
            ends=blocks[:, b - hh :] if hh else None,
            tail=tail.t(),
            next_blocks=back[b : b + size].view(count, b)[:, :hh],
            folds=folds,
            core=core.permute(1, 2, 0, 3),
        )
        self._keep(key, plan, g)
        return plan

    def _folds(
        self, core: Tensor, dims: list[int], axes: Optional[tuple[int, ...]] = None
    ) -> tuple[list[_Fold], Tensor]:
        """The folds of the reflect pads of a padded ``core`` (of spatial ``axes``, all unless
        given), axis ``i`` on ``dims[i]``, and the image inside the pads they fold onto."""
        folds: list[_Fold] = []
        for i, pad in enumerate(self.blur.pads):
            if pad and (axes is None or i in axes):
                dim, n = dims[i], self.spatial[i]
                inner = core.narrow(dim, pad, n)
                # padded sample j < pad is image sample pad - j; padded n + pad + j is n - 2 - j
                folds.append((inner, dim, torch.arange(pad, 0, -1), core.narrow(dim, 0, pad)))
                folds.append(
                    (inner, dim, torch.arange(n - 2, n - 2 - pad, -1), core.narrow(dim, n + pad, pad))
                )
                core = inner
        return folds, core

    def _bands(self, b: int, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The band matrices of :meth:`_banded`: along the rows ``B`` ``(b, b)`` and ``C``
        ``(h, h)``; down the columns ``(_ROWS, _ROWS + h)``. Kept in the workspace's plans."""
        key = ("bands", self.blur, b, like.dtype, like.device, torch.is_inference_mode_enabled())
        found: Optional[tuple[Tensor, Tensor, Tensor]] = self._kept(key, like)
        if found is None:
            taps_v, taps_h = self.blur.taps
            hh = len(taps_h) - 1
            along = _band(taps_h, b, like)
            down = _band(taps_v, _ROWS, like).t().contiguous()
            found = (along[:b].contiguous(), along[b:, b - hh :].contiguous(), down)
            self._keep(key, found, like)
        return found

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
        its buffers were taken for: window, shape, dtype, device and inference mode.

        2-D, where this thread's ops run single-threaded: :meth:`_banded_adjoint`."""
        if g.ndim == 4 and self._by_products(g.dtype):
            return self._banded_adjoint(g, slot)
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
            folds, core = self._folds(spreads[-1][0], [g.ndim - nd + i for i in range(nd)])
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


class _BandedPlan(NamedTuple):
    """:meth:`BandBlur._banded`'s views: where ``s``, ``d`` go, the margin past the rows (zeroed),
    the products along the rows (blocks times ``along``; the next blocks' starts times ``tail``
    added to the blocks' ``ends``), those down the columns, and the moments ``(4, P, *out)``."""

    s: Tensor
    d: Tensor
    margin: Optional[Tensor]
    sd: Tensor
    squares: Tensor
    blocks: Tensor
    along: Tensor
    across: Tensor
    next_blocks: Optional[Tensor]
    tail: Tensor
    ends: Tensor
    down: list[tuple[Tensor, Tensor, Tensor]]
    moments: Tensor


class _FoldedPlan(NamedTuple):
    """:meth:`BandBlur._folded`'s views: where ``s``, ``d`` and the squares go, the products along
    the rows and down the columns (matrix, what it reads, where it writes) and the moments
    ``(4, P, *out)``."""

    s: Tensor
    d: Tensor
    sd: Tensor
    squares: Tensor
    along: list[tuple[Tensor, Tensor, Tensor]]
    down: list[tuple[Tensor, Tensor, Tensor]]
    moments: Tensor


def _band(taps: tuple[float, ...], b: int, like: Tensor) -> Tensor:
    """``(b + h, b)`` in ``like``'s dtype and device: column ``i`` holds the taps at rows ``i`` to
    ``i + h``, so that a row of ``b + h`` inputs times it is ``b`` outputs of the window."""
    band = torch.zeros(b + len(taps) - 1, b, dtype=torch.float64)
    for j, w in enumerate(taps):
        band.diagonal(-j).fill_(w)
    return band.to(dtype=like.dtype, device=like.device)


class _AdjointPlan(NamedTuple):
    """:meth:`BandBlur._banded_adjoint`'s views: where ``g`` goes (rows first, ``h`` rows of
    zeros above and below it) and what is zeroed; the products down the columns (the flipped
    window times ``h + 32`` rows), those along the rows (the blocks times ``along^T``; the
    blocks' ends times ``tail^T`` added to the next blocks' starts), the folds of the reflect
    pads and the result ``(S, P, *spatial)``."""

    grad: Tensor
    zeros: list[Tensor]
    down: list[tuple[Tensor, Tensor, Tensor]]
    blocks: Tensor
    along: Tensor
    back: Tensor
    ends: Optional[Tensor]
    tail: Tensor
    next_blocks: Tensor
    folds: list[_Fold]
    core: Tensor


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
        if _dense.takes(x, plan):
            return _on_dense(x, lambda: _dense.forward(x, y, k, plan, keep))
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
        if bands > 1:

            def plane_shift(work: Workspace, p: int) -> None:
                del work
                shift[:, p : p + 1].copy_(_algebra.sd_shift(xp[None, p : p + 1], yp[None, p : p + 1])[:, 0])

            _run(plane_shift, [(p,) for p in range(planes)], x)
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
                moments = band.plane_moments(xp[p0:p1], yp[p0:p1], sh)
            else:
                rows_in = band.rows(r0, r1)
                xb = band.pad_rest(xp[p0:p1].index_select(1, rows_in))
                yb = band.pad_rest(yp[p0:p1].index_select(1, rows_in))
                moments = band.moments(xb, yb, sh)
            t = _formula.terms(moments, sh, k, buffers=work.formula)
            made = _formula.similarity_map(t, k, work.formula) if adjoints else None
            maps = _formula.similarity(t, k, work.formula) if made is None else made.s
            torch.sum(maps, dims, out=sums[b, p0:p1])
            if cs_sums is not None:
                torch.sum(_formula.contrast(t, work.formula), dims, out=cs_sums[b, p0:p1])
            if full is not None:
                full[p0:p1, r0:r1] = maps
            if keep is not None and adjoints:
                into = kept["adjoints"][:, p0:p1, r0:r1]
                assert made is not None
                adj = _formula.adjoints(t, sh, k, unit, None, keep.x, keep.y, made, into, work.formula)
                if c_sums is not None and (keep.c1 or keep.c2):
                    torch.sum(adj.g_c1, dims, out=c_sums[b, 0, p0:p1])
                    torch.sum(adj.g_c2, dims, out=c_sums[b, 1, p0:p1])
            elif keep is not None:
                kept["mu"][:, p0:p1, r0:r1] = t.mu
                kept["contrast"][0, p0:p1, r0:r1] = t.c_num
                kept["contrast"][1, p0:p1, r0:r1] = t.c_den

        tasks = [(p0, p1, b, r0, r1) for p0, p1, rows in pieces for b, (r0, r1) in enumerate(rows)]
        _run(piece, tasks, x, serial=keep is None and x.numel() <= _SERIAL_FORWARD)
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
        up = _algebra.scaled_upstream(held, g_image, g_extra, plan, x, needs)
        if _dense.takes(x, plan):
            return _on_dense(x, lambda: _dense.backward(x, y, k, held, up, plan, needs))
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

        def rows(work: Workspace, p: int, i0: int, i1: int) -> None:
            band = BandBlur(plan.blur, spatial, work).adjoint_rows(adj_p[:, p], i0, i1)
            back = _algebra.unstack(band[:, None], needs.x, needs.y)
            targets = (
                None if gx is None else gx[p : p + 1, i0:i1],
                None if gy is None else gy[p : p + 1, i0:i1],
            )
            xs, ys = (
                torch.sub(
                    v[p : p + 1, i0:i1],
                    a[p : p + 1],
                    out=work.take(f"centred {j}", (1, i1 - i0, *spatial[1:]), v),
                )
                for j, (v, a) in enumerate(((xp, own[0]), (yp, own[1])))
            )
            _algebra.combine(back, xs, ys, targets, in_place=True)
            if scale_p is not None:
                for g in targets:
                    if g is not None:
                        g.mul_(scale_p[p : p + 1])

        large = held.adjoints is not None and nd == 2 and math.prod(out) > _CHUNK and (needs.x or needs.y)
        if large and _dtypes.exact_products(x.dtype) and (_products_here() or _pool.width(2) > 0):
            # one plane is more than a piece: bands of its rows, each from the rows of the
            # adjoint maps that reach it
            band = max(8, _CHUNK // spatial[1])
            tasks = [
                (p, i0, min(i0 + band, spatial[0]))
                for p in range(planes)
                for i0 in range(0, spatial[0], band)
            ]
            _run(rows, tasks, x)
        else:
            _run(piece, list(enumerate(starts)), x)
        if c_parts is not None:
            c_sums = _in_order(c_parts)
        return (
            None if gx is None else gx.view(x.shape),
            None if gy is None else gy.view(y.shape),
            *_algebra.constant_grads(c_sums, needs),
        )


def _in_order(parts: Tensor) -> Tensor:
    """``parts[0] + parts[1] + ...``, added in that order (as one thread adding them as they come)."""
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


_T = TypeVar("_T")


def _on_dense(x: Tensor, call: Callable[[], _T]) -> _T:
    """``call()``, a call of the dense path on images ``x``: as it is where it is small (its ops
    below torch's grain size); above ``_dense.MAX_WORK`` on the caller's thread, single-threaded
    (its products and maps would open parallel regions, each waiting for every thread)."""
    if _dense.work(x) <= _dense.MAX_WORK:
        return call()
    with _pool.alone():
        return call()


def _run(
    piece: Callable[..., None],
    tasks: Sequence[tuple[int, ...]],
    x: Tensor,
    serial: bool = False,
) -> None:
    """``piece(work, *task)`` for every task: where the caller has several threads, on it and the
    library's workers (:mod:`._pool`), each thread's ops single-threaded, each in its own
    workspace (one piece: on the caller alone); else here, in order, in this thread's workspace.
    ``serial``: all on the caller's thread, single-threaded (a call too small to gain from a
    second)."""
    count = 0 if is_fake(x) or type(x) not in _PLAIN else _pool.width(len(tasks))
    if serial:
        count = min(count, 1)
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
