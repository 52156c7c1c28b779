"""What every backend answers: the :class:`Backend` protocol, the :class:`Plan` it runs, and the
:class:`Needs` of a gradient. The algebra backends share (shifts, the loss's upstream gradient,
``W^T`` recombined into image gradients) is in :mod:`ssim_patch.backends._algebra`.

A backend computes SSIM (or UQI) of ``x``, ``y`` ``(N, C, *spatial)`` (2 or 3 spatial axes, same
shape, dtype and device) with no autograd inside: :meth:`Backend.forward` and
:meth:`Backend.backward` are called by the one ``autograd.Function`` in
:mod:`ssim_patch.backends._op`, which never asks which backend it holds.

Dtypes: ``x``, ``y`` are float32 or float64, or, for a backend whose ``reads_reduced_precision`` is
true, also float16 / bfloat16 (read as they are, computed in float32). The constants ``k`` and
every output are in the compute dtype (:func:`ssim_patch.backends._dtypes.compute_dtype`); the op
casts the image gradients to the images' dtype where they differ.

Declarations only: the dtype rules and what is made in them are in
:mod:`ssim_patch.backends._dtypes`.

What a forward keeps for its backward is the backend's own business, with two rules: every kept
tensor is shaped ``(S, N, C, ...)`` (any S, any trailing dims; a vmap rule folds the vmapped
dimension into N and splits dim 1 again), and :meth:`Backend.kept_like` gives tensors of the same
shapes and dtypes without computing anything (for a fake/meta implementation of a custom op).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional, Protocol, Union

from torch import Tensor

from ssim_patch import _filters, _formula

Output = Literal["ssim", "map", "cs"]
Scalar = Union[float, Tensor]

#: What a forward keeps for its backward: tensors each ``(S, N, C, ...)``.
Kept = tuple[Tensor, ...]
#: Gradients for x, y, c1, c2 (None where not needed); c1's and c2's are 0-d.
Grads = tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor], Optional[Tensor]]


@dataclass(frozen=True)
class Plan:
    """What to compute: the window ``blur``, ``eps`` in the denominator (UQI; None for SSIM) and
    what comes back with the per-image mean: nothing, the map, or the per-image mean of cs."""

    blur: _filters.Blur
    eps: Optional[float] = None
    output: Output = "ssim"


@dataclass(frozen=True)
class Needs:
    """Which inputs need a gradient: x, y, c1, c2."""

    x: bool
    y: bool
    c1: bool
    c2: bool

    @classmethod
    def of(cls, *inputs: Any) -> Needs:
        """From the inputs (x, y, c1, c2): a tensor that requires grad needs one."""
        return cls(*(isinstance(v, Tensor) and v.requires_grad for v in inputs))


class Backend(Protocol):
    """One way of computing SSIM. Implementations are stateless singletons (``BACKEND`` in their
    module), registered by name in :mod:`ssim_patch.backends`."""

    #: The name ``SSIM_PATCH_BACKEND`` selects it by: "cpu", "conv", "triton", "traced".
    name: str
    #: True when float16 / bfloat16 images are read as they are; else the op casts them to float32.
    reads_reduced_precision: bool

    def unsupported(self, x: Tensor, plan: Plan) -> Optional[str]:
        """Why this backend cannot compute SSIM of images like ``x`` for ``plan`` (device, dtype,
        number of spatial axes, a missing package ...), as a short clause; None when it can."""
        ...

    def forward(
        self, x: Tensor, y: Tensor, k: _formula.Constants, plan: Plan, keep: Optional[Needs]
    ) -> tuple[Tensor, Optional[Tensor], Optional[Kept]]:
        """``(per_image (N,), extra, kept)``: ``extra`` the map ``(N, C, *out)`` or the per-image
        mean of cs ``(N,)`` as ``plan.output`` asks (else None); ``kept`` (only with ``keep``, the
        inputs that need a gradient) what :meth:`backward` needs besides x and y."""
        ...

    def kept_like(self, x: Tensor, plan: Plan, keep: Needs) -> Kept:
        """Empty tensors with the shapes and dtypes :meth:`forward` keeps (nothing computed)."""
        ...

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
        """Gradients for x, y, c1, c2 from the outputs' gradients (``g_image`` ``(N,)``,
        ``g_extra`` of ``extra``'s shape; either may be None, not both). ``needs`` is the
        ``keep`` the forward saw. Where a forward kept maps for a unit upstream gradient, this is
        where they are scaled."""
        ...
