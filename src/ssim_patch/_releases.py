"""What ssim-patch knows about torchmetrics releases: hook points, their signatures, upstream bugs.

This table must agree with ``compat_matrix.yaml`` (the releases CI tests); a test checks it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from packaging.version import Version

#: Upstream defects, by id (see SPEC.md).
BUGS: dict[str, str] = {
    "border-crop": "the SSIM map is cropped by the pad after reflect padding: the image border never counts",
    "gaussian-pad": "the pad is sized from the Gaussian window even for a uniform window (NaN for sigma < 1/7)",
    "uniform-window-error": "a uniform window (gaussian_kernel=False) fails outright",
    "cs-crop": "the contrast-sensitivity term used by MS-SSIM is still cropped (NaN for sigma < 1/7)",
    "depth-pad": "3-D: the depth pad comes from kernel_size[2] even for a Gaussian window (wrong map size)",
    "host-sync": "data_range=None uses Python max() on tensors: a device-to-host sync on GPU",
    "small-input": "an image smaller than the pad fails inside F.pad with a RuntimeError",
    "half-precision": "half precision inputs are computed in half precision",
}


@dataclass(frozen=True)
class HookPoint:
    """A function in ``torchmetrics.functional.image.ssim`` that the patch replaces."""

    name: str
    parameters: tuple[str, ...]


MODULE = "torchmetrics.functional.image.ssim"

SSIM_COMPUTE = HookPoint(
    "_ssim_compute",
    (
        "preds",
        "target",
        "gaussian_kernel",
        "sigma",
        "kernel_size",
        "reduction",
        "data_range",
        "k1",
        "k2",
        "return_full_image",
        "return_contrast_sensitivity",
    ),
)
SSIM_UPDATE = HookPoint(
    "_ssim_update",
    (
        "preds",
        "target",
        "gaussian_kernel",
        "sigma",
        "kernel_size",
        "data_range",
        "k1",
        "k2",
        "return_full_image",
        "return_contrast_sensitivity",
    ),
)

OLDEST = Version("0.8.2")
NEWEST = Version("1.9.0")
_V0_9 = Version("0.9.0")
_V0_10 = Version("0.10.0")
_V1_4_2 = Version("1.4.2")  # 2-D SSIM fixed upstream

#: The releases the compatibility matrix runs against.
PINNED: tuple[str, ...] = (
    "0.8.2",
    "0.9.3",
    "0.10.3",
    "0.11.4",
    "1.0.3",
    "1.1.2",
    "1.2.1",
    "1.3.2",
    "1.4.1",
    "1.4.3",
    "1.5.2",
    "1.6.3",
    "1.7.4",
    "1.8.2",
    "1.9.0",
)


def hook_point(version: Version) -> Optional[HookPoint]:
    """The hook point of a release at or after 0.8.2, or None for older ones."""
    if version < OLDEST:
        return None
    return SSIM_COMPUTE if version < _V0_10 else SSIM_UPDATE


def upstream_bugs(version: Version) -> tuple[str, ...]:
    """Ids of the defects a release has upstream (keys of ``BUGS``), in ``BUGS`` order."""
    bugs = {"host-sync", "small-input", "half-precision"}
    if version < _V1_4_2:
        bugs |= {"border-crop", "gaussian-pad"}
    else:
        bugs |= {"cs-crop", "depth-pad"}
    if version < _V0_9:
        bugs.add("uniform-window-error")
    return tuple(b for b in BUGS if b in bugs)


def is_pinned(version: Version) -> bool:
    return str(version) in PINNED
