"""The dtypes a computation runs in, and what is made in them: :func:`compute_dtype`, the images
as a backend reads them (:func:`cast`), the constants (:func:`constants`) and empty outputs
(:func:`output_like`). The one home of these rules, for the engine, the op and every backend.

Images are float32 or float64, or float16 / bfloat16 for a backend that reads them (computed in
float32); the constants and every output are in the compute dtype.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor

from ssim_patch import _formula

if TYPE_CHECKING:
    from ssim_patch.backends._protocol import Backend, Plan, Scalar

#: The reduced-precision dtypes: computed in float32.
REDUCED = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype SSIM is computed in for images of ``dtype``: float64 stays, the rest is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def constants(c1: Scalar, c2: Scalar, plan: Plan, x: Tensor) -> _formula.Constants:
    """``_formula.constants`` for ``plan`` in the compute dtype of images ``x``, on their device."""
    dtype = compute_dtype(x.dtype)
    like = x if x.dtype == dtype else x.new_empty((), dtype=dtype)
    return _formula.constants(c1, c2, plan.eps, like)


def cast(x: Tensor, y: Tensor, backend: Backend) -> tuple[Tensor, Tensor]:
    """The images as ``backend`` reads them: float32 copies of float16 / bfloat16 ones for a
    backend that does not read those itself (differentiable: the gradient comes back in the
    images' dtype). The one place reduced precision is cast."""
    if x.dtype in REDUCED and not backend.reads_reduced_precision:
        return x.float(), y.float()
    return x, y


def output_like(x: Tensor, plan: Plan) -> tuple[Tensor, Optional[Tensor]]:
    """Empty tensors shaped and typed as a forward's ``(per_image, extra)`` for images ``x``."""
    dtype = compute_dtype(x.dtype)
    n, channels, *spatial = x.shape
    per_image = x.new_empty((n,), dtype=dtype)
    if plan.output == "map":
        return per_image, x.new_empty((n, channels, *plan.blur.out_size(tuple(spatial))), dtype=dtype)
    if plan.output == "cs":
        return per_image, x.new_empty((n,), dtype=dtype)
    return per_image, None
