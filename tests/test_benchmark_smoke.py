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


def test_count_writes_its_own_section(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    out.write_text("# Results\n\n## Time per call\n\nkeep me\n")
    command = [sys.executable, str(SCRIPT), "--count", "--mode", "forward", "--shape", "2x1x16x16"]
    for _ in range(2):  # the second run replaces the section instead of adding one
        done = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
    assert "all ops" in done.stdout and "2x1x16x16" in done.stdout

    text = out.read_text()
    assert text.count('## Launches and bytes written on device="meta"') == 1
    assert "## Time per call\n\nkeep me" in text
    row = next(line for line in text.splitlines() if line.startswith("| 2x1x16x16 | fwd |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    unpatched_ops, patched_ops = (int(n) for n in cells[2].split(" / "))
    assert unpatched_ops > 0 and patched_ops > 0


def test_gpu_check_dry_run_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.md"
    script = SCRIPT.parent / "gpu_check.py"
    command = [sys.executable, str(script), "--device", "cpu", "--quick", "--threads", "1", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    # 0: every check holds; 3: a check fails (reported, not a crash); anything else is a crash.
    assert done.returncode in (0, 3), done.stderr[-3000:]

    text = out.read_text()
    for heading in ("## (a) Host syncs", "## (b) Accuracy", "## (c) Time per call"):
        assert heading in text
    assert "| MS-SSIM functional 1x1x48x48 | fwd+bwd | tensor |" in text
    assert "| Metric update+compute 1x1x24x24 | fwd | None |" in text
    assert any(line.startswith("| U(0,1) pair | 1x2x24x24 | on |") for line in text.splitlines())
    assert any(line.startswith("| cpu | 2x1x16x16x16 | fwd+bwd |") for line in text.splitlines())
    assert "Result: (a) " in text


def test_compile_benchmark_renders_rows_and_failures(tmp_path: Path) -> None:
    """bench_compile's table and failure list from made-up results (no child is run)."""
    from benchmarks import bench_compile as bc

    ok = [
        bc.Result(
            "ssim", state, shapes, 10.0 if state == "unpatched" else 8.0, 0.002, 0.0021, 0, 0.0, 1.0, 0.0
        )
        for state in bc.STATES
        for shapes in bc.SHAPES
    ]
    failed = bc._failed("ssim", "unpatched", "dynamic", "TypeError: cannot determine truth value")
    assert failed.error == "TypeError: cannot determine truth value"
    results = [r for r in ok if (r.state, r.shapes) != ("unpatched", "dynamic")] + [failed]
    rows = bc.table(results, ["ssim"])
    static = next(row for row in rows if "| static |" in row)
    assert "**0.80**" in static and "**0.95**" in static and "| 1, 0 |" in static
    out = tmp_path / "compile.md"
    bc.write(out, results, ["ssim"], ("0.1", "0.2"), 60.0, 1)
    text = out.read_text()
    assert "Failures:" in text and "- ssim dynamic unpatched: TypeError: cannot determine truth value" in text
