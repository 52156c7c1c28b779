"""The half-precision cases of the precision report (docs/precision.md, written by
scripts/gen_docs.py), which tests/test_properties.py checks on a few of them."""

from __future__ import annotations

import math

import numpy as np
import torch

from ssim_patch import ssim
from tests.helpers.reference import ssim_reference

HALF = {torch.float16: 10, torch.bfloat16: 7}  # mantissa bits

REPORT_DATA = {
    "U(0,1)": (0.0, 1.0),
    "0.85 + U(0,0.05)": (0.85, 0.05),
    "0.9 + U(0,0.03)": (0.9, 0.03),
    "255 * U(0,1)": (0.0, 255.0),
    "200 + U(0,20)": (200.0, 20.0),
}
REPORT_WINDOWS = {
    "gaussian 1.5": {},
    "uniform 7": dict(gaussian_kernel=False, kernel_size=7),
}


def precision_rows(
    tm_ssim,
    seeds=range(3),
    shape=(2, 3, 48, 48),
    windows=REPORT_WINDOWS,
    datas=REPORT_DATA,
    ranges=("None", "given"),
) -> list[tuple[str, str, str, str, float, float]]:
    """(dtype, data, window, data_range, worst |unpatched - ref|, worst |patched - ref|) per case.

    ``tm_ssim`` is torchmetrics' own (unpatched) ``structural_similarity_index_measure``.
    A non-finite result is ``nan``, an exception ``inf``.
    """
    rows = []
    for dtype in HALF:
        for data, (offset, amp) in datas.items():
            for wname, window in windows.items():
                for rname in ranges:
                    worst_u = worst_p = 0.0
                    for seed in seeds:
                        g = torch.Generator().manual_seed(seed)
                        n1 = torch.rand(shape, generator=g, dtype=torch.float64)
                        n2 = torch.rand(shape, generator=g, dtype=torch.float64)
                        x = (offset + amp * n1).to(dtype)
                        y = (offset + amp * (0.7 * n1 + 0.3 * n2)).to(dtype)
                        dr = None if rname == "None" else (255.0 if amp + offset > 2 else 1.0)
                        kw = dict(window, data_range=dr)
                        ref = ssim_reference(x.double().numpy(), y.double().numpy(), **kw).per_image
                        try:
                            u = tm_ssim(x, y, reduction="none", **kw).double().numpy()
                            du = float(np.abs(u - ref).max()) if np.isfinite(u).all() else math.nan
                        except Exception:
                            du = math.inf
                        p = ssim(x, y, reduction="none", **kw).double().numpy()
                        dp = float(np.abs(p - ref).max()) if np.isfinite(p).all() else math.nan
                        worst_u, worst_p = _worst(worst_u, du), _worst(worst_p, dp)
                    rows.append((str(dtype).replace("torch.", ""), data, wname, rname, worst_u, worst_p))
    return rows


def _worst(a: float, b: float) -> float:
    """The larger error; an exception (inf) beats a NaN result, which beats any number."""
    if math.isinf(a) or math.isinf(b):
        return math.inf
    if math.isnan(a) or math.isnan(b):
        return math.nan
    return max(a, b)


def error_text(v: float) -> str:
    """An error as the report prints it: ``error`` for an exception, ``NaN``, else two digits."""
    return "error" if math.isinf(v) else "NaN" if math.isnan(v) else f"{v:.1e}"
