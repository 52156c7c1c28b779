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
the backend by its name ("auto": chosen inside the op, see :func:`backend`). ``c1``, ``c2`` are
each a 0-d tensor (``c1``) or a number (``c1_value``, with ``c1`` None): a constant never becomes
a tensor, a tensor is never read (no host sync). float16 / bfloat16 images go in as they are (a
backend that does not read them gets float32 copies inside the op, from ``_protocol.cast``); image
gradients come back in the images' dtype. Both ops mutate nothing; every output is a fresh
contiguous tensor.

The fake implementations give shapes only, from :func:`~ssim_patch.backends._protocol.output_like`
and the backend's ``kept_like`` (symbolic sizes under ``dynamic=True``). The autograd formula
calls the backward op; a backward that must itself be differentiable (``create_graph=True``, a
double backward) or runs under a ``torch.func`` transform recomputes through the traced route
instead, as does a backward asked for an input the forward kept nothing for.

The ops are registered once per process, when this module is first imported; a reload finds
them registered and uses them as they are. ``AVAILABLE`` is False on a torch without
``torch.library.custom_op`` (before 2.4), where the caller keeps its ``autograd.Function``.
"""

# No ``from __future__ import annotations``: torch.library.custom_op reads the ops' signatures
# from their annotations, and torch before 2.5 takes only real types there, not strings.
import contextlib
from collections.abc import Iterator
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ssim_patch import _filters
from ssim_patch.backends import traced
from ssim_patch.backends._protocol import Backend, Needs, Plan, Scalar, cast, constants, output_like

NAMESPACE = "ssim_patch"
#: True where the ops are registered; else the caller keeps its autograd.Function.
AVAILABLE = all(hasattr(torch.library, name) for name in ("custom_op", "register_fake", "register_autograd"))
#: Why not, where a torch has ``custom_op`` but registering failed (else None).
UNAVAILABLE: Optional[str] = None


def backend(name: str, x: Tensor, plan: Plan) -> Backend:
    """The backend ``name`` names (``BACKEND`` in ``ssim_patch.backends.<name>``), or for "auto"
    the one :func:`ssim_patch.backends.choose` picks for images like ``x`` (``SSIM_PATCH_BACKEND``
    included). Chosen inside the ops, from ``x``'s device, dtype and dimensions: the fake
    implementation picks the same one as the real, and torch.compile never traces the choice."""
    from ssim_patch import backends

    if name == "auto":
        return backends.choose(x, plan)
    found = backends.load(name)
    if isinstance(found, str):
        raise RuntimeError(f"The {name!r} backend cannot run: {found}.")
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


def _storage(t: Tensor) -> int:
    """Which storage ``t`` views (its address is 0 for every meta tensor: not that)."""
    key: int = t.untyped_storage()._cdata
    return key


def _fresh(outputs: list[Tensor], inputs: tuple[Optional[Tensor], ...]) -> list[Tensor]:
    """``outputs`` contiguous, none sharing memory with an input or with another output (a custom
    op's outputs may not alias): such an output is copied."""
    seen = {_storage(t) for t in inputs if t is not None}
    fresh = []
    for t in outputs:
        t = t.contiguous()
        if _storage(t) in seen:
            t = t.clone()
        seen.add(_storage(t))
        fresh.append(t)
    return fresh


# --- the ops ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _no_view_replay() -> Iterator[None]:
    """View replay off while a backend runs. AOT autograd's compiled training forward turns it on
    (each view then records how to replay itself), which made each of the hundreds of views a
    CPU backend takes per call about twice as slow, and a compiled step 3-6% slower than the
    eager one. Nothing a backend views leaves the op: every output is fresh (:func:`_fresh`)."""
    enabled = getattr(torch._C, "_is_view_replay_enabled", lambda: False)()
    if enabled:
        torch._C._set_view_replay_enabled(False)
    try:
        yield
    finally:
        if enabled:
            torch._C._set_view_replay_enabled(True)


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
    be = backend(backend_name, x, plan)
    a, b = cast(x, y, be)
    k = constants(_scalar(c1, c1_value), _scalar(c2, c2_value), plan, a)
    needs = Needs(*keep) if any(keep) else None
    with _no_view_replay():
        per_image, extra, kept = be.forward(a, b, k, plan, needs)
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
    be = backend(backend_name, x, plan)
    kept = be.kept_like(cast(x, x, be)[0], plan, Needs(*keep)) if any(keep) else ()
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
    be = backend(backend_name, x, plan)
    a, b = cast(x, y, be)
    k = constants(_scalar(c1, c1_value), _scalar(c2, c2_value), plan, a)
    with _no_view_replay():
        grads = be.backward(a, b, k, tuple(kept), g_image, g_extra, plan, Needs(*keep))
    out = []
    for g, like, wanted in zip(grads, (x, y, c1, c2), keep):
        if wanted:
            assert g is not None and like is not None
            g = g if g.shape == like.shape else g.reshape(like.shape)
            out.append(g if g.dtype == like.dtype else g.to(like.dtype))
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
        grads_: tuple[Optional[Tensor], ...] = traced.recompute(
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


def implementation(op: object) -> Optional[Callable[..., list[Tensor]]]:
    """The Python function behind ``op`` when it is one of these ops (an overload such as
    ``torch.ops.ssim_patch.similarity.default``), else None: for a dispatch mode that counts the
    aten ops a call runs, which sees a custom op as one op."""
    implementations: dict[str, Callable[..., list[Tensor]]] = {
        f"{NAMESPACE}.similarity.default": _forward,
        f"{NAMESPACE}.similarity_backward.default": _backward,
    }
    return implementations.get(str(op))


def _register() -> None:
    """Define both ops, their fake implementations and the autograd formula (once per process)."""
    if hasattr(torch.ops, NAMESPACE) and hasattr(getattr(torch.ops, NAMESPACE), "similarity"):
        return
    forward = torch.library.custom_op(f"{NAMESPACE}::similarity", mutates_args=())(_forward)
    backward = torch.library.custom_op(f"{NAMESPACE}::similarity_backward", mutates_args=())(_backward)
    for op, fake, real in ((forward, _forward_fake, _forward), (backward, _backward_fake, _backward)):
        op.register_fake(fake)
        # Tensors on device "meta" run the backend itself, as an eager call on a device does
        # (launches and bytes are counted there); fake tensors get the fake implementation.
        op.register_kernel("meta", real)
    forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def similarity(
    x: Tensor, y: Tensor, c1: Scalar, c2: Scalar, plan: Plan, backend_name: str = "auto"
) -> tuple[Tensor, Optional[Tensor]]:
    """A backend's forward through the custom op (see :func:`backend`): per-image mean ``(N,)``
    and the map or the per-image cs as ``plan.output`` asks (else None), in the compute dtype.
    Keeps what the backward needs when grad mode is on and an input requires a gradient."""
    t1, v1 = split_scalar(c1)
    t2, v2 = split_scalar(c2)
    keep = [torch.is_grad_enabled() and isinstance(v, Tensor) and v.requires_grad for v in (x, y, c1, c2)]
    out = torch.ops.ssim_patch.similarity(x, y, t1, t2, v1, v2, backend_name, *flat_plan(plan), keep)
    return out[0], (out[1] if plan.output != "ssim" else None)


if AVAILABLE:
    try:
        _register()
    except Exception as exc:  # a torch whose custom_op rejects these signatures: the old route
        AVAILABLE = False
        UNAVAILABLE = f"registering the custom ops failed: {type(exc).__name__}: {exc}"
