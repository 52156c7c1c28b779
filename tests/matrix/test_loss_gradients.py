"""Under the installed torchmetrics release: SSIM as a loss. The gradient of the patched functional
SSIM and Metric class is the exact derivative of the corrected formula (the float64 autograd
reference in tests/helpers/reference_torch.py), on degenerate pairs too."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch.func import grad, jacfwd

import ssim_patch
from tests.helpers import reference_torch as ref
from tests.helpers.gradients import PAIRS, assert_gradient, random_images

F = importlib.import_module("torchmetrics.functional.image.ssim")
METRICS = importlib.import_module("torchmetrics.image.ssim")
WINDOWS = {
    "gauss": ((2, 2, 24, 22), dict(sigma=1.5)),
    "uniform-aniso": ((2, 1, 20, 19), dict(gaussian_kernel=False, kernel_size=(3, 7))),
    "3d": ((1, 2, 9, 10, 11), dict(sigma=(0.6, 1.0, 1.2))),
}


@pytest.mark.parametrize("data_range", [1.0, None], ids=["range-1", "range-None"])
@pytest.mark.parametrize("window", list(WINDOWS))
@pytest.mark.parametrize("pair", list(PAIRS))
def test_functional_gradient_is_exact(pair, window, data_range):
    shape, kw = WINDOWS[window]
    target = random_images(shape)
    preds = PAIRS[pair](target)
    ssim_patch.apply()
    grads = []
    for fn in (
        lambda a: F.structural_similarity_index_measure(
            a, target, data_range=data_range, reduction="none", **kw
        ),
        lambda a: ref.ssim(a, target, data_range=data_range, **kw)[0],
    ):
        a = preds.clone().requires_grad_()
        grads.append(torch.autograd.grad((fn(a) * torch.arange(1.0, shape[0] + 1)).sum(), a)[0])
    assert_gradient(*grads)
    if pair == "identical":
        assert float(grads[0].abs().max()) <= 1e-15


def test_metric_forward_as_a_loss():
    """A Metric object's forward is a differentiable batch value (the per-batch SSIM)."""
    shape, kw = WINDOWS["gauss"]
    target = random_images(shape, seed=1)
    preds = PAIRS["random"](target)
    ssim_patch.apply()
    metric = METRICS.StructuralSimilarityIndexMeasure(data_range=1.0, **kw).double()
    a = preds.clone().requires_grad_()
    value = metric(a, target)
    if not value.requires_grad:
        pytest.skip("this release's Metric forward does not keep the graph")
    (got,) = torch.autograd.grad(value, a)
    b = preds.clone().requires_grad_()
    (expected,) = torch.autograd.grad(ref.ssim(b, target, data_range=1.0, **kw)[0].mean(), b)
    assert_gradient(got, expected)


@pytest.mark.parametrize("transform", ["grad", "jacfwd"])
def test_functional_under_torch_func(transform):
    shape, kw = WINDOWS["gauss"]
    target = random_images(shape, seed=2)
    preds = PAIRS["random"](target)
    ssim_patch.apply()

    def per_image(a):
        return F.structural_similarity_index_measure(a, target, data_range=1.0, reduction="none", **kw)

    def reference(a):
        return ref.ssim(a, target, data_range=1.0, **kw)[0]

    if transform == "grad":
        got = grad(lambda a: per_image(a).sum())(preds)
        a = preds.clone().requires_grad_()
        expected = torch.autograd.grad(reference(a).sum(), a)[0]
    else:
        got, expected = jacfwd(per_image)(preds), torch.autograd.functional.jacobian(reference, preds)
    assert_gradient(got, expected)
