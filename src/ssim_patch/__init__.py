"""ssim-patch: corrected SSIM for every torchmetrics release from 0.8.2 to 1.9.0.

``import ssim_patch; ssim_patch.apply()`` makes every torchmetrics SSIM and MS-SSIM API (functional
and Metric classes) use :func:`ssim_patch.ssim`'s corrected computation.
"""

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
