"""The compatibility matrix runner (``ssim-patch matrix``), for a checkout of ssim-patch.

For each release in ``compat_matrix.yaml``: lay it out with ``pip install --no-deps --target``
(torchmetrics is pure Python), put it first on ``PYTHONPATH`` over the current environment, run
``tests/matrix`` under it, and print a table of what passed and how long each release took.
``--readme README.md`` writes that table, with the run's total time, between the README's markers
(its compatibility table); ``--markdown FILE`` writes the table alone.

``--torch VERSION`` (repeatable; ``all`` for every one) runs the releases of that torch's era
(``torches`` in ``compat_matrix.yaml``) under that torch instead: in a venv made by pip from the
registry in the cache (``.matrix/torch-VERSION``, kept for later runs), with this checkout's
``src`` on ``PYTHONPATH``. ``--default-suite`` then also runs the default test suite there (the
checkout installed into that venv with its ``test`` extra and the newest pinned torchmetrics).
``--torch all --default-suite --readme README.md`` writes the README's torch table.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Optional

from packaging.version import Version


@dataclass
class _Result:
    version: str
    hook: str
    bugs: list[str]
    uqi_hooks: list[str] = field(default_factory=list)
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.failed == 0 and self.passed > 0


@dataclass
class _TorchRun:
    """One torch of the torch axis: its matrix-suite results and, if asked, the default suite's."""

    version: str
    numpy: str = ""
    releases: list[_Result] = field(default_factory=list)
    suite: Optional[_Result] = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.releases) and (self.suite is None or self.suite.ok)


def _find_root(start: pathlib.Path) -> pathlib.Path:
    for folder in (start, *start.parents):
        if (folder / "compat_matrix.yaml").is_file() and (folder / "tests" / "matrix").is_dir():
            return folder
    raise SystemExit(
        f"ssim-patch matrix: no compat_matrix.yaml with tests/matrix at or above {start}: "
        "run it from a checkout of ssim-patch, or pass --root."
    )


def _load(root: pathlib.Path) -> dict[str, Any]:
    try:
        import yaml
    except ImportError:
        raise SystemExit("ssim-patch matrix: needs PyYAML: pip install 'ssim-patch[test]'") from None
    data: dict[str, Any] = yaml.safe_load((root / "compat_matrix.yaml").read_text())
    return data


def _layout(version: str, cache: pathlib.Path) -> pathlib.Path:
    target = cache / f"tm-{version}"
    if not (target / f"torchmetrics-{version}.dist-info").is_dir():
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
        subprocess.run([*cmd, f"torchmetrics=={version}"], check=True)
    return target


#: What the matrix suite needs beside torch and torchmetrics: pytest with pyproject's options
#: (pytest-xdist's -n), hypothesis, and pkg_resources for torchmetrics 0.8-0.11.
_SUITE_NEEDS = [
    "pytest>=7",
    "pytest-xdist>=3",
    "hypothesis>=6.80",
    "pyyaml>=6",
    "wrapt>=1.14",
    "packaging>=20",
    "setuptools<80",
]


#: Free disk a torch venv needs while pip makes it: a CUDA build of torch with its nvidia
#: packages is 4.5-5.6 GB installed (2.0.1-2.14.1, measured), and pip holds the downloaded
#: wheels (about 3 GB) until it has installed them.
_TORCH_VENV_BYTES = 10 * 2**30
#: The exit status when a torch venv cannot be made for lack of disk (``EX_TEMPFAIL``): a caller
#: such as CI may take it as "not run here" rather than as a failure.
NO_DISK = 75


def _torch_python(version: str, cache: pathlib.Path, requires: list[str]) -> pathlib.Path:
    """The interpreter of a venv with torch ``version`` (from the registry, with numpy<2 for torch
    before 2.3, which was built for numpy 1) and the matrix suite's requirements, made once in
    ``cache`` and kept for later runs. pip keeps no copy of the wheels (the venv is the cache)."""
    venv = cache / f"torch-{version}"
    python = venv / "bin" / "python"
    if not (venv / ".complete").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(cache).free
        if free < _TORCH_VENV_BYTES:
            print(
                f"ssim-patch matrix: {free / 2**30:.1f} GiB free in {cache}; a venv with torch "
                f"{version} (a CUDA build from the registry) needs about {_TORCH_VENV_BYTES / 2**30:.0f} "
                "GiB while pip makes it: free some space, or pass --cache DIR on a larger disk",
                file=sys.stderr,
            )
            raise SystemExit(NO_DISK)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        numpy = "numpy<2" if Version(version) < Version("2.3") else "numpy"
        wanted = [f"torch=={version}", numpy, *_SUITE_NEEDS, *requires]
        install = [str(python), "-m", "pip", "install", "-q", "--no-cache-dir"]
        subprocess.run([*install, *wanted], check=True)
        (venv / ".complete").write_text(version + "\n")
    return python


def _discard(venv: pathlib.Path) -> None:
    """Remove a torch venv (or the link to one) once its run is over."""
    if venv.is_symlink():
        venv.unlink()
    elif venv.exists():
        shutil.rmtree(venv)


_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?)")

#: The README's compatibility table lies between these two lines; ``--readme`` rewrites what is
#: between them (a test checks that the README holds what this module writes).
README_BEGIN = "<!-- compatibility table: written by `ssim-patch matrix --readme README.md`; do not edit -->"
README_END = "<!-- end of the compatibility table -->"
TORCH_BEGIN = (
    "<!-- torch table: written by `ssim-patch matrix --torch all --default-suite --readme README.md`; "
    "do not edit -->"
)
TORCH_END = "<!-- end of the torch table -->"


def _run_one(
    entry: dict[str, Any],
    root: pathlib.Path,
    cache: pathlib.Path,
    pytest_args: list[str],
    python: str = sys.executable,
) -> _Result:
    result = _Result(
        str(entry["version"]),
        str(entry["hook"]),
        list(entry["upstream_bugs"]),
        [str(hook) for hook in entry.get("uqi_hooks", [])],
    )
    start = time.perf_counter()
    try:
        target = _layout(result.version, cache)
    except subprocess.CalledProcessError as exc:
        result.error = f"pip could not lay out torchmetrics=={result.version} ({exc.returncode})"
        return result
    env = dict(os.environ)
    own = [] if python == sys.executable else [str(root / "src")]  # a torch venv lacks ssim-patch
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), *own, env.get("PYTHONPATH", "")]))
    env["SSIM_PATCH_EXPECT_RELEASE"] = result.version
    env.pop("SSIM_PATCH_AUTO", None)
    cmd = [python, "-m", "pytest", "tests/matrix", "-q", "-p", "no:cacheprovider"]
    cmd += ["-p", "no:ssim_patch", *pytest_args]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    result.seconds = time.perf_counter() - start
    _count(result, proc)
    return result


def _count(result: _Result, proc: subprocess.CompletedProcess[str]) -> None:
    """Fill ``result`` from pytest's summary line and exit status (its output shown on failure)."""
    tail = proc.stdout.strip().splitlines()[-1:] or [""]
    for number, word in _COUNT.findall(tail[0]):
        if word == "passed":
            result.passed = int(number)
        elif word == "skipped":
            result.skipped = int(number)
        else:
            result.failed += int(number)
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and result.failed == 0):
        result.error = f"pytest exited {proc.returncode}"
    if not result.ok:
        sys.stdout.write(proc.stdout[-4000:] + proc.stderr[-2000:])


def _default_suite(root: pathlib.Path, python: str, torchmetrics: str) -> _Result:
    """The README's ``python -m pytest`` under ``python``'s torch: the checkout installed there
    (editable, its ``test`` extra, which never changes torch) with torchmetrics ``torchmetrics``."""
    result = _Result(torchmetrics, "", [])
    start = time.perf_counter()
    install = [python, "-m", "pip", "install", "-q", "-e", f"{root}[test]", f"torchmetrics=={torchmetrics}"]
    try:
        subprocess.run(install, check=True)
    except subprocess.CalledProcessError as exc:
        result.error = f"pip could not install the checkout's test extra ({exc.returncode})"
        return result
    env = dict(os.environ)
    for name in ("PYTHONPATH", "SSIM_PATCH_AUTO", "SSIM_PATCH_BACKEND"):
        env.pop(name, None)
    proc = subprocess.run([python, "-m", "pytest"], cwd=root, env=env, capture_output=True, text=True)
    result.seconds = time.perf_counter() - start
    _count(result, proc)
    return result


def _outcome(r: _Result) -> str:
    return r.error or (
        f"{'pass' if r.ok else 'FAIL'}: {r.passed} passed"
        + (f", {r.failed} failed" if r.failed else "")
        + (f", {r.skipped} skipped" if r.skipped else "")
    )


def _table(results: list[_Result], markdown: bool) -> str:
    head = [
        "torchmetrics",
        "SSIM hook",
        "UQI hooks",
        "SSIM bugs (fixed by the patch)",
        "UQI bugs (fixed by the patch)",
        "matrix suite",
        "time",
    ]
    rows = []

    def code(names: list[str]) -> str:
        return ", ".join(f"`{n}`" if markdown else n for n in names)

    for r in results:
        outcome = _outcome(r)
        ssim_bugs = [b for b in r.bugs if not b.startswith("uqi-")]
        uqi_bugs = [b for b in r.bugs if b.startswith("uqi-")]
        rows.append(
            [
                r.version,
                code([r.hook]),
                code(r.uqi_hooks),
                ", ".join(ssim_bugs),
                ", ".join(uqi_bugs),
                outcome,
                f"{r.seconds:.0f} s",
            ]
        )
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(
        [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows]
    )


def provenance(seconds: float, releases: int) -> str:
    """The line under the README's table: where and when it was measured, and the total time."""
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "not installed"
    return (
        f"Measured with Python {platform.python_version()} and torch {torch} on {os.cpu_count()} CPU "
        f"cores, {datetime.date.today().isoformat()}: {releases} releases in {seconds / 60:.1f} minutes."
    )


def _torch_table(runs: list[_TorchRun]) -> str:
    """The torch x torchmetrics table (Markdown): per torch, its era's releases under the matrix
    suite, then the default suite."""
    lines = [
        "| torch | numpy | matrix suite, per torchmetrics release | default suite (torchmetrics) | time |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        releases = "; ".join(f"{r.version}: {_outcome(r)}" for r in run.releases)
        suite = f"{_outcome(run.suite)} ({run.suite.version})" if run.suite else "not run"
        lines.append(f"| {run.version} | {run.numpy} | {releases} | {suite} | {run.seconds / 60:.1f} min |")
    return "\n".join(lines)


def torch_provenance(seconds: float, torches: int) -> str:
    """The line under the README's torch table."""
    return (
        f"Measured with Python {platform.python_version()} on {os.cpu_count()} CPU cores (CUDA builds of "
        f"torch from the registry, run on CPU), {datetime.date.today().isoformat()}: {torches} torches in "
        f"{seconds / 60:.1f} minutes."
    )


def torch_block(runs: list[_TorchRun], provenance_line: str) -> str:
    """What ``--torch all --default-suite --readme`` puts in the README, its markers included."""
    return "\n".join([TORCH_BEGIN, "", _torch_table(runs), "", provenance_line, "", TORCH_END])


def readme_block(results: list[_Result], provenance_line: str) -> str:
    """What ``--readme`` puts in the README, its markers included."""
    return "\n".join([README_BEGIN, "", _table(results, markdown=True), "", provenance_line, "", README_END])


def _write_readme(
    path: pathlib.Path, block: str, markers: tuple[str, str] = (README_BEGIN, README_END)
) -> None:
    text = path.read_text()
    begin, end = text.find(markers[0]), text.find(markers[1])
    if begin < 0 or end < begin:
        raise SystemExit(f"ssim-patch matrix: {path} has no {markers[0]!r} ... {markers[1]!r} markers")
    path.write_text(text[:begin] + block + text[end + len(markers[1]) :])


def _run_releases(
    entries: list[dict[str, Any]],
    root: pathlib.Path,
    cache: pathlib.Path,
    pytest_args: list[str],
    python: str,
) -> list[_Result]:
    results = []
    for entry in entries:
        print(f"torchmetrics {entry['version']} ...", flush=True)
        result = _run_one(entry, root, cache, pytest_args, python)
        print(f"  {'ok' if result.ok else 'FAILED'} in {result.seconds:.0f}s", flush=True)
        results.append(result)
    return results


def _numpy_of(python: str) -> str:
    code = "from importlib import metadata; print(metadata.version('numpy'))"
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return proc.stdout.strip() or "none"


def _torch_axis(
    args: argparse.Namespace, matrix: dict[str, Any], root: pathlib.Path, cache: pathlib.Path
) -> int:
    """``--torch``: each named torch on its era's releases (and the default suite if asked)."""
    eras = {str(t["version"]): [str(r) for r in t["releases"]] for t in matrix.get("torches", [])}
    wanted = list(eras) if args.torch == ["all"] else args.torch
    unknown = [v for v in wanted if v not in eras]
    if unknown:
        raise SystemExit(
            f"ssim-patch matrix: torch {', '.join(unknown)} not in compat_matrix.yaml's torches "
            f"(there: {', '.join(eras)}, or all)"
        )
    newest = str(matrix["releases"][-1]["version"])
    runs = []
    start = time.perf_counter()
    for version in wanted:
        run = _TorchRun(version)
        began = time.perf_counter()
        entries = [e for e in matrix["releases"] if str(e["version"]) in (args.release or eras[version])]
        print(f"torch {version}: venv in {cache} ...", flush=True)
        python = str(_torch_python(version, cache, [str(r) for r in matrix.get("requires", [])]))
        run.numpy = _numpy_of(python)
        run.releases = _run_releases(entries, root, cache, args.pytest_args, python)
        if args.default_suite:
            print(f"torch {version}: the default suite ...", flush=True)
            run.suite = _default_suite(root, python, newest)
            print(f"  {_outcome(run.suite)} in {run.suite.seconds:.0f}s", flush=True)
        if args.discard:
            _discard(cache / f"torch-{version}")
        run.seconds = time.perf_counter() - began
        runs.append(run)
    total = time.perf_counter() - start
    print()
    print(_torch_table(runs))
    failed = [f"torch {r.version}" for r in runs if not r.ok]
    block = torch_block(runs, torch_provenance(total, len(runs)))
    return _conclude(
        args.readme, failed, block, (TORCH_BEGIN, TORCH_END), f"{len(runs)} torches", total, "the torch table"
    )


def _conclude(
    readme: Optional[pathlib.Path],
    failed: list[str],
    block: str,
    markers: tuple[str, str],
    what: str,
    seconds: float,
    table: str,
) -> int:
    """Say how the run went; write ``block`` into ``readme`` only if nothing failed."""
    if failed:
        if readme is not None:
            print(f"\nssim-patch matrix: {readme} left as it was")
        print(f"\nssim-patch matrix: failed on {', '.join(failed)}")
        return 1
    if readme is not None:
        _write_readme(readme, block, markers)
        print(f"\nssim-patch matrix: wrote {table} of {readme}")
    print(f"\nssim-patch matrix: all {what} passed in {seconds / 60:.1f} minutes")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Run the matrix; exit status 0 only when every selected release passed."""
    parser = argparse.ArgumentParser(prog="ssim-patch matrix", description=__doc__)
    parser.add_argument("--root", type=pathlib.Path, help="the checkout (default: found from the cwd)")
    parser.add_argument("--release", action="append", help="only this release (repeatable)")
    parser.add_argument(
        "--cache", type=pathlib.Path, help="where releases are laid out (default: ROOT/.matrix)"
    )
    parser.add_argument(
        "--torch",
        action="append",
        help="run under this torch instead of the current one (repeatable; 'all': every one in "
        "compat_matrix.yaml's torches): a venv made by pip from the registry and kept in the cache "
        "(default releases: those its torches entry names)",
    )
    parser.add_argument(
        "--default-suite",
        action="store_true",
        help="with --torch: also run the default test suite under each torch",
    )
    parser.add_argument(
        "--discard",
        action="store_true",
        help="with --torch: remove each torch's venv after its run (a disk that holds one at a time)",
    )
    parser.add_argument("--markdown", type=pathlib.Path, help="also write the table as Markdown here")
    parser.add_argument(
        "--readme",
        type=pathlib.Path,
        help="write the table and the total time between the compatibility-table markers of this "
        "README (a full run only: every release, no pytest arguments, all passed); with "
        "--torch all --default-suite, the torch table",
    )
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)
    if args.readme is not None and (args.release or args.pytest_args):
        parser.error("--readme takes the full matrix: no --release and no pytest arguments")
    if args.default_suite and args.torch is None:
        parser.error(
            "--default-suite goes with --torch (the current torch's default suite: python -m pytest)"
        )
    if args.discard and args.torch is None:
        parser.error("--discard goes with --torch (it removes the venvs --torch makes)")
    if (
        args.torch is not None
        and args.readme is not None
        and (args.torch != ["all"] or not args.default_suite)
    ):
        parser.error(
            "--readme with --torch writes the torch table of a full run: --torch all --default-suite"
        )
    root = (args.root or _find_root(pathlib.Path.cwd())).resolve()
    cache = (args.cache or root / ".matrix").resolve()
    matrix = _load(root)
    entries = matrix["releases"]
    if args.release:
        unknown = sorted(set(args.release) - {str(e["version"]) for e in entries})
        if unknown:
            raise SystemExit(f"ssim-patch matrix: {unknown} not in compat_matrix.yaml")
    if args.torch is not None:
        return _torch_axis(args, matrix, root, cache)
    if args.release:
        entries = [e for e in entries if str(e["version"]) in args.release]
    start = time.perf_counter()
    results = _run_releases(entries, root, cache, args.pytest_args, sys.executable)
    total = time.perf_counter() - start
    print()
    print(_table(results, markdown=False))
    if args.markdown:
        args.markdown.write_text(_table(results, markdown=True) + "\n")
    failed = [r.version for r in results if not r.ok]
    block = readme_block(results, provenance(total, len(results)))
    return _conclude(
        args.readme,
        failed,
        block,
        (README_BEGIN, README_END),
        f"{len(results)} releases",
        total,
        "the compatibility table",
    )


if __name__ == "__main__":
    sys.exit(main())
