"""One GPU check of the patched SSIM, in about 6 minutes on one GPU (``--budget``, default 360 s).

(a) No host sync: ``torch.cuda.set_sync_debug_mode("error")`` around the patched functional SSIM
    (2-D and 3-D), the ``StructuralSimilarityIndexMeasure`` Metric class (``update`` + ``compute``)
    and MS-SSIM, forward and forward+backward, with ``data_range`` None, a float, a (lo, hi) tuple
    and a CUDA tensor; unpatched torchmetrics alongside, for comparison.
(b) Accuracy in float32 against float64 references (``ssim_patch.ssim`` on float64 inputs on the
    device, and the independent numpy reference ``tests/helpers/reference.py``), with TF32 on and
    off, and the caller's TF32 settings unchanged by the call.
(c) Times of unpatched torchmetrics, patched, kornia, pytorch-msssim, fused-ssim and fussim
    (those importable) at 16x3x512x512, 5x3x1080x1920 and 2x1x96x96x96, fwd and fwd+bwd: warm-ups,
    interleaved rounds bracketed by ``torch.cuda.synchronize()``, medians; rounds capped by time.

(d) The CUDA kernels one call launches (profiler), beside the meta count.
(e) The Triton backend (``ssim_patch.backends.triton``): a sweep of its tile sizes and warps (each
    config compiled once, the fastest kept for the rest of the run), and the issue's table: times
    against unpatched torchmetrics, the conv backend, kornia and pytorch-msssim, the fraction of
    the memory floor reached (bytes that must move / (time x 4.8 TB/s)) and the peak extra memory.

Each part is a module of its own, by what it measures: (a) ``gpu_host_sync``, (b) ``gpu_accuracy``,
(c) ``gpu_timings``, (d) ``gpu_launches``, (e) ``gpu_tile_sweep`` and ``gpu_triton_table``, sharing
``gpu_utils``; this script runs them and writes the report. They run in the order (a), (b), (d),
(e) (the sweep, then the table), (c): the sweep gets about a
third of the time left after (d), the table about 40% of what is then left, and (c) the rest, each
timing round stopping in time. ``python -m pytest -m cuda`` (tests/test_gpu.py) runs (a) and (b) as
pass/fail tests.

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
import os
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a file: make the ``benchmarks`` package importable
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import machine, report  # noqa: E402
from benchmarks.cases import Case  # noqa: E402
from benchmarks.gpu_accuracy import ACCURACY_NOTES, accuracy_section  # noqa: E402
from benchmarks.gpu_host_sync import SYNC_NOTES, sync_section  # noqa: E402
from benchmarks.gpu_launches import LAUNCH_NOTES, launches_section  # noqa: E402
from benchmarks.gpu_tile_sweep import sweep_section  # noqa: E402
from benchmarks.gpu_timings import TIMED, TIMING_NOTES, timing_section  # noqa: E402
from benchmarks.gpu_triton_table import TRITON_NOTES, triton_section  # noqa: E402
from benchmarks.gpu_utils import log, tf32_state  # noqa: E402
from benchmarks.memory import Peaks  # noqa: E402
from benchmarks.timing import Timing, failure  # noqa: E402

FAILED = 3  # exit status when a check of (a) or (b) fails


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


if __name__ == "__main__":
    sys.exit(main())
