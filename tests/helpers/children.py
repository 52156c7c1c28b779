"""The two sides of tests/test_children.py.

``probe()`` runs in a child process and never imports ssim_patch itself: whatever patches
torchmetrics there is the start-up hook, reading the environment the parent exported.
``parent()`` runs in a fresh interpreter: it applies, reverts and opts out, starts children with
spawn, forkserver, a spawn DataLoader worker and ``subprocess``, and prints one JSON line per check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import torch
import torch.utils.data

KEYS = ("SSIM_PATCH_AUTO", "SSIM_PATCH_PADDING")


def _environ() -> list[Any]:
    return [os.environ.get(k) for k in KEYS]


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 16, 18, 20, generator=g, dtype=torch.float64)
    return x, 0.6 * x + 0.4 * torch.rand(2, 1, 16, 18, 20, generator=g, dtype=torch.float64)


def _value(fn: Any) -> list[float]:
    """3-D with an anisotropic Gaussian: upstream, "same" and "valid" differ on every release."""
    x, y = _pair()
    out = fn(x, y, sigma=(1.0, 1.0, 2.0), data_range=1.0, reduction="none")
    return [round(v, 12) for v in out.tolist()]


def probe(_: object = None) -> dict[str, Any]:
    """In a child: torchmetrics' SSIM on fixed data, and which padding (if any) patches it."""
    from torchmetrics.functional.image import ssim as functional

    bound = [getattr(functional, name, None) for name in ("_ssim_update", "_ssim_compute")]
    padding = next((f.__ssim_patch__ for f in bound if hasattr(f, "__ssim_patch__")), None)
    return {
        "padding": padding,
        "value": _value(functional.structural_similarity_index_measure),
        "environ": _environ(),
        "startup_hook": "_ssim_patch_startup" in sys.modules,
    }


class ProbeDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """One item: the probe, run in the DataLoader worker."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> str:
        return json.dumps(probe())


def _spawn(method: str) -> dict[str, Any]:
    import multiprocessing

    with multiprocessing.get_context(method).Pool(1) as pool:
        result: dict[str, Any] = pool.apply(probe)
        return result


def _dataloader() -> dict[str, Any]:
    loader = torch.utils.data.DataLoader(
        ProbeDataset(), batch_size=None, num_workers=1, multiprocessing_context="spawn"
    )
    result: dict[str, Any] = json.loads(next(iter(loader)))
    return result


def _subprocess() -> dict[str, Any]:
    code = "import json; from tests.helpers import children; print(json.dumps(children.probe()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _emit(check: str, **data: Any) -> None:
    print(json.dumps({"check": check, **data}), flush=True)


def parent() -> None:
    """Run every scenario; one JSON line per check."""
    import warnings

    warnings.simplefilter("ignore")
    from torchmetrics.functional.image import ssim as functional

    import ssim_patch

    ssim_patch.revert()
    upstream = _value(functional.structural_similarity_index_measure)
    _emit(
        "expected",
        upstream=upstream,
        same=_value(lambda x, y, **kw: ssim_patch.ssim(x, y, padding="same", **kw)),
        valid=_value(lambda x, y, **kw: ssim_patch.ssim(x, y, padding="valid", **kw)),
        environ=_environ(),
    )

    ssim_patch.apply(padding="valid")
    _emit("apply: environ", environ=_environ())
    _emit("apply: spawn", **_spawn("spawn"))
    _emit("apply: forkserver", **_spawn("forkserver"))
    _emit("apply: dataloader", **_dataloader())
    _emit("apply: subprocess", **_subprocess())

    with ssim_patch.patched(padding="same"):
        _emit("patched: environ", environ=_environ())
        _emit("patched: spawn", **_spawn("spawn"))
    _emit("patched: environ after", environ=_environ())

    ssim_patch.revert()
    _emit("revert: environ", environ=_environ())
    _emit("revert: spawn", **_spawn("spawn"))

    os.environ["SSIM_PATCH_AUTO"] = "0"  # the opt-out
    ssim_patch.apply(padding="valid")
    _emit("opt-out: environ", environ=_environ(), applied=ssim_patch.is_applied())
    _emit("opt-out: subprocess", **_subprocess())
    ssim_patch.revert()
    _emit("opt-out: environ after revert", environ=_environ())


if __name__ == "__main__":
    parent()
