"""The corrected SSIM: whole-map SSIM with reflect padding sized from the window actually used.

Semantics (docs/semantics.md): per spatial axis i (tensor dim 2+i) a Gaussian window of
``2*int(3.5*sigma_i+0.5)+1`` taps or a uniform window of ``kernel_size_i`` taps; "same" padding
reflects by ``(size_i-1)//2`` so the map has the input's shape, "valid" keeps only windows wholly
inside the image. SSIM and contrast sensitivity are means over the whole map. The arguments are
coerced and checked, and the plan made, in :mod:`ssim_patch._arguments`; this module is the public
``ssim`` / ``uqi`` and the per-image call into the backends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
from torch import Tensor

from ssim_patch._arguments import (
    DataRange,
    ImageTooSmallError,
    Padding,
    Reduction,
    _check_inputs,
    _check_sizes,
    _constants,
    _data_range,
    _ssim_plan,
    _uqi_plan,
)
from ssim_patch._options import check_padding as _check_padding
from ssim_patch._options import check_reduction as _check_reduction
from ssim_patch.backends import _op
from ssim_patch.backends._dtypes import compute_dtype
from ssim_patch.backends._protocol import Output

__all__ = ["DataRange", "ImageTooSmallError", "Padding", "Reduction", "ssim", "uqi"]


def _images_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the images go to the backends in: float16 / bfloat16 as they are (a backend
    reads them, or ``backends._op`` casts them), integers as float32, the rest as they are."""
    return dtype if dtype in (torch.float16, torch.bfloat16) else compute_dtype(dtype)


def _ssim_per_image(
    preds: Tensor,
    target: Tensor,
    gaussian_kernel: bool = True,
    sigma: Union[float, Sequence[float]] = 1.5,
    kernel_size: Union[int, Sequence[int]] = 11,
    data_range: DataRange = None,
    k1: float = 0.01,
    k2: float = 0.03,
    return_full_image: bool = False,
    return_contrast_sensitivity: bool = False,
    padding: str = "same",
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Per-image SSIM, shape (N,); with a flag also the SSIM map or the per-image contrast term.

    This is what torchmetrics' ``_ssim_update`` returns from 0.10 on. Inputs are checked here.
    """
    _check_inputs(preds, target)
    _check_padding(padding)
    if return_full_image and return_contrast_sensitivity:
        raise ValueError(
            "`return_full_image` and `return_contrast_sensitivity` are mutually exclusive: set at most one."
        )
    output: Output = "map" if return_full_image else "cs" if return_contrast_sensitivity else "ssim"
    windows, plan = _ssim_plan(gaussian_kernel, sigma, kernel_size, preds.ndim - 2, padding, output)
    _check_sizes(preds.shape, windows, padding)

    out_dtype = preds.dtype if preds.is_floating_point() else torch.float32
    dtype = compute_dtype(preds.dtype)
    images = _images_dtype(preds.dtype)
    x, y, big_l = _data_range(_as(preds, images), _as(target, images), data_range)
    c1, c2 = _constants(big_l, k1, k2, x if x.dtype == dtype else x.new_empty(0, dtype=dtype))
    per_image, extra = _op.similarity(x, y, c1, c2, plan)
    if extra is None:
        return _as(per_image, out_dtype)
    return _as(per_image, out_dtype), _as(extra, out_dtype)


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)``, without the call where ``t`` has it already."""
    return t if t.dtype == dtype else t.to(dtype)


def _reduce(values: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "elementwise_mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def ssim(
    preds: Tensor,
    target: Tensor,
    *,
    gaussian_kernel: bool = True,
    sigma: Union[float, Sequence[float]] = 1.5,
    kernel_size: Union[int, Sequence[int]] = 11,
    reduction: Reduction = "elementwise_mean",
    data_range: DataRange = None,
    k1: float = 0.01,
    k2: float = 0.03,
    return_full_image: bool = False,
    return_contrast_sensitivity: bool = False,
    padding: Padding = "same",
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Corrected SSIM of ``preds`` against ``target``, (N, C, H, W) or (N, C, D, H, W).

    Arguments, defaults and return shapes are those of torchmetrics'
    ``structural_similarity_index_measure``: the reduced SSIM, and with ``return_full_image``
    also the SSIM map, with ``return_contrast_sensitivity`` also the per-image contrast term.
    ``padding="same"`` reflect-pads so the whole image counts; ``"valid"`` keeps only windows
    wholly inside the image (Wang et al.'s ``ssim_index.m``).
    """
    _check_reduction(reduction)
    if isinstance(preds, Tensor) and isinstance(target, Tensor) and target.dtype != preds.dtype:
        target = target.to(preds.dtype)
    out = _ssim_per_image(
        preds,
        target,
        gaussian_kernel,
        sigma,
        kernel_size,
        data_range,
        k1,
        k2,
        return_full_image,
        return_contrast_sensitivity,
        padding,
    )
    if isinstance(out, tuple):
        return _reduce(out[0], reduction), out[1]
    return _reduce(out, reduction)


def uqi(
    preds: Tensor,
    target: Tensor,
    *,
    kernel_size: Union[int, Sequence[int]] = (11, 11),
    sigma: Union[float, Sequence[float]] = (1.5, 1.5),
    reduction: Reduction = "elementwise_mean",
    padding: Padding = "same",
) -> Tensor:
    """Corrected universal image quality index (Wang and Bovik) of ``preds`` against ``target``.

    Arguments, defaults and return shapes are those of torchmetrics'
    ``universal_image_quality_index``: a Gaussian window of ``kernel_size`` taps with ``sigma`` per
    axis, ``eps`` (the machine epsilon of the input's dtype) in the denominator; the reduction is
    over the whole map (``"none"``: the map itself). ``padding="same"`` reflect-pads by the window
    actually used so the whole image counts; ``"valid"`` keeps only windows wholly inside it.
    """
    _check_reduction(reduction)
    if isinstance(preds, Tensor) and isinstance(target, Tensor) and target.dtype != preds.dtype:
        target = target.to(preds.dtype)
    _check_inputs(preds, target)
    _check_padding(padding)
    out_dtype = preds.dtype if preds.is_floating_point() else torch.float32
    output: Output = "ssim" if reduction == "elementwise_mean" else "map"
    eps = torch.finfo(out_dtype).eps
    windows, plan = _uqi_plan(sigma, kernel_size, preds.ndim - 2, padding, output, eps)
    _check_sizes(preds.shape, windows, padding)
    images = _images_dtype(preds.dtype)
    per_image, full = _op.similarity(_as(preds, images), _as(target, images), 0.0, 0.0, plan)
    if reduction == "elementwise_mean":
        return _as(per_image.mean(), out_dtype)
    assert full is not None
    return _as(full.sum() if reduction == "sum" else full, out_dtype)
