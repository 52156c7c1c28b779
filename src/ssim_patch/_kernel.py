"""SSIM (and UQI) of checked, floating-point images: moments, formula, means, and the gradient.

:func:`similarity` is the one entry. It takes one of two routes, which compute the same numbers:

- **traced**: plain differentiable tensor ops (``_filters.blur`` and ``_formula``), when
  ``torch.compile`` traces the call, a ``torch.func`` transform is active or forward-mode AD is on.
  Autograd, every transform and inductor's fusion then see ordinary operations.
- **fused**: no autograd inside. On CPU the work is cut into cache-sized pieces (a few planes, or a
  band of rows with its halo) filtered in place; on other devices every pass is one convolution
  over the whole stack of maps. When a gradient is needed it runs inside :class:`_Similarity`,
  whose backward is written out: ``W^T`` of three maps (four when both images need a gradient)
  built from what the forward kept, instead of autograd through the forward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Union

import torch
from torch import Tensor

from ssim_patch import _filters, _formula

Output = Literal["ssim", "map", "cs"]
Scalar = Union[float, Tensor]


@dataclass(frozen=True)
class Plan:
    """What to compute: the window ``blur``, ``eps`` in the denominator (UQI; None for SSIM) and
    what comes back with the per-image mean: nothing, the map, or the per-image mean of cs."""

    blur: _filters.Blur
    eps: Optional[float] = None
    output: Output = "ssim"


#: Tests set this to run the non-CPU (convolution) path on CPU tensors.
FORCE_DEVICE_PATH = False

#: On CPU the work is cut into pieces of about this many samples (whole planes, or bands of
#: rows of one plane), so that the moment maps and their filtered copies stay in cache.
_CHUNK = 1 << 16


def similarity(x: Tensor, y: Tensor, c1: Scalar, c2: Scalar, plan: Plan) -> tuple[Tensor, Optional[Tensor]]:
    """Per-image mean of the map ``(N,)``, and the map ``(N, C, *out)`` or the per-image mean of
    cs ``(N,)`` as ``plan.output`` asks (else None). ``x``, ``y``: ``(N, C, *spatial)``, the
    same floating dtype and device; ``c1``, ``c2``: numbers or 0-d tensors."""
    if traced():
        return _traced_similarity(x, y, c1, c2, plan)
    tensors = [t for t in (x, y, c1, c2) if isinstance(t, Tensor)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        out = _apply(x, y, c1, c2, plan)
        return out[0], (out[1] if plan.output != "ssim" else None)
    per_image, extra, _ = _fused(x, y, c1, c2, plan, keep=False)
    return per_image, extra


def traced() -> bool:
    """True while torch.compile traces, a torch.func transform is active or forward AD is on."""
    compiling = getattr(torch.compiler, "is_compiling", None)
    if compiling is not None and compiling():
        return True
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    if active is not None and active():
        return True
    level: int = getattr(torch.autograd.forward_ad, "_current_level", -1)
    return level >= 0


def _as_tensor(c: Scalar, like: Tensor) -> Tensor:
    if isinstance(c, Tensor):
        return c
    return torch.full((), c, dtype=like.dtype, device=like.device)


def _eps(plan: Plan, like: Tensor) -> Optional[Tensor]:
    return None if plan.eps is None else _as_tensor(plan.eps, like)


def _finish(
    maps: Tensor, cs: Optional[Tensor], n: int, channels: int, plan: Plan
) -> tuple[Tensor, Optional[Tensor]]:
    """Per-image means of the ``(P, *out)`` maps, and what ``plan.output`` asks for."""
    per_image = maps.reshape(n, -1).mean(1)
    if plan.output == "map":
        return per_image, maps.reshape(n, channels, *maps.shape[1:])
    if plan.output == "cs":
        assert cs is not None
        return per_image, cs.reshape(n, -1).mean(1)
    return per_image, None


def _planes(x: Tensor) -> Tensor:
    return x.reshape(-1, *x.shape[2:])


def _shifts(xp: Tensor, yp: Tensor) -> Tensor:
    """The per-plane shifts ``(2, P)`` of s = x + y and d = x - y: their means."""
    dims = tuple(range(1, xp.ndim))
    mx, my = xp.mean(dims), yp.mean(dims)
    return torch.stack((mx + my, mx - my))


def _own_shifts(shift: Tensor) -> tuple[Tensor, Tensor]:
    """The shifts of x and y that go with ``shift`` ``(2, ...)``: (a_s + a_d) / 2, (a_s - a_d) / 2."""
    return (shift[0] + shift[1]) / 2, (shift[0] - shift[1]) / 2


# --- traced: plain tensor ops --------------------------------------------------------------------


def _traced_terms(x: Tensor, y: Tensor, c2: Tensor, plan: Plan) -> tuple[_formula.Terms, Tensor]:
    xp, yp = _planes(x), _planes(y)
    shift = _shifts(xp, yp).detach().view(2, -1, *[1] * (x.ndim - 2))
    sd = torch.stack((xp + yp, xp - yp)) - shift
    m = _filters.blur(torch.cat((sd, sd * sd)), plan.blur)
    return _formula.terms(m, shift, c2, straight_through=True), shift


def _traced_similarity(
    x: Tensor, y: Tensor, c1: Scalar, c2: Scalar, plan: Plan
) -> tuple[Tensor, Optional[Tensor]]:
    c1t, c2t = _as_tensor(c1, x), _as_tensor(c2, x)
    t, _ = _traced_terms(x, y, c2t, plan)
    cs = _formula.contrast(t) if plan.output == "cs" else None
    return _finish(_formula.similarity(t, c1t, _eps(plan, x)), cs, x.shape[0], x.shape[1], plan)


# --- fused: no autograd inside ----------------------------------------------------------------


@dataclass
class _Kept:
    """What the fused forward keeps for the backward: the terms ``(.., P, *out)`` and the shifts
    ``(2, P)``."""

    terms: _formula.Terms
    shift: Tensor

    def tensors(self) -> tuple[Tensor, ...]:
        return (*self.terms, self.shift)


def _on_cpu(x: Tensor) -> bool:
    return x.device.type == "cpu" and not FORCE_DEVICE_PATH


def _fused(
    x: Tensor, y: Tensor, c1: Scalar, c2: Scalar, plan: Plan, keep: bool
) -> tuple[Tensor, Optional[Tensor], Optional[_Kept]]:
    forward = _cpu_forward if _on_cpu(x) else _device_forward
    return forward(x, y, _as_tensor(c1, x), _as_tensor(c2, x), plan, keep)


def _device_forward(
    x: Tensor, y: Tensor, c1: Tensor, c2: Tensor, plan: Plan, keep: bool
) -> tuple[Tensor, Optional[Tensor], Optional[_Kept]]:
    """The whole batch at once: each pass of the window is one convolution over four maps."""
    n, channels, *spatial = x.shape
    planes, nd = n * channels, len(spatial)
    padded = [size + 2 * pad for size, pad in zip(spatial, plan.blur.pads)]
    xp, yp = _planes(x), _planes(y)
    stack = x.new_empty((4, planes, *padded))
    _filters.reflect_pad_into(xp + yp, plan.blur.pads, stack[0])
    _filters.reflect_pad_into(xp - yp, plan.blur.pads, stack[1])
    shift = stack[:2].mean(tuple(range(2, 2 + nd)), keepdim=True)  # (2, P, 1, ..): a_s, a_d
    stack[:2].sub_(shift)
    torch.mul(stack[:2], stack[:2], out=stack[2:4])
    m = _filters.conv_blur(stack, plan.blur)
    del stack
    t = _formula.terms(m, shift, c2)
    maps = _formula.similarity(t, c1, _eps(plan, x))
    cs = _formula.contrast(t) if plan.output == "cs" else None
    per_image, extra = _finish(maps, cs, n, channels, plan)
    return per_image, extra, (_Kept(t, shift.view(2, planes)) if keep else None)


def _pieces(
    planes: int, spatial: Sequence[int], out_rows: int
) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """CPU pieces of work: (first plane, end plane, output row bands) of about ``_CHUNK`` samples."""
    row = math.prod(spatial[1:])
    plane = out_rows * row
    if plane <= _CHUNK:
        per = max(1, _CHUNK // max(1, plane))
        return [(lo, min(lo + per, planes), [(0, out_rows)]) for lo in range(0, planes, per)]
    band = max(8, _CHUNK // max(1, row))
    bands = [(r0, min(r0 + band, out_rows)) for r0 in range(0, out_rows, band)]
    return [(p, p + 1, bands) for p in range(planes)]


def _cpu_forward(
    x: Tensor, y: Tensor, c1: Tensor, c2: Tensor, plan: Plan, keep: bool
) -> tuple[Tensor, Optional[Tensor], Optional[_Kept]]:
    """Cache-sized pieces: the four moment maps of a piece are formed, filtered and reduced in place."""
    n, channels, *spatial = x.shape
    planes, nd = n * channels, len(spatial)
    xp, yp = _planes(x), _planes(y)
    shift = _shifts(xp, yp)
    out = plan.blur.out_size(tuple(spatial))
    eps = _eps(plan, x)
    dims = tuple(range(1, nd + 1))
    sums = x.new_zeros(planes)
    cs_sums = x.new_zeros(planes) if plan.output == "cs" else None
    full = x.new_empty((planes, *out)) if plan.output == "map" else None
    # One tensor per term, each under glibc's largest mmap threshold: reused from call to call.
    kept = (x.new_empty((2, planes, *out)), x.new_empty((1, planes, *out)), x.new_empty((1, planes, *out)))
    band = _filters.BandBlur(plan.blur, tuple(spatial))
    ones = [1] * nd
    for p0, p1, bands in _pieces(planes, spatial, out[0]):
        sh = shift[:, p0:p1].reshape(2, -1, *ones)
        for r0, r1 in bands:
            if len(bands) == 1:
                xb = _filters.reflect_pad(xp[p0:p1], plan.blur.pads)
                yb = _filters.reflect_pad(yp[p0:p1], plan.blur.pads)
            else:
                rows = band.rows(r0, r1)
                xb = band.pad_rest(xp[p0:p1].index_select(1, rows))
                yb = band.pad_rest(yp[p0:p1].index_select(1, rows))
            stack = band.work.take("stack", (4, *xb.shape), xb)
            torch.add(xb, yb, out=stack[0])
            torch.sub(xb, yb, out=stack[1])
            stack[:2].sub_(sh)
            torch.mul(stack[:2], stack[:2], out=stack[2:4])
            t = _formula.terms(band.filter(stack), sh, c2)
            maps = _formula.similarity(t, c1, eps)
            sums[p0:p1] += maps.sum(dims)
            if cs_sums is not None:
                cs_sums[p0:p1] += _formula.contrast(t).sum(dims)
            if full is not None:
                full[p0:p1, r0:r1] = maps
            if keep:
                for store, value in zip(kept, t):
                    store[:, p0:p1, r0:r1] = value
    size = math.prod(out) * channels
    per_image = sums.view(n, channels).sum(1) / size
    extra: Optional[Tensor] = None
    if full is not None:
        extra = full.view(n, channels, *out)
    elif cs_sums is not None:
        extra = cs_sums.view(n, channels).sum(1) / size
    terms = _Kept(_formula.Terms(kept[0], kept[1][0], kept[2][0]), shift) if keep else None
    return per_image, extra, terms


# --- the gradient ---------------------------------------------------------------------------------


def _upstream(
    g_image: Optional[Tensor], g_extra: Optional[Tensor], plan: Plan, n: int, planes: int, out: Sequence[int]
) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """The loss's gradient with respect to the S map and the cs map, per plane ``(P, *out)`` or
    broadcastable ``(P, 1, ..)``, from the gradients of the outputs (None where there is none)."""
    size = (planes // n) * math.prod(out)
    ones = [1] * len(out)

    def per_plane(g: Tensor) -> Tensor:
        return (g / size).repeat_interleave(planes // n).view(planes, *ones)

    grad_map = per_plane(g_image) if g_image is not None else None
    grad_cs = None
    if g_extra is not None and plan.output == "map":
        g_map = g_extra.reshape(planes, *out)
        grad_map = g_map if grad_map is None else grad_map + g_map
    elif g_extra is not None and plan.output == "cs":
        grad_cs = per_plane(g_extra)
    return grad_map, grad_cs


def _gradients(
    adj: _formula.Adjoints,
    adjoint: Callable[[Tensor, str], Tensor],
    xs: Tensor,
    ys: Tensor,
    out: tuple[Optional[Tensor], Optional[Tensor]] = (None, None),
) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """``grad_x = W^T g_x + xs W^T g_sq + ys W^T g_cross`` and the same for y (x, y swapped),
    ``xs``, ``ys`` the images less their shifts; written into ``out`` where given."""
    sq, cross = adjoint(adj.g_sq, "sq"), adjoint(adj.g_cross, "cross")
    grads: list[Optional[Tensor]] = []
    for g, a, b, o in ((adj.g_x, xs, ys, out[0]), (adj.g_y, ys, xs, out[1])):
        if g is None:
            grads.append(None)
            continue
        back = adjoint(g, "")
        grads.append(
            (torch.addcmul(back, a, sq, out=o) if o is not None else back.addcmul(a, sq)).addcmul_(b, cross)
        )
    return grads[0], grads[1]


def _fused_backward(
    x: Tensor,
    y: Tensor,
    c1: Tensor,
    kept: _Kept,
    grad_map: Optional[Tensor],
    grad_cs: Optional[Tensor],
    plan: Plan,
    needs: tuple[bool, bool, bool, bool],
) -> tuple[Optional[Tensor], ...]:
    """Gradients for x, y, c1, c2 from what the fused forward kept (no autograd inside)."""
    n, channels, *spatial = x.shape
    planes, nd = n * channels, len(spatial)
    need_x, need_y, need_c1, need_c2 = needs
    xp, yp = _planes(x), _planes(y)
    out = plan.blur.out_size(tuple(spatial))
    gx = x.new_empty((planes, *spatial)) if need_x else None
    gy = x.new_empty((planes, *spatial)) if need_y else None
    g_c1 = x.new_zeros(()) if need_c1 else None
    g_c2 = x.new_zeros(()) if need_c2 else None
    eps = _eps(plan, x)
    ones = [1] * nd
    if _on_cpu(x):
        band = _filters.BandBlur(plan.blur, tuple(spatial))
        per = max(1, _CHUNK // max(1, math.prod(out)))
        chunks = [(lo, min(lo + per, planes)) for lo in range(0, planes, per)]
    else:
        band = None
        chunks = [(0, planes)]
    for p0, p1 in chunks:
        t = _formula.Terms(kept.terms.mu[:, p0:p1], kept.terms.c_num[p0:p1], kept.terms.c_den[p0:p1])
        sh = kept.shift[:, p0:p1].reshape(2, -1, *ones)

        def part(g: Optional[Tensor], lo: int = p0, hi: int = p1) -> Optional[Tensor]:
            return None if g is None else (g[lo:hi] if g.shape[0] == planes else g)

        adj = _formula.adjoints(t, sh, c1, eps, part(grad_map), part(grad_cs), needs)
        if need_x or need_y:
            ax, ay = _own_shifts(sh)
            shape = (p1 - p0, *out)

            def adjoint(g: Tensor, slot: str, shape: tuple[int, ...] = shape) -> Tensor:
                if band is not None:
                    return band.adjoint(g.expand(shape), slot)
                return _filters.conv_blur_adjoint(g.expand(shape), plan.blur, tuple(spatial))

            targets = (None if gx is None else gx[p0:p1], None if gy is None else gy[p0:p1])
            _gradients(adj, adjoint, xp[p0:p1] - ax, yp[p0:p1] - ay, targets)
        if g_c1 is not None and adj.g_c1 is not None:
            g_c1 += adj.g_c1.sum()
        if g_c2 is not None and adj.g_c2 is not None:
            g_c2 += adj.g_c2.sum()
    return (
        None if gx is None else gx.view(x.shape),
        None if gy is None else gy.view(y.shape),
        g_c1,
        g_c2,
    )


def _traced_backward(
    x: Tensor,
    y: Tensor,
    c1: Scalar,
    c2: Scalar,
    grad_map: Optional[Tensor],
    grad_cs: Optional[Tensor],
    plan: Plan,
    needs: tuple[bool, bool, bool, bool],
) -> tuple[Optional[Tensor], ...]:
    """The same gradients in plain differentiable ops, recomputed from the inputs: for double
    backward, and for the backward under torch.func transforms."""
    c1t, c2t = _as_tensor(c1, x), _as_tensor(c2, x)
    t, shift = _traced_terms(x, y, c2t, plan)
    adj = _formula.adjoints(t, shift, c1t, _eps(plan, x), grad_map, grad_cs, needs)
    gx = gy = None
    if adj.g_x is not None or adj.g_y is not None:
        ax, ay = _own_shifts(shift)
        out = t.c_den.shape

        def adjoint(g: Tensor, slot: str) -> Tensor:
            return _filters.blur_adjoint(g.expand(out), plan.blur)

        gx, gy = _gradients(adj, adjoint, _planes(x) - ax, _planes(y) - ay)
    return (
        None if gx is None else gx.reshape(x.shape),
        None if gy is None else gy.reshape(y.shape),
        adj.g_c1.sum() if adj.g_c1 is not None else None,
        adj.g_c2.sum() if adj.g_c2 is not None else None,
    )


def _sum_to(g: Optional[Tensor], c: Any) -> Optional[Tensor]:
    """A gradient for ``c``: None unless ``c`` is a tensor, and then of its shape."""
    if g is None or not isinstance(c, Tensor):
        return None
    return g.reshape(c.shape)


class _Similarity(torch.autograd.Function):
    """The fused forward, with the backward written out (see the module's docstring).

    Outputs: the per-image mean, the extra output (an empty tensor when none is asked), and what
    the backward needs (non-differentiable): the terms and the shifts.
    """

    @staticmethod
    def forward(x: Tensor, y: Tensor, c1: Scalar, c2: Scalar, plan: Plan) -> tuple[Tensor, ...]:
        per_image, extra, kept = _fused(x, y, c1, c2, plan, keep=True)
        assert kept is not None
        return (per_image, extra if extra is not None else x.new_empty(0), *kept.tensors())

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        x, y, c1, c2, plan = inputs
        ctx.mark_non_differentiable(*output[2:])
        ctx.set_materialize_grads(False)
        ctx.plan = plan
        ctx.scalars = (c1, c2)
        ctx.save_for_backward(x, y, *output[2:])
        ctx.save_for_forward(x, y)

    @staticmethod
    def backward(
        ctx: Any, g_image: Optional[Tensor], g_extra: Optional[Tensor], *_: Any
    ) -> tuple[Optional[Tensor], ...]:
        x, y, mu, c_num, c_den, shift = ctx.saved_tensors
        c1, c2 = ctx.scalars
        plan: Plan = ctx.plan
        n, channels, *spatial = x.shape
        need_x, need_y, need_c1, need_c2 = (bool(v) for v in ctx.needs_input_grad[:4])
        needs = (need_x, need_y, need_c1, need_c2)
        out = plan.blur.out_size(tuple(spatial))
        grad_map, grad_cs = _upstream(g_image, g_extra, plan, n, n * channels, out)
        if grad_map is None and grad_cs is None:
            return None, None, None, None, None
        if torch.is_grad_enabled() or traced():
            grads = _traced_backward(x, y, c1, c2, grad_map, grad_cs, plan, needs)
        else:
            kept = _Kept(_formula.Terms(mu, c_num, c_den), shift)
            grads = _fused_backward(x, y, _as_tensor(c1, x), kept, grad_map, grad_cs, plan, needs)
        return grads[0], grads[1], _sum_to(grads[2], c1), _sum_to(grads[3], c2), None

    @staticmethod
    def jvp(
        ctx: Any, tx: Optional[Tensor], ty: Optional[Tensor], tc1: Any, tc2: Any, _: Any
    ) -> tuple[Any, ...]:
        x, y = ctx.saved_tensors[:2]
        c1, c2 = ctx.scalars
        plan: Plan = ctx.plan
        primals = (x, y, _as_tensor(c1, x), _as_tensor(c2, x))
        tangents = tuple(
            t if isinstance(t, Tensor) else torch.zeros_like(p) for p, t in zip(primals, (tx, ty, tc1, tc2))
        )

        def traced(a: Tensor, b: Tensor, k1: Tensor, k2: Tensor) -> tuple[Tensor, Tensor]:
            per_image, extra = _traced_similarity(a, b, k1, k2, plan)
            return per_image, extra if extra is not None else a.new_empty(0)

        d_image, d_extra = torch.func.jvp(traced, primals, tangents)[1]
        return (d_image, d_extra, None, None, None, None)

    @staticmethod
    def vmap(
        info: Any,
        in_dims: tuple[Optional[int], ...],
        x: Tensor,
        y: Tensor,
        c1: Scalar,
        c2: Scalar,
        plan: Plan,
    ) -> tuple[Any, Any]:
        """Vmapped calls fold the vmapped dimension into the batch of images (each image is
        independent of the others); a vmapped c1 or c2 runs image by image."""
        dx, dy, dc1, dc2, _ = in_dims
        size = info.batch_size

        def batched(t: Any, d: Optional[int]) -> Any:
            if not isinstance(t, Tensor):
                return t
            return t.movedim(d, 0) if d is not None else t.expand(size, *t.shape)

        xb, yb, c1b, c2b = (batched(t, d) for t, d in zip((x, y, c1, c2), (dx, dy, dc1, dc2)))
        if dc1 is not None or dc2 is not None:
            results = [
                _apply(
                    xb[i], yb[i], c1b[i] if dc1 is not None else c1, c2b[i] if dc2 is not None else c2, plan
                )
                for i in range(size)
            ]
            outputs = tuple(torch.stack(parts) for parts in zip(*results))
            return outputs, (0,) * len(outputs)
        per_image, extra, mu, c_num, c_den, shift = _apply(
            xb.reshape(-1, *xb.shape[2:]), yb.reshape(-1, *yb.shape[2:]), c1, c2, plan
        )

        def split(t: Tensor, dim: int) -> Tensor:
            return t.reshape(*t.shape[:dim], size, t.shape[dim] // size, *t.shape[dim + 1 :])

        outputs = (
            split(per_image, 0),
            split(extra, 0) if extra.numel() else extra.new_empty(size, 0),
            split(mu, 1),
            split(c_num, 0),
            split(c_den, 0),
            split(shift, 1),
        )
        return outputs, (0, 0, 1, 0, 0, 1)


def _apply(x: Tensor, y: Tensor, c1: Scalar, c2: Scalar, plan: Plan) -> tuple[Tensor, ...]:
    out: tuple[Tensor, ...] = _Similarity.apply(x, y, c1, c2, plan)  # type: ignore[no-untyped-call]
    return out
