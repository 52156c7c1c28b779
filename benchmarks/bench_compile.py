"""Compile time and compiled speed of SSIM as a loss under ``torch.compile`` (inductor), patched
vs unpatched torchmetrics, static and ``dynamic=True`` shapes, on a cold compile cache.

Each measurement runs in a child process of its own with a fresh ``TORCHINDUCTOR_CACHE_DIR`` and
``TRITON_CACHE_DIR`` (nothing compiled before is reused) and the patch state it measures. The
child compiles ``1 - structural_similarity_index_measure(x, y, data_range=1.0)``, runs one
forward+backward (the compile time: dynamo, AOT autograd, inductor, the C++ build and the call
itself), then times the compiled forward+backward against the same loss uncompiled (medians of
alternating blocks of ``BLOCK`` consecutive calls) and counts the page faults of each step. Patched and unpatched children alternate, in an order that rotates from round to
round, so that the load of the machine falls on both alike.

    python benchmarks/bench_compile.py --rounds 3 --out benchmarks/compile_results.md

``--threads`` (default 1) sets the children's torch threads: with other work on a two-core
machine, two threads time the scheduler (one thread descheduled stalls every parallel op), not
the code.

Cases: ``ssim`` 4x3x64x64 (the floor's), ``ssim3d`` 2x1x32x32x32 and ``msssim`` 2x3x192x192
(``--case``, repeatable). ``--child`` is the child's own entry (one measurement, JSON out).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):  # run as a file: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import ROOT

#: The measured losses: torchmetrics function, image shape.
CASES = {
    "ssim": ("structural_similarity_index_measure", (4, 3, 64, 64)),
    "ssim3d": ("structural_similarity_index_measure", (2, 1, 32, 32, 32)),
    "msssim": ("multiscale_structural_similarity_index_measure", (2, 3, 192, 192)),
}
STATES = ("patched", "unpatched")
#: Steps are timed in alternating blocks of this many consecutive calls of one kind.
BLOCK = 10
SHAPES = ("static", "dynamic")


@dataclass
class Result:
    """One child's numbers (seconds)."""

    case: str
    state: str
    shapes: str
    compile_s: float
    compiled_s: float  # median compiled fwd+bwd
    eager_s: float  # median uncompiled fwd+bwd, same patch state
    graph_breaks: int
    diff: float  # |compiled - eager| of the loss and of the gradient (max)
    compiled_faults: float = float("nan")  # minor page faults per compiled step (mean)
    eager_faults: float = float("nan")  # and per eager step
    error: Optional[str] = None


# --- the child: one measurement ---------------------------------------------------------------


def _child(case: str, state: str, shapes: str, calls: int, threads: int) -> dict[str, Any]:
    import warnings

    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(threads)
    import torch._dynamo
    from torch._dynamo.utils import counters
    from torchmetrics.functional import image

    import ssim_patch

    if state == "patched":
        ssim_patch.apply()
    else:
        ssim_patch.revert()
    assert ssim_patch.is_applied() == (state == "patched")
    name, shape = CASES[case]
    metric = getattr(image, name)

    def loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        value: torch.Tensor = 1 - metric(a, b, data_range=1.0)
        return value

    g = torch.Generator().manual_seed(0)
    y = torch.rand(shape, generator=g)
    x = (0.6 * y + 0.4 * torch.rand(shape, generator=g)).requires_grad_()
    compiled = torch.compile(loss, dynamic=shapes == "dynamic")

    def step(fn: Any) -> tuple[torch.Tensor, torch.Tensor]:
        value = fn(x, y)
        (grad,) = torch.autograd.grad(value, x)
        return value.detach(), grad

    start = time.perf_counter()
    value, grad = step(compiled)
    compile_s = time.perf_counter() - start
    eager_value, eager_grad = step(loss)
    diff = max((value - eager_value).abs().item(), ((grad - eager_grad).abs().max()).item())
    times: dict[str, list[float]] = {"compiled": [], "eager": []}
    faults: dict[str, list[int]] = {"compiled": [], "eager": []}
    for fn in (compiled, loss, compiled, loss):  # warm-up
        step(fn)
    for i in range(2 * calls):
        which = ("compiled", "eager")[(i // BLOCK) % 2]  # blocks of BLOCK calls, alternating
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        step(compiled if which == "compiled" else loss)
        times[which].append(time.perf_counter() - start)
        faults[which].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {
        "compile_s": compile_s,
        "compiled_s": statistics.median(times["compiled"]),
        "eager_s": statistics.median(times["eager"]),
        "graph_breaks": sum(counters["graph_break"].values()),
        "diff": diff,
        "compiled_faults": statistics.mean(faults["compiled"]),
        "eager_faults": statistics.mean(faults["eager"]),
    }


# --- the parent: children, interleaved --------------------------------------------------------


def _environ(cache: str, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    for key in ("SSIM_PATCH_AUTO", "SSIM_PATCH_PADDING", "PYTEST_ADDOPTS"):
        env.pop(key, None)
    env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(cache, "inductor")
    env["TRITON_CACHE_DIR"] = os.path.join(cache, "triton")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH")]))
    return env


def _error_line(stderr: str) -> str:
    """The exception a child died of: the last line that names one (``torch._dynamo.exc.X: ...``)."""
    lines = stderr.strip().splitlines() or ["?"]
    named = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Unsupported)\b", line)]
    return (named or lines)[-1][:300]


def _failed(case: str, state: str, shapes: str, why: str) -> Result:
    nan = float("nan")
    return Result(case, state, shapes, nan, nan, nan, 0, nan, error=why)


def measure(case: str, state: str, shapes: str, calls: int, threads: int, timeout: float) -> Result:
    """One child process on a cold cache."""
    with tempfile.TemporaryDirectory(prefix="ssim-compile-") as cache:
        child = [case, state, shapes, str(calls), str(threads)]
        command = [sys.executable, str(Path(__file__).resolve()), "--child", *child]
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=_environ(cache, threads),
                cwd=ROOT,
            )
        except subprocess.TimeoutExpired:
            return _failed(case, state, shapes, f"over {timeout:.0f} s")
    if done.returncode != 0:
        return _failed(case, state, shapes, _error_line(done.stderr))
    return Result(case, state, shapes, **json.loads(done.stdout.strip().splitlines()[-1]))


def run(cases: list[str], rounds: int, calls: int, threads: int, timeout: float) -> list[Result]:
    """Every (case, shapes, state) ``rounds`` times; patched and unpatched alternate, the order
    rotating from round to round."""
    plan = [(c, shapes, state) for c in cases for shapes in SHAPES for state in STATES]
    results = []
    for r in range(rounds):
        order = plan if r % 2 == 0 else [p for pair in zip(plan[1::2], plan[::2]) for p in pair]
        for case, shapes, state in order:
            result = measure(case, state, shapes, calls, threads, timeout)
            results.append(result)
            print(
                f"round {r + 1}/{rounds} {case:7s} {shapes:8s} {state:10s} compile {result.compile_s:6.1f} s  "
                f"compiled {result.compiled_s * 1e3:7.2f} ms  eager {result.eager_s * 1e3:7.2f} ms  "
                f"breaks {result.graph_breaks}  diff {result.diff:.1e}"
                + (f"  ERROR {result.error}" if result.error else ""),
                flush=True,
            )
    return results


def _median(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return statistics.median(finite) if finite else float("nan")


def table(results: list[Result], cases: list[str]) -> list[str]:
    """Markdown rows: per case and shapes, compile time and speeds, patched vs unpatched. A step
    ratio is taken within each child (alternating blocks of calls), then the median over the rounds."""
    rows = [
        "| case | shapes | compile, unpatched | compile, patched | patched / unpatched "
        "| step compiled, patched | step eager, patched | compiled / eager, patched "
        "| page faults / step, patched (compiled, eager) "
        "| step compiled, unpatched | graph breaks (unpatched, patched) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        for shapes in SHAPES:
            picked = {
                state: [
                    r for r in results if (r.case, r.shapes, r.state) == (case, shapes, state) and not r.error
                ]
                for state in STATES
            }
            if not picked["patched"]:
                continue

            def values(state: str, field: str) -> list[float]:
                return [getattr(r, field) for r in picked[state]]  # noqa: B023

            def listed(items: list[float], digits: int = 1) -> str:
                return ", ".join(f"{v:.{digits}f}" for v in items)

            shape = "x".join(map(str, CASES[case][1]))
            if not picked["unpatched"]:  # unpatched failed (see the failures below)
                picked["unpatched"] = [_failed(case, "unpatched", shapes, "failed")]
            cu, cp = values("unpatched", "compile_s"), values("patched", "compile_s")
            step = [r.compiled_s / r.eager_s for r in picked["patched"]]
            sp, ep = values("patched", "compiled_s"), values("patched", "eager_s")
            su = values("unpatched", "compiled_s")
            breaks = f"{max(values('unpatched', 'graph_breaks')):.0f}, {max(values('patched', 'graph_breaks')):.0f}"
            rows.append(
                f"| {case} {shape} | {shapes} | {_median(cu):.1f} s ({listed(cu)}) | {_median(cp):.1f} s "
                f"({listed(cp)}) | **{_median(cp) / _median(cu):.2f}** | {_median(sp) * 1e3:.2f} ms "
                f"| {_median(ep) * 1e3:.2f} ms | **{_median(step):.2f}** ({listed(step, 2)}) "
                f"| {max(values('patched', 'compiled_faults')):.0f}, {max(values('patched', 'eager_faults')):.0f} "
                f"| {_median(su) * 1e3:.2f} ms | {breaks} |"
            )
    return rows


def write(
    path: Path, results: list[Result], cases: list[str], load: tuple[str, str], seconds: float, threads: int
) -> None:
    from benchmarks import machine

    errors = [f"- {r.case} {r.shapes} {r.state}: {r.error}" for r in results if r.error]
    lines = [
        "# Compile time under torch.compile: patched vs unpatched torchmetrics",
        "",
        f"Measured {machine.utc_now()} with `{machine.command_line('bench_compile.py')}` ({seconds / 60:.0f} min).",
        "",
        *machine.machine_lines(),
        f"- Load average (1 min) before / after: {load[0]} / {load[1]}. Other work on the machine moves "
        "the absolute times; patched and unpatched children alternate, so their ratio is the number "
        "to read.",
        "",
        f"SSIM as a loss, `1 - f(x, y, data_range=1.0)` forward+backward, float32, inductor (C++ on CPU), "
        f"{threads} torch thread(s) per child. "
        "Compile: the first compiled call, each in a fresh process on a cold cache (fresh "
        "`TORCHINDUCTOR_CACHE_DIR`); medians over the rounds, each round's value in brackets. Steps: "
        f"medians after warm-up in the same process, timed in alternating blocks of {BLOCK} consecutive "
        "calls of one kind (a training loop's steady state; alternating every call times each kind "
        "right after the other's code and data); page faults: the most of the "
        "rounds' mean minor page faults per step (each fresh page the allocator maps costs one). "
        "Patched, the engine runs as "
        "one `torch.library` custom op (`ssim_patch::similarity`, its backward "
        "`ssim_patch::similarity_backward`): dynamo traces the argument handling around it and "
        "inductor compiles only that.",
        "",
        *table(results, cases),
        "",
    ]
    if errors:
        lines += ["Failures:", "", *errors, ""]
    path.write_text("\n".join(lines))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="default: ssim")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--calls", type=int, default=100, help="timed calls per step kind")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each child")
    parser.add_argument("--timeout", type=float, default=600.0, help="per child, seconds")
    parser.add_argument("--out", type=Path, help="write the Markdown here")
    parser.add_argument(
        "--child", nargs=5, metavar=("CASE", "STATE", "SHAPES", "CALLS", "THREADS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        case, state, shapes, calls, threads = args.child
        print(json.dumps(_child(case, state, shapes, int(calls), int(threads))))
        return 0
    cases = args.case or ["ssim"]
    import torch

    from benchmarks import machine

    torch.set_num_threads(args.threads)  # as the children run (machine_lines reports it)

    load_before, started = machine.load_average(), time.time()
    results = run(cases, args.rounds, args.calls, args.threads, args.timeout)
    print("\n".join(table(results, cases)))
    if args.out:
        load = (load_before, machine.load_average())
        write(args.out, results, cases, load, time.time() - started, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
