"""The SSIM formula on the blurred moments, and its derivative: the one copy of both.

The moments are taken of the sum and the difference of the images, ``s = x + y`` and
``d = x - y``, each less a per-plane shift ``a_s``, ``a_d`` (any constant would do; the means keep
the variances, differences of squares, well conditioned). With ``W`` the window (``_filters``)::

    m = W(s', d', s'^2, d'^2)            s' = s - a_s, d' = d - a_d
    mu_s = m[0] + a_s,  mu_d = m[1] + a_d                     (mu_s = mu_x + mu_y, mu_d = mu_x - mu_y)
    v_s = max(m[2] - m[0]^2, 0),  v_d = max(m[3] - m[1]^2, 0)   (v_s = var_x + var_y + 2 cov, v_d = ... - 2 cov)
    L_den = 2 c1 + mu_s^2 + mu_d^2,  L_num = L_den - 2 mu_d^2    (twice 2 mu_x mu_y + c1 and mu_x^2 + mu_y^2 + c1)
    C_den = 2 c2 + v_s + v_d,        C_num = C_den - 2 v_d       (twice 2 cov + c2 and var_x + var_y + c2)
    S = L_num C_num / (L_den C_den + 4 eps)                      cs = C_num / C_den

which is SSIM's ``(2 mu_x mu_y + c1)(2 cov + c2) / ((mu_x^2 + mu_y^2 + c1)(var_x + var_y + c2))``
term for term (``eps`` is 0 for SSIM, torchmetrics' epsilon for UQI). In this form the bounds hold
in floating point too: ``|L_num| <= L_den`` and ``|C_num| <= C_den``, so ``|S|, |cs| <= 1``, and
equal images (``d = 0``) give exactly 1. The clamps guard rounding only: their derivative is taken
as the identity (straight through), so they never zero a gradient where the formula is
differentiable.

Every function here is plain tensor ops: it runs as is under autograd, ``torch.func`` and
``torch.compile``, on any device. ``c1``, ``c2`` and ``eps`` are 0-d tensors.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from torch import Tensor


class Terms(NamedTuple):
    """What the forward keeps for the backward: the means and the contrast factors of S."""

    mu: Tensor  # (2, ...): mu_s, mu_d
    c_num: Tensor
    c_den: Tensor


def terms(m: Tensor, shift: Tensor, c2: Tensor, straight_through: bool = False) -> Terms:
    """The means and contrast factors from the moments ``m`` ``(4, ...)``; ``shift`` ``(2, ...)``."""
    var = m[2:4].addcmul(m[:2], m[:2], value=-1)
    clamped = var.clamp_min(0)
    var = var + (clamped - var).detach() if straight_through else clamped
    c_den = (2 * c2).add(var[0]).add(var[1])
    return Terms(mu=m[:2] + shift, c_num=c_den.add(var[1], alpha=-2), c_den=c_den)


def luminance(mu: Tensor, c1: Tensor) -> tuple[Tensor, Tensor]:
    """``(L_num, L_den)`` from the means ``mu`` ``(2, ...)``."""
    l_den = (2 * c1).addcmul(mu[0], mu[0]).addcmul(mu[1], mu[1])
    return l_den.addcmul(mu[1], mu[1], value=-2), l_den


def _denominator(l_den: Tensor, c_den: Tensor, eps: Optional[Tensor]) -> Tensor:
    return l_den * c_den if eps is None else (4 * eps).addcmul(l_den, c_den)


def similarity(t: Terms, c1: Tensor, eps: Optional[Tensor]) -> Tensor:
    """The SSIM (or UQI) map."""
    l_num, l_den = luminance(t.mu, c1)
    return (l_num * t.c_num).div_(_denominator(l_den, t.c_den, eps))


def contrast(t: Terms) -> Tensor:
    """The contrast-sensitivity map ``cs``."""
    return t.c_num / t.c_den


class Adjoints(NamedTuple):
    """The loss's gradient through the formula, in the form the backward applies ``W^T`` to.

    ``grad_x = W^T(g_x) + (x - a_x) W^T(g_sq) + (y - a_y) W^T(g_cross)`` and
    ``grad_y = W^T(g_y) + (y - a_y) W^T(g_sq) + (x - a_x) W^T(g_cross)``, with
    ``a_x = (a_s + a_d) / 2``, ``a_y = (a_s - a_d) / 2``; ``g_c1``, ``g_c2`` are maps to sum.
    """

    g_x: Optional[Tensor]
    g_y: Optional[Tensor]
    g_sq: Tensor
    g_cross: Tensor
    g_c1: Optional[Tensor]
    g_c2: Optional[Tensor]


def adjoints(
    t: Terms,
    shift: Tensor,
    c1: Tensor,
    eps: Optional[Tensor],
    grad_map: Optional[Tensor],
    grad_cs: Optional[Tensor],
    needs: tuple[bool, bool, bool, bool],
) -> Adjoints:
    """The moments' gradient from the loss's gradient with respect to the S map and the cs map.

    ``needs``: which of x, y, c1, c2 need a gradient.
    """
    need_x, need_y, need_c1, need_c2 = needs
    l_num, l_den = luminance(t.mu, c1)
    # 4 dS/dL_num = a, 4 dS/dL_den = b, 4 dS/dC_num = c, 4 dS/dC_den = d (the 4 of grad_x folded in).
    if grad_map is not None:
        q = _denominator(l_den, t.c_den, eps)
        u = (4 * grad_map) / q
        v = u * (l_num * t.c_num / q)  # grad S / Q, with S exactly as the forward has it
        a, b = u * t.c_num, -v * t.c_den
        c, d = u * l_num, -v * l_den
    else:
        a = b = c = d = t.c_den.new_zeros(())
    if grad_cs is not None:  # dcs/dC_num = 1/C_den, dcs/dC_den = -cs/C_den
        h = (4 * grad_cs) / t.c_den
        c = c + h
        d = d - h * t.c_num / t.c_den
    # L depends on mu_s, mu_d; C on v_s = m2 - m0^2 and v_d = m3 - m1^2; m0 = mu_s - a_s, m1 = mu_d - a_d.
    ab, ba, cd, dc = a + b, b - a, c + d, d - c
    g_m0 = (t.mu[0] * ab).addcmul_(t.mu[0] - shift[0], cd, value=-1).mul_(0.5)
    g_m1 = (t.mu[1] * ba).addcmul_(t.mu[1] - shift[1], dc, value=-1).mul_(0.5)
    return Adjoints(
        g_x=g_m0 + g_m1 if need_x else None,
        g_y=g_m0 - g_m1 if need_y else None,
        g_sq=d,
        g_cross=c,
        g_c1=ab / 2 if need_c1 else None,
        g_c2=cd / 2 if need_c2 else None,
    )
