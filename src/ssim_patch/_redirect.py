"""A release's function made to run a trampoline's code while patched, and given its own back.

``Metric.__init__`` wraps the bound ``update`` of each new instance, so an instance created before
``apply()`` holds the release's own function object, not the class attribute the patch replaces.
Swapping that object's ``__code__`` for a trampoline (whose body imports and calls the corrected
function) reaches it, and every bound method, wrapper, subclass and thread that holds it, eagerly
or under ``torch.compile`` (which traces the code the function holds when it runs). The object
itself stays the same, so identity checks and pickling by reference are unaffected, and
``revert()`` gives it back its own code object. While swapped, :func:`own` is a copy of the
function that runs the release's code (for the replacement's own fallbacks).
"""

from __future__ import annotations

import types
from typing import Any, Callable

#: id(function) -> (the function, its own code, a copy that runs that code), while swapped.
_swapped: dict[int, tuple[types.FunctionType, types.CodeType, types.FunctionType]] = {}


def redirect(function: types.FunctionType, trampoline: Callable[..., Any]) -> None:
    """Make ``function`` run ``trampoline``'s code (a plain function with the same parameters;
    neither has a closure)."""
    if id(function) in _swapped:
        return
    own_code = function.__code__
    copy = types.FunctionType(
        own_code, function.__globals__, function.__name__, function.__defaults__, function.__closure__
    )
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__qualname__ = function.__qualname__
    copy.__module__ = function.__module__
    _swapped[id(function)] = (function, own_code, copy)
    function.__code__ = trampoline.__code__


def can_redirect(function: object) -> bool:
    """``function`` is a plain function without a closure (its code can be swapped for one without)."""
    return type(function) is types.FunctionType and not function.__closure__


def own(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` itself, or, while its code is swapped, a copy that runs its own code."""
    entry = _swapped.get(id(function))
    return function if entry is None else entry[2]


def release_copies(qualname: str) -> list[Callable[..., Any]]:
    """The copies that run the own code of the swapped functions called ``qualname``."""
    return [copy for function, _, copy in _swapped.values() if function.__qualname__ == qualname]


def restore_all() -> None:
    """Give every swapped function its own code back."""
    while _swapped:
        _, (function, own_code, _) = _swapped.popitem()
        function.__code__ = own_code
