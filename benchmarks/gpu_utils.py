"""What the GPU benchmarks share (benchmarks/gpu_*.py, run by gpu_check.py): progress lines, the
patched engine with a backend forced, which backend a call takes, TF32's settings (read, set, kept),
images for the Triton cases and milliseconds as text."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from benchmarks.cases import (
    Case,
    Shape,
    make_inputs,
)
from benchmarks.contenders import (
    Contender,
    patched_state,
    torchmetrics_ssim,
)

DataRange = Union[None, float, tuple[float, float], Tensor]


def log(message: str) -> None:
    """Progress goes to stderr."""
    print(message, file=sys.stderr, flush=True)


#: The backends forced beside the default ("auto") in every patched row.
BACKENDS = ("triton", "conv")
ENV = "SSIM_PATCH_BACKEND"


@contextlib.contextmanager
def forced_backend(name: Optional[str]) -> Iterator[None]:
    """``SSIM_PATCH_BACKEND=name`` inside (None: the environment as found), restored after."""
    if name is None:
        yield
        return
    saved = os.environ.get(ENV)
    os.environ[ENV] = name
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = saved


def backend_contenders() -> dict[str, Contender]:
    """``patched <backend>`` for each of :data:`BACKENDS`: the patched call with that backend forced."""

    def context(name: str) -> Callable[[], contextlib.AbstractContextManager[None]]:
        @contextlib.contextmanager
        def both() -> Iterator[None]:
            with patched_state(), forced_backend(name):
                yield

        return both

    return {
        f"patched {name}": Contender(f"patched {name}", torchmetrics_ssim, context(name)) for name in BACKENDS
    }


def backend_for(
    shape: Shape, device: str, dtype: torch.dtype = torch.float32, name: Optional[str] = None
) -> str:
    """The backend the patched SSIM (11-tap Gaussian) of images ``shape`` runs on, or why none can."""
    from ssim_patch import _filters, backends
    from ssim_patch.backends._protocol import Plan

    nd = len(shape) - 2
    plan = Plan(_filters.Blur((_filters.gaussian_taps(1.5, 11),) * nd, "same"))
    probe_images = torch.empty((1, 1, *[16] * nd), dtype=dtype, device=device)
    try:
        with forced_backend(name):
            return backends.choose(probe_images, plan).name
    except Exception as exc:
        return f"n/a ({reason(exc)})"


def reason(exc: BaseException) -> str:
    """The reason in a backend's "cannot compute" error: between its first colon and "Backends"."""
    return str(exc).split(": ", 1)[-1].split(". Backends that can")[0][:160]


def _read(path: str) -> Callable[[], object]:
    """A reader of the attribute ``path`` under ``torch`` (``"backends.cudnn.allow_tf32"``)."""

    def read() -> object:
        value: Any = torch
        for part in path.split("."):
            value = getattr(value, part)
        return value

    return read


#: Every TF32 setting: the legacy flags, the matmul precision and (torch >= 2.9) ``fp32_precision``.
TF32_SETTINGS: dict[str, Callable[[], object]] = {
    "cudnn.allow_tf32": _read("backends.cudnn.allow_tf32"),
    "cuda.matmul.allow_tf32": _read("backends.cuda.matmul.allow_tf32"),
    "float32_matmul_precision": torch.get_float32_matmul_precision,
    "fp32_precision": _read("backends.fp32_precision"),
    "cuda.matmul.fp32_precision": _read("backends.cuda.matmul.fp32_precision"),
    "cudnn.fp32_precision": _read("backends.cudnn.fp32_precision"),
    "cudnn.conv.fp32_precision": _read("backends.cudnn.conv.fp32_precision"),
}


def tf32_state() -> dict[str, str]:
    """Every TF32 setting this torch has, as text (``n/a (...)`` where reading it fails)."""
    state = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, read in TF32_SETTINGS.items():
            try:
                state[name] = repr(read())
            except Exception as exc:
                state[name] = f"n/a ({type(exc).__name__})"
    return state


def set_tf32(on: bool) -> None:
    """TF32 on (``allow_tf32`` flags, matmul precision "high") or off ("highest")."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.cudnn.allow_tf32 = on
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.set_float32_matmul_precision("high" if on else "highest")


#: Writable TF32 settings (object path under torch, attribute), restored in this order.
_WRITABLE = (
    ("backends.cudnn", "allow_tf32"),
    ("backends.cuda.matmul", "allow_tf32"),
    ("backends", "fp32_precision"),
    ("backends.cuda.matmul", "fp32_precision"),
    ("backends.cudnn", "fp32_precision"),
    ("backends.cudnn.conv", "fp32_precision"),
)


@contextlib.contextmanager
def kept_tf32() -> Iterator[None]:
    """Put back every TF32 setting found on entry (the settings this torch has)."""
    saved: list[tuple[object, str, object]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path, attr in _WRITABLE:
            with contextlib.suppress(Exception):
                owner = _read(path)()
                saved.append((owner, attr, getattr(owner, attr)))
    precision = torch.get_float32_matmul_precision()
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.set_float32_matmul_precision(precision)
            for owner, attr, value in saved:
                with contextlib.suppress(Exception):
                    setattr(owner, attr, value)


def triton_inputs(shape: Shape, mode: str, dtype: torch.dtype, device: str) -> tuple[Tensor, Tensor]:
    x, y = make_inputs(Case(device, shape, "forward"))
    x, y = x.to(dtype), y.to(dtype)
    if mode == "backward":
        x.requires_grad_(True)
    return x, y


def ms3(seconds: Optional[float]) -> str:
    """Seconds as milliseconds with 3 decimals, ``n/a`` for None."""
    return "n/a" if seconds is None else f"{seconds * 1e3:.3f}"
