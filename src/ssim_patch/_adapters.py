"""Replacements for each hook point, with the exact signature and return contract of the original.

- ``_ssim_update`` (0.10 on): per-image SSIM; with a flag, also the SSIM map or the per-image
  contrast sensitivity.
- ``_ssim_compute`` (0.8-0.9): the same, each part reduced with ``reduction`` (the map too, as
  those releases do).

Errors are the release's own where the release rejects the arguments: when the corrected engine
rejects a call (ValueError/TypeError), the original is called with the same arguments, and if one
of torchmetrics' own ``raise`` statements rejects them, that exception is raised unchanged. If the
original returns (say, a NaN) or fails somewhere deeper (inside torch, such as ``F.pad`` on an
image smaller than its pad, or a builtin such as ``int(nan)``), the engine's clearer error is
raised.

Imported by the patcher only when torchmetrics' SSIM module is loaded (it imports torch).
"""

from __future__ import annotations

import dis
import functools
from collections.abc import Sequence
from typing import Any, Callable, Union

from torch import Tensor

from ssim_patch._options import check_reduction
from ssim_patch._releases import SSIM_COMPUTE, SSIM_UPDATE, HookPoint
from ssim_patch.engine import _reduce, _ssim_per_image

Result = Union[Tensor, tuple[Tensor, Tensor]]


def _raised_by_torchmetrics(exc: BaseException) -> bool:
    """True when ``exc`` comes from a ``raise`` statement in torchmetrics' own code (an argument
    check of the release), not from torch, a builtin or Python below it."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", ""))
    if module != "torchmetrics" and not module.startswith("torchmetrics."):
        return False
    for instruction in dis.get_instructions(tb.tb_frame.f_code):
        if instruction.offset == tb.tb_lasti:
            return instruction.opname == "RAISE_VARARGS"
    return False


def _error_for(original: Callable[..., Any], args: tuple[Any, ...], ours: Exception) -> BaseException:
    """The exception to raise for a call the engine rejected with ``ours``: the release's own
    when one of its argument checks rejects the call too, else ``ours``."""
    try:
        original(*args)
    except Exception as theirs:
        return theirs if _raised_by_torchmetrics(theirs) else ours
    return ours


def _update_adapter(padding: str, original: Callable[..., Any]) -> Callable[..., Any]:
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
    ) -> Result:
        args = (
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
        )
        try:
            return _ssim_per_image(*args, padding)
        except (ValueError, TypeError) as exc:
            rejected: Exception = exc
        raise _error_for(original, args, rejected)  # outside the handler: no chained context

    return _ssim_update


def _compute_adapter(padding: str, original: Callable[..., Any]) -> Callable[..., Any]:
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
    ) -> Result:
        try:
            check_reduction(reduction)
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
        except (ValueError, TypeError) as exc:
            rejected: Exception = exc
        else:
            if isinstance(out, tuple):
                return _reduce(out[0], reduction), _reduce(out[1], reduction)
            return _reduce(out, reduction)
        args = (
            preds,
            target,
            gaussian_kernel,
            sigma,
            kernel_size,
            reduction,
            data_range,
            k1,
            k2,
            return_full_image,
            return_contrast_sensitivity,
        )
        raise _error_for(original, args, rejected)  # outside the handler: no chained context

    return _ssim_compute


_FACTORIES: dict[str, Callable[[str, Callable[..., Any]], Callable[..., Any]]] = {
    SSIM_UPDATE.name: _update_adapter,
    SSIM_COMPUTE.name: _compute_adapter,
}


def make_replacement(hook: HookPoint, original: Callable[..., Any], padding: str) -> Callable[..., Any]:
    """The corrected function for ``hook``, dressed as ``original`` (``__wrapped__`` is the original)."""
    replacement = _FACTORIES[hook.name](padding, original)
    functools.update_wrapper(replacement, original)
    # Keep the original's exact defaults, whatever the release wrote there.
    replacement.__defaults__ = getattr(original, "__defaults__", None)
    replacement.__kwdefaults__ = getattr(original, "__kwdefaults__", None)
    replacement.__ssim_patch__ = padding  # type: ignore[attr-defined]
    return replacement
