"""``ssim-patch check --plot FILE.png``: the unpatched and patched SSIM maps of the zeroed-border example."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import ssim_patch
from ssim_patch import _patcher, _plot, cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def maps() -> _plot.BorderMaps:
    before = _patcher._snapshot()
    maps = _plot.border_maps(*cli._border_example())
    assert _patcher._snapshot() == before
    return maps


@pytest.fixture
def one_example(monkeypatch):
    """Only the first built-in example in the check: test_cli checks them all."""
    examples = cli._examples
    monkeypatch.setattr(cli, "_examples", lambda padding: examples(padding)[:1])


def _png(path) -> bytes:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 20_000  # four 24x24-or-larger maps, titles and a colorbar: not an empty canvas
    return data


def test_check_plot_writes_a_png(tmp_path, capsys, one_example):
    pytest.importorskip("matplotlib")
    before = _patcher._snapshot()
    path = tmp_path / "border.png"
    assert cli.main(["check", "--plot", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.rstrip().splitlines()[-1] == f"plot: wrote {path}"
    assert err == ""
    _png(path)
    assert _patcher._snapshot() == before


def test_check_json_plot_keeps_stdout_json(tmp_path, capsys, monkeypatch, maps):
    pytest.importorskip("matplotlib")
    report = cli.Report(ssim_patch=ssim_patch.__version__, supported=True, ok=True)
    monkeypatch.setattr(cli, "run_check", lambda padding: report)
    monkeypatch.setattr(_plot, "border_maps", lambda *args, **kwargs: maps)
    path = tmp_path / "border.png"
    assert cli.main(["check", "--json", "--plot", str(path)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["ok"]
    assert err == f"plot: wrote {path}\n"
    _png(path)


def test_missing_matplotlib_fails_with_one_line_before_the_check(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ModuleNotFoundError
    monkeypatch.setattr(cli, "run_check", lambda padding: pytest.fail("the check ran without matplotlib"))
    path = tmp_path / "border.png"
    assert cli.main(["check", "--plot", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "ssim-patch check --plot: matplotlib is not installed: pip install 'ssim-patch[plot]'\n"
    assert not path.exists()


def test_an_unwritable_path_fails_with_one_line(tmp_path, monkeypatch, maps):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(_plot, "border_maps", lambda *args, **kwargs: maps)
    path = tmp_path / "missing-dir" / "border.png"
    report = cli.Report(ssim_patch=ssim_patch.__version__, supported=True)
    error = cli._draw_plot(str(path), "same", report)
    assert error is not None and error.startswith(f"cannot draw {path}: FileNotFoundError")
    assert "\n" not in error


def test_border_maps_show_what_each_score_counts(maps):
    """On releases with the border crop the unpatched score leaves a 5-px frame of the map out
    (11-tap Gaussian window); patched, the whole map counts and the score is the SPEC's value."""
    cropped = "border-crop" in ssim_patch.status().upstream_bugs
    assert maps.unpatched.crop == (5 if cropped else 0)
    assert maps.unpatched.counted(maps.image) == ((5, 251) if cropped else (0, 256))
    assert abs(maps.unpatched.score - (0.99996 if cropped else 0.98349)) < 1e-5
    assert maps.patched.crop == 0 and maps.patched.counted(maps.image) == (0, 256)
    assert abs(maps.patched.score - cli.ZEROED_BORDER_SAME) < 1e-5
    # The map torchmetrics returns unpatched is uncropped: only its score leaves the frame out.
    assert maps.same_map is not None and maps.same_map < 1e-4


def test_a_valid_map_counts_the_inner_part_of_the_image():
    panel = _plot.Panel("patched, padding='valid'", 0.99996, torch.zeros(1, 1, 246, 246), crop=0)
    assert panel.counted((3, 3, 256, 256)) == (5, 251)
    assert _plot._canvas(panel, (3, 3, 256, 256)).isnan().sum() == 256 * 256 - 246 * 246
