"""The dtypes a computation runs in, and what is made in them: :func:`compute_dtype`, the images
as a backend reads them (:func:`cast`), the constants (:func:`constants`, kept 0-d tensors:
:func:`kept`) and empty outputs (:func:`output_like`). The one home of these rules, for the
engine, the op and every backend.

Images are float32 or float64, or float16 / bfloat16 for a backend that reads them (computed in
float32); the constants and every output are in the compute dtype.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Union

import torch
from torch import Tensor

from ssim_patch import _formula
from ssim_patch._torch_features import fake_mode_active, plain_eager
from ssim_patch.backends import _route
from ssim_patch.backends._kept import KeptTensors

if TYPE_CHECKING:
    from ssim_patch.backends._protocol import Backend, Plan, Scalar

#: The reduced-precision dtypes: computed in float32.
REDUCED = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype SSIM is computed in for images of ``dtype``: float64 stays, the rest is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def constants(c1: Scalar, c2: Scalar, plan: Plan, x: Tensor) -> _formula.Constants:
    """``_formula.constants`` for ``plan`` in the compute dtype of images ``x``, on their device;
    for numbers, made once and kept where the call may keep them (:func:`keeps`: on CUDA each
    constant made is a fill launch)."""
    dtype = compute_dtype(x.dtype)
    like = x if x.dtype == dtype else x.new_empty((), dtype=dtype)
    if not keeps(like):
        return _formula.constants(c1, c2, plan.eps, like)
    if isinstance(c1, Tensor) or isinstance(c2, Tensor):
        return _formula.constants(c1, c2, plan.eps, like, kept((-1.0, 1.0), like))
    key = (repr(c1), repr(c2), repr(plan.eps), like.dtype, like.device)

    def make() -> _formula.Constants:
        with torch.inference_mode(False):
            return _formula.constants(c1, c2, plan.eps, like, kept((-1.0, 1.0), like))

    return _CONSTANTS.get(key, like.device, make)


#: Kept constants: :func:`constants` by (``repr`` of c1, c2 and eps, dtype, device) and
#: :func:`kept` by (``repr`` of the numbers, dtype, device); ``repr`` tells -0.0 from 0.0 (equal
#: keys to a dict) and 1 from 1.0. Made outside inference mode (any later call may read them,
#: autograd save them), never written to; safe across CUDA streams (:mod:`._kept`).
_CONSTANTS: KeptTensors[_formula.Constants] = KeptTensors()
_KEPT: KeptTensors[Tensor] = KeptTensors()
#: Tensor types kept constants may serve (any other: a subclass, fake, functional ...).
_PLAIN = (Tensor, torch.nn.Parameter)


def keeps(like: Tensor) -> bool:
    """True when a call on tensors like ``like`` may take (and keep) :func:`kept` tensors:
    plain tensors, no fake-tensor mode (a mode that only watches, as a counting one, may be on), no
    transform, no trace or compilation (that would hold a kept tensor as a constant of its graph),
    no CUDA graph capture (whose memory pool a tensor made then would come from)."""
    if _route.tracing() or _route.leaving():  # first: dynamo reads these (and not the mode stack)
        return False
    if not (plain_eager(like) or (type(like) in _PLAIN and not fake_mode_active(like))):
        return False  # before asking CUDA: fake CUDA tensors need no GPU
    return like.device.type != "cuda" or not torch.cuda.is_current_stream_capturing()


def kept(values: Union[float, tuple[float, ...]], like: Tensor) -> Tensor:
    """``values`` (a number: a 0-d tensor; a tuple: 1-d) in ``like``'s dtype and device, made once
    and kept (on CUDA making one is a launch); call it only where :func:`keeps` is True."""
    key = (repr(values), like.dtype, like.device)

    def make() -> Tensor:
        with torch.inference_mode(False):
            if isinstance(values, tuple):
                return torch.tensor(values, dtype=like.dtype, device=like.device)
            return torch.full((), values, dtype=like.dtype, device=like.device)

    return _KEPT.get(key, like.device, make)


def exact_products(dtype: torch.dtype) -> bool:
    """Whether CPU matrix products of ``dtype`` keep its precision: float64 always, float32 only
    at torch's "highest" float32 matmul precision ("medium", which training scripts set for GPUs,
    lets oneDNN multiply in bfloat16 on CPUs that have it). The setting is read per call: a
    script may change it at any time."""
    if dtype == torch.float64:
        return True
    if dtype != torch.float32:
        return False
    try:
        return torch.get_float32_matmul_precision() == "highest"
    except RuntimeError:  # set through torch's newer per-backend API as well: not known to be exact
        return False


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
