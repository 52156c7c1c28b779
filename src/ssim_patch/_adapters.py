"""Replacements for each hook point, with the exact signature and return contract of the original.

- ``_ssim_update`` (0.10 on): per-image SSIM; with a flag, also the SSIM map or the per-image
  contrast sensitivity.
- ``_ssim_compute`` (0.8-0.9): the same, each part reduced with ``reduction`` (the map too, as
  those releases do).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Callable, Union

from torch import Tensor

from ssim_patch._releases import SSIM_COMPUTE, SSIM_UPDATE, HookPoint
from ssim_patch.engine import _check_reduction, _reduce, _ssim_per_image


def _update_adapter(padding: str) -> Callable[..., Any]:
    def _ssim_update(
        preds: Tensor,
        target: Tensor,
        gaussian_kernel: bool = True,
        sigma: Union[float, Sequence[float]] = 1.5,
        kernel_size: Union[int, Sequence[int]] = 11,
        data_range: Any = None,
        k1: float = 0.01,
        k2: float = 0.03,
        return_full_image: bool = False,
        return_contrast_sensitivity: bool = False,
    ) -> Union[Tensor, tuple[Tensor, Tensor]]:
        return _ssim_per_image(
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

    return _ssim_update


def _compute_adapter(padding: str) -> Callable[..., Any]:
    def _ssim_compute(
        preds: Tensor,
        target: Tensor,
        gaussian_kernel: bool = True,
        sigma: Union[float, Sequence[float]] = 1.5,
        kernel_size: Union[int, Sequence[int]] = 11,
        reduction: Any = "elementwise_mean",
        data_range: Any = None,
        k1: float = 0.01,
        k2: float = 0.03,
        return_full_image: bool = False,
        return_contrast_sensitivity: bool = False,
    ) -> Union[Tensor, tuple[Tensor, Tensor]]:
        _check_reduction(reduction)
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
            return _reduce(out[0], reduction), _reduce(out[1], reduction)
        return _reduce(out, reduction)

    return _ssim_compute


_FACTORIES: dict[str, Callable[[str], Callable[..., Any]]] = {
    SSIM_UPDATE.name: _update_adapter,
    SSIM_COMPUTE.name: _compute_adapter,
}


def make_replacement(hook: HookPoint, original: Callable[..., Any], padding: str) -> Callable[..., Any]:
    """The corrected function for ``hook``, dressed as ``original`` (``__wrapped__`` is the original)."""
    replacement = _FACTORIES[hook.name](padding)
    functools.update_wrapper(replacement, original)
    # Keep the original's exact defaults, whatever the release wrote there.
    replacement.__defaults__ = getattr(original, "__defaults__", None)
    replacement.__kwdefaults__ = getattr(original, "__kwdefaults__", None)
    replacement.__ssim_patch__ = padding  # type: ignore[attr-defined]
    return replacement
