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
import linecache
import warnings
from typing import Any, Callable, Optional

import pytest
import torch
from test_misuse import BAD_INPUTS

import ssim_patch

F = importlib.import_module("torchmetrics.functional.image.ssim")
METRICS = importlib.import_module("torchmetrics.image.ssim")

Outcome = tuple[Optional[type], str]  # (exception type, message), or (None, "finite"/"nan"/...)
OWN: set[Outcome] = set()  # outcomes seen raised by a `raise` statement in torchmetrics' own code

# (preds shape, target shape, kernel_size, sigma): torchmetrics' test_ssim_invalid_inputs.
UPSTREAM_INVALID = [
    ((1, 1, 16, 16), (1, 1, 16, 16), [11, 11], [1.5]),
    ((1, 16, 16), (1, 16, 16), [11, 11], [1.5, 1.5]),
    ((1, 1, 16, 16), (1, 1, 16, 16), [11], [1.5, 1.5]),
    ((1, 1, 16, 16), (1, 1, 16, 16), [11], [1.5]),
    ((1, 1, 16, 16), (1, 1, 16, 16), [11, 0], [1.5, 1.5]),
    ((1, 1, 16, 16), (1, 1, 16, 16), [11, 10], [1.5, 1.5]),
    ((1, 1, 16, 16), (1, 1, 16, 16), [11, -11], [1.5, 1.5]),
    ((1, 1, 16, 16), (1, 1, 16, 16), [11, 11], [1.5, 0]),
    ((1, 1, 16, 16), (1, 1, 16, 16), [11, 11], [1.5, -1.5]),
]
UPSTREAM_IDS = [f"{len(p)}d-kernel{k}-sigma{s}".replace(" ", "") for p, _, k, s in UPSTREAM_INVALID]


def outcome(call: Callable[[], Any]) -> Outcome:
    """What a call does: the exception's type and message, or what kind of number it returns."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = call()
    except Exception as exc:
        if _raised_by_a_torchmetrics_raise(exc):
            OWN.add((type(exc), str(exc)))
        return type(exc), str(exc)
    value = value[0] if isinstance(value, tuple) else value
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return None, "finite" if bool(torch.isfinite(value).all()) else "not finite"
    return None, f"returns {type(value).__name__}"


def _raised_by_a_torchmetrics_raise(exc: BaseException) -> bool:
    """The innermost frame is torchmetrics' code, at a line with a raise statement."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None or not str(tb.tb_frame.f_globals.get("__name__", "")).startswith("torchmetrics"):
        return False
    return linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno).strip().startswith("raise ")


def both(call: Callable[[], Any]) -> tuple[Outcome, Outcome]:
    """The outcome unpatched (the release as released) and patched."""
    ssim_patch.revert()
    unpatched = outcome(call)
    ssim_patch.apply()
    return unpatched, outcome(call)


def side_by_side(unpatched: Outcome, patched: Outcome) -> str:
    def show(o: Outcome) -> str:
        return f"{o[0].__name__}: {o[1]}" if o[0] is not None else o[1]

    return f"\n  unpatched: {show(unpatched)}\n  patched:   {show(patched)}"


def assert_parity(unpatched: Outcome, patched: Outcome) -> None:
    """The release's own argument errors are kept exactly; what it gets wrong may change, but
    only into a number or a ValueError/TypeError of the patch."""
    if patched == unpatched:  # also a release's own RuntimeError raised before the hook point
        return
    message = side_by_side(unpatched, patched)
    if unpatched in OWN:
        assert patched == unpatched, "the release's own error must be kept" + message
    elif patched[0] is not None:
        assert patched[0] in (ValueError, TypeError), "the patch raised something unclear" + message


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
