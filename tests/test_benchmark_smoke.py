"""The benchmark script keeps working: one --quick run on tiny shapes (not a timing test)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_ssim.py"


def test_quick_benchmark_writes_markdown(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    # One thread: on a busy CI machine two OpenMP threads per process can stall each other.
    command = [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--threads", "1", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "unpatched/patched" in done.stdout

    text = out.read_text()
    assert "| device | shape | mode | unpatched ms | patched ms |" in text
    rows = [line for line in text.splitlines() if line.startswith("| cpu |")]
    assert any("2x3x32x32" in row and "| fwd |" in row for row in rows)
    assert any("2x1x16x16x16" in row and "| fwd+bwd |" in row for row in rows)
    assert "## Peak extra memory of one call (MiB)" in text
    assert "torch " in text and "torchmetrics " in text


def test_help_lists_the_options() -> None:
    spec = importlib.util.spec_from_file_location("bench_ssim", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    text = module.build_parser().format_help()
    for option in ("--quick", "--device", "--threads", "--out", "--plot"):
        assert option in text
    assert "--memory-worker" not in text
