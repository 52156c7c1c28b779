"""Patched SSIM on CPU against OpenCV's recipe, quiet and beside competing work (issue 24).

OpenCV's recipe is what a CPU user would pick instead: ``cv2.GaussianBlur`` (11x11, sigma 1.5,
``BORDER_REFLECT_101``, which is torch's reflect) of x, y, x², y², xy per plane in float32, the
formula in numpy, the mean of the whole map (the corrected SSIM crops nothing). The script
checks that it gives the patched numbers (within 1e-4) before timing anything.

For each condition (quiet; beside a single-threaded busy loop; beside a process whose 8 Python
threads run small torch ops: the script starts and stops them itself), the contenders at each
thread count (torch's default, and 1; OpenCV is given the same) run in interleaved rounds in one
process, the order rotating, so that a ratio compares calls made in the same minutes: OpenCV's
forward, the patched forward and forward+backward, and torchmetrics unpatched (at 8x3x256x256
unless ``--unpatched-all``). It prints medians, the ratios
and issue 24's floors, with the machine and the load average beside each block.

    python benchmarks/bench_cpu.py              # minutes
    python benchmarks/bench_cpu.py --quick      # a smoke run on tiny shapes (seconds)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a file: make the ``benchmarks`` package importable
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from benchmarks import machine  # noqa: E402
from benchmarks.contenders import patched_state, torchmetrics_ssim, unpatched_state  # noqa: E402

Shape = tuple[int, int, int, int]
SHAPES: tuple[Shape, ...] = ((8, 3, 256, 256), (1, 1, 1024, 1024), (32, 1, 64, 64), (1, 3, 1080, 1920))
QUICK_SHAPES: tuple[Shape, ...] = ((2, 3, 32, 32), (1, 1, 64, 48))
#: Where the unpatched torchmetrics is timed by default (the README's ratio, the floor's shape).
UNPATCHED_SHAPE: Shape = (8, 3, 256, 256)
CONDITIONS = ("quiet", "busy loop", "8-thread torch job")
#: The competing work, each a child process that runs until it is stopped.
COMPETITORS = {
    "busy loop": "while True:\n    pass\n",
    "8-thread torch job": (
        "import threading, torch\n"
        "def work():\n"
        "    a, b = torch.rand(64, 64), torch.rand(64, 64)\n"
        "    while True:\n"
        "        torch.add(a, b); (a * b).sum(); torch.mm(a, b)\n"
        "for _ in range(8):\n"
        "    threading.Thread(target=work, daemon=True).start()\n"
        "threading.Event().wait()\n"
    ),
}
C1, C2 = 0.01**2, 0.03**2  # data range 1
TOLERANCE = 1e-4


#: Everything printed, for ``--out``.
_REPORT: list[str] = []


def say(text: str) -> None:
    """Print ``text`` and keep it for the report."""
    print(text, flush=True)
    _REPORT.append(text)


def shape_text(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def parse_shape(text: str) -> Shape:
    """``"8x3x256x256"`` as a shape of four sizes."""
    sizes = tuple(int(v) for v in text.lower().split("x"))
    if len(sizes) != 4 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected NxCxHxW, got {text!r}")
    return sizes


# --- OpenCV's recipe ----------------------------------------------------------------------------


def opencv_ssim(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-image SSIM of float32 ``(N, C, H, W)`` arrays, plane by plane with ``cv2.GaussianBlur``."""
    import cv2

    def blur(t: np.ndarray) -> np.ndarray:
        blurred: np.ndarray = cv2.GaussianBlur(t, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT_101)
        return blurred

    n, c = x.shape[:2]
    out = np.empty(n, dtype=np.float64)
    for i in range(n):
        total = 0.0
        for j in range(c):
            a, b = x[i, j], y[i, j]
            mu_a, mu_b = blur(a), blur(b)
            mu_aa, mu_bb, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
            var_a, var_b, cov = blur(a * a) - mu_aa, blur(b * b) - mu_bb, blur(a * b) - mu_ab
            s = ((2 * mu_ab + C1) * (2 * cov + C2)) / ((mu_aa + mu_bb + C1) * (var_a + var_b + C2))
            total += float(s.mean(dtype=np.float64))
        out[i] = total / c
    return out


def opencv_missing() -> Optional[str]:
    try:
        import cv2  # noqa: F401
    except Exception as exc:
        return f"OpenCV not importable ({type(exc).__name__}: {exc}); pip install -e '.[bench]'"
    return None


# --- the contenders -----------------------------------------------------------------------------


@dataclass
class Contender:
    name: str
    call: Callable[[], Any]
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def _timed(
    fn: Callable[[], Any], context: Callable[[], contextlib.AbstractContextManager[Any]]
) -> Callable[[], Any]:
    def call() -> float:
        with context():
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start

    return call


def contenders(shape: Shape, unpatched: bool) -> list[Contender]:
    """The calls timed at ``shape``, on one pair of float32 images."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g)
    y = (0.6 * x + 0.4 * torch.rand(shape, generator=g)).contiguous()
    xn, yn = x.numpy(), y.numpy()
    xg = x.clone().requires_grad_()

    def forward() -> Tensor:
        with torch.no_grad():
            return torchmetrics_ssim(x, y)

    def loss() -> None:
        xg.grad = None
        (1.0 - torchmetrics_ssim(xg, y)).backward()  # type: ignore[no-untyped-call]

    found = []
    if opencv_missing() is None:
        found.append(
            Contender("opencv fwd", _timed(lambda: opencv_ssim(xn, yn).mean(), contextlib.nullcontext))
        )
    found.append(Contender("patched fwd", _timed(forward, patched_state)))
    found.append(Contender("patched fwd+bwd", _timed(loss, patched_state)))
    if unpatched:
        found.append(Contender("unpatched fwd", _timed(forward, unpatched_state)))
        found.append(Contender("unpatched fwd+bwd", _timed(loss, unpatched_state)))
    return found


def check_values(shape: Shape) -> str:
    """OpenCV's per-image SSIM against the patched one; raises where they differ by over 1e-4."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g)
    y = (0.6 * x + 0.4 * torch.rand(shape, generator=g)).contiguous()
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    with patched_state():
        per_image = tm_ssim(x, y, data_range=1.0, reduction="none")
    assert isinstance(per_image, Tensor)
    patched = per_image.double().numpy()
    cv = opencv_ssim(x.numpy(), y.numpy())
    diff = float(np.abs(patched - cv).max())
    if diff > TOLERANCE:
        raise SystemExit(
            f"OpenCV and patched SSIM differ by {diff:.2e} at {shape_text(shape)} (over {TOLERANCE})"
        )
    return f"{shape_text(shape)}: max |patched - OpenCV| = {diff:.1e}"


# --- conditions ---------------------------------------------------------------------------------


@contextlib.contextmanager
def condition(name: str, settle: float) -> Iterator[None]:
    """The competing work of condition ``name`` running beside the block (none for "quiet")."""
    if name == "quiet":
        yield
        return
    child = subprocess.Popen([sys.executable, "-c", COMPETITORS[name]])
    try:
        time.sleep(settle)
        yield
    finally:
        child.kill()
        child.wait()


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """torch's and OpenCV's thread counts set to ``count`` inside (this script is the user)."""
    cv2: Any = importlib.import_module("cv2") if opencv_missing() is None else None
    before = torch.get_num_threads()
    cv_before = None if cv2 is None else cv2.getNumThreads()
    torch.set_num_threads(count)
    if cv2 is not None:
        cv2.setNumThreads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if cv2 is not None:
            cv2.setNumThreads(cv_before)


def run_rounds(found: list[tuple[int, Contender]], rounds: int) -> None:
    """Each ``(thread count, contender)`` once as a warm-up, then ``rounds`` rounds, the order
    rotating: the thread counts are compared in the same conditions, not in blocks minutes apart."""
    for count, c in found:  # warm-up: scratch, the patch's first call
        with threads(count):
            c.call()
    for r in range(rounds):
        for i in range(len(found)):
            count, c = found[(i + r) % len(found)]
            with threads(count):
                c.times.append(c.call())


# --- the run ------------------------------------------------------------------------------------

Results = dict[tuple[str, int, str], dict[str, float]]  # (condition, threads, shape) -> medians


def measure(
    shapes: Sequence[Shape], rounds: int, counts: Sequence[int], settle: float, all_unpatched: bool
) -> Results:
    results: Results = {}
    for name in CONDITIONS:
        with condition(name, settle):
            rows: dict[int, list[str]] = {count: [] for count in counts}
            for shape in shapes:
                unpatched = all_unpatched or shape in (UNPATCHED_SHAPE, *QUICK_SHAPES)
                found = {count: contenders(shape, unpatched) for count in counts}
                run_rounds([(count, c) for count in counts for c in found[count]], rounds)
                for count in counts:
                    medians = {c.name: c.median * 1e3 for c in found[count]}
                    results[(name, count, shape_text(shape))] = medians
                    rows[count].append(_row(shape_text(shape), medians))
            load = machine.load_average()
        for count in counts:
            say(f"\n## {name}, {count} thread{'s' * (count > 1)} (load at the end {load})")
            say("| shape | " + " | ".join(_COLUMNS) + " |")
            say("|---" * (len(_COLUMNS) + 1) + "|")
            for row in rows[count]:
                say(row)
    return results


_COLUMNS = (
    "OpenCV fwd ms",
    "patched fwd ms",
    "/ OpenCV",
    "patched fwd+bwd ms",
    "/ OpenCV fwd",
    "unpatched fwd ms",
    "unpatched / patched",
    "unpatched fwd+bwd ms",
    "unpatched / patched",
)


def _row(shape: str, m: dict[str, float]) -> str:
    def ms(key: str) -> str:
        return f"{m[key]:.1f}" if key in m else "-"

    def ratio(a: str, b: str) -> str:
        return f"{m[a] / m[b]:.2f}x" if a in m and b in m else "-"

    cells = [
        ms("opencv fwd"),
        ms("patched fwd"),
        ratio("patched fwd", "opencv fwd"),
        ms("patched fwd+bwd"),
        ratio("patched fwd+bwd", "opencv fwd"),
        ms("unpatched fwd"),
        ratio("unpatched fwd", "patched fwd"),
        ms("unpatched fwd+bwd"),
        ratio("unpatched fwd+bwd", "patched fwd+bwd"),
    ]
    return f"| {shape} | " + " | ".join(cells) + " |"


def floors(results: Results, default: int) -> list[str]:
    """Issue 24's floors, each PASS or FAIL (or '-' where a number is missing)."""
    lines = []

    def check(text: str, ok: Optional[bool]) -> None:
        lines.append(f"- {'-' if ok is None else 'PASS' if ok else 'FAIL'}: {text}")

    for (cond, count, shape), m in sorted(results.items()):
        cv, fwd, both = m.get("opencv fwd"), m["patched fwd"], m["patched fwd+bwd"]
        if count != default:
            continue
        if cond == "quiet" and cv is not None:
            check(
                f"quiet {shape}: forward {fwd:.1f} ms <= OpenCV {cv:.1f} ms (aim 0.7x: {fwd / cv:.2f}x)",
                fwd <= cv,
            )
            check(f"quiet {shape}: fwd+bwd {both:.1f} ms <= 2x OpenCV's forward", both <= 2 * cv)
        if cond == "busy loop" and cv is not None:
            check(f"beside a busy loop {shape}: forward {fwd:.1f} ms <= OpenCV {cv:.1f} ms", fwd <= cv)
        one = results.get((cond, 1, shape))
        if cond != "quiet" and one is not None and default > 1:
            for key in ("patched fwd", "patched fwd+bwd"):
                check(
                    f"{cond} {shape}: {key} with {default} threads {m[key]:.1f} ms <= 1.5x 1 thread {one[key]:.1f} ms",
                    m[key] <= 1.5 * one[key],
                )
        if "unpatched fwd" in m and shape == shape_text(UNPATCHED_SHAPE):
            check(
                f"{cond} {shape}: unpatched / patched forward {m['unpatched fwd'] / fwd:.1f}x >= 5x",
                m["unpatched fwd"] >= 5 * fwd,
            )
            check(
                f"{cond} {shape}: unpatched / patched fwd+bwd {m['unpatched fwd+bwd'] / both:.1f}x >= 6x",
                m["unpatched fwd+bwd"] >= 6 * both,
            )
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench_cpu.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 2 rounds: a smoke run (seconds)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per block (default 7)")
    parser.add_argument(
        "--unpatched-all", action="store_true", help="time unpatched torchmetrics at every shape"
    )
    parser.add_argument(
        "--shape",
        action="append",
        type=parse_shape,
        help="an NxCxHxW shape to time instead of the default four (repeatable)",
    )
    parser.add_argument("--out", type=Path, help="also write the report (Markdown) here")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    shapes = tuple(args.shape) if args.shape else QUICK_SHAPES if args.quick else SHAPES
    rounds = 2 if args.quick else args.rounds
    default = torch.get_num_threads()
    counts = sorted({default, 1}, reverse=True)
    header = [
        f"# CPU SSIM: patched vs OpenCV's recipe ({machine.utc_now()})",
        "",
        *machine.machine_lines(),
        f"- opencv-python-headless {machine.package_version('opencv-python-headless')}, numpy {np.__version__}",
        f"- command: {machine.command_line('bench_cpu.py')}",
        f"- load average at start: {machine.load_average()} ({os.cpu_count()} logical CPUs)",
        "- float32, 11x11 Gaussian window (sigma 1.5), data range 1; medians of interleaved rounds",
    ]
    say("\n".join(header))
    missing = opencv_missing()
    if missing is not None:
        say(f"- {missing}: OpenCV's column is left out")
    else:
        say("\nValues (per image, patched vs OpenCV):")
        for shape in shapes:
            say("- " + check_values(shape))
    results = measure(shapes, rounds, counts, 0.5 if args.quick else 2.0, args.unpatched_all)
    lines = floors(results, default)
    say(f"\n## Issue 24's floors (torch's default {default} threads; load now {machine.load_average()})")
    say("\n".join(lines))
    if args.out is not None:
        args.out.write_text("\n".join(_REPORT) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
