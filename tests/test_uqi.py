"""The corrected UQI against the independent float64 reference, its gradient, and upstream where
upstream is right ("valid" padding with a square window)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from ssim_patch.engine import uqi
from tests.helpers import reference_torch
from tests.helpers.flat_images import FLAT_CASES, flat_half, flat_windows, image_pair, uqi_about
from tests.helpers.reference import reduce, uqi_reference, zeroed_border
from tests.helpers.torch_support import reset_dynamo, skip_unless_compiles

WINDOWS = [
    dict(kernel_size=(11, 11), sigma=(1.5, 1.5)),
    dict(kernel_size=(11, 3), sigma=(1.5, 0.5)),
    dict(kernel_size=(5, 7), sigma=(1.0, 2.0)),
    dict(kernel_size=(1, 1), sigma=(1.5, 1.5)),
]
SHAPES = [(2, 3, 40, 36), (1, 1, 23, 17)]
#: The backends that run on CPU tensors (``SSIM_PATCH_BACKEND``).
BACKENDS = ["cpu", "conv", "traced"]


@pytest.mark.parametrize("reduction", ["elementwise_mean", "sum", "none", None])
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: "x".join(map(str, w["kernel_size"])))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(shape, window, padding, reduction):
    x, y = image_pair(shape)
    expected = uqi_reference(
        x.numpy(), y.numpy(), padding=padding, eps=float(np.finfo(np.float64).eps), **window
    )
    got = uqi(x, y, padding=padding, reduction=reduction, **window)
    np.testing.assert_allclose(got.numpy(), reduce(expected, reduction), rtol=1e-10, atol=1e-10)


def test_zeroed_border_counts():
    """The issue's example: 2x3x40x36 with a zeroed 1-pixel frame."""
    x, _ = image_pair((2, 3, 40, 36), seed=1, dtype=torch.float32)
    t = zeroed_border(x)
    expected = uqi_reference(x.double().numpy(), t.double().numpy()).mean()
    got = uqi(x, t)
    assert abs(got.item() - expected) < 1e-5
    assert got.item() < 0.95  # upstream crops the frame away and reports about 0.99


def test_float32_and_half_use_their_own_epsilon():
    x, y = image_pair((2, 1, 24, 24), seed=2)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        xd, yd = x.to(dtype), y.to(dtype)
        expected = uqi_reference(xd.double().numpy(), yd.double().numpy(), eps=float(torch.finfo(dtype).eps))
        got = uqi(xd, yd)
        assert got.dtype == dtype
        tol = 1e-5 if dtype == torch.float32 else 1e-3 + float(torch.finfo(dtype).eps)
        assert abs(got.double().item() - expected.mean()) < tol, dtype


def test_flat_images_give_zero():
    """Two flat images: no variance, no covariance, so the index is 0 / eps = 0. (Upstream gets
    0.168 in float64 and -0.135 in float32 there: its variances are rounding noise over eps.)"""
    x = torch.full((1, 1, 16, 16), 0.3, dtype=torch.float64)
    assert abs(uqi(x, x.clone()).item()) < 1e-12
    assert abs(uqi(x.float(), x.float().clone()).item()) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(FLAT_CASES))
def test_float32_flat_regions_match_float64(case, backend, monkeypatch):
    """UQI has no stabilising constants: a flat window is 0/eps, and without the flat-window rule
    float32 rounding of its moments was the answer (up to 0.06 at 0.7123, 1.0 at 100). The float32
    map is within 1e-3 of the float64 one of the same pixels (with the input dtype's eps) wherever
    the window is flat, and the mean within 1e-4 (plus half an ulp of float16)."""
    monkeypatch.setenv("SSIM_PATCH_BACKEND", backend)
    make, level, dtype = FLAT_CASES[case]
    p, t, flat = make(level, dtype)
    eps = float(torch.finfo(dtype).eps)
    expected = uqi_about(p.double().numpy(), t.double().numpy(), level, eps)
    got = uqi(p, t, reduction="none")
    assert got.dtype == dtype
    where = flat_windows(flat).numpy()
    assert where.sum() >= where.size / 8  # the test covers flat windows
    np.testing.assert_allclose(got.double().numpy()[..., where], expected[..., where], rtol=0, atol=1e-3)
    mean_tol = 1e-4 + (eps / 2 if dtype == torch.float16 else 0.0)
    assert abs(uqi(p, t).double().item() - expected.mean()) < mean_tol


@pytest.mark.parametrize("case", list(FLAT_CASES))
def test_float64_flat_regions_are_right_too(case):
    """float64 has the same 0/eps in flat windows (its eps is smaller: without the rule a flat window
    at 100 scored 0.94). With it the map equals the reference (variances taken about the flat level)
    to 1e-12 in flat windows and 1e-9 in the rest (a window that barely reaches the texture is
    ill-conditioned: its variance is a tiny fraction of its second moment)."""
    make, level, _ = FLAT_CASES[case]
    p, t, flat = make(level, torch.float64)
    expected = uqi_about(p.numpy(), t.numpy(), level, float(torch.finfo(torch.float64).eps))
    got = uqi(p, t, reduction="none").numpy()
    where = flat_windows(flat).numpy()
    np.testing.assert_allclose(got[..., where], expected[..., where], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("level", [0.7123, 100.3])
def test_gradient_with_flat_windows_is_the_exact_derivative(level, backend, monkeypatch):
    """A flat window's variances are at their minimum (0), so its exact derivative is 0; the rule
    gives it no gradient, where the unguarded formula gave rounding noise times 1/eps. The float64
    gradient equals autograd through the reference with its variances taken about the flat level
    (where they are exactly 0 and so is their derivative), on every backend."""
    monkeypatch.setenv("SSIM_PATCH_BACKEND", backend)
    p, t, _ = flat_half(level, torch.float64, shape=(1, 2, 24, 22))
    kw = dict(kernel_size=(5, 5), sigma=(1.0, 1.0))
    eps = float(torch.finfo(torch.float64).eps)
    grads = []
    for fn in (
        lambda a, b: uqi(a, b, **kw),
        lambda a, b: _reference_uqi(a, b, eps=eps, padding="same", about=level, **kw).mean(),
    ):
        a, b = p.clone().requires_grad_(), t.clone().requires_grad_()
        grads.append(torch.autograd.grad(fn(a, b), (a, b)))
    for got, expected in zip(*grads):
        scale = expected.abs().max().item()
        assert scale > 0  # the textured half has a gradient
        torch.testing.assert_close(got, expected, atol=1e-9 * scale, rtol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_gradient_is_the_exact_derivative(padding, backend, monkeypatch):
    monkeypatch.setenv("SSIM_PATCH_BACKEND", backend)
    x, y = image_pair((2, 2, 20, 21), seed=3)
    kw = dict(kernel_size=(7, 5), sigma=(1.2, 0.9))
    eps = float(torch.finfo(torch.float64).eps)
    grads = []
    for fn in (
        lambda a, b: uqi(a, b, padding=padding, **kw),
        lambda a, b: _reference_uqi(a, b, eps=eps, padding=padding, **kw).mean(),
    ):
        a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
        grads.append(torch.autograd.grad(fn(a, b), (a, b)))
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected, atol=1e-13, rtol=1e-8)


def _reference_uqi(x, y, kernel_size, sigma, eps, padding, about=0.0):
    """The UQI map in plain torch ops, the variances taken about ``about`` (they do not depend on it)."""
    windows = [reference_torch.gaussian_window(s, k) for k, s in zip(kernel_size, sigma)]
    x, y = x - about, y - about
    mx, my = (reference_torch.blur(a, windows, padding) for a in (x, y))
    vx = reference_torch.blur(x * x, windows, padding) - mx * mx
    vy = reference_torch.blur(y * y, windows, padding) - my * my
    cov = reference_torch.blur(x * y, windows, padding) - mx * my
    mx, my = mx + about, my + about
    return (2 * mx * my) * (2 * cov) / ((mx * mx + my * my) * (vx + vy) + eps)


@pytest.mark.ssim_unpatched
def test_valid_equals_upstream_for_square_windows():
    """Upstream's cropped map is exactly the valid windows when the window is square."""
    tm = importlib.import_module("torchmetrics.functional.image.uqi")
    x, y = image_pair((2, 3, 30, 28), seed=4)
    for k, s in ((11, 1.5), (7, 1.0)):
        upstream = tm._uqi_compute(x, y, (k, k), (s, s), "none")
        got = uqi(x, y, kernel_size=(k, k), sigma=(s, s), padding="valid", reduction="none")
        torch.testing.assert_close(got, upstream, atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(kernel_size=(10, 11)), "`kernel_size` must be odd positive integers"),
        (dict(sigma=(0.0, 1.5)), "`sigma` must be positive finite numbers"),
        (dict(kernel_size=(11, 11, 11)), "`kernel_size` has 3 entries"),
        (dict(padding="reflect"), "`padding` must be 'same' or 'valid'"),
        (dict(reduction="mean"), "`reduction` must be one of"),
    ],
)
def test_bad_arguments_are_clear_errors(kw, message):
    x, y = image_pair((1, 1, 16, 16))
    with pytest.raises(ValueError, match=message):
        uqi(x, y, **kw)


def test_an_image_too_small_for_its_window():
    x, y = image_pair((1, 1, 5, 16))
    with pytest.raises(ValueError, match=r"Axis 2 \(height\) has size 5, too short for reflect padding by 5"):
        uqi(x, y)


def test_transforms_and_compile():
    """UQI runs on the same engine: torch.func and torch.compile (dynamic) agree with eager."""
    from torch.func import grad, jacfwd, vmap

    x, y = image_pair((2, 1, 16, 17), seed=7)
    kw = dict(kernel_size=(5, 3), sigma=(1.0, 0.7))

    def loss(a):
        return uqi(a, y, **kw)

    a = x.clone().requires_grad_()
    (eager,) = torch.autograd.grad(loss(a), a)
    torch.testing.assert_close(grad(loss)(x), eager, atol=1e-12, rtol=1e-9)
    per_image = vmap(lambda p, t: uqi(p[None], t[None], **kw))(x, y)
    torch.testing.assert_close(
        per_image, torch.stack([uqi(x[i : i + 1], y[i : i + 1], **kw) for i in range(2)])
    )
    torch.testing.assert_close(
        jacfwd(loss)(x), torch.autograd.functional.jacobian(loss, x), atol=1e-12, rtol=1e-9
    )
    reset_dynamo()
    skip_unless_compiles()  # the torch.func checks above ran
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True, dynamic=True)
    b = x.clone().requires_grad_()
    value = compiled(b)
    torch.testing.assert_close(value, loss(x), atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.autograd.grad(value, b)[0], eager, atol=1e-12, rtol=1e-9)
    reset_dynamo()
