"""(e) of the GPU check, first part: the Triton kernels timed for each launch config (tile rows x
columns, warps); the fastest forward and backward become ``triton.CONFIG`` for the rest of the run."""

from __future__ import annotations

import functools
import time
from typing import Callable

import torch

from benchmarks import report
from benchmarks.cases import (
    shape_text,
)
from benchmarks.gpu_utils import ms3, triton_inputs
from benchmarks.timing import failure, sync

#: The sweep: (block_h, block_w, num_warps); block_w >= 32 num_warps keeps each column's window
#: slots in one thread (the slot reductions stay in registers).
SWEEP = tuple((bh, bw, w) for bh in (32, 64, 128) for bw, w in ((128, 4), (256, 8)))
QUICK_SWEEP = ((16, 32, 1), (8, 64, 2))


def _mean_seconds(fn: Callable[[], object], device: str, rounds: int) -> float:
    """Mean seconds of ``rounds`` back-to-back calls (queued, one synchronisation at the end)."""
    sync(device)
    start = time.perf_counter()
    for _ in range(rounds):
        fn()
    sync(device)
    return (time.perf_counter() - start) / rounds


def sweep_section(device: str, quick: bool, deadline: float) -> tuple[report.Rows, list[str]]:
    """Time the Triton kernels for each launch config of :data:`SWEEP` (each compiled once, by its
    first call); the fastest forward and backward become ``triton.CONFIG`` for the rest of the run."""
    from ssim_patch import _filters, _formula
    from ssim_patch.backends import triton as tb
    from ssim_patch.backends._protocol import Needs, Plan

    shape = (1, 2, 24, 40) if quick else (5, 3, 1080, 1920)
    plan = Plan(_filters.Blur((_filters.gaussian_taps(1.5, 11),) * 2, "same"))
    x, y = triton_inputs(shape, "forward", torch.float32, device)
    why = tb.unsupported(x, plan)
    if why is not None:
        return [], [f"(e) sweep not run: {why}"]
    k = _formula.constants(1e-4, 9e-4, None, x)
    loss = Needs(True, False, False, False)
    rounds = 2 if quick else 20
    rows: report.Rows = [
        ["pass", "block_h", "block_w", "warps", "first call s", "metric fwd ms", "loss fwd ms"]
    ]
    rows[0].append("bwd ms")
    best: dict[str, tuple[float, tb.Launch]] = {}
    _, _, kept = tb.forward(x, y, k, plan, loss)
    assert kept is not None
    g_image = torch.ones(shape[0], device=device)
    for bh, bw, warps in QUICK_SWEEP if quick else SWEEP:
        if time.monotonic() > deadline:
            rows.append(["-", str(bh), str(bw), str(warps), "not run (time budget spent)", "", "", ""])
            continue
        launch = tb.Launch(block_h=bh, block_w=bw, num_warps=warps)
        config = tb.with_config(forward=launch, backward=launch)
        try:
            start = time.perf_counter()
            tb.forward(x, y, k, plan, None, config)
            tb.forward(x, y, k, plan, loss, config)
            tb.backward(x, y, k, kept, g_image, None, plan, loss, config)
            sync(device)
            first = time.perf_counter() - start
            metric = _mean_seconds(functools.partial(tb.forward, x, y, k, plan, None, config), device, rounds)
            loss_fwd = _mean_seconds(
                functools.partial(tb.forward, x, y, k, plan, loss, config), device, rounds
            )
            bwd = _mean_seconds(
                functools.partial(tb.backward, x, y, k, kept, g_image, None, plan, loss, config),
                device,
                rounds,
            )
        except Exception as exc:  # a config the compiler rejects (registers, shared memory)
            rows.append(["both", str(bh), str(bw), str(warps), failure("config", exc)[:120], "", "", ""])
            continue
        row = ["both", str(bh), str(bw), str(warps), f"{first:.1f}"]
        rows.append([*row, ms3(metric), ms3(loss_fwd), ms3(bwd)])
        for key, seconds in (("forward", metric + loss_fwd), ("backward", bwd)):
            if key not in best or seconds < best[key][0]:
                best[key] = (seconds, launch)
    notes = [f"(e) sweep at {shape_text(shape)}, {rounds} calls per config"]
    if "forward" in best and "backward" in best:
        tb.CONFIG = tb.with_config(forward=best["forward"][1], backward=best["backward"][1])
        notes.append(f"(e) fastest, used for the rest of the run: `triton.CONFIG = {tb.CONFIG!r}`")
    return rows, notes
