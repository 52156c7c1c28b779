"""Child processes follow the parent: apply(), patched() and revert() export the patch state to
``SSIM_PATCH_AUTO``/``SSIM_PATCH_PADDING``, which the start-up hook reads in every new Python
process; ``SSIM_PATCH_AUTO=0`` set beforehand opts out.

The children (tests/helpers/children.py) never import ssim_patch themselves. They are started by a parent
in a fresh interpreter with spawn, forkserver, a spawn DataLoader worker and ``subprocess``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torchmetrics.functional.image.ssim  # noqa: F401  (imported: apply() lands at once)
from packaging.version import Version

import ssim_patch as sp
from ssim_patch import _patcher
from tests.helpers.fresh_interpreter import unpatched_environ

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("SSIM_PATCH_AUTO", "SSIM_PATCH_PADDING")


def _environ() -> list[Any]:
    return [os.environ.get(k) for k in KEYS]


@pytest.fixture(scope="module")
def checks() -> dict[str, dict[str, Any]]:
    env = unpatched_environ()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-c", "from tests.helpers import children; children.parent()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    found = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            data = json.loads(line)
            found[data.pop("check")] = data
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return found


def test_the_three_computations_differ(checks):
    expected = checks["expected"]
    assert expected["environ"] == [None, None]  # the parent started with nothing exported
    assert len({tuple(expected[k]) for k in ("upstream", "same", "valid")}) == 3, expected


def test_apply_exports_the_state(checks):
    assert checks["apply: environ"]["environ"] == ["1", "valid"]


@pytest.mark.parametrize("how", ["spawn", "forkserver", "dataloader", "subprocess"])
def test_children_started_after_apply_are_patched_the_same_way(checks, how):
    child = checks[f"apply: {how}"]
    assert child["startup_hook"] and child["environ"] == ["1", "valid"], child
    assert child["padding"] == "valid"
    assert child["value"] == checks["expected"]["valid"]


def test_patched_exports_its_options_and_puts_the_previous_ones_back(checks):
    assert checks["patched: environ"]["environ"] == ["1", "same"]
    child = checks["patched: spawn"]
    assert child["padding"] == "same" and child["value"] == checks["expected"]["same"]
    assert checks["patched: environ after"]["environ"] == ["1", "valid"]


def test_revert_clears_the_environment_and_children_are_unpatched(checks):
    assert checks["revert: environ"]["environ"] == [None, None]
    child = checks["revert: spawn"]
    assert child["padding"] is None and not child["startup_hook"]
    assert child["value"] == checks["expected"]["upstream"]


def test_opt_out(checks):
    """SSIM_PATCH_AUTO=0 set before apply(): the parent is patched, the environment is left as it
    is, so children are not."""
    parent = checks["opt-out: environ"]
    assert parent["applied"] and parent["environ"] == ["0", None]
    child = checks["opt-out: subprocess"]
    assert child["padding"] is None and child["value"] == checks["expected"]["upstream"]
    assert checks["opt-out: environ after revert"]["environ"] == ["0", None]


# --- in this process: what is exported when ---------------------------------------------------------


@pytest.fixture
def clean(ssim_patch: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unpatched, nothing exported; the plugin's fixture and monkeypatch put the session back."""
    sp.revert()
    for key in KEYS:
        monkeypatch.delenv(key, raising=False)


def test_apply_and_revert(clean):
    sp.apply(padding="valid")
    assert _environ() == ["1", "valid"]
    sp.apply(padding="valid")  # a no-op apply keeps it
    assert _environ() == ["1", "valid"]
    sp.apply(padding="same", strict=False)
    assert _environ() == ["1", "same"]
    sp.revert()
    assert _environ() == [None, None]


def test_patched_restores_exactly_what_was_there(clean, monkeypatch):
    monkeypatch.setenv("SSIM_PATCH_PADDING", "valid")  # set by someone, without SSIM_PATCH_AUTO
    outer = sp.patched(padding="same")
    with outer:
        assert _environ() == ["1", "same"]
        with sp.patched(padding="valid"):
            assert _environ() == ["1", "valid"]
        assert _environ() == ["1", "same"]
    assert _environ() == [None, "valid"]
    assert not sp.is_applied()

    @sp.patched(padding="valid")
    def inside() -> list[Any]:
        return _environ()

    assert inside() == ["1", "valid"]
    assert _environ() == [None, "valid"]


@pytest.mark.parametrize("off", ["0", "false", "No", " off "])
def test_opt_out_leaves_the_environment_alone(clean, monkeypatch, off):
    monkeypatch.setenv("SSIM_PATCH_AUTO", off)
    assert sp.apply(padding="valid").applied
    with sp.patched(padding="same"):
        assert _environ() == [off, None]
    sp.revert()
    assert _environ() == [off, None]


def test_a_failed_apply_exports_nothing(clean, monkeypatch):
    monkeypatch.setattr(_patcher, "_release", lambda: Version("0.7.0"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = sp.apply(padding="valid", strict=False)
    assert not report.applied and _environ() == [None, None]


def test_exported_values_are_what_the_startup_hook_reads(clean):
    from ssim_patch import _startup

    for padding in ("same", "valid"):
        sp.apply(padding=padding)
        assert _startup.settings(os.environ) == padding
    sp.revert()
    assert _startup.settings(os.environ) is None
