"""ssim-patch: corrected SSIM for every torchmetrics release from 0.8.2 to 1.9.0.

``import ssim_patch; ssim_patch.apply()`` makes every torchmetrics SSIM and MS-SSIM API (functional
and Metric classes) use :func:`ssim_patch.ssim`'s corrected computation.

Importing ssim_patch loads neither torch nor torchmetrics: the engine (and with it torch) is
loaded when torchmetrics' SSIM module is imported, or when ``ssim_patch.ssim`` is first used.
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
    from ssim_patch.engine import ssim

__all__ = [
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
]


def __getattr__(name: str) -> Any:
    if name == "ssim":  # loads the engine, and torch
        from ssim_patch.engine import ssim

        globals()["ssim"] = ssim
        return ssim
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
