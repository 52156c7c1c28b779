"""Peak extra memory of one call: CPU resident set in fresh subprocesses, CUDA allocator peaks.

CPU: each contender runs in a fresh ``python -m benchmarks.memory`` subprocess with glibc's mmap
threshold fixed at 64 KiB, so every tensor buffer is mapped on allocation and unmapped on free and
the resident set follows the live tensors; the number is the resident-set high-water mark of one
call (after a warm-up call) minus the resident set before it. CUDA: ``max_memory_allocated()``
minus ``memory_allocated()`` around one call.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from benchmarks import ROOT
from benchmarks.cases import Case, make_inputs
from benchmarks.contenders import Contender, SsimFn, make_contenders
from benchmarks.timing import call_once

#: Every large block is mmapped and unmapped on free: the resident set follows the live tensors.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}

#: ``{(contender, case key): bytes, or None where not measured}``.
Peaks = dict[tuple[str, str], Optional[int]]


def _proc_kib(field_name: str) -> int:
    with open("/proc/self/status") as handle:
        match = re.search(rf"^{field_name}:\s+(\d+) kB", handle.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{field_name} not in /proc/self/status")
    return int(match.group(1))


def cpu_peak_extra_bytes(fn: SsimFn, x: Tensor, y: Tensor, mode: str) -> int:
    """Resident-set high-water mark of one call minus the resident set just before it (Linux).

    A warm-up call comes first (lazy initialisation, caches), then the high-water mark is reset by
    writing 5 to /proc/self/clear_refs.
    """
    call_once(fn, x, y, mode)
    x.grad = None
    gc.collect()
    before = _proc_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    call_once(fn, x, y, mode)
    return max(0, _proc_kib("VmHWM") - before) * 1024


def cuda_peak_extra_bytes(fn: SsimFn, x: Tensor, y: Tensor, mode: str) -> int:
    """``max_memory_allocated`` during one call minus ``memory_allocated`` just before it."""
    call_once(fn, x, y, mode)
    x.grad = None
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    call_once(fn, x, y, mode)
    torch.cuda.synchronize()
    return max(0, torch.cuda.max_memory_allocated() - before)


def memory_worker(names: Sequence[str], cases: list[Case], threads: int) -> dict[str, dict[str, Any]]:
    """The CPU peak extra bytes of one call per contender and case, measured in this process.

    ``{contender: {case key: bytes, None (n/a) or an error message}}``.
    """
    torch.set_num_threads(threads)
    contenders = make_contenders(names)
    out: dict[str, dict[str, Any]] = {name: {} for name in names}
    for name, contender in contenders.items():
        for case in cases:
            if contender.unsupported(case.shape, case.device) is not None:
                out[name][case.key] = None
                continue
            assert contender.fn is not None
            x, y = make_inputs(case)
            try:
                with contender.context():
                    out[name][case.key] = cpu_peak_extra_bytes(contender.fn, x, y, case.mode)
            except Exception as exc:
                out[name][case.key] = f"{type(exc).__name__}: {exc}"
            del x, y
            gc.collect()
    return out


def flatten(per_contender: dict[str, dict[str, Any]], log: Callable[[str], None]) -> Peaks:
    """``memory_worker``'s answer as :data:`Peaks`; error messages are logged and become None."""
    found: Peaks = {}
    for name, per_case in per_contender.items():
        for key, value in per_case.items():
            if isinstance(value, str):
                log(f"CPU memory, {name}, {key}: {value}")
                value = None
            found[(name, key)] = value
    return found


def measure_cpu_memory(
    names: Sequence[str], cases: list[Case], threads: int, log: Callable[[str], None]
) -> Peaks:
    """One fresh subprocess per contender, run side by side (memory does not depend on CPU load)."""
    if not os.path.exists("/proc/self/clear_refs"):
        log("CPU memory: needs Linux's /proc/self/clear_refs; skipped.")
        return {}
    payload = json.dumps([[c.device, list(c.shape), c.mode] for c in cases])
    env = {**os.environ, **MEMORY_ENV}
    procs: dict[str, subprocess.Popen[str]] = {}
    for name in names:
        command = [sys.executable, "-m", "benchmarks.memory", name, payload, "--threads", str(threads)]
        procs[name] = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
        )
    found: Peaks = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            log(f"CPU memory worker for {name} failed ({proc.returncode}): {stderr.strip()[-500:]}")
            continue
        found.update(flatten(json.loads(stdout.strip().splitlines()[-1]), log))
    return found


def measure_cuda_memory(contenders: dict[str, Contender], cases: list[Case]) -> Peaks:
    """CUDA peak extra bytes of one call per contender and case (None where it failed)."""
    found: Peaks = {}
    for case in cases:
        x, y = make_inputs(case)
        for name, contender in contenders.items():
            if contender.unsupported(case.shape, case.device) is not None or contender.fn is None:
                continue
            try:
                with contender.context():
                    found[(name, case.key)] = cuda_peak_extra_bytes(contender.fn, x, y, case.mode)
            except Exception:
                found[(name, case.key)] = None
        del x, y
        gc.collect()
        torch.cuda.empty_cache()
    return found


def _worker_main() -> None:
    parser = argparse.ArgumentParser(description="memory worker (run by measure_cpu_memory)")
    parser.add_argument("names", help="contenders, comma-separated")
    parser.add_argument("cases", help="JSON list of [device, shape, mode]")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    cases = [Case(d, tuple(s), m) for d, s, m in json.loads(args.cases)]
    print(json.dumps(memory_worker(args.names.split(","), cases, args.threads)))


if __name__ == "__main__":
    _worker_main()
