"""ssim-patch is free for code that never uses SSIM: ``import ssim_patch``, a pending ``apply()``,
``patched()``/``revert()``, loading the pytest plugin and the start-up hook import neither torch
nor torchmetrics (each checked in a fresh interpreter). The engine, and torch with it, is loaded
when torchmetrics' SSIM module is imported with the patch requested, or when ``ssim_patch.ssim``
is first used. (The time the plugin costs is measured by benchmarks/bench_patcher.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.helpers.fresh_interpreter import unpatched_environ

pytest_plugins = ["pytester"]

REPORT = textwrap.dedent(
    """
    import json, os, sys
    print(json.dumps({
        "heavy": sorted({m.split(".")[0] for m in sys.modules} & {"torch", "torchmetrics"}),
        "engine": "ssim_patch.engine" in sys.modules,
        "environ": [os.environ.get("SSIM_PATCH_AUTO"), os.environ.get("SSIM_PATCH_PADDING")],
    }))
    """
)


def _run(code: str, **environ: str) -> dict:
    env = unpatched_environ()
    env.update(environ)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code) + REPORT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


CASES = {
    "import ssim_patch": "import ssim_patch",
    "from ssim_patch import the API": "from ssim_patch import apply, revert, patched, status, is_applied, PatchError",
    "pending apply()": """
        import ssim_patch
        report = ssim_patch.apply(padding="valid")
        assert report.pending and not report.applied and report.release, report
        """,
    "apply(), patched(), revert(), status() before torchmetrics": """
        import ssim_patch
        ssim_patch.apply()
        with ssim_patch.patched(padding="valid"):
            ssim_patch.status()
        ssim_patch.revert()
        assert not ssim_patch.status().pending
        assert (ssim_patch.status().route, ssim_patch.status().route_why) == (
            "undecided", "torch is not imported yet")
        """,
    "the pytest plugin module": "import ssim_patch.pytest_plugin",
    "the start-up module": "from ssim_patch import _startup; _startup.install({'SSIM_PATCH_AUTO': '1'})",
}


@pytest.mark.parametrize("case", list(CASES))
def test_no_torch_in_a_fresh_interpreter(case):
    assert _run(CASES[case])["heavy"] == []


def test_pending_apply_exports_without_importing_torch():
    result = _run("import ssim_patch; ssim_patch.apply(padding='valid')")
    assert result["heavy"] == [] and result["environ"] == ["1", "valid"]


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_startup_hook_imports_no_torch(padding):
    """The start-up hook alone (a child of a patched parent), and then a pending apply() of its own."""
    assert _run("pass", SSIM_PATCH_AUTO="1", SSIM_PATCH_PADDING=padding)["heavy"] == []
    result = _run("import ssim_patch; ssim_patch.apply()", SSIM_PATCH_AUTO="1", SSIM_PATCH_PADDING=padding)
    assert result["heavy"] == [] and result["environ"] == ["1", "same"]


def test_the_engine_loads_with_torchmetrics_ssim_module():
    result = _run(
        """
        import sys, ssim_patch
        ssim_patch.apply()
        assert "ssim_patch.engine" not in sys.modules
        import torchmetrics
        assert ssim_patch.is_applied(), ssim_patch.status()
        """
    )
    assert result["engine"] and result["heavy"] == ["torch", "torchmetrics"]


def test_ssim_is_a_lazy_attribute():
    result = _run(
        """
        import sys, ssim_patch
        assert "ssim" in ssim_patch.__all__ and "ssim" in dir(ssim_patch)
        assert "ssim_patch.engine" not in sys.modules
        from ssim_patch import ssim
        import ssim_patch.engine
        assert ssim is ssim_patch.ssim is ssim_patch.engine.ssim
        try:
            ssim_patch.no_such_name
        except AttributeError as exc:
            assert str(exc) == "module 'ssim_patch' has no attribute 'no_such_name'", exc
        else:
            raise AssertionError("no AttributeError")
        """
    )
    assert result["engine"] and "torch" in result["heavy"]


def test_uqi_is_a_lazy_attribute():
    result = _run(
        """
        import sys, ssim_patch
        assert "uqi" in ssim_patch.__all__ and "uqi" in dir(ssim_patch)
        assert "ssim_patch.engine" not in sys.modules
        from ssim_patch import uqi
        import ssim_patch.engine
        assert uqi is ssim_patch.uqi is ssim_patch.engine.uqi
        """
    )
    assert result["engine"] and "torch" in result["heavy"]


def test_pending_apply_registers_uqi_without_importing_torch():
    """A pending apply() waits for UQI's modules as well as SSIM's, still without torch."""
    result = _run(
        """
        import sys, ssim_patch
        report = ssim_patch.apply()
        assert report.pending and not report.applied and len(report.hooks) >= 2, report
        assert any(h.endswith("._uqi_compute") for h in report.hooks), report
        """
    )
    assert result["heavy"] == []


TORCH_FREE_SUITE = """
import sys

def test_never_imports_torch():
    assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "torchmetrics")]
"""


@pytest.mark.parametrize("args", [[], ["--ssim-patch=off"], ["--ssim-patch-padding=valid"]])
def test_plugin_session_on_a_torch_free_suite(pytester, monkeypatch, args):
    for key in ("SSIM_PATCH_AUTO", "SSIM_PATCH_PADDING", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(key, raising=False)
    pytester.makepyfile(test_plain=TORCH_FREE_SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    result.assert_outcomes(passed=1)
    header = "ssim-patch: off (--ssim-patch = off)" if args == ["--ssim-patch=off"] else "ssim-patch: on (*)"
    result.stdout.fnmatch_lines([header])
