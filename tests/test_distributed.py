"""Every process: SSIM_PATCH_AUTO=1 patches torchmetrics at start-up (ssim_patch_autoapply.pth).

The distributed test spawns two torch.distributed ranks (gloo, spawn start method) whose code
(tests/dist_worker.py) never imports ssim_patch.
"""

from __future__ import annotations

import json
import site
import subprocess
import sys
import sysconfig
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchmetrics.functional.image as tmf

from ssim_patch import _releases, _startup
from tests.helpers import dist_worker
from tests.helpers.fresh_interpreter import unpatched_environ
from tests.helpers.reference import ssim_reference

ROOT = Path(__file__).resolve().parents[1]
PTH = ROOT / "src" / "ssim_patch_autoapply.pth"
SIGMA = (1.0, 1.5, 3.0)  # anisotropic: torchmetrics 1.4.2+ sizes the last axis's pad wrongly in 3-D


def _env(**extra: str) -> dict[str, str]:
    env = unpatched_environ()
    env.update(extra)
    return env


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- the .pth file and the start-up module -------------------------------------------------------


def test_pth_is_one_import_line_and_installed():
    text = PTH.read_text()
    assert text.startswith("import ") and text.count("\n") == 1 and text.endswith("\n")
    roots = {*site.getsitepackages(), sysconfig.get_paths()["purelib"]}
    installed = [Path(r) / PTH.name for r in roots if (Path(r) / PTH.name).exists()]
    assert installed, f"{PTH.name} is not installed in {sorted(roots)}: pip install -e ."
    assert installed[0].read_text() == text, f"{installed[0]} is stale: pip install -e . again"


def test_startup_module_watches_the_patchers_module():
    assert _startup.MODULE == _releases.MODULE


def test_startup_module_watches_every_module_with_a_function_hook_point():
    """Whichever of SSIM's and UQI's functional modules is imported first triggers apply(); the
    Metric class module with a hook point (UQI's, from 1.2.1) imports UQI's functional module first."""
    function_hooks = [h for h in _releases.ALL_HOOK_POINTS if "." not in h.name]
    assert set(_startup.MODULES) == {h.module for h in function_hooks}
    assert _startup.MODULES[0] == _startup.MODULE
    assert {h.module for h in _releases.ALL_HOOK_POINTS} - set(_startup.MODULES) == {
        _releases.UQI_METRIC_MODULE
    }


def test_post_import_finder_fires_once_for_the_first_of_several(tmp_path, monkeypatch):
    package = tmp_path / "ssim_patch_demo_pkg2"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "first.py").write_text("VALUE = 1\n")
    (package / "second.py").write_text("VALUE = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen: list[types.ModuleType] = []
    finder = _startup.PostImportFinder(
        ("ssim_patch_demo_pkg2.second", "ssim_patch_demo_pkg2.first"), seen.append
    )
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    try:
        import ssim_patch_demo_pkg2.first as first
        import ssim_patch_demo_pkg2.second as second
    finally:
        for name in ("ssim_patch_demo_pkg2.first", "ssim_patch_demo_pkg2.second", "ssim_patch_demo_pkg2"):
            sys.modules.pop(name, None)
    assert seen == [first] and second.VALUE == 2
    assert finder not in sys.meta_path


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"SSIM_PATCH_AUTO": ""}, None),
        ({"SSIM_PATCH_AUTO": "0"}, None),
        ({"SSIM_PATCH_AUTO": "off"}, None),
        ({"SSIM_PATCH_AUTO": "1"}, "same"),
        ({"SSIM_PATCH_AUTO": " TRUE "}, "same"),
        ({"SSIM_PATCH_AUTO": "yes", "SSIM_PATCH_PADDING": "valid"}, "valid"),
        ({"SSIM_PATCH_AUTO": "on", "SSIM_PATCH_PADDING": ""}, "same"),
    ],
)
def test_settings(environ, expected):
    assert _startup.settings(environ) == expected


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SSIM_PATCH_AUTO": "maybe"}, "SSIM_PATCH_AUTO='maybe' is neither on"),
        (
            {"SSIM_PATCH_AUTO": "1", "SSIM_PATCH_PADDING": "full"},
            "SSIM_PATCH_PADDING='full' is not 'same' or 'valid'",
        ),
    ],
)
def test_bad_settings_warn_and_do_nothing(environ, message):
    with pytest.warns(_startup.StartupWarning, match=message):
        assert _startup.settings(environ) is None
    with pytest.warns(_startup.StartupWarning, match=message):
        assert _startup.install(environ) is False


def test_post_import_finder_fires_once_and_leaves_no_trace(tmp_path, monkeypatch):
    package = tmp_path / "ssim_patch_demo_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "target.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen: list[types.ModuleType] = []
    finder = _startup.PostImportFinder("ssim_patch_demo_pkg.target", seen.append)
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    try:
        import ssim_patch_demo_pkg.target as target
    finally:
        for name in ("ssim_patch_demo_pkg.target", "ssim_patch_demo_pkg"):
            sys.modules.pop(name, None)
    assert seen == [target] and target.VALUE == 1
    assert finder not in sys.meta_path
    assert type(target.__loader__).__name__ == type(target.__spec__.loader).__name__ == "SourceFileLoader"


def test_unset_does_nothing_and_set_imports_no_torch():
    probe = (
        "import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'torchmetrics', 'ssim_patch', '_ssim_patch_startup', 'wrapt', 'typing')))"
    )
    assert _python(probe).stdout.strip() == "[]"
    result = _python(probe, SSIM_PATCH_AUTO="1")
    assert result.stdout.strip() == "['_ssim_patch_startup']", result.stderr
    assert result.stderr == ""


FOLLOWS = """
import ssim_patch
{before}
import torchmetrics
report = ssim_patch.status()
print(report.applied, report.padding)
"""


@pytest.mark.parametrize(
    ("before", "expected"),
    [
        ("", "True same"),  # the start-up hook applies with the exported settings
        ("ssim_patch.revert()", "False None"),  # the program said no before the import
        ("ssim_patch.apply(padding='valid')", "True valid"),  # the program's own apply() wins
        ("import os; os.environ['SSIM_PATCH_AUTO'] = '0'", "False None"),  # opted out meanwhile
    ],
    ids=["hook", "revert-first", "apply-first", "opt-out-first"],
)
def test_the_startup_hook_reads_the_environment_when_torchmetrics_is_imported(before, expected):
    result = _python(FOLLOWS.format(before=before), SSIM_PATCH_AUTO="1", SSIM_PATCH_PADDING="same")
    assert result.stdout.strip() == expected, result.stderr[-3000:]


def test_bad_value_at_startup_is_one_warning_not_a_crash():
    result = _python("print('alive')", SSIM_PATCH_AUTO="1", SSIM_PATCH_PADDING="full")
    assert result.returncode == 0 and result.stdout == "alive\n"
    assert "SSIM_PATCH_PADDING='full' is not 'same' or 'valid'; the patch is not applied" in result.stderr
    assert "Traceback" not in result.stderr


# --- two torch.distributed ranks -----------------------------------------------------------------


def _data() -> dict[str, object]:
    """Four 3-D images and their copies with a zeroed one-voxel frame: the border counts."""
    preds = torch.rand(4, 1, 24, 32, 40, generator=torch.Generator().manual_seed(3))
    target = preds.clone()
    for axis in (2, 3, 4):
        target.select(axis, 0).zero_()
        target.select(axis, -1).zero_()
    return {"preds": preds, "target": target, "kwargs": {"sigma": SIGMA, "data_range": 1.0}}


def _two_ranks(tmp_path: Path, data_path: Path) -> list[str]:
    """Runs the two ranks of dist_worker.py; how far each got."""
    stages = [tmp_path / f"rank{r}.stage" for r in range(2)]
    try:
        mp.spawn(
            dist_worker.run,
            args=(2, str(tmp_path / "rendezvous"), str(data_path), str(tmp_path)),
            nprocs=2,
            join=True,
            start_method="spawn",
        )
    except mp.ProcessExitedException as exc:  # say how far each rank got
        got = [p.read_text() if p.exists() else "not started" for p in stages]
        raise AssertionError(f"{exc}; how far each rank got: {got}") from exc
    return [p.read_text() for p in stages]


GLOO = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is unavailable",
)


@GLOO
@pytest.mark.ssim_unpatched
def test_two_ranks_patched_by_the_environment_alone(tmp_path, monkeypatch):
    source = Path(dist_worker.__file__).read_text()
    assert "import ssim_patch" not in source and "from ssim_patch" not in source
    data = _data()
    data_path = tmp_path / "data.pt"
    torch.save(data, data_path)
    preds, target = data["preds"], data["target"]
    reference = float(
        ssim_reference(
            preds.double().numpy(), target.double().numpy(), sigma=SIGMA, data_range=1.0
        ).per_image.mean()
    )
    unpatched = float(tmf.structural_similarity_index_measure(preds, target, sigma=SIGMA, data_range=1.0))
    assert abs(unpatched - reference) > 1e-3  # so the ranks' value tells patched from unpatched

    monkeypatch.setenv("SSIM_PATCH_AUTO", "1")
    monkeypatch.delenv("SSIM_PATCH_PADDING", raising=False)
    # each rank leaves once both passed the barrier, without destroying its group (dist_worker.run)
    assert _two_ranks(tmp_path, data_path) == ["passed the barrier"] * 2
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for report in reports:
        assert report["startup_hook_loaded"] and report["hook_point_wrapped"], report
        np.testing.assert_allclose(report["value"], reference, atol=1e-5, rtol=0)
