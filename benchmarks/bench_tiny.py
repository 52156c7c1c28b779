"""Host time of tiny calls: where the time of a patched SSIM of small images goes, next to the
unpatched call it replaces.

At 1x1x16x16 the work is nothing and what a caller waits for is the host: argument handling, the
plan, the route and dispatch into the backend, and the backend's own ops. The script prints:

1. **Whole calls**, unpatched vs patched, side by side in one process (each round runs every call
   once, in a rotating order): torchmetrics' functional SSIM, ``StructuralSimilarityIndexMeasure``
   ``update`` + ``compute``, MS-SSIM (3 scales, 1x1x48x48) and UQI, forward and forward+backward,
   with the aten ops and Python calls of each call (counts do not depend on the machine's load;
   the aten ops are counted under a dispatch mode, where a call takes the custom op: the same
   backend ops, but for the CPU backend's pieces with more than one thread, which under a mode run
   on the caller as it is rather than single-threaded: shifted sums instead of matrix products).
2. **Breakdown** of the patched functional SSIM: torchmetrics and the adapter, argument handling
   and plan, route and dispatch (a plain eager call's: the ``autograd.Function``), the backend's
   own work; timed as nested calls.
3. **Dispatch**: the same backend behind the custom op, the ``autograd.Function`` and a direct call.
4. **Backends at small sizes**: the patched call with each CPU-capable backend forced.
5. **The GPU routes without a GPU**: launches per call counted on ``meta`` tensors and Python
   calls on CPU tensors (the same Python as on CUDA), unpatched vs the conv route and the Triton
   route (its kernels replaced by a recorder that counts launches), and the Triton route's host
   time on CPU tensors, kernels recorded. The conv route is also timed on ``meta``, a rough proxy
   only: torch's meta kernels are largely Python (an out-of-place elementwise op costs ~10x an
   in-place one there, ``clamp_min`` a millisecond), time a CUDA call does not spend; its
   launches are the measure. On CUDA, section 6 times Triton's launcher.
6. **Triton's launcher** (CUDA with Triton only): the patched call with the real kernels vs the
   recorder; the difference per launch is the launcher's host cost.

Each switch of the patch (or of the backend) is followed by one untimed call: ``revert()`` and
``apply()`` walk every loaded module and leave the CPU's caches cold, and the call right after a
switch costs 1.5-2x in either state, which no process that applies the patch once pays
(``--cold`` times that call instead).
Times are medians of ``--rounds`` calls, in microseconds, of wall-clock time (``--clock wall``) or
of the calling thread's CPU time (``--clock cpu``: less disturbed by other processes on busy
cores; the OpenMP workers' time is left out, which for tiny calls is their spin-waiting).
Usage: ``python benchmarks/bench_tiny.py [--threads 1 2] [--clock cpu] [--cold] [--quick] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import sys
import time
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a file: make the ``benchmarks`` package importable
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from benchmarks import machine  # noqa: E402
from benchmarks.dispatch_count import DispatchCounter  # noqa: E402

Fn = Callable[[], object]
#: The tiny image of the floors (issue 26).
TINY = (1, 1, 16, 16)
#: MS-SSIM's smallest image for its 3-scale form (its 5 scales need more than 160 pixels a side).
MS_IMAGE, MS_BETAS = (1, 1, 48, 48), (0.3, 0.3, 0.4)
#: Shapes for the backends at small sizes.
SMALL_SHAPES = ((1, 1, 16, 16), (1, 3, 32, 32), (4, 3, 64, 64))
#: Time the first call after each switch of the patch (``--cold``; see :func:`interleaved`).
COLD = False
#: Backends that run CPU tensors.
CPU_BACKENDS = ("cpu", "conv", "traced")


# --- measuring ----------------------------------------------------------------------------------


def _clock(name: str) -> Callable[[], float]:
    """``cpu``: the calling thread's CPU time (the host's own work; not the OpenMP workers', whose
    spin-waits would count as work); ``wall``: wall-clock time."""
    return time.thread_time if name == "cpu" else time.perf_counter


def interleaved(
    calls: dict[str, Fn], rounds: int, clock: str, states: Optional[dict[str, Callable[[], object]]] = None
) -> dict[str, float]:
    """Median seconds of each call over ``rounds`` rounds, every call once a round in a rotating
    order (a slow spell of the machine is shared). ``states[name]()`` runs before ``name``'s
    call, outside the timed region (patch on or off), and then, unless ``COLD``, the call once
    untimed: ``apply()`` and ``revert()`` rebind names in every loaded module (~0.4 ms), which
    leaves the CPU's caches cold, and the first call after a switch takes 1.5-2x its steady time
    in either state, a cost no process that applies the patch once pays."""
    now = _clock(clock)
    names = list(calls)
    for name in names:  # warm-up: first calls build caches, workspaces, plans
        for _ in range(min(3, rounds)):
            if states:
                states[name]()
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                if states:
                    states[name]()
                    if not COLD:
                        calls[name]()
                start = now()
                calls[name]()
                times[name].append(now() - start)
    finally:
        if enabled:
            gc.enable()
    return {name: statistics.median(values) for name, values in times.items()}


class _Recorder:
    """Stands for a Triton kernel: ``kernel[grid](...)`` counts a launch and runs nothing."""

    def __init__(self) -> None:
        self.launches = 0

    def __getitem__(self, grid: object) -> _Recorder:
        return self

    def __call__(self, *args: object, **kwargs: object) -> None:
        self.launches += 1


def python_calls(fn: Fn, skip: Sequence[str] = ()) -> int:
    """Python functions and builtins ``fn()`` calls (a count, independent of the machine's load),
    but for those called from files whose path contains one of ``skip``."""
    count = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            name = frame.f_code.co_filename
            if not any(part in name for part in skip):
                count += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count - 1  # setprofile(None) itself


def aten_ops(fn: Fn, recorder: Optional[_Recorder] = None) -> tuple[int, int]:
    """(aten ops dispatched, launches: ops that write, a kernel launch each on CUDA, and the
    Triton launches ``recorder`` saw) by one call ``fn()``, in steady state."""
    with DispatchCounter():
        fn()  # the cpu backend's views are made once under a dispatch mode too, then kept
    before = recorder.launches if recorder is not None else 0
    with DispatchCounter() as counter:
        fn()
    launches = recorder.launches - before if recorder is not None else 0
    return counter.counts.ops, counter.counts.writing_ops + launches


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "n/a"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


# --- the calls --------------------------------------------------------------------------------


def _images(shape: Sequence[int], device: str = "cpu", seed: int = 0) -> tuple[Tensor, Tensor]:
    if device == "meta":
        return torch.empty(*shape, device="meta"), torch.empty(*shape, device="meta")
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=g)
    return x.to(device), (x * 0.8 + 0.1 * torch.rand(*shape, generator=g)).to(device)


def _forward(f: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor) -> Fn:
    def run() -> object:
        with torch.no_grad():
            return f(x, y)

    return run


def _loss(f: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor) -> Fn:
    leaf = x.detach().clone().requires_grad_()

    def run() -> object:
        leaf.grad = None
        out = f(leaf, y)
        (1 - out).backward()  # type: ignore[no-untyped-call]
        return out

    return run


def api_calls(device: str = "cpu") -> dict[str, Fn]:
    """Each API's call on its tiny images, forward and forward+backward, by label."""
    from torchmetrics.functional.image import (
        multiscale_structural_similarity_index_measure,
        structural_similarity_index_measure,
        universal_image_quality_index,
    )
    from torchmetrics.image import StructuralSimilarityIndexMeasure

    x, y = _images(TINY, device)
    mx, my = _images(MS_IMAGE, device)

    def ssim(a: Tensor, b: Tensor) -> Tensor:
        return structural_similarity_index_measure(a, b, data_range=1.0)  # type: ignore[return-value]

    def ms_ssim(a: Tensor, b: Tensor) -> Tensor:
        return multiscale_structural_similarity_index_measure(a, b, data_range=1.0, betas=MS_BETAS)

    metric = StructuralSimilarityIndexMeasure(data_range=1.0).to(device)

    def metric_call() -> object:
        metric.update(x, y)
        value = metric.compute()
        metric.reset()
        return value

    return {
        "SSIM functional, fwd": _forward(ssim, x, y),
        "SSIM functional, fwd+bwd": _loss(ssim, x, y),
        "SSIM Metric update+compute, fwd": metric_call,
        f"MS-SSIM functional {'x'.join(map(str, MS_IMAGE))}, fwd": _forward(ms_ssim, mx, my),
        f"MS-SSIM functional {'x'.join(map(str, MS_IMAGE))}, fwd+bwd": _loss(ms_ssim, mx, my),
        "UQI functional, fwd": _forward(universal_image_quality_index, x, y),
        "UQI functional, fwd+bwd": _loss(universal_image_quality_index, x, y),
    }


def _patch_states() -> dict[str, Callable[[], object]]:
    import ssim_patch

    return {"unpatched": ssim_patch.revert, "patched": ssim_patch.apply}


@contextlib.contextmanager
def backend_forced(name: Optional[str]) -> Iterator[None]:
    """``SSIM_PATCH_BACKEND=name`` inside (None: as it was)."""
    from ssim_patch import backends

    saved = os.environ.get(backends.ENV)
    if name is not None:
        os.environ[backends.ENV] = name
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(backends.ENV, None)
        else:
            os.environ[backends.ENV] = saved


# --- 1. whole calls ---------------------------------------------------------------------------


def whole_calls(rounds: int, clock: str, device: str = "cpu", quick: bool = False) -> list[str]:
    """Unpatched vs patched, every API (section 1; section 5's meta rows with ``device="meta"``)."""
    states = _patch_states()
    rows = []
    for label, fn in api_calls(device).items():
        if quick and "MS-SSIM" in label:
            continue
        counts = {}
        for state, enter in states.items():
            enter()
            fn()
            counts[state] = (*aten_ops(fn), python_calls(fn))
        medians = interleaved({s: fn for s in states}, rounds, clock, states)
        u, p = medians["unpatched"], medians["patched"]
        cu, cp = counts["unpatched"], counts["patched"]
        rows.append(
            [
                label,
                _us(u),
                _us(p),
                f"**{_ratio(p, u)}**",
                f"{cu[0]} / {cp[0]}",
                f"{cu[1]} / {cp[1]}",
                f"{cu[2]} / {cp[2]}",
            ]
        )
    states["unpatched"]()
    head = [
        "call",
        "unpatched us",
        "patched us",
        "patched/unpatched",
        "aten ops",
        "writing ops",
        "Python calls",
    ]
    return _table(head, rows)


# --- 2. breakdown -----------------------------------------------------------------------------


def _segments(loss: bool) -> dict[str, Fn]:
    """The patched functional SSIM and the nested calls inside it, each on its own."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    from ssim_patch import _arguments, backends, engine
    from ssim_patch.backends import _op

    x, y = _images(TINY)
    c1, c2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2
    _, plan = _arguments._ssim_plan(True, 1.5, 11, 2, "same", "ssim")
    backend = backends.choose(x, plan)
    leaf = x.clone().requires_grad_()

    def total() -> object:
        return structural_similarity_index_measure(leaf if loss else x, y, data_range=1.0)

    def in_engine() -> object:
        return engine._ssim_per_image(leaf if loss else x, y, data_range=1.0).mean()  # type: ignore[union-attr]

    def in_op() -> object:
        return _op.similarity(leaf if loss else x, y, c1, c2, plan)[0].mean()

    in_backend = _backend_alone(backend, x, y, c1, c2, plan, loss)

    def plan_cached() -> object:
        return _arguments._ssim_plan(True, 1.5, 11, 2, "same", "ssim")

    def plan_built() -> object:
        _arguments._PLANS.clear()
        return _arguments._ssim_plan(True, 1.5, 11, 2, "same", "ssim")

    calls: dict[str, Fn] = {"total": total, "engine": in_engine, "op": in_op, "backend": in_backend}
    if loss:
        calls = {name: _loss_of(fn, leaf) if name != "backend" else fn for name, fn in calls.items()}
    else:
        calls = {name: _no_grad(fn) for name, fn in calls.items()}
    return {**calls, "plan (cached)": plan_cached, "plan (built)": plan_built}


def _no_grad(fn: Fn) -> Fn:
    def run() -> object:
        with torch.no_grad():
            return fn()

    return run


def _loss_of(fn: Fn, leaf: Tensor) -> Fn:
    def run() -> object:
        leaf.grad = None
        out = fn()
        assert isinstance(out, Tensor)
        (1 - out).backward()  # type: ignore[no-untyped-call]
        return out

    return run


def breakdown(rounds: int, clock: str) -> list[str]:
    """Section 2: where the patched functional SSIM's time goes."""
    import ssim_patch

    ssim_patch.apply()
    rows = []
    try:
        for loss in (False, True):
            calls = _segments(loss)
            medians = interleaved(calls, rounds, clock)
            counts = {name: python_calls(fn) for name, fn in calls.items()}
            ops = {name: aten_ops(fn)[0] for name, fn in calls.items()}
            parts = [
                ("torchmetrics and the adapter", "total", "engine"),
                ("argument handling and plan", "engine", "op"),
                ("route and dispatch", "op", "backend"),
                ("the backend's own work", "backend", None),
            ]
            mode = "fwd+bwd" if loss else "fwd"
            for label, outer, inner in parts:
                t = medians[outer] - (medians[inner] if inner else 0.0)
                n = counts[outer] - (counts[inner] if inner else 0)
                a = ops[outer] - (ops[inner] if inner else 0)
                rows.append([mode, label, _us(t), _ratio(t, medians["total"]), str(a), str(n)])
            rows.append(
                [
                    mode,
                    "**whole call**",
                    _us(medians["total"]),
                    "1.00",
                    str(ops["total"]),
                    str(counts["total"]),
                ]
            )
        for name in ("plan (cached)", "plan (built)"):
            rows.append(["-", name, _us(medians[name]), "", "0", str(counts[name])])
    finally:
        ssim_patch.revert()
    return _table(["pass", "part", "us", "share", "aten ops", "Python calls"], rows)


@contextlib.contextmanager
def _below_autograd() -> Iterator[None]:
    """Dispatch below autograd inside: torch's guard, a context manager from torch 2.1 on; on
    torch 2.0 an object that holds the guard while it lives."""
    guard_type: Any = torch._C._AutoDispatchBelowAutograd
    if hasattr(guard_type, "__enter__"):
        with guard_type():
            yield
        return
    guard = guard_type()
    try:
        yield
    finally:
        del guard


def _backend_alone(
    backend: Any, x: torch.Tensor, y: torch.Tensor, c1: float, c2: float, plan: Any, loss: bool
) -> Fn:
    """The backend's own work for one call, no op around it: its forward, and for a loss its
    backward from what the forward kept (the gradient of x only); below autograd, as the custom
    op runs it (where the op counts of the breakdown are taken): a composite op (``matmul``)
    is one op there, not the ops it decomposes into above autograd."""
    from ssim_patch.backends._dtypes import constants
    from ssim_patch.backends._protocol import Needs

    unit = torch.full((1,), -1.0)

    def run() -> object:
        with _below_autograd():
            k = constants(c1, c2, plan, x)
            if not loss:
                return backend.forward(x, y, k, plan, None)
            needs = Needs(True, False, False, False)
            _, _, kept = backend.forward(x, y, k, plan, needs)
            assert kept is not None
            return backend.backward(x, y, k, kept, unit, None, plan, needs)

    return run


# --- 3. dispatch --------------------------------------------------------------------------------


def dispatch(rounds: int, clock: str) -> list[str]:
    """Section 3: one backend behind the custom op, the autograd.Function and a direct call."""
    from ssim_patch import _arguments, backends
    from ssim_patch.backends import _custom_op, _op
    from ssim_patch.backends._protocol import Needs

    x, y = _images(TINY)
    c1, c2 = 1e-4, 9e-4
    _, plan = _arguments._ssim_plan(True, 1.5, 11, 2, "same", "ssim")
    backend = backends.choose(x, plan)
    leaf = x.clone().requires_grad_()

    def direct(loss: bool) -> Fn:
        return _backend_alone(backend, x, y, c1, c2, plan, loss)

    def through(route: Callable[[Tensor], Tensor], loss: bool) -> Fn:
        if not loss:
            return _no_grad(lambda: route(x))
        return _loss_of(lambda: route(leaf).sum(), leaf)

    routes: dict[str, Callable[[Tensor], Tensor]] = {
        "autograd.Function": lambda a: _op._fused(a, y, c1, c2, plan, backend)[0],
    }
    if _custom_op.AVAILABLE:

        def op(a: Tensor) -> Tensor:
            grad = torch.is_grad_enabled()
            keep = Needs.of(a, y, c1, c2) if grad else Needs(False, False, False, False)
            return _custom_op.similarity(_custom_op.args(a, y, c1, c2, plan, "auto", keep))[0]

        routes["custom op"] = op
    rows = []
    for loss in (False, True):
        calls = {"direct": direct(loss), **{name: through(r, loss) for name, r in routes.items()}}
        medians = interleaved(calls, rounds, clock)
        for name, fn in calls.items():
            cost = medians[name] - medians["direct"]
            row = [name, _us(medians[name]), _us(cost) if name != "direct" else "-", str(python_calls(fn))]
            rows.append(["fwd+bwd" if loss else "fwd", *row])
    head = ["pass", f"route ({backend.name} backend)", "us", "over direct us", "Python calls"]
    return _table(head, rows)


# --- 4. backends at small sizes -------------------------------------------------------------------


def small_backends(rounds: int, clock: str, shapes: Sequence[Sequence[int]]) -> list[str]:
    """Section 4: the patched functional SSIM with each CPU backend forced, vs unpatched."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    import ssim_patch
    from ssim_patch import backends

    def ssim(a: Tensor, b: Tensor) -> Tensor:
        return structural_similarity_index_measure(a, b, data_range=1.0)  # type: ignore[return-value]

    def state(name: str) -> Callable[[], None]:
        def enter() -> None:
            if name == "unpatched":
                ssim_patch.revert()
            else:
                ssim_patch.apply()
                os.environ[backends.ENV] = name

        return enter

    names = ("unpatched", *CPU_BACKENDS)
    rows = []
    with backend_forced(None):
        for shape in shapes:
            x, y = _images(shape)
            for loss in (False, True):
                fn = _loss(ssim, x, y) if loss else _forward(ssim, x, y)
                medians = interleaved({n: fn for n in names}, rounds, clock, {n: state(n) for n in names})
                u = medians["unpatched"]
                cells = [f"{_us(medians[n])} ({_ratio(medians[n], u)})" for n in CPU_BACKENDS]
                best = min(CPU_BACKENDS, key=lambda n: medians[n])
                rows.append(["x".join(map(str, shape)), "fwd+bwd" if loss else "fwd", _us(u), *cells, best])
    ssim_patch.revert()
    head = ["shape", "pass", "unpatched us", *(f"{n} us (ratio)" for n in CPU_BACKENDS), "fastest"]
    return _table(head, rows)


# --- 5. meta: the conv and Triton routes' host time ----------------------------------------------


@contextlib.contextmanager
def triton_recorded(device: str) -> Iterator[_Recorder]:
    """The triton backend forced, taking ``device``'s tensors, its kernels replaced by one
    :class:`_Recorder` (launches counted, nothing run)."""
    from ssim_patch.backends import triton as triton_backend

    recorder = _Recorder()
    kernels = types.SimpleNamespace(ssim_forward_kernel=recorder, ssim_backward_kernel=recorder)
    saved = triton_backend._KERNELS, triton_backend.unsupported

    def unsupported(x: Tensor, plan: Any) -> Optional[str]:
        return None if x.device.type == device and x.ndim == 4 else f"not {device}"

    triton_backend._KERNELS = kernels  # type: ignore[assignment]
    triton_backend.unsupported = unsupported
    try:
        with backend_forced("triton"):
            yield recorder
    finally:
        triton_backend._KERNELS, triton_backend.unsupported = saved


def meta_routes(rounds: int, clock: str) -> list[str]:
    """Section 5: a GPU call's launches and Python, unpatched vs the conv and the Triton route.

    Launches (ops that write, and Triton kernels) are counted on meta tensors. Python calls are
    counted on CPU tensors with the route forced, which run the same Python as on CUDA (on meta,
    torch's own meta kernels are largely Python, which a CUDA call does not run). The host time
    of the Triton route is timed on CPU tensors, its kernels recorded: a proxy of its host time
    on CUDA without Triton's launcher (section 6)."""
    import ssim_patch

    states = _patch_states()
    on_meta = {k: v for k, v in api_calls("meta").items() if k.startswith(("SSIM", "UQI"))}
    on_cpu = api_calls("cpu")
    routes: dict[str, Callable[[str], contextlib.AbstractContextManager[object]]] = {
        "conv": lambda device: backend_forced(None if device == "meta" else "conv"),
        "triton": triton_recorded,
    }
    rows = []
    for label, fn in on_meta.items():
        ssim_patch.revert()
        fn()
        u_launches, u_python = aten_ops(fn)[1], python_calls(on_cpu[label])
        cells = []
        for route, context in routes.items():
            counts = []
            for device, call in (("meta", fn), ("cpu", on_cpu[label])):
                with context(device) as recorder:
                    ssim_patch.apply()
                    call()
                    counts.append(aten_ops(call, recorder if isinstance(recorder, _Recorder) else None)[1])
                    counts.append(python_calls(call))
                    if route == "triton" and device == "cpu":
                        medians = interleaved({n: call for n in states}, rounds, clock, states)
                    if route == "conv" and device == "meta":
                        on_meta_time = interleaved({n: call for n in states}, rounds, clock, states)
                    ssim_patch.revert()
            launches, python = counts[0], counts[3]
            cells.append(
                f"{launches} ({_ratio(launches, u_launches)}), {python} ({_ratio(python, u_python)})"
            )
        u, p = medians["unpatched"], medians["patched"]
        cells.append(f"{_us(p)} / {_us(u)} = **{_ratio(p, u)}**")
        u, p = on_meta_time["unpatched"], on_meta_time["patched"]
        cells.append(f"{_us(p)} / {_us(u)} = {_ratio(p, u)}")
        rows.append([label, f"{u_launches}, {u_python}", *cells])
    head = [
        "call",
        "unpatched: launches, Python calls",
        "conv route (ratio)",
        "triton route (ratio)",
        "triton route host time on CPU tensors, kernels recorded: patched / unpatched us",
        "conv route host time on meta: patched / unpatched us (meta kernels included)",
    ]
    return _table(head, rows)


# --- 6. Triton's launcher on CUDA ----------------------------------------------------------------


def triton_launcher(rounds: int, clock: str) -> list[str]:
    """Section 6: the per-launch host cost of Triton's launcher (CUDA and Triton only)."""
    if not torch.cuda.is_available():
        return ["Not measured: no CUDA device here (run this script on a GPU machine)."]
    from ssim_patch.backends import load

    if isinstance(load("triton"), str):
        return [f"Not measured: the triton backend does not load ({load('triton')})."]
    from torchmetrics.functional.image import structural_similarity_index_measure

    import ssim_patch

    def ssim(a: Tensor, b: Tensor) -> Tensor:
        return structural_similarity_index_measure(a, b, data_range=1.0)  # type: ignore[return-value]

    x, y = _images(TINY, "cuda")
    rows = []
    ssim_patch.apply()
    try:
        for loss in (False, True):
            fn = _loss(ssim, x, y) if loss else _forward(ssim, x, y)
            with backend_forced("triton"):
                real = interleaved({"real": fn}, rounds, clock)["real"]
            with triton_recorded("cuda") as recorder:
                recorded = interleaved({"recorded": fn}, rounds, clock)["recorded"]
                before = recorder.launches
                fn()
                launches = recorder.launches - before
            per = (real - recorded) / launches if launches else 0.0
            rows.append(["fwd+bwd" if loss else "fwd", _us(real), _us(recorded), str(launches), _us(per)])
    finally:
        ssim_patch.revert()
        torch.cuda.synchronize()
    head = ["pass", "real kernels us (host)", "recorded us", "Triton launches", "launcher us per launch"]
    return _table(head, rows)


# --- the command line ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench_tiny.py",
        description="Host time of tiny SSIM / MS-SSIM / UQI calls, unpatched vs patched, and its breakdown.",
    )
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="torch CPU threads (default: 1 2)"
    )
    parser.add_argument("--rounds", type=int, default=300, help="calls timed per median (default 300)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall-clock time, or the calling thread's CPU time (steadier on busy cores); default wall",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="time the first call after each switch of the patch (caches left cold by the switch)",
    )
    parser.add_argument("--quick", action="store_true", help="a dry run in seconds: few rounds, one shape")
    parser.add_argument("--out", type=Path, help="also write the report (Markdown) to this file")
    return parser


def report(args: argparse.Namespace) -> list[str]:
    """The whole report as Markdown lines."""
    global COLD
    COLD = args.cold
    rounds = 2 if args.quick else args.rounds
    shapes = SMALL_SHAPES[:1] if args.quick else SMALL_SHAPES
    after = "the first call after each switch" if COLD else "a call untimed after each switch"
    lines = [
        "# Host time of tiny calls",
        "",
        f"- {machine.utc_now()}; clock: {args.clock}; medians of {rounds} calls, interleaved, {after}",
        *machine.machine_lines(),
        "",
    ]

    def section(title: str, body: list[str]) -> None:
        lines.extend([f"## {title}", "", *body, "", f"(load average {machine.load_average()})", ""])
        print("\n".join(lines[-len(body) - 5 :]), flush=True)

    for threads in args.threads:
        torch.set_num_threads(threads)
        size = "x".join(map(str, TINY))
        section(
            f"1. Whole calls, CPU, {threads} thread(s), {size}",
            whole_calls(rounds, args.clock, quick=args.quick),
        )
        section(
            f"2. Breakdown of the patched functional SSIM, CPU, {threads} thread(s)",
            breakdown(rounds, args.clock),
        )
        section(f"3. Dispatch, CPU, {threads} thread(s)", dispatch(rounds, args.clock))
        section(
            f"4. Backends at small sizes, CPU, {threads} thread(s)",
            small_backends(rounds, args.clock, shapes),
        )
    section(
        "5. The conv and Triton routes: launches, Python calls, host time", meta_routes(rounds, args.clock)
    )
    section("6. Triton's launcher on CUDA", triton_launcher(rounds, args.clock))
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    import torchmetrics.functional.image
    import torchmetrics.image  # noqa: F401

    lines = report(args)
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
