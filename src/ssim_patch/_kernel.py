"""SSIM (and UQI) of checked, floating-point images: moments, formula, means, and the gradient.

:func:`similarity` is the one entry. It takes one of two routes, which compute the same numbers:

- **traced**: plain differentiable tensor ops (``_filters.blur`` and ``_formula``), when
  ``torch.compile`` traces the call, a ``torch.func`` transform is active or forward-mode AD is on.
  Autograd, every transform and inductor's fusion then see ordinary operations.
- **fused**: no autograd inside. On CPU the work is cut into cache-sized pieces (a few planes, or a
  band of rows with its halo) filtered in place; on other devices every pass is one convolution
  over the whole stack of maps. When a gradient is needed it runs inside :class:`_Similarity`,
  whose backward is written out: ``W^T`` of three maps (four when both images need a gradient)
  instead of autograd through the forward. For a per-image SSIM (a loss) the forward forms those
  maps itself while each piece is in cache; for the other outputs it keeps the terms they are
  made of. A double backward, or a backward under a transform, recomputes through the traced route.
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
    per_image, extra, _ = _fused(x, y, c1, c2, plan, keep=None)
    return per_image, extra


def traced() -> bool:
    """True while torch.compile traces, a torch.func transform is active or forward AD is on."""
    compiling = getattr(torch.compiler, "is_compiling", None)
    if (compiling is not None and compiling()) or traced_transforms_active():
        return True
    level: int = getattr(torch.autograd.forward_ad, "_current_level", -1)
    return level >= 0


def traced_transforms_active() -> bool:
    """True while a torch.func transform (vmap, grad, jvp, ...) is active."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active is not None and active())


def _constants(c1: Scalar, c2: Scalar, plan: Plan, like: Tensor) -> _formula.Constants:
    return _formula.constants(c1, c2, plan.eps, like)


def _image_dims(t: Tensor) -> tuple[int, ...]:
    return tuple(range(1, t.ndim))


def _finish(maps: Tensor, t: _formula.Terms, plan: Plan) -> tuple[Tensor, Optional[Tensor]]:
    """Per-image mean of the ``(N, C, *out)`` map, and what ``plan.output`` asks for."""
    per_image = maps.mean(_image_dims(maps))
    if plan.output == "map":
        return per_image, maps
    if plan.output == "cs":
        cs = _formula.contrast(t)
        return per_image, cs.mean(_image_dims(cs))
    return per_image, None


def _sd_shift(x: Tensor, y: Tensor) -> Tensor:
    """The shifts ``(2, N, C, 1, ..)`` of s = x + y and d = x - y: the per-plane means."""
    dims = tuple(range(2, x.ndim))
    mx, my = x.mean(dims, keepdim=True), y.mean(dims, keepdim=True)
    return torch.stack((mx + my, mx - my))


def _own_shifts(shift: Tensor) -> tuple[Tensor, Tensor]:
    """The shifts of x and y that go with ``shift`` ``(2, ...)``: (a_s + a_d) / 2, (a_s - a_d) / 2."""
    a_s, a_d = shift.unbind(0)
    return (a_s + a_d) / 2, (a_s - a_d) / 2


# --- traced: plain tensor ops --------------------------------------------------------------------


def _traced_terms(x: Tensor, y: Tensor, k: _formula.Constants, plan: Plan) -> tuple[_formula.Terms, Tensor]:
    shift = _sd_shift(x, y).detach()
    sd = torch.stack((x + y, x - y)) - shift
    m = _filters.blur(torch.cat((sd, sd * sd)), plan.blur)
    return _formula.terms(m, shift, k, straight_through=True), shift


def _traced_similarity(
    x: Tensor, y: Tensor, c1: Scalar, c2: Scalar, plan: Plan
) -> tuple[Tensor, Optional[Tensor]]:
    k = _constants(c1, c2, plan, x)
    t, _ = _traced_terms(x, y, k, plan)
    return _finish(_formula.similarity(t, k), t, plan)


# --- fused: no autograd inside ----------------------------------------------------------------


@dataclass
class _Kept:
    """What the fused forward keeps for the backward; every tensor is ``(S, N, C, ...)``.

    For a per-image SSIM (the loss case) the forward already computes the adjoint maps for a unit
    upstream gradient per image, while its pieces are in cache: ``adjoints`` (g_x if x needs a
    gradient, g_y if y does, g_sq, g_cross) and ``c_sums`` (the per-plane sums of g_c1, g_c2);
    the backward scales them by the upstream gradient and applies ``W^T``. For the other outputs
    it keeps the terms (``mu``; ``contrast``: C_num, C_den) and the backward forms the adjoints.
    """

    shift: Tensor  # (2, N, C, 1, ..): a_s, a_d
    mu: Optional[Tensor] = None
    contrast: Optional[Tensor] = None
    adjoints: Optional[Tensor] = None
    c_sums: Optional[Tensor] = None

    @staticmethod
    def layout(plan: Plan) -> tuple[str, ...]:
        """The names of the kept tensors, in order."""
        if plan.output == "ssim":
            return ("shift", "adjoints", "c_sums")
        return ("shift", "mu", "contrast")

    def tensors(self, plan: Plan) -> tuple[Tensor, ...]:
        return tuple(getattr(self, name) for name in self.layout(plan))

    @classmethod
    def of(cls, plan: Plan, tensors: Sequence[Tensor]) -> _Kept:
        return cls(**dict(zip(cls.layout(plan), tensors)))

    @property
    def terms(self) -> _formula.Terms:
        assert self.mu is not None and self.contrast is not None
        return _formula.Terms(self.mu, self.contrast[0], self.contrast[1])


@dataclass(frozen=True)
class _Needs:
    """Which inputs need a gradient."""

    x: bool
    y: bool
    c1: bool
    c2: bool

    @classmethod
    def of(cls, *inputs: Any) -> _Needs:
        return cls(*(isinstance(v, Tensor) and v.requires_grad for v in inputs))


def _unit_gradient(images: Sequence[int], like: Tensor) -> Tensor:
    """The S map's gradient for a loss that is the sum of the per-image means."""
    return torch.full((), 1.0 / math.prod(images[1:]), dtype=like.dtype, device=like.device)


def _adjoint_stack(adj: _formula.Adjoints) -> list[Tensor]:
    maps = [g for g in (adj.g_x, adj.g_y) if g is not None] + [adj.g_sq, adj.g_cross]
    if all(g.shape == maps[0].shape for g in maps):
        return maps
    shape = torch.broadcast_shapes(*(g.shape for g in maps))  # type: ignore[no-untyped-call]
    return [g if g.shape == shape else g.expand(shape) for g in maps]


def _on_cpu(x: Tensor) -> bool:
    return x.device.type == "cpu" and not FORCE_DEVICE_PATH


def _fused(
    x: Tensor, y: Tensor, c1: Scalar, c2: Scalar, plan: Plan, keep: Optional[_Needs]
) -> tuple[Tensor, Optional[Tensor], Optional[_Kept]]:
    """The fused forward; with ``keep`` (what needs a gradient) also what the backward needs."""
    forward = _cpu_forward if _on_cpu(x) else _device_forward
    return forward(x, y, _constants(c1, c2, plan, x), plan, keep)


def _device_forward(
    x: Tensor, y: Tensor, k: _formula.Constants, plan: Plan, keep: Optional[_Needs]
) -> tuple[Tensor, Optional[Tensor], Optional[_Kept]]:
    """The whole batch at once: each pass of the window is one convolution over four maps."""
    n, channels, *spatial = x.shape
    sd = x.new_empty((2, n, channels, *spatial))
    torch.add(x, y, out=sd[0])
    torch.sub(x, y, out=sd[1])
    shift = sd.mean(tuple(range(3, sd.ndim)), keepdim=True)  # (2, N, C, 1, ..): a_s, a_d
    sd.sub_(shift)
    padded = [size + 2 * pad for size, pad in zip(spatial, plan.blur.pads)]
    stack = x.new_empty((4, n, channels, *padded))
    _filters.reflect_pad_into(sd.view(-1, *spatial), plan.blur.pads, stack[:2].view(-1, *padded))
    torch.mul(stack[:2], stack[:2], out=stack[2:])
    t = _formula.terms(_filters.conv_blur(stack, plan.blur), shift, k)
    made = _formula.similarity_map(t, k)
    per_image, extra = _finish(made.s, t, plan)
    if keep is None:
        return per_image, extra, None
    if plan.output != "ssim":
        return per_image, extra, _Kept(shift, mu=t.mu, contrast=torch.stack((t.c_num, t.c_den)))
    into = x.new_empty((int(keep.x) + int(keep.y) + 2, *made.s.shape))
    adj = _formula.adjoints(
        t, shift, k, _unit_gradient(made.s.shape, x), None, keep.x, keep.y, made, out=into
    )
    c_sums = torch.stack(
        (adj.g_c1.sum(tuple(range(2, adj.g_c1.ndim))), adj.g_c2.sum(tuple(range(2, adj.g_c2.ndim))))
    )
    return per_image, extra, _Kept(shift, adjoints=into, c_sums=c_sums)


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
    x: Tensor, y: Tensor, k: _formula.Constants, plan: Plan, keep: Optional[_Needs]
) -> tuple[Tensor, Optional[Tensor], Optional[_Kept]]:
    """Cache-sized pieces of planes: four moment maps formed, filtered and reduced in place (and
    for a loss, the adjoint maps formed while the piece is in cache)."""
    n, channels, *spatial = x.shape
    planes, nd = n * channels, len(spatial)
    xp, yp = x.reshape(planes, *spatial), y.reshape(planes, *spatial)
    shift = _sd_shift(xp[None], yp[None])[:, 0]  # (2, P, 1, ..)
    out = plan.blur.out_size(tuple(spatial))
    dims = tuple(range(1, nd + 1))
    sums = x.new_zeros(planes)
    cs_sums = x.new_zeros(planes) if plan.output == "cs" else None
    full = x.new_empty((planes, *out)) if plan.output == "map" else None
    adjoints = keep is not None and plan.output == "ssim"
    kept: dict[str, Tensor] = {}
    if keep is not None and adjoints:
        rows = int(keep.x) + int(keep.y) + 2
        kept = {"adjoints": x.new_empty((rows, planes, *out)), "c_sums": x.new_zeros((2, planes))}
        unit = _unit_gradient((n, channels, *out), x)
    elif keep is not None:
        # One tensor each, under glibc's largest mmap threshold: reused from call to call.
        kept = {"mu": x.new_empty((2, planes, *out)), "contrast": x.new_empty((2, planes, *out))}
    band = _filters.BandBlur(plan.blur, tuple(spatial))
    for p0, p1, bands in _pieces(planes, spatial, out[0]):
        sh = shift[:, p0:p1]
        for r0, r1 in bands:
            if len(bands) == 1:
                xb = _filters.reflect_pad(xp[p0:p1], plan.blur.pads)
                yb = _filters.reflect_pad(yp[p0:p1], plan.blur.pads)
                stack = band.work.take("stack", (4, *xb.shape), xb)
            else:
                rows_in = band.rows(r0, r1)
                xb = band.pad_rest(xp[p0:p1].index_select(1, rows_in))
                yb = band.pad_rest(yp[p0:p1].index_select(1, rows_in))
                stack = band.work.take("stack", (4, *xb.shape), xb)
            sd, squares = stack.tensor_split(2)
            torch.add(xb, yb, out=stack[0])
            torch.sub(xb, yb, out=stack[1])
            torch.mul(sd.sub_(sh), sd, out=squares)
            t = _formula.terms(band.filter(stack), sh, k)
            made = _formula.similarity_map(t, k)
            maps = made.s
            sums[p0:p1] += maps.sum(dims)
            if cs_sums is not None:
                cs_sums[p0:p1] += _formula.contrast(t).sum(dims)
            if full is not None:
                full[p0:p1, r0:r1] = maps
            if keep is not None and adjoints:
                into = kept["adjoints"][:, p0:p1, r0:r1]
                adj = _formula.adjoints(t, sh, k, unit, None, keep.x, keep.y, made, out=into)
                if keep.c1 or keep.c2:
                    kept["c_sums"][0, p0:p1] += adj.g_c1.sum(dims)
                    kept["c_sums"][1, p0:p1] += adj.g_c2.sum(dims)
            elif keep is not None:
                kept["mu"][:, p0:p1, r0:r1] = t.mu
                kept["contrast"][0, p0:p1, r0:r1] = t.c_num
                kept["contrast"][1, p0:p1, r0:r1] = t.c_den
    size = math.prod(out) * channels
    per_image = sums.view(n, channels).sum(1) / size
    extra: Optional[Tensor] = None
    if full is not None:
        extra = full.view(n, channels, *out)
    elif cs_sums is not None:
        extra = cs_sums.view(n, channels).sum(1) / size
    if keep is None:
        return per_image, extra, None
    images = {name: t.view(t.shape[0], n, channels, *t.shape[2:]) for name, t in kept.items()}
    return per_image, extra, _Kept(shift.view(2, n, channels, *[1] * nd), **images)


# --- the gradient ---------------------------------------------------------------------------------


def _upstream(
    g_image: Optional[Tensor], g_extra: Optional[Tensor], plan: Plan, images: Sequence[int]
) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """The loss's gradient with respect to the S map and the cs map, ``(N, C, *out)`` or
    broadcastable ``(N, 1, ..)``, from the gradients of the outputs (None where there is none);
    ``images``: the maps' shape ``(N, C, *out)``."""
    size = math.prod(images[1:])  # the per-image means are over channels and space
    per_image = [-1, *[1] * (len(images) - 1)]
    grad_map = grad_cs = None
    if g_image is not None:
        grad_map = g_image.view(per_image) / size
    if g_extra is not None and plan.output == "map":
        grad_map = g_extra if grad_map is None else grad_map + g_extra
    elif g_extra is not None and plan.output == "cs":
        grad_cs = g_extra.view(per_image) / size
    return grad_map, grad_cs


def _back_project(
    adj: _formula.Adjoints, adjoint: Callable[[Tensor], Tensor]
) -> tuple[Optional[Tensor], Optional[Tensor], Tensor, Tensor]:
    """``W^T`` of the adjoint maps, stacked into one pass: (g_x, g_y where needed, g_sq, g_cross)."""
    return _unstack(adjoint(torch.stack(_adjoint_stack(adj))), adj.g_x is not None, adj.g_y is not None)


def _unstack(
    back: Tensor, has_x: bool, has_y: bool
) -> tuple[Optional[Tensor], Optional[Tensor], Tensor, Tensor]:
    rows = iter(back.unbind(0))
    bx = next(rows) if has_x else None
    by = next(rows) if has_y else None
    return bx, by, next(rows), next(rows)


def _combine(
    back: tuple[Optional[Tensor], Optional[Tensor], Tensor, Tensor],
    xs: Tensor,
    ys: Tensor,
    out: tuple[Optional[Tensor], Optional[Tensor]] = (None, None),
) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """``grad_x = W^T g_x - 2 xs W^T g_sq + 2 ys W^T g_cross`` and the same for y (x, y swapped),
    ``xs``, ``ys`` the images less their shifts; written into ``out`` where given."""
    bx, by, sq, cross = back
    grads: list[Optional[Tensor]] = []
    for b, own, other, o in ((bx, xs, ys, out[0]), (by, ys, xs, out[1])):
        if b is None:
            grads.append(None)
            continue
        first = torch.addcmul(b, own, sq, value=-2, out=o) if o is not None else b.addcmul(own, sq, value=-2)
        grads.append(first.addcmul_(other, cross, value=2))
    return grads[0], grads[1]


def _fused_backward(
    x: Tensor,
    y: Tensor,
    k: _formula.Constants,
    kept: _Kept,
    g_image: Optional[Tensor],
    g_extra: Optional[Tensor],
    plan: Plan,
    needs: _Needs,
) -> tuple[Optional[Tensor], ...]:
    """Gradients for x, y, c1, c2 from what the fused forward kept (no autograd inside)."""
    spatial = tuple(x.shape[2:])
    images = (*x.shape[:2], *plan.blur.out_size(spatial))
    if kept.adjoints is not None:  # the adjoints of a unit gradient per image: scale them
        assert g_image is not None and kept.c_sums is not None
        scale: Optional[Tensor] = g_image.view(-1, *[1] * (len(images) - 1))
        grad_map = grad_cs = None
        c_sums = (kept.c_sums * g_image.view(-1, 1)).sum((1, 2))
    else:
        scale = None
        grad_map, grad_cs = _upstream(g_image, g_extra, plan, images)
    n, channels = x.shape[:2]
    planes, nd = n * channels, len(spatial)
    if not _on_cpu(x):  # the whole batch at once, one transposed convolution per pass
        if kept.adjoints is not None:
            adj_stack = kept.adjoints
        else:
            adj = _formula.adjoints(kept.terms, kept.shift, k, grad_map, grad_cs, needs.x, needs.y)
            adj_stack = torch.stack(_adjoint_stack(adj))
            c_sums = torch.stack((adj.g_c1.sum(), adj.g_c2.sum()))
        gx = gy = None
        if needs.x or needs.y:
            back = _unstack(_filters.conv_blur_adjoint(adj_stack, plan.blur, x), needs.x, needs.y)
            ax, ay = _own_shifts(kept.shift)
            gx, gy = _combine(back, x - ax, y - ay)
            if scale is not None:
                gx, gy = (None if g is None else g.mul_(scale) for g in (gx, gy))
        return gx, gy, (c_sums[0] if needs.c1 else None), (c_sums[1] if needs.c2 else None)
    out = images[2:]
    xp, yp = x.reshape(planes, *spatial), y.reshape(planes, *spatial)
    gx = x.new_empty((planes, *spatial)) if needs.x else None
    gy = x.new_empty((planes, *spatial)) if needs.y else None
    band = _filters.BandBlur(plan.blur, spatial)

    def planar(g: Optional[Tensor]) -> Optional[Tensor]:
        return None if g is None else g.expand(n, channels, *g.shape[2:]).reshape(planes, *g.shape[2:])

    shift = kept.shift.reshape(2, planes, *[1] * nd)
    own = _own_shifts(shift)  # a_x, a_y per plane
    scale_p = planar(scale)
    if kept.adjoints is not None:
        adj_p = kept.adjoints.reshape(kept.adjoints.shape[0], planes, *out)
    else:
        grad_map_p, grad_cs_p = planar(grad_map), planar(grad_cs)
        mu = kept.terms.mu.reshape(2, planes, *out)
        c_num, c_den = (v.reshape(planes, *out) for v in (kept.terms.c_num, kept.terms.c_den))
        c_sums = x.new_zeros(2)
    per = max(1, _CHUNK // max(1, math.prod(out)))
    for p0 in range(0, planes, per):
        p1 = min(p0 + per, planes)
        sh = shift[:, p0:p1]
        if kept.adjoints is not None:
            stacked = adj_p[:, p0:p1]
        else:
            t = _formula.Terms(mu[:, p0:p1], c_num[p0:p1], c_den[p0:p1])
            grad_map_c = None if grad_map_p is None else grad_map_p[p0:p1]
            grad_cs_c = None if grad_cs_p is None else grad_cs_p[p0:p1]
            adj = _formula.adjoints(t, sh, k, grad_map_c, grad_cs_c, needs.x, needs.y)
            stacked = torch.stack(_adjoint_stack(adj))
            c_sums += torch.stack((adj.g_c1.sum(), adj.g_c2.sum()))
        if needs.x or needs.y:
            targets = (None if gx is None else gx[p0:p1], None if gy is None else gy[p0:p1])
            back = _unstack(band.adjoint(stacked), needs.x, needs.y)
            _combine(back, xp[p0:p1] - own[0][p0:p1], yp[p0:p1] - own[1][p0:p1], targets)
            if scale_p is not None:
                for g in targets:
                    if g is not None:
                        g.mul_(scale_p[p0:p1])
    return (
        None if gx is None else gx.view(x.shape),
        None if gy is None else gy.view(y.shape),
        c_sums[0] if needs.c1 else None,
        c_sums[1] if needs.c2 else None,
    )


def _traced_backward(
    x: Tensor,
    y: Tensor,
    c1: Scalar,
    c2: Scalar,
    grad_map: Optional[Tensor],
    grad_cs: Optional[Tensor],
    plan: Plan,
    needs: _Needs,
) -> tuple[Optional[Tensor], ...]:
    """The same gradients in plain differentiable ops, recomputed from the inputs: for double
    backward, and for the backward under torch.func transforms."""
    k = _constants(c1, c2, plan, x)
    t, shift = _traced_terms(x, y, k, plan)
    adj = _formula.adjoints(t, shift, k, grad_map, grad_cs, needs.x, needs.y)
    gx = gy = None
    if needs.x or needs.y:
        ax, ay = _own_shifts(shift)
        gx, gy = _combine(_back_project(adj, lambda g: _filters.blur_adjoint(g, plan.blur)), x - ax, y - ay)
    return gx, gy, (adj.g_c1.sum() if needs.c1 else None), (adj.g_c2.sum() if needs.c2 else None)


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
        per_image, extra, kept = _fused(x, y, c1, c2, plan, keep=_Needs.of(x, y, c1, c2))
        assert kept is not None
        return (per_image, extra if extra is not None else x.new_empty(0), *kept.tensors(plan))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        x, y, c1, c2, plan = inputs
        ctx.mark_non_differentiable(*output[2:])
        ctx.set_materialize_grads(False)
        ctx.plan = plan
        ctx.scalars = (c1, c2)
        # What the forward kept is for the gradients it saw asked for (under a torch.func
        # transform it sees none, and the backward recomputes).
        ctx.fused = _Needs.of(x, y, c1, c2) == _Needs(*ctx.needs_input_grad[:4])
        ctx.save_for_backward(x, y, *output[2:])
        ctx.save_for_forward(x, y)

    @staticmethod
    def backward(
        ctx: Any, g_image: Optional[Tensor], g_extra: Optional[Tensor], *_: Any
    ) -> tuple[Optional[Tensor], ...]:
        x, y, *kept_tensors = ctx.saved_tensors
        c1, c2 = ctx.scalars
        plan: Plan = ctx.plan
        needs = _Needs(*(bool(v) for v in ctx.needs_input_grad[:4]))
        if g_image is None and (g_extra is None or plan.output == "ssim"):
            return None, None, None, None, None
        if torch.is_grad_enabled() or traced() or not ctx.fused:
            images = (*x.shape[:2], *plan.blur.out_size(tuple(x.shape[2:])))
            grad_map, grad_cs = _upstream(g_image, g_extra, plan, images)
            grads = _traced_backward(x, y, c1, c2, grad_map, grad_cs, plan, needs)
        else:
            kept = _Kept.of(plan, kept_tensors)
            grads = _fused_backward(x, y, _constants(c1, c2, plan, x), kept, g_image, g_extra, plan, needs)
        return grads[0], grads[1], _sum_to(grads[2], c1), _sum_to(grads[3], c2), None

    @staticmethod
    def jvp(
        ctx: Any, tx: Optional[Tensor], ty: Optional[Tensor], tc1: Any, tc2: Any, _: Any
    ) -> tuple[Any, ...]:
        """Forward mode through the traced path: ``torch.func.jvp`` under functorch, and under
        plain forward AD (which does not nest) reverse mode transposed: ``J v = d/du <J^T u, v>``."""
        x, y = ctx.saved_tensors[:2]
        plan: Plan = ctx.plan
        primals = (x, y, *ctx.scalars)
        tangents = (tx, ty, tc1, tc2)
        used = [i for i, t in enumerate(tangents) if isinstance(t, Tensor)]

        def traced(*args: Any) -> list[Tensor]:
            full = list(primals)
            for i, arg in zip(used, args):
                full[i] = arg
            per_image, extra = _traced_similarity(*full, plan)  # type: ignore[call-arg]
            return [per_image] + ([extra] if extra is not None else [])

        inputs: list[Tensor] = [primals[i] for i in used]
        vectors: list[Optional[Tensor]] = [tangents[i] for i in used]
        if traced_transforms_active():
            d = list(torch.func.jvp(traced, tuple(inputs), tuple(vectors))[1])
        else:
            with torch.enable_grad():
                leaves = [p.detach().requires_grad_() for p in inputs]
                outputs = traced(*leaves)
                probes = [torch.zeros_like(o, requires_grad=True) for o in outputs]
                vjps = torch.autograd.grad(outputs, leaves, probes, create_graph=True, allow_unused=True)
                dot = x.new_zeros(())
                for v, t in zip(vjps, vectors):
                    if v is not None and t is not None:
                        dot = dot + (v * t).sum()
                d = [
                    g if g is not None else torch.zeros_like(o)
                    for g, o in zip(torch.autograd.grad(dot, probes, allow_unused=True), outputs)
                ]
        return (d[0], d[1] if len(d) > 1 else x.new_empty(0), *[None] * len(_Kept.layout(plan)))

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
        per_image, extra, *kept = _apply(
            xb.reshape(-1, *xb.shape[2:]), yb.reshape(-1, *yb.shape[2:]), c1, c2, plan
        )

        def split(t: Tensor, dim: int) -> Tensor:
            return t.reshape(*t.shape[:dim], size, t.shape[dim] // size, *t.shape[dim + 1 :])

        outputs = (
            split(per_image, 0),
            split(extra, 0) if extra.numel() else extra.new_empty(size, 0),
            *(split(t, 1) for t in kept),  # every kept tensor is (S, N, C, ...)
        )
        return outputs, (0, 0, *[1] * len(kept))


def _apply(x: Tensor, y: Tensor, c1: Scalar, c2: Scalar, plan: Plan) -> tuple[Tensor, ...]:
    out: tuple[Tensor, ...] = _Similarity.apply(x, y, c1, c2, plan)  # type: ignore[no-untyped-call]
    return out
