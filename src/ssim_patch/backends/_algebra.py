"""The algebra every backend shares around ``_formula``: the per-plane shifts, the outputs from
the map, the loss's gradient with respect to the maps, and the image gradients recombined from
``W^T`` of the adjoint maps. Written once; plain tensor ops, usable with or without autograd.

The image gradients (``_formula.Adjoints``), with ``xs = x - a_x``, ``ys = y - a_y``::

    grad_x = W^T g_x + 2 xs W^T g_diff + 2 (ys - xs) W^T g_cross
    grad_y = W^T g_y + 2 ys W^T g_diff + 2 (xs - ys) W^T g_cross

``g_diff = g_cross - g_sq``: for identical images every term is exactly 0 (see :func:`combine`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ssim_patch import _formula
from ssim_patch.backends import _dtypes
from ssim_patch.backends._dtypes import compute_dtype
from ssim_patch.backends._protocol import Kept, Needs, Plan

#: ``W^T`` of the adjoint stack, unstacked: (g_x where needed, g_y where needed, g_diff, g_cross).
Back = tuple[Optional[Tensor], Optional[Tensor], Tensor, Tensor]


def image_dims(t: Tensor) -> tuple[int, ...]:
    """Every dim of ``t`` but the first (the images)."""
    return tuple(range(1, t.ndim))


def sd_shift(x: Tensor, y: Tensor) -> Tensor:
    """The shifts ``(2, N, C, 1, ..)`` of s = x + y and d = x - y: the per-plane means."""
    dims = tuple(range(2, x.ndim))
    mx, my = x.mean(dims, keepdim=True), y.mean(dims, keepdim=True)
    return torch.stack((mx + my, mx - my))


def own_shifts(shift: Tensor) -> tuple[Tensor, Tensor]:
    """The shifts of x and y that go with ``shift`` ``(2, ...)``: (a_s + a_d) / 2, (a_s - a_d) / 2."""
    a_s, a_d = shift.unbind(0)
    return (a_s + a_d) / 2, (a_s - a_d) / 2


def plus_minus(a: Tensor, b: Tensor) -> Tensor:
    """``(a + b, a - b)`` stacked, in one op: ``a + (+-1) b``, exactly the sum and the difference
    (a product by 1 or -1 is exact); ``a``, ``b`` of one shape; no autograd."""
    if _dtypes.keeps(a):
        signs = _dtypes.kept((1.0, -1.0), a)
    else:  # no host-to-device copy (CUDA graph capture)
        signs = torch.ones(2, dtype=a.dtype, device=a.device)
        signs[1].fill_(-1.0)
    return torch.addcmul(a, signs.view(2, *[1] * a.ndim), b)


def shifted(x: Tensor, y: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
    """``x - a_x``, ``y - a_y`` with :func:`own_shifts`' numbers, in fewer launches; no autograd."""
    own = plus_minus(*shift.unbind(0)).div_(2)
    return x - own[0], y - own[1]


def one_shifted(x: Tensor, y: Tensor, shift: Tensor, for_x: bool) -> tuple[Tensor, Tensor]:
    """For a backward that needs one image's gradient: that image less its shift (the numbers of
    :func:`shifted`), and the other's less its own, ``ys - xs`` (``for_x``) or ``xs - ys``, taken
    as ``+-(y - x) + a_d``: exactly 0 for identical images (4 ops instead of 5); no autograd."""
    a_s, a_d = shift.unbind(0)
    if for_x:  # x - (a_s + a_d) / 2, the halving exact
        return torch.sub(x, torch.add(a_s, a_d), alpha=0.5), torch.sub(y, x).add_(a_d)
    return torch.sub(y, torch.sub(a_s, a_d), alpha=0.5), torch.sub(x, y).sub_(a_d)


def finish(maps: Tensor, t: _formula.Terms, plan: Plan) -> tuple[Tensor, Optional[Tensor]]:
    """Per-image mean of the ``(N, C, *out)`` map, and what ``plan.output`` asks for."""
    per_image = maps.mean(image_dims(maps))
    if plan.output == "map":
        return per_image, maps
    if plan.output == "cs":
        cs = _formula.contrast(t)
        return per_image, cs.mean(image_dims(cs))
    return per_image, None


def unit_gradient(images: Sequence[int], like: Tensor, factor: float = 1.0) -> Tensor:
    """The S map's gradient for a loss that is the sum of the per-image means, times ``factor``
    (a power of 2: exact); ``images``: the map's shape ``(N, C, *out)``; a kept tensor where the
    call may keep it (:func:`_dtypes.keeps`)."""
    value = 1.0 / math.prod(images[1:]) * factor
    if _dtypes.keeps(like):
        return _dtypes.kept(value, like)
    return torch.full((), value, dtype=like.dtype, device=like.device)


def upstream(
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


def adjoint_stack(adj: _formula.Adjoints) -> list[Tensor]:
    """The maps ``W^T`` is applied to, of one shape: (g_x, g_y where needed, g_diff, g_cross)."""
    maps = [g for g in (adj.g_x, adj.g_y) if g is not None] + [adj.g_diff, adj.g_cross]
    if all(g.shape == maps[0].shape for g in maps):
        return maps
    shape = torch.broadcast_shapes(*(g.shape for g in maps))  # type: ignore[no-untyped-call]
    return [g if g.shape == shape else g.expand(shape) for g in maps]


def unstack(back: Tensor, has_x: bool, has_y: bool) -> Back:
    """``W^T`` of a stacked :func:`adjoint_stack`, split into its rows."""
    rows = iter(back.unbind(0))
    bx = next(rows) if has_x else None
    by = next(rows) if has_y else None
    return bx, by, next(rows), next(rows)


def combine(
    back: Back,
    xs: Tensor,
    ys: Tensor,
    out: tuple[Optional[Tensor], Optional[Tensor]] = (None, None),
    in_place: bool = False,
    difference: Optional[Tensor] = None,
) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """The image gradients from ``W^T`` of the adjoint maps, ``xs``, ``ys`` the images less their
    shifts, in the form that is exactly 0 for identical images (``ys - xs`` is 0, and so are
    ``g_x`` and ``g_diff``, hence ``W^T`` of them, term by term)::

        grad_x = W^T g_x + 2 (ys - xs) W^T g_cross + 2 xs W^T g_diff

    and the same for y (x, y swapped). (``- 2 xs W^T g_sq + 2 ys W^T g_cross`` would leave the
    rounding residue of the first product; ``W^T g_sq - W^T g_cross`` the rounding of two equal
    rows that a matrix product sums apart, as MKL does on AMD EPYC.) Written into ``out`` where given;
    ``in_place``: ``back`` is scratch and may be overwritten (no autograd through it);
    ``difference``: where one image's gradient is asked, ``other - own`` for it (scratch too:
    :func:`one_shifted`)."""
    bx, by, diff, cross = back
    if bx is None and by is None:
        return None, None
    grads: list[Optional[Tensor]] = []
    for b, own, other, o in ((bx, xs, ys, out[0]), (by, ys, xs, out[1])):
        if b is None:
            grads.append(None)
        elif in_place:
            if difference is not None:
                g = difference if o is None else o.copy_(difference)
            else:
                g = torch.sub(other, own, out=o) if o is not None else other - own
            # b + 2 g cross: one rounding of g cross, as a product then a sum (the 2 is exact)
            grads.append(torch.addcmul(b, g, cross, value=2, out=g).addcmul_(own, diff, value=2))
        else:
            g = b + 2 * (other - own if difference is None else difference) * cross + 2 * own * diff
            grads.append(g if o is None else o.copy_(g))
    return grads[0], grads[1]


def combine_shifted(
    back: Back, x: Tensor, y: Tensor, shift: Tensor, need_x: bool, need_y: bool
) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """:func:`combine` in place (``back`` is scratch) from the images and their kept ``shift``
    ``(2, ...)``, for a whole-batch backward that needs at least one image's gradient: both shifted
    images where both are asked (:func:`shifted`), else the one's and its difference
    (:func:`one_shifted`: an op fewer); no autograd."""
    if need_x and need_y:
        return combine(back, *shifted(x, y, shift), in_place=True)
    own, diff = one_shifted(x, y, shift, need_x)
    return combine(back, own, own, in_place=True, difference=diff)


# --- what the moment-based forwards (cpu, conv) keep ----------------------------------------------


def adjoint_rows(keep: Needs) -> int:
    """How many adjoint maps a loss's backward applies ``W^T`` to: g_x, g_y where needed, g_diff, g_cross."""
    return int(keep.x) + int(keep.y) + 2


@dataclass
class TermsKept:
    """What the cpu and conv forwards keep for their backward; every tensor is ``(S, N, C, ...)``.

    For a per-image SSIM (the loss case) the forward already computes the adjoint maps for a unit
    upstream gradient per image, while its pieces are in cache: ``adjoints`` (g_x if x needs a
    gradient, g_y if y does, g_diff, g_cross) and ``c_sums`` ``(2, N, C)`` (the per-plane sums of
    g_c1, g_c2); the backward scales them by the upstream gradient and applies ``W^T``. For the
    other outputs it keeps the terms (``mu``; ``contrast``: C_num, C_den) and the backward forms
    the adjoints.
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

    def tensors(self, plan: Plan) -> Kept:
        return tuple(getattr(self, name) for name in self.layout(plan))

    @classmethod
    def of(cls, plan: Plan, tensors: Sequence[Tensor]) -> TermsKept:
        return cls(**dict(zip(cls.layout(plan), tensors)))

    @classmethod
    def like(cls, x: Tensor, plan: Plan, keep: Needs) -> Kept:
        """Empty tensors shaped and typed as what the forward keeps for images ``x``."""
        n, channels, *spatial = x.shape
        dtype = compute_dtype(x.dtype)
        out = plan.blur.out_size(tuple(spatial))
        shift = x.new_empty((2, n, channels, *[1] * len(spatial)), dtype=dtype)
        if plan.output == "ssim":
            adjoints = x.new_empty((adjoint_rows(keep), n, channels, *out), dtype=dtype)
            return shift, adjoints, x.new_empty((2, n, channels), dtype=dtype)
        terms = x.new_empty((2, n, channels, *out), dtype=dtype)
        return shift, terms, x.new_empty((2, n, channels, *out), dtype=dtype)

    @property
    def terms(self) -> _formula.Terms:
        assert self.mu is not None and self.contrast is not None
        return _formula.Terms(self.mu, self.contrast[0], self.contrast[1])


class Upstream(NamedTuple):
    """The outputs' gradients in the form a backward from :class:`TermsKept` uses: kept adjoints
    are multiplied by ``scale`` ``(N, 1, ..)`` (their c sums already scaled: ``c_sums`` ``(2,)``);
    kept terms take ``grad_map`` and ``grad_cs`` (see :func:`upstream`)."""

    scale: Optional[Tensor]
    c_sums: Optional[Tensor]
    grad_map: Optional[Tensor]
    grad_cs: Optional[Tensor]


def scaled_upstream(
    kept: TermsKept, g_image: Optional[Tensor], g_extra: Optional[Tensor], plan: Plan, x: Tensor, needs: Needs
) -> Upstream:
    """:class:`Upstream` for images ``x`` from the outputs' gradients; the c sums scaled only where
    ``needs`` asks for c1's or c2's gradient (else None: two launches spared)."""
    images = (*x.shape[:2], *plan.blur.out_size(tuple(x.shape[2:])))
    if kept.adjoints is not None:  # the adjoints of a unit gradient per image: scale them
        assert g_image is not None and kept.c_sums is not None
        scale = g_image.view(-1, *[1] * (len(images) - 1))
        c_sums = (kept.c_sums * g_image.view(-1, 1)).sum((1, 2)) if needs.c1 or needs.c2 else None
        return Upstream(scale, c_sums, None, None)
    grad_map, grad_cs = upstream(g_image, g_extra, plan, images)
    return Upstream(None, None, grad_map, grad_cs)


def stacked_adjoints(
    held: TermsKept, up: Upstream, k: _formula.Constants, needs: Needs
) -> tuple[Tensor, Optional[Tensor]]:
    """The whole-batch backward's maps for ``W^T`` (:func:`adjoint_stack`) and the sums of the
    constants' gradients (None where not needed): kept by the forward, or made now from the kept
    terms."""
    if held.adjoints is not None:
        return held.adjoints, up.c_sums
    adj = _formula.adjoints(held.terms, held.shift, k, up.grad_map, up.grad_cs, needs.x, needs.y)
    return torch.stack(adjoint_stack(adj)), torch.stack((adj.g_c1.sum(), adj.g_c2.sum()))


def constant_grads(c_sums: Optional[Tensor], needs: Needs) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """The gradients of c1 and c2 from their sums ``(2,)``, where ``needs`` asks for them."""
    if not (needs.c1 or needs.c2):
        return None, None
    assert c_sums is not None
    return (c_sums[0] if needs.c1 else None), (c_sums[1] if needs.c2 else None)
