"""(a) of the GPU check: no host sync. Each API call runs once as a warm-up, then again under
``torch.cuda.set_sync_debug_mode("error")``; patched (the backend as found, and conv forced) beside
unpatched. tests/test_gpu.py makes it pass/fail."""

from __future__ import annotations

import contextlib
import os
import traceback
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from benchmarks import report
from benchmarks.cases import (
    MODE_LABELS,
    MODES,
    Shape,
    shape_text,
)
from benchmarks.gpu_utils import DataRange, backend_for, forced_backend
from benchmarks.timing import failure


@dataclass(frozen=True)
class SyncCall:
    """One API call checked for host syncs: its name, pass, data range label and input shape."""

    api: str
    mode: str
    data_range: str
    shape: Shape
    betas: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # MS-SSIM's scales


def _data_ranges(device: str) -> dict[str, DataRange]:
    return {"None": None, "1.0": 1.0, "(0.0, 1.0)": (0.0, 1.0), "tensor": torch.tensor(1.0, device=device)}


def _sync_calls(quick: bool) -> list[SyncCall]:
    image = (1, 1, 24, 24) if quick else (2, 3, 192, 192)
    volume = (1, 1, 12, 12, 12) if quick else (1, 2, 32, 32, 32)
    # MS-SSIM's 5 scales need more than 160 pixels a side; 3 scales (--quick) more than 40.
    ms_image, betas = ((1, 1, 48, 48), (0.3, 0.3, 0.4)) if quick else (image, SyncCall.betas)
    calls = []
    for label in ("None", "1.0", "(0.0, 1.0)", "tensor"):
        for mode in MODES:
            calls.append(SyncCall("functional", mode, label, image))
            calls.append(SyncCall("functional 3-D", mode, label, volume))
            calls.append(SyncCall("MS-SSIM functional", mode, label, ms_image, betas))
        calls.append(SyncCall("Metric update+compute", "forward", label, image))
    return calls


def _api_call(call: SyncCall, data_range: DataRange, device: str) -> Callable[[Tensor, Tensor], Tensor]:
    """A function of (preds, target) making the call; the Metric object is built here, outside."""
    from torchmetrics.functional.image import (
        multiscale_structural_similarity_index_measure,
        structural_similarity_index_measure,
    )
    from torchmetrics.image import StructuralSimilarityIndexMeasure

    # A tensor data range is not in torchmetrics' annotations, though its code takes one.
    if call.api.startswith("functional"):
        return lambda x, y: structural_similarity_index_measure(x, y, data_range=data_range)  # type: ignore[arg-type, return-value]
    if call.api.startswith("MS-SSIM"):
        return lambda x, y: multiscale_structural_similarity_index_measure(
            x,
            y,
            data_range=data_range,  # type: ignore[arg-type]
            betas=call.betas,
        )
    metric = StructuralSimilarityIndexMeasure(data_range=data_range).to(device)  # type: ignore[arg-type]

    def update_compute(x: Tensor, y: Tensor) -> Tensor:  # states accumulate over the two runs
        metric.update(x, y)
        out = metric.compute()
        assert isinstance(out, Tensor)
        return out

    return update_compute


def _run(fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor, mode: str) -> None:
    if mode == "forward":
        with torch.no_grad():
            fn(x, y)
    else:
        x.grad = None
        (1.0 - fn(x, y)).backward()  # type: ignore[no-untyped-call]


def _where(exc: BaseException) -> str:
    """The innermost ssim_patch or torchmetrics frame of ``exc``'s traceback, as ``package/file:line``."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        for package in ("ssim_patch", "torchmetrics"):
            marker = f"{os.sep}{package}{os.sep}"
            if marker in frame.filename:
                return f"{package}/{frame.filename.split(marker, 1)[1]}:{frame.lineno}"
    return "torch"


@dataclass(frozen=True)
class SyncResult:
    """What one checked call did: ``ok``, ``sync``, ``error`` or ``ran`` (CPU: nothing to check)."""

    kind: str
    where: str = ""  # the innermost ssim_patch or torchmetrics line, else "torch"
    message: str = ""

    def text(self) -> str:
        """The table cell."""
        if self.kind == "sync":
            return f"**sync** at {self.where}"
        if self.kind == "error":
            return f"error at {self.where}: {self.message}"
        return "ok" if self.kind == "ok" else "ran (no check on cpu)"

    def fails_patched(self, unpatched: SyncResult) -> bool:
        """As the patched call's result: a sync outside torchmetrics' own code (in ssim_patch, or in
        a backward, where no Python line is known), or an error the unpatched call does not raise."""
        if self.kind == "sync":
            return not self.where.startswith("torchmetrics/")
        return self.kind == "error" and unpatched.kind != "error"


def check_sync(call: SyncCall, patched: bool, device: str, backend: Optional[str] = None) -> SyncResult:
    """Run ``call`` once as a warm-up, then once under ``set_sync_debug_mode("error")`` (CUDA);
    ``backend``: the one forced for the patched call (None: as found)."""
    import ssim_patch

    gen = torch.Generator().manual_seed(1)
    x = torch.rand(call.shape, generator=gen).to(device)
    y = (x + 0.1 * torch.rand(call.shape, generator=gen).to(device)).clamp(0, 1)
    x.requires_grad_(call.mode == "backward")
    data_range = _data_ranges(device)[call.data_range]
    try:
        with ssim_patch.patched() if patched else contextlib.nullcontext(), forced_backend(backend):
            fn = _api_call(call, data_range, device)
            _run(fn, x, y, call.mode)  # warm-up: lazy initialisation of torch itself is not the call's
            if not device.startswith("cuda"):
                return SyncResult("ran")
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                _run(fn, x, y, call.mode)
            finally:
                torch.cuda.set_sync_debug_mode(0)
            torch.cuda.synchronize()
    except Exception as exc:
        kind = "sync" if "synchroniz" in str(exc).lower() else "error"
        return SyncResult(kind, _where(exc), failure("call", exc).split(": ", 1)[1])
    return SyncResult("ok")


def sync_section(device: str, quick: bool) -> tuple[report.Rows, bool]:
    """The sync table, and whether no patched call failed (see :meth:`SyncResult.fails_patched`)."""
    rows = [["API", "pass", "data_range", "patched (backend)", "patched conv", "unpatched", "holds"]]
    ok = True
    for call in _sync_calls(quick):
        patched = check_sync(call, True, device)
        conv = check_sync(call, True, device, "conv")
        unpatched = check_sync(call, False, device)
        fails = patched.fails_patched(unpatched) or conv.fails_patched(unpatched)
        ok = ok and not fails
        label = f"{call.api} {shape_text(call.shape)}"
        used = backend_for(call.shape, device)
        row = [label, MODE_LABELS[call.mode], call.data_range, f"{patched.text()} ({used})", conv.text()]
        rows.append([*row, unpatched.text(), "**no**" if fails else "yes"])
    return rows, ok


SYNC_NOTES = """\
`patched (backend)`: the patched call as `SSIM_PATCH_BACKEND` is found (`auto`: Triton for 2-D CUDA
images), and the backend it runs on; `patched conv`: the same with the conv backend forced.
Each call runs once as a warm-up, then again under `torch.cuda.set_sync_debug_mode("error")`,
which turns every implicit host-device synchronisation (a device-to-host read, a blocking copy)
into an error. `fwd` runs under `no_grad`; `fwd+bwd` includes `(1 - ssim).backward()`; the Metric
class runs `update` + `compute` (its states carry no gradient). Inputs and the tensor `data_range`
are made before the checked call. A sync is reported at the innermost ssim_patch or torchmetrics
line on its stack ("torch" when there is none, as in a backward, which autograd runs on its own
thread). `holds` is "no" for a patched call that syncs anywhere but in torchmetrics' own code
outside the replaced function (upstream's: the unpatched column shows what torchmetrics does alone),
or that raises where the unpatched call does not."""
