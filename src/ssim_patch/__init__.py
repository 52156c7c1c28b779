"""ssim-patch: corrected SSIM for every torchmetrics release from 0.8.2 to 1.9.0."""

from ssim_patch._version import __version__
from ssim_patch.engine import ssim

__all__ = ["__version__", "ssim"]
