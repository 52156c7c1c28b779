"""Child interpreters for the tests: an environment that starts them unpatched, and the runner for
child scripts that print one JSON line per scenario."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def unpatched_environ() -> dict[str, str]:
    """This process's environment without ``SSIM_PATCH_*``: a child started with it begins
    unpatched, whatever this session exported (the plugin exports the patch)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SSIM_PATCH_")}


def assert_scenarios_pass(script: str, *argv: str, count: int) -> None:
    """Run ``script`` in a fresh, unpatched interpreter; it must print ``count`` lines
    ``{"scenario": name, "ok": bool, "error": traceback}``, every one ok."""
    out = subprocess.run(
        [sys.executable, "-c", script, *argv],
        capture_output=True,
        text=True,
        timeout=240,
        env=unpatched_environ(),
    )
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(results) == count, out.stdout + out.stderr[-4000:]
    failed = {r["scenario"]: r["error"] for r in results if not r["ok"]}
    assert not failed, "\n".join(f"--- {k}\n{v}" for k, v in failed.items())
