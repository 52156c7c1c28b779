"""Launches and bytes of torchmetrics' SSIM unpatched vs patched, counted on ``device="meta"``.

On meta tensors ssim_patch takes its non-CPU path (one piece of work, as on CUDA), nothing is
computed, and :class:`~benchmarks.dispatch_count.DispatchCounter` sees every aten op of the call
(forward, and the backward of ``(1 - ssim)`` for the ``backward`` pass). The floor: patched
<= unpatched in ops dispatched, in ops that write, and in bytes written, for every shape and pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.cases import COUNT_SHAPES, MODES, Case, Shape, make_inputs
from benchmarks.contenders import Contender, make_contenders
from benchmarks.dispatch_count import DispatchCounter, OpCounts
from benchmarks.timing import call_once

COUNTED = ("unpatched", "patched")


@dataclass
class CountRow:
    """One shape and pass: the counts of the unpatched and of the patched call."""

    case: Case
    unpatched: OpCounts
    patched: OpCounts

    def floor_holds(self) -> bool:
        """The floor: patched <= unpatched in ops, ops that write, and bytes written."""
        u, p = self.unpatched, self.patched
        return p.ops <= u.ops and p.writing_ops <= u.writing_ops and p.bytes_written <= u.bytes_written


def count_call(contender: Contender, case: Case) -> OpCounts:
    """The ops one call of ``contender`` dispatches on ``case`` (its device should be ``meta``), in
    steady state: a first call outside the count builds what a contender caches (window weights)."""
    assert contender.fn is not None, contender.missing
    x, y = make_inputs(case)
    with contender.context():
        call_once(contender.fn, x, y, case.mode)
        with DispatchCounter() as counter:
            call_once(contender.fn, x, y, case.mode)
    counts: OpCounts = counter.counts
    return counts


def count_cases(shapes: Sequence[Shape] = COUNT_SHAPES, modes: Sequence[str] = MODES) -> list[CountRow]:
    """Unpatched and patched counts for every shape and pass, on ``device="meta"``."""
    contenders = make_contenders(COUNTED)
    rows = []
    for shape in shapes:
        for mode in modes:
            case = Case("meta", shape, mode)
            counts = {name: count_call(contenders[name], case) for name in COUNTED}
            rows.append(CountRow(case, counts["unpatched"], counts["patched"]))
    return rows
