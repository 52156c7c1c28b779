"""Time torchmetrics' SSIM patched vs unpatched, side by side with kornia and pytorch-msssim;
or, with ``--count``, count its launches and bytes written on ``device="meta"``.

Run ``python benchmarks/bench_ssim.py --help`` for the options; ``benchmarks/README.md`` explains
the method. This file is the command line only: the cases, contenders, measurements and reports
live in the modules next to it (see ``benchmarks/__init__.py``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a file: make the ``benchmarks`` package importable
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import machine, report  # noqa: E402
from benchmarks.cases import (  # noqa: E402
    COUNT_SHAPES,
    CPU_SHAPES,
    CUDA_SHAPES,
    MODE_LABELS,
    MODES,
    QUICK_SHAPES,
    Case,
    Shape,
    parse_shape,
    shape_text,
)
from benchmarks.contenders import CONTENDERS, make_contenders  # noqa: E402
from benchmarks.memory import Peaks, flatten, measure_cpu_memory, measure_cuda_memory, memory_worker  # noqa: E402
from benchmarks.meta_counts import count_cases  # noqa: E402
from benchmarks.plot import require_matplotlib, write_plot  # noqa: E402
from benchmarks.timing import MIN_ROUNDS, Timing, time_case  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench_ssim.py",
        description=(
            "Time torchmetrics' structural_similarity_index_measure unpatched and patched by ssim_patch, "
            "and kornia / pytorch-msssim when importable, forward (no grad) and forward+backward, on CPU "
            "and CUDA. Prints the medians and ratios and can write them as Markdown and a bar chart. "
            "With --count, counts the aten ops and bytes written on device='meta' instead."
        ),
        epilog=(
            f"Default shapes: CPU {', '.join(map(shape_text, CPU_SHAPES))}; CUDA also 16x3x512x512; "
            f"--count {', '.join(map(shape_text, COUNT_SHAPES))}. "
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
        "--count",
        action="store_true",
        help=(
            "count instead of timing: aten ops dispatched, ops that write (kernel launches on CUDA) and "
            "bytes written by the unpatched and the patched call on device='meta' (seconds); with --out, "
            "replaces that section of the file and keeps the rest"
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
        help="measure this shape instead of the defaults (repeatable; 5 numbers for 3-D)",
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
    return parser


def log(message: str) -> None:
    """Progress and notes go to stderr; tables to stdout."""
    print(message, file=sys.stderr, flush=True)


def run_count(args: argparse.Namespace, modes: Sequence[str]) -> int:
    """``--count``: the launch/byte table on device='meta', printed and written to ``--out``."""
    shapes: Sequence[Shape] = args.shape or COUNT_SHAPES
    rows = count_cases(shapes, modes)
    provenance = [
        f"- Date: {machine.utc_now()}; command: `{machine.command_line('bench_ssim.py')}`",
        f"- {machine.versions_line(())}",
        machine.source_line(),
    ]
    print(report.plain(report.count_table(rows)))
    print("\n(all ops, ops that write, MiB written: unpatched / patched; see --out for the method)")
    if args.out is not None:
        report.write_count_section(args.out, report.count_section(rows, provenance))
        log(f"wrote the section {report.COUNT_HEADING!r} of {args.out}")
    failing = sum(not row.floor_holds() for row in rows)
    print(
        f"the launch/byte floor (patched <= unpatched in all three): {len(rows) - failing} of {len(rows)} rows hold"
    )
    return 0


def timing_header(args: argparse.Namespace, devices: list[str], load: tuple[str, str]) -> list[str]:
    """The Markdown bullets that head a timing report."""
    cap = ""
    if args.max_seconds is not None:
        cap = f"; fewer where a case ran past --max-seconds {args.max_seconds:g}, see the rounds column"
    lines = [
        f"- Date: {machine.utc_now()}",
        f"- Command: `{machine.command_line('bench_ssim.py')}`",
        *machine.machine_lines(),
        f"- Load average (1 min) before/after: {load[0]} / {load[1]}",
        f"- Rounds: {args.rounds} interleaved (rotating order{cap}), warm-up calls: {args.warmup}; float32",
    ]
    if args.quick:
        lines.append(
            "- --quick: tiny shapes, CPU memory measured in the benchmark's own process; not a result"
        )
    if any(d.startswith("cuda") for d in devices):
        lines.append(machine.gpu_line())
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    modes = MODES if args.mode == "both" else (args.mode,)
    if args.count:
        return run_count(args, modes)
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
        require_matplotlib()  # fail before the timings, not after them

    devices = ["cpu"] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append("cuda")
    elif args.device == "cuda":
        raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine")
    torch.set_num_threads(args.threads)

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

    load_before = machine.load_average()
    memory: Peaks = {}
    if not args.no_memory:
        names = [
            n for n in (("unpatched", "patched") if args.quick else CONTENDERS) if not contenders[n].missing
        ]
        cpu_cases = [c for c in cases if c.device == "cpu"]
        if cpu_cases:
            if args.quick:  # keeps the method working without the seconds of fresh interpreters
                log("measuring CPU peak memory in this process (--quick)...")
                memory.update(flatten(memory_worker(names, cpu_cases, args.threads), log))
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
    load = (load_before, machine.load_average())

    speed = report.speed_table(cases, timings)
    mem = report.memory_table(cases, memory)
    detail = report.detail_table(cases, timings)
    header = timing_header(args, devices, load)
    for line in header:
        print(line)
    print()
    print(report.plain(speed))
    if len(mem) > 1:
        print("\nPeak extra memory of one call (MiB):")
        print(report.plain(mem))
    for note in notes:
        print(f"note: {note}")

    if args.out is not None:
        text = ["# SSIM benchmark: torchmetrics unpatched vs ssim_patch vs kornia vs pytorch-msssim", ""]
        text += header
        text += ["", "## Time per call (median, ms) and ratios", "", report.markdown(speed), ""]
        if len(mem) > 1:
            text += ["## Peak extra memory of one call (MiB)", "", report.markdown(mem), ""]
        if notes:
            text += [f"Note: {note}." for note in notes] + [""]
        text += ["## Method", "", report.TIMING_METHOD, "", "## Spread and values", ""]
        text += [report.markdown(detail), ""]
        report.write_timing_report(args.out, "\n".join(text))
        log(f"wrote {args.out}")
    if args.plot is not None:
        write_plot(args.plot, cases, timings)
        log(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
