"""The argument contract on the installed release: every form torchmetrics lets through its own
code (tests/helpers/argument_forms.py) gives the corrected value of the plain argument it means, through the
engine, the patched functional SSIM and the Metric classes; tensor arguments are not read on the
host where torchmetrics does not read them, and a (lo, hi) of tensors passes its gradient on;
``data_range=None`` gives a tie between the two ranges to preds, as torchmetrics' Python ``max``
does; an image too small for the window names the padding switch of the API it was called through.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import ssim_patch
from ssim_patch.engine import ImageTooSmallError
from tests.helpers import reference_torch as ref
from tests.helpers.argument_forms import F64, T, call_with, expected, forms
from tests.helpers.reference import ms_ssim_reference, ssim_reference

F = importlib.import_module("torchmetrics.functional.image.ssim")
METRICS = importlib.import_module("torchmetrics.image.ssim")
UQI = importlib.import_module("torchmetrics.functional.image.uqi")
TOL = 1e-6


pytestmark = pytest.mark.usefixtures("patch_applied")


def _pair(shape=(2, 1, 24, 24), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=F64)
    return x, 0.7 * x + 0.3 * torch.rand(shape, generator=g, dtype=F64)


@pytest.mark.parametrize(("form", "meant"), forms())
def test_each_form_gives_the_value_it_means(form, meant):
    x, y = _pair()
    want = expected(x, y, meant)
    for fn in (ssim_patch.ssim, F.structural_similarity_index_measure):
        np.testing.assert_allclose(call_with(fn, x, y, form).numpy(), want, atol=TOL, rtol=0)


@pytest.mark.parametrize(
    ("kw", "plain"),
    [
        (dict(data_range=(T(0.125), T(0.875))), dict(data_range=(0.125, 0.875))),
        (dict(data_range=np.array(1.0), sigma=(T(1.0), T(2.0))), dict(data_range=1.0, sigma=(1.0, 2.0))),
        (
            dict(gaussian_kernel=False, kernel_size=(T(5), np.int64(3)), k2=T(0.03, dtype=F64)),
            dict(gaussian_kernel=False, kernel_size=(5, 3)),
        ),
    ],
    ids=["range-tensors", "range-ndarray-sigma-tensors", "uniform-tensor-sizes"],
)
def test_metric_classes_take_the_forms_too(kw, plain):
    x, y = _pair((4, 1, 64, 64), seed=1)
    metric = METRICS.StructuralSimilarityIndexMeasure(**kw).double()
    metric.update(x[:2], y[:2])
    metric.update(x[2:], y[2:])
    want = ssim_reference(x.numpy(), y.numpy(), **plain).per_image.mean()
    np.testing.assert_allclose(metric.compute().item(), want, atol=TOL)
    if "kernel_size" in kw:
        return  # the MS-SSIM class checks itself that kernel_size holds Python ints
    betas = (0.5, 0.5)
    ms = METRICS.MultiScaleStructuralSimilarityIndexMeasure(betas=betas, **kw).double()
    want_ms = ms_ssim_reference(x.numpy(), y.numpy(), betas=betas, **plain).mean()
    np.testing.assert_allclose(ms(x, y).item(), want_ms, atol=TOL)


def test_tensor_bounds_get_their_gradient():
    """A (lo, hi) of tensors that require grad: the gradient reaches lo and hi (through the clamp and
    L = hi - lo), as in torchmetrics, equal to the reference's."""
    x, y = _pair((2, 1, 20, 20), seed=2)
    x, y = 1.2 * x - 0.1, 1.2 * y - 0.1  # beyond [lo, hi] on both sides: the clamp acts
    weights = torch.arange(1.0, 3.0, dtype=F64)
    grads = []
    for fn in (F.structural_similarity_index_measure, lambda a, b, **kw: ref.ssim(a, b, **kw)[0]):
        lo, hi = T(0.1, dtype=F64, requires_grad=True), T(0.9, dtype=F64, requires_grad=True)
        a = x.clone().requires_grad_()
        kw = {"reduction": "none"} if fn is F.structural_similarity_index_measure else {}
        out = fn(a, y, data_range=(lo, hi), **kw)
        grads.append(torch.autograd.grad((out * weights).sum(), (a, lo, hi)))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-7)
    assert float(grads[0][1].abs()) > 1e-3 and float(grads[0][2].abs()) > 1e-3  # both bounds matter


@pytest.mark.parametrize(
    "kw",
    [
        dict(data_range=("lo", "hi")),
        dict(data_range=("tensor-1",)),
        dict(k1="k1"),
    ],
    ids=["range-bounds", "range-1-element", "k1"],
)
def test_device_tensors_are_not_read(kw):
    """Meta tensors have no values: a host read (item, bool, float) of a bound, a range or a
    constant would raise. torchmetrics reads none of these either."""
    x = torch.empty(2, 3, 32, 32, device="meta").requires_grad_()
    y = torch.empty(2, 3, 32, 32, device="meta")
    meta = {
        "lo": torch.zeros((), device="meta"),
        "hi": torch.ones((), device="meta"),
        "tensor-1": torch.ones(1, device="meta"),
        "k1": torch.full((), 0.01, device="meta"),
    }
    args = {k: tuple(meta[v] for v in vs) if isinstance(vs, tuple) else meta[vs] for k, vs in kw.items()}
    if "data_range" in args and len(args["data_range"]) == 1:
        args["data_range"] = args["data_range"][0]
    for fn in (ssim_patch.ssim, F.structural_similarity_index_measure):
        loss = fn(x, y, **args)
        assert loss.device.type == "meta"
        loss.backward()


def _tie():
    """Two images that both span exactly [0, 1] (as every normalised pair does)."""
    x, y = _pair((2, 1, 24, 24), seed=3)
    x, y = (x - x.min()) / (x.max() - x.min()), (y - y.min()) / (y.max() - y.min())
    assert float(x.max() - x.min()) == float(y.max() - y.min()) == 1.0
    return x, y


def test_a_tie_between_the_ranges_goes_to_preds():
    """data_range=None: L = max(preds' range, target's range) with Python's max, as torchmetrics
    computes it: on a tie the gradient through L goes to preds' extreme pixels, none of it split
    off to target's."""
    x, y = _tie()
    grads = []
    for fn in (
        lambda a, b: F.structural_similarity_index_measure(a, b, reduction="none"),
        lambda a, b: ssim_patch.ssim(a, b, reduction="none"),
        lambda a, b: ref.ssim(a, b)[0],
        lambda a, b: ref.ssim(a, b, data_range=b.max() - b.min())[0],  # L's gradient to target instead
    ):
        a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
        grads.append(torch.autograd.grad(fn(a, b).sum(), (a, b)))
    patched, engine, python_max, to_target = grads
    extremes = [int(x.flatten().argmax()), int(x.flatten().argmin())]
    for got in (patched, engine):
        for g, want in zip(got, python_max):
            torch.testing.assert_close(g, want, atol=1e-12, rtol=1e-9)
    at_extremes = python_max[0].flatten()[extremes]
    assert (at_extremes - to_target[0].flatten()[extremes]).abs().min() > 1e-4, "the test must see the rule"


def test_too_small_names_the_padding_of_the_api_it_was_called_through():
    x = torch.rand(1, 1, 5, 16)
    assert ssim_patch.ImageTooSmallError is ImageTooSmallError  # exported (lazily, with the engine)
    with pytest.raises(
        ImageTooSmallError, match=r"or use a smaller window or padding='valid' with at least 11"
    ):
        ssim_patch.ssim(x, x)
    for call in (
        lambda: F.structural_similarity_index_measure(x, x),
        lambda: UQI.universal_image_quality_index(x, x),
    ):
        with pytest.raises(ValueError) as raised:
            call()
        message = str(raised.value)
        assert type(raised.value) is ValueError, type(raised.value)  # as torchmetrics' own errors
        assert "ssim_patch.apply(padding='valid') (pytest: --ssim-patch-padding=valid)" in message, message
        assert "or padding='valid'" not in message, message
    ssim_patch.apply(padding="valid")
    with pytest.raises(ValueError, match=r"ssim_patch\.apply\(padding='same'\)") as raised:
        F.structural_similarity_index_measure(torch.rand(1, 1, 10, 16), torch.rand(1, 1, 10, 16))
    assert "padding='valid' needs at least 11" in str(raised.value)
