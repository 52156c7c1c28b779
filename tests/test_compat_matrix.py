"""compat_matrix.yaml, the runtime's support table and tox.ini say the same thing."""

from __future__ import annotations

import configparser
import pathlib
import re

import pytest
from packaging.version import Version

from ssim_patch import _releases

ROOT = pathlib.Path(__file__).resolve().parents[1]
yaml = pytest.importorskip("yaml")
MATRIX = yaml.safe_load((ROOT / "compat_matrix.yaml").read_text())
ENTRIES = MATRIX["releases"]


def test_pinned_releases_agree():
    assert tuple(str(e["version"]) for e in ENTRIES) == _releases.PINNED
    assert Version(ENTRIES[0]["version"]) == _releases.OLDEST
    assert Version(ENTRIES[-1]["version"]) == _releases.NEWEST


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e["version"])
def test_hook_and_bugs_agree(entry):
    version = Version(entry["version"])
    assert _releases.hook_point(version).name == entry["hook"]
    assert [hook.name for hook in _releases.uqi_hook_points(version)] == entry["uqi_hooks"]
    assert list(_releases.upstream_bugs(version)) == entry["upstream_bugs"]
    assert set(entry["upstream_bugs"]) <= set(_releases.BUGS)
    assert _releases.hook_points(version)[0] == _releases.hook_point(version)


def test_tox_has_one_env_per_release():
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    envlist = [e.strip() for e in tox["tox"]["envlist"].split(",")]
    assert envlist == ["py"] + [f"tm{e['version']}" for e in ENTRIES]
    factors = re.search(r"testenv:tm\{([^}]*)\}", "\n".join(tox.sections())).group(1).split(",")
    assert factors == [e["version"] for e in ENTRIES]
    deps = tox[f"testenv:tm{{{','.join(factors)}}}"]["deps"]
    for e in ENTRIES:
        assert f"tm{e['version']}: torchmetrics=={e['version']}" in deps


def test_older_and_newer_releases():
    assert _releases.hook_point(Version("0.7.3")) is None
    assert _releases.hook_point(Version("0.8.1")) is None
    assert _releases.hook_point(Version("0.9.0")).name == "_ssim_compute"
    assert _releases.hook_point(Version("2.0.0")).name == "_ssim_update"
    assert _releases.hook_points(Version("0.8.1")) == () == _releases.uqi_hook_points(Version("0.8.1"))
    assert _releases.hook_points(Version("2.0.0"))[1:] == (_releases.UQI_COMPUTE, _releases.UQI_METRIC_UPDATE)


@pytest.mark.parametrize(
    ("version", "uqi"),
    [
        # Checked against the wheels of the releases between the pinned ones: data_range and
        # return_contrast_sensitivity went in 1.0.0; 1.2.0 still keeps preds and target, 1.2.1
        # sums and counts.
        ("0.11.4", ("_uqi_compute", 7)),
        ("1.0.0", ("_uqi_compute", 5)),
        ("1.2.0", ("_uqi_compute", 5)),
        ("1.2.1", ("_uqi_compute", 5, "UniversalImageQualityIndex.update", 3)),
    ],
)
def test_uqi_hook_points_between_pinned_releases(version, uqi):
    got = tuple(
        x for hook in _releases.uqi_hook_points(Version(version)) for x in (hook.name, len(hook.parameters))
    )
    assert got == uqi


def test_every_bug_is_in_some_pinned_release():
    seen = {bug for v in _releases.PINNED for bug in _releases.upstream_bugs(Version(v))}
    assert seen == set(_releases.BUGS)


def test_hook_points_name_their_modules():
    for hook in _releases.ALL_HOOK_POINTS:
        assert hook.qualified == f"{hook.module}.{hook.name}"
        assert hook.module.startswith("torchmetrics.")
    assert _releases.UQI_METRIC_UPDATE.qualified == "torchmetrics.image.uqi.UniversalImageQualityIndex.update"


def test_matrix_table_has_the_uqi_hooks_and_splits_the_bugs():
    """``ssim-patch matrix``'s table (the README's compatibility table): one column per metric's
    hook points and per metric's bugs, from compat_matrix.yaml."""
    from ssim_patch import _matrix

    entry = ENTRIES[-1]
    result = _matrix._Result(
        entry["version"], entry["hook"], entry["upstream_bugs"], entry["uqi_hooks"], passed=3
    )
    table = _matrix._table([result], markdown=True).splitlines()
    assert table[0].startswith("| torchmetrics | SSIM hook | UQI hooks | SSIM bugs")
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells[0] == entry["version"] and cells[1] == f"`{entry['hook']}`"
    assert cells[2] == ", ".join(f"`{h}`" for h in entry["uqi_hooks"])
    assert cells[3].split(", ") == [b for b in entry["upstream_bugs"] if not b.startswith("uqi-")]
    assert cells[4].split(", ") == [b for b in entry["upstream_bugs"] if b.startswith("uqi-")]
    assert cells[5] == "pass: 3 passed"
