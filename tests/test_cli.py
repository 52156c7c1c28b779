"""The ``ssim-patch`` command: ``check`` and ``matrix``."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
from packaging.version import Version

import ssim_patch
from ssim_patch import UntestedReleaseWarning, _patcher, _selfcheck, cli
from tests.helpers.fresh_interpreter import unpatched_environ
from tests.helpers.routes import expected_route

KEYS = {
    "ssim_patch",
    "torchmetrics",
    "supported",
    "tested",
    "hook",
    "hooks",
    "upstream_bugs",
    "warnings",
    "padding",
    "applied",
    "places",
    "uqi_places",
    "backend",
    "backend_for",
    "route",
    "route_why",
    "checks",
    "verified",
    "ok",
    "error",
}
CHECK_KEYS = {
    "name",
    "api",
    "unpatched",
    "unpatched_error",
    "patched",
    "patched_error",
    "reference",
    "abs_error",
    "ok",
    "note",
}


def test_python_m_ssim_patch_check_json():
    result = subprocess.run(
        [sys.executable, "-m", "ssim_patch", "check", "--json"],
        env=unpatched_environ(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == KEYS
    assert report["ok"] and report["verified"] and report["applied"] and report["error"] is None
    assert report["torchmetrics"] == str(_patcher._release())
    assert report["backend"] == "auto" and report["backend_for"]["cpu"] == "cpu"  # SSIM_PATCH_* unset
    assert (report["route"], report["route_why"]) == expected_route()
    assert report["supported"] and report["hook"].startswith("torchmetrics.functional.image.ssim._ssim_")
    assert {b["id"] for b in report["upstream_bugs"]} == set(ssim_patch.status().upstream_bugs)
    assert all(b["description"] for b in report["upstream_bugs"])
    assert len(report["checks"]) == 10 and all(set(c) == CHECK_KEYS and c["ok"] for c in report["checks"])
    apis = {c["api"] for c in report["checks"]}
    assert {"StructuralSimilarityIndexMeasure", "MultiScaleStructuralSimilarityIndexMeasure"} <= apis
    assert {"universal_image_quality_index", "UniversalImageQualityIndex"} <= apis
    border = report["checks"][0]
    assert abs(border["patched"] - 0.98349) < 1e-5 and abs(border["reference"] - 0.98349) < 1e-5
    assert any(c["name"].startswith("3-D") for c in report["checks"])
    status = ssim_patch.status()
    assert report["hooks"] == list(status.hooks) and report["hooks"][0] == report["hook"]
    assert "torchmetrics.functional.image.uqi._uqi_compute" in report["hooks"]
    assert "torchmetrics.functional.image.uqi._uqi_compute" in report["uqi_places"]
    assert not set(report["uqi_places"]) & set(report["places"])
    assert report["warnings"] == []
    assert result.stderr == ""


def _uqi_checks(report: dict) -> dict[tuple[str, str], dict]:
    return {(c["name"], c["api"]): c for c in report["checks"] if c["name"].startswith("UQI")}


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_check_uqi_examples(monkeypatch, capsys, padding):
    """The UQI examples: their documented corrected values, the release's own values unpatched
    (the border cropped away, the pads swapped, NaN for a 1x1 window) and the reference."""
    monkeypatch.setattr(_selfcheck, "_examples", _selfcheck._uqi_examples)  # the SSIM ones are tested above
    assert cli.main(["check", "--json", "--padding", padding]) == 0
    checks = _uqi_checks(json.loads(capsys.readouterr().out))
    name = "UQI zeroed border, 2x3x40x36"
    aniso = name + ", kernel_size=(11, 3), sigma=(1.5, 0.5)"
    one_tap = name + ", kernel_size=(1, 1)"
    assert len(checks) == 5
    expected = {
        (name, "universal_image_quality_index"): _selfcheck.UQI_ZEROED_BORDER[padding],
        (name, "UniversalImageQualityIndex"): _selfcheck.UQI_ZEROED_BORDER[padding],
        (aniso, "universal_image_quality_index"): _selfcheck.UQI_ANISOTROPIC[padding],
        (aniso, "UniversalImageQualityIndex"): _selfcheck.UQI_ANISOTROPIC[padding],
        (one_tap, "universal_image_quality_index"): 0.0,
    }
    assert set(checks) == set(expected)
    for key, value in expected.items():
        check = checks[key]
        assert check["ok"] and abs(check["patched"] - value) < 1e-5 and abs(check["reference"] - value) < 1e-5
    # Upstream, on every release: the frame cropped away (= the valid windows for a square one)...
    assert abs(checks[(name, "universal_image_quality_index")]["unpatched"] - 0.99969) < 1e-5
    # ...the pads of a non-square window swapped: neither padding's value...
    unpatched = checks[(aniso, "universal_image_quality_index")]["unpatched"]
    assert abs(unpatched - 0.93597) < 1e-5
    assert min(abs(unpatched - v) for v in _selfcheck.UQI_ANISOTROPIC.values()) > 0.05
    # ...and NaN for a 1x1 window.
    assert checks[(one_tap, "universal_image_quality_index")]["unpatched"] is None or math.isnan(
        checks[(one_tap, "universal_image_quality_index")]["unpatched"]
    )


def test_check_uqi_documented_values_are_the_reference():
    """The constants the check verifies against: ssim_patch.uqi on the float64 example, and the
    independent float64 reference (tests/helpers/reference.py), to 1e-5."""
    import numpy as np

    from tests.helpers.reference import uqi_reference

    preds, target = _selfcheck._uqi_example()
    p, t = preds.double(), target.double()
    for window, table in (
        ({}, _selfcheck.UQI_ZEROED_BORDER),
        (_selfcheck.UQI_ANISOTROPIC_WINDOW, _selfcheck.UQI_ANISOTROPIC),
    ):
        for padding, value in table.items():
            kw = {"kernel_size": (11, 11), "sigma": (1.5, 1.5), **window}
            ref = uqi_reference(
                p.numpy(), t.numpy(), padding=padding, eps=float(np.finfo(np.float64).eps), **kw
            )
            assert abs(ref.mean() - value) < 1e-5, (window, padding, ref.mean())
            assert abs(float(ssim_patch.uqi(p, t, padding=padding, **kw)) - ref.mean()) < 1e-12


def test_console_script_is_installed():
    from importlib.metadata import entry_points

    scripts = [e for e in entry_points(group="console_scripts") if e.name == "ssim-patch"]
    assert [e.value for e in scripts] == ["ssim_patch.cli:main"]
    script = shutil.which("ssim-patch", path=str(Path(sys.executable).parent)) or shutil.which("ssim-patch")
    assert script, "the ssim-patch console script is not installed: pip install -e ."


def test_check_text_shows_the_digits_in_which_patched_and_reference_agree():
    """float32 against float64: 0.8947744 and 0.8947758 agree to 1.4e-6, but rounded to 5 decimals
    they would read 0.89477 and 0.89478. The text shows 7 decimals and the difference."""
    check = _selfcheck.Check(
        "UQI zeroed border",
        "universal_image_quality_index",
        unpatched=0.99969,
        patched=0.89477444,
        reference=0.89477576,
        abs_error=0.89477576 - 0.89477444,
        ok=True,
    )
    report = _selfcheck.Report(ssim_patch="0", torchmetrics="1.9.0", supported=True, checks=[check])
    lines = _selfcheck.render(report).splitlines()
    header = next(line for line in lines if line.startswith("UQI zeroed border"))
    assert header.split()[-5:] == ["unpatched", "patched", "reference", "|diff|", "ok"]
    row = next(line for line in lines if "universal_image_quality_index" in line)
    assert row.split() == [
        "universal_image_quality_index",
        "0.9996900",
        "0.8947744",
        "0.8947758",
        "1.3e-06",
        "yes",
    ]


def test_check_text_valid_padding_and_state_restored(capsys):
    before = _patcher._snapshot()
    assert cli.main(["check", "--padding", "valid"]) == 0
    out = capsys.readouterr().out
    assert f"torchmetrics {_patcher._release()}: supported" in out
    assert "hook point: torchmetrics.functional.image.ssim._ssim_" in out
    assert "UQI hook points: torchmetrics.functional.image.uqi._uqi_compute" in out
    assert "patch: applied, padding='valid'" in out
    name, why = expected_route()
    assert f"route: {name} ({why})" in out
    assert "unpatched" in out and "reference" in out
    assert out.rstrip().splitlines()[-1].startswith("OK: torchmetrics")
    for bug in ssim_patch.status().upstream_bugs:
        assert bug in out
    assert _patcher._snapshot() == before


@pytest.mark.parametrize("as_json", [False, True])
def test_unsupported_release_fails_with_one_line(monkeypatch, capsys, as_json):
    monkeypatch.setattr(_patcher, "_release", lambda: Version("0.7.0"))
    before = _patcher._snapshot()
    assert cli.main(["check", *(["--json"] if as_json else [])]) == 1
    out, err = capsys.readouterr()
    message = "torchmetrics 0.7.0 is not supported: ssim-patch supports releases from 0.8.2"
    assert err.count("\n") == 1 and err.startswith("ssim-patch check: FAILED: ") and message in err
    if as_json:
        report = json.loads(out)
        assert not report["ok"] and not report["supported"] and message in report["error"]
    else:
        assert "torchmetrics 0.7.0: NOT supported" in out
    assert _patcher._snapshot() == before


@pytest.mark.parametrize("as_json", [False, True])
def test_an_untested_newer_release_is_a_line_of_the_report(monkeypatch, capsys, as_json):
    """UntestedReleaseWarning: a line under the release (text) and an entry of "warnings" (JSON),
    not a Python warning on stderr."""
    examples = _selfcheck._examples
    monkeypatch.setattr(_selfcheck, "_examples", lambda padding: examples(padding)[:1])
    monkeypatch.setattr(_patcher, "_release", lambda: Version("1.10.0"))
    monkeypatch.setattr(_patcher, "_warned", set())  # the patcher warns once per release and process
    before = _patcher._snapshot()
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=UntestedReleaseWarning)  # must be reported anyway
        assert cli.main(["check", *(["--json"] if as_json else [])]) == 0
    assert [str(w.message) for w in leaked if issubclass(w.category, UserWarning)] == []
    out, err = capsys.readouterr()
    assert err == ""
    message = (
        "torchmetrics 1.10.0 is newer than 1.9.0, the newest release ssim-patch was tested with; "
        "its _ssim_update signature matches, so the patch is applied."
    )
    if as_json:
        report = json.loads(out)
        assert report["ok"] and report["supported"] and not report["tested"]
        assert report["warnings"] == [{"category": "UntestedReleaseWarning", "message": message}]
    else:
        lines = out.splitlines()
        at = lines.index("torchmetrics 1.10.0: supported, not tested (not a pinned release)")
        assert lines[at + 1] == f"warning: {message} (UntestedReleaseWarning)"
        assert sum(line.startswith("warning: ") for line in lines) == 1
        assert lines[-1].startswith("OK: torchmetrics 1.10.0")
    assert _patcher._snapshot() == before


def test_missing_torchmetrics_fails_with_one_line(monkeypatch, capsys):
    real = cli.importlib.import_module

    def import_module(name: str, package: str | None = None) -> types.ModuleType:
        if name == "torchmetrics":
            raise ModuleNotFoundError("No module named 'torchmetrics'", name="torchmetrics")
        return real(name, package)

    monkeypatch.setattr(cli.importlib, "import_module", import_module)
    assert cli.main(["check"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "torchmetrics cannot be imported" in err and "pip install" in err


def test_a_check_that_does_not_verify_fails(monkeypatch, capsys):
    examples = _selfcheck._examples
    monkeypatch.setattr(_selfcheck, "_examples", lambda padding: examples(padding)[:1])
    monkeypatch.setattr(_selfcheck, "TOLERANCE", -1.0)
    assert cli.main(["check", "--json"]) == 1
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["applied"] and not report["verified"] and not report["ok"]
    assert "not verified" in err and "differs from ssim_patch.ssim on float64 inputs" in err


def test_matrix_delegates_its_arguments(monkeypatch):
    seen: list[list[str]] = []
    fake = types.ModuleType("ssim_patch._matrix")
    fake.main = lambda argv: seen.append(list(argv)) or 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ssim_patch._matrix", fake)
    assert cli.main(["matrix", "--releases", "1.9.0", "--help"]) == 3
    assert seen == [["--releases", "1.9.0", "--help"]]


def test_matrix_without_a_runner_says_so(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ssim_patch._matrix", None)
    assert cli.main(["matrix"]) == 1
    assert "no matrix runner (ssim_patch._matrix)" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "check" in capsys.readouterr().err
