"""benchmarks/bench_tiny.py keeps working: one --quick run (a dry run of every section, not a timing test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_tiny.py"


def test_quick_run_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "tiny.md"
    command = [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--clock", "cpu", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    for heading in (
        "## 1. Whole calls, CPU, 1 thread(s), 1x1x16x16",
        "## 2. Breakdown of the patched functional SSIM, CPU, 1 thread(s)",
        "## 3. Dispatch, CPU, 1 thread(s)",
        "## 4. Backends at small sizes, CPU, 1 thread(s)",
        "## 5. The conv and Triton routes: launches, Python calls, host time",
        "## 6. Triton's launcher on CUDA",
    ):
        assert heading in text
    lines = text.splitlines()
    for call in ("SSIM functional, fwd", "SSIM functional, fwd+bwd", "SSIM Metric update+compute, fwd"):
        assert any(line.startswith(f"| {call} |") for line in lines), call
    assert any(line.startswith("| fwd | the backend's own work |") for line in lines)
    assert any(line.startswith("| fwd+bwd | custom op |") or "autograd.Function" in line for line in lines)
    # The Triton route runs with its kernels recorded: one launch forward, two with the backward.
    row = next(line for line in lines if line.startswith("| SSIM functional, fwd |") and "(0." in line)
    assert row.count("|") == 7  # call, unpatched, conv, triton, triton's time, conv's time on meta
    assert " / " in row.split("|")[-2]
