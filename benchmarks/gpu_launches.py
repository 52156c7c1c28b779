"""(d) of the GPU check: the CUDA kernels one call launches (profiler), beside the ops that write
counted on ``device="meta"``."""

from __future__ import annotations

import torch

from benchmarks import report
from benchmarks.cases import (
    MODE_LABELS,
    MODES,
    Case,
    make_inputs,
)
from benchmarks.contenders import (
    make_contenders,
)
from benchmarks.gpu_utils import backend_contenders, reason
from benchmarks.timing import call_once


def launches_section(device: str, quick: bool) -> report.Rows:
    """(d) CUDA kernels one call launches, counted by the profiler, beside the meta count."""
    from torch.profiler import DeviceType, ProfilerActivity, profile

    from benchmarks.meta_counts import count_call

    rows: report.Rows = [
        ["shape", "pass", "contender", "kernels on the GPU", "device ms", "meta: ops that write"]
    ]
    shape = (2, 3, 32, 32) if quick else (16, 3, 512, 512)
    contenders = {**make_contenders(("unpatched", "patched")), **backend_contenders()}
    for mode in MODES:
        for name, contender in contenders.items():
            assert contender.fn is not None
            x, y = make_inputs(Case(device, shape, mode))
            try:
                with contender.context():
                    call_once(contender.fn, x, y, mode)
                    if device.startswith("cuda"):
                        torch.cuda.synchronize()
                    activity = ProfilerActivity.CUDA if device.startswith("cuda") else ProfilerActivity.CPU
                    with profile(activities=[activity]) as prof:
                        call_once(contender.fn, x, y, mode)
                        if device.startswith("cuda"):
                            torch.cuda.synchronize()
            except Exception as exc:  # a forced backend that cannot run here
                rows.append(["x".join(map(str, shape)), MODE_LABELS[mode], name, reason(exc), "-", "-"])
                continue
            kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
            try:
                meta = str(count_call(contender, Case("meta", shape, mode)).writing_ops)
            except Exception:  # Triton runs on CUDA only
                meta = "n/a"
            device_ms = sum(e.device_time for e in kernels) / 1000
            rows.append(
                [
                    "x".join(map(str, shape)),
                    MODE_LABELS[mode],
                    name,
                    str(len(kernels)),
                    f"{device_ms:.3f}",
                    meta,
                ]
            )
    return rows


LAUNCH_NOTES = """\
torchmetrics' `structural_similarity_index_measure(preds, target, data_range=1.0)`, unpatched and
patched, after a warm-up call: the CUDA kernels the profiler records for one call (`fwd` under
`no_grad`, `fwd+bwd` with `(1 - ssim).backward()`) and their summed device time, beside the ops
that write counted on `device="meta"` (`bench_ssim.py --count`). A library may launch more than
one kernel for one op (cuDNN), or none (a fill folded away)."""
