"""SSIM in plain differentiable tensor ops (``_filters.blur``, ``_formula``): any device, 2-D and
3-D, float32 and float64, under autograd, every ``torch.func`` transform, forward-mode AD and
``torch.compile`` (inductor fuses the taps).

The traced route of :mod:`ssim_patch.backends._op` (autograd through :func:`similarity`) while a
trace or a transform is active. :func:`gradients` is the same derivative written out in these
ops, recomputed from the inputs: the double backward and the backward under a transform of every
backend, and this backend's own backward (``SSIM_PATCH_BACKEND=traced``: plain ops for the forward,
nothing kept, the backward recomputed).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ssim_patch import _filters, _formula
from ssim_patch.backends import _algebra
from ssim_patch.backends._dtypes import cast, constants
from ssim_patch.backends._protocol import Backend, Grads, Kept, Needs, Plan, Scalar


def terms(x: Tensor, y: Tensor, k: _formula.Constants, plan: Plan) -> tuple[_formula.Terms, Tensor]:
    """The formula's terms and the shifts ``(2, N, C, 1, ..)``, differentiable."""
    shift = _algebra.sd_shift(x, y).detach()
    sd = torch.stack((x + y, x - y)) - shift
    m = _filters.blur(torch.cat((sd, sd * sd)), plan.blur)
    return _formula.terms(m, shift, k, straight_through=True), shift


def similarity(x: Tensor, y: Tensor, c1: Scalar, c2: Scalar, plan: Plan) -> tuple[Tensor, Optional[Tensor]]:
    """Per-image mean and the extra output, differentiable in x, y, c1, c2."""
    k = constants(c1, c2, plan, x)
    t, _ = terms(x, y, k, plan)
    return _algebra.finish(_formula.similarity(t, k), t, plan)


def gradients(
    x: Tensor,
    y: Tensor,
    k: _formula.Constants,
    grad_map: Optional[Tensor],
    grad_cs: Optional[Tensor],
    plan: Plan,
    needs: Needs,
) -> Grads:
    """Gradients for x, y, c1, c2 in plain differentiable ops, recomputed from the inputs, from
    the loss's gradient with respect to the maps (``_algebra.upstream``)."""
    t, shift = terms(x, y, k, plan)
    adj = _formula.adjoints(t, shift, k, grad_map, grad_cs, needs.x, needs.y)
    gx = gy = None
    if needs.x or needs.y:
        back = _filters.blur_adjoint(torch.stack(_algebra.adjoint_stack(adj)), plan.blur)
        ax, ay = _algebra.own_shifts(shift)
        gx, gy = _algebra.combine(_algebra.unstack(back, needs.x, needs.y), x - ax, y - ay)
    return gx, gy, (adj.g_c1.sum() if needs.c1 else None), (adj.g_c2.sum() if needs.c2 else None)


def recompute(
    x: Tensor,
    y: Tensor,
    c1: Scalar,
    c2: Scalar,
    g_image: Optional[Tensor],
    g_extra: Optional[Tensor],
    plan: Plan,
    needs: Needs,
) -> Grads:
    """:func:`gradients` from the outputs' gradients, recomputed from the images as they came
    (cast as this backend reads them; image gradients back in their dtype): the double backward
    and the backward under a transform of every backend and of the custom op."""
    a, b = cast(x, y, BACKEND)
    images = (*x.shape[:2], *plan.blur.out_size(tuple(x.shape[2:])))
    grad_map, grad_cs = _algebra.upstream(g_image, g_extra, plan, images)
    gx, gy, gc1, gc2 = gradients(a, b, constants(c1, c2, plan, a), grad_map, grad_cs, plan, needs)
    return (None if gx is None else gx.to(x.dtype)), (None if gy is None else gy.to(y.dtype)), gc1, gc2


class TracedBackend:
    """Plain tensor ops (see the module's docstring)."""

    name = "traced"
    reads_reduced_precision = False

    def unsupported(self, x: Tensor, plan: Plan) -> Optional[str]:
        del x, plan
        return None

    def forward(
        self, x: Tensor, y: Tensor, k: _formula.Constants, plan: Plan, keep: Optional[Needs]
    ) -> tuple[Tensor, Optional[Tensor], Optional[Kept]]:
        t, _ = terms(x, y, k, plan)
        per_image, extra = _algebra.finish(_formula.similarity(t, k), t, plan)
        return per_image, extra, (None if keep is None else ())

    def kept_like(self, x: Tensor, plan: Plan, keep: Needs) -> Kept:
        del x, plan, keep
        return ()

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
        del kept
        images = (*x.shape[:2], *plan.blur.out_size(tuple(x.shape[2:])))
        grad_map, grad_cs = _algebra.upstream(g_image, g_extra, plan, images)
        return gradients(x, y, k, grad_map, grad_cs, plan, needs)


BACKEND: Backend = TracedBackend()  # mypy checks it against the protocol
