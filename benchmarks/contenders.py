"""The SSIM implementations compared, and the patch state each one runs under.

Every contender computes the mean SSIM of a float32 batch with an 11-tap Gaussian window
(sigma 1.5) and a data range of 1.0:

* ``unpatched``: torchmetrics' ``structural_similarity_index_measure`` as released;
* ``patched``: the same call inside ``with ssim_patch.patched():`` (the corrected engine);
* ``kornia``: ``kornia.metrics.ssim(x, y, 11).mean()`` (``ssim3d`` for 3-D);
* ``pytorch-msssim``: ``pytorch_msssim.ssim(x, y, data_range=1.0)`` ("valid" windows only);
* ``fused-ssim`` / ``fussim``: the fused CUDA kernels ``fused_ssim(x, y)`` of those packages
  (2-D, CUDA, constants for a data range of 1; zero "same" padding).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Callable, ContextManager, Optional

from torch import Tensor

from benchmarks import ROOT
from benchmarks.cases import Shape

SsimFn = Callable[[Tensor, Tensor], Tensor]

#: The contenders of ``bench_ssim.py`` (its table's columns).
CONTENDERS = ("unpatched", "patched", "kornia", "pytorch-msssim")
#: ``gpu_check.py`` adds the fused CUDA kernels.
GPU_CONTENDERS = (*CONTENDERS, "fused-ssim", "fussim")
#: Contenders with compiled extensions, probed in a child process before this one calls them.
COMPILED = ("fused-ssim", "fussim")


@dataclass
class Contender:
    """One SSIM implementation: how to call it, and under which patch state."""

    name: str
    fn: Optional[SsimFn]
    context: Callable[[], ContextManager[object]]
    missing: Optional[str] = None  # why it cannot run at all (e.g. not importable)
    supports_3d: bool = True
    cuda_only: bool = False

    def unsupported(self, shape: Shape, device: str = "cpu") -> Optional[str]:
        """Why this contender cannot run ``shape`` on ``device``, or None."""
        if self.missing is not None:
            return self.missing
        if len(shape) == 5 and not self.supports_3d:
            return f"{self.name} has no 3-D SSIM"
        if self.cuda_only and not device.startswith("cuda"):
            return f"{self.name} runs on CUDA only"
        return None


@contextlib.contextmanager
def unpatched_state() -> Iterator[None]:
    """Torchmetrics as released (ssim_patch reverted inside, whatever the environment did: an
    auto-apply ``.pth`` file, a plugin); the patch state found is put back after."""
    import ssim_patch
    from ssim_patch import _patcher

    saved = _patcher._snapshot()
    ssim_patch.revert()
    try:
        if ssim_patch.is_applied():
            raise RuntimeError("ssim_patch is applied while timing the unpatched torchmetrics call.")
        yield
    finally:
        _patcher._restore(saved)


@contextlib.contextmanager
def patched_state() -> Iterator[None]:
    """Inside ``ssim_patch.patched()``; raises if the patch did not apply. torchmetrics' image
    module is imported first: before it is, the patch is pending (it lands at that import)."""
    import torchmetrics.functional.image  # noqa: F401

    import ssim_patch

    with ssim_patch.patched():
        if not ssim_patch.is_applied():
            raise RuntimeError("ssim_patch.patched() did not apply the patch.")
        yield


def torchmetrics_ssim(x: Tensor, y: Tensor) -> Tensor:
    """``structural_similarity_index_measure(x, y, data_range=1.0)`` from torchmetrics' image module."""
    # torchmetrics.functional.structural_similarity_index_measure is a deprecated re-export in 1.x
    # (it warns on every call); the image module holds the function itself.
    from torchmetrics.functional.image import structural_similarity_index_measure

    out = structural_similarity_index_measure(x, y, data_range=1.0)
    assert isinstance(out, Tensor)
    return out


def _make_kornia() -> Contender:
    try:
        import kornia.metrics as km
    except Exception as exc:  # ImportError, or a broken install
        return Contender("kornia", None, contextlib.nullcontext, missing=f"kornia not importable ({exc})")

    def run(x: Tensor, y: Tensor) -> Tensor:
        out: Tensor = (km.ssim3d if x.ndim == 5 else km.ssim)(x, y, 11, max_val=1.0)
        return out.mean()

    return Contender("kornia", run, contextlib.nullcontext, supports_3d=hasattr(km, "ssim3d"))


def _make_pytorch_msssim() -> Contender:
    try:
        import pytorch_msssim
    except Exception as exc:
        return Contender(
            "pytorch-msssim", None, contextlib.nullcontext, missing=f"pytorch-msssim not importable ({exc})"
        )

    def run(x: Tensor, y: Tensor) -> Tensor:
        out = pytorch_msssim.ssim(x, y, data_range=1.0)
        assert isinstance(out, Tensor)
        return out

    return Contender("pytorch-msssim", run, contextlib.nullcontext)


def _make_fused(name: str, module: str) -> Contender:
    try:
        fused = __import__(module, fromlist=["fused_ssim"]).fused_ssim
    except Exception as exc:
        return Contender(name, None, contextlib.nullcontext, missing=f"{name} not importable ({exc})")

    def run(x: Tensor, y: Tensor) -> Tensor:
        out = fused(x, y, padding="same", train=x.requires_grad)
        assert isinstance(out, Tensor)
        return out

    return Contender(name, run, contextlib.nullcontext, supports_3d=False, cuda_only=True)


def make_contenders(names: Sequence[str] = CONTENDERS) -> dict[str, Contender]:
    """The contenders by name; those that cannot be imported carry a ``missing`` note."""
    import torchmetrics.functional.image  # noqa: F401 (imported first, so patched() swaps at once)

    makers: dict[str, Callable[[], Contender]] = {
        "unpatched": lambda: Contender("unpatched", torchmetrics_ssim, unpatched_state),
        "patched": lambda: Contender("patched", torchmetrics_ssim, patched_state),
        "kornia": _make_kornia,
        "pytorch-msssim": _make_pytorch_msssim,
        "fused-ssim": lambda: _make_fused("fused-ssim", "fused_ssim"),
        "fussim": lambda: _make_fused("fussim", "fussim"),
    }
    return {name: makers[name]() for name in names}


_PROBE = """
import sys
sys.path.insert(0, {root!r})
import torch
from benchmarks.contenders import make_contenders
c = make_contenders([{name!r}])[{name!r}]
if c.missing is not None:
    print(c.missing)
    sys.exit(3)
x = torch.rand(1, 1, 32, 32, device={device!r}, requires_grad=True)
y = torch.rand(1, 1, 32, 32, device={device!r})
with c.context():
    (1 - c.fn(x, y)).backward()
torch.cuda.synchronize() if {device!r}.startswith("cuda") else None
"""


def probe(name: str, device: str, timeout: float = 60.0) -> Optional[str]:
    """Run one small forward+backward of ``name`` in a child process; why it failed, or None.

    For compiled extensions, which can take the whole process down (a segfault from a build
    for another torch) instead of raising.
    """
    code = _PROBE.format(root=str(ROOT), name=name, device=device)
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return f"{name}: probe timed out after {timeout:g} s"
    if done.returncode == 0:
        return None
    last = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
    return f"{name} failed in a child process (exit {done.returncode}): {last[0][:300]}"
