"""Start-up hook: with ``SSIM_PATCH_AUTO=1``, patch torchmetrics in every Python process.

``ssim_patch_autoapply.pth`` (installed at the root of site-packages) loads this file by path, as
the stand-alone module ``_ssim_patch_startup``, only when ``SSIM_PATCH_AUTO`` is set, and calls
:func:`install`. It must stay cheap: it imports only the standard library (not ``ssim_patch``,
torch or wrapt) and registers a one-shot import hook on torchmetrics' modules with a hook point
(SSIM's and UQI's functional modules); the hook imports ``ssim_patch`` and calls ``apply()`` the
moment the first of them has been executed (``apply()`` then patches the others when they are).
Nothing here may raise: problems become warnings.

``SSIM_PATCH_AUTO``: ``1``/``true``/``yes``/``on`` enables it; ``0``/``false``/``no``/``off`` or
empty leaves it off. ``SSIM_PATCH_PADDING``: ``same`` (default) or ``valid``. ``apply()``,
``patched()`` and the pytest plugin set both for the processes a program starts (``revert()``
clears them), unless ``SSIM_PATCH_AUTO`` was set off.
"""

from __future__ import annotations

import os
import sys
import warnings

TYPE_CHECKING = False  # typing, importlib.abc and importlib.util cost more at start-up than all the rest
if TYPE_CHECKING:
    import importlib.machinery
    import types
    from collections.abc import Mapping, Sequence
    from importlib.abc import Loader as _LoaderBase
    from typing import Any, Callable, Optional
else:
    _LoaderBase = object

#: SSIM's module (``ssim_patch._releases.MODULE``; a test checks).
MODULE = "torchmetrics.functional.image.ssim"
#: The modules whose import triggers the patch, whichever comes first: those with a function hook
#: point (``ssim_patch._releases``' SSIM and UQI modules; a test checks). The module of the UQI
#: Metric class imports UQI's functional module first.
MODULES = (MODULE, "torchmetrics.functional.image.uqi")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


class StartupWarning(RuntimeWarning):
    """SSIM_PATCH_AUTO is set but the start-up hook could not do what it was asked."""


def _warn(message: str) -> None:
    try:
        warnings.warn(f"ssim-patch start-up: {message}", StartupWarning, stacklevel=3)
    except Exception:  # -W error: still one line, never a traceback out of start-up
        sys.stderr.write(f"ssim-patch start-up: {message}\n")


def settings(environ: Mapping[str, str]) -> Optional[str]:
    """The padding to apply with, or None when the environment does not ask for the patch.

    A value that is neither on nor off, or an unknown padding, gives a warning and None.
    """
    auto = environ.get("SSIM_PATCH_AUTO", "").strip().lower()
    if auto in _FALSE:
        return None
    if auto not in _TRUE:
        _warn(
            f"SSIM_PATCH_AUTO={environ['SSIM_PATCH_AUTO']!r} is neither on (1, true, yes, on) nor off "
            "(0, false, no, off, empty); the patch is not applied."
        )
        return None
    padding = environ.get("SSIM_PATCH_PADDING", "").strip().lower() or "same"
    paddings = _paddings()
    if padding not in paddings:
        _warn(
            f"SSIM_PATCH_PADDING={environ['SSIM_PATCH_PADDING']!r} is not "
            f"{' or '.join(map(repr, paddings))}; the patch is not applied."
        )
        return None
    return padding


def _paddings() -> Sequence[str]:
    """``ssim_patch._options.PADDINGS``, read without importing ssim_patch: ``_options.py`` is
    loaded by path (it imports nothing), as the stand-alone module ``_ssim_patch_options``."""
    module = sys.modules.get("ssim_patch._options") or sys.modules.get("_ssim_patch_options")
    if module is None:
        import importlib.machinery

        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_options.py")
        module = type(sys)("_ssim_patch_options")
        module.__file__ = path
        importlib.machinery.SourceFileLoader("_ssim_patch_options", path).exec_module(module)
        sys.modules["_ssim_patch_options"] = module
    paddings: Sequence[str] = module.PADDINGS
    return paddings


def _apply(padding: str) -> None:
    try:
        import ssim_patch
        from ssim_patch import _patcher

        if _patcher._snapshot() is None:  # an apply() of the program's own (or the pytest plugin's) wins
            ssim_patch.apply(padding=padding, strict=False)
    except Exception as exc:  # never break the user's import of torchmetrics
        _warn(f"SSIM_PATCH_AUTO is set but the patch was not applied: {type(exc).__name__}: {exc}")


def _apply_as_asked(environ: Mapping[str, str]) -> None:
    """At the import of the first of ``MODULES``: apply as ``environ`` asks now."""
    padding = settings(environ)
    if padding is not None:
        _apply(padding)


class _HookedLoader(_LoaderBase):
    """Runs the real loader, then the hook; leaves the real loader on the module afterwards."""

    def __init__(self, loader: importlib.abc.Loader, hook: Callable[[types.ModuleType], None]) -> None:
        self._loader = loader
        self._hook = hook

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[types.ModuleType]:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        spec = module.__spec__
        if spec is not None and spec.loader is self:
            spec.loader = self._loader
        if getattr(module, "__loader__", None) is self:
            module.__loader__ = self._loader
        self._loader.exec_module(module)
        self._hook(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class PostImportFinder:
    """One-shot meta-path finder: calls ``hook(module)`` once the first of ``names`` (one module
    name, or several) has been executed."""

    ssim_patch_startup = True  # how install() recognises a finder it already registered

    def __init__(self, names: str | Sequence[str], hook: Callable[[types.ModuleType], None]) -> None:
        self.names = (names,) if isinstance(names, str) else tuple(names)
        self.hook = hook
        self._busy = False

    def find_spec(
        self,
        fullname: str,
        path: Optional[Sequence[str]],
        target: Optional[types.ModuleType] = None,
    ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname not in self.names or self._busy:
            return None
        self._busy = True
        try:
            for finder in list(sys.meta_path):
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec: Optional[importlib.machinery.ModuleSpec] = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self._busy = False
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        self.remove()
        spec.loader = _HookedLoader(spec.loader, self.hook)
        return spec

    def remove(self) -> None:
        """Take this finder off ``sys.meta_path`` (it fires once)."""
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def install(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Arrange for ``ssim_patch.apply()`` when the first of torchmetrics' ``MODULES`` is imported.

    Does nothing (False) unless ``environ`` (default ``os.environ``) asks for it. If one of them is
    already imported, applies at once. Otherwise ``environ`` is read again at that import, so a
    ``revert()`` (which clears the variables) or an opt-out made in the meantime is respected.
    Never raises.
    """
    try:
        source = os.environ if environ is None else environ
        padding = settings(source)
        if padding is None:
            return False
        if any(name in sys.modules for name in MODULES):
            _apply(padding)
            return True
        for finder in list(sys.meta_path):
            if getattr(finder, "ssim_patch_startup", False):
                sys.meta_path.remove(finder)
        sys.meta_path.insert(0, PostImportFinder(MODULES, lambda module: _apply_as_asked(source)))
        return True
    except Exception as exc:
        _warn(f"the start-up hook failed: {type(exc).__name__}: {exc}")
        return False
