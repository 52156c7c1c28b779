"""What the patcher's bookkeeping and the pytest plugin cost, against their floors.

``plugin``: wall time of ``python -m pytest`` on a torch-free suite (trivial tests in a temporary
folder, one of which checks that torch was never imported), with the plugin on (the default), with
``--ssim-patch=off`` and with ``-p no:ssim_patch``, in interleaved rounds. Floor: the median with
the plugin on is at most 0.3 s over the median with ``-p no:ssim_patch``.

``bookkeeping``: in this process, with about ``--modules`` modules loaded (torch, numpy,
hypothesis, kornia, scipy, scikit-image where installed, torchmetrics, topped up with synthetic
modules of ``--attributes`` attributes each): a no-op ``apply()`` (floor 1 ms), ``status()``,
``is_applied()``, and the overhead of a ``@patched()`` function per call over the bare function
(floor 2 ms), entered from the patched state with the same options, with other options, and from
the unpatched state; and a ``revert()`` + ``apply()`` cycle.

    python benchmarks/bench_patcher.py                  # both, with the floors
    python benchmarks/bench_patcher.py bookkeeping --modules 3000 --json out.json

The exit status is 1 when a floor is missed. Timings are medians (with min and max) of
``--rounds`` rounds; each bookkeeping round times ``--calls`` calls.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import types
from pathlib import Path
from typing import Any, Callable

PLUGIN_FLOOR_S = 0.3
NOOP_APPLY_FLOOR_MS = 1.0
PATCHED_FLOOR_MS = 2.0

SUITE = textwrap.dedent(
    """
    import sys

    def test_torch_never_imported():
        assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "torchmetrics")]

    {more}
    """
)


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# --- plugin start-up -------------------------------------------------------------------------------


def bench_plugin(rounds: int, tests: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SSIM_PATCH_", "PYTEST_"))}
    variants = {
        "plugin on": [],
        "--ssim-patch=off": ["--ssim-patch=off"],
        "-p no:ssim_patch": ["-p", "no:ssim_patch"],
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as folder:
        more = "\n".join(f"def test_{i}():\n    assert {i} == {i}\n" for i in range(tests - 1))
        Path(folder, "test_plain.py").write_text(SUITE.format(more=more))
        Path(folder, "pytest.ini").write_text("[pytest]\n")
        for _ in range(rounds):
            for name, extra in variants.items():
                cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra, folder]
                start = time.perf_counter()
                done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=folder)
                times[name].append(time.perf_counter() - start)
                if done.returncode != 0:
                    raise SystemExit(f"bench_patcher: {' '.join(cmd)} failed:\n{done.stdout}{done.stderr}")
    out = {name: _spread(values) for name, values in times.items()}
    extra_s = out["plugin on"]["median"] - out["-p no:ssim_patch"]["median"]
    return {
        "seconds": out,
        "plugin_extra_s": extra_s,
        "floor_s": PLUGIN_FLOOR_S,
        "ok": extra_s <= PLUGIN_FLOOR_S,
    }


# --- patcher bookkeeping ---------------------------------------------------------------------------


def load_modules(target: int, attributes: int) -> dict[str, int]:
    """Import real packages, then add synthetic modules until ``target`` modules are loaded."""
    for name in ("torch", "numpy", "hypothesis", "kornia", "scipy.signal", "skimage.metrics", "torchmetrics"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    real = len(sys.modules)
    synthetic = 0
    while len(sys.modules) < target:
        name = f"_bench_patcher_synthetic_{synthetic}"
        module = types.ModuleType(name)
        for i in range(attributes):
            setattr(module, f"a{i}", (lambda: None) if i % 3 == 0 else i)
        sys.modules[name] = module
        synthetic += 1
    namespaces = [m.__dict__ for m in list(sys.modules.values()) if isinstance(m, types.ModuleType)]
    return {
        "modules": len(sys.modules),
        "real": real,
        "synthetic": synthetic,
        "attributes": sum(map(len, namespaces)),
    }


def _time_ms(fn: Callable[[], object], calls: int, rounds: int) -> dict[str, float]:
    per_call = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        per_call.append((time.perf_counter() - start) / calls * 1e3)
    return _spread(per_call)


def bench_bookkeeping(rounds: int, calls: int, modules: int, attributes: int) -> dict[str, Any]:
    loaded = load_modules(modules, attributes)
    from torchmetrics.functional.image import ssim as functional  # noqa: F401  (the hook point)

    import ssim_patch

    def bare() -> None:
        pass

    same = ssim_patch.patched(padding="same")(bare)
    results: dict[str, dict[str, float]] = {}
    ssim_patch.apply()  # the first apply reads every module once
    ssim_patch.status()
    results["no-op apply()"] = _time_ms(ssim_patch.apply, calls, rounds)
    results["status()"] = _time_ms(ssim_patch.status, calls, rounds)
    results["is_applied()"] = _time_ms(ssim_patch.is_applied, calls, rounds)
    results["bare function"] = _time_ms(bare, calls, rounds)
    results["@patched(), patched before"] = _time_ms(same, calls, rounds)
    ssim_patch.apply(padding="valid")
    results["@patched(), other padding before"] = _time_ms(same, calls, rounds)
    ssim_patch.revert()
    results["@patched(), unpatched before"] = _time_ms(same, calls, rounds)

    def cycle() -> None:
        ssim_patch.apply()
        ssim_patch.revert()

    results["apply() + revert()"] = _time_ms(cycle, calls, rounds)
    bare_ms = results["bare function"]["median"]
    overhead = {
        key: value["median"] - bare_ms for key, value in results.items() if key.startswith("@patched()")
    }
    noop = results["no-op apply()"]["median"]
    return {
        "loaded": loaded,
        "ms": results,
        "patched_overhead_ms": overhead,
        "floors_ms": {"no-op apply()": NOOP_APPLY_FLOOR_MS, "@patched() overhead": PATCHED_FLOOR_MS},
        "ok": noop <= NOOP_APPLY_FLOOR_MS and max(overhead.values()) <= PATCHED_FLOOR_MS,
    }


# --- report ----------------------------------------------------------------------------------------


def _machine() -> str:
    import torch

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, torch {torch.__version__}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "what", nargs="*", metavar="plugin|bookkeeping", help="what to measure (default: both)"
    )
    parser.add_argument("--rounds", type=int, default=7, help="rounds per measurement (default 7)")
    parser.add_argument("--calls", type=int, default=200, help="calls per bookkeeping round (default 200)")
    parser.add_argument(
        "--modules", type=int, default=3000, help="modules loaded for bookkeeping (default 3000)"
    )
    parser.add_argument(
        "--attributes", type=int, default=60, help="attributes per synthetic module (default 60)"
    )
    parser.add_argument("--tests", type=int, default=20, help="tests in the torch-free suite (default 20)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    what = args.what or ["plugin", "bookkeeping"]
    unknown = sorted(set(what) - {"plugin", "bookkeeping"})
    if unknown:
        parser.error(f"unknown measurement {unknown}: choose plugin, bookkeeping or both")
    report: dict[str, Any] = {}
    ok = True
    if "plugin" in what:  # first: the bookkeeping run loads torch into this process
        plugin = bench_plugin(args.rounds, args.tests)
        report["plugin"] = plugin
        ok &= plugin["ok"]
        print(f"pytest on a torch-free suite of {args.tests} tests, {args.rounds} rounds (s):")
        for name, s in plugin["seconds"].items():
            print(f"  {name:<20} median {s['median']:.3f}  min {s['min']:.3f}  max {s['max']:.3f}")
        verdict = "ok" if plugin["ok"] else "MISSED"
        print(
            f"  plugin on - -p no:ssim_patch = {plugin['plugin_extra_s']:+.3f} s (floor {PLUGIN_FLOOR_S} s: {verdict})"
        )
    if "bookkeeping" in what:
        book = bench_bookkeeping(args.rounds, args.calls, args.modules, args.attributes)
        report["bookkeeping"] = book
        ok &= book["ok"]
        loaded = book["loaded"]
        print(
            f"\npatcher bookkeeping with {loaded['modules']} modules loaded ({loaded['real']} real, "
            f"{loaded['synthetic']} synthetic; {loaded['attributes']} module attributes), ms per call:"
        )
        for name, s in book["ms"].items():
            print(f"  {name:<34} median {s['median']:.4f}  min {s['min']:.4f}  max {s['max']:.4f}")
        for name, value in book["patched_overhead_ms"].items():
            print(f"  overhead of {name:<34} {value:.4f} ms (floor {PATCHED_FLOOR_MS} ms)")
        print(f"  floors: {'ok' if book['ok'] else 'MISSED'}")
        report["machine"] = _machine()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
