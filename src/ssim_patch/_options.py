"""The choices ssim-patch's options take, and their checks. Imports nothing heavy (no torch):
the patcher, the pytest plugin and the start-up hook use it before torch is loaded."""

from __future__ import annotations

PADDINGS = ("same", "valid")
REDUCTIONS = ("elementwise_mean", "sum", "none", None)


def check_padding(padding: object) -> None:
    """ValueError unless ``padding`` is "same" or "valid"."""
    if padding not in PADDINGS:
        raise ValueError(f"`padding` must be 'same' or 'valid', got {padding!r}.")


def check_reduction(reduction: object) -> None:
    """ValueError unless ``reduction`` is one torchmetrics accepts."""
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"`reduction` must be one of 'elementwise_mean', 'sum', 'none' or None, got {reduction!r}."
        )
