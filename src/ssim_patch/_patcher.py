"""Swap torchmetrics' hook points (SSIM's and UQI's) for the corrected functions, and put them back.

The patcher knows the hook points and their signatures (``_releases``) and where the originals are
bound; the numbers come from ``_adapters``/``engine``, imported only when a torchmetrics module
with a hook point is (so ``import ssim_patch`` and a pending ``apply()`` load neither torch nor
torchmetrics). Each module with a hook point is patched when it is loaded: at ``apply()``, or by a
post-import hook of its own, in whatever order torchmetrics imports them. A hook point whose
signature does not match stops the whole patch: nothing is changed (or what its earlier modules
got is put back).

Where the hook function is bound is kept in an index (``_bindings``, a ``_bindings.Bindings``
over ``sys.modules``), so a no-op ``apply()``, ``status()`` and ``patched()`` do not read every
attribute of every module.

The state is exported to the environment that the start-up hook (``_startup``) reads, so child
processes started afterwards (spawn, forkserver, subprocess) are patched the same way.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import inspect
import os
import sys
import threading
import types
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import wrapt
from packaging.version import InvalidVersion, Version

from ssim_patch import _redirect, _releases
from ssim_patch._bindings import Bindings, is_hook_like, is_replacement
from ssim_patch._options import check_padding as _check_padding

#: Read by the start-up hook in every new Python process (see ``_startup``).
ENV_AUTO = "SSIM_PATCH_AUTO"
ENV_PADDING = "SSIM_PATCH_PADDING"
#: ``SSIM_PATCH_AUTO`` set to one of these before apply(): the environment is left alone.
_ENV_OFF = ("0", "false", "no", "off")


class PatchError(RuntimeError):
    """The installed torchmetrics cannot be patched safely; nothing was changed."""


class UntestedReleaseWarning(UserWarning):
    """The installed torchmetrics is newer than the newest release ssim-patch was tested with."""


@dataclass(frozen=True)
class PatchReport:
    """Where the patch stands.

    ``applied``: the corrected functions are bound now, in every torchmetrics module with a hook
    point that is loaded. ``pending``: apply() was called before (some of) those modules were
    imported; the patch lands in each when it is. ``hook``: SSIM's hook point (a name in
    ``torchmetrics.functional.image.ssim``); ``hooks``: every hook point of the release, as
    ``module.name`` (SSIM's, then UQI's). ``upstream_bugs``: ids of ``_releases.BUGS`` (SSIM's,
    then UQI's, prefixed ``uqi-``). ``places``: ``module.attribute`` bindings that hold the corrected
    SSIM function; ``uqi_places``: those that hold the corrected UQI (and, from torchmetrics 1.2.1,
    ``torchmetrics.image.uqi.UniversalImageQualityIndex.update``). ``backend``: the engine's backend
    ``SSIM_PATCH_BACKEND`` asks for ("auto" unless forced); ``backend_for``: what a call on CPU and
    on CUDA uses, as ``(("cpu", name), ("cuda", name))`` (see ``ssim_patch.backends``). ``route``:
    how a call reaches the backend, "custom op" or "autograd.Function" ("undecided" until torch is
    imported), and ``route_why`` why (``ssim_patch.backends.route``).
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
    hooks: tuple[str, ...] = ()
    uqi_places: tuple[str, ...] = ()
    backend: str = "auto"
    backend_for: tuple[tuple[str, str], ...] = ()
    route: str = "undecided"
    route_why: str = "torch is not imported yet"


@dataclass
class _Options:
    padding: str
    strict: bool


_lock = threading.RLock()
_options: Optional[_Options] = None  # what the user asked for (applied or pending)
_done: dict[str, _releases.HookPoint] = {}  # hook points swapped since apply() (qualified name ->)
_registered: set[str] = set()  # modules with a post-import hook of ours waiting for their import
_originals: list[Callable[..., Any]] = []  # every original seen (a reload makes a new one)
_known: dict[str, set[int]] = {}  # hook point (qualified name) -> ids of its originals
_classes: list[tuple[type, str]] = []  # (class, attribute) where a method was ever swapped
_warned: set[str] = set()
_release_seen: Optional[tuple[tuple[object, ...], Version]] = None
_torch_seen: Optional[tuple[tuple[str, ...], Optional[Version]]] = None
_MISSING = object()


def _release() -> Version:
    """The installed release, from package metadata (else ``torchmetrics.__version__``).

    Read once per torchmetrics module object, ``sys.path`` and metadata reader: reading the
    metadata scans the distributions on ``sys.path``, which a no-op apply() must not pay for.
    """
    global _release_seen
    module = sys.modules.get("torchmetrics")
    key = (importlib.metadata.version, module, getattr(module, "__version__", None), tuple(sys.path))
    seen = _release_seen
    if seen is not None and seen[0] == key:
        return seen[1]
    try:
        text = importlib.metadata.version("torchmetrics")
    except importlib.metadata.PackageNotFoundError:
        found = getattr(module, "__version__", None)
        if not isinstance(found, str):
            raise PatchError(
                "torchmetrics is not installed: install a release from 0.8.2 to 1.9.0, "
                "e.g. pip install 'torchmetrics==1.9.0'."
            ) from None
        text = found
    try:
        version = Version(text)
    except InvalidVersion:
        raise PatchError(f"torchmetrics reports an unreadable version {text!r}.") from None
    _release_seen = (key, version)
    return version


def _belongs(value: object, hook: _releases.HookPoint) -> bool:
    """``value`` is ``hook``'s function: an original of it (the current one, an older copy, since
    ``importlib.reload`` of the module makes a new function and leaves the old one bound wherever
    it was imported by name, or one seen swapped before), or a replacement of one."""
    if type(value) is not types.FunctionType:
        return False
    if "__ssim_patch__" in value.__dict__:
        value = value.__dict__.get("__wrapped__")
    if id(value) in _known.get(hook.qualified, ()):
        return True
    return (
        getattr(value, "__qualname__", None) == hook.name
        and getattr(value, "__module__", None) == hook.module
    )


def _locate(hook: _releases.HookPoint) -> tuple[Optional[Any], Any]:
    """(the module or class that holds the hook point, what is there now); (None, _MISSING)
    when its module is not loaded, (None, None) when the class is missing."""
    module = sys.modules.get(hook.module)
    if module is None:
        return None, _MISSING
    owner_name, _, attr = hook.name.rpartition(".")
    if not owner_name:
        return module, getattr(module, attr, None)
    owner = getattr(module, owner_name, None)
    if not isinstance(owner, type):
        return None, None
    return owner, owner.__dict__.get(attr)


def _signature_problem(func: object, hook: _releases.HookPoint) -> Optional[str]:
    where = hook.qualified
    if func is None:
        return f"{hook.module} has no function {hook.name}"
    if not callable(func):
        return f"{where} is {type(func).__name__}, not a function"
    try:
        params = tuple(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return f"the signature of {where} cannot be read"
    if params != hook.parameters:
        return f"{where} takes ({', '.join(params)}), expected ({', '.join(hook.parameters)})"
    return None


_bindings = Bindings()


def _unpatch_all() -> None:
    """Put the original back wherever a replacement is bound (modules and classes)."""
    _bindings.refresh()
    _bindings.rebind(is_replacement, lambda value: value.__wrapped__)
    for owner, attr in _classes:
        value: Any = owner.__dict__.get(attr)
        if is_replacement(value):
            setattr(owner, attr, value.__wrapped__)
    _redirect.restore_all()
    _forget_compiled()


def _forget_compiled() -> None:
    """Reset dynamo's caches where dynamo is loaded and is that of torch 2.0-2.2
    (``_torch_features.OLD_DYNAMO``). Its guards on a function that inlined a replacement read
    the replacement's closure (the padding), and after the originals are back they read the
    original's, which has none: the next call of that compiled function failed inside the guard
    (``TypeError: 'NoneType' object is not subscriptable``) where a newer dynamo compiles again.
    So every function compiled before is compiled again on its next call. A replacement exists only
    once the engine is imported, and with it ``_torch_features`` (nothing is imported here).

    Where dynamo compiled anything, the code it drops is collected here too: that dynamo removes
    the globals a compiled frame put in its module (resume functions) when the frame's code is
    collected, and a later collection could land while it traced another frame of that module and
    iterated its globals (``InternalTorchDynamoError: dictionary changed size during iteration``).
    A full collection takes ~90 ms in a process with torch and torchmetrics loaded."""
    dynamo = sys.modules.get("torch._dynamo")
    features = sys.modules.get("ssim_patch._torch_features")
    if dynamo is None or not getattr(features, "OLD_DYNAMO", False):
        return
    # dynamo's record of the frames it compiled since its last reset (torch 2.0-2.2)
    compiled = getattr(getattr(dynamo, "convert_frame", None), "input_codes", None)
    dropped = bool(getattr(compiled, "seen", True))  # before reset() empties it
    dynamo.reset()
    if dropped:
        gc.collect()


def _fail(strict: bool, message: str) -> None:
    if strict:
        raise PatchError(message + " Nothing was changed.")
    # _fail <- _swap or _check_release <- _apply <- apply <- the caller
    warnings.warn(message + " Nothing was changed (strict=False).", UserWarning, stacklevel=5)


def _swap(options: _Options, hooks: list[_releases.HookPoint]) -> bool:
    """Bind the corrected functions of ``hooks`` (their modules are loaded) everywhere; True when
    done. Every signature is checked before anything changes. Caller holds the lock."""
    version = _release()
    found = []
    for hook in hooks:
        owner, current = _locate(hook)
        original = current.__wrapped__ if is_replacement(current) else current
        problem = _signature_problem(original, hook)
        if problem is None and "." in hook.name and not _redirect.can_redirect(original):
            problem = f"{hook.qualified} is not a plain function without a closure"
        if problem is not None:
            _fail(options.strict, f"Cannot patch torchmetrics {version}: {problem}.")
            return False
        found.append((hook, owner, original))
    from ssim_patch._adapters import make_replacement, trampoline  # torch: torchmetrics has imported it

    for hook, owner, original in found:
        replacement = make_replacement(hook, original, options.padding)
        attr = hook.name.rpartition(".")[2]
        if isinstance(owner, type):  # a method: bound in its class, and in instances made before
            if (owner, attr) not in _classes:
                _classes.append((owner, attr))
            setattr(owner, attr, replacement)
            bounce = trampoline(hook)
            if bounce is not None:  # the original runs code that calls the class's replacement
                _redirect.redirect(original, bounce)
            continue
        known = _known.setdefault(hook.qualified, set())
        if id(original) not in known:
            _originals.append(original)
            known.add(id(original))
            _bindings.originals.add(id(original))
            if not is_hook_like(original):
                _bindings.read_all()  # its other bindings cannot be told by name: look at everything
        _bindings.refresh()
        # Every binding of any original of this hook point (a reloaded module leaves older ones
        # around), and every earlier replacement of it, gets the new one.
        _bindings.rebind(
            lambda value, hook=hook: _belongs(value, hook),  # type: ignore[misc]
            lambda value, replacement=replacement: replacement,  # type: ignore[misc]
        )
        if getattr(owner, attr, None) is not replacement:
            setattr(owner, attr, replacement)
    return True


def _holds(hooks: tuple[_releases.HookPoint, ...]) -> bool:
    """The patch is in place for ``hooks``: a replacement at each hook point whose module is
    loaded, a post-import hook of ours waiting for each module that is not."""
    for hook in hooks:
        if hook.module not in sys.modules:
            if hook.module not in _registered:
                return False
        elif hook.qualified not in _done or not is_replacement(_locate(hook)[1]):
            return False
    return True


def _lost() -> bool:
    """The patch no longer holds: nothing was swapped, a module swapped was dropped from
    ``sys.modules``, or a hook point swapped holds an unpatched hook function again
    (``importlib.reload``, a fresh import, or the original put back by hand). Someone else's
    function bound there does not count."""
    if not _done:
        return True
    for hook in _done.values():
        value = _locate(hook)[1]
        if value is _MISSING or (_belongs(value, hook) and not is_replacement(value)):
            return True
    return False


def _register(hook: _releases.HookPoint) -> None:
    """A post-import hook for ``hook``'s module. wrapt calls it once and forgets it: a later
    pending apply() (after torchmetrics was dropped from sys.modules) registers it again."""
    if hook.module not in _registered:
        _registered.add(hook.module)
        # wrapt's stubs declare their API for Python >= 3.10 only (scripts/mypy-py39.ini checks 3.9)
        wrapt.register_post_import_hook(_on_import, hook.module)  # type: ignore[attr-defined, unused-ignore]


def _on_import(module: types.ModuleType) -> None:
    """wrapt's post-import hook of a module with hook points: patch it as apply() asked."""
    global _options
    with _lock:
        name = getattr(module, "__name__", None)
        _registered.discard(str(name))
        if _options is None:
            return
        wanted, _options = _options, None  # if the swap fails, nothing is pending any more
        ok = False
        try:
            hooks = [hook for hook in _releases.hook_points(_release()) if hook.module == name]
            done = all(hook.qualified in _done and is_replacement(_locate(hook)[1]) for hook in hooks)
            ok = done or _swap(wanted, hooks)
            if ok:
                _done.update((hook.qualified, hook) for hook in hooks)
        finally:
            if ok:
                _options = wanted
            else:  # modules patched earlier are put back: a release is patched whole or not at all
                _done.clear()
                _unpatch_all()
            _export(_options)


def _torch_version() -> Optional[Version]:
    """The installed torch's version (``torch.__version__`` once imported, else its package
    metadata, read once per ``sys.path``), or None where it cannot be told (left to the import)."""
    global _torch_seen
    module = sys.modules.get("torch")
    text = getattr(module, "__version__", None)
    if not isinstance(text, str):
        key = tuple(sys.path)
        if _torch_seen is not None and _torch_seen[0] == key:
            return _torch_seen[1]
        try:
            text = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            text = None
    try:
        version = Version(str(text)) if text is not None else None
    except InvalidVersion:
        version = None
    if module is None:
        _torch_seen = (tuple(sys.path), version)
    return version


def _check_torch(strict: bool) -> bool:
    """The installed torch is not older than :data:`_releases.TORCH_FLOOR`."""
    torch = _torch_version()
    if torch is None or torch >= _releases.TORCH_FLOOR:
        return True
    floor = _releases.TORCH_FLOOR
    _fail(
        strict,
        f"torch {torch} is older than torch {floor}, the oldest ssim-patch supports (it needs "
        f"torch>={floor}): install a newer torch, e.g. pip install 'torch>={floor}'.",
    )
    return False


def _check_release(strict: bool) -> bool:
    if not _check_torch(strict):
        return False
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
            stacklevel=4,  # _check_release <- _apply <- apply <- the caller
        )
    return True


# --- the environment that child processes read ---------------------------------------------------


def _environ() -> tuple[Optional[str], Optional[str]]:
    """The exported variables as they are now (to put back later)."""
    return os.environ.get(ENV_AUTO), os.environ.get(ENV_PADDING)


def _set_environ(saved: tuple[Optional[str], Optional[str]]) -> None:
    for name, value in zip((ENV_AUTO, ENV_PADDING), saved):
        if value is None:
            os.environ.pop(name, None)
        elif os.environ.get(name) != value:
            os.environ[name] = value


def _export(options: Optional[_Options]) -> None:
    """Make processes started from now on follow this state, unless ``SSIM_PATCH_AUTO`` is off."""
    if os.environ.get(ENV_AUTO, "").strip().lower() in _ENV_OFF:
        return  # the user's opt-out: children are not patched through the environment
    _set_environ((None, None) if options is None else ("1", options.padding))


# --- the public API ------------------------------------------------------------------------------


def apply(*, padding: str = "same", strict: bool = True) -> PatchReport:
    """Make every torchmetrics SSIM, MS-SSIM and UQI API use the corrected SSIM and UQI.

    Works before or after torchmetrics is imported. Calling it again with the same options does
    nothing; with other options it re-applies. ``strict``: raise :class:`PatchError` on an
    unsupported release or signature (else warn); either way nothing is changed then. Processes
    started afterwards get the same patch (``SSIM_PATCH_AUTO``/``SSIM_PATCH_PADDING`` are set),
    unless ``SSIM_PATCH_AUTO`` is off (``0``, ``false``, ``no``, ``off``).
    """
    _check_padding(padding)
    with _lock:
        swapped = _apply(padding, bool(strict))
        return _report(refresh=not swapped)


def _apply(padding: str, strict: bool) -> bool:
    """apply() without the report; True when it swapped (the index is up to date)."""
    global _options, _done
    if not _check_release(strict):
        return False
    wanted = _Options(padding, strict)
    hooks = _releases.hook_points(_release())
    if _options == wanted and _holds(hooks):
        _export(wanted)
        return False
    loaded = [hook for hook in hooks if hook.module in sys.modules]
    if loaded and not _swap(wanted, loaded):  # on failure (strict=False) the state is left as it was
        return False
    _options = wanted
    _done = {hook.qualified: hook for hook in loaded}
    for hook in hooks:
        if hook.module not in sys.modules:
            _register(hook)
    _export(wanted)
    return bool(loaded)


def revert() -> PatchReport:
    """Put back the very same original objects wherever the corrected function is bound, and
    stop exporting the patch to processes started afterwards."""
    with _lock:
        _revert()
        return _report(refresh=False)


def _revert() -> None:
    global _options
    _options = None
    _done.clear()
    _unpatch_all()
    _export(None)


def is_applied() -> bool:
    """True when the corrected functions are bound in torchmetrics now."""
    with _lock:
        return not _lost()


def status() -> PatchReport:
    """The installed release, its hook points and upstream bugs, and where the patch is bound."""
    with _lock:
        return _report(refresh=True)


def _places(hook: _releases.HookPoint) -> tuple[str, ...]:
    """``module.attribute`` of every binding of a replacement of ``hook`` (``module.Class.method``
    for a method), sorted."""
    if "." in hook.name:
        return (hook.qualified,) if is_replacement(_locate(hook)[1]) else ()
    return _bindings.bound(lambda value: is_replacement(value) and _belongs(value, hook))


def _report(refresh: bool) -> PatchReport:
    """status(); ``refresh=False`` when the index was brought up to date just now."""
    try:
        version: Optional[Version] = _release()
    except PatchError:
        version = None
    hooks = _releases.hook_points(version) if version is not None else ()
    applied = not _lost()
    if applied and refresh:
        _bindings.refresh()
    from ssim_patch import backends  # torch-free: reads SSIM_PATCH_BACKEND

    backend, backend_for = backends.describe()
    route, route_why = backends.route()
    return PatchReport(
        applied=applied,
        pending=_options is not None and any(hook.qualified not in _done for hook in hooks),
        release=str(version) if version is not None else None,
        hook=hooks[0].name if hooks else None,
        padding=_options.padding if _options is not None else None,
        strict=_options.strict if _options is not None else None,
        supported=bool(hooks),
        tested=version is not None and _releases.is_pinned(version),
        upstream_bugs=_releases.upstream_bugs(version) if version is not None else (),
        places=_places(hooks[0]) if applied and hooks else (),
        hooks=tuple(hook.qualified for hook in hooks),
        uqi_places=tuple(sorted(p for hook in hooks[1:] for p in _places(hook))) if applied else (),
        backend=backend,
        backend_for=backend_for,
        route=route,
        route_why=route_why,
    )


def _snapshot() -> Optional[_Options]:
    with _lock:
        return _Options(_options.padding, _options.strict) if _options is not None else None


def _restore(saved: Optional[_Options]) -> None:
    with _lock:
        if saved is None:
            _revert()
        else:
            _apply(saved.padding, saved.strict)


class patched(contextlib.ContextDecorator):
    """Context manager and decorator: apply with these options, then restore the previous state
    (and the previous ``SSIM_PATCH_AUTO``/``SSIM_PATCH_PADDING``)."""

    def __init__(self, *, padding: str = "same", strict: bool = True) -> None:
        _check_padding(padding)
        self.padding = padding
        self.strict = strict
        self._saved: list[tuple[Optional[_Options], tuple[Optional[str], Optional[str]]]] = []

    def __enter__(self) -> PatchReport:
        with _lock:
            self._saved.append((_snapshot(), _environ()))
            return apply(padding=self.padding, strict=self.strict)

    def __exit__(self, *exc: object) -> None:
        with _lock:
            options, environ = self._saved.pop()
            _restore(options)
            _set_environ(environ)
