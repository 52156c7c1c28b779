"""ssim-patch: corrected SSIM and UQI for every torchmetrics release from 0.8.2 to 1.9.0.

``import ssim_patch; ssim_patch.apply()`` makes every torchmetrics SSIM and MS-SSIM API (functional
and Metric classes) use :func:`ssim_patch.ssim`'s corrected computation, and every UQI API
(``universal_image_quality_index``, ``UniversalImageQualityIndex``) :func:`ssim_patch.uqi`'s.

Importing ssim_patch loads neither torch nor torchmetrics: the engine (and with it torch) is
loaded when a torchmetrics module with a hook point is imported, or when ``ssim_patch.ssim`` or
``ssim_patch.uqi`` is first used.
"""

from typing import TYPE_CHECKING, Any

from ssim_patch._patcher import (
    PatchError,
    PatchReport,
    UntestedReleaseWarning,
    apply,
    is_applied,
    patched,
    revert,
    status,
)
from ssim_patch._version import __version__

if TYPE_CHECKING:
    from ssim_patch.engine import ImageTooSmallError, ssim, uqi

__all__ = [
    "ImageTooSmallError",
    "PatchError",
    "PatchReport",
    "UntestedReleaseWarning",
    "__version__",
    "apply",
    "is_applied",
    "patched",
    "revert",
    "ssim",
    "status",
    "uqi",
]

_LAZY = ("ImageTooSmallError", "ssim", "uqi")  # from the engine, which loads torch


def __getattr__(name: str) -> Any:
    if name in _LAZY:  # loads the engine, and torch
        from ssim_patch import engine

        value = getattr(engine, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
