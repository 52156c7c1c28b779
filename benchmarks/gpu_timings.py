"""(c) of the GPU check: time per call of unpatched torchmetrics, patched (each backend) and the
other SSIM libraries, interleaved rounds within a time budget, and the peak extra memory."""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import time

import torch

from benchmarks import report
from benchmarks.cases import (
    GPU_CHECK_SHAPES,
    MODE_LABELS,
    MODES,
    QUICK_SHAPES,
    Case,
    shape_text,
)
from benchmarks.contenders import (
    COMPILED,
    GPU_CONTENDERS,
    Contender,
    make_contenders,
    probe,
)
from benchmarks.gpu_utils import BACKENDS, backend_contenders, log
from benchmarks.memory import Peaks, measure_cuda_memory
from benchmarks.timing import Timing, failure, time_case


def gpu_contenders(device: str) -> dict[str, Contender]:
    """Every contender of GPU_CONTENDERS; compiled ones are first called in a child process."""
    names = [n for n in GPU_CONTENDERS if n not in COMPILED]
    found = make_contenders(names)
    for name in COMPILED:
        module = {"fused-ssim": "fused_ssim", "fussim": "fussim"}[name]
        if importlib.util.find_spec(module) is None:
            found[name] = Contender(name, None, contextlib.nullcontext, missing=f"{name} not installed")
        elif not device.startswith("cuda"):
            found[name] = Contender(name, None, contextlib.nullcontext, missing=f"{name} runs on CUDA only")
        else:
            reason = probe(name, device)
            found[name] = (
                make_contenders([name])[name]
                if reason is None
                else Contender(name, None, contextlib.nullcontext, missing=reason)
            )
    found.update(backend_contenders())
    return found


#: The columns of the timing tables: the contenders, then the patched call with each backend forced.
TIMED = (*GPU_CONTENDERS, *(f"patched {name}" for name in BACKENDS))


def timing_section(
    device: str, quick: bool, deadline: float
) -> tuple[list[Case], dict[str, dict[str, Timing]], Peaks, list[str]]:
    """Time every case within ``deadline`` (``time.monotonic()``); cases left when it passes are noted."""
    shapes = QUICK_SHAPES if quick else GPU_CHECK_SHAPES
    cases = [Case(device, shape, mode) for shape in shapes for mode in MODES]
    contenders = gpu_contenders(device)
    notes = [c.missing for c in contenders.values() if c.missing is not None]
    timings: dict[str, dict[str, Timing]] = {}
    memory: Peaks = {}
    for i, case in enumerate(cases):
        left = deadline - time.monotonic()
        label = f"{shape_text(case.shape)} {MODE_LABELS[case.mode]}"
        if left <= 5:
            notes.append(f"{label}: not timed (time budget spent)")
            timings[case.key] = {name: Timing(skipped="time budget spent") for name in contenders}
            continue
        share = left / (len(cases) - i)
        log(f"timing {device} {label} (up to {share:.0f} s)...")
        try:
            timings[case.key] = time_case(
                case,
                contenders,
                rounds=2 if quick else 25,
                warmup=1 if quick else 2,
                log=log,
                max_seconds=0.6 * share,
                min_rounds=1,
            )
            if device.startswith("cuda") and time.monotonic() < deadline - 0.4 * share:
                memory.update(measure_cuda_memory(contenders, [case]))
        except Exception as exc:  # the patched-value check, or anything else: a row, not a crash
            notes.append(f"{label}: {failure('case', exc)}")
            timings[case.key] = {name: Timing(skipped=str(exc)) for name in contenders}
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    missing = {c.missing for c in contenders.values()}
    notes += [n for n in report.skipped_notes(cases, timings) if n.split(": ", 1)[1] not in missing]
    return cases, timings, memory, notes


TIMING_NOTES = """\
Median ms of one call (warm-ups first, then interleaved rounds in rotating order, each call
bracketed by `torch.cuda.synchronize()`; rounds stop when the case's share of the time budget is
spent, see the rounds column). `fwd`: under `no_grad`; `fwd+bwd`: `preds.requires_grad_()` and
`(1 - ssim).backward()`. Float32, 11-tap Gaussian window (sigma 1.5), data range 1; the caller's TF32
settings as found (torch's defaults unless changed). `unpatched/patched` is the speed-up of the patch;
`patched/<other>` are time ratios (< 1: patched is faster). pytorch-msssim keeps only whole windows
("valid"); fused-ssim and fussim zero-pad ("same") and support 2-D only. Peak memory:
`max_memory_allocated()` minus `memory_allocated()` around one call."""
