"""Timing: one call as a metric or a loss, one timed call, and interleaved rounds of them.

Each round times every contender once, in an order that rotates from round to round, so a slow
spell of the machine is shared by all of them; the medians of the same run give the ratios.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor

from benchmarks.cases import Case, make_inputs
from benchmarks.contenders import Contender, SsimFn

#: A case stops early (``max_seconds``) only after this many rounds.
MIN_ROUNDS = 3


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA); nothing elsewhere."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def call_once(fn: SsimFn, x: Tensor, y: Tensor, mode: str) -> Tensor:
    """One SSIM call as a metric (no grad) or as a loss (forward and backward); returns the SSIM."""
    if mode == "forward":
        with torch.no_grad():
            return fn(x, y)
    x.grad = None
    out = fn(x, y)
    (1.0 - out).backward()  # type: ignore[no-untyped-call]
    return out.detach()


def time_once(fn: SsimFn, x: Tensor, y: Tensor, mode: str, device: str) -> float:
    """Wall-clock seconds of one call, bracketed by ``torch.cuda.synchronize()`` on CUDA."""
    if mode == "backward":
        x.grad = None  # outside the timed region
    sync(device)
    start = time.perf_counter()
    call_once(fn, x, y, mode)
    sync(device)
    return time.perf_counter() - start


@dataclass
class Timing:
    """One contender's times (seconds) on one case, its SSIM value, or why it has none."""

    times: list[float] = field(default_factory=list)
    value: Optional[float] = None
    skipped: Optional[str] = None

    @property
    def median(self) -> Optional[float]:
        """Median time in seconds, or None without times."""
        return statistics.median(self.times) if self.times else None

    def quartiles(self) -> Optional[tuple[float, float]]:
        """(25th, 75th) percentile in seconds, or None under two times."""
        if len(self.times) < 2:
            return None
        q = statistics.quantiles(self.times, n=4, method="inclusive")
        return q[0], q[2]


def failure(name: str, exc: BaseException) -> str:
    """``"<name> failed: <type>: <first line of the message>"``."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{name} failed: {type(exc).__name__}: {first[:300]}"


def time_case(
    case: Case,
    contenders: dict[str, Contender],
    rounds: int,
    warmup: int,
    log: Callable[[str], None],
    max_seconds: Optional[float] = None,
    min_rounds: int = MIN_ROUNDS,
) -> dict[str, Timing]:
    """Warm every contender up, then ``rounds`` interleaved rounds in rotating order.

    With ``max_seconds``, rounds stop once the case has run that long (after at least
    ``min_rounds``), so one very slow contender cannot hold the run for half an hour. A
    contender that raises (in warm-up or later) is reported in ``skipped`` and dropped from the
    rounds; the others go on. Raises RuntimeError if the patched call does not give what
    ``ssim_patch.ssim`` gives (the patch would not be what is timed).
    """
    x, y = make_inputs(case)
    results = {name: Timing() for name in contenders}
    active = []
    for name, contender in contenders.items():
        reason = contender.unsupported(case.shape, case.device)
        if reason is not None:
            results[name].skipped = reason
            continue
        assert contender.fn is not None
        try:
            with contender.context():
                for _ in range(max(warmup, 1)):
                    value = call_once(contender.fn, x, y, case.mode)
            results[name].value = float(value)
        except Exception as exc:  # an implementation that rejects this input is n/a, not a crash
            results[name].skipped = failure(name, exc)
            log(f"  {results[name].skipped}")
            _release(case.device)
            continue
        active.append(name)
    check_patched_value(case, x, y, results)

    gc_was_enabled = gc.isenabled()
    start = time.perf_counter()
    try:
        for r in range(rounds):
            gc.collect()
            gc.disable()
            shift = r % len(active) if active else 0
            for name in active[shift:] + active[:shift]:
                contender = contenders[name]
                assert contender.fn is not None
                try:
                    with contender.context():
                        results[name].times.append(time_once(contender.fn, x, y, case.mode, case.device))
                except Exception as exc:
                    results[name].skipped = failure(name, exc)
                    results[name].times.clear()
                    log(f"  {results[name].skipped}")
                    _release(case.device)
            active = [name for name in active if results[name].skipped is None]
            elapsed = time.perf_counter() - start
            if max_seconds is not None and r + 1 >= min_rounds and r + 1 < rounds and elapsed > max_seconds:
                log(f"  stopped after {r + 1} rounds ({elapsed:.0f} s > {max_seconds:g} s)")
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return results


def _release(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def check_patched_value(case: Case, x: Tensor, y: Tensor, results: dict[str, Timing]) -> None:
    """Raise RuntimeError unless the patched torchmetrics call gave what ``ssim_patch.ssim`` gives."""
    patched = results.get("patched")
    if patched is None or patched.value is None:
        return
    import ssim_patch

    with torch.no_grad():
        expected = float(ssim_patch.ssim(x.detach(), y, data_range=1.0))  # type: ignore[arg-type]
    if abs(patched.value - expected) > 1e-5:
        raise RuntimeError(
            f"{case.key}: patched torchmetrics gave {patched.value}, ssim_patch.ssim gave {expected}; "
            "the patch is not what is being timed."
        )
