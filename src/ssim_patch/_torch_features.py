"""What the installed torch offers, found once by feature detection (never by catching an error):
the few torch internals the engine reads that moved between torch 2.0 and the newest.

- :func:`is_compiling`: ``torch.compiler.is_compiling`` (torch 2.3 on); before, the
  ``torch._utils.is_compiling`` that dynamo of torch 2.0-2.2 folds to True while it traces.
- :func:`is_fake`: ``torch._subclasses.fake_tensor.is_fake`` (2.1 on); on 2.0 an instance check.
- :func:`fake_mode_active`: ``torch._guards.detect_fake_mode`` (2.1 on); on 2.0 a look at the
  dispatch-mode stack.
- :func:`constant_under_old_dynamo`: ``torch._dynamo.assume_constant_result`` on torch 2.0-2.2.
- :data:`META_REFLECT_PAD2D_OUT`: whether ``aten::reflection_pad2d.out`` has a ``meta`` kernel
  (torch 2.1 on; 2.0 has one for the functional form only).
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import torch
import torch._guards
import torch._subclasses.fake_tensor as _fake
import torch.utils._python_dispatch as _dispatch
from torch import Tensor


def _compiling_probe() -> Callable[[], bool]:
    compiler = getattr(torch, "compiler", None)  # torch 2.0 has no torch.compiler
    probe: Any = getattr(compiler, "is_compiling", None)
    if probe is None:
        probe = torch._utils.is_compiling  # dynamo's constant_functions: True while it traces
    return probe  # type: ignore[no-any-return]


#: True while torch.compile (dynamo) traces; dynamo of every torch reads it as a constant.
is_compiling: Callable[[], bool] = _compiling_probe()


def _fake_probe() -> Callable[[object], bool]:
    probe: Any = getattr(_fake, "is_fake", None)
    if probe is None:  # torch 2.0

        def probe(value: object) -> bool:
            return isinstance(value, _fake.FakeTensor)

    return probe  # type: ignore[no-any-return]


#: True for a fake tensor (shape inference: it has no storage to read).
is_fake: Callable[[object], bool] = _fake_probe()

_detect_fake_mode: Any = getattr(torch._guards, "detect_fake_mode", None)


def fake_mode_active(like: Tensor) -> bool:
    """True under a fake-tensor mode (export, shape inference), or when ``like`` is fake."""
    if _detect_fake_mode is not None:
        return _detect_fake_mode() is not None
    stack = _dispatch._get_current_dispatch_mode_stack()  # torch 2.0
    return is_fake(like) or any(isinstance(mode, _fake.FakeTensorMode) for mode in stack)


#: torch 2.0 has a ``meta`` kernel for ``reflection_pad2d`` but not for its ``out=`` form.
META_REFLECT_PAD2D_OUT: bool = torch._C._dispatch_has_kernel_for_dispatch_key(
    "aten::reflection_pad2d.out", "Meta"
)

_F = TypeVar("_F", bound=Callable[..., Any])

#: Dynamo of torch 2.0-2.2 (told apart by the ``torch.compiler.is_compiling`` that 2.3 added):
#: it cannot build a frozen dataclass while it traces.
OLD_DYNAMO = getattr(getattr(torch, "compiler", None), "is_compiling", None) is None


def constant_under_old_dynamo(fn: _F) -> _F:
    """On :data:`OLD_DYNAMO`, mark ``fn`` as ``torch._dynamo.assume_constant_result`` does (the
    same attribute; a test checks): dynamo calls it on the constants it is given and puts what it
    returns in the graph as a constant, instead of tracing it. A newer dynamo traces ``fn`` (it
    builds dataclasses, and its arguments may be symbolic under ``dynamic=True``, which a constant
    result cannot take). Importing dynamo here would cost every program that imports the engine."""
    if OLD_DYNAMO:
        fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn
