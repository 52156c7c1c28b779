"""Where torchmetrics' hook functions are bound: an index of the module attributes that hold one.

Each loaded module is read once, and again only when it changes in a way that can add a binding (a
new module object under its name, a new attribute, or it was still being imported when last read).
So keeping the index current costs two fast passes over ``sys.modules``, not a read of every
attribute of every module. The patch's state machine (``_patcher``) owns the one index and decides
what to rebind; this module only finds the places.
"""

from __future__ import annotations

import sys
import types
from typing import Any, Callable, Optional

from ssim_patch import _releases

#: The module-level hook functions, by (module, name); a method hook point is not bound in modules.
_FUNCTION_HOOKS = (_releases.SSIM_COMPUTE, _releases.SSIM_UPDATE, _releases.UQI_COMPUTE)
_HOOK_KEYS = frozenset((hook.module, hook.name) for hook in _FUNCTION_HOOKS)
_HOOK_NAMES = frozenset(hook.name for hook in _FUNCTION_HOOKS)


def is_replacement(obj: object) -> bool:
    """One of ssim-patch's replacement functions."""
    return type(obj) is types.FunctionType and "__ssim_patch__" in obj.__dict__


def is_hook_like(value: object) -> bool:
    """A replacement, or a function of a torchmetrics module named like a hook point there."""
    return type(value) is types.FunctionType and (
        "__ssim_patch__" in value.__dict__
        or (value.__qualname__ in _HOOK_NAMES and (value.__module__, value.__qualname__) in _HOOK_KEYS)
    )


def _namespace(module: object) -> Optional[dict[str, Any]]:
    if not isinstance(module, types.ModuleType):
        return None
    try:
        namespace = object.__getattribute__(module, "__dict__")
    except Exception:
        return None
    return namespace if isinstance(namespace, dict) else None


def _importing(namespace: dict[str, Any]) -> bool:
    """The module is still executing (a later line may bind the hook function)."""
    return bool(getattr(namespace.get("__spec__"), "_initializing", False))


class Bindings:
    """Every module attribute that held a hook function when its module was last read.

    A module is read again when, since the last read, its ``sys.modules`` entry changed, its
    namespace gained or lost names, or it was still being imported. Callers check the current
    value of each place before touching it. Not seen: a name that already held something else
    being rebound to the hook function later (``importlib.reload`` rebinds the same names).
    """

    def __init__(self) -> None:
        self._modules: dict[str, types.ModuleType] = {}  # a copy of sys.modules as last synced
        self._names: list[str] = []  # the modules with a namespace, and in the same order:
        self._namespaces: list[dict[str, Any]] = []
        self._sizes: list[int] = []  # len(namespace) when last read (-1: never read)
        self._importing: set[int] = set()  # modules still being imported when last read
        self.places: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {}
        self.originals: set[int] = set()  # ids of the originals (kept alive by _patcher._originals)

    def _wanted(self, value: object) -> bool:
        return is_hook_like(value) or (type(value) is types.FunctionType and id(value) in self.originals)

    def _read(self, i: int) -> None:
        name, namespace = self._names[i], self._namespaces[i]
        attrs = tuple(attr for attr, value in list(namespace.items()) if self._wanted(value))
        if attrs:
            self.places[name] = (namespace, attrs)
        else:
            self.places.pop(name, None)
        if _importing(namespace):
            self._importing.add(i)
        else:
            self._importing.discard(i)

    def _sync(self) -> None:
        """Follow imports, removals and replacements in ``sys.modules`` (read by refresh())."""
        current = dict(sys.modules)
        old = {
            name: (namespace, size)
            for name, namespace, size in zip(self._names, self._namespaces, self._sizes)
        }
        importing = {self._names[i] for i in self._importing}
        self._modules = current
        self._names, self._namespaces, self._sizes = [], [], []
        for name, module in current.items():
            namespace = _namespace(module)
            if namespace is None:
                continue
            before = old.get(name)
            # A new module, or another module object under this name, is read by refresh().
            self._sizes.append(before[1] if before is not None and before[0] is namespace else -1)
            self._names.append(name)
            self._namespaces.append(namespace)
        now = dict(zip(self._names, self._namespaces))
        self.places = {name: place for name, place in self.places.items() if now.get(name) is place[0]}
        self._importing = {i for i, name in enumerate(self._names) if name in importing}

    def refresh(self) -> None:
        """Bring the index up to date with the loaded modules."""
        try:
            synced = sys.modules == self._modules  # identity first: a module's __eq__ rarely runs
        except Exception:
            synced = False
        if not synced:
            self._sync()
        sizes = list(map(len, self._namespaces))
        changed = set(self._importing)
        if sizes != self._sizes:
            changed.update(i for i, (a, b) in enumerate(zip(sizes, self._sizes)) if a != b)
            self._sizes = sizes
        for i in sorted(changed):
            self._read(i)

    def read_all(self) -> None:
        """Read every module again (an original that does not look like a hook function)."""
        self.refresh()
        for i in range(len(self._names)):
            self._read(i)

    def rebind(self, match: Callable[[object], bool], make: Callable[[Any], Any]) -> list[str]:
        """Replace every indexed binding whose value matches; the places changed."""
        changed = []
        for name, (namespace, attrs) in self.places.items():
            for attr in attrs:
                value = namespace.get(attr)
                if match(value):
                    namespace[attr] = make(value)
                    changed.append(f"{name}.{attr}")
        return sorted(changed)

    def bound(self, match: Callable[[object], bool]) -> tuple[str, ...]:
        """``module.attribute`` of every indexed binding whose value matches, sorted."""
        return tuple(
            sorted(
                f"{name}.{attr}"
                for name, (namespace, attrs) in self.places.items()
                for attr in attrs
                if match(namespace.get(attr))
            )
        )
