"""The offline GPU model (``benchmarks/gpu_model.py``) keeps working: its pieces on fixed inputs,
and (slow) one run on a small shape that compiles the loss's kernels for sm_90. Not a timing test."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_model.py"


def _triton_without_backends() -> bool:
    """Triton before 3.0 (torch 2.0-2.3's) has no ``triton.backends``, which the model's compiler
    driver needs (found without importing triton)."""
    spec = importlib.util.find_spec("triton")
    locations = list(spec.submodule_search_locations or []) if spec else []
    return not any((Path(p) / "backends").is_dir() for p in locations)


pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed"),
    pytest.mark.skipif(_triton_without_backends(), reason="the model needs triton>=3.0 (triton.backends)"),
]


@pytest.fixture(scope="module")
def model() -> Any:
    from benchmarks import gpu_model

    return gpu_model


def test_occupancy(model: Any) -> None:
    """Resident warps per SM from registers (allocated per warp in 256s), warps and shared memory."""
    sm90 = model.ARCHS[90]
    assert model.occupancy(sm90, 128, 16, 4) == (16, "registers")  # 128 x 32 x 16 = 65536
    assert model.occupancy(sm90, 255, 0, 4) == (8, "registers")  # 256 a thread after rounding
    assert model.occupancy(sm90, 168, 0, 4) == (12, "registers")
    assert model.occupancy(sm90, 32, 0, 4) == (64, "warps")
    assert model.occupancy(sm90, 32, 100 * 1024, 4) == (8, "shared memory")  # 2 blocks of 101 KB
    assert model.occupancy(model.ARCHS[89], 32, 0, 4) == (48, "warps")


def test_classes(model: Any) -> None:
    assert [model.opclass(op) for op in ("FFMA", "IMAD.WIDE", "LDG.E", "ULDC.64", "BRA", "MUFU.RCP")] == [
        "fp32",
        "alu",
        "mem",
        "uniform",
        "ctrl",
        "xu",
    ]


LISTING = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;
.L_x_3:
	//## File "/x/_triton_kernels.py", line 111
        /*0010*/                   IADD3 R2, R2, 0x1, RZ ;
.L_x_2:
	//## File "/x/_triton_kernels.py", line 176
        /*0020*/                   FFMA R3, R4, R5, R3 ;
        /*0030*/              @!P1 BRA `(.L_x_1) ;
	//## File "/x/_triton_kernels.py", line 258 inlined at "/x/_triton_kernels.py", line 281
        /*0040*/                   LDG.E R6, desc[UR4][R8.64] ;
.L_x_1:
        /*0050*/               @P0 BRA `(.L_x_2) ;
        /*0060*/               @P2 BRA `(.L_x_3) ;
        /*0070*/                   EXIT ;
"""


def test_hot_loop_is_the_innermost_loop(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The row loop is the innermost backward branch's span; the tile loop's rest is per tile; each
    instruction carries its source lines (its own and where it is inlined)."""
    monkeypatch.setattr(model.kernels, "__file__", "/x/_triton_kernels.py")
    sass = model.parse_sass(LISTING)
    loop = model.hot_loop(sass)
    assert [i.op for i in loop.body] == ["FFMA", "BRA", "LDG.E", "BRA"]
    assert [i.op for i in loop.rest] == ["IADD3", "BRA"]
    assert loop.body[2].lines == (258, 281) and loop.body[0].lines == (176,)
    edge = model.Branch(281, 281, "edge")
    assert model.weight(loop.body[2], [edge], {"edge": 0.25}) == 0.25
    assert model.weight(loop.body[0], [edge], {"edge": 0.25}) == 1.0


def test_the_backward_edge_rows_are_counted_where_they_run(model: Any) -> None:
    """The backward's table rows (``(low <= PAD_H) | (low >= bottom)``) run only within a window of
    the image's top and bottom: one 40-row tile, 11 taps, reflect: low in -10..39 (50 rows), of
    which -10..5 and 24..39 (bottom = max(40 - 11 - 5, 6) = 24) take the table, 32 of 50. The sweep
    once left ``bottom`` out and the model counted those rows' instructions on every row."""
    blur = model._filters.Blur(((1.0,) * 11, (1.0,) * 11), "same")
    spec = model.Spec("loss", "float32", "backward (interior)", (), 40, 128, 4, 11, (1,))
    freq = model.frequencies(spec, (1, 1, 40, 400), blur)
    assert freq["(low <= PAD_H) | (low >= bottom)"] == 32 / 50


@pytest.mark.slow
def test_model_runs_on_a_small_shape(tmp_path: Path) -> None:
    """The loss's forward and backward (each in edge and interior strips) for sm_90 at 2x3x40x800 (a
    cold Triton cache: about 15 s of CPU): registers, occupancy, the hot loop and predicted times."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    out = tmp_path / "model.md"
    command = [sys.executable, str(SCRIPT), "--shape", "2x3x40x800", "--arch", "90", "--dtype", "float32"]
    command += ["--cases", "loss", "--jobs", "1", "--md", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| loss ")]
    assert [row.split("|")[1].strip() for row in rows] == [
        "loss forward (edge strips)",
        "loss forward (interior)",
        "loss backward (edge strips)",
        "loss backward (interior)",
    ]
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[1:3] == ["float32", "sm_90"]
        assert 32 <= int(cells[3]) <= 255  # registers
        assert cells[6].endswith(")") and int(cells[6].split()[0]) > 0  # warps per SM (limit)
        assert int(cells[7]) > 100  # the hot loop's instructions
        assert float(cells[13]) > 0  # H200 ms
    assert "loss forward + backward, float32: H100" in out.read_text()
    assert "Assumptions:" in done.stdout
