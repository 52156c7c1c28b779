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
- :func:`transforms_active`: ``torch._C._are_functorch_transforms_active``, which dynamo of
  torch 2.1-2.4 cannot trace: read as a constant while dynamo traces.
- :func:`exporting`: ``torch.export`` records, strict or not: torch's own flag where it has one
  (``torch.compiler.is_exporting``: 2.11 has it, 2.4 not), else the flag that only torch.export
  sets (2.4: non-strict), and dynamo's own export mode (strict), read while dynamo traces.
- :func:`autocast_on`: ``torch.is_autocast_enabled(device_type)`` (2.4 on, with
  ``torch.get_autocast_dtype``); before, ``torch.is_autocast_cpu_enabled`` and CUDA's
  ``torch.is_autocast_enabled()``. :func:`autocast_off`: a region without it.
- :func:`plain_eager`: no dispatch mode on (``torch._C._len_torch_dispatch_stack``, 2.0 on) and
  a tensor of no subclass.
- :func:`function_apply`: an ``autograd.Function``'s ``apply`` without its per-call binding of
  the arguments to ``forward``'s signature, where ``Function.apply`` is Python and torch has
  ``unwrap_dead_wrappers`` (2.0 to 2.13; 2.14's apply is C++ and binds there:
  :data:`PYTHON_FUNCTION_APPLY`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
from typing import Any, Callable, ContextManager, Optional, TypeVar

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


def dynamo_constant(fn: _F) -> _F:
    """Mark ``fn`` as ``torch._dynamo.assume_constant_result`` does (the same attribute; a test
    checks): while dynamo traces, it calls ``fn`` and puts what it returns in the graph as a
    constant, instead of tracing it. For functions of no argument that read what dynamo cannot
    trace. Importing dynamo here would cost every program that imports the engine."""
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn


def constant_under_old_dynamo(fn: _F) -> _F:
    """On :data:`OLD_DYNAMO`, mark ``fn`` as ``torch._dynamo.assume_constant_result`` does (the
    same attribute; a test checks): dynamo calls it on the constants it is given and puts what it
    returns in the graph as a constant, instead of tracing it. A newer dynamo traces ``fn`` (it
    builds dataclasses). Importing dynamo here would cost every program that imports the engine.

    On every torch ``fn`` is called through a wrapper that, while dynamo traces, gives it the
    value of each symbolic int among its arguments (:func:`_specialized`)."""
    target = dynamo_constant(fn) if OLD_DYNAMO else fn

    @functools.wraps(fn, updated=())  # not __dict__: dynamo traces the wrapper
    def call(*args: Any) -> Any:
        if is_compiling():
            args = _specialized(args)
        return target(*args)

    return call  # type: ignore[return-value]


def _specialized(value: Any) -> Any:
    """``value`` with each int in it (in tuples and lists too) replaced by the int it holds,
    found by comparisons that dynamo guards on. Under ``dynamic=True`` dynamo makes symbolic the
    ints a compiled function reads from its closure or its arguments (a ``kernel_size``): a
    constant function cannot take them (torch 2.1-2.2 stopped with ``InternalTorchDynamoError:
    SymNodeVariable() is not a constant``), and on torch 2.4 the window's taps became symbolic
    floats, which the custom op's ``float[]`` plan cannot take; unpatched torchmetrics compiles.
    A compiled function with another value fails a guard and is compiled again."""
    if isinstance(value, (tuple, list)):
        items = []
        for item in value:
            items.append(_specialized(item))
        return tuple(items) if isinstance(value, tuple) else items
    # Dynamo of 2.1 calls a SymInt an int: every int is searched (a constant one at no cost).
    if not isinstance(value, (int, torch.SymInt)) or isinstance(value, bool):
        return value
    if value < 0:
        return -_specialized(-value)
    low, high = 0, 1  # the value is in [low, high)
    while value >= high:
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        if value >= middle:
            low = middle
        else:
            high = middle
    return low


_are_transforms_active: Any = getattr(torch._C, "_are_functorch_transforms_active", None)


@dynamo_constant
def transforms_active() -> bool:
    """True while a ``torch.func`` transform (vmap, grad, jvp, ...) is active. Dynamo of torch
    2.11 on reads the C function as a constant itself; that of 2.1-2.4 cannot trace it (fullgraph
    and strict export failed), so dynamo calls this function as a constant (:func:`dynamo_constant`:
    the same value, read when it traces)."""
    return bool(_are_transforms_active is not None and _are_transforms_active())


_unwrap_dead_wrappers: Any = getattr(
    getattr(getattr(torch, "_functorch", None), "utils", None), "unwrap_dead_wrappers", None
)


#: True where ``torch.autograd.Function.apply`` is Python's classmethod (torch 2.0 to 2.13), whose
#: steps :func:`function_apply` can take without the binding; 2.14's is C++ (it binds there).
PYTHON_FUNCTION_APPLY = (
    isinstance(inspect.getattr_static(torch.autograd.Function, "apply", None), classmethod)
    and _unwrap_dead_wrappers is not None
    and _are_transforms_active is not None
)


def function_apply(function: type[torch.autograd.Function]) -> Callable[..., Any]:
    """``function.apply`` for callers that pass every argument, positionally: outside a
    ``torch.func`` transform the steps of ``Function.apply`` but its binding of the arguments to
    ``forward``'s signature (``inspect``'s ``bind``, a tenth of a 16x16 call's host time), which
    such a call leaves as it is: dead functorch wrappers unwrapped, then the base class's apply.
    Under a transform, or on a torch whose apply is not Python's (:data:`PYTHON_FUNCTION_APPLY`),
    ``function.apply``."""
    if not PYTHON_FUNCTION_APPLY:
        return function.apply
    base = super(torch.autograd.Function, function).apply  # type: ignore[misc]
    full: Callable[..., Any] = function.apply
    unwrap, active = _unwrap_dead_wrappers, _are_transforms_active

    def apply(*args: Any) -> Any:
        if active():
            return full(*args)
        return base(*unwrap(args))

    return apply


def _export_flag() -> Optional[str]:
    """The ``torch.compiler`` flag that is True while ``torch.export`` records and never under
    ``torch.compile``: ``_is_exporting_flag`` (``torch.compiler.is_exporting``), strict or not;
    else ``_is_compiling_flag`` (2.4 has it), set by torch.export alone around its aten tracing
    (the whole non-strict export; strict's second step only: dynamo traces without it; torch
    2.14 sets it under torch.compile too, but has the first). None on a torch that has neither
    (2.1: no non-strict export either)."""
    compiler = getattr(torch, "compiler", None)
    for name in ("_is_exporting_flag", "_is_compiling_flag"):
        if hasattr(compiler, name):
            return name
    return None


#: See :func:`_export_flag`.
EXPORT_FLAG = _export_flag()


@dynamo_constant
def _dynamo_exports() -> bool:
    """True when dynamo calls this while it traces for an export (strict ``torch.export``,
    ``torch._dynamo.export``): the translator dynamo runs holds ``export``. Called as a constant
    while dynamo traces (:func:`dynamo_constant`), where nothing else tells a strict export from
    ``torch.compile`` on torch before ``torch.compiler.is_exporting``; False elsewhere, and on a
    dynamo that keeps no ``symbolic_convert.tls`` (2.1, where every dynamo trace takes the traced
    route anyway)."""
    convert = sys.modules.get("torch._dynamo.symbolic_convert")
    translator = getattr(getattr(convert, "tls", None), "current_tx", None)
    return bool(getattr(translator, "export", False))


def exporting() -> bool:
    """True while ``torch.export`` records, strict or not (and while ``torch._dynamo.export``
    traces); False under ``torch.compile`` and eagerly. Dynamo reads the flag as a global (and
    guards on it) and :func:`_dynamo_exports` as a constant."""
    if EXPORT_FLAG is not None and getattr(torch.compiler, EXPORT_FLAG):
        return True
    return is_compiling() and _dynamo_exports()


#: The number of dispatch modes on, infra modes (fake tensors, proxies) included; None where torch
#: does not say.
_dispatch_modes: Optional[Callable[[], int]] = getattr(torch._C, "_len_torch_dispatch_stack", None)
#: Tensor types of a plain eager call (any other: a subclass, fake, functional, DTensor ...).
_PLAIN = (Tensor, torch.nn.Parameter)


def plain_eager(like: Tensor) -> bool:
    """True when ``like`` is a plain tensor (or Parameter) and no dispatch mode is on: no fake
    mode, no ``make_fx`` or AOT tracing, no functionalization, no mode of a user's. False where
    torch cannot tell."""
    return type(like) in _PLAIN and _dispatch_modes is not None and _dispatch_modes() == 0


def _autocast_probe(by_device_type: Optional[bool] = None) -> Callable[[str], bool]:
    """``by_device_type``: torch's one call for every device type (2.4 on, found by
    ``torch.get_autocast_dtype``); else the CPU and CUDA calls of torch 2.0-2.3."""
    if by_device_type is None:
        by_device_type = hasattr(torch, "get_autocast_dtype")
    if by_device_type:
        available: Any = getattr(torch.amp, "is_autocast_available", None)
        known: dict[str, bool] = {}  # device types autocast has (asking about another raises)

        def probe(device_type: str) -> bool:
            has = known.get(device_type)
            if has is None:
                has = (
                    bool(available(device_type)) if available is not None else device_type in ("cpu", "cuda")
                )
                known[device_type] = has
            return has and bool(torch.is_autocast_enabled(device_type))

        return probe

    def old_probe(device_type: str) -> bool:
        if device_type == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        if device_type == "cuda":
            return bool(torch.is_autocast_enabled())
        return False

    return old_probe


#: True while autocast is on for a device type ("cpu", "cuda"): matrix products and
#: convolutions there would run in bfloat16 or float16.
autocast_on: Callable[[str], bool] = _autocast_probe()


def autocast_off(device_type: str) -> ContextManager[Any]:
    """A region where autocast is off for ``device_type`` (nothing to enter where it is off
    already: entering ``torch.autocast`` costs a few microseconds)."""
    if autocast_on(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
