"""What ssim-patch knows about torchmetrics releases: hook points, their signatures, upstream bugs.

Two metrics are patched: SSIM (one hook point, ``_ssim_compute`` or ``_ssim_update``) and UQI
(``_uqi_compute``, and from 1.2.1 ``UniversalImageQualityIndex.update``, which counts the map's
elements itself). This table must agree with ``compat_matrix.yaml`` (the releases CI tests); a
test checks it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from packaging.version import Version

#: Upstream defects, by id (README.md, Compatibility; docs/semantics.md).
BUGS: dict[str, str] = {
    "border-crop": "the SSIM map is cropped by the pad after reflect padding: the image border never counts",
    "gaussian-pad": "the pad is sized from the Gaussian window even for a uniform window (NaN for sigma < 1/7)",
    "uniform-window-error": "a uniform window (gaussian_kernel=False) fails outright",
    "cs-crop": "the contrast-sensitivity term used by MS-SSIM is still cropped (NaN for sigma < 1/7)",
    "depth-pad": "3-D: the depth pad comes from kernel_size[2] even for a Gaussian window (wrong map size)",
    "host-sync": "data_range=None uses Python max() on tensors: a device-to-host sync on GPU",
    "small-input": "an image smaller than the pad fails inside F.pad with a RuntimeError",
    "half-precision": "half precision inputs are computed in half precision",
    "uqi-border-crop": "UQI: the map is cropped by the pad after reflect padding: the image border never counts",
    "uqi-pad-swap": "UQI: a non-square window's height pad is applied to the width and vice versa "
    "(F.pad(x, (pad_h, pad_h, pad_w, pad_w))): a map of the wrong size and value",
    "uqi-one-tap-nan": "UQI: a window of 1 tap on an axis (kernel_size=(1, 1)) crops the map to nothing: NaN",
    "uqi-flat-nan": "UQI: a window where both images are flat (before 1.0) or both 0 (1.0-1.2.0) is 0/0: NaN",
    "uqi-flat-rounding": "UQI: a window where both images are flat is 0/eps, so rounding of its moments decides "
    "its value instead of 0 (0.06 to 1 in float32, 1e9 on some releases; torchmetrics issue 2281)",
    "uqi-host-sync": "UQI: an unused data_range=None is computed with Python max() on tensors: a "
    "device-to-host sync on GPU",
    "uqi-metric-count": "UQI: UniversalImageQualityIndex divides the map's sum by the count of valid "
    "windows, which is not the map's size for a non-square window",
}


MODULE = "torchmetrics.functional.image.ssim"
UQI_MODULE = "torchmetrics.functional.image.uqi"
UQI_METRIC_MODULE = "torchmetrics.image.uqi"


@dataclass(frozen=True)
class HookPoint:
    """A function of torchmetrics that the patch replaces: ``name`` in ``module`` (a function of the
    module, or ``Class.method`` for a method defined in a class of the module)."""

    name: str
    parameters: tuple[str, ...]
    module: str = MODULE

    @property
    def qualified(self) -> str:
        """``module.name``, as reports and error messages spell it."""
        return f"{self.module}.{self.name}"


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

#: UQI before 1.0: two more parameters, both unused (data_range is computed, with a host sync).
UQI_COMPUTE_0_8 = HookPoint(
    "_uqi_compute",
    ("preds", "target", "kernel_size", "sigma", "reduction", "data_range", "return_contrast_sensitivity"),
    UQI_MODULE,
)
UQI_COMPUTE = HookPoint("_uqi_compute", ("preds", "target", "kernel_size", "sigma", "reduction"), UQI_MODULE)
#: From 1.2.1 the Metric class sums ``_uqi_compute(..., reduction="sum")`` and counts the valid windows.
UQI_METRIC_UPDATE = HookPoint(
    "UniversalImageQualityIndex.update", ("self", "preds", "target"), UQI_METRIC_MODULE
)

#: Every hook point of every release (to name them in reports).
ALL_HOOK_POINTS = (SSIM_COMPUTE, SSIM_UPDATE, UQI_COMPUTE_0_8, UQI_COMPUTE, UQI_METRIC_UPDATE)

OLDEST = Version("0.8.2")
#: The oldest torch ssim-patch runs on (pyproject.toml's ``torch>=`` says the same; a test checks).
TORCH_FLOOR = Version("2.0")
NEWEST = Version("1.9.0")
_V0_9 = Version("0.9.0")
_V0_10 = Version("0.10.0")
_V1_0 = Version("1.0.0")  # UQI: data_range and return_contrast_sensitivity dropped; eps added
_V1_2_1 = Version("1.2.1")  # UQI: the Metric class accumulates a sum and a count; eps moved out
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
    """SSIM's hook point of a release at or after 0.8.2, or None for older ones."""
    if version < OLDEST:
        return None
    return SSIM_COMPUTE if version < _V0_10 else SSIM_UPDATE


def uqi_hook_points(version: Version) -> tuple[HookPoint, ...]:
    """UQI's hook points of a release at or after 0.8.2 (empty for older ones)."""
    if version < OLDEST:
        return ()
    if version < _V1_0:
        return (UQI_COMPUTE_0_8,)
    if version < _V1_2_1:
        return (UQI_COMPUTE,)
    return (UQI_COMPUTE, UQI_METRIC_UPDATE)


def hook_points(version: Version) -> tuple[HookPoint, ...]:
    """Every hook point of a release, SSIM's first (empty for releases before 0.8.2)."""
    ssim = hook_point(version)
    return () if ssim is None else (ssim, *uqi_hook_points(version))


def upstream_bugs(version: Version) -> tuple[str, ...]:
    """Ids of the defects a release has upstream (keys of ``BUGS``), in ``BUGS`` order."""
    bugs = {"host-sync", "small-input", "half-precision"}
    if version < _V1_4_2:
        bugs |= {"border-crop", "gaussian-pad"}
    else:
        bugs |= {"cs-crop", "depth-pad"}
    if version < _V0_9:
        bugs.add("uniform-window-error")
    bugs |= {"uqi-border-crop", "uqi-pad-swap", "uqi-one-tap-nan", "uqi-flat-rounding"}
    if version < _V1_2_1:
        bugs.add("uqi-flat-nan")
    else:
        bugs.add("uqi-metric-count")
    if version < _V1_0:
        bugs.add("uqi-host-sync")
    return tuple(b for b in BUGS if b in bugs)


def is_pinned(version: Version) -> bool:
    return str(version) in PINNED
