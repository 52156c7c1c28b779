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
    assert list(_releases.upstream_bugs(version)) == entry["upstream_bugs"]
    assert set(entry["upstream_bugs"]) <= set(_releases.BUGS)


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
