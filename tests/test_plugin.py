"""The pytest plugin (entry point ``pytest11: ssim_patch``), tested with pytester.

Our own session runs with the plugin active. The tests that run pytest in-process are marked
``ssim_unpatched`` so that the inner session starts from torchmetrics' own SSIM, and check that the
inner session leaves that state behind.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
import torchmetrics.functional.image  # imported here so that pytester's module snapshot keeps them
import torchmetrics.image
from packaging.version import Version

import ssim_patch
from ssim_patch import _patcher, _releases, backends
from ssim_patch.pytest_plugin import Settings, _resolve
from tests.helpers.reference import ssim_reference, zeroed_border
from tests.helpers.routes import expected_route

pytest_plugins = ["pytester"]

SIGMA_3D = (1.0, 1.5, 3.0)
HAS_XDIST = importlib.util.find_spec("xdist") is not None


def _example_3d() -> tuple[torch.Tensor, torch.Tensor]:
    p3 = torch.rand(2, 1, 32, 40, 48, generator=torch.Generator().manual_seed(1))
    t3 = zeroed_border(p3)
    t3[:, :, 0] = 0
    t3[:, :, -1] = 0
    return p3, t3


def _reference_3d(padding: str = "same") -> float:
    p3, t3 = _example_3d()
    return float(
        ssim_reference(
            p3.double().numpy(), t3.double().numpy(), sigma=SIGMA_3D, padding=padding
        ).per_image.mean()
    )


# An inner test module that never imports ssim_patch: it sees whatever the plugin did.
TORCHMETRICS_ONLY = """
import torch
from torchmetrics.functional.image import structural_similarity_index_measure as ssim

def test_torchmetrics_gives_the_corrected_ssim():
    preds = torch.rand(3, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    target = preds.clone()
    for axis in (2, 3):
        target.select(axis, 0).zero_()
        target.select(axis, -1).zero_()
    assert abs(float(ssim(preds, target)) - 0.98349) < 1e-5  # the README's zeroed-border example
    p3 = torch.rand(2, 1, 32, 40, 48, generator=torch.Generator().manual_seed(1))
    t3 = p3.clone()
    for axis in (2, 3, 4):
        t3.select(axis, 0).zero_()
        t3.select(axis, -1).zero_()
    value = float(ssim(p3, t3, sigma=(1.0, 1.5, 3.0)))
    assert abs(value - EXPECTED) < 1e-5, value
"""

# An inner test module that reports the patch state it runs under.
STATE = """
import ssim_patch

def test_state():
    report = ssim_patch.status()
    assert (report.applied or report.pending, report.padding) == EXPECTED, report
"""


def _state_test(pytester: pytest.Pytester, applied: bool, padding: str | None) -> None:
    pytester.makepyfile(test_state=STATE.replace("EXPECTED", repr((applied, padding))))


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing exported by this session reaches the inner one (the plugin exports the patch)."""
    monkeypatch.delenv("SSIM_PATCH_AUTO", raising=False)
    monkeypatch.delenv("SSIM_PATCH_PADDING", raising=False)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)


def _exported() -> tuple[str | None, str | None]:
    return os.environ.get("SSIM_PATCH_AUTO"), os.environ.get("SSIM_PATCH_PADDING")


def _names(report: ssim_patch.PatchReport) -> str:
    """The header's hook points: SSIM's, then UQI's, by name (from 1.2.1 the Metric class's update)."""
    hooks = _releases.hook_points(Version(report.release))
    assert tuple(h.qualified for h in hooks) == report.hooks
    return ", ".join(h.name for h in hooks)


# An inner test module that never imports ssim_patch: UQI, functional and Metric class.
UQI_ONLY = """
import torch
from torchmetrics.functional.image import universal_image_quality_index as uqi
from torchmetrics.image import UniversalImageQualityIndex

def test_torchmetrics_gives_the_corrected_uqi():
    preds = torch.rand(2, 3, 40, 36, generator=torch.Generator().manual_seed(0))
    target = preds.clone()
    for axis in (2, 3):
        target.select(axis, 0).zero_()
        target.select(axis, -1).zero_()
    assert abs(float(uqi(preds, target)) - 0.89478) < 1e-5  # `ssim-patch check`'s example
    metric = UniversalImageQualityIndex(kernel_size=(11, 3), sigma=(1.5, 0.5))
    metric.update(preds[:1], target[:1])
    metric.update(preds[1:], target[1:])
    assert abs(float(metric.compute()) - 0.88247) < 1e-5
"""


def test_uqi_in_a_suite_that_never_imports_ssim_patch(pytester: pytest.Pytester, isolated: None) -> None:
    """The plugin applies before torchmetrics is imported: UQI's modules are patched when they are."""
    pytester.makepyfile(test_uqi_only=UQI_ONLY)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["ssim-patch: on (*; hooks _ssim_*, _uqi_compute*; padding same, *)"])


@pytest.mark.ssim_unpatched
def test_the_3d_example_is_wrong_upstream():
    """The inner tests below can tell patched from unpatched torchmetrics by this example."""
    p3, t3 = _example_3d()
    upstream = float(
        torchmetrics.functional.image.structural_similarity_index_measure(p3, t3, sigma=SIGMA_3D)
    )
    assert abs(upstream - _reference_3d()) > 1e-3


WORKERS = """
import ssim_patch

def test_worker_has_the_controllers_settings(request):
    assert request.config.workerinput["ssim_patch"] == {"enabled": True, "padding": "same", "strict": False}
    report = ssim_patch.status()
    assert (report.padding, report.strict) == ("same", False)
"""


def test_auto_apply_in_fresh_processes(pytester: pytest.Pytester, isolated: None) -> None:
    """Installed means active: a suite that never imports ssim_patch tests the corrected SSIM,
    in pytest-xdist workers too (with the controller's settings: here strict off, from the ini)."""
    pytester.makepyfile(test_tm=TORCHMETRICS_ONLY.replace("EXPECTED", repr(_reference_3d())))
    args = ["-p", "no:cacheprovider"]
    if HAS_XDIST:
        pytester.makeini("[pytest]\nssim_patch_strict = off\n")
        pytester.makepyfile(test_workers=WORKERS)
        args += ["-n", "2"]
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=2 if HAS_XDIST else 1)
    report = ssim_patch.status()
    result.stdout.fnmatch_lines(
        [
            f"ssim-patch: on (torchmetrics {report.release}, tested; hooks {_names(report)}; padding same, "
            f"applied when torchmetrics is imported; backend {backends.summary(report.backend, report.backend_for)}; "
            "route undecided (torch is not imported yet))"  # this suite has no conftest importing torch
        ]
    )


def test_header_reports_the_route_once_torch_is_imported(pytester: pytest.Pytester, isolated: None) -> None:
    """A conftest that imports torch: the header says which route a call takes, and why."""
    pytester.makeconftest("import torch\n")
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    name, why = expected_route()
    header = next(line for line in result.stdout.lines if line.startswith("ssim-patch: on ("))
    assert header.endswith(f"; route {name} ({why}))"), header


@pytest.mark.ssim_unpatched
def test_opt_out_with_p_no(pytester: pytest.Pytester, isolated: None) -> None:
    pytester.makepyfile(test_tm=TORCHMETRICS_ONLY.replace("EXPECTED", repr(_reference_3d())))
    result = pytester.runpytest_inprocess("-p", "no:ssim_patch", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    assert "ssim-patch:" not in result.stdout.str()
    assert not ssim_patch.is_applied()


@pytest.mark.ssim_patch(padding="same", strict=False)
def test_ini_padding_and_header_then_the_previous_options_are_restored(pytester, isolated):
    pytester.makeini("[pytest]\nssim_patch_padding = valid\n")
    _state_test(pytester, True, "valid")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "ssim-patch: on (torchmetrics *, tested; hooks _ssim_*, _uqi_compute*; padding valid; backend auto (*); route *)"
        ]
    )
    report = ssim_patch.status()
    assert (report.applied, report.padding, report.strict) == (True, "same", False)


@pytest.mark.ssim_unpatched
def test_off_leaves_torchmetrics_alone_and_says_so(pytester, isolated):
    _state_test(pytester, False, None)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--ssim-patch=off")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["ssim-patch: off (--ssim-patch = off)"])
    assert not ssim_patch.is_applied()


# An inner test module that reports what the processes it would start inherit.
EXPORTED = """
import os

def test_exported():
    assert (os.environ.get("SSIM_PATCH_AUTO"), os.environ.get("SSIM_PATCH_PADDING")) == EXPECTED
"""


@pytest.mark.ssim_unpatched
def test_the_session_exports_the_patch_and_puts_the_environment_back(pytester, isolated, monkeypatch):
    monkeypatch.setenv("SSIM_PATCH_PADDING", "same")  # found before the session, without SSIM_PATCH_AUTO
    pytester.makepyfile(test_exported=EXPORTED.replace("EXPECTED", repr(("1", "valid"))))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--ssim-patch-padding=valid")
    result.assert_outcomes(passed=1)
    assert _exported() == (None, "same")
    assert not ssim_patch.is_applied()


@pytest.mark.ssim_unpatched
def test_off_exports_nothing(pytester, isolated):
    pytester.makepyfile(test_exported=EXPORTED.replace("EXPECTED", repr((None, None))))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--ssim-patch=off")
    result.assert_outcomes(passed=1)
    assert _exported() == (None, None)


def test_this_session_exports_its_state(request):
    """Our own session runs with the plugin on: processes its tests start are patched too."""
    if not _resolve(request.config)[0].enabled:
        pytest.skip("this session runs with --ssim-patch=off")
    report = ssim_patch.status()
    assert report.applied and _exported() == ("1", report.padding)


@pytest.mark.parametrize(
    ("ini", "args", "expected"),
    [
        ("", [], Settings(True, "same", True)),
        ("", ["--ssim-patch=off"], Settings(False, "same", True)),
        ("ssim_patch = off", [], Settings(False, "same", True)),
        ("ssim_patch = false", ["--ssim-patch=ON"], Settings(True, "same", True)),
        ("ssim_patch_padding = valid", [], Settings(True, "valid", True)),
        ("ssim_patch_padding = valid", ["--ssim-patch-padding=same"], Settings(True, "same", True)),
        ("", ["--ssim-patch-padding", "VALID"], Settings(True, "valid", True)),
        ("ssim_patch_strict = no", [], Settings(True, "same", False)),
        ("ssim_patch_strict = 0", ["--ssim-patch-strict=yes"], Settings(True, "same", True)),
    ],
)
def test_settings_from_command_line_else_ini_else_default(pytester, isolated, ini, args, expected):
    pytester.makeini(f"[pytest]\n{ini}\n")
    assert _resolve(pytester.parseconfig(*args))[0] == expected


@pytest.mark.parametrize(
    ("ini", "args", "message"),
    [
        ("", ["--ssim-patch-padding=full"], "--ssim-patch-padding must be 'same' or 'valid', got 'full'"),
        ("ssim_patch = maybe", [], "ini option ssim_patch must be on or off .* got 'maybe'"),
        ("", ["--ssim-patch-strict=sometimes"], "--ssim-patch-strict must be on or off .* got 'sometimes'"),
    ],
)
def test_bad_settings_name_the_option_and_value(pytester, isolated, ini, args, message):
    pytester.makeini(f"[pytest]\n{ini}\n")
    with pytest.raises(pytest.UsageError, match=message):
        _resolve(pytester.parseconfig(*args))


UNSUPPORTED_CONFTEST = """
from packaging.version import Version
from ssim_patch import _patcher
from ssim_patch.pytest_plugin import Settings, _resolve

_patcher._release = lambda: Version("0.7.0")  # the outer test's monkeypatch puts it back
"""


@pytest.mark.ssim_unpatched
def test_unsupported_release_is_a_usage_error(pytester, isolated, monkeypatch):
    monkeypatch.setattr(_patcher, "_release", _patcher._release)  # restored after this test
    pytester.makeconftest(UNSUPPORTED_CONFTEST)
    _state_test(pytester, False, None)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*ssim-patch: torchmetrics 0.7.0 is not supported: ssim-patch supports releases from 0.8.2*"
            "--ssim-patch-strict=off*"
        ]
    )
    assert not ssim_patch.is_applied()


@pytest.mark.ssim_unpatched
def test_unsupported_release_only_warns_when_not_strict(pytester, isolated, monkeypatch):
    monkeypatch.setattr(_patcher, "_release", _patcher._release)
    pytester.makeconftest(UNSUPPORTED_CONFTEST)
    _state_test(pytester, False, None)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--ssim-patch-strict=off")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "ssim-patch: off (torchmetrics 0.7.0 is not supported*",
            "*PytestConfigWarning: ssim-patch: torchmetrics 0.7.0 is not supported*",
        ]
    )


MARKERS = """
import pytest
import ssim_patch as sp


def state():
    report = sp.status()
    return (report.applied, report.padding)


def test_session_default():
    assert state() == (True, "same")


@pytest.mark.ssim_unpatched
def test_unpatched_marker():
    assert state() == (False, None)


@pytest.fixture
def seen_in_fixture():
    return state()


@pytest.mark.ssim_patch(padding="valid")
def test_patch_marker_applies_before_fixtures(seen_in_fixture):
    assert seen_in_fixture == state() == (True, "valid")


def test_markers_restored():
    assert state() == (True, "same")


def test_fixture_controls_the_patch(ssim_patch):
    assert ssim_patch.revert().applied is False
    assert not ssim_patch.is_applied()
    assert ssim_patch.apply(padding="valid").padding == "valid"
    with ssim_patch.patched(padding="same"):
        assert ssim_patch.status().padding == "same"
    assert ssim_patch.status().padding == "valid"


def test_fixture_restored():
    assert state() == (True, "same")


@pytest.mark.ssim_unpatched
def test_marker_then_fixture(ssim_patch):
    assert not ssim_patch.is_applied()
    ssim_patch.apply(padding="valid")
    ssim_patch.restore()
    assert not ssim_patch.is_applied()
    ssim_patch.apply(padding="valid")


def test_marker_and_fixture_restored():
    assert state() == (True, "same")


@pytest.mark.ssim_unpatched
class TestClassMarker:
    def test_in_class(self):
        assert state() == (False, None)


@pytest.mark.ssim_patch(padding="valid")
def test_failing_test_still_restores():
    assert False


def test_restored_after_failure():
    assert state() == (True, "same")


@pytest.mark.ssim_patch(padding="full")
def test_bad_padding():
    pass


@pytest.mark.ssim_patch("valid")
def test_positional():
    pass


@pytest.mark.ssim_patch(pading="valid")
def test_typo():
    pass


@pytest.mark.ssim_unpatched
@pytest.mark.ssim_patch
def test_both():
    pass


def test_last():
    assert state() == (True, "same")
"""


@pytest.mark.ssim_unpatched
def test_markers_and_fixture_restore_the_state(pytester, isolated):
    pytester.makepyfile(test_markers=MARKERS)
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "-p", "no:randomly", "--strict-markers", "-rfE"
    )
    result.assert_outcomes(passed=11, failed=1, errors=4)
    result.stdout.fnmatch_lines_random(
        [
            "*test_bad_padding*@pytest.mark.ssim_patch(padding='full'): padding must be 'same' or 'valid'*",
            "*test_positional*keyword arguments only (padding=..., strict=...), got ('valid',)*",
            "*test_typo*unknown arguments ?'pading'?; it takes*",
            "*test_both*the markers ssim_patch and ssim_unpatched cannot both apply to one test*",
            "FAILED *test_failing_test_still_restores*",
        ]
    )
    assert not ssim_patch.is_applied()


def test_markers_are_registered(pytester):
    result = pytester.runpytest_inprocess("--markers")
    result.stdout.fnmatch_lines(
        ["@pytest.mark.ssim_patch(padding='same', strict=True): *", "@pytest.mark.ssim_unpatched: *"]
    )
