"""The SSIM formula on the blurred moments, and its derivative: the one copy of both.

The moments are taken of the sum and the difference of the images, ``s = x + y`` and
``d = x - y``, each less a per-plane shift ``a_s``, ``a_d`` (any constant would do; the means keep
the variances, differences of squares, well conditioned). With ``W`` the window (``_filters``)::

    m = W(s', d', s'^2, d'^2)            s' = s - a_s, d' = d - a_d
    mu_s = m[0] + a_s,  mu_d = m[1] + a_d                        (mu_x + mu_y, mu_x - mu_y)
    v_s = max(m[2] - m[0]^2, 0),  v_d = max(m[3] - m[1]^2, 0)    (var_x + var_y +- 2 cov)
    L_den = 2 c1 + mu_s^2 + mu_d^2,  L_num = L_den - 2 mu_d^2    (2 (mu_x^2 + mu_y^2 + c1), 2 (2 mu_x mu_y + c1))
    C_den = 2 c2 + v_s + v_d,        C_num = C_den - 2 v_d       (2 (var_x + var_y + c2), 2 (2 cov + c2))
    S = L_num C_num / (L_den C_den + 4 eps)                      cs = C_num / C_den

which is SSIM's ``(2 mu_x mu_y + c1)(2 cov + c2) / ((mu_x^2 + mu_y^2 + c1)(var_x + var_y + c2))``
term for term (``eps`` is 0 for SSIM, torchmetrics' epsilon for UQI). In this form the bounds hold
in floating point too: ``|L_num| <= L_den`` and ``|C_num| <= C_den``, so ``|S|, |cs| <= 1``, and
equal images (``d = 0``) give exactly 1 and a gradient of exactly 0. The clamps guard rounding
only: their derivative is taken as the identity (straight through), so they never zero a gradient
where the formula is differentiable.

UQI's flat windows. UQI has no ``c1``, ``c2``: where both images are flat it is ``0 / (4 eps)``, and
rounding of the moments (a few ulps of the second moment about the shift) would be the answer
(up to 0.06 in float32 at 0.7, 1.0 at 100, in float64 too). So a window is flat, both its variances
0, when ``v_s + v_d <= flat * (m[2] + m[3])`` (after the clamp), ``flat = FLAT_EPS * eps`` of the
compute dtype: rounding of flat windows measures below 12 eps up to 31x31 windows, 22 eps at
151x151. Its derivative is 0 there, not straight through: a variance is at its minimum (0) in a
flat window, so the exact derivative of the map is 0, while the computed one is rounding noise
times ``1 / eps``. ``adjoints`` gives such a window (``C_den = 0``) no gradient either.

Every function here is plain tensor ops: it runs as is under autograd, ``torch.func`` and
``torch.compile``, on any device, in any layout (everything broadcasts). A caller with no autograd
may pass ``buffers`` (:data:`Buffers`) to have the map-sized results written into tensors it
reuses: the same ops, the same numbers, no allocation.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Union

import torch
from torch import Tensor

#: UQI's flat-window tolerance, in units of the compute dtype's machine epsilon (see :func:`terms`).
FLAT_EPS = 32


class Constants(NamedTuple):
    """``2 c1``, ``2 c2``, ``4 eps`` (None for SSIM) and the flat-window tolerance ``flat`` (UQI's;
    None for SSIM), as 0-d tensors; ``signs``, ``(-1, 1)``, for the pairs ``(p - q, p + q)`` that
    one ``addcmul`` makes; ``c2_zero``: ``c2`` is the number 0 (UQI), so ``C_den`` needs no add."""

    two_c1: Tensor
    two_c2: Tensor
    four_eps: Optional[Tensor]
    flat: Optional[Tensor] = None
    signs: Optional[Tensor] = None
    c2_zero: bool = False


def constants(
    c1: Union[float, Tensor],
    c2: Union[float, Tensor],
    eps: Optional[float],
    like: Tensor,
    signs: Optional[Tensor] = None,
) -> Constants:
    """The constants in ``like``'s dtype and device (numbers become 0-d tensors, one fill each);
    ``signs`` where the caller has them (else :func:`adjoints` makes them where it needs them).

    With ``eps`` (UQI), also ``flat = FLAT_EPS * finfo(like.dtype).eps``, the compute dtype's."""

    def scaled(value: Union[float, Tensor], factor: float) -> Tensor:
        if isinstance(value, Tensor):
            return value * factor
        return torch.full((), value * factor, dtype=like.dtype, device=like.device)

    c2_zero = not isinstance(c2, Tensor) and c2 == 0
    if eps is None:
        return Constants(scaled(c1, 2), scaled(c2, 2), None, None, signs, c2_zero)
    flat = scaled(torch.finfo(like.dtype).eps, FLAT_EPS)
    return Constants(scaled(c1, 2), scaled(c2, 2), scaled(eps, 4), flat, signs, c2_zero)


def _signs(k: Constants, like: Tensor) -> Tensor:
    """``k.signs`` shaped ``(2, 1, ...)`` to pair with maps like ``like`` ``(2, ...)``; made where
    ``k`` has none (two fills: no host-to-device copy, which CUDA graph capture forbids)."""
    signs = k.signs
    if signs is None:
        signs = torch.ones(2, dtype=like.dtype, device=like.device)
        signs[0].fill_(-1.0)
    return signs.view(2, *[1] * (like.ndim - 1))


class Terms(NamedTuple):
    """What the forward keeps for the backward: the means and the contrast factors of S."""

    mu: Tensor  # (2, ...): mu_s, mu_d
    c_num: Tensor
    c_den: Tensor
    means: Optional[Tensor] = None  # (2, ...): mu less the shift, where at hand
    flat: Optional[Tensor] = None  # UQI's flat windows, where at hand (else C_den == 0 tells)


#: Where a map-sized result goes: ``buffers(name, like)`` is a tensor of ``like``'s shape and
#: dtype, written over (nothing else may hold the one named ``name`` while a function here runs), or
#: None for a fresh tensor. The default, :func:`fresh`, is the only one autograd and ``torch.func``
#: may see; the CPU backend passes reused scratch (fresh allocations cost page faults on CPU).
Buffers = Callable[[str, Tensor], Optional[Tensor]]


def fresh(name: str, like: Tensor) -> None:
    """Every result a new tensor: the default :data:`Buffers`."""
    del name, like


def terms(
    m: Tensor, shift: Tensor, k: Constants, straight_through: bool = False, buffers: Buffers = fresh
) -> Terms:
    """The means and contrast factors from the moments ``m`` ``(4, ...)``; ``shift`` ``(2, ...)``."""
    means, squares = m.tensor_split(2)
    # Not addcmul: a fused multiply-add would keep the rounding error of means^2, so a window of
    # one tap (or a flat image) would get a variance of rounding noise instead of exactly 0.
    # In a buffer, means^2, the variances and their clamp are one tensor written over, and the
    # means go there last (the fewer buffers a call touches, the more of them stay in cache).
    reused = buffers("var, then mu", means)
    if reused is None:
        var = torch.sub(squares, torch.mul(means, means))
        clamped = torch.clamp_min(var, 0)
        var = var + (clamped - var).detach() if straight_through else clamped
    else:
        var = torch.sub(squares, torch.mul(means, means, out=reused), out=reused)
        clamped = var = torch.clamp_min(var, 0, out=reused)
    flat = None
    if k.flat is not None:  # UQI: a flat window has no variance, and none to differentiate
        flat = clamped.sum(0) <= k.flat * squares.sum(0)
        var = var.masked_fill(flat, 0) if reused is None else var.masked_fill_(flat, 0)
    v_s, v_d = var.unbind(0)
    if k.c2_zero:  # 0 + v_s is v_s: the same number, one op fewer
        c_den = torch.add(v_s, v_d, out=buffers("c_den", v_s))
    else:
        c_den = torch.add(k.two_c2, v_s, out=buffers("c_den", v_s))
        c_den = torch.add(c_den, v_d, out=buffers("c_den", v_s))
    c_num = torch.add(c_den, v_d, alpha=-2, out=buffers("c_num", v_s))
    mu = torch.add(means, shift, out=reused)  # the variances are spent
    return Terms(mu, c_num, c_den, means, flat)


def luminance(mu_s: Tensor, mu_d: Tensor, k: Constants, buffers: Buffers = fresh) -> tuple[Tensor, Tensor]:
    """``(L_num, L_den)`` from the means."""
    l_den = torch.addcmul(k.two_c1, mu_s, mu_s, out=buffers("l_den", mu_s))
    l_den = torch.addcmul(l_den, mu_d, mu_d, out=buffers("l_den", mu_s))
    return torch.addcmul(l_den, mu_d, mu_d, value=-2, out=buffers("l_num", mu_s)), l_den


def _denominator(l_den: Tensor, c_den: Tensor, k: Constants, out: Optional[Tensor]) -> Tensor:
    if k.four_eps is None:
        return torch.mul(l_den, c_den, out=out)
    return torch.addcmul(k.four_eps, l_den, c_den, out=out)


class Map(NamedTuple):
    """The S map and the factors it is made of (the backward reuses them)."""

    s: Tensor
    l_num: Tensor
    l_den: Tensor
    den: Tensor


def similarity_map(t: Terms, k: Constants, buffers: Buffers = fresh) -> Map:
    """The SSIM (or UQI) map, with its factors."""
    mu_s, mu_d = t.mu.unbind(0)
    l_num, l_den = luminance(mu_s, mu_d, k, buffers)
    den = _denominator(l_den, t.c_den, k, buffers("den", l_den))
    s = torch.mul(l_num, t.c_num, out=buffers("s", l_num))
    return Map(torch.div(s, den, out=buffers("s", l_num)), l_num, l_den, den)


def similarity(t: Terms, k: Constants, buffers: Buffers = fresh) -> Tensor:
    """The SSIM (or UQI) map alone: in ``buffers``, its denominator and the map are written over
    ``L_den`` and ``L_num`` (two buffers fewer than :func:`similarity_map`'s)."""
    if buffers is fresh:
        return similarity_map(t, k).s
    mu_s, mu_d = t.mu.unbind(0)
    l_num, l_den = luminance(mu_s, mu_d, k, buffers)
    den = _denominator(l_den, t.c_den, k, l_den)
    return torch.div(torch.mul(l_num, t.c_num, out=l_num), den, out=l_num)


def contrast(t: Terms, buffers: Buffers = fresh) -> Tensor:
    """The contrast-sensitivity map ``cs``."""
    return torch.div(t.c_num, t.c_den, out=buffers("cs", t.c_num))


class Adjoints(NamedTuple):
    """The loss's gradient through the formula, in the form the backward applies ``W^T`` to::

        grad_x = W^T(g_x) - 2 (x - a_x) W^T(g_sq) + 2 (y - a_y) W^T(g_cross)
               = W^T(g_x) + 2 (x - a_x) W^T(g_diff) + 2 ((y - a_y) - (x - a_x)) W^T(g_cross)

    (and grad_y with x and y swapped), ``g_diff = g_cross - g_sq``, ``a_x = (a_s + a_d) / 2``,
    ``a_y = (a_s - a_d) / 2``; ``g_c1``, ``g_c2`` are maps to sum. For identical images ``g_x``,
    ``g_y`` and ``g_diff`` are exactly 0, and so is ``W^T`` of each however it sums (a matrix
    product may round two equal rows apart, by where they sit in it).
    """

    g_x: Optional[Tensor]
    g_y: Optional[Tensor]
    g_diff: Tensor
    g_cross: Tensor
    g_c1: Tensor
    g_c2: Tensor


def adjoints(
    t: Terms,
    shift: Tensor,
    k: Constants,
    grad_map: Optional[Tensor],
    grad_cs: Optional[Tensor],
    need_x: bool = True,
    need_y: bool = True,
    made: Optional[Map] = None,
    out: Optional[Tensor] = None,
    buffers: Buffers = fresh,
    twice_grad_map: Optional[Tensor] = None,
) -> Adjoints:
    """The moments' gradient from the loss's gradient with respect to the S map and the cs map.

    ``made``: the S map and its factors, where the caller has them already. ``out`` (no autograd):
    a stack ``(g_x if need_x, g_y if need_y, g_diff, g_cross)`` the maps are written into.
    ``twice_grad_map``: ``2 grad_map``, where the caller has it (a kept constant: one op spared).
    """
    rows: list[Optional[Tensor]] = list(out.unbind(0)) if out is not None else [None] * 4
    into_x = rows[0] if need_x else None
    into_y = rows[int(need_x)] if need_y else None
    into_diff, into_cross = rows[-2], rows[-1]
    made = made if made is not None else similarity_map(t, k, buffers)
    l_num, l_den = made.l_num, made.l_den
    # a = 2 dS/dL_num, b = -2 dS/dL_den, c = 2 dS/dC_num, d = -2 dS/dC_den, times the loss's gradient.
    # In buffers: u and v one pair, (a - b, a + b) over them once they are spent; a and b
    # another, (c - d, c + d) over them (the fewer buffers a call touches, the more stay in cache).
    full = t.mu.shape[1:]
    uv = buffers("u, v", t.mu) if grad_map is not None else None
    ab_pair = buffers("a, b", t.mu)
    if grad_map is not None:
        den = made.den
        into_u, into_v = (None, None) if uv is None else uv.unbind(0)
        into_a, into_b = (None, None) if ab_pair is None else ab_pair.unbind(0)
        if twice_grad_map is None:
            twice_grad_map = torch.mul(grad_map, 2, out=buffers("2 grad_map", grad_map))
        u = torch.div(twice_grad_map, den, out=into_u)
        if k.flat is not None:  # UQI: a window with no variance contributes no gradient (see terms)
            flat = t.flat if t.flat is not None else t.c_den == 0
            u = u.masked_fill(flat, 0) if into_u is None else u.masked_fill_(flat, 0)
        v = torch.mul(u, made.s, out=into_v)  # u S, with S exactly as the forward has it
        a = torch.mul(u, t.c_num, out=into_a)
        b = torch.mul(v, t.c_den, out=into_b)
        final = grad_cs is None
        c = torch.mul(u, l_num, out=into_cross if final and into_cross is not None else buffers("c", den))
        d = torch.mul(v, l_den, out=into_diff if final and into_diff is not None else buffers("d", den))
    else:
        a = b = c = d = t.c_den.new_zeros(())
    if grad_cs is not None:  # dcs/dC_num = 1/C_den, dcs/dC_den = -cs/C_den
        h = torch.div(
            torch.mul(grad_cs, 2, out=buffers("2 grad_cs", grad_cs)), t.c_den, out=buffers("h", t.c_den)
        )
        c = torch.add(c, h, out=into_cross if out is not None else buffers("c+h", t.c_den))
        cs = torch.div(t.c_num, t.c_den, out=buffers("cs_adj", t.c_den))
        d = torch.addcmul(d, h, cs, out=into_diff if out is not None else buffers("d+h", t.c_den))
    # L depends on mu_s, mu_d; C on v_s = m2 - m0^2, v_d = m3 - m1^2; m0 = mu_s - a_s, m1 = mu_d - a_d:
    #   g_m0 = mu_s (a - b) - m0 (c - d),   g_m1 = m1 (c + d) - mu_d (a + b)
    # as pairs: (g_m0, -g_m1) = mu (a - b, a + b) - means (c - d, c + d), rows by rows, in two ops.
    # (a and b, c and d, have one shape; the pairs are exactly the differences and sums.)
    sign = _signs(k, t.mu)
    ab = torch.addcmul(a, sign, b, out=uv if a.shape == full else None)
    cd = torch.addcmul(c, sign, d, out=ab_pair if c.shape == full else None)
    means = t.means if t.means is not None else torch.sub(t.mu, shift, out=buffers("m", t.mu))
    g_m = torch.mul(t.mu, ab, out=buffers("g_m", t.mu))
    g_m = torch.addcmul(g_m, means, cd, value=-1, out=buffers("g_m", t.mu))
    g_m0, minus_g_m1 = g_m.unbind(0)
    g_x = g_y = None
    if need_x:
        g_x = torch.sub(g_m0, minus_g_m1, out=into_x if into_x is not None else buffers("g_x", g_m0))
    if need_y:
        g_y = torch.add(g_m0, minus_g_m1, out=into_y if into_y is not None else buffers("g_y", g_m0))
    # g_diff = c - d is cd[0]; in a stack, written over d (spent)
    g_diff = cd[0] if into_diff is None else into_diff.copy_(cd[0])
    return Adjoints(g_x, g_y, g_diff=g_diff, g_cross=c, g_c1=ab[0], g_c2=cd[0])
