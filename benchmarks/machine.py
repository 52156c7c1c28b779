"""Where a set of numbers came from: date, machine, load, library versions, git state of src/."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks import ROOT


def utc_now() -> str:
    """``"2026-11-26 05:07 UTC"``."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> str:
    """The 1-minute load average, ``"n/a"`` where the OS has none."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def package_version(distribution: str) -> str:
    """The installed version of ``distribution``, or ``"not installed"``."""
    try:
        return importlib.metadata.version(distribution)
    except Exception:
        return "not installed"


def git_state() -> str:
    """``"<short commit> (src/ clean)"`` or ``"... (src/ has uncommitted changes)"``."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head} (src/ {'has uncommitted changes' if dirty else 'clean'})"


def command_line(script: str) -> str:
    """The command that is running, as ``python benchmarks/<script> <arguments>``."""
    return " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]])


def versions_line(distributions: tuple[str, ...] = ("kornia", "pytorch-msssim")) -> str:
    """torch, torchmetrics, the given contender libraries and ssim-patch, with their versions."""
    parts = [f"torch {torch.__version__}", f"torchmetrics {package_version('torchmetrics')}"]
    parts += [f"{d} {package_version(d)}" for d in distributions]
    parts.append(f"ssim-patch {_running_version()}")
    return ", ".join(parts)


def _running_version() -> str:
    """The version of the ssim_patch that imports (an editable install's metadata keeps the
    version it was installed at)."""
    try:
        import ssim_patch

        return str(ssim_patch.__version__)
    except Exception:
        return package_version("ssim-patch")


def source_line() -> str:
    """``"- ssim-patch source: ..."``: this checkout's git state, or where else ssim_patch came from."""
    try:
        import ssim_patch

        home = Path(ssim_patch.__file__).resolve().parent
    except Exception as exc:
        return f"- ssim-patch source: not importable ({type(exc).__name__})"
    if home == ROOT / "src" / "ssim_patch":
        return f"- ssim-patch source: git {git_state()}"
    return f"- ssim-patch source: {home} (not this checkout's src/; the checkout is at git {git_state()})"


def machine_lines() -> list[str]:
    """Markdown bullets: CPU and threads, OS and Python, versions, git state of src/."""
    return [
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; torch threads: {torch.get_num_threads()}",
        f"- OS: {platform.platform()}; Python {platform.python_version()}",
        f"- {versions_line()}",
        source_line(),
    ]


def gpu_line() -> str:
    """``"- GPU: <name> (CUDA <version>)"``."""
    return f"- GPU: {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
