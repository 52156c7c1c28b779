"""Which route a call takes, decided here only: the fused route this torch has (:func:`route`:
the custom op, or an ``autograd.Function`` where torch lacks what the op needs, by feature
detection), whether a fused call goes through the custom op or the ``autograd.Function``
(:func:`through_custom_op`), whether a call takes the traced route (:func:`use_traced`), and
whether a backward recomputes (:func:`recomputes`). Read by :mod:`ssim_patch.backends._op` and
:mod:`ssim_patch.backends._custom_op` alike.
"""

from __future__ import annotations

import inspect
from typing import Optional

import torch
from torch import Tensor

from ssim_patch import _torch_features
from ssim_patch._torch_features import exporting, is_compiling, plain_eager
from ssim_patch.backends._protocol import Needs


def _missing() -> Optional[str]:
    """What this torch lacks for the custom op, as a clause (None: nothing)."""
    library = torch.library
    for name in ("custom_op", "register_fake", "register_autograd"):
        if not hasattr(library, name):
            return f"torch {torch.__version__} has no torch.library.{name}"
    if "schema" not in inspect.signature(library.custom_op).parameters:
        return f"torch {torch.__version__}'s torch.library.custom_op takes no schema"
    return None


#: Why this torch takes the ``autograd.Function`` route (None: it has the custom op).
MISSING = _missing()
#: True where the fused route has the custom op ``ssim_patch::similarity`` (see
#: :func:`through_custom_op` for the calls that take it).
CUSTOM_OP = MISSING is None


def route() -> tuple[str, str]:
    """The fused route this torch takes, and why: ``("custom op", reason)`` or
    ``("autograd.Function", reason)``; for ``status()``, ``ssim-patch check`` and the pytest
    header."""
    if MISSING is None:
        return "custom op", (
            f"torch {torch.__version__} has torch.library.custom_op; "
            "plain eager calls take the autograd.Function"
        )
    return "autograd.Function", MISSING


def through_custom_op(x: Tensor) -> bool:
    """True when a fused call goes through the custom op: where torch has it, while
    ``torch.compile`` traces, under a dispatch mode (fake tensors, ``make_fx`` and AOT tracing,
    functionalization, a mode that counts ops) and for images of a tensor subclass (fake,
    functional, DTensor ...). A plain eager call takes the ``autograd.Function`` instead: the same
    backend forward and backward from the same kept tensors, without the op's dispatch (its
    schema, its fake implementation's bookkeeping, the autograd wrapper of ``register_autograd``),
    which cost a 16x16 call more host time than the backend's own work."""
    return CUSTOM_OP and (compiling() or not plain_eager(x))


def tracing() -> bool:
    """True while torch.compile traces, a torch.func transform is active or forward AD is on."""
    return compiling() or transforms_active() or forward_ad()


#: True while a torch.func transform (vmap, grad, jvp, ...) is active.
transforms_active = _torch_features.transforms_active


def compiling() -> bool:
    """True while torch.compile traces."""
    return is_compiling()


def forward_ad() -> bool:
    """True while forward-mode AD is on."""
    level: int = getattr(torch.autograd.forward_ad, "_current_level", -1)
    return level >= 0


def leaving() -> bool:
    """True while ``torch.jit.trace`` or ``torch.export`` records: what they write leaves the
    process, and must hold standard (aten) ops only."""
    return torch._C._get_tracing_state() is not None or exporting()


def use_traced() -> bool:
    """True when a call takes the traced route (autograd through plain ops, no backend chosen):
    while a transform is active, forward AD is on, or ``torch.jit.trace`` or ``torch.export``
    records; on a torch without the custom op, also while ``torch.compile`` traces. Else the
    chosen backend runs in the custom op (compiled: one opaque op in the graph; see
    :func:`through_custom_op`) or in the ``autograd.Function``."""
    if not CUSTOM_OP and compiling():
        return True  # first: dynamo of torch 2.1-2.3 reads nothing else here
    return transforms_active() or forward_ad() or leaving()


def flags(needs: Needs) -> tuple[bool, bool, bool, bool]:
    """``needs`` as (x, y, c1, c2)."""
    return needs.x, needs.y, needs.c1, needs.c2


def recomputes(kept: Needs, needs: Needs, *, opaque: bool) -> bool:
    """True when a backward recomputes through :func:`ssim_patch.backends.traced.recompute`, else
    the backend's backward runs from what the forward kept (``kept``: the inputs that needed a
    gradient then). It recomputes a backward that must itself be differentiable (grad mode on:
    ``create_graph``, a double backward), one under a ``torch.func`` transform or forward AD, one
    asked (``needs``) for an input nothing was kept for, and, unless the backward is an
    ``opaque`` op, one that ``torch.compile`` traces."""
    if torch.is_grad_enabled() or transforms_active() or forward_ad():
        return True
    covered = any(flags(kept)) and all(k or not n for k, n in zip(flags(kept), flags(needs)))
    return not covered or (not opaque and compiling())
