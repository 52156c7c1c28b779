"""Property-based tests of ``ssim_patch.ssim`` (hypothesis) against the float64 reference.

Random shapes (2-D and 3-D, from the smallest legal size up), windows (Gaussian, isotropic or
not, and uniform), data ranges (None, a number, a (lo, hi) range), paddings, dtypes and work
chunk sizes. Properties: equality with ``tests/helpers/reference.py``, SSIM(x, x) == 1, symmetry in
preds/target, values in [-1, 1], batch independence, scale invariance, half precision within
1e-3 of the reference on the same (rounded) values.

``python -m scripts.gen_docs precision`` writes docs/precision.md: how far half-precision inputs are
from the reference, patched and unpatched (torchmetrics' own SSIM), and UQI's flat-window rule
with how far float32 UQI of images with flat regions is from the reference.
"""

from __future__ import annotations

import contextlib
import math
import unittest.mock
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ssim_patch import engine, ssim
from tests.helpers.precision import HALF, REPORT_DATA, error_text, precision_rows
from tests.helpers.reference import reduce, ssim_reference

# Deterministic (CI runs the same examples every time), no example database, no deadline:
# the numpy reference is slow on the largest draws and the machine is shared.
PROFILE = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TOL64 = 1e-6


def gaussian_size(sigma: float) -> int:
    return 2 * int(3.5 * sigma + 0.5) + 1


@dataclass
class Case:
    """One drawn input: images (float64), options, and the reference per image."""

    preds: torch.Tensor
    target: torch.Tensor
    window: dict[str, Any]
    padding: str
    data_range: Any
    chunk: Optional[int]

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.window, padding=self.padding, data_range=self.data_range)

    def reference(self, preds=None, target=None):
        x = self.preds if preds is None else preds
        y = self.target if target is None else target
        return ssim_reference(x.double().numpy(), y.double().numpy(), **self.kwargs)


def _images(kind: str, shape: tuple[int, ...], seed: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rand():
        return torch.rand(shape, generator=g, dtype=torch.float64)

    if kind == "independent":
        x, y = rand(), rand()
    elif kind == "correlated":
        x = rand()
        a = float(torch.rand((), generator=g, dtype=torch.float64))
        y = a * x + (1 - a) * rand()
    elif kind == "constant":  # a flat prediction against a textured target (and a flat pair)
        x = torch.full(shape, float(torch.rand((), generator=g, dtype=torch.float64)), dtype=torch.float64)
        y = rand() if seed % 2 else x.clone()
    elif kind == "binary":
        x, y = (rand() > 0.5).double(), (rand() > 0.5).double()
    elif kind == "negated":  # anti-correlated: SSIM near -1 in places
        x = rand()
        y = 1.0 - x
    else:  # "offset": a mild offset, well conditioned (offset / range <= 2)
        x = 1.0 + rand()
        y = 1.0 + 0.5 * (x - 1.0) + 0.5 * rand()
    return x * scale, y * scale


@st.composite
def cases(draw, nds=(2, 3), dtype_safe: bool = False) -> Case:
    nd = draw(st.sampled_from(nds))
    padding = draw(st.sampled_from(["same", "valid"]))
    gaussian = draw(st.booleans())
    aniso = draw(st.booleans())
    if gaussian:
        top = 2.0 if nd == 2 else 1.1
        sig = st.floats(min_value=0.1, max_value=top, allow_nan=False, allow_infinity=False)
        sigmas = [draw(sig) for _ in range(nd)] if aniso else [draw(sig)] * nd
        sizes = [gaussian_size(s) for s in sigmas]
        window: dict[str, Any] = dict(gaussian_kernel=True, sigma=tuple(sigmas) if aniso else sigmas[0])
    else:
        odd = st.sampled_from([1, 3, 5, 7, 9] if nd == 2 else [1, 3, 5])
        sizes = [draw(odd) for _ in range(nd)] if aniso else [draw(odd)] * nd
        window = dict(gaussian_kernel=False, kernel_size=tuple(sizes) if aniso else sizes[0])
    need = [(k - 1) // 2 + 1 if padding == "same" else k for k in sizes]
    extra = st.integers(0, 14 if nd == 2 else 4)
    spatial = tuple(m + draw(extra) for m in need)
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), *spatial)
    kind = draw(st.sampled_from(["independent", "correlated", "constant", "binary", "negated", "offset"]))
    scale = draw(st.sampled_from([1.0, 255.0, 0.01])) if not dtype_safe else 1.0
    x, y = _images(kind, shape, draw(st.integers(0, 2**31 - 1)), scale)
    range_kind = draw(st.sampled_from(["none", "float", "tuple"]))
    if range_kind == "none":
        data_range: Any = None
    elif range_kind == "float":
        data_range = draw(st.floats(0.5, 4.0)) * scale
    else:
        lo = draw(st.floats(-0.5, 0.4))
        data_range = (lo * scale, (lo + draw(st.floats(0.3, 1.5))) * scale)
    # Small work chunks cut the planes into several chunks and bands of rows (with halos).
    chunk = draw(st.sampled_from([None, None, 64, 700]))
    return Case(x, y, window, padding, data_range, chunk)


def _chunked(chunk: Optional[int]):
    if chunk is None or not hasattr(engine, "_CHUNK"):
        return contextlib.nullcontext()
    return unittest.mock.patch.object(engine, "_CHUNK", chunk)


def _run(case: Case, preds=None, target=None, dtype=torch.float64, **extra):
    x = (case.preds if preds is None else preds).to(dtype)
    y = (case.target if target is None else target).to(dtype)
    with _chunked(case.chunk):
        return ssim(x, y, **case.kwargs, **extra)


# --- equality with the reference ---------------------------------------------------------------


@settings(max_examples=200, **PROFILE)
@given(cases(), st.sampled_from(["elementwise_mean", "sum", "none", None]))
def test_equals_reference_float64(case, reduction):
    ref = case.reference()
    value, cs = _run(case, reduction=reduction, return_contrast_sensitivity=True)
    np.testing.assert_allclose(
        value.numpy(), reduce(ref.per_image, reduction), atol=TOL64 * ref.per_image.size
    )
    np.testing.assert_allclose(cs.numpy(), ref.cs, atol=TOL64, rtol=0)
    per_image, full = _run(case, reduction="none", return_full_image=True)
    np.testing.assert_allclose(per_image.numpy(), ref.per_image, atol=TOL64, rtol=0)
    assert full.shape == ref.ssim_map.shape
    np.testing.assert_allclose(full.numpy(), ref.ssim_map, atol=TOL64, rtol=0)


def float32_bound(case: Case, x: torch.Tensor, y: torch.Tensor) -> float:
    """What float32 moments can promise: the variance is E[x^2] - E[x]^2, so its rounding error
    is ~eps * max(x^2), and it is divided by a denominator no smaller than c2 = (k2 * L)^2."""
    if isinstance(case.data_range, tuple):
        lo, hi = case.data_range
        x, y = x.clamp(lo, hi), y.clamp(lo, hi)
        big_l = hi - lo
    elif case.data_range is None:
        big_l = max(float(x.max() - x.min()), float(y.max() - y.min())) or 1.0
    else:
        big_l = case.data_range
    top = max(float(x.abs().max()), float(y.abs().max()))
    return 1e-6 + 8 * torch.finfo(torch.float32).eps * top**2 / (0.03 * big_l) ** 2


@settings(max_examples=100, **PROFILE)
@given(cases(dtype_safe=True))
def test_float32_close_to_reference(case):
    x, y = case.preds.float(), case.target.float()
    ref = case.reference(x, y)
    out = _run(case, x, y, dtype=torch.float32, reduction="none")
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.double().numpy(), ref.per_image, atol=float32_bound(case, x, y), rtol=0)


# --- identities and bounds ----------------------------------------------------------------------


@settings(max_examples=100, **PROFILE)
@given(cases(), st.sampled_from([torch.float64, torch.float32]))
def test_ssim_of_an_image_with_itself_is_one(case, dtype):
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    value, full = _run(
        case, case.preds, case.preds.clone(), dtype=dtype, reduction="none", return_full_image=True
    )
    np.testing.assert_allclose(value.double().numpy(), 1.0, atol=tol, rtol=0)
    np.testing.assert_allclose(full.double().numpy(), 1.0, atol=tol, rtol=0)


@settings(max_examples=100, **PROFILE)
@given(cases(), st.sampled_from([torch.float64, torch.float32]))
def test_symmetric_in_preds_and_target(case, dtype):
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    ab, map_ab = _run(case, dtype=dtype, reduction="none", return_full_image=True)
    ba, map_ba = _run(case, case.target, case.preds, dtype=dtype, reduction="none", return_full_image=True)
    np.testing.assert_allclose(ab.double().numpy(), ba.double().numpy(), atol=tol, rtol=0)
    np.testing.assert_allclose(map_ab.double().numpy(), map_ba.double().numpy(), atol=tol, rtol=0)
    _, cs_ab = _run(case, dtype=dtype, reduction="none", return_contrast_sensitivity=True)
    _, cs_ba = _run(
        case, case.target, case.preds, dtype=dtype, reduction="none", return_contrast_sensitivity=True
    )
    np.testing.assert_allclose(cs_ab.double().numpy(), cs_ba.double().numpy(), atol=tol, rtol=0)


@settings(max_examples=100, **PROFILE)
@given(cases(), st.sampled_from([torch.float64, torch.float32]))
def test_values_in_minus_one_one(case, dtype):
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    value, full = _run(case, dtype=dtype, reduction="none", return_full_image=True)
    _, cs = _run(case, dtype=dtype, reduction="none", return_contrast_sensitivity=True)
    for name, t in (("per image", value), ("map", full), ("contrast sensitivity", cs)):
        assert torch.isfinite(t).all(), name
        assert t.min().item() >= -1 - tol, (name, t.min().item())
        assert t.max().item() <= 1 + tol, (name, t.max().item())


@settings(max_examples=60, **PROFILE)
@given(cases(), st.data())
def test_each_image_independent_of_the_rest_of_the_batch(case, data):
    """With a given data range, an image's SSIM does not depend on the others (or on chunking)."""
    if case.data_range is None:  # the range then is that of the whole batch, by definition
        case.data_range = 1.0
    whole = _run(case, reduction="none")
    i = data.draw(st.integers(0, case.preds.shape[0] - 1))
    alone = _run(case, case.preds[i : i + 1], case.target[i : i + 1], reduction="none")
    np.testing.assert_allclose(whole[i : i + 1].numpy(), alone.numpy(), atol=1e-12, rtol=0)


@settings(max_examples=60, **PROFILE)
@given(cases(dtype_safe=True), st.sampled_from([1e-3, 0.5, 7.0, 1e3]))
def test_scale_invariance(case, s):
    """Scaling both images and the data range by s leaves SSIM unchanged."""
    flat = max(float(case.preds.max() - case.preds.min()), float(case.target.max() - case.target.min())) == 0
    # Two flat images and no data range: L falls back to 1, which does not scale (by design).
    assume(not (case.data_range is None and flat))
    base = _run(case, reduction="none")
    scaled = Case(case.preds * s, case.target * s, case.window, case.padding, case.data_range, case.chunk)
    if isinstance(case.data_range, tuple):
        scaled.data_range = (case.data_range[0] * s, case.data_range[1] * s)
    elif case.data_range is not None:
        scaled.data_range = case.data_range * s
    np.testing.assert_allclose(_run(scaled, reduction="none").numpy(), base.numpy(), atol=1e-9, rtol=0)


# --- half precision -----------------------------------------------------------------------------


def half_ulp(values: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Half a unit in the last place of ``dtype`` at ``values`` (the output's rounding)."""
    mag = np.maximum(np.abs(values) + 1e-3, 2.0**-14)
    return 2.0 ** (np.floor(np.log2(mag)) - HALF[dtype] - 1)


def _half_bound(ref: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """1e-3, plus the rounding of the float32 result to the input's dtype."""
    return 1e-3 + half_ulp(ref, dtype)


@settings(max_examples=100, **PROFILE)
@given(cases(dtype_safe=True), st.sampled_from(list(HALF)))
def test_half_precision_within_1e3_of_the_reference(case, dtype):
    x, y = case.preds.to(dtype), case.target.to(dtype)
    ref = case.reference(x, y)  # on the same, rounded, values
    out, full = _run(case, x, y, dtype=dtype, reduction="none", return_full_image=True)
    assert out.dtype == dtype and full.dtype == dtype
    err = np.abs(out.double().numpy() - ref.per_image)
    assert (err <= _half_bound(ref.per_image, dtype)).all(), (err.max(), ref.per_image)
    map_err = np.abs(full.double().numpy() - ref.ssim_map)
    assert (map_err <= _half_bound(ref.ssim_map, dtype)).all(), map_err.max()


# --- ill-conditioned images: a large offset against a small range -------------------------------
# Moments taken as E[x^2] - E[x]^2 in float32 would fail here: with images of 1000 + U(0, 1),
# E[x^2] ~ 1e6 keeps ~0.06 of absolute precision while the variance is ~0.08. The engine takes them
# about each plane's mean, and these pass.

OFFSET_CASES = [
    (torch.float32, 1000.0, 1.0),
    (torch.float32, 0.99, 0.002),
    (torch.float16, 0.99, 0.002),
    (torch.float16, 0.5, 0.01),
    (torch.bfloat16, 100.0, 1.0),
]


@pytest.mark.parametrize(("dtype", "offset", "amplitude"), OFFSET_CASES)
def test_offset_images_close_to_the_reference(dtype, offset, amplitude):
    g = torch.Generator().manual_seed(0)
    shape = (2, 1, 32, 32)
    noise = torch.rand(shape, generator=g, dtype=torch.float64)
    x = offset + amplitude * noise
    y = offset + amplitude * (0.7 * noise + 0.3 * torch.rand(shape, generator=g, dtype=torch.float64))
    x, y = x.to(dtype), y.to(dtype)
    ref = ssim_reference(x.double().numpy(), y.double().numpy()).per_image
    out = ssim(x, y, reduction="none").double().numpy()
    bound = 1e-4 if dtype == torch.float32 else _half_bound(ref, dtype)
    assert (np.abs(out - ref) <= bound).all(), f"got {out}, reference {ref}"


@pytest.mark.ssim_unpatched
def test_half_precision_report_patched_within_bound():
    """The report's cases: patched within the bound (the unpatched numbers are only reported)."""
    tm = pytest.importorskip("torchmetrics.functional.image.ssim")
    windows = {"gaussian 1.5": {}}
    datas = {k: REPORT_DATA[k] for k in ("U(0,1)", "0.9 + U(0,0.03)", "200 + U(0,20)")}
    rows = precision_rows(
        tm.structural_similarity_index_measure,
        seeds=range(1),
        shape=(1, 2, 32, 32),
        windows=windows,
        datas=datas,
        ranges=("None",),
    )
    for dtype, data, window, dr, unpatched, patched in rows:
        limit = 1e-3 + 2.0 ** -(HALF[getattr(torch, dtype)] + 1)
        assert patched <= limit and not math.isnan(patched), (dtype, data, window, dr, patched)
        print(
            f"{dtype:9} {data:18} {window:12} data_range={dr:5} unpatched {error_text(unpatched):9} patched {error_text(patched)}"
        )
