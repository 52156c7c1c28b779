"""The engine against the independent float64 reference, over a grid of every option."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ssim_patch import ssim
from ssim_patch.engine import _ssim_per_image
from tests.helpers.reference import reduce, ssim_reference, zeroed_border

TOL = 1e-6


def _pair(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    y = (0.6 * x + 0.4 * torch.rand(shape, generator=g, dtype=torch.float64)) * 1.3 - 0.1
    return x.to(dtype), y.to(dtype)


WINDOWS_2D = [
    dict(gaussian_kernel=True, sigma=1.5),
    dict(gaussian_kernel=True, sigma=(0.8, 2.1)),
    dict(gaussian_kernel=True, sigma=0.1),
    dict(gaussian_kernel=False, kernel_size=7),
    dict(gaussian_kernel=False, kernel_size=(3, 9)),
    dict(gaussian_kernel=False, kernel_size=1),
]
WINDOWS_3D = [
    dict(gaussian_kernel=True, sigma=1.0),
    dict(gaussian_kernel=True, sigma=(0.6, 1.2, 2.0)),
    dict(gaussian_kernel=False, kernel_size=(3, 5, 7)),
]
SHAPES_2D = [(2, 3, 23, 17), (1, 1, 130, 101), (3, 2, 12, 12)]
SHAPES_3D = [(2, 2, 15, 13, 19), (1, 1, 9, 11, 10)]
RANGES = [None, 1.0, 2.5, (0.0, 1.0), (-0.05, 0.8)]


def _fits(shape, window, padding):
    nd = len(shape) - 2
    if window["gaussian_kernel"]:
        s = window["sigma"]
        sizes = [2 * int(3.5 * v + 0.5) + 1 for v in (s if isinstance(s, tuple) else [s] * nd)]
    else:
        k = window["kernel_size"]
        sizes = list(k) if isinstance(k, tuple) else [k] * nd
    need = [(k - 1) // 2 + 1 if padding == "same" else k for k in sizes]
    return all(n >= m for n, m in zip(shape[2:], need))


GRID = [
    (shape, window, padding, rng)
    for (shapes, windows) in ((SHAPES_2D, WINDOWS_2D), (SHAPES_3D, WINDOWS_3D))
    for shape, window, padding, rng in itertools.product(shapes, windows, ("same", "valid"), RANGES)
    if _fits(shape, window, padding)
]


@pytest.mark.parametrize(("shape", "window", "padding", "data_range"), GRID)
def test_matches_reference(shape, window, padding, data_range):
    x, y = _pair(shape, seed=len(shape) + shape[-1])
    ref = ssim_reference(x.numpy(), y.numpy(), data_range=data_range, padding=padding, **window)
    per_image, cs = _ssim_per_image(
        x, y, data_range=data_range, padding=padding, return_contrast_sensitivity=True, **window
    )
    np.testing.assert_allclose(per_image.numpy(), ref.per_image, atol=TOL, rtol=0)
    np.testing.assert_allclose(cs.numpy(), ref.cs, atol=TOL, rtol=0)
    _, full = _ssim_per_image(x, y, data_range=data_range, padding=padding, return_full_image=True, **window)
    assert full.shape == ref.ssim_map.shape
    np.testing.assert_allclose(full.numpy(), ref.ssim_map, atol=TOL, rtol=0)


@pytest.mark.parametrize("reduction", ["elementwise_mean", "sum", "none", None])
@pytest.mark.parametrize("flag", [None, "return_full_image", "return_contrast_sensitivity"])
def test_public_function_reductions_and_returns(reduction, flag):
    x, y = _pair((3, 2, 20, 24), seed=3)
    ref = ssim_reference(x.numpy(), y.numpy())
    kwargs = {flag: True} if flag else {}
    out = ssim(x, y, reduction=reduction, **kwargs)
    value = out[0] if flag else out
    np.testing.assert_allclose(value.numpy(), reduce(ref.per_image, reduction), atol=TOL, rtol=0)
    if flag == "return_full_image":
        np.testing.assert_allclose(out[1].numpy(), ref.ssim_map, atol=TOL, rtol=0)
    if flag == "return_contrast_sensitivity":
        # As torchmetrics: the contrast term comes back per image, unreduced.
        np.testing.assert_allclose(out[1].numpy(), ref.cs, atol=TOL, rtol=0)


@pytest.mark.parametrize("shape", [(2, 3, 40, 50), (1, 1, 200, 300), (1, 2, 97, 140)])
@pytest.mark.parametrize(
    "window", [{}, dict(sigma=(1.0, 2.5)), dict(gaussian_kernel=False, kernel_size=(7, 9))]
)
@pytest.mark.ssim_unpatched
def test_reference_equals_torchmetrics_where_upstream_is_right(shape, window):
    """2-D SSIM is right upstream from 1.4.2: the reference must agree with it there."""
    tm = pytest.importorskip("torchmetrics.functional.image")
    import torchmetrics
    from packaging.version import Version

    if Version(torchmetrics.__version__) < Version("1.4.2"):
        pytest.skip("2-D SSIM is fixed upstream from 1.4.2 on")
    from ssim_patch import is_applied

    assert not is_applied()  # the ssim_unpatched marker (ssim_patch's pytest plugin)
    x, y = _pair(shape, seed=7)
    upstream = tm.structural_similarity_index_measure(x, y, reduction="none", **window)
    ref = ssim_reference(x.numpy(), y.numpy(), **window)
    np.testing.assert_allclose(upstream.numpy(), ref.per_image, atol=1e-9, rtol=0)


def test_float32_close_to_reference():
    x, y = _pair((4, 3, 64, 80), seed=11, dtype=torch.float32)
    ref = ssim_reference(x.double().numpy(), y.double().numpy())
    np.testing.assert_allclose(ssim(x, y, reduction="none").numpy(), ref.per_image, atol=2e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computed_in_float32(dtype):
    x, y = _pair((2, 3, 48, 48), seed=5, dtype=dtype)
    ref = ssim_reference(x.double().numpy(), y.double().numpy())
    out, full = ssim(x, y, reduction="none", return_full_image=True)
    assert out.dtype == dtype and full.dtype == dtype
    tol = 1e-3 if dtype == torch.float16 else 8e-3  # only the final rounding to the input dtype
    np.testing.assert_allclose(out.double().numpy(), ref.per_image, atol=tol, rtol=0)


def test_integer_images_as_float():
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (2, 1, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 256, (2, 1, 32, 32), generator=g, dtype=torch.uint8)
    ref = ssim_reference(x.numpy(), y.numpy(), data_range=255.0)
    out = ssim(x, y, data_range=255.0, reduction="none")
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), ref.per_image, atol=2e-6, rtol=0)


def test_tensor_data_range():
    x, y = _pair((2, 1, 30, 30))
    ref = ssim_reference(x.numpy(), y.numpy(), data_range=1.7)
    out = ssim(x, y, data_range=torch.tensor(1.7, dtype=torch.float64), reduction="none")
    np.testing.assert_allclose(out.numpy(), ref.per_image, atol=TOL, rtol=0)


def test_constant_images_score_one_not_nan():
    x = torch.full((2, 1, 16, 16), 0.5, dtype=torch.float64)
    assert torch.equal(ssim(x, x.clone(), reduction="none"), torch.ones(2, dtype=torch.float64))


def test_identical_images_score_one():
    x, _ = _pair((2, 3, 33, 31))
    for padding in ("same", "valid"):
        out = ssim(x, x.clone(), reduction="none", padding=padding)
        np.testing.assert_allclose(out.numpy(), 1.0, atol=1e-12, rtol=0)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_gradcheck(padding, ndim):
    shape = (1, 2, 9, 8) if ndim == 2 else (1, 1, 7, 8, 6)
    x, y = _pair(shape, seed=13)
    x.requires_grad_(True)
    y.requires_grad_(True)
    window = dict(sigma=0.7) if ndim == 2 else dict(gaussian_kernel=False, kernel_size=3)

    def f(a, b):
        return ssim(a, b, padding=padding, data_range=1.0, **window)

    assert torch.autograd.gradcheck(f, (x, y), eps=1e-6, atol=1e-7)


def test_gradcheck_data_range_none_and_blocked_path():
    # 130 samples takes the blocked (long axis) path of the filter.
    x, y = _pair((1, 1, 130, 6), seed=17)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: ssim(a, y, sigma=0.5), (x,), eps=1e-6, atol=1e-7)


def test_zeroed_border_example():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 256, 256)
    out = ssim(x, zeroed_border(x))
    ref = ssim_reference(x.double().numpy(), zeroed_border(x).double().numpy())
    assert abs(out.item() - ref.per_image.mean()) < 2e-6
    assert round(out.item(), 5) == 0.98349  # the corrected value (README), not 0.99996


def test_second_order_gradients():
    x, y = _pair((1, 1, 7, 6), seed=19)
    x.requires_grad_(True)
    assert torch.autograd.gradgradcheck(
        lambda a: ssim(a, y, sigma=0.6, data_range=1.0), (x,), eps=1e-6, atol=1e-6
    )
