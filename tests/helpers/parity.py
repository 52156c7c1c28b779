"""Parity with the installed release: what a call does unpatched and patched, and the rule that the
release's own argument errors are kept exactly (tests/matrix: test_errors.py,
test_argument_parity.py, test_uqi_release.py). Also torchmetrics' own list of invalid SSIM
arguments (``UPSTREAM_INVALID``)."""

from __future__ import annotations

import linecache
import warnings
from typing import Any, Callable, Optional

import torch

import ssim_patch

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
