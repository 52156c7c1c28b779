"""The compatibility matrix runner (``ssim-patch matrix``), for a checkout of ssim-patch.

For each release in ``compat_matrix.yaml``: lay it out with ``pip install --no-deps --target``
(torchmetrics is pure Python), put it first on ``PYTHONPATH`` over the current environment, run
``tests/matrix`` under it, and print a table of what passed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional


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


_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?)")


def _run_one(
    entry: dict[str, Any], root: pathlib.Path, cache: pathlib.Path, pytest_args: list[str]
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
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), env.get("PYTHONPATH", "")]))
    env["SSIM_PATCH_EXPECT_RELEASE"] = result.version
    env.pop("SSIM_PATCH_AUTO", None)
    cmd = [sys.executable, "-m", "pytest", "tests/matrix", "-q", "-p", "no:cacheprovider"]
    cmd += ["-p", "no:ssim_patch", *pytest_args]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    result.seconds = time.perf_counter() - start
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
    return result


def _table(results: list[_Result], markdown: bool) -> str:
    head = [
        "torchmetrics",
        "SSIM hook",
        "UQI hooks",
        "SSIM bugs (fixed by the patch)",
        "UQI bugs (fixed by the patch)",
        "matrix suite",
    ]
    rows = []

    def code(names: list[str]) -> str:
        return ", ".join(f"`{n}`" if markdown else n for n in names)

    for r in results:
        outcome = r.error or (
            f"{'pass' if r.ok else 'FAIL'}: {r.passed} passed"
            + (f", {r.failed} failed" if r.failed else "")
            + (f", {r.skipped} skipped" if r.skipped else "")
        )
        ssim_bugs = [b for b in r.bugs if not b.startswith("uqi-")]
        uqi_bugs = [b for b in r.bugs if b.startswith("uqi-")]
        rows.append(
            [r.version, code([r.hook]), code(r.uqi_hooks), ", ".join(ssim_bugs), ", ".join(uqi_bugs), outcome]
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


def main(argv: Optional[list[str]] = None) -> int:
    """Run the matrix; exit status 0 only when every selected release passed."""
    parser = argparse.ArgumentParser(prog="ssim-patch matrix", description=__doc__)
    parser.add_argument("--root", type=pathlib.Path, help="the checkout (default: found from the cwd)")
    parser.add_argument("--release", action="append", help="only this release (repeatable)")
    parser.add_argument(
        "--cache", type=pathlib.Path, help="where releases are laid out (default: ROOT/.matrix)"
    )
    parser.add_argument("--markdown", type=pathlib.Path, help="also write the table as Markdown here")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)
    root = (args.root or _find_root(pathlib.Path.cwd())).resolve()
    cache = (args.cache or root / ".matrix").resolve()
    entries = _load(root)["releases"]
    if args.release:
        unknown = sorted(set(args.release) - {str(e["version"]) for e in entries})
        if unknown:
            raise SystemExit(f"ssim-patch matrix: {unknown} not in compat_matrix.yaml")
        entries = [e for e in entries if str(e["version"]) in args.release]
    results = []
    for entry in entries:
        print(f"torchmetrics {entry['version']} ...", flush=True)
        result = _run_one(entry, root, cache, args.pytest_args)
        print(f"  {'ok' if result.ok else 'FAILED'} in {result.seconds:.0f}s", flush=True)
        results.append(result)
    print()
    print(_table(results, markdown=False))
    if args.markdown:
        args.markdown.write_text(_table(results, markdown=True) + "\n")
    failed = [r.version for r in results if not r.ok]
    if failed:
        print(f"\nssim-patch matrix: failed on {', '.join(failed)}")
        return 1
    print(f"\nssim-patch matrix: all {len(results)} releases passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
