"""How any backend is chosen: :func:`choose`, ``SSIM_PATCH_BACKEND`` and what :func:`describe`
reports.

Each way of computing SSIM is a module of its own behind the protocol in ``_protocol``:

- ``cpu`` (:mod:`.cpu`): cache-sized pieces on CPU tensors;
- ``conv`` (:mod:`.conv`): depthwise convolutions, any device;
- ``triton`` (:mod:`.triton`, where it exists and Triton imports): fused kernels, 2-D CUDA;
- ``traced`` (:mod:`.traced`): plain differentiable ops (also the route of traces and transforms).

``SSIM_PATCH_BACKEND`` (``auto``, the default, or one of the names above) is read from the
environment at each call, so it holds for the whole process (and a test can set it). ``auto``
picks ``cpu`` for CPU tensors; ``triton`` for 2-D float16 / bfloat16 / float32 CUDA images where
the Triton backend loads and takes the call; ``conv`` for the rest (other devices, 3-D, float64).
A forced backend that cannot run a call raises; it never falls back silently. Under ``auto``, a
Triton kernel that fails to compile or launch falls back to the conv backend's convolutions for its
specialization, for the rest of the process, with one warning (``triton.FALLBACKS``; forced, it raises).

A backend module defines ``BACKEND``, an object with the protocol's members.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from typing import TYPE_CHECKING, Optional, Union

if TYPE_CHECKING:
    from torch import Tensor

    from ssim_patch.backends._protocol import Backend, Plan

#: The environment variable that forces a backend for the whole process.
ENV = "SSIM_PATCH_BACKEND"
#: How ``os.environ`` decodes its values on POSIX (its ``decodevalue``).
_ENCODING = sys.getfilesystemencoding()
#: Every name it takes, "auto" first.
NAMES = ("auto", "triton", "conv", "cpu", "traced")

#: Backends loaded so far, or why one cannot load (a sentence), by name.
_LOADED: dict[str, Union[Backend, str]] = {}
#: The dtypes auto sends to the triton backend on CUDA (as strings: no torch import here).
_TRITON_DTYPES = ("torch.float16", "torch.bfloat16", "torch.float32")


def requested() -> str:
    """The backend ``SSIM_PATCH_BACKEND`` asks for ("auto" when unset or empty); a ValueError for
    a name not in :data:`NAMES`."""
    raw = _environ_value()
    name = raw.strip().lower() or "auto"
    if name not in NAMES:
        raise ValueError(
            f"{ENV}={raw!r} is not a backend: use one of {', '.join(NAMES)} (auto is the default)."
        )
    return name


def _environ_value() -> str:
    """``SSIM_PATCH_BACKEND``'s value ("" when unset), read through ``os.environ``'s own mapping
    where it has one: torch.compile then guards on the variable set or unset (a graph compiled
    while it was unset recompiles when it is set); through ``os.environ.get`` dynamo guards only
    on a value that was set."""
    data = getattr(os.environ, "_data", None)
    if not isinstance(data, dict):
        return os.environ.get(ENV, "")
    value = data.get(os.environ.encodekey(ENV))
    if value is None:
        return ""
    # os.environ.decodevalue, but not as bytes.decode: dynamo of torch 2.4 cannot call that on a
    # constant (a fullgraph compile with the variable set stopped there); it folds str().
    return value if isinstance(value, str) else str(value, _ENCODING, "surrogateescape")


def load(name: str) -> Union[Backend, str]:
    """The backend called ``name`` (not "auto"), or why it cannot load here (a sentence). Any
    error while loading (Triton missing, or failing to start) leaves auto with the others."""
    found = _LOADED.get(name)
    if found is not None:
        return found
    try:
        module = importlib.import_module(f"{__name__}.{name}")
        result: Union[Backend, str] = module.BACKEND
    except Exception as exc:  # an optional accelerator: its failure must not break SSIM
        result = f"it does not load here ({type(exc).__name__}: {exc})"
    _LOADED[name] = result
    return result


def _why_not(name: str, x: Tensor, plan: Plan) -> Optional[str]:
    backend = load(name)
    return backend if isinstance(backend, str) else backend.unsupported(x, plan)


def choose(x: Tensor, plan: Plan, name: Optional[str] = None) -> Backend:
    """The backend for images ``x`` and ``plan``: the forced one (a RuntimeError naming it, why it
    cannot run the call and what can, if it cannot), else auto's pick. ``name``: what
    :func:`requested` answered, when the caller read it already."""
    name = requested() if name is None else name
    if name == "auto":
        name = _auto(x, plan)
    why = _why_not(name, x, plan)
    if why is not None:
        able = [other for other in NAMES[1:] if other != name and _why_not(other, x, plan) is None]
        raise RuntimeError(
            f"{ENV}={name} cannot compute SSIM of {tuple(x.shape)} {str(x.dtype).replace('torch.', '')} "
            f"images on {x.device}: {why}. Backends that can: {', '.join(able)} (or unset {ENV} for auto)."
        )
    backend = load(name)
    assert not isinstance(backend, str)
    return backend


def _auto(x: Tensor, plan: Plan) -> str:
    if x.device.type == "cpu":
        return "cpu"
    triton_shaped = x.device.type == "cuda" and x.ndim == 4 and str(x.dtype) in _TRITON_DTYPES
    return "triton" if triton_shaped and _why_not("triton", x, plan) is None else "conv"


@functools.cache
def _triton_present() -> bool:
    """Triton and the triton backend's module are installed (neither imported)."""
    return all(importlib.util.find_spec(m) is not None for m in ("triton", f"{__name__}.triton"))


def describe() -> tuple[str, tuple[tuple[str, str], ...]]:
    """What ``status()`` reports, without importing torch or Triton: the backend asked for (the
    forced name, or "auto"; for a value that names no backend, ``invalid SSIM_PATCH_BACKEND=...``),
    and what a call on CPU and on CUDA would use (``("cpu", ...), ("cuda", ...)``; CUDA: for 2-D
    float32 images, where the triton backend is installed; ``triton, conv where a kernel failed
    (N): <first failure>`` once a Triton kernel fell back to conv under auto)."""
    try:
        name = requested()
    except ValueError:
        return f"invalid {ENV}={os.environ.get(ENV, '')!r}", ()
    if name != "auto":
        return name, (("cpu", name), ("cuda", name))
    cuda = "triton" if _triton_present() else "conv"
    loaded = sys.modules.get(f"{__name__}.triton")  # never imported here: failures happened only if it was
    failed = loaded.fallbacks() if loaded is not None and hasattr(loaded, "fallbacks") else ()
    if failed:
        cuda += f", conv where a kernel failed ({len(failed)}): {failed[0]}"
    return "auto", (("cpu", "cpu"), ("cuda", cuda))


#: :func:`route`'s answer before torch is imported (the route is found when the engine loads).
UNDECIDED = ("undecided", "torch is not imported yet")


def route() -> tuple[str, str]:
    """The route of a fused call and why: ``("custom op", ...)`` where ``torch.library.custom_op``
    has what ``ssim_patch::similarity`` needs, else ``("autograd.Function", what it lacks)``, by
    feature detection (:func:`ssim_patch.backends._route.route`); :data:`UNDECIDED` until torch is
    imported (this never imports torch)."""
    if "torch" not in sys.modules:
        return UNDECIDED
    from ssim_patch.backends import _route

    return _route.route()


def route_summary(name: str, why: str) -> str:
    """One line for :func:`route`'s answer: ``autograd.Function (this torch has no ...)``."""
    return f"{name} ({why})"


def summary(backend: str, picks: tuple[tuple[str, str], ...]) -> str:
    """One line for :func:`describe`'s answer: ``auto (CPU: cpu, CUDA: conv)``, ``conv (forced by
    SSIM_PATCH_BACKEND)``."""
    if backend == "auto":
        return "auto (" + ", ".join(f"{device.upper()}: {name}" for device, name in picks) + ")"
    if picks:
        return f"{backend} (forced by {ENV})"
    return backend
