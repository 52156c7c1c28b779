"""Replacements for each hook point, with the exact signature and return contract of the original.

- ``_ssim_update`` (0.10 on): per-image SSIM; with a flag, also the SSIM map or the per-image
  contrast sensitivity.
- ``_ssim_compute`` (0.8-0.9): the same, each part reduced with ``reduction`` (the map too, as
  those releases do).
- ``_uqi_compute``: the corrected UQI map, reduced with ``reduction`` (before 1.0 it also takes
  ``data_range`` and ``return_contrast_sensitivity``, which the release ignores, and so do we).
- ``UniversalImageQualityIndex.update`` (1.2.1 on): the release sums ``_uqi_compute(...,
  reduction="sum")`` and adds the count of valid windows; the replacement adds the size of the
  map that the bound ``_uqi_compute`` computes (the whole image with padding="same"). An instance
  created before ``apply()`` holds the release's own ``update`` (``Metric.__init__`` wraps the
  bound method): while patched that function runs :func:`_update_trampoline`'s code
  (``_redirect``), which calls the replacement, so every instance gets the same value.

Errors are the release's own where the release rejects the arguments: when the corrected engine
rejects a call (ValueError/TypeError), the original is called with the same arguments, and if one
of torchmetrics' own ``raise`` statements rejects them, that exception is raised unchanged. If the
original returns (say, a NaN) or fails somewhere deeper (inside torch, such as ``F.pad`` on an
image smaller than its pad, or a builtin such as ``int(nan)``), the engine's clearer error is
raised.

Imported by the patcher only when a torchmetrics module with a hook point is loaded (it imports
torch).
"""

from __future__ import annotations

import dis
import functools
import math
import types
from collections.abc import Sequence
from typing import Any, Callable, Optional, TypeVar, Union

from torch import Tensor

from ssim_patch import _redirect
from ssim_patch._options import check_reduction
from ssim_patch._releases import (
    SSIM_COMPUTE,
    SSIM_UPDATE,
    UQI_COMPUTE,
    UQI_COMPUTE_0_8,
    UQI_METRIC_UPDATE,
    HookPoint,
)
from ssim_patch.engine import ImageTooSmallError, _reduce, _ssim_per_image, uqi

Result = Union[Tensor, tuple[Tensor, Tensor]]
R = TypeVar("R")


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


def _or_release_error(original: Callable[..., Any], args: tuple[Any, ...], corrected: Callable[[], R]) -> R:
    """``corrected()``, or where the engine rejects the call, the exception :func:`_error_for`
    picks for ``original(*args)`` (an image too small for the window says how to change the
    patch's padding: torchmetrics' API has no ``padding`` argument)."""
    try:
        return corrected()
    except ImageTooSmallError as exc:
        rejected: Exception = exc.through_apply()
    except (ValueError, TypeError) as exc:
        rejected = exc
    raise _error_for(original, args, rejected)  # outside the handler: no chained context


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
        return _or_release_error(original, args, lambda: _ssim_per_image(*args, padding))

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

        def corrected() -> Result:
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
            if isinstance(out, tuple):
                return _reduce(out[0], reduction), _reduce(out[1], reduction)
            return _reduce(out, reduction)

        return _or_release_error(original, args, corrected)

    return _ssim_compute


# --- UQI ----------------------------------------------------------------------------------------


def _padding_of(func: object) -> Optional[str]:
    """The padding of a replacement made here, or None for anything else."""
    if type(func) is not types.FunctionType:
        return None
    # Not func.__dict__.get: dynamo of torch 2.11 cannot trace it (a function has no class
    # attribute of that name, so getattr reads the same).
    padding = getattr(func, "__ssim_patch__", None)
    return padding if isinstance(padding, str) else None


def _check_planar(preds: object) -> None:
    """torchmetrics' UQI is for (N, C, H, W) images (the engine also takes 3-D ones)."""
    # Not getattr(preds, "shape", None) on a tensor: dynamo of torch 2.1-2.5 cannot trace it.
    shape = preds.shape if isinstance(preds, Tensor) else getattr(preds, "shape", None)
    if shape is not None and len(shape) != 4:
        raise ValueError(f"UQI takes images of shape (N, C, H, W), got shape {tuple(shape)}.")


def _corrected_uqi(
    padding: str,
    original: Callable[..., Any],
    args: tuple[Any, ...],
    preds: Tensor,
    target: Tensor,
    kernel_size: Sequence[int],
    sigma: Sequence[float],
    reduction: Any,
) -> Tensor:
    """The corrected UQI for a replacement of ``_uqi_compute`` called with ``args``; the release's
    own error where the release rejects them."""

    def corrected() -> Tensor:
        _check_planar(preds)
        return uqi(
            preds,
            target,
            kernel_size=kernel_size,
            sigma=sigma,
            reduction=reduction,
            padding=padding,  # type: ignore[arg-type]
        )

    return _or_release_error(original, args, corrected)


def _uqi_adapter(padding: str, original: Callable[..., Any]) -> Callable[..., Any]:
    def _uqi_compute(
        preds: Tensor,
        target: Tensor,
        kernel_size: Sequence[int] = (11, 11),
        sigma: Sequence[float] = (1.5, 1.5),
        reduction: Any = "elementwise_mean",
    ) -> Tensor:
        args = (preds, target, kernel_size, sigma, reduction)
        return _corrected_uqi(padding, original, args, preds, target, kernel_size, sigma, reduction)

    return _uqi_compute


def _uqi_0_8_adapter(padding: str, original: Callable[..., Any]) -> Callable[..., Any]:
    def _uqi_compute(
        preds: Tensor,
        target: Tensor,
        kernel_size: Sequence[int] = (11, 11),
        sigma: Sequence[float] = (1.5, 1.5),
        reduction: Any = "elementwise_mean",
        data_range: Optional[float] = None,
        return_contrast_sensitivity: bool = False,
    ) -> Tensor:
        # data_range and return_contrast_sensitivity: accepted and unused, as by these releases.
        args = (preds, target, kernel_size, sigma, reduction, data_range, return_contrast_sensitivity)
        return _corrected_uqi(padding, original, args, preds, target, kernel_size, sigma, reduction)

    return _uqi_compute


def _map_size(shape: Sequence[int], kernel_size: Sequence[int], padding: str) -> int:
    """The number of elements of the UQI map of (N, C, H, W) images: every pixel with "same",
    the windows wholly inside the image with "valid"."""
    spatial = shape[2:] if padding == "same" else [n - int(k) + 1 for n, k in zip(shape[2:], kernel_size)]
    return math.prod([*shape[:2], *spatial])


def _metric_update_adapter(padding: str, original: Callable[..., Any]) -> Callable[..., Any]:
    namespace: dict[str, Any] = getattr(original, "__globals__", {})  # torchmetrics.image.uqi's

    def update(self: Any, preds: Tensor, target: Tensor) -> None:
        compute = namespace.get("_uqi_compute")  # what the release's update would call now
        bound = _padding_of(compute)
        summing = self.reduction not in (None, "none") and "numel" in getattr(self, "_defaults", {})
        if bound is None or not summing:
            # Unpatched (say, after revert()), or an instance that keeps preds and target: the
            # release's own update (its own code, also while the original runs the trampoline).
            return _redirect.own(original)(self, preds, target)  # type: ignore[no-any-return]
        preds, target = namespace["_uqi_update"](preds, target)
        assert compute is not None
        self.sum_uqi += compute(preds, target, self.kernel_size, self.sigma, reduction="sum")
        self.numel += _map_size(preds.shape, self.kernel_size, bound)
        return None

    return update


def _update_trampoline(self: Any, preds: Tensor, target: Tensor) -> None:
    """The code the release's ``UniversalImageQualityIndex.update`` runs while patched (it runs
    with torchmetrics' globals, so it imports what it calls)."""
    from ssim_patch._adapters import pre_apply_update

    pre_apply_update(self, preds, target)


def pre_apply_update(self: Any, preds: Tensor, target: Tensor) -> None:
    """What the release's ``update`` does while patched (an instance created before ``apply()``
    holds it): the replacement in the instance's class or the nearest base; where none is bound
    (the class attribute was put back by hand), the release's own update."""
    fallback: Optional[Callable[..., Any]] = None
    for klass in type(self).__mro__:
        method: Any = klass.__dict__.get("update")
        if _padding_of(method) is not None:
            method(self, preds, target)
            return
        if fallback is None and callable(method) and _redirect.own(method) is not method:
            fallback = _redirect.own(method)
    if fallback is None:  # called on an object of another class: the release's update, as it would
        copies = _redirect.release_copies(UQI_METRIC_UPDATE.name)
        if not copies:
            raise RuntimeError("the UniversalImageQualityIndex.update trampoline runs with no release update")
        fallback = copies[-1]
    fallback(self, preds, target)


def trampoline(hook: HookPoint) -> Optional[Callable[..., Any]]:
    """The function whose code ``hook``'s original runs while patched (a method hook point that
    instances bind at creation), or None."""
    return _update_trampoline if hook == UQI_METRIC_UPDATE else None


_FACTORIES: dict[HookPoint, Callable[[str, Callable[..., Any]], Callable[..., Any]]] = {
    SSIM_UPDATE: _update_adapter,
    SSIM_COMPUTE: _compute_adapter,
    UQI_COMPUTE: _uqi_adapter,
    UQI_COMPUTE_0_8: _uqi_0_8_adapter,
    UQI_METRIC_UPDATE: _metric_update_adapter,
}


def make_replacement(hook: HookPoint, original: Callable[..., Any], padding: str) -> Callable[..., Any]:
    """The corrected function for ``hook``, dressed as ``original`` (``__wrapped__`` is the original)."""
    replacement = _FACTORIES[hook](padding, original)
    functools.update_wrapper(replacement, original)
    # Keep the original's exact defaults, whatever the release wrote there.
    replacement.__defaults__ = getattr(original, "__defaults__", None)
    replacement.__kwdefaults__ = getattr(original, "__kwdefaults__", None)
    replacement.__ssim_patch__ = padding  # type: ignore[attr-defined]
    return replacement
