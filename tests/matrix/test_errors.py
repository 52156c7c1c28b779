"""Under the installed torchmetrics release: an argument the release itself rejects (one of its own
``raise`` statements) gets exactly the release's error with the patch applied (type and message,
and so the same order of checks); the patch's own errors only replace what the release gets wrong
(an error from inside torch or a builtin, a NaN, a silently wrong number).

Cases: the invalid arguments of torchmetrics' own ``test_ssim_invalid_inputs``
(tests/unittests/image/test_ssim.py, the same list at v1.3.2 and v1.9.0), through the functional
SSIM, the Metric class and MS-SSIM, and every bad input of tests/test_misuse.py (``BAD_INPUTS``).
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import torch

import ssim_patch
from tests.helpers.bad_inputs import BAD_INPUTS
from tests.helpers.parity import UPSTREAM_IDS, UPSTREAM_INVALID, assert_parity, both, side_by_side

F = importlib.import_module("torchmetrics.functional.image.ssim")
METRICS = importlib.import_module("torchmetrics.image.ssim")


def _images(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("preds", "target", "kernel", "sigma"), UPSTREAM_INVALID, ids=UPSTREAM_IDS)
def test_upstream_invalid_inputs_functional(preds, target, kernel, sigma):
    p, t = _images(preds, 0), _images(target, 1)
    call = lambda: F.structural_similarity_index_measure(p, t, kernel_size=kernel, sigma=sigma)  # noqa: E731
    unpatched, patched = both(call)
    assert unpatched[0] is ValueError, "torchmetrics' own test expects a ValueError" + side_by_side(
        unpatched, patched
    )
    assert patched == unpatched, side_by_side(unpatched, patched)


@pytest.mark.parametrize(("preds", "target", "kernel", "sigma"), UPSTREAM_INVALID, ids=UPSTREAM_IDS)
def test_upstream_invalid_inputs_metric_class(preds, target, kernel, sigma):
    p, t = _images(preds, 0), _images(target, 1)

    def call() -> Any:
        metric = METRICS.StructuralSimilarityIndexMeasure(kernel_size=kernel, sigma=sigma)
        metric.update(p, t)
        return metric.compute()

    assert_parity(*both(call))


@pytest.mark.parametrize(("preds", "target", "kernel", "sigma"), UPSTREAM_INVALID, ids=UPSTREAM_IDS)
def test_upstream_invalid_inputs_ms_ssim(preds, target, kernel, sigma):
    """The same arguments through MS-SSIM, on images large enough for its five scales."""
    big = lambda shape: (*shape[:-2], 192, 192)  # noqa: E731
    p, t = _images(big(preds), 0), _images(big(target), 1)
    call = lambda: F.multiscale_structural_similarity_index_measure(  # noqa: E731
        p, t, kernel_size=kernel, sigma=sigma, data_range=1.0
    )
    assert_parity(*both(call))


#: The cases that torchmetrics' functional can take (it has no `padding` argument).
FUNCTIONAL_CASES = [case for case, _, make in BAD_INPUTS if not make(lambda p, t, **kw: "padding" in kw)]


@pytest.mark.parametrize("case", FUNCTIONAL_CASES)
def test_bad_inputs_functional(case):
    make = {c: f for c, _, f in BAD_INPUTS}[case]
    assert_parity(*both(lambda: make(F.structural_similarity_index_measure)))


def test_release_error_is_raised_unchanged():
    """The very exception the original raised: no chained context from the engine's error."""
    x = _images((1, 1, 16, 16), 2)
    ssim_patch.revert()
    with pytest.raises(ValueError) as upstream:
        F.structural_similarity_index_measure(x, x, gaussian_kernel=False, kernel_size=10)
    ssim_patch.apply()
    with pytest.raises(ValueError) as patched:
        F.structural_similarity_index_measure(x, x, gaussian_kernel=False, kernel_size=10)
    assert str(patched.value) == str(upstream.value)
    assert patched.value.__context__ is None and patched.value.__cause__ is None


def test_runtime_error_of_the_release_becomes_the_patchs_error():
    """An image too small for its window: the release fails inside torch (or gives NaN); patched,
    the engine's ValueError names the axis."""
    x = _images((1, 1, 4, 4), 3)
    unpatched, patched = both(lambda: F.structural_similarity_index_measure(x, x * 0.5))
    assert unpatched[0] is RuntimeError or unpatched == (None, "not finite"), unpatched
    assert patched[0] is ValueError and "Axis 2" in patched[1], patched
