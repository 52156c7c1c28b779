"""The fused computation as two ``torch.library`` custom ops, so that ``torch.compile`` sees one
opaque op per SSIM call (no graph break, static and dynamic shapes) and eager calls take the same
path:

- ``ssim_patch::similarity``: a backend's forward. Returns ``[per_image, extra, *kept]``
  (``extra`` an empty tensor when ``plan.output`` is "ssim"; ``kept`` only when some input needs
  a gradient).
- ``ssim_patch::similarity_backward``: the same backend's backward from what the forward kept.
  Returns the gradients of the inputs that needed one, in the order x, y, c1, c2.

Both take the arguments of :class:`Args` (their schema is written once, :data:`SCHEMA`): the
:class:`~ssim_patch.backends._protocol.Plan` packed into one ``float[]`` (:func:`pack_plan`,
:func:`unpack_plan`), the backend as ``SSIM_PATCH_BACKEND`` asked for it when the call was made or traced ("auto" or a
name: :func:`backend`), so that a compiled graph, and the key inductor caches it under, holds it,
and dynamo guards on the variable: a graph never runs another backend than the one whose kept
tensors it was traced with. ``c1``, ``c2`` are each a 0-d
tensor (``c1``) or a number (``c1_value``, with ``c1`` None): a constant never becomes a tensor,
a tensor is never read (no host sync). float16 / bfloat16 images go in as they are (a backend
that does not read them gets float32 copies inside the op); image gradients come back in the
images' dtype. Both ops mutate nothing; every output is a fresh contiguous tensor.

The fake implementations give shapes only, from :func:`~ssim_patch.backends._dtypes.output_like`
and the backend's ``kept_like`` (symbolic sizes under ``dynamic=True``); given plain tensors on
device "meta" (no fake mode) they run the backend itself, as an eager call on a device does (one
implementation for every torch: before 2.13 a meta kernel could not be registered beside a fake
one). The autograd formula calls the backward op, unless
:func:`ssim_patch.backends._route.recomputes` sends the backward through the traced route.

The ops are registered once per process, when this module is first imported; a reload finds
them registered and uses them as they are. :data:`AVAILABLE` is False on a torch without what the
ops need (``torch.library.custom_op`` with an explicit schema, ``register_fake``,
``register_autograd``: torch 2.4 on; :mod:`ssim_patch.backends._route` detects it), where the
caller keeps its ``autograd.Function``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import Tensor

from ssim_patch import _filters
from ssim_patch.backends import _route, traced
from ssim_patch.backends._dtypes import cast, constants, output_like
from ssim_patch.backends._protocol import Backend, Needs, Plan, Scalar

NAMESPACE = "ssim_patch"


#: True where the ops are registered (:data:`ssim_patch.backends._route.CUSTOM_OP`); else the
#: caller keeps its autograd.Function.
AVAILABLE = _route.CUSTOM_OP


class Args(NamedTuple):
    """The arguments both ops take first (:data:`SCHEMA`), in schema order."""

    x: Tensor
    y: Tensor
    c1: Optional[Tensor]
    c2: Optional[Tensor]
    c1_value: float
    c2_value: float
    backend: str
    plan: list[float]
    keep: list[bool]


#: The schema of both ops' shared arguments (:class:`Args`), written once.
SCHEMA = (
    "Tensor x, Tensor y, Tensor? c1, Tensor? c2, float c1_value, float c2_value, str backend, "
    "float[] plan, bool[] keep"
)
_FORWARD_SCHEMA = f"({SCHEMA}) -> Tensor[]"
_BACKWARD_SCHEMA = f"({SCHEMA}, Tensor[] kept, Tensor? g_image, Tensor? g_extra) -> Tensor[]"


def backend(name: str, x: Tensor, plan: Plan) -> Backend:
    """The backend for images like ``x``: ``name`` is what ``SSIM_PATCH_BACKEND`` asked for when
    the call was made (or traced), "auto" or a backend's name (see
    :func:`ssim_patch.backends.choose`). Chosen inside the ops, from ``x``'s device, dtype and
    dimensions: the fake implementation picks the same one as the real, and torch.compile never
    traces the choice (its graph holds ``name``, and dynamo guards on the variable it came from)."""
    from ssim_patch import backends

    return backends.choose(x, plan, name)


# --- the plan, packed into one float[] ----------------------------------------------------------------

_OUTPUTS = ("ssim", "map", "cs")
_PADDINGS = ("same", "valid")


def pack_plan(plan: Plan) -> list[float]:
    """``plan`` as one ``float[]``: output, padding (their indices), eps (NaN for None), the number
    of axes, each axis' length, then the taps (float64: they travel exactly)."""
    sizes = [float(len(axis)) for axis in plan.blur.taps]
    eps = math.nan if plan.eps is None else float(plan.eps)
    head = [float(_OUTPUTS.index(plan.output)), float(_PADDINGS.index(plan.blur.padding)), eps]
    return [*head, float(len(sizes)), *sizes, *(float(v) for axis in plan.blur.taps for v in axis)]


def unpack_plan(packed: list[float]) -> Plan:
    """The :class:`Plan` :func:`pack_plan` packed."""
    output, padding, eps, count = packed[:4]
    sizes = [int(v) for v in packed[4 : 4 + int(count)]]
    axes, start = [], 4 + int(count)
    for size in sizes:
        axes.append(tuple(packed[start : start + size]))
        start += size
    blur = _filters.Blur(tuple(axes), _PADDINGS[int(padding)])  # type: ignore[arg-type]
    return Plan(blur, None if math.isnan(eps) else eps, _OUTPUTS[int(output)])  # type: ignore[arg-type]


def args(x: Tensor, y: Tensor, c1: Scalar, c2: Scalar, plan: Plan, backend_name: str, keep: Needs) -> Args:
    """The ops' shared arguments for a call."""
    t1, v1 = (c1, 0.0) if isinstance(c1, Tensor) else (None, c1)
    t2, v2 = (c2, 0.0) if isinstance(c2, Tensor) else (None, c2)
    flags = [keep.x, keep.y, keep.c1, keep.c2]
    return Args(x, y, t1, t2, float(v1), float(v2), backend_name, pack_plan(plan), flags)


def scalars(a: Args) -> tuple[Scalar, Scalar]:
    """``c1``, ``c2`` as the caller gave them (a tensor or a number)."""
    return (a.c1 if a.c1 is not None else a.c1_value), (a.c2 if a.c2 is not None else a.c2_value)


# --- the ops ----------------------------------------------------------------------------------------


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


def _forward(*flat: Any) -> list[Tensor]:
    a = Args(*flat)
    plan = unpack_plan(a.plan)
    be = backend(a.backend, a.x, plan)
    x, y = cast(a.x, a.y, be)
    c1, c2 = scalars(a)
    needs = Needs(*a.keep) if any(a.keep) else None
    with _no_view_replay():
        per_image, extra, kept = be.forward(x, y, constants(c1, c2, plan, x), plan, needs)
    if extra is None:
        extra = per_image.new_empty(0)
    return _fresh([per_image, extra, *(kept or ())], (a.x, a.y, a.c1, a.c2))


def _is_fake(t: Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    return bool(is_fake(t))


def _forward_fake(*flat: Any) -> list[Tensor]:
    a = Args(*flat)
    if not _is_fake(a.x):  # plain meta tensors: the backend runs, as on a device
        return _forward(*flat)
    plan = unpack_plan(a.plan)
    per_image, extra = output_like(a.x, plan)
    if extra is None:
        extra = per_image.new_empty(0)
    be = backend(a.backend, a.x, plan)
    kept = be.kept_like(cast(a.x, a.x, be)[0], plan, Needs(*a.keep)) if any(a.keep) else ()
    return [per_image, extra, *kept]


def _backward(*flat: Any) -> list[Tensor]:
    a = Args(*flat[:9])
    kept, g_image, g_extra = flat[9:]
    plan = unpack_plan(a.plan)
    be = backend(a.backend, a.x, plan)
    x, y = cast(a.x, a.y, be)
    c1, c2 = scalars(a)
    with _no_view_replay():
        grads = be.backward(
            x, y, constants(c1, c2, plan, x), tuple(kept), g_image, g_extra, plan, Needs(*a.keep)
        )
    out = []
    for g, like, wanted in zip(grads, (a.x, a.y, a.c1, a.c2), a.keep):
        if wanted:
            assert g is not None and like is not None
            g = g if g.shape == like.shape else g.reshape(like.shape)
            out.append(g if g.dtype == like.dtype else g.to(like.dtype))
    return _fresh(out, (a.x, a.y, a.c1, a.c2, *kept, g_image, g_extra))


def _backward_fake(*flat: Any) -> list[Tensor]:
    a = Args(*flat[:9])
    if not _is_fake(a.x):  # plain meta tensors: the backend runs, as on a device
        return _backward(*flat)
    return [
        like.new_empty(like.shape)
        for like, wanted in zip((a.x, a.y, a.c1, a.c2), a.keep)
        if wanted and like is not None
    ]


# --- autograd ------------------------------------------------------------


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: list[Tensor]) -> None:
    a = Args(*inputs)
    ctx.args = tuple(a[4:])  # the tensors are saved
    ctx.mark_non_differentiable(*output[2:])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(a.x, a.y, a.c1, a.c2, *output[2:])


def _autograd_backward(ctx: Any, grads: list[Optional[Tensor]]) -> tuple[Optional[Tensor], ...]:
    x, y, c1, c2, *kept = ctx.saved_tensors
    a = Args(x, y, c1, c2, *ctx.args)
    plan = unpack_plan(a.plan)
    g_image = grads[0]
    g_extra = grads[1] if plan.output != "ssim" else None
    rest: tuple[None, ...] = (None,) * (len(a) - 4)
    needs = Needs(*(bool(v) for v in ctx.needs_input_grad[:4]))
    if g_image is None and g_extra is None:
        return (None, None, None, None, *rest)
    if _route.recomputes(Needs(*a.keep), needs, opaque=True):
        c1_, c2_ = scalars(a)
        grads_: tuple[Optional[Tensor], ...] = traced.recompute(x, y, c1_, c2_, g_image, g_extra, plan, needs)
    else:
        got = iter(similarity_backward(a, kept, g_image, g_extra))
        grads_ = tuple(next(got) if wanted else None for wanted in a.keep)
    gx, gy, gc1, gc2 = (g if need else None for g, need in zip(grads_, _route.flags(needs)))
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
    forward = torch.library.custom_op(
        f"{NAMESPACE}::similarity", _forward, mutates_args=(), schema=_FORWARD_SCHEMA
    )
    backward = torch.library.custom_op(
        f"{NAMESPACE}::similarity_backward", _backward, mutates_args=(), schema=_BACKWARD_SCHEMA
    )
    forward.register_fake(_forward_fake)
    backward.register_fake(_backward_fake)
    forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def similarity(a: Args) -> list[Tensor]:
    """The forward op: ``[per_image, extra, *kept]``."""
    out: list[Tensor] = torch.ops.ssim_patch.similarity(*a)
    return out


def similarity_backward(
    a: Args, kept: list[Tensor], g_image: Optional[Tensor], g_extra: Optional[Tensor]
) -> list[Tensor]:
    """The backward op: the gradients of the inputs ``a.keep`` names, in the order x, y, c1, c2."""
    out: list[Tensor] = torch.ops.ssim_patch.similarity_backward(*a, kept, g_image, g_extra)
    return out


if AVAILABLE:
    _register()
