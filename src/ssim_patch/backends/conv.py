"""SSIM by depthwise convolutions: any device torch convolves on (CUDA where Triton does not run,
MPS, XPU, ``meta``; CPU when forced), 2-D and 3-D, float32 and float64.

The whole batch at once. The forward writes the four shifted maps ``s', d', s'^2, d'^2``
reflect-padded into one stack (one launch), blurs the stack with one depthwise convolution per pass
(a (kh, 1) then a (1, kw) pass in 2-D; a (1, kh, kw) plane then a (kd, 1, 1) pass in 3-D), and
applies the formula. For a per-image SSIM (a loss) it forms the adjoint maps for a unit upstream
gradient per image right away; for the map and cs outputs it keeps the terms. The backward applies
``W^T`` to the stacked adjoint maps with transposed convolutions, folds the reflect pads back with
aten's reflection-pad backward, and recombines (``_algebra.combine``). cuDNN runs in full float32
(TF32 off); window weights are copied to the device once (pinned, asynchronous: no host sync).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ssim_patch import _filters, _formula
from ssim_patch._torch_features import META_REFLECT_PAD2D_OUT, autocast_off, fake_mode_active
from ssim_patch.backends import _algebra
from ssim_patch.backends._kept import KeptTensors
from ssim_patch.backends._protocol import Backend, Grads, Kept, Needs, Plan

#: Convolution kernels already on a device, by (taps, dtype, device): made once, so a call makes
#: no host-to-device copy; safe across CUDA streams (:mod:`._kept`).
_WEIGHTS: KeptTensors[tuple[Tensor, ...]] = KeptTensors()


def _kernels(taps: tuple[tuple[float, ...], ...]) -> list[Tensor]:
    """The passes: 2-D a (kh, 1) pass then a (1, kw) one; 3-D a (1, kh, kw) plane then a (kd, 1, 1)
    pass (three 1-D passes would write a third intermediate stack of maps)."""
    vectors = [torch.tensor(t, dtype=torch.float64) for t in taps]
    if len(taps) == 2:
        return [vectors[0].view(-1, 1), vectors[1].view(1, -1)]
    return [torch.outer(vectors[1], vectors[2])[None], vectors[0].view(-1, 1, 1)]


def _conv_weights(taps: tuple[tuple[float, ...], ...], like: Tensor) -> tuple[Tensor, ...]:
    """The passes' kernels in ``like``'s dtype, on its device. Under a fake-tensor mode (export,
    shape inference) they are made fake and not kept."""
    fake = fake_mode_active(like)

    def make() -> tuple[Tensor, ...]:
        out = []
        for kernel in _kernels(taps):
            host = kernel.to(like.dtype)[None, None].contiguous()
            if like.device.type == "cuda" and not fake:
                host = host.pin_memory()  # an asynchronous copy: no host sync
            out.append(host.to(like.device, non_blocking=True))
        return tuple(out)

    if fake:
        return make()
    return _WEIGHTS.get((taps, like.dtype, like.device), like.device, make)


@contextlib.contextmanager
def exact_fp32(device: torch.device) -> Iterator[None]:
    """cuDNN convolutions in full float32 (no TF32) inside; the caller's setting restored after."""
    if device.type != "cuda":
        yield
        return
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        saved = conv.fp32_precision
        conv.fp32_precision = "ieee"
        try:
            yield
        finally:
            conv.fp32_precision = saved
        return
    saved_flag = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved_flag


def _conv(t: Tensor, weights: tuple[Tensor, ...], transposed: bool = False) -> Tensor:
    """The passes over maps ``(1, B, *spatial)``, each a depthwise convolution (one group per
    map): on CUDA several times faster than a batch of one-channel convolutions (measured on an
    H200: SSIM at 16x3x512x512 in 2.9 ms instead of 4.6)."""
    maps = t.shape[1]
    if t.ndim == 4:
        conv = F.conv_transpose2d if transposed else F.conv2d
    else:
        conv = F.conv_transpose3d if transposed else F.conv3d
    with exact_fp32(t.device), autocast_off(t.device.type):  # the convolutions in the maps' dtype
        for weight in weights:
            t = conv(t, weight.expand(maps, *weight.shape[1:]), groups=maps)
    return t


def conv_blur(t: Tensor, blur: _filters.Blur) -> Tensor:
    """``W`` of an already padded stack ``(..., *padded)`` by convolutions."""
    nd = len(blur.taps)
    lead, spatial = t.shape[: t.ndim - nd], t.shape[t.ndim - nd :]
    out = _conv(t.reshape(1, -1, *spatial), _conv_weights(blur.taps, t))
    return out.view(*lead, *out.shape[2:])


def conv_blur_adjoint(g: Tensor, blur: _filters.Blur, like: Tensor) -> Tensor:
    """``W^T g`` for ``g`` of shape ``(S, *images.shape[:-nd], *out)`` by transposed convolutions,
    the pads folded back; ``like`` has the images' shape ``(..., *spatial)``."""
    nd = len(blur.taps)
    weights = tuple(reversed(_conv_weights(blur.taps, g)))
    out = _conv(g.reshape(1, -1, *g.shape[g.ndim - nd :]), weights, transposed=True)
    if any(blur.pads):
        pads: list[int] = []
        for pad in reversed(blur.pads):
            pads += [pad, pad]
        fold = (
            torch.ops.aten.reflection_pad2d_backward if nd == 2 else torch.ops.aten.reflection_pad3d_backward
        )
        out = fold(out, like.new_empty((1, out.shape[1], *like.shape[like.ndim - nd :])), pads)
    return out.view(*g.shape[: g.ndim - nd], *out.shape[2:])


def reflect_pad_into(src: Tensor, pads: tuple[int, ...], out: Tensor) -> None:
    """Write ``src`` ``(P, *spatial)`` reflect-padded by ``pads`` into ``out`` (one launch)."""
    flat: list[int] = []
    for pad in reversed(pads):
        flat += [pad, pad]
    if not any(pads):
        out.copy_(src)
    elif len(pads) == 2 and not META_REFLECT_PAD2D_OUT and src.device.type == "meta":
        out.copy_(torch.ops.aten.reflection_pad2d(src, flat))  # torch 2.0 on meta: no out= kernel
    elif len(pads) == 2:
        torch.ops.aten.reflection_pad2d.out(src, flat, out=out)
    else:
        torch.ops.aten.reflection_pad3d.out(src, flat, out=out)


class ConvBackend:
    """Depthwise convolutions over the whole batch (see the module's docstring)."""

    name = "conv"
    reads_reduced_precision = False

    def unsupported(self, x: Tensor, plan: Plan) -> Optional[str]:
        del plan
        return None  # every device torch convolves on, 2-D and 3-D

    def forward(
        self, x: Tensor, y: Tensor, k: _formula.Constants, plan: Plan, keep: Optional[Needs]
    ) -> tuple[Tensor, Optional[Tensor], Optional[Kept]]:
        n, channels, *spatial = x.shape
        sd = _algebra.plus_minus(x, y)  # x + y, x - y
        shift = sd.mean(tuple(range(3, sd.ndim)), keepdim=True)  # (2, N, C, 1, ..): a_s, a_d
        sd.sub_(shift)
        padded = [size + 2 * pad for size, pad in zip(spatial, plan.blur.pads)]
        stack = x.new_empty((4, n, channels, *padded))
        reflect_pad_into(sd.view(-1, *spatial), plan.blur.pads, stack[:2].view(-1, *padded))
        torch.mul(stack[:2], stack[:2], out=stack[2:])
        t = _formula.terms(conv_blur(stack, plan.blur), shift, k)
        made = _formula.similarity_map(t, k)
        per_image, extra = _algebra.finish(made.s, t, plan)
        if keep is None:
            return per_image, extra, None
        if plan.output != "ssim":
            kept = _algebra.TermsKept(shift, mu=t.mu, contrast=torch.stack((t.c_num, t.c_den)))
            return per_image, extra, kept.tensors(plan)
        into = x.new_empty((_algebra.adjoint_rows(keep), *made.s.shape))
        unit = _algebra.unit_gradient(made.s.shape, x)
        twice = _algebra.unit_gradient(made.s.shape, x, factor=2)
        adj = _formula.adjoints(t, shift, k, unit, None, keep.x, keep.y, made, out=into, twice_grad_map=twice)
        if keep.c1 or keep.c2:
            dims = tuple(range(2, made.s.ndim))
            c_sums = torch.stack((adj.g_c1.sum(dims), adj.g_c2.sum(dims)))
        else:  # never read: a backward asked for c1's or c2's gradient recomputes
            c_sums = x.new_empty((2, n, channels))
        return per_image, extra, _algebra.TermsKept(shift, adjoints=into, c_sums=c_sums).tensors(plan)

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
        """The whole batch at once, one transposed convolution per pass."""
        held = _algebra.TermsKept.of(plan, kept)
        up = _algebra.scaled_upstream(held, g_image, g_extra, plan, x, needs)
        adj_stack, c_sums = _algebra.stacked_adjoints(held, up, k, needs)
        gx = gy = None
        if needs.x or needs.y:
            back = _algebra.unstack(conv_blur_adjoint(adj_stack, plan.blur, x), needs.x, needs.y)
            gx, gy = _algebra.combine_shifted(back, x, y, held.shift, needs.x, needs.y)
            if up.scale is not None:
                gx, gy = (None if g is None else g.mul_(up.scale) for g in (gx, gy))
        return (gx, gy, *_algebra.constant_grads(c_sums, needs))


BACKEND: Backend = ConvBackend()  # mypy checks it against the protocol
