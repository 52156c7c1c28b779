"""The fused computation as two ``torch.library`` custom ops, so that ``torch.compile`` sees one
opaque op per SSIM call (no graph break, static and dynamic shapes) and eager calls take the same
path:

- ``ssim_patch::similarity``: a backend's forward. Returns ``[per_image, extra, *kept]``
  (``extra`` an empty tensor when ``plan.output`` is "ssim"; ``kept`` only when some input needs
  a gradient).
- ``ssim_patch::similarity_backward``: the same backend's backward from what the forward kept.
  Returns the gradients of the inputs that needed one, in the order x, y, c1, c2.

The :class:`~ssim_patch.backends._protocol.Plan` travels flattened into schema types (the taps as
one ``float[]`` with their lengths as ``int[]``, padding and output as ``str``, eps as ``float?``),
the backend by its name. ``c1``, ``c2`` are each a 0-d tensor (``c1``) or a number
(``c1_value``, with ``c1`` None): a constant never becomes a tensor, a tensor is never read (no
host sync). Both ops mutate nothing; every output is a fresh contiguous tensor.

The fake implementations give shapes only, from :func:`~ssim_patch.backends._protocol.output_like`
and the backend's ``kept_like`` (symbolic sizes under ``dynamic=True``). The autograd formula
calls the backward op; a backward that must itself be differentiable (``create_graph=True``, a
double backward) or runs under a ``torch.func`` transform recomputes through the traced route
instead, as does a backward asked for an input the forward kept nothing for.

The ops are registered once per process, when this module is first imported; a reload finds
them registered and uses them as they are. ``AVAILABLE`` is False on a torch without
``torch.library.custom_op`` (before 2.4), where the caller keeps its ``autograd.Function``.
"""

from __future__ import annotations

import importlib
from typing import Any, Optional

import torch
from torch import Tensor

from ssim_patch import _filters, _formula
from ssim_patch.backends._protocol import Backend, Needs, Plan, Scalar, compute_dtype, output_like

NAMESPACE = "ssim_patch"
AVAILABLE = all(hasattr(torch.library, name) for name in ("custom_op", "register_fake", "register_autograd"))


def backend(name: str) -> Backend:
    """The backend registered as ``name``: ``BACKEND`` in ``ssim_patch.backends.<name>``."""
    found: Backend = importlib.import_module(f"ssim_patch.backends.{name}").BACKEND
    return found


# --- the plan and the constants, flattened into schema types ---------------------------------------


def flat_plan(plan: Plan) -> tuple[list[float], list[int], str, str, Optional[float]]:
    """``plan`` as (taps, sizes, padding, output, eps)."""
    taps = [float(v) for axis in plan.blur.taps for v in axis]
    return taps, [len(axis) for axis in plan.blur.taps], plan.blur.padding, plan.output, plan.eps


def plan_of(taps: list[float], sizes: list[int], padding: str, output: str, eps: Optional[float]) -> Plan:
    """The :class:`Plan` :func:`flat_plan` flattened (float64 taps travel exactly)."""
    axes, start = [], 0
    for size in sizes:
        axes.append(tuple(taps[start : start + size]))
        start += size
    return Plan(_filters.Blur(tuple(axes), padding), eps, output)  # type: ignore[arg-type]


def split_scalar(c: Scalar) -> tuple[Optional[Tensor], float]:
    """A constant as (tensor, None-or-0.0) or (None, number)."""
    if isinstance(c, Tensor):
        return c, 0.0
    return None, c


def _scalar(c: Optional[Tensor], value: float) -> Scalar:
    return c if c is not None else value


def _constants(
    x: Tensor, c1: Optional[Tensor], c2: Optional[Tensor], v1: float, v2: float, plan: Plan
) -> _formula.Constants:
    """The constants in the compute dtype (float64 stays, the rest is float32), on x's device."""
    dtype = compute_dtype(x.dtype)
    like = x if x.dtype == dtype else x.new_empty((), dtype=dtype)
    return _formula.constants(_scalar(c1, v1), _scalar(c2, v2), plan.eps, like)


def _fresh(outputs: list[Tensor], inputs: tuple[Optional[Tensor], ...]) -> list[Tensor]:
    """``outputs`` contiguous, none sharing memory with an input or with another output (a custom
    op's outputs may not alias): such an output is copied."""
    seen = {t.untyped_storage().data_ptr() for t in inputs if t is not None and t.numel()}
    fresh = []
    for t in outputs:
        t = t.contiguous()
        if t.numel():
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen:
                t = t.clone()
                ptr = t.untyped_storage().data_ptr()
            seen.add(ptr)
        fresh.append(t)
    return fresh


# --- the ops ----------------------------------------------------------------------------------------


def _forward(
    x: Tensor,
    y: Tensor,
    c1: Optional[Tensor],
    c2: Optional[Tensor],
    c1_value: float,
    c2_value: float,
    backend_name: str,
    taps: list[float],
    sizes: list[int],
    padding: str,
    output: str,
    eps: Optional[float],
    keep: list[bool],
) -> list[Tensor]:
    plan = plan_of(taps, sizes, padding, output, eps)
    k = _constants(x, c1, c2, c1_value, c2_value, plan)
    needs = Needs(*keep) if any(keep) else None
    per_image, extra, kept = backend(backend_name).forward(x, y, k, plan, needs)
    if extra is None:
        extra = per_image.new_empty(0)
    return _fresh([per_image, extra, *(kept or ())], (x, y, c1, c2))


def _forward_fake(
    x: Tensor,
    y: Tensor,
    c1: Optional[Tensor],
    c2: Optional[Tensor],
    c1_value: float,
    c2_value: float,
    backend_name: str,
    taps: list[float],
    sizes: list[int],
    padding: str,
    output: str,
    eps: Optional[float],
    keep: list[bool],
) -> list[Tensor]:
    plan = plan_of(taps, sizes, padding, output, eps)
    per_image, extra = output_like(x, plan)
    if extra is None:
        extra = per_image.new_empty(0)
    kept = backend(backend_name).kept_like(x, plan, Needs(*keep)) if any(keep) else ()
    return [per_image, extra, *kept]


def _backward(
    x: Tensor,
    y: Tensor,
    c1: Optional[Tensor],
    c2: Optional[Tensor],
    c1_value: float,
    c2_value: float,
    backend_name: str,
    taps: list[float],
    sizes: list[int],
    padding: str,
    output: str,
    eps: Optional[float],
    keep: list[bool],
    kept: list[Tensor],
    g_image: Optional[Tensor],
    g_extra: Optional[Tensor],
) -> list[Tensor]:
    plan = plan_of(taps, sizes, padding, output, eps)
    k = _constants(x, c1, c2, c1_value, c2_value, plan)
    grads = backend(backend_name).backward(x, y, k, tuple(kept), g_image, g_extra, plan, Needs(*keep))
    out = []
    for g, like, wanted in zip(grads, (x, y, c1, c2), keep):
        if wanted:
            assert g is not None and like is not None
            out.append(g.reshape(like.shape).to(like.dtype))
    return _fresh(out, (x, y, c1, c2, *kept, g_image, g_extra))


def _backward_fake(
    x: Tensor,
    y: Tensor,
    c1: Optional[Tensor],
    c2: Optional[Tensor],
    c1_value: float,
    c2_value: float,
    backend_name: str,
    taps: list[float],
    sizes: list[int],
    padding: str,
    output: str,
    eps: Optional[float],
    keep: list[bool],
    kept: list[Tensor],
    g_image: Optional[Tensor],
    g_extra: Optional[Tensor],
) -> list[Tensor]:
    return [
        like.new_empty(like.shape)
        for like, wanted in zip((x, y, c1, c2), keep)
        if wanted and like is not None
    ]


# --- autograd ----------------------------------------------------------------------------------------


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: list[Tensor]) -> None:
    x, y, c1, c2, *flat = inputs
    ctx.flat = tuple(flat)  # c1_value, c2_value, backend, taps, sizes, padding, output, eps, keep
    ctx.mark_non_differentiable(*output[2:])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, y, c1, c2, *output[2:])


def _recompute(
    x: Tensor,
    y: Tensor,
    c1: Scalar,
    c2: Scalar,
    g_image: Optional[Tensor],
    g_extra: Optional[Tensor],
    plan: Plan,
    needs: Needs,
) -> tuple[Optional[Tensor], ...]:
    """The gradients recomputed from the inputs through the traced route's written-out
    derivative: plain differentiable ops, so a double backward and any transform go through."""
    dtype = compute_dtype(x.dtype)
    xc, yc = x.to(dtype), y.to(dtype)
    k = _formula.constants(c1, c2, plan.eps, xc)
    gx, gy, gc1, gc2 = backend("traced").backward(xc, yc, k, (), g_image, g_extra, plan, needs)
    return (
        None if gx is None else gx.to(x.dtype),
        None if gy is None else gy.to(y.dtype),
        gc1,
        gc2,
    )


def _autograd_backward(ctx: Any, grads: list[Optional[Tensor]]) -> tuple[Optional[Tensor], ...]:
    x, y, c1, c2, *kept = ctx.saved_tensors
    c1_value, c2_value, name, taps, sizes, padding, output, eps, keep = ctx.flat
    g_image = grads[0]
    g_extra = grads[1] if output != "ssim" else None
    rest: tuple[None, ...] = (None,) * len(ctx.flat)
    needs = tuple(bool(v) for v in ctx.needs_input_grad[:4])
    if g_image is None and g_extra is None:
        return (None, None, None, None, *rest)
    kept_for_needs = any(keep) and all(k or not n for k, n in zip(keep, needs))
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    if torch.is_grad_enabled() or (active is not None and active()) or not kept_for_needs:
        plan = plan_of(taps, sizes, padding, output, eps)
        grads_ = _recompute(
            x, y, _scalar(c1, c1_value), _scalar(c2, c2_value), g_image, g_extra, plan, Needs(*needs)
        )
    else:
        got = iter(
            torch.ops.ssim_patch.similarity_backward(
                x,
                y,
                c1,
                c2,
                c1_value,
                c2_value,
                name,
                taps,
                sizes,
                padding,
                output,
                eps,
                keep,
                kept,
                g_image,
                g_extra,
            )
        )
        grads_ = tuple(next(got) if wanted else None for wanted in keep)
    gx, gy, gc1, gc2 = (g if need else None for g, need in zip(grads_, needs))
    gc1 = None if gc1 is None or c1 is None else gc1.reshape(c1.shape)
    gc2 = None if gc2 is None or c2 is None else gc2.reshape(c2.shape)
    return (gx, gy, gc1, gc2, *rest)


def _register() -> None:
    """Define both ops, their fake implementations and the autograd formula (once per process)."""
    if hasattr(torch.ops, NAMESPACE) and hasattr(getattr(torch.ops, NAMESPACE), "similarity"):
        return
    forward = torch.library.custom_op(f"{NAMESPACE}::similarity", mutates_args=())(_forward)
    forward.register_fake(_forward_fake)
    backward = torch.library.custom_op(f"{NAMESPACE}::similarity_backward", mutates_args=())(_backward)
    backward.register_fake(_backward_fake)
    forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def similarity(
    x: Tensor, y: Tensor, c1: Scalar, c2: Scalar, plan: Plan, backend_name: str
) -> tuple[Tensor, Optional[Tensor]]:
    """``backend_name``'s forward through the custom op: per-image mean ``(N,)`` and the map or
    the per-image cs as ``plan.output`` asks (else None). Keeps what the backward needs when grad
    mode is on and an input requires a gradient."""
    t1, v1 = split_scalar(c1)
    t2, v2 = split_scalar(c2)
    keep = [torch.is_grad_enabled() and isinstance(v, Tensor) and v.requires_grad for v in (x, y, c1, c2)]
    out = torch.ops.ssim_patch.similarity(x, y, t1, t2, v1, v2, backend_name, *flat_plan(plan), keep)
    return out[0], (out[1] if plan.output != "ssim" else None)


if AVAILABLE:
    _register()
