"""benchmarks/bench_cpu.py keeps working: one --quick run on tiny shapes (not a timing test).

The run starts and stops its competing processes itself; where OpenCV is installed it also
checks OpenCV's SSIM against the patched one (the script exits non-zero where they differ)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_cpu.py"


def test_quick_run_reports_every_condition_and_the_floors(tmp_path: Path) -> None:
    out = tmp_path / "cpu.md"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    for condition in ("quiet", "busy loop", "8-thread torch job"):
        assert f"## {condition}, 1 thread" in text
    assert "| 2x3x32x32 |" in text and "| 1x1x64x48 |" in text
    assert "## Issue 24's floors" in text
    if importlib.util.find_spec("cv2") is not None:
        assert "max |patched - OpenCV|" in text
