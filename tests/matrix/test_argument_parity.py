"""Under the installed torchmetrics release, side by side with the release unpatched: every argument
form the releases let through their own code (tests/helpers/argument_forms.py) gives the corrected value
patched (the float64 reference of the plain argument it means), never an error where the release
gives none; a form the release rejects with one of its own checks gets exactly the release's error;
and on a tie between the two ranges (``data_range=None``) the release and the patch both give L,
and the gradient through it, to preds (Python's ``max``)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import ssim_patch
from tests.helpers import reference_torch as ref
from tests.helpers.argument_forms import F64, REJECTED, UQI_FORMS, call_with, expected, forms, uqi_expected
from tests.helpers.parity import OWN, assert_parity, both, side_by_side

F = importlib.import_module("torchmetrics.functional.image.ssim")
METRICS = importlib.import_module("torchmetrics.image.ssim")
UQI = importlib.import_module("torchmetrics.functional.image.uqi")
SSIM = F.structural_similarity_index_measure
TOL = 1e-6


def _pair(shape=(2, 1, 24, 24), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=F64)
    return x, 0.7 * x + 0.3 * torch.rand(shape, generator=g, dtype=F64)


@pytest.mark.parametrize(("form", "meant"), forms())
def test_a_form_the_releases_take_gives_the_corrected_value(form, meant):
    x, y = _pair()
    unpatched, patched = both(lambda: call_with(SSIM, x, y, form))
    assert patched[0] is None, "the patch must take what the releases take" + side_by_side(unpatched, patched)
    got = call_with(SSIM, x, y, form)  # both() leaves the patch applied
    np.testing.assert_allclose(got.numpy(), expected(x, y, meant), atol=TOL, rtol=0)


@pytest.mark.parametrize(("form", "meant"), UQI_FORMS)
def test_a_uqi_form_the_releases_take_gives_the_corrected_value(form, meant):
    x, y = _pair((2, 1, 24, 20), seed=1)
    unpatched, patched = both(lambda: UQI.universal_image_quality_index(x, y, **form))
    assert patched[0] is None, side_by_side(unpatched, patched)
    got = UQI.universal_image_quality_index(x, y, **form)
    np.testing.assert_allclose(got.item(), uqi_expected(x, y, meant), atol=TOL)


@pytest.mark.parametrize("form", REJECTED)
def test_a_form_the_release_rejects_gets_its_own_error(form):
    x, y = _pair()
    unpatched, patched = both(lambda: SSIM(x, y, **form))
    assert unpatched in OWN, "the release rejects it with its own check" + side_by_side(unpatched, patched)
    assert patched == unpatched, side_by_side(unpatched, patched)

    def metric() -> torch.Tensor:
        m = METRICS.StructuralSimilarityIndexMeasure(**form)
        m.update(x, y)
        return m.compute()

    assert_parity(*both(metric))


def test_a_tie_between_the_ranges_goes_to_preds():
    """Both images span exactly [0, 1]: data_range=None has the gradient of data_range=preds' range
    (a tensor of preds), unpatched and patched, and patched it is the reference's."""
    x, y = _pair((2, 1, 24, 24), seed=3)
    x, y = (x - x.min()) / (x.max() - x.min()), (y - y.min()) / (y.max() - y.min())
    assert float(x.max() - x.min()) == float(y.max() - y.min()) == 1.0

    def grads(range_of=None):
        a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
        data_range = None if range_of is None else range_of(a, b).max() - range_of(a, b).min()
        return torch.autograd.grad(SSIM(a, b, data_range=data_range, reduction="none").sum(), (a, b))

    for patch in (False, True):
        ssim_patch.apply() if patch else ssim_patch.revert()
        none, to_preds, to_target = grads(), grads(lambda a, b: a), grads(lambda a, b: b)
        for got, want in zip(none, to_preds):
            torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-9)
        assert (none[0] - to_target[0]).abs().max() > 1e-4, "the tie must matter to the gradient"
    a = x.clone().requires_grad_()
    want = torch.autograd.grad(ref.ssim(a, y)[0].sum(), a)[0]
    torch.testing.assert_close(none[0], want, atol=1e-12, rtol=1e-9)
