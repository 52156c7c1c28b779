"""compat_matrix.yaml, the runtime's support table and tox.ini say the same thing."""

from __future__ import annotations

import configparser
import pathlib
import re
from types import SimpleNamespace
from typing import Callable

import pytest
from packaging.version import Version

from ssim_patch import _matrix, _releases

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


def _readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    begin, end = text.find(_matrix.README_BEGIN), text.find(_matrix.README_END)
    assert 0 <= begin < end, "README.md has lost the compatibility table's markers"
    return text[begin : end + len(_matrix.README_END)]


def _assert_written(block: str, pattern: str, write: Callable[[str], str]) -> None:
    """``block`` is what ``write`` makes of the one line under it that says where, when and how
    long the table was measured (which matches ``pattern``)."""
    measured = [line for line in block.splitlines() if line.startswith("Measured with ")]
    assert len(measured) == 1 and re.fullmatch(pattern, measured[0]), measured
    assert block == write(measured[0])


def test_readme_table_is_the_one_the_matrix_writes():
    """README's compatibility table is written by ``ssim-patch matrix --readme README.md``: between
    its markers is exactly what the runner writes for the counts and times shown, one passing row per
    pinned release in compat_matrix.yaml's order, and the line with the run's total time."""
    block = _readme_block()
    rows = [line for line in block.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == len(ENTRIES), rows
    results = []
    for entry, row in zip(ENTRIES, rows):
        cells = [c.strip() for c in row.strip("|").split("|")]
        outcome = re.fullmatch(r"pass: (\d+) passed(?:, (\d+) skipped)?", cells[-2])
        seconds = re.fullmatch(r"(\d+) s", cells[-1])
        assert cells[0] == str(entry["version"]) and outcome and seconds, row
        results.append(
            _matrix._Result(
                str(entry["version"]),
                entry["hook"],
                entry["upstream_bugs"],
                entry["uqi_hooks"],
                passed=int(outcome[1]),
                skipped=int(outcome[2] or 0),
                seconds=float(seconds[1]),
            )
        )
    pattern = (
        rf"Measured with Python [\d.]+ and torch \S+ on \d+ CPU cores, \d{{4}}-\d\d-\d\d: "
        rf"{len(ENTRIES)} releases in [\d.]+ minutes\."
    )
    _assert_written(block, pattern, lambda line: _matrix.readme_block(results, line))


def test_matrix_writes_the_readme_between_its_markers(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n\n{_matrix.README_BEGIN}\nold\n{_matrix.README_END}\n\nafter\n")
    entry = ENTRIES[0]
    result = _matrix._Result(
        entry["version"], entry["hook"], entry["upstream_bugs"], entry["uqi_hooks"], passed=5, seconds=41.6
    )
    block = _matrix.readme_block([result], _matrix.provenance(641.0, 1))
    _matrix._write_readme(readme, block)
    assert readme.read_text() == f"before\n\n{block}\n\nafter\n"
    assert block.splitlines()[4].endswith("| pass: 5 passed | 42 s |")
    assert block.splitlines()[-3].endswith(": 1 releases in 10.7 minutes.")
    with pytest.raises(SystemExit):
        _matrix.main(["--readme", str(readme), "--release", "1.9.0"])
    assert "--readme takes the full matrix" in capsys.readouterr().err


def test_torch_axis_names_pinned_releases_from_the_floor():
    torches = MATRIX["torches"]
    pinned = {str(e["version"]) for e in ENTRIES}
    assert all(set(map(str, t["releases"])) <= pinned for t in torches)
    versions = [Version(str(t["version"])) for t in torches]
    assert versions == sorted(versions) and versions[0].release[:2] == _releases.TORCH_FLOOR.release[:2]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--default-suite"], "--default-suite goes with --torch"),
        (["--torch", "2.0.1", "--readme", "R.md"], "--torch all --default-suite"),
        (["--torch", "all", "--readme", "R.md"], "--torch all --default-suite"),
        (["--discard"], "--discard goes with --torch"),
    ],
)
def test_matrix_torch_arguments_that_cannot_go_together(argv, message, capsys):
    with pytest.raises(SystemExit):
        _matrix.main(argv)
    assert message in capsys.readouterr().err


def test_matrix_names_the_torches_it_knows(capsys):
    with pytest.raises(
        SystemExit, match=r"torch 1\.13\.1 not in compat_matrix.yaml's torches \(there: 2\.0\.1, "
    ):
        _matrix.main(["--root", str(ROOT), "--torch", "1.13.1"])


def test_matrix_writes_the_torch_table_between_its_markers(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(
        f"{_matrix.README_BEGIN}\nkept\n{_matrix.README_END}\n{_matrix.TORCH_BEGIN}\nold\n{_matrix.TORCH_END}\n"
    )
    run = _matrix._TorchRun("2.0.1", numpy="1.26.4", seconds=95.0)
    run.releases = [
        _matrix._Result("0.11.4", "", [], passed=416),
        _matrix._Result("1.9.0", "", [], passed=5, failed=1),
    ]
    run.suite = _matrix._Result("1.9.0", "", [], passed=1890, skipped=30)
    block = _matrix.torch_block([run], _matrix.torch_provenance(95.0, 1))
    _matrix._write_readme(readme, block, (_matrix.TORCH_BEGIN, _matrix.TORCH_END))
    assert readme.read_text().startswith(f"{_matrix.README_BEGIN}\nkept\n{_matrix.README_END}\n{block}\n")
    row = block.splitlines()[4]
    assert row == (
        "| 2.0.1 | 1.26.4 | 0.11.4: pass: 416 passed; 1.9.0: FAIL: 5 passed, 1 failed "
        "| pass: 1890 passed, 30 skipped (1.9.0) | 1.6 min |"
    )
    assert not run.ok


def test_matrix_says_when_the_disk_cannot_hold_a_torch(tmp_path, monkeypatch, capsys):
    # The last CI run on record stopped in pip with "No space left on device": the check comes
    # first, says what to do, and exits with its own status (CI skips that torch on it); nothing
    # is made.
    monkeypatch.setattr(_matrix.shutil, "disk_usage", lambda path: SimpleNamespace(free=3 * 2**30))
    with pytest.raises(SystemExit) as stopped:
        _matrix._torch_python("2.0.1", tmp_path, [])
    assert stopped.value.code == _matrix.NO_DISK == 75
    assert re.search(r"3\.0 GiB free in .*torch 2\.0\.1 .* needs about 10 GiB", capsys.readouterr().err)
    assert not (tmp_path / "torch-2.0.1").exists()


def test_matrix_discards_each_torch_venv_after_its_run(tmp_path, monkeypatch, capsys):
    seen = []

    def fake_python(version, cache, requires):
        venv = cache / f"torch-{version}"
        (venv / "bin").mkdir(parents=True)
        (venv / ".complete").write_text(version)
        seen.append(venv)
        return venv / "bin" / "python"

    monkeypatch.setattr(_matrix, "_torch_python", fake_python)
    monkeypatch.setattr(_matrix, "_numpy_of", lambda python: "1.26.4")
    monkeypatch.setattr(
        _matrix,
        "_run_releases",
        lambda entries, root, cache, args, python: [_matrix._Result("1.9.0", "", [], passed=1)],
    )
    argv = ["--root", str(ROOT), "--cache", str(tmp_path), "--torch", "2.0.1", "--torch", "2.14.1"]
    assert _matrix.main([*argv, "--release", "1.9.0", "--discard"]) == 0
    assert len(seen) == 2 and not any(v.exists() for v in seen)
    assert _matrix.main([*argv, "--release", "1.9.0"]) == 0
    assert all(v.exists() for v in seen[2:])
