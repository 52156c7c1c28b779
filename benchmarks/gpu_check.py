"""One GPU check of the patched SSIM, in about 6 minutes on one GPU (``--budget``, default 360 s).

(a) No host sync: ``torch.cuda.set_sync_debug_mode("error")`` around the patched functional SSIM
    (2-D and 3-D), the ``StructuralSimilarityIndexMeasure`` Metric class (``update`` + ``compute``)
    and MS-SSIM, forward and forward+backward, with ``data_range`` None, a float, a (lo, hi) tuple
    and a CUDA tensor; unpatched torchmetrics alongside, for comparison.
(b) Accuracy in float32 against float64 references (``ssim_patch.ssim`` on float64 inputs on the
    device, and the independent numpy reference ``tests/helpers/reference.py``), with TF32 on and off, and
    the caller's TF32 settings unchanged by the call.
(c) Times of unpatched torchmetrics, patched, kornia, pytorch-msssim, fused-ssim and fussim
    (those importable) at 16x3x512x512, 5x3x1080x1920 and 2x1x96x96x96, fwd and fwd+bwd: warm-ups,
    interleaved rounds bracketed by ``torch.cuda.synchronize()``, medians; rounds capped by time.

(d) The CUDA kernels one call launches (profiler), beside the meta count.
(e) The Triton backend (``ssim_patch.backends.triton``): a sweep of its tile sizes and warps (each
    config compiled once, the fastest kept for the rest of the run), and the issue's table: times
    against unpatched torchmetrics, the conv backend, kornia and pytorch-msssim, the fraction of
    the memory floor reached (bytes that must move / (time x 4.8 TB/s)) and the peak extra memory.

The patched rows of (a), (b), (c) and (d) run with ``SSIM_PATCH_BACKEND`` as found (``auto``: the
Triton kernels for 2-D CUDA images where Triton imports, convolutions otherwise) and again with
each backend forced (``patched triton``, ``patched conv``); a forced backend that cannot take a
call (Triton on 3-D) is a note, not a failure.

Writes a Markdown report to ``--out`` (default ``$OUT/gpu_check.md``, else
``benchmarks/gpu_check.md``). Exit status: 0 when every check of (a) and (b) holds, 3 when one
fails (a contender that fails in (c) is a row in the report, never a failed run). ``--device cpu
--quick`` is a dry run in seconds: tiny shapes, 3-scale MS-SSIM, and no sync check (that needs
CUDA; the calls still run).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib.util
import os
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Optional, Union

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a file: make the ``benchmarks`` package importable
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from benchmarks import machine, report  # noqa: E402
from benchmarks.cases import (  # noqa: E402
    GPU_CHECK_SHAPES,
    MODE_LABELS,
    MODES,
    QUICK_SHAPES,
    Case,
    Shape,
    make_inputs,
    shape_text,
)
from benchmarks.contenders import (  # noqa: E402
    COMPILED,
    GPU_CONTENDERS,
    Contender,
    make_contenders,
    patched_state,
    probe,
    torchmetrics_ssim,
)
from benchmarks.memory import Peaks, cuda_peak_extra_bytes, measure_cuda_memory  # noqa: E402
from benchmarks.timing import Timing, call_once, failure, sync, time_case, time_once  # noqa: E402

DataRange = Union[None, float, tuple[float, float], Tensor]
FAILED = 3  # exit status when a check of (a) or (b) fails


def log(message: str) -> None:
    """Progress goes to stderr."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Backends: the patched engine with one forced (SSIM_PATCH_BACKEND)

#: The backends forced beside the default ("auto") in every patched row.
BACKENDS = ("triton", "conv")
ENV = "SSIM_PATCH_BACKEND"


@contextlib.contextmanager
def forced_backend(name: Optional[str]) -> Iterator[None]:
    """``SSIM_PATCH_BACKEND=name`` inside (None: the environment as found), restored after."""
    if name is None:
        yield
        return
    saved = os.environ.get(ENV)
    os.environ[ENV] = name
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = saved


def backend_contenders() -> dict[str, Contender]:
    """``patched <backend>`` for each of :data:`BACKENDS`: the patched call with that backend forced."""

    def context(name: str) -> Callable[[], contextlib.AbstractContextManager[None]]:
        @contextlib.contextmanager
        def both() -> Iterator[None]:
            with patched_state(), forced_backend(name):
                yield

        return both

    return {
        f"patched {name}": Contender(f"patched {name}", torchmetrics_ssim, context(name)) for name in BACKENDS
    }


def backend_for(
    shape: Shape, device: str, dtype: torch.dtype = torch.float32, name: Optional[str] = None
) -> str:
    """The backend the patched SSIM (11-tap Gaussian) of images ``shape`` runs on, or why none can."""
    from ssim_patch import _filters, backends
    from ssim_patch.backends._protocol import Plan

    nd = len(shape) - 2
    plan = Plan(_filters.Blur((_filters.gaussian_taps(1.5, 11),) * nd, "same"))
    probe_images = torch.empty((1, 1, *[16] * nd), dtype=dtype, device=device)
    try:
        with forced_backend(name):
            return backends.choose(probe_images, plan).name
    except Exception as exc:
        return f"n/a ({_reason(exc)})"


def _reason(exc: BaseException) -> str:
    """The reason in a backend's "cannot compute" error: between its first colon and "Backends"."""
    return str(exc).split(": ", 1)[-1].split(". Backends that can")[0][:160]


# --------------------------------------------------------------------------------------------------
# (a) host syncs


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


# --------------------------------------------------------------------------------------------------
# (b) accuracy against float64, TF32 on and off


def _read(path: str) -> Callable[[], object]:
    """A reader of the attribute ``path`` under ``torch`` (``"backends.cudnn.allow_tf32"``)."""

    def read() -> object:
        value: Any = torch
        for part in path.split("."):
            value = getattr(value, part)
        return value

    return read


#: Every TF32 setting: the legacy flags, the matmul precision and (torch >= 2.9) ``fp32_precision``.
TF32_SETTINGS: dict[str, Callable[[], object]] = {
    "cudnn.allow_tf32": _read("backends.cudnn.allow_tf32"),
    "cuda.matmul.allow_tf32": _read("backends.cuda.matmul.allow_tf32"),
    "float32_matmul_precision": torch.get_float32_matmul_precision,
    "fp32_precision": _read("backends.fp32_precision"),
    "cuda.matmul.fp32_precision": _read("backends.cuda.matmul.fp32_precision"),
    "cudnn.fp32_precision": _read("backends.cudnn.fp32_precision"),
    "cudnn.conv.fp32_precision": _read("backends.cudnn.conv.fp32_precision"),
}


def tf32_state() -> dict[str, str]:
    """Every TF32 setting this torch has, as text (``n/a (...)`` where reading it fails)."""
    state = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, read in TF32_SETTINGS.items():
            try:
                state[name] = repr(read())
            except Exception as exc:
                state[name] = f"n/a ({type(exc).__name__})"
    return state


def set_tf32(on: bool) -> None:
    """TF32 on (``allow_tf32`` flags, matmul precision "high") or off ("highest")."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.cudnn.allow_tf32 = on
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.set_float32_matmul_precision("high" if on else "highest")


#: Writable TF32 settings (object path under torch, attribute), restored in this order.
_WRITABLE = (
    ("backends.cudnn", "allow_tf32"),
    ("backends.cuda.matmul", "allow_tf32"),
    ("backends", "fp32_precision"),
    ("backends.cuda.matmul", "fp32_precision"),
    ("backends.cudnn", "fp32_precision"),
    ("backends.cudnn.conv", "fp32_precision"),
)


@contextlib.contextmanager
def kept_tf32() -> Iterator[None]:
    """Put back every TF32 setting found on entry (the settings this torch has)."""
    saved: list[tuple[object, str, object]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path, attr in _WRITABLE:
            with contextlib.suppress(Exception):
                owner = _read(path)()
                saved.append((owner, attr, getattr(owner, attr)))
    precision = torch.get_float32_matmul_precision()
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.set_float32_matmul_precision(precision)
            for owner, attr, value in saved:
                with contextlib.suppress(Exception):
                    setattr(owner, attr, value)


def _numpy_reference() -> Optional[ModuleType]:
    path = ROOT / "tests" / "reference.py"
    try:
        spec = importlib.util.spec_from_file_location("ssim_numpy_reference", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    except Exception as exc:
        log(f"numpy reference {path} not usable: {exc}")
        return None


def float32_bound(x: Tensor, y: Tensor, data_range: float) -> float:
    """What float32 moments can promise (tests/test_properties.py): the variance is E[x^2] - E[x]^2,
    so its rounding error is ~eps * max(x^2), over a denominator no smaller than (0.03 L)^2."""
    top = max(float(x.abs().max()), float(y.abs().max()))
    return 1e-6 + 8 * torch.finfo(torch.float32).eps * top**2 / (0.03 * data_range) ** 2


#: Float32 gradient against the float64 one: max |difference| / max |float64 gradient|.
GRAD_BOUND = 1e-4
#: With TF32 on, errors may exceed the TF32-off ones by at most this factor, plus TF32_SLACK.
TF32_FACTOR, TF32_SLACK = 2.0, 1e-7
#: The two float64 references (engine on the device, numpy) must agree this closely.
REFERENCE_BOUND = 1e-9


def _torchmetrics_per_image(x: Tensor, y: Tensor, patched: bool) -> tuple[Tensor, Tensor]:
    """Per-image SSIM (data range 1) and the gradient of ``1 - mean`` w.r.t. ``x``."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    import ssim_patch

    x = x.detach().requires_grad_(True)
    with ssim_patch.patched() if patched else contextlib.nullcontext():
        per_image = structural_similarity_index_measure(x, y, data_range=1.0, reduction="none")
    assert isinstance(per_image, Tensor)
    (1.0 - per_image.mean()).backward()  # type: ignore[no-untyped-call]
    assert x.grad is not None
    return per_image.detach(), x.grad


ACCURACY_HEAD = [
    "data",
    "shape",
    "TF32",
    "backend",
    "patched err",
    "bound",
    "unpatched err",
    "patched grad err",
]
ACCURACY_HEAD += ["unpatched grad err", "refs agree", "TF32 settings kept", "holds"]


def _references(
    x32: Tensor, y32: Tensor, device: str, numpy_ref: Optional[ModuleType]
) -> tuple[Tensor, Tensor, str, bool]:
    """Float64 per-image SSIM (numpy's where available), the float64 gradient of ``1 - mean`` (the
    engine on the device), the two references' gap as text, and whether it is within bounds."""
    import ssim_patch

    xr, yr = x32.double().to(device).requires_grad_(True), y32.double().to(device)
    ref = ssim_patch.ssim(xr, yr, data_range=1.0, reduction="none")
    assert isinstance(ref, Tensor)
    (1.0 - ref.mean()).backward()  # type: ignore[no-untyped-call]
    assert xr.grad is not None
    values = ref.detach().cpu()
    if numpy_ref is None:
        return values, xr.grad, "n/a (no numpy reference)", True
    np_values = torch.from_numpy(
        numpy_ref.ssim_reference(x32.double().numpy(), y32.double().numpy(), data_range=1.0).per_image
    )
    gap = float((values - np_values).abs().max())
    return np_values, xr.grad, f"{gap:.1e}", gap <= REFERENCE_BOUND


def _errors(
    x: Tensor, y: Tensor, patched: bool, ref: Tensor, ref_grad: Tensor
) -> tuple[str, str, float, float]:
    """Max value error and relative gradient error of one torchmetrics call, as text and numbers."""
    try:
        values, grad = _torchmetrics_per_image(x, y, patched)
    except Exception as exc:
        text = failure("call", exc).split(": ", 1)[1][:80]
        return f"error: {text}", "n/a", float("inf"), float("inf")
    err = float((values.double().cpu() - ref).abs().max())
    g_err = float((grad.double() - ref_grad).abs().max()) / (float(ref_grad.abs().max()) or 1.0)
    return f"{err:.1e}", f"{g_err:.1e}", err, g_err


def accuracy_section(device: str, quick: bool) -> tuple[report.Rows, bool]:
    """The accuracy table, and whether every patched row holds its bounds with TF32 on and off."""
    numpy_ref = _numpy_reference()
    shapes: tuple[Shape, ...] = (
        ((1, 2, 24, 24), (1, 1, 12, 12, 12)) if quick else ((4, 3, 256, 256), (2, 1, 48, 48, 48))
    )
    data = {"U(0,1) pair": (0.0, 1.0), "0.9 + U(0,0.03)": (0.9, 0.03)}
    rows = [ACCURACY_HEAD]
    ok = True
    for label, (offset, amplitude) in data.items():
        for shape in shapes:
            gen = torch.Generator().manual_seed(2)
            u = torch.rand(shape, generator=gen, dtype=torch.float64)
            x32 = (offset + amplitude * u).float()
            y32 = (
                offset + amplitude * (0.7 * u + 0.3 * torch.rand(shape, generator=gen, dtype=torch.float64))
            ).float()
            try:
                ref, ref_grad, gap, refs_ok = _references(x32, y32, device, numpy_ref)
            except Exception as exc:
                ok = False
                rows.append([label, shape_text(shape), "-", f"reference failed: {failure('ssim', exc)}"])
                rows[-1] += ["n/a"] * (len(ACCURACY_HEAD) - len(rows[-1]))
                continue
            bound = float32_bound(x32, y32, 1.0)
            xd, yd = x32.to(device), y32.to(device)
            for backend in (None, *BACKENDS):
                used = backend_for(shape, device, name=backend)
                if used.startswith("n/a"):  # a forced backend that cannot take these images
                    rows.append(
                        [
                            label,
                            shape_text(shape),
                            "-",
                            f"{backend}: {used}",
                            *["-"] * (len(ACCURACY_HEAD) - 4),
                        ]
                    )
                    continue
                off = (0.0, 0.0)
                for tf32 in (False, True):
                    with kept_tf32(), forced_backend(backend):
                        set_tf32(tf32)
                        before = tf32_state()
                        err_text, g_text, err, g_err = _errors(xd, yd, True, ref, ref_grad)
                        kept = tf32_state() == before
                        u_err_text, u_g_text, _, _ = _errors(xd, yd, False, ref, ref_grad)
                    holds = err <= bound and g_err <= GRAD_BOUND and kept and refs_ok
                    if tf32:  # no accuracy lost to TF32
                        holds = holds and err <= TF32_FACTOR * off[0] + TF32_SLACK
                        holds = holds and g_err <= TF32_FACTOR * off[1] + TF32_SLACK
                    off = (err, g_err)
                    ok = ok and holds
                    row = [label, shape_text(shape), "on" if tf32 else "off"]
                    row += [
                        used if backend is None else f"{used} (forced)",
                        err_text,
                        f"{bound:.1e}",
                        u_err_text,
                    ]
                    row += [g_text, u_g_text, gap, "yes" if kept else "**no**", "yes" if holds else "**no**"]
                    rows.append(row)
    return rows, ok


# --------------------------------------------------------------------------------------------------
# (c) timings


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


# --------------------------------------------------------------------------------------------------
# (e) the Triton backend: a sweep of its launch parameters, and the table

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

#: The sweep: (block_h, block_w, num_warps); block_w >= 32 num_warps keeps each column's window
#: slots in one thread (the slot reductions stay in registers).
SWEEP = tuple((bh, bw, w) for bh in (32, 64, 128) for bw, w in ((128, 4), (256, 8)))
QUICK_SWEEP = ((16, 32, 1), (8, 64, 2))


def floor_bytes(case: TritonCase) -> int:
    """Bytes that must move: fwd reads x and y; fwd+bwd reads them in each pass and writes x's
    gradient (in the images' dtype)."""
    itemsize = torch.empty((), dtype=case.dtype).element_size()
    numel = 1
    for n in case.shape:
        numel *= n
    return numel * itemsize * (2 if case.mode == "forward" else 5)


def _triton_inputs(shape: Shape, mode: str, dtype: torch.dtype, device: str) -> tuple[Tensor, Tensor]:
    x, y = make_inputs(Case(device, shape, "forward"))
    x, y = x.to(dtype), y.to(dtype)
    if mode == "backward":
        x.requires_grad_(True)
    return x, y


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
    x, y = _triton_inputs(shape, "forward", torch.float32, device)
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


def ms3(seconds: Optional[float]) -> str:
    """Seconds as milliseconds with 3 decimals, ``n/a`` for None."""
    return "n/a" if seconds is None else f"{seconds * 1e3:.3f}"


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
        x, y = _triton_inputs(case.shape, case.mode, case.dtype, device)
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


# --------------------------------------------------------------------------------------------------
# Command line


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
                rows.append(["x".join(map(str, shape)), MODE_LABELS[mode], name, _reason(exc), "-", "-"])
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


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        prog="python benchmarks/gpu_check.py",
        description="Host syncs, TF32 accuracy and timings of the patched SSIM on one GPU.",
    )
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a dry run")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and 1-2 rounds (a dry run)")
    parser.add_argument(
        "--budget",
        type=float,
        default=360.0,
        help="seconds for the whole run (default 360); timing rounds stop in time",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--skip-timing", action="store_true", help="checks (a) and (b) only")
    parser.add_argument("--out", type=Path, default=None, help="Markdown report (default $OUT/gpu_check.md)")
    return parser


def default_out() -> Path:
    """``$OUT/gpu_check.md`` when OUT is set, else ``benchmarks/gpu_check.md``."""
    out = os.environ.get("OUT")
    return Path(out) / "gpu_check.md" if out else ROOT / "benchmarks" / "gpu_check.md"


def main(argv: Optional[list[str]] = None) -> int:
    """Run the three parts, write the report; returns the exit status."""
    start = time.monotonic()
    args = build_parser().parse_args(argv)
    deadline = start + args.budget
    device = args.device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit(
                f"--device {device}: torch.cuda.is_available() is False (use --device cpu for a dry run)"
            )
        if torch.device(device).index is not None:
            torch.cuda.set_device(torch.device(device))
    out = args.out or default_out()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    tf32_at_start = tf32_state()
    log("(a) host syncs...")
    sync_rows, sync_ok = sync_section(device, args.quick)
    log("(b) accuracy, TF32 on and off...")
    accuracy_rows, accuracy_ok = accuracy_section(device, args.quick)
    tf32_at_end_of_checks = tf32_state()
    log("(d) kernel launches...")
    launch_rows = launches_section(device, args.quick)
    sweep_rows: report.Rows = []
    triton_rows: report.Rows = []
    triton_notes: list[str] = []
    if not args.skip_timing:
        left = deadline - 10 - time.monotonic()
        log("(e) Triton sweep...")
        try:
            sweep_rows, triton_notes = sweep_section(device, args.quick, time.monotonic() + 0.35 * left)
        except Exception as exc:  # a report row, never a failed run
            triton_notes = [f"(e) sweep: {failure('sweep', exc)}"]
        left = deadline - 10 - time.monotonic()
        log("(e) Triton table...")
        try:
            triton_rows, more = triton_section(device, args.quick, time.monotonic() + 0.4 * left)
        except Exception as exc:
            more = [f"(e) table: {failure('table', exc)}"]
        triton_notes += more
    if args.skip_timing:
        cases: list[Case] = []
        timings: dict[str, dict[str, Timing]] = {}
        memory: Peaks = {}
        notes = ["timings skipped (--skip-timing)"]
    else:
        log("(c) timings...")
        cases, timings, memory, notes = timing_section(device, args.quick, deadline - 10)

    header = [
        "# GPU check: host syncs, TF32 accuracy and timings of the patched SSIM",
        "",
        f"- Date: {machine.utc_now()}; command: `{machine.command_line('gpu_check.py')}`; run time "
        f"{time.monotonic() - start:.0f} s",
        f"- Device: {device}"
        + (
            f" ({torch.cuda.get_device_name()}, CUDA {torch.version.cuda})"
            if device.startswith("cuda")
            else ""
        ),
        *machine.machine_lines(),
        f"- fused-ssim {machine.package_version('fused-ssim')}, fussim {machine.package_version('fussim')}",
        "- TF32 settings at start: " + ", ".join(f"`{k}` = {v}" for k, v in tf32_at_start.items()),
        f"- TF32 settings restored after (b): {'yes' if tf32_at_end_of_checks == tf32_at_start else '**no**'}",
    ]
    if args.quick:
        header.append("- --quick: tiny shapes, a dry run; the numbers mean nothing")
    names = list(TIMED)
    text = [*header, "", "## (a) Host syncs", "", SYNC_NOTES, "", report.markdown(sync_rows), ""]
    text += ["## (b) Accuracy in float32 against float64, TF32 on and off", "", ACCURACY_NOTES, ""]
    text += [report.markdown(accuracy_rows), ""]
    if cases:
        text += ["## (c) Time per call (median, ms) and ratios", "", TIMING_NOTES, ""]
        text += [report.markdown(report.speed_table(cases, timings, names)), ""]
        mem = report.memory_table(cases, memory, names)
        if len(mem) > 1:
            text += ["### Peak extra memory of one call (MiB)", "", report.markdown(mem), ""]
        text += ["### Spread and values", "", report.markdown(report.detail_table(cases, timings, names)), ""]
    text += ["## (d) Kernel launches of one call", "", LAUNCH_NOTES, "", report.markdown(launch_rows), ""]
    if triton_rows or sweep_rows or triton_notes:
        text += ["## (e) The Triton backend", "", TRITON_NOTES, ""]
        if len(triton_rows) > 1:
            text += [report.markdown(triton_rows), ""]
        if len(sweep_rows) > 1:
            text += [
                "### Launch parameters (tile rows x columns, warps)",
                "",
                report.markdown(sweep_rows),
                "",
            ]
        notes = [*triton_notes, *notes]
    if notes:
        text += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    verdict = f"(a) {'holds' if sync_ok else 'FAILS'}, (b) {'holds' if accuracy_ok else 'FAILS'}"
    text += [f"Result: {verdict}.", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(text))
    print(report.plain(sync_rows))
    print()
    print(report.plain(accuracy_rows))
    print()
    print(report.plain(launch_rows))
    for rows in (sweep_rows, triton_rows):
        if len(rows) > 1:
            print()
            print(report.plain(rows))
    if cases:
        print()
        print(report.plain(report.speed_table(cases, timings, names)))
    print(f"\n{verdict}; wrote {out} in {time.monotonic() - start:.0f} s")
    return 0 if sync_ok and accuracy_ok else FAILED


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

LAUNCH_NOTES = """\
torchmetrics' `structural_similarity_index_measure(preds, target, data_range=1.0)`, unpatched and
patched, after a warm-up call: the CUDA kernels the profiler records for one call (`fwd` under
`no_grad`, `fwd+bwd` with `(1 - ssim).backward()`) and their summed device time, beside the ops
that write counted on `device="meta"` (`bench_ssim.py --count`). A library may launch more than
one kernel for one op (cuDNN), or none (a fill folded away)."""

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

ACCURACY_NOTES = f"""\
Float32 inputs, `data_range=1.0`, per-image SSIM (`reduction="none"`) of torchmetrics'
`structural_similarity_index_measure`, patched and unpatched; `backend`: what the patched call ran
on (`auto`'s pick, then each backend forced; one that cannot take the images is a row of its
own, not a failure). `err`: max absolute error against
the numpy float64 reference (`tests/helpers/reference.py`) of the float32-rounded inputs; `bound`: what
float32 moments can promise (`1e-6 + 8 eps max|x|^2 / (0.03 L)^2`, as in tests/test_properties.py).
`grad err`: max |float32 gradient of `1 - mean(ssim)` - float64 gradient| / max |float64 gradient|
(float64: `ssim_patch.ssim` on the device; bound {GRAD_BOUND:g}). `refs agree`: the two float64
references' max difference (bound {REFERENCE_BOUND:g}). TF32 on: `torch.backends.cudnn.allow_tf32 =
True`, `torch.backends.cuda.matmul.allow_tf32 = True`, `torch.set_float32_matmul_precision("high")`;
off: False, False, "highest". `TF32 settings kept`: every TF32 setting read back after the patched
call equals what it was before. `holds`: patched err <= bound, patched grad err <= {GRAD_BOUND:g}, settings
kept, references agree, and with TF32 on both errors at most {TF32_FACTOR:g} x the TF32-off ones +
{TF32_SLACK:g} (no accuracy lost to TF32). Unpatched numbers are for comparison only."""

TIMING_NOTES = """\
Median ms of one call (warm-ups first, then interleaved rounds in rotating order, each call
bracketed by `torch.cuda.synchronize()`; rounds stop when the case's share of the time budget is
spent, see the rounds column). `fwd`: under `no_grad`; `fwd+bwd`: `preds.requires_grad_()` and
`(1 - ssim).backward()`. Float32, 11-tap Gaussian window (sigma 1.5), data range 1; the caller's TF32
settings as found (torch's defaults unless changed). `unpatched/patched` is the speed-up of the patch;
`patched/<other>` are time ratios (< 1: patched is faster). pytorch-msssim keeps only whole windows
("valid"); fused-ssim and fussim zero-pad ("same") and support 2-D only. Peak memory:
`max_memory_allocated()` minus `memory_allocated()` around one call."""


if __name__ == "__main__":
    sys.exit(main())
