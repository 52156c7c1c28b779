"""(e) of the GPU check, the table: the Triton backend against unpatched torchmetrics, the conv
backend, kornia and pytorch-msssim; speed-ups, the fraction of the memory floor, peak memory."""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass
from typing import Optional

import torch

from benchmarks import report
from benchmarks.cases import (
    MODE_LABELS,
    Shape,
    shape_text,
)
from benchmarks.contenders import (
    make_contenders,
)
from benchmarks.gpu_utils import backend_contenders, log, ms3, triton_inputs
from benchmarks.memory import cuda_peak_extra_bytes
from benchmarks.timing import call_once, failure, time_once

#: HBM bandwidth of one H200 (bytes/s): the memory floor is the bytes that must move over it.
HBM_BYTES_PER_S = 4.8e12


@dataclass(frozen=True)
class TritonCase:
    """One row of the Triton table: images, pass, input dtype, and the floor the issue sets."""

    shape: Shape
    mode: str
    dtype: torch.dtype
    floor: str  # "<= X ms", ">= Nx unpatched" or "<= fp32 time"


TRITON_CASES = (
    TritonCase((5, 3, 1080, 1920), "forward", torch.float32, "<= 0.8 ms"),
    TritonCase((5, 3, 1080, 1920), "backward", torch.float32, "<= 1.6 ms"),
    TritonCase((1, 3, 1080, 1920), "backward", torch.float32, ">= 10x unpatched"),
    TritonCase((16, 3, 512, 512), "backward", torch.float32, ">= 10x unpatched"),
    TritonCase((5, 3, 1080, 1920), "backward", torch.bfloat16, "<= fp32 time"),
)
QUICK_TRITON_CASES = (
    TritonCase((1, 2, 24, 40), "forward", torch.float32, "<= 0.8 ms"),
    TritonCase((1, 2, 24, 40), "backward", torch.float32, "<= 1.6 ms"),
    TritonCase((1, 2, 24, 40), "backward", torch.bfloat16, "<= fp32 time"),
)
#: The contenders of the Triton table.
TRITON_TABLE = ("unpatched", "patched conv", "patched triton", "kornia", "pytorch-msssim")


def floor_bytes(case: TritonCase) -> int:
    """Bytes that must move: fwd reads x and y; fwd+bwd reads them in each pass and writes x's
    gradient (in the images' dtype)."""
    itemsize = torch.empty((), dtype=case.dtype).element_size()
    numel = 1
    for n in case.shape:
        numel *= n
    return numel * itemsize * (2 if case.mode == "forward" else 5)


def _floor_met(case: TritonCase, times: dict[str, Optional[float]], fp32: Optional[float]) -> str:
    triton = times.get("patched triton")
    if triton is None:
        return "n/a"
    if case.floor.startswith("<= fp32"):
        return "n/a" if fp32 is None else ("yes" if triton <= fp32 else "**no**")
    if case.floor.startswith("<="):
        limit = float(case.floor.split()[1]) / 1e3
        return "yes" if triton <= limit else "**no**"
    unpatched = times.get("unpatched")
    factor = float(case.floor.split()[1].rstrip("x"))
    return "n/a" if unpatched is None else ("yes" if unpatched / triton >= factor else "**no**")


def triton_section(device: str, quick: bool, deadline: float) -> tuple[report.Rows, list[str]]:
    """The issue's table: each case timed for :data:`TRITON_TABLE` (warm-ups, then interleaved
    rounds, medians), speed-ups of the Triton backend, fraction of the memory floor, peak memory."""
    contenders = {**make_contenders([n for n in TRITON_TABLE if not n.startswith("patched")])}
    contenders.update(backend_contenders())
    head = ["shape", "pass", "dtype", *[f"{n} ms" for n in TRITON_TABLE]]
    head += ["triton speed-up vs unpatched / kornia / pytorch-msssim", "floor ms", "fraction of floor"]
    head += ["peak MiB triton / unpatched", "issue's floor", "met"]
    rows: report.Rows = [head]
    notes: list[str] = []
    fp32_times: dict[tuple[Shape, str], Optional[float]] = {}
    cases = QUICK_TRITON_CASES if quick else TRITON_CASES
    for i, case in enumerate(cases):
        label = f"{shape_text(case.shape)} {MODE_LABELS[case.mode]} {str(case.dtype).replace('torch.', '')}"
        left = deadline - time.monotonic()
        if left <= 5:
            notes.append(f"(e) {label}: not timed (time budget spent)")
            continue
        log(f"(e) {label}...")
        x, y = triton_inputs(case.shape, case.mode, case.dtype, device)
        active: list[str] = []
        times: dict[str, list[float]] = {}
        for name in TRITON_TABLE:
            contender = contenders[name]
            reason = contender.unsupported(case.shape, device)
            if reason is None:
                assert contender.fn is not None
                try:
                    with contender.context():
                        for _ in range(1 if quick else 2):
                            call_once(contender.fn, x, y, case.mode)
                except Exception as exc:
                    reason = failure(name, exc)
            if reason is not None:
                notes.append(f"(e) {label}: {name}: {reason}")
                continue
            active.append(name)
            times[name] = []
        share = 0.6 * left / (len(cases) - i)
        start = time.perf_counter()
        for r in range(2 if quick else 15):
            for name in active[r % max(1, len(active)) :] + active[: r % max(1, len(active))]:
                contender = contenders[name]
                assert contender.fn is not None
                try:
                    with contender.context():
                        times[name].append(time_once(contender.fn, x, y, case.mode, device))
                except Exception as exc:
                    notes.append(f"(e) {label}: {name}: {failure(name, exc)}")
                    active.remove(name)
                    times[name] = []
            if r >= 2 and time.perf_counter() - start > share:
                break
        med = {name: (statistics.median(t) if t else None) for name, t in times.items()}
        triton = med.get("patched triton")
        if case.dtype == torch.float32:
            fp32_times[(case.shape, case.mode)] = triton
        floor = floor_bytes(case) / HBM_BYTES_PER_S
        speedups = " / ".join(
            report.ratio(med.get(n), triton) for n in ("unpatched", "kornia", "pytorch-msssim")
        )
        peaks = "n/a"
        if device.startswith("cuda") and "patched triton" in active and "unpatched" in active:
            got = []
            try:
                for name in ("patched triton", "unpatched"):
                    contender = contenders[name]
                    assert contender.fn is not None
                    with contender.context():
                        got.append(cuda_peak_extra_bytes(contender.fn, x, y, case.mode))
                peaks = (
                    f"{report.mib(got[0])} / {report.mib(got[1])} = {report.ratio(got[0], got[1] or None)}"
                )
            except Exception as exc:
                peaks = failure("peak", exc)[:80]
        row = [shape_text(case.shape), MODE_LABELS[case.mode], str(case.dtype).replace("torch.", "")]
        row += [ms3(med.get(name)) for name in TRITON_TABLE]
        row += [speedups, ms3(floor), report.ratio(floor, triton), peaks, case.floor]
        row.append(_floor_met(case, med, fp32_times.get((case.shape, case.mode))))
        rows.append(row)
        del x, y
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows, notes


TRITON_NOTES = f"""\
The Triton backend (`ssim_patch.backends.triton`, what `auto` picks for 2-D CUDA images) against
unpatched torchmetrics, the patched call with the conv backend forced, kornia and pytorch-msssim:
medians of interleaved rounds after warm-ups, each call bracketed by `torch.cuda.synchronize()`,
11-tap Gaussian, data range 1 (`fwd`: no grad; `fwd+bwd`: `(1 - ssim).backward()` for preds).
`floor ms`: the bytes that must move (fwd: read x and y; fwd+bwd: read them in each pass and write
x's gradient) at {HBM_BYTES_PER_S / 1e12:g} TB/s; `fraction of floor` = floor / Triton time. Peak memory:
`max_memory_allocated()` minus `memory_allocated()` around one call (the issue asks for at most
half of unpatched). The sweep times the kernels alone (`triton.forward` / `triton.backward`, mean
of back-to-back calls) for each launch config, each compiled once by its first call (its time
includes the compile); the fastest forward and backward configs are used for every later table."""
