"""The one entry into the backends, :func:`similarity`, and the autograd around them: the route a
call takes (:func:`use_traced`), the backward's route (:func:`recomputes`), the custom op's
autograd formula and the one ``autograd.Function`` (setup_context, the written-out backward, vmap
and jvp).

Routes (chosen in :func:`use_traced`, the only place):

- **traced**: plain differentiable ops (:mod:`ssim_patch.backends.traced`) and autograd through
  them, while a ``torch.func`` transform is active, forward-mode AD is on, or a trace leaves the
  process (``torch.jit.trace``, ``torch.export``: the artifact holds aten ops only, and loads
  where ssim-patch is not installed); on a torch without the custom op, also while
  ``torch.compile`` traces. Autograd, every transform and inductor's fusion then see ordinary
  operations.
- **fused**: the chosen backend's forward and backward, no autograd inside (for
  ``SSIM_PATCH_BACKEND=traced``, plain ops and their written-out derivative). Where torch has
  the custom op (:func:`route`) and a call needs it (:func:`_route.through_custom_op`: under
  ``torch.compile``, a dispatch mode, fake or other subclassed images) this is
  ``ssim_patch::similarity`` (:mod:`ssim_patch.backends._custom_op`); else, and for every plain
  eager call, :func:`_fused`, inside :class:`_Similarity` when a gradient is needed. Either way the
  backward is the backend's, unless :func:`recomputes` sends it through
  :func:`ssim_patch.backends.traced.recompute`.

``SSIM_PATCH_BACKEND`` is read here, outside the op, and given to it: a compiled graph holds the
backend it was traced with (so the layout of what that backend keeps), inductor's cache keys it,
and dynamo guards on the variable (a change recompiles).

Dtypes: a backend that does not read float16 / bfloat16 itself gets float32 copies
(:func:`ssim_patch.backends._dtypes.cast`, here and in the custom op); outputs come back in the
compute dtype.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import torch
from torch import Tensor

from ssim_patch import backends
from ssim_patch._torch_features import function_apply
from ssim_patch.backends import _custom_op, _route, traced
from ssim_patch.backends._dtypes import cast, constants
from ssim_patch.backends._protocol import Backend, Needs, Plan, Scalar

#: The fused route this torch takes, and why (``status()``, ``ssim-patch check``, the pytest header).
route = _route.route


def similarity(x: Tensor, y: Tensor, c1: Scalar, c2: Scalar, plan: Plan) -> tuple[Tensor, Optional[Tensor]]:
    """Per-image mean of the map ``(N,)``, and the map ``(N, C, *out)`` or the per-image mean of
    cs ``(N,)`` as ``plan.output`` asks (else None), in the compute dtype. ``x``, ``y``:
    ``(N, C, *spatial)``, the same floating dtype and device; ``c1``, ``c2``: numbers or 0-d
    tensors in the compute dtype."""
    if _route.use_traced():
        a, b = cast(x, y, traced.BACKEND)
        return traced.similarity(a, b, c1, c2, plan)
    if _route.through_custom_op(x):  # the op chooses the backend and casts
        keep = Needs.of(x, y, c1, c2) if torch.is_grad_enabled() else Needs(False, False, False, False)
        out = _custom_op.similarity(_custom_op.args(x, y, c1, c2, plan, backends.requested(), keep))
        return out[0], (out[1] if plan.output != "ssim" else None)
    backend = backends.choose(x, plan)
    a, b = cast(x, y, backend)
    return _fused(a, b, c1, c2, plan, backend)


def _fused(
    x: Tensor, y: Tensor, c1: Scalar, c2: Scalar, plan: Plan, backend: Backend
) -> tuple[Tensor, Optional[Tensor]]:
    """The fused route without the custom op: the backend's forward, inside :class:`_Similarity`
    when a gradient is needed."""
    tensors = [t for t in (x, y, c1, c2) if isinstance(t, Tensor)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        out = _apply(x, y, c1, c2, plan, backend)
        return out[0], (out[1] if plan.output != "ssim" else None)
    per_image, extra, _ = backend.forward(x, y, constants(c1, c2, plan, x), plan, None)
    return per_image, extra


def _sum_to(g: Optional[Tensor], c: Any) -> Optional[Tensor]:
    """A gradient for ``c``: None unless ``c`` is a tensor, and then of its shape."""
    if g is None or not isinstance(c, Tensor):
        return None
    return g.reshape(c.shape)


def _like(g: Optional[Tensor], t: Tensor) -> Optional[Tensor]:
    """A gradient for images ``t``, in their dtype."""
    return g if g is None or g.dtype == t.dtype else g.to(t.dtype)


class _Similarity(torch.autograd.Function):
    """A backend's forward, with its backward written out (see the module's docstring).

    Outputs: the per-image mean, the extra output (an empty tensor when none is asked), and what
    the backend keeps for its backward (non-differentiable).
    """

    @staticmethod
    def forward(
        x: Tensor, y: Tensor, c1: Scalar, c2: Scalar, plan: Plan, backend: Backend
    ) -> tuple[Tensor, ...]:
        k = constants(c1, c2, plan, x)
        per_image, extra, kept = backend.forward(x, y, k, plan, keep=Needs.of(x, y, c1, c2))
        assert kept is not None
        return (per_image, extra if extra is not None else per_image.new_empty(0), *kept)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        x, y, c1, c2, plan, backend = inputs
        ctx.mark_non_differentiable(*output[2:])
        ctx.set_materialize_grads(False)
        ctx.plan = plan
        ctx.backend = backend
        ctx.scalars = (c1, c2)
        ctx.kept_count = len(output) - 2
        # What the forward kept is for the gradients it saw asked for (under a torch.func
        # transform it sees none, and the backward recomputes).
        ctx.kept_for = Needs.of(x, y, c1, c2)
        ctx.save_for_backward(x, y, *output[2:])
        ctx.save_for_forward(x, y)

    @staticmethod
    def backward(
        ctx: Any, g_image: Optional[Tensor], g_extra: Optional[Tensor], *_: Any
    ) -> tuple[Optional[Tensor], ...]:
        x, y, *kept = ctx.saved_tensors
        c1, c2 = ctx.scalars
        plan: Plan = ctx.plan
        backend: Backend = ctx.backend
        needs = Needs(*(bool(v) for v in ctx.needs_input_grad[:4]))
        if g_image is None and (g_extra is None or plan.output == "ssim"):
            return None, None, None, None, None, None
        if _route.recomputes(ctx.kept_for, needs, opaque=False):
            grads = traced.recompute(x, y, c1, c2, g_image, g_extra, plan, needs)
        else:
            k = constants(c1, c2, plan, x)
            kept_grads = backend.backward(x, y, k, tuple(kept), g_image, g_extra, plan, ctx.kept_for)
            grads = tuple(g if need else None for g, need in zip(kept_grads, _route.flags(needs)))  # type: ignore[assignment]
        return (
            _like(grads[0], x),
            _like(grads[1], y),
            _sum_to(grads[2], c1),
            _sum_to(grads[3], c2),
            None,
            None,
        )

    @staticmethod
    def jvp(
        ctx: Any, tx: Optional[Tensor], ty: Optional[Tensor], tc1: Any, tc2: Any, *_: Any
    ) -> tuple[Any, ...]:
        """Forward mode through the traced route: ``torch.func.jvp`` under functorch, and under
        plain forward AD (which does not nest) reverse mode transposed: ``J v = d/du <J^T u, v>``."""
        x, y = ctx.saved_tensors[:2]
        plan: Plan = ctx.plan
        primals = (x, y, *ctx.scalars)
        tangents = (tx, ty, tc1, tc2)
        used = [i for i, t in enumerate(tangents) if isinstance(t, Tensor)]

        def run(*args: Any) -> list[Tensor]:
            full = list(primals)
            for i, arg in zip(used, args):
                full[i] = arg
            a, b = cast(full[0], full[1], traced.BACKEND)
            per_image, extra = traced.similarity(a, b, full[2], full[3], plan)
            return [per_image] + ([extra] if extra is not None else [])

        inputs: list[Tensor] = [primals[i] for i in used]
        vectors: list[Optional[Tensor]] = [tangents[i] for i in used]
        if _route.transforms_active():
            d = list(torch.func.jvp(run, tuple(inputs), tuple(vectors))[1])
        else:
            with torch.enable_grad():
                leaves = [p.detach().requires_grad_() for p in inputs]
                outputs = run(*leaves)
                probes = [torch.zeros_like(o, requires_grad=True) for o in outputs]
                vjps = torch.autograd.grad(outputs, leaves, probes, create_graph=True, allow_unused=True)
                dot = outputs[0].new_zeros(())
                for v, t in zip(vjps, vectors):
                    if v is not None and t is not None:
                        dot = dot + (v * t).sum()
                d = [
                    g if g is not None else torch.zeros_like(o)
                    for g, o in zip(torch.autograd.grad(dot, probes, allow_unused=True), outputs)
                ]
        return (d[0], d[1] if len(d) > 1 else d[0].new_empty(0), *[None] * ctx.kept_count)

    @staticmethod
    def vmap(
        info: Any,
        in_dims: tuple[Optional[int], ...],
        x: Tensor,
        y: Tensor,
        c1: Scalar,
        c2: Scalar,
        plan: Plan,
        backend: Backend,
    ) -> tuple[Any, Any]:
        """Vmapped calls fold the vmapped dimension into the batch of images (each image is
        independent of the others); a vmapped c1 or c2 runs image by image."""
        dx, dy, dc1, dc2 = in_dims[:4]
        size = info.batch_size

        def batched(t: Any, d: Optional[int]) -> Any:
            if not isinstance(t, Tensor):
                return t
            return t.movedim(d, 0) if d is not None else t.expand(size, *t.shape)

        xb, yb, c1b, c2b = (batched(t, d) for t, d in zip((x, y, c1, c2), (dx, dy, dc1, dc2)))
        if dc1 is not None or dc2 is not None:
            results = [
                _apply(
                    xb[i],
                    yb[i],
                    c1b[i] if dc1 is not None else c1,
                    c2b[i] if dc2 is not None else c2,
                    plan,
                    backend,
                )
                for i in range(size)
            ]
            outputs = tuple(torch.stack(parts) for parts in zip(*results))
            return outputs, (0,) * len(outputs)
        per_image, extra, *kept = _apply(
            xb.reshape(-1, *xb.shape[2:]), yb.reshape(-1, *yb.shape[2:]), c1, c2, plan, backend
        )

        def split(t: Tensor, dim: int) -> Tensor:
            return t.reshape(*t.shape[:dim], size, t.shape[dim] // size, *t.shape[dim + 1 :])

        outputs = (
            split(per_image, 0),
            split(extra, 0) if extra.numel() else extra.new_empty(size, 0),
            *(split(t, 1) for t in kept),  # every kept tensor is (S, N, C, ...)
        )
        return outputs, (0, 0, *[1] * len(kept))


# Function.apply binds the arguments to forward's signature at every call (where setup_context is
# defined); a signature given once spares inspect.signature its work (~15% of a 16x16 call's
# autograd.Function overhead), and _APPLY skips the binding where torch allows (every argument is
# passed, positionally).
_Similarity.forward.__signature__ = inspect.signature(_Similarity.forward)  # type: ignore[attr-defined]
_APPLY = function_apply(_Similarity)


def _apply(x: Tensor, y: Tensor, c1: Scalar, c2: Scalar, plan: Plan, backend: Backend) -> tuple[Tensor, ...]:
    out: tuple[Tensor, ...] = _APPLY(x, y, c1, c2, plan, backend)
    return out
