"""``ssim-patch check --plot FILE.png``: what the patch changes on the installed release, unpatched and
patched, on the zeroed-border example (the SSIM maps up to 1.4.1, the contrast-sensitivity maps after)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import ssim_patch
from ssim_patch import _patcher, _plot, _selfcheck, cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


CROPPED_SSIM = "border-crop" in ssim_patch.status().upstream_bugs
CROPPED_CONTRAST = "cs-crop" in ssim_patch.status().upstream_bugs


@pytest.fixture(scope="module")
def maps() -> _plot.BorderMaps:
    """The figure ``check --plot`` draws on the installed release."""
    before = _patcher._snapshot()
    maps = _plot.border_maps(*_selfcheck._border_example())
    assert _patcher._snapshot() == before
    return maps


@pytest.fixture(scope="module")
def ssim_maps(maps) -> _plot.BorderMaps:
    """The SSIM maps, whatever the release."""
    return (
        maps if maps.quantity == "ssim" else _plot.border_maps(*_selfcheck._border_example(), quantity="ssim")
    )


@pytest.fixture
def one_example(monkeypatch):
    """Only the first built-in example in the check: test_cli checks them all."""
    examples = _selfcheck._examples
    monkeypatch.setattr(_selfcheck, "_examples", lambda padding: examples(padding)[:1])


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
    report = _selfcheck.Report(ssim_patch=ssim_patch.__version__, supported=True, ok=True)
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
    assert err == f"ssim-patch check --plot: matplotlib is not installed: {_plot.INSTALL_HINT}\n"
    assert not path.exists()


def test_the_matplotlib_hint_works_without_a_published_release(capsys):
    """``pip install 'ssim-patch[plot]'`` fails until ssim-patch is on an index: the hint names
    commands that work in any environment and in a checkout."""
    assert _plot.INSTALL_HINT == (
        "pip install matplotlib (from a checkout of ssim-patch also: pip install -e '.[plot]')"
    )
    with pytest.raises(SystemExit):
        cli.main(["check", "--help"])
    help_text = capsys.readouterr().out
    assert "--plot FILE.png" in help_text and "ssim-patch[plot]" not in help_text


def test_an_unwritable_path_fails_with_one_line(tmp_path, monkeypatch, maps):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(_plot, "border_maps", lambda *args, **kwargs: maps)
    path = tmp_path / "missing-dir" / "border.png"
    report = _selfcheck.Report(ssim_patch=ssim_patch.__version__, supported=True)
    error = _selfcheck.draw_plot(str(path), "same", report)
    assert error is not None and error.startswith(f"cannot draw {path}: FileNotFoundError")
    assert "\n" not in error


def test_the_figure_shows_what_the_release_gets_wrong(maps):
    """The SSIM maps where the release crops them; else the contrast maps where those are cropped."""
    assert maps.quantity == ("contrast" if CROPPED_CONTRAST and not CROPPED_SSIM else "ssim")


def test_ssim_maps_show_what_each_score_counts(ssim_maps):
    """On releases with the border crop the unpatched score leaves a 5-px frame of the map out
    (11-tap Gaussian window); patched, the whole map counts and the score is the corrected value (0.98349)."""
    maps = ssim_maps
    assert maps.quantity == "ssim" and maps.label == "SSIM"
    assert maps.unpatched.crop == (5 if CROPPED_SSIM else 0)
    assert maps.unpatched.counted(maps.image) == ((5, 251) if CROPPED_SSIM else (0, 256))
    assert abs(maps.unpatched.score - (0.99996 if CROPPED_SSIM else 0.98349)) < 1e-5
    assert maps.patched.crop == 0 and maps.patched.counted(maps.image) == (0, 256)
    assert abs(maps.patched.score - _selfcheck.ZEROED_BORDER_SAME) < 1e-5
    assert maps.ssim == (maps.unpatched.score, maps.patched.score)
    # The map torchmetrics returns unpatched is uncropped: only its score leaves the frame out.
    assert maps.same_map is not None and maps.same_map < 1e-4
    text = "\n".join(_plot.notes(maps))
    if CROPPED_SSIM:
        assert "the 5-px frame of the map that the unpatched SSIM crops away" in text
    else:
        assert f"torchmetrics {maps.release} counts the whole SSIM map upstream: no border is lost." in text


@pytest.mark.skipif(not CROPPED_CONTRAST, reason="this release does not crop MS-SSIM's contrast term")
def test_contrast_maps_show_what_each_value_counts(maps):
    """torchmetrics 1.4.2+ crops the contrast term MS-SSIM multiplies over its scales: its value is
    the mean of the inner 246x246 of the map; patched, of the whole map."""
    assert maps.quantity == "contrast" and maps.label == "contrast term"
    assert maps.unpatched.crop == 5 and maps.unpatched.counted(maps.image) == (5, 251)
    assert maps.patched.crop == 0 and maps.patched.counted(maps.image) == (0, 256)
    assert abs(maps.unpatched.score - 0.99996) < 1e-5
    assert abs(maps.patched.score - 0.98433) < 1e-5
    # SSIM itself is right upstream on these releases; MS-SSIM is not (README's table).
    assert (
        abs(maps.ssim[0] - _selfcheck.ZEROED_BORDER_SAME) < 1e-5
        and abs(maps.ssim[1] - _selfcheck.ZEROED_BORDER_SAME) < 1e-5
    )
    assert maps.ms_ssim is not None
    assert abs(maps.ms_ssim[0] - 0.97675) < 1e-5 and abs(maps.ms_ssim[1] - 0.93447) < 1e-5
    assert [s.size for s in maps.scales] == [(256, 256), (128, 128), (64, 64), (32, 32)]
    assert maps.scales[0].unpatched == maps.unpatched.score and maps.scales[0].patched == maps.patched.score
    assert all(s.patched < s.unpatched - 0.01 for s in maps.scales)
    text = "\n".join(_plot.notes(maps))
    assert "the 5-px frame of the map that the unpatched contrast term crops away" in text
    assert "the SSIM already counts the whole map (0.98349 unpatched and patched)" in text
    assert "256x256: 0.99996 unpatched, 0.98433 patched" in text
    assert "MS-SSIM: 0.97675 unpatched, 0.93447 patched." in text


def test_contrast_map_is_what_the_patched_contrast_term_averages():
    """The map drawn is the patch's: its mean per image is the patched contrast term."""
    preds, target = _selfcheck._border_example()
    with ssim_patch.patched():
        _, cs = ssim_patch.ssim(preds, target, return_contrast_sensitivity=True, reduction="none")
    drawn = _plot.contrast_map(preds, target)
    assert drawn.shape == preds.shape
    assert (drawn.double().mean((1, 2, 3)) - cs.double()).abs().max() < 1e-6


def test_the_ssim_figure_is_drawn_on_any_release(tmp_path, ssim_maps):
    pytest.importorskip("matplotlib")
    path = tmp_path / "ssim.png"
    _plot.draw(ssim_maps, str(path))
    _png(path)


def test_a_valid_map_counts_the_inner_part_of_the_image():
    panel = _plot.Panel("patched, padding='valid'", 0.99996, torch.zeros(1, 1, 246, 246), crop=0)
    assert panel.counted((3, 3, 256, 256)) == (5, 251)
    assert _plot._canvas(panel, (3, 3, 256, 256)).isnan().sum() == 256 * 256 - 246 * 246
