"""The patch state around a piece of a test: whatever state (applied with its options, or not) is
found on entry comes back on exit. The ``patch_applied`` and ``patch_reverted`` fixtures
(tests/conftest.py) are built on these."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import ssim_patch
from ssim_patch import _patcher


@contextlib.contextmanager
def kept() -> Iterator[None]:
    """Puts back, on exit, the patch state found on entry."""
    saved = _patcher._snapshot()
    try:
        yield
    finally:
        _patcher._restore(saved)


@contextlib.contextmanager
def applied() -> Iterator[None]:
    """The patch applied with the default options inside; the state found comes back after."""
    with kept():
        ssim_patch.apply()
        yield


@contextlib.contextmanager
def reverted() -> Iterator[None]:
    """torchmetrics' own SSIM and UQI inside; the state found comes back after."""
    with kept():
        ssim_patch.revert()
        yield
