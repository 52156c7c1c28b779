"""Under the installed torchmetrics release: the patch makes every SSIM API equal the reference,
revert() restores the release bit for bit, and the release's own bugs reproduce unpatched."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import ssim_patch
from tests.helpers.fresh_interpreter import unpatched_environ
from tests.helpers.reference import ms_ssim_reference, ssim_reference, zeroed_border
from tests.helpers.upstream_bugs import assert_reproduces_unpatched_and_the_patch_fixes_it

TOL = 1e-6
F = importlib.import_module("torchmetrics.functional.image.ssim")
METRICS = importlib.import_module("torchmetrics.image.ssim")
SSIM = F.structural_similarity_index_measure
MS_SSIM = F.multiscale_structural_similarity_index_measure


def _pair(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    y = 0.7 * x + 0.3 * torch.rand(shape, generator=g, dtype=torch.float64)
    return x, y


def _per_image(x, y, **kw):
    return ssim_reference(x.numpy(), y.numpy(), **kw).per_image


WINDOWS = {
    "gauss": dict(gaussian_kernel=True, sigma=1.5),
    "gauss-aniso": dict(gaussian_kernel=True, sigma=(0.7, 1.8)),
    "uniform": dict(gaussian_kernel=False, kernel_size=7),
    "uniform-aniso": dict(gaussian_kernel=False, kernel_size=(3, 9)),
}
RANGES = {"none": None, "float": 1.3, "tuple": (0.05, 0.95)}


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("data_range", list(RANGES), ids=str)
@pytest.mark.parametrize("window", list(WINDOWS))
def test_functional_2d(window, data_range, padding):
    x, y = _pair((2, 3, 31, 26))
    kw = dict(WINDOWS[window], data_range=RANGES[data_range])
    ssim_patch.apply(padding=padding)
    got = SSIM(x, y, reduction="none", **kw)
    np.testing.assert_allclose(got.numpy(), _per_image(x, y, padding=padding, **kw), atol=TOL, rtol=0)
    mean = SSIM(x, y, **kw)
    np.testing.assert_allclose(mean.item(), _per_image(x, y, padding=padding, **kw).mean(), atol=TOL)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize(
    "kw",
    [
        dict(sigma=(0.8, 1.0, 1.6)),
        dict(gaussian_kernel=False, kernel_size=(3, 5, 7)),
        dict(data_range=(0.0, 1.0)),
    ],
    ids=["gauss-aniso", "uniform-aniso", "tuple-range"],
)
def test_functional_3d(kw, padding):
    x, y = _pair((2, 1, 12, 14, 15), seed=1)
    ssim_patch.apply(padding=padding)
    got = SSIM(x, y, reduction="none", **kw)
    np.testing.assert_allclose(got.numpy(), _per_image(x, y, padding=padding, **kw), atol=TOL, rtol=0)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("window", ["gauss", "uniform"])
def test_ms_ssim_functional(window, padding):
    # One image: every release composes the scales the same way for a batch of one.
    x, y = _pair((1, 2, 64, 72), seed=2)
    betas = (0.3, 0.4, 0.3)
    kw = dict(WINDOWS[window], data_range=1.0)
    if window == "uniform":
        kw["kernel_size"] = 5
    ssim_patch.apply(padding=padding)
    got = MS_SSIM(x, y, betas=betas, **kw)
    expected = ms_ssim_reference(x.numpy(), y.numpy(), betas=betas, padding=padding, **kw)
    np.testing.assert_allclose(got.item(), expected.mean(), atol=TOL)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_ssim_metric_update_compute_and_forward(padding):
    x, y = _pair((4, 2, 30, 33), seed=3)
    ssim_patch.apply(padding=padding)
    metric = METRICS.StructuralSimilarityIndexMeasure(data_range=1.0).double()
    batch_value = metric(x[:2], y[:2])  # forward: this batch's value, and accumulates
    metric.update(x[2:], y[2:])
    expected = _per_image(x, y, data_range=1.0, padding=padding)
    np.testing.assert_allclose(batch_value.item(), expected[:2].mean(), atol=TOL)
    np.testing.assert_allclose(metric.compute().item(), expected.mean(), atol=TOL)


def test_ssim_metric_data_range_none_single_batch():
    x, y = _pair((3, 1, 25, 25), seed=4)
    ssim_patch.apply()
    metric = METRICS.StructuralSimilarityIndexMeasure().double()
    metric.update(x, y)
    np.testing.assert_allclose(metric.compute().item(), _per_image(x, y).mean(), atol=TOL)


def test_ms_ssim_metric():
    x, y = _pair((1, 1, 64, 64), seed=5)
    betas = (0.5, 0.5)
    ssim_patch.apply()
    metric = METRICS.MultiScaleStructuralSimilarityIndexMeasure(data_range=1.0, betas=betas).double()
    value = metric(x, y)
    expected = ms_ssim_reference(x.numpy(), y.numpy(), betas=betas, data_range=1.0).mean()
    np.testing.assert_allclose(value.item(), expected, atol=TOL)
    np.testing.assert_allclose(metric.compute().item(), expected, atol=TOL)


def test_revert_restores_the_release_bit_for_bit():
    hook = ssim_patch.status().hook
    original = getattr(F, hook)
    bound = {name: getattr(mod, hook) for name, mod in _modules_binding(original).items()}
    x, y = _pair((2, 3, 40, 40), seed=6)
    before = SSIM(x, y, reduction="none")
    ssim_patch.apply()
    assert getattr(F, hook) is not original and getattr(F, hook).__wrapped__ is original
    ssim_patch.revert()
    assert getattr(F, hook) is original
    for name, func in bound.items():
        assert getattr(sys.modules[name], hook) is func
    after = SSIM(x, y, reduction="none")
    assert torch.equal(before, after)


def _modules_binding(func):
    return {
        name: mod
        for name, mod in list(sys.modules.items())
        if getattr(mod, "__dict__", {}).get(func.__name__) is func
    }


def test_every_binding_is_swapped(release):
    report = ssim_patch.apply()
    assert report.applied and report.hook == release["hook"]
    assert f"torchmetrics.functional.image.ssim.{release['hook']}" in report.places
    assert f"torchmetrics.image.ssim.{release['hook']}" in report.places


@pytest.mark.parametrize("order", ["apply-then-import", "import-then-apply"])
def test_fresh_process(order):
    """torchmetrics imported after apply() (post-import hook) or before it."""
    first, second = (
        ("import ssim_patch; ssim_patch.apply()", "import torchmetrics")
        if order == "apply-then-import"
        else ("import torchmetrics", "import ssim_patch; ssim_patch.apply()")
    )
    code = textwrap.dedent(
        f"""
        import warnings; warnings.simplefilter("ignore")
        {first}
        {second}
        import torch
        from torchmetrics.functional.image.ssim import structural_similarity_index_measure as f
        from torchmetrics.image.ssim import StructuralSimilarityIndexMeasure as M
        torch.manual_seed(0)
        x = torch.rand(3, 3, 256, 256)
        y = x.clone(); y[..., 0, :] = 0; y[..., -1, :] = 0; y[..., :, 0] = 0; y[..., :, -1] = 0
        print(round(f(x, y).item(), 5), round(M()(x, y).item(), 5))
        """
    )
    # The child starts unpatched whatever this process exported: the test applies the patch itself.
    env = unpatched_environ()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["0.98349", "0.98349"], out.stderr


def test_the_table_knows_this_release(release):
    report = ssim_patch.status()
    assert report.supported and report.tested
    assert report.hook == release["hook"]
    assert set(report.upstream_bugs) == set(release["upstream_bugs"])


# --- the release's own bugs: each reproduces unpatched, and the patch fixes it ---------------


def _call(fn):
    try:
        return fn(), None
    except Exception as exc:
        return None, exc


def _border_crop():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 256, 256)
    value, _ = _call(lambda: SSIM(x, zeroed_border(x)).item())
    expected = _per_image(x.double(), zeroed_border(x).double()).mean()
    return value is not None and abs(value - expected) > 1e-3


def _gaussian_pad():
    x, y = _pair((1, 1, 32, 32), seed=7)
    full, _ = _call(
        lambda: SSIM(x, y, gaussian_kernel=False, kernel_size=3, reduction="none", return_full_image=True)[1]
    )
    if full is not None and full.shape != x.shape:
        return True
    value, _ = _call(lambda: SSIM(x, y, sigma=0.1).item())
    return value is not None and not np.isfinite(value)


def _uniform_window_error():
    x, y = _pair((1, 1, 32, 32), seed=8)
    _, exc = _call(lambda: SSIM(x, y, gaussian_kernel=False, kernel_size=7))
    return exc is not None


def _cs_crop():
    x, y = _pair((2, 1, 40, 40), seed=9)
    hook = getattr(F, ssim_patch.status().hook)
    kw = dict(return_contrast_sensitivity=True, data_range=1.0)
    if ssim_patch.status().hook == "_ssim_compute":
        kw["reduction"] = "none"
    out, _ = _call(lambda: hook(x, y, **kw))
    if out is None:
        return False
    ref = ssim_reference(x.numpy(), y.numpy(), data_range=1.0)
    sim_right = np.allclose(out[0].numpy(), ref.per_image, atol=TOL)
    cs_right = np.allclose(out[1].numpy(), ref.cs, atol=TOL)
    return sim_right and not cs_right


def _depth_pad():
    # Gaussian windows of 7, 7 and 15 taps: the depth pad must be 7, not (kernel_size - 1) // 2 = 5.
    x, y = (t.float() for t in _pair((1, 1, 16, 20, 24), seed=10))
    full, _ = _call(lambda: SSIM(x, y, sigma=(1.0, 1.0, 2.0), reduction="none", return_full_image=True)[1])
    return full is not None and tuple(full.shape) != tuple(x.shape)


def _host_sync():
    x, y = _pair((1, 1, 24, 24), seed=11)
    calls = []
    original_bool = torch.Tensor.__bool__

    def spy(self):
        calls.append(1)
        return original_bool(self)

    torch.Tensor.__bool__ = spy
    try:
        _call(lambda: SSIM(x, y))
    finally:
        torch.Tensor.__bool__ = original_bool
    return bool(calls)


def _small_input():
    x, y = _pair((1, 1, 4, 4), seed=12)
    _, exc = _call(lambda: SSIM(x, y))
    return exc is not None and not isinstance(exc, ValueError)


def _half_precision():
    # Bright images with fine detail: the variance as a difference of squares cancels in half.
    x, y = _pair((2, 1, 48, 48), seed=13)
    xh, yh = (0.9 + 0.1 * x).half(), (0.9 + 0.1 * y).half()
    expected = _per_image(xh.double(), yh.double(), data_range=1.0)
    got, exc = _call(lambda: SSIM(xh, yh, data_range=1.0, reduction="none"))
    if got is None:
        return not isinstance(exc, ValueError)
    return got.dtype != torch.float16 or np.abs(got.double().numpy() - expected).max() > 1e-3


SYMPTOMS = {
    "border-crop": _border_crop,
    "gaussian-pad": _gaussian_pad,
    "uniform-window-error": _uniform_window_error,
    "cs-crop": _cs_crop,
    "depth-pad": _depth_pad,
    "host-sync": _host_sync,
    "small-input": _small_input,
    "half-precision": _half_precision,
}


@pytest.mark.parametrize("bug", list(SYMPTOMS))
def test_upstream_bug_reproduces_unpatched_and_the_patch_fixes_it(release, bug):
    assert_reproduces_unpatched_and_the_patch_fixes_it(release, bug, SYMPTOMS[bug])


def test_symptom_table_covers_every_bug():
    """SSIM's bugs here; UQI's (ids uqi-*) in test_uqi_release.py, which checks its own table."""
    from ssim_patch._releases import BUGS

    assert set(SYMPTOMS) == {bug for bug in BUGS if not bug.startswith("uqi-")}
