"""Property-based tests of ``ssim_patch.ssim`` (hypothesis) against the float64 reference.

Random shapes (2-D and 3-D, from the smallest legal size up), windows (Gaussian, isotropic or
not, and uniform), data ranges (None, a number, a (lo, hi) range), paddings, dtypes and work
chunk sizes. Properties: equality with ``tests/reference.py``, SSIM(x, x) == 1, symmetry in
preds/target, values in [-1, 1], batch independence, scale invariance, half precision within
1e-3 of the reference on the same (rounded) values.

``python tests/test_properties.py`` writes docs/precision.md: how far half-precision inputs are
from the reference, patched and unpatched (torchmetrics' own SSIM), and UQI's flat-window rule
with how far float32 UQI of images with flat regions is from the reference.
"""

from __future__ import annotations

import contextlib
import math
import pathlib
import sys
import unittest.mock
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reference import reduce, ssim_reference

from ssim_patch import engine, ssim

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

HALF = {torch.float16: 10, torch.bfloat16: 7}  # mantissa bits


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


# --- the precision report (docs/precision.md) ---------------------------------------------------

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


def _fmt(v: float) -> str:
    return "error" if math.isinf(v) else "NaN" if math.isnan(v) else f"{v:.1e}"


def render_precision_doc(rows, torchmetrics_version: str) -> str:
    lines = [
        "# Precision",
        "",
        "## Half-precision inputs: how far from the float64 reference",
        "",
        "Generated by `python tests/test_properties.py` (CPU). Each row: 3 random pairs of (2, 3, 48, 48)",
        "images, `preds = offset + amplitude * u1`, `target = offset + amplitude * (0.7 u1 + 0.3 u2)`,",
        "rounded to the dtype; the reference is the float64 SSIM of the *rounded* values",
        "(`tests/reference.py`). Numbers: the worst absolute error of the per-image SSIM.",
        f"`unpatched` is torchmetrics {torchmetrics_version}'s own SSIM; `patched` is ssim-patch (moments in",
        'float32, result rounded to the input\'s dtype). `data_range` "given" is 1 (255 for the 0-255 data).',
        "",
        "The bound the tests enforce is 1e-3 plus half an ulp of the output dtype (bfloat16 keeps 8",
        "significant bits, so rounding SSIM ~0.9 to bfloat16 alone costs up to 2e-3).",
        "",
        "| dtype | data | window | data_range | unpatched | patched |",
        "|---|---|---|---|---|---|",
    ]
    for dtype, data, window, dr, u, p in rows:
        lines.append(f"| {dtype} | {data} | {window} | {dr} | {_fmt(u)} | {_fmt(p)} |")
    lines += [
        "",
        "Upstream computes in the input's dtype and forms the variance as E[x^2] - E[x]^2, so it fails",
        "on ill-conditioned images (a small range on a large offset: 0.85 + U(0,0.05), 0.9 + U(0,0.03),",
        "200 + U(0,20)), and in float16 it returns NaN on the 0-255 data. The patch forms the moments in",
        "float32, of x + y and x - y about each image plane's mean: every patched number above is within",
        "the bound.",
        "`test_offset_images_close_to_the_reference` in tests/test_properties.py checks more offsets, in",
        "float32, float16 and bfloat16, up to 1000 + U(0,1).",
        "",
    ]
    return "\n".join(lines)


# --- UQI's flat windows (docs/precision.md, second part) --------------------------------------------


def uqi_flat_rows(tm_uqi) -> list[tuple[str, str, float, float, float, float, float, float]]:
    """(case, dtype, then worst |map - ref| in flat windows and |mean - ref| for: unpatched,
    patched without the flat-window rule, patched) per case of ``test_uqi.FLAT_CASES``.

    ``tm_uqi`` is torchmetrics' own ``universal_image_quality_index``; its map is cropped to the
    windows wholly inside the image, so it is compared with the reference's "valid" windows. A
    non-finite result is ``nan``, an exception ``inf``.
    """
    from test_uqi import FLAT_CASES, flat_windows, uqi_about

    from ssim_patch import _formula

    def without_rule(*args: Any, **kwargs: Any) -> Any:
        return constants(*args, **kwargs)._replace(flat=None)

    constants = _formula.constants
    rows = []
    for case, (make, level, dtype) in FLAT_CASES.items():
        p, t, flat = make(level, dtype)
        same = uqi_about(p.double().numpy(), t.double().numpy(), level, float(torch.finfo(dtype).eps))
        where = flat_windows(flat).numpy()
        errors = []
        for run in ("unpatched", "no rule", "patched"):
            ref, inside = (same[..., 5:-5, 5:-5], where[5:-5, 5:-5]) if run == "unpatched" else (same, where)
            fn = tm_uqi if run == "unpatched" else engine.uqi
            with (
                unittest.mock.patch.object(_formula, "constants", without_rule)
                if run == "no rule"
                else (contextlib.nullcontext())
            ):
                try:
                    got = fn(p, t, reduction="none").double().numpy()
                    mean = fn(p, t).double().item()
                except Exception:
                    errors += [math.inf, math.inf]
                    continue
            finite = np.isfinite(got).all() and math.isfinite(mean)
            errors += (
                [float(np.abs(got - ref)[..., inside].max()), abs(mean - ref.mean())]
                if finite
                else [math.nan] * 2
            )
        rows.append((case, str(dtype).replace("torch.", ""), *errors))
    return rows


def render_uqi_flat_doc(rows, torchmetrics_version: str) -> list[str]:
    lines = [
        "",
        "## UQI in images with flat regions",
        "",
        "UQI has no stabilising constants: where both images are flat a window is `0 / eps` (no variance,",
        "no covariance), so the rounding of its moments decides its value (torchmetrics issue 2281). The",
        "moments are those of `s = x + y` and `d = x - y` about each image plane's mean, `m = W(s', d',",
        "s'^2, d'^2)`, and the variances `v_s = m[2] - m[0]^2`, `v_d = m[3] - m[1]^2` (clamped at 0).",
        "",
        f"**The rule.** A window is flat when `v_s + v_d <= {_formula_flat_eps()} eps (m[2] + m[3])`, `eps` the machine",
        "epsilon of the compute dtype (float32 for float32, float16 and bfloat16 images; float64 for",
        "float64): its variances are both 0, so it scores 0, and its derivative is 0 (a variance is at its",
        "minimum in a flat window, so the exact derivative is 0; the unguarded one is rounding noise",
        "times `1 / eps`). In terms of the images: the window's `var_x + var_y` is at most",
        f"{_formula_flat_eps()} eps times the squared distance of its means from their planes' means, i.e. its standard",
        "deviation is below about 0.002 of that distance in float32 (1.5e-7 in float64): float32 cannot",
        "tell such a variance from the rounding of the moments. The rounding of truly flat windows measures",
        "at most 6 eps at 11x11 windows and 22 eps at 151x151. SSIM is unchanged (its `c2` keeps flat windows",
        "well defined).",
        "",
        "Each row: float32 images (one float16) from `tests/test_uqi.py` (`FLAT_CASES`): a flat top half at",
        "the level over a textured bottom half (`half-*`), or a constant frame 12 pixels wide around",
        "texture (`frame-*`), 11x11 window. Reference: the float64 UQI of the same pixels with the input",
        "dtype's `eps`, the variances taken about the flat level. `map` is the worst error in the windows",
        "that lie wholly in the flat part, `mean` the error of the image mean. `unpatched` is torchmetrics",
        f"{torchmetrics_version}'s own UQI (its map holds the windows wholly inside the image and is compared",
        "with those); `no rule` is ssim-patch without the flat-window rule.",
        "",
        "| case | dtype | unpatched map | unpatched mean | no rule map | no rule mean | patched map | patched mean |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case, dtype, *errors in rows:
        lines.append(f"| {case} | {dtype} | " + " | ".join(_fmt(e) for e in errors) + " |")
    lines += [
        "",
        "`test_float32_flat_regions_match_float64` in tests/test_uqi.py holds the patched numbers to",
        "1e-3 (map) and 1e-4 (mean), on every CPU backend, and tests/matrix/test_uqi_release.py on",
        "every pinned release (bug `uqi-flat-rounding`).",
        "",
    ]
    return lines


def _formula_flat_eps() -> int:
    from ssim_patch import _formula

    return _formula.FLAT_EPS


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
            f"{dtype:9} {data:18} {window:12} data_range={dr:5} unpatched {_fmt(unpatched):9} patched {_fmt(patched)}"
        )


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    import warnings

    warnings.simplefilter("ignore")
    import torchmetrics
    import torchmetrics.functional.image.ssim as tm_ssim
    import torchmetrics.functional.image.uqi as tm_uqi

    import ssim_patch

    ssim_patch.revert()
    table = render_precision_doc(
        precision_rows(tm_ssim.structural_similarity_index_measure), torchmetrics.__version__
    )
    flat = uqi_flat_rows(tm_uqi.universal_image_quality_index)
    table += "\n".join(render_uqi_flat_doc(flat, torchmetrics.__version__))
    out = pathlib.Path(__file__).resolve().parents[1] / "docs" / "precision.md"
    out.write_text(table)
    print(table)
