"""Time torchmetrics' SSIM patched vs unpatched, side by side with kornia and pytorch-msssim.

Run ``python benchmarks/bench_ssim.py --help`` for the options; ``benchmarks/README.md`` explains
the method. Every contender computes the mean SSIM of a float32 batch with an 11-tap Gaussian
window (sigma 1.5) and a data range of 1.0:

* ``unpatched``: ``torchmetrics.functional.image.structural_similarity_index_measure`` as released;
* ``patched``: the same call inside ``with ssim_patch.patched():`` (the corrected engine);
* ``kornia``: ``kornia.metrics.ssim(x, y, 11).mean()`` (``ssim3d`` for 3-D);
* ``pytorch-msssim``: ``pytorch_msssim.ssim(x, y, data_range=1.0)`` ("valid" windows only).

Timings are medians over interleaved rounds: each round times every contender once, in an order
that rotates from round to round, so a slow spell of the machine is shared by all of them. The
ratios come from the medians of the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional

import torch
from torch import Tensor

Shape = tuple[int, ...]
SsimFn = Callable[[Tensor, Tensor], Tensor]

CPU_SHAPES: tuple[Shape, ...] = ((8, 3, 256, 256), (1, 1, 1024, 1024), (32, 1, 64, 64), (2, 1, 64, 64, 64))
CUDA_SHAPES: tuple[Shape, ...] = ((16, 3, 512, 512), *CPU_SHAPES)
QUICK_SHAPES: tuple[Shape, ...] = ((2, 3, 32, 32), (2, 1, 16, 16, 16))
MODES = ("forward", "backward")
MODE_LABELS = {"forward": "fwd", "backward": "fwd+bwd"}
CONTENDERS = ("unpatched", "patched", "kornia", "pytorch-msssim")
# The glibc mmap threshold is fixed for the memory workers so that every large block is mmapped and
# unmapped on free: the resident set then follows the live tensors and its high-water mark is the peak.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


# --------------------------------------------------------------------------------------------------
# Contenders


@dataclass
class Contender:
    """One SSIM implementation: how to call it, and under which patch state."""

    name: str
    fn: Optional[SsimFn]
    context: Callable[[], ContextManager[object]]
    missing: Optional[str] = None  # why it cannot run at all (e.g. not importable)
    supports_3d: bool = True

    def unsupported(self, shape: Shape) -> Optional[str]:
        """Why this contender cannot run ``shape``, or None."""
        if self.missing is not None:
            return self.missing
        if len(shape) == 5 and not self.supports_3d:
            return f"{self.name} has no 3-D SSIM"
        return None


@contextlib.contextmanager
def _unpatched_state() -> Iterator[None]:
    import ssim_patch

    if ssim_patch.is_applied():
        raise RuntimeError("ssim_patch is applied while timing the unpatched torchmetrics call.")
    yield


@contextlib.contextmanager
def _patched_state() -> Iterator[None]:
    import ssim_patch

    with ssim_patch.patched():
        if not ssim_patch.is_applied():
            raise RuntimeError("ssim_patch.patched() did not apply the patch.")
        yield


def _torchmetrics_ssim(x: Tensor, y: Tensor) -> Tensor:
    # torchmetrics.functional.structural_similarity_index_measure is a deprecated re-export in 1.x
    # (it warns on every call); the image module holds the function itself.
    from torchmetrics.functional.image import structural_similarity_index_measure

    out = structural_similarity_index_measure(x, y, data_range=1.0)
    assert isinstance(out, Tensor)
    return out


def _make_kornia() -> Contender:
    try:
        import kornia.metrics as km
    except Exception as exc:  # ImportError, or a broken install
        return Contender("kornia", None, contextlib.nullcontext, missing=f"kornia not importable ({exc})")

    has_3d = hasattr(km, "ssim3d")

    def run(x: Tensor, y: Tensor) -> Tensor:
        if x.ndim == 5:
            return km.ssim3d(x, y, 11, max_val=1.0).mean()
        return km.ssim(x, y, 11, max_val=1.0).mean()

    return Contender("kornia", run, contextlib.nullcontext, supports_3d=has_3d)


def _make_pytorch_msssim() -> Contender:
    try:
        import pytorch_msssim
    except Exception as exc:
        return Contender(
            "pytorch-msssim", None, contextlib.nullcontext, missing=f"pytorch-msssim not importable ({exc})"
        )

    def run(x: Tensor, y: Tensor) -> Tensor:
        out = pytorch_msssim.ssim(x, y, data_range=1.0)
        assert isinstance(out, Tensor)
        return out

    return Contender("pytorch-msssim", run, contextlib.nullcontext)


def make_contenders(names: Sequence[str] = CONTENDERS) -> dict[str, Contender]:
    """The contenders by name; those that cannot be imported carry a ``missing`` note."""
    import torchmetrics.functional.image  # noqa: F401 (imported first, so patched() swaps at once)

    import ssim_patch

    ssim_patch.revert()  # start from torchmetrics as released, whatever the environment did
    makers: dict[str, Callable[[], Contender]] = {
        "unpatched": lambda: Contender("unpatched", _torchmetrics_ssim, _unpatched_state),
        "patched": lambda: Contender("patched", _torchmetrics_ssim, _patched_state),
        "kornia": _make_kornia,
        "pytorch-msssim": _make_pytorch_msssim,
    }
    return {name: makers[name]() for name in names}


# --------------------------------------------------------------------------------------------------
# Cases and one timed call


@dataclass(frozen=True)
class Case:
    device: str
    shape: Shape
    mode: str  # "forward" (no grad) or "backward" (forward + (1 - ssim).backward())

    @property
    def key(self) -> str:
        return f"{self.device}|{shape_text(self.shape)}|{self.mode}"


def shape_text(shape: Shape) -> str:
    return "x".join(str(n) for n in shape)


def parse_shape(text: str) -> Shape:
    """``"8x3x256x256"`` -> ``(8, 3, 256, 256)``; 4-D (2-D images) or 5-D (3-D volumes)."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: write it like 8x3x256x256") from None
    if len(shape) not in (4, 5) or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: need N x C x H x W or N x C x D x H x W")
    return shape


def make_inputs(case: Case) -> tuple[Tensor, Tensor]:
    """Uniform noise and a noisy copy of it, float32, on the case's device (fixed seed)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(case.shape, generator=gen, dtype=torch.float32)
    y = (x + 0.1 * torch.randn(case.shape, generator=gen, dtype=torch.float32)).clamp_(0.0, 1.0)
    x, y = x.to(case.device), y.to(case.device)
    if case.mode == "backward":
        x.requires_grad_(True)
    return x, y


def _sync(device: str) -> None:
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
    """Wall-clock seconds of one call, synchronised on CUDA."""
    if mode == "backward":
        x.grad = None  # outside the timed region
    _sync(device)
    start = time.perf_counter()
    call_once(fn, x, y, mode)
    _sync(device)
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------------------
# Timing


@dataclass
class Timing:
    times: list[float] = field(default_factory=list)
    value: Optional[float] = None
    skipped: Optional[str] = None

    @property
    def median(self) -> Optional[float]:
        return statistics.median(self.times) if self.times else None

    def quartiles(self) -> Optional[tuple[float, float]]:
        if len(self.times) < 2:
            return None
        q = statistics.quantiles(self.times, n=4, method="inclusive")
        return q[0], q[2]


MIN_ROUNDS = 3


def time_case(
    case: Case,
    contenders: dict[str, Contender],
    rounds: int,
    warmup: int,
    log: Callable[[str], None],
    max_seconds: Optional[float] = None,
) -> dict[str, Timing]:
    """Warm every contender up, then ``rounds`` interleaved rounds in rotating order.

    With ``max_seconds``, rounds stop once the case has run that long (after at least
    ``MIN_ROUNDS``), so one very slow contender cannot hold the run for half an hour.
    """
    x, y = make_inputs(case)
    results = {name: Timing() for name in contenders}
    active = []
    for name, contender in contenders.items():
        reason = contender.unsupported(case.shape)
        if reason is not None:
            results[name].skipped = reason
            continue
        assert contender.fn is not None
        try:
            with contender.context():
                for _ in range(max(warmup, 1)):
                    value = call_once(contender.fn, x, y, case.mode)
        except Exception as exc:  # an implementation that rejects this input is n/a, not a crash
            results[name].skipped = f"{name} failed: {type(exc).__name__}: {exc}"
            log(f"  {name}: {results[name].skipped}")
            continue
        results[name].value = float(value)
        active.append(name)
    _check_patched_value(case, x, y, results)

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
                with contender.context():
                    results[name].times.append(time_once(contender.fn, x, y, case.mode, case.device))
            elapsed = time.perf_counter() - start
            if max_seconds is not None and r + 1 >= MIN_ROUNDS and r + 1 < rounds and elapsed > max_seconds:
                log(f"  stopped after {r + 1} rounds ({elapsed:.0f} s > --max-seconds {max_seconds:g})")
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return results


def _check_patched_value(case: Case, x: Tensor, y: Tensor, results: dict[str, Timing]) -> None:
    """The patched torchmetrics call must give what ``ssim_patch.ssim`` gives (the patch is live)."""
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


# --------------------------------------------------------------------------------------------------
# Peak extra memory of one call


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
    """Run in a subprocess: the peak extra bytes of one call per contender and case.

    ``{contender: {case key: bytes, None (n/a) or an error message}}``.
    """
    torch.set_num_threads(threads)
    contenders = make_contenders(names)
    out: dict[str, dict[str, Any]] = {name: {} for name in names}
    for name, contender in contenders.items():
        for case in cases:
            if contender.unsupported(case.shape) is not None:
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


def measure_cpu_memory(
    names: Sequence[str], cases: list[Case], threads: int, log: Callable[[str], None]
) -> dict[tuple[str, str], Optional[int]]:
    """One fresh subprocess per contender, run side by side (memory does not depend on CPU load)."""
    if not os.path.exists("/proc/self/clear_refs"):
        log("CPU memory: needs Linux's /proc/self/clear_refs; skipped.")
        return {}
    payload = json.dumps([[c.device, list(c.shape), c.mode] for c in cases])
    env = {**os.environ, **MEMORY_ENV}
    procs: dict[str, subprocess.Popen[str]] = {}
    for name in names:
        command = [sys.executable, __file__, "--memory-worker", name, "--memory-cases", payload]
        command += ["--threads", str(threads)]
        procs[name] = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
    found: dict[tuple[str, str], Optional[int]] = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            log(f"CPU memory worker for {name} failed ({proc.returncode}): {stderr.strip()[-500:]}")
            continue
        found.update(_flatten(json.loads(stdout.strip().splitlines()[-1]), log))
    return found


def _flatten(
    per_contender: dict[str, dict[str, Any]], log: Callable[[str], None]
) -> dict[tuple[str, str], Optional[int]]:
    found: dict[tuple[str, str], Optional[int]] = {}
    for name, per_case in per_contender.items():
        for key, value in per_case.items():
            if isinstance(value, str):
                log(f"CPU memory, {name}, {key}: {value}")
                value = None
            found[(name, key)] = value
    return found


def measure_cuda_memory(
    contenders: dict[str, Contender], cases: list[Case]
) -> dict[tuple[str, str], Optional[int]]:
    found: dict[tuple[str, str], Optional[int]] = {}
    for case in cases:
        x, y = make_inputs(case)
        for name, contender in contenders.items():
            if contender.unsupported(case.shape) is not None or contender.fn is None:
                continue
            try:
                with contender.context():
                    found[(name, case.key)] = cuda_peak_extra_bytes(contender.fn, x, y, case.mode)
            except Exception:
                found[(name, case.key)] = None
        del x, y
        torch.cuda.empty_cache()
    return found


# --------------------------------------------------------------------------------------------------
# Report


def _ms(seconds: Optional[float]) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.2f}"


def _ratio(num: Optional[float], den: Optional[float]) -> str:
    return "n/a" if num is None or den is None or den == 0 else f"{num / den:.2f}"


def _mib(n: Optional[int]) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f}"


def speed_table(cases: list[Case], timings: dict[str, dict[str, Timing]]) -> list[list[str]]:
    head = ["device", "shape", "mode"]
    head += [f"{name} ms" for name in CONTENDERS]
    head += ["unpatched/patched", "patched/kornia", "patched/pytorch-msssim"]
    rows = [head]
    for case in cases:
        med = {name: t.median for name, t in timings[case.key].items()}
        row = [case.device, shape_text(case.shape), MODE_LABELS[case.mode]]
        row += [_ms(med.get(name)) for name in CONTENDERS]
        row += [
            _ratio(med.get("unpatched"), med.get("patched")),
            _ratio(med.get("patched"), med.get("kornia")),
            _ratio(med.get("patched"), med.get("pytorch-msssim")),
        ]
        rows.append(row)
    return rows


def memory_table(cases: list[Case], memory: dict[tuple[str, str], Optional[int]]) -> list[list[str]]:
    head = ["device", "shape", "mode", *[f"{name} MiB" for name in CONTENDERS], "patched/unpatched"]
    rows = [head]
    for case in cases:
        got = {name: memory.get((name, case.key)) for name in CONTENDERS}
        if all(v is None for v in got.values()):
            continue
        unpatched, patched = got["unpatched"], got["patched"]
        row = [case.device, shape_text(case.shape), MODE_LABELS[case.mode]]
        row += [_mib(got[name]) for name in CONTENDERS]
        row.append(_ratio(None if patched is None else float(patched), unpatched or None))
        rows.append(row)
    return rows


def detail_table(cases: list[Case], timings: dict[str, dict[str, Timing]]) -> list[list[str]]:
    head = ["device", "shape", "mode", "contender", "median ms", "p25-p75 ms", "min ms", "rounds"]
    rows = [[*head, "SSIM value"]]
    for case in cases:
        for name in CONTENDERS:
            t = timings[case.key].get(name)
            if t is None:
                continue
            q = t.quartiles()
            spread = "n/a" if q is None else f"{q[0] * 1e3:.2f}-{q[1] * 1e3:.2f}"
            value = "n/a" if t.value is None else f"{t.value:.6f}"
            mode = MODE_LABELS[case.mode]
            rows.append(
                [
                    case.device,
                    shape_text(case.shape),
                    mode,
                    name,
                    _ms(t.median),
                    spread,
                    _ms(min(t.times) if t.times else None),
                    str(len(t.times)),
                    value,
                ]
            )
    return rows


def plain(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append(
            "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(module: str) -> str:
    try:
        import importlib.metadata

        return importlib.metadata.version(module)
    except Exception:
        return "not installed"


def _git_state() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head} (src/ {'has uncommitted changes' if dirty else 'clean'})"


def machine_lines(args: argparse.Namespace, devices: list[str], load: tuple[str, str]) -> list[str]:
    cap = ""
    if args.max_seconds is not None:
        cap = f"; fewer where a case ran past --max-seconds {args.max_seconds:g}, see the rounds column"
    lines = [
        f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Command: `python benchmarks/bench_ssim.py {' '.join(sys.argv[1:])}`".replace("  ", " "),
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; torch threads: {torch.get_num_threads()}",
        f"- Load average (1 min) before/after: {load[0]} / {load[1]}",
        f"- OS: {platform.platform()}; Python {platform.python_version()}",
        f"- torch {torch.__version__}, torchmetrics {_version('torchmetrics')}, kornia {_version('kornia')}, "
        f"pytorch-msssim {_version('pytorch-msssim')}, ssim-patch {_version('ssim-patch')}",
        f"- ssim-patch source: git {_git_state()}",
        f"- Rounds: {args.rounds} interleaved (rotating order{cap}), warm-up calls: {args.warmup}; float32",
    ]
    if args.quick:
        lines.append(
            "- --quick: tiny shapes, CPU memory measured in the benchmark's own process; not a result"
        )
    if any(d.startswith("cuda") for d in devices):
        lines.append(f"- GPU: {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})")
    return lines


METHOD_NOTES = """\
Times are medians in milliseconds of one call: `fwd` is the metric under `torch.no_grad()`, `fwd+bwd`
is SSIM as a loss (`preds` requires grad, `(1 - ssim).backward()`). On CUDA each call is bracketed by
`torch.cuda.synchronize()`. `unpatched/patched` is the speed-up of the patch (higher is better);
`patched/kornia` and `patched/pytorch-msssim` are time ratios (lower is better, < 1 means the patched
call is faster). All contenders use an 11-tap Gaussian window, sigma 1.5, data range 1.0; kornia and
the patch reflect-pad ("same"), pytorch-msssim keeps only whole windows ("valid"), so its values
differ a little and it does less work at the border.

Peak extra memory is what one call needs on top of its inputs. CPU: each contender runs in a fresh
subprocess with glibc's mmap threshold fixed at 64 KiB (`MALLOC_MMAP_THRESHOLD_=65536`), so every
tensor buffer is mapped on allocation and unmapped on free and the resident set follows the live
tensors; after a warm-up call the resident-set high-water mark is reset (`/proc/self/clear_refs`)
and the number is `VmHWM` after one call minus `VmRSS` before it (4 KiB pages; includes the
returned gradient for `fwd+bwd`). Blocks under 64 KiB come from the malloc heap, which the warm-up
call has already grown, so tiny shapes read close to 0: the numbers mean something from about 1 MiB.
CUDA: `torch.cuda.max_memory_allocated()` minus `memory_allocated()` around one call after
`reset_peak_memory_stats()`."""


def write_plot(path: Path, cases: list[Case], timings: dict[str, dict[str, Timing]]) -> None:
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(
            "--plot needs matplotlib: pip install matplotlib (or pip install 'ssim-patch[plot]')"
        ) from None
    series = {"torchmetrics unpatched": "unpatched", "kornia": "kornia", "pytorch-msssim": "pytorch-msssim"}
    labels = [f"{c.device}\n{shape_text(c.shape)}\n{MODE_LABELS[c.mode]}" for c in cases]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(cases)), 4.5))
    for i, (label, name) in enumerate(series.items()):
        heights = []
        for case in cases:
            other = timings[case.key][name].median
            mine = timings[case.key]["patched"].median
            heights.append(other / mine if other and mine else float("nan"))  # nan: no bar
        ax.bar(
            [k + (i - (len(series) - 1) / 2) * width for k in range(len(cases))], heights, width, label=label
        )
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2.0, 5.0)))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("time of other / time of patched\n(> 1: patched is faster)")
    ax.set_title("Speed-up of torchmetrics SSIM with ssim_patch")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench_ssim.py",
        description=(
            "Time torchmetrics' structural_similarity_index_measure unpatched and patched by ssim_patch, "
            "and kornia / pytorch-msssim when importable, forward (no grad) and forward+backward, on CPU "
            "and CUDA. Prints the medians and ratios and can write them as Markdown and a bar chart."
        ),
        epilog=(
            f"Default shapes: CPU {', '.join(map(shape_text, CPU_SHAPES))}; CUDA also 16x3x512x512. "
            "Example: python benchmarks/bench_ssim.py --threads 2 --out benchmarks/results.md"
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=(
            "tiny shapes, 2 rounds, 1 warm-up, memory of the torchmetrics calls only and in this "
            "process: seconds, to keep the script working in CI (the numbers mean nothing)"
        ),
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda", "all"),
        default="all",
        help="where to run; 'all' (default) is the CPU plus CUDA when torch.cuda.is_available()",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="torch.set_num_threads for the CPU timings (default 2)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="interleaved timing rounds (default 15; --quick 2)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="warm-up calls per contender (default 2; --quick 1)"
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=120.0,
        help=(
            f"stop a case's rounds once it has run this long, after at least {MIN_ROUNDS} "
            "(default 120; 0 for no limit); the Markdown gives each case's rounds"
        ),
    )
    parser.add_argument(
        "--shape",
        type=parse_shape,
        action="append",
        metavar="NxCxHxW",
        help="time this shape instead of the defaults (repeatable; 5 numbers for 3-D)",
    )
    parser.add_argument(
        "--mode",
        choices=("forward", "backward", "both"),
        default="both",
        help="forward: no grad; backward: forward + (1 - ssim).backward(); both (default)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument(
        "--out", type=Path, default=None, metavar="FILE.md", help="write the tables as Markdown to this file"
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="FILE.png",
        help="write a bar chart of the speed ratios (PNG; needs matplotlib)",
    )
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-cases", default=None, help=argparse.SUPPRESS)
    return parser


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.memory_worker is not None:
        worker_cases = [Case(d, tuple(s), m) for d, s, m in json.loads(args.memory_cases)]
        print(json.dumps(memory_worker(args.memory_worker.split(","), worker_cases, args.threads)))
        return 0
    if args.threads < 1:
        raise SystemExit("--threads must be at least 1")
    if args.rounds is None:
        args.rounds = 2 if args.quick else 15
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    if args.max_seconds <= 0:
        args.max_seconds = None
    if args.plot is not None:
        try:  # fail before the timings, not after them
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None

    devices = ["cpu"] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append("cuda")
    elif args.device == "cuda":
        raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine")
    torch.set_num_threads(args.threads)
    modes = MODES if args.mode == "both" else (args.mode,)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    contenders = make_contenders()
    notes = [c.missing for c in contenders.values() if c.missing is not None]
    for note in notes:
        log(f"skipping: {note}")

    cases: list[Case] = []
    for device in devices:
        if args.shape:
            shapes: Sequence[Shape] = args.shape
        elif args.quick:
            shapes = QUICK_SHAPES
        else:
            shapes = CUDA_SHAPES if device == "cuda" else CPU_SHAPES
        cases += [Case(device, shape, mode) for shape in shapes for mode in modes]

    load_before = _load()
    memory: dict[tuple[str, str], Optional[int]] = {}
    if not args.no_memory:
        names = [
            n for n in (("unpatched", "patched") if args.quick else CONTENDERS) if not contenders[n].missing
        ]
        cpu_cases = [c for c in cases if c.device == "cpu"]
        if cpu_cases:
            if args.quick:  # keeps the method working without the seconds of fresh interpreters
                log("measuring CPU peak memory in this process (--quick)...")
                memory.update(_flatten(memory_worker(names, cpu_cases, args.threads), log))
            else:
                log(f"measuring CPU peak memory ({len(names)} fresh subprocesses)...")
                memory.update(measure_cpu_memory(names, cpu_cases, args.threads, log))
        cuda_cases = [c for c in cases if c.device == "cuda"]
        if cuda_cases:
            log("measuring CUDA peak memory...")
            memory.update(measure_cuda_memory({n: contenders[n] for n in names}, cuda_cases))

    timings: dict[str, dict[str, Timing]] = {}
    for case in cases:
        log(
            f"timing {case.device} {shape_text(case.shape)} {MODE_LABELS[case.mode]}, {args.rounds} rounds..."
        )
        timings[case.key] = time_case(case, contenders, args.rounds, args.warmup, log, args.max_seconds)
        if case.device == "cuda":
            torch.cuda.empty_cache()
    load = (load_before, _load())

    speed = speed_table(cases, timings)
    mem = memory_table(cases, memory)
    detail = detail_table(cases, timings)
    for line in machine_lines(args, devices, load):
        print(line)
    print()
    print(plain(speed))
    if len(mem) > 1:
        print("\nPeak extra memory of one call (MiB):")
        print(plain(mem))
    for note in notes:
        print(f"note: {note}")

    if args.out is not None:
        text = ["# SSIM benchmark: torchmetrics unpatched vs ssim_patch vs kornia vs pytorch-msssim", ""]
        text += machine_lines(args, devices, load)
        text += ["", "## Time per call (median, ms) and ratios", "", markdown(speed), ""]
        if len(mem) > 1:
            text += ["## Peak extra memory of one call (MiB)", "", markdown(mem), ""]
        if notes:
            text += [f"Note: {note}." for note in notes] + [""]
        text += ["## Method", "", METHOD_NOTES, "", "## Spread and values", "", markdown(detail), ""]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(text))
        log(f"wrote {args.out}")
    if args.plot is not None:
        write_plot(args.plot, cases, timings)
        log(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
