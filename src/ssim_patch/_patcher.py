"""Swap torchmetrics' SSIM hook point for the corrected function, and put it back.

The patcher knows the hook points and their signatures (``_releases``) and where the original is
bound; the numbers come from ``_adapters``/``engine``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import sys
import threading
import types
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import wrapt
from packaging.version import InvalidVersion, Version

from ssim_patch import _releases
from ssim_patch._adapters import make_replacement
from ssim_patch._options import check_padding as _check_padding


class PatchError(RuntimeError):
    """The installed torchmetrics cannot be patched safely; nothing was changed."""


class UntestedReleaseWarning(UserWarning):
    """The installed torchmetrics is newer than the newest release ssim-patch was tested with."""


@dataclass(frozen=True)
class PatchReport:
    """Where the patch stands.

    ``applied``: the corrected function is bound now. ``pending``: apply() was called before
    torchmetrics was imported; the patch lands when ``torchmetrics.functional.image.ssim`` is.
    ``places``: ``module.attribute`` bindings that hold the corrected function.
    """

    applied: bool
    pending: bool
    release: Optional[str]
    hook: Optional[str]
    padding: Optional[str]
    strict: Optional[bool]
    supported: bool
    tested: bool
    upstream_bugs: tuple[str, ...]
    places: tuple[str, ...]


@dataclass
class _Options:
    padding: str
    strict: bool


_lock = threading.RLock()
_options: Optional[_Options] = None  # what the user asked for (applied or pending)
_applied = False
_hook_registered = False
_originals: list[Callable[..., Any]] = []  # every original seen (a reload makes a new one)
_warned: set[str] = set()


def _release() -> Version:
    try:
        text = importlib.metadata.version("torchmetrics")
    except importlib.metadata.PackageNotFoundError:
        module = sys.modules.get("torchmetrics")
        found = getattr(module, "__version__", None)
        if not isinstance(found, str):
            raise PatchError(
                "torchmetrics is not installed: install a release from 0.8.2 to 1.9.0, "
                "e.g. pip install 'torchmetrics==1.9.0'."
            ) from None
        text = found
    try:
        return Version(text)
    except InvalidVersion:
        raise PatchError(f"torchmetrics reports an unreadable version {text!r}.") from None


def _is_replacement(obj: object) -> bool:
    return type(obj) is types.FunctionType and "__ssim_patch__" in obj.__dict__


def _signature_problem(func: object, hook: _releases.HookPoint) -> Optional[str]:
    if func is None:
        return f"{_releases.MODULE} has no function {hook.name}"
    if not callable(func):
        return f"{_releases.MODULE}.{hook.name} is {type(func).__name__}, not a function"
    try:
        params = tuple(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return f"the signature of {_releases.MODULE}.{hook.name} cannot be read"
    if params != hook.parameters:
        return (
            f"{_releases.MODULE}.{hook.name} takes ({', '.join(params)}), "
            f"expected ({', '.join(hook.parameters)})"
        )
    return None


def _module_dicts() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, module in list(sys.modules.items()):
        if not isinstance(module, types.ModuleType):
            continue
        try:
            namespace = object.__getattribute__(module, "__dict__")
        except Exception:
            continue
        if isinstance(namespace, dict):
            out.append((name, namespace))
    return out


def _rebind(match: Callable[[object], bool], make: Callable[[Any], Any]) -> list[str]:
    places = []
    for name, namespace in _module_dicts():
        for attr, value in list(namespace.items()):
            if type(value) is types.FunctionType and match(value):
                namespace[attr] = make(value)
                places.append(f"{name}.{attr}")
    return sorted(places)


def _is_hook_function(value: object, hook: _releases.HookPoint) -> bool:
    """A torchmetrics hook function, the current one or an older copy: ``importlib.reload`` of the
    module makes a new function and leaves the old one bound wherever it was imported by name."""
    return (
        type(value) is types.FunctionType
        and value.__qualname__ == hook.name
        and value.__module__ == _releases.MODULE
        and not _is_replacement(value)
    )


def _unpatch_all() -> list[str]:
    return _rebind(_is_replacement, lambda value: value.__wrapped__)


def _fail(strict: bool, message: str) -> None:
    if strict:
        raise PatchError(message + " Nothing was changed.")
    warnings.warn(message + " Nothing was changed (strict=False).", UserWarning, stacklevel=4)


def _swap(options: _Options) -> bool:
    """Bind the corrected function everywhere; True when applied. Caller holds the lock."""
    global _applied
    version = _release()
    hook = _releases.hook_point(version)
    assert hook is not None
    module = sys.modules[_releases.MODULE]
    current: Any = getattr(module, hook.name, None)
    original = current.__wrapped__ if _is_replacement(current) else current
    problem = _signature_problem(original, hook)
    if problem is not None:
        _fail(options.strict, f"Cannot patch torchmetrics {version}: {problem}.")
        return False
    assert original is not None
    if not any(original is known for known in _originals):
        _originals.append(original)
    _unpatch_all()
    replacement = make_replacement(hook, original, options.padding)
    known = {id(k) for k in _originals}
    # Every binding of any original (a reloaded module leaves older ones around) gets the new one.
    _rebind(
        lambda value: id(value) in known or _is_hook_function(value, hook),
        lambda value: replacement,
    )
    if getattr(module, hook.name, None) is not replacement:
        setattr(module, hook.name, replacement)
    _applied = True
    return True


def _on_import(module: types.ModuleType) -> None:
    global _hook_registered, _options
    with _lock:
        # wrapt calls a post-import hook once and forgets it: a later pending apply() (after
        # torchmetrics was dropped from sys.modules, or its import failed) must register it again.
        _hook_registered = False
        if _options is None or _applied:
            return
        wanted, _options = _options, None  # if the swap fails, nothing is pending any more
        if _swap(wanted):
            _options = wanted


def _check_release(strict: bool) -> bool:
    version = _release()
    hook = _releases.hook_point(version)
    if hook is None:
        _fail(
            strict,
            f"torchmetrics {version} is not supported: ssim-patch supports releases from "
            f"{_releases.OLDEST} (tested up to {_releases.NEWEST}).",
        )
        return False
    if version > _releases.NEWEST and str(version) not in _warned:
        _warned.add(str(version))
        warnings.warn(
            f"torchmetrics {version} is newer than {_releases.NEWEST}, the newest release ssim-patch "
            f"was tested with; its {hook.name} signature matches, so the patch is applied.",
            UntestedReleaseWarning,
            stacklevel=3,
        )
    return True


def apply(*, padding: str = "same", strict: bool = True) -> PatchReport:
    """Make every torchmetrics SSIM and MS-SSIM API use the corrected SSIM.

    Works before or after torchmetrics is imported. Calling it again with the same options does
    nothing; with other options it re-applies. ``strict``: raise :class:`PatchError` on an
    unsupported release or signature (else warn); either way nothing is changed then.
    """
    global _options, _hook_registered, _applied
    _check_padding(padding)
    with _lock:
        if not _check_release(strict):
            return status()
        wanted = _Options(padding, bool(strict))
        if _applied and _options == wanted and _still_bound():
            return status()
        if _releases.MODULE not in sys.modules:
            _options = wanted
            _applied = False
            if not _hook_registered:
                wrapt.register_post_import_hook(_on_import, _releases.MODULE)
                _hook_registered = True
            return status()
        if _swap(wanted):  # on failure (strict=False) the previous state is left as it was
            _options = wanted
        return status()


def _still_bound() -> bool:
    hook = _releases.hook_point(_release())
    module = sys.modules.get(_releases.MODULE)
    return hook is not None and _is_replacement(getattr(module, hook.name, None))


def revert() -> PatchReport:
    """Put back the very same original objects wherever the corrected function is bound."""
    global _options, _applied
    with _lock:
        _options = None
        _applied = False
        _unpatch_all()
        return status()


def is_applied() -> bool:
    """True when the corrected function is bound in torchmetrics now."""
    with _lock:
        return _applied


def status() -> PatchReport:
    """The installed release, its hook point and upstream bugs, and where the patch is bound."""
    with _lock:
        try:
            version: Optional[Version] = _release()
        except PatchError:
            version = None
        hook = _releases.hook_point(version) if version is not None else None
        places = tuple(_rebind(_is_replacement, lambda value: value)) if _applied else ()
        return PatchReport(
            applied=_applied,
            pending=_options is not None and not _applied,
            release=str(version) if version is not None else None,
            hook=hook.name if hook is not None else None,
            padding=_options.padding if _options is not None else None,
            strict=_options.strict if _options is not None else None,
            supported=hook is not None,
            tested=version is not None and _releases.is_pinned(version),
            upstream_bugs=_releases.upstream_bugs(version) if version is not None else (),
            places=places,
        )


def _snapshot() -> Optional[_Options]:
    with _lock:
        return _Options(_options.padding, _options.strict) if _options is not None else None


def _restore(saved: Optional[_Options]) -> None:
    if saved is None:
        revert()
    else:
        apply(padding=saved.padding, strict=saved.strict)


class patched(contextlib.ContextDecorator):
    """Context manager and decorator: apply with these options, then restore the previous state."""

    def __init__(self, *, padding: str = "same", strict: bool = True) -> None:
        _check_padding(padding)
        self.padding = padding
        self.strict = strict
        self._saved: list[Optional[_Options]] = []

    def __enter__(self) -> PatchReport:
        with _lock:
            self._saved.append(_snapshot())
            return apply(padding=self.padding, strict=self.strict)

    def __exit__(self, *exc: object) -> None:
        with _lock:
            _restore(self._saved.pop())
