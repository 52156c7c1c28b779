"""pytest plugin (entry point ``pytest11: ssim_patch``): tests run against the corrected SSIM and UQI.

Installed means active: ``pytest_configure`` applies the patch before collection, in the
controller and in every pytest-xdist worker (with the controller's settings), and
``pytest_unconfigure`` restores the state found before. ``-p no:ssim_patch`` disables the plugin.
Like ``apply()``, the plugin exports the patch to processes the tests start (``SSIM_PATCH_AUTO``,
``SSIM_PATCH_PADDING``); the variables are put back at the end. Loading the plugin imports
neither torch nor torchmetrics.

Settings (command line, else ini, else default):

- ``--ssim-patch=on|off`` / ini ``ssim_patch`` (default on). Off leaves torchmetrics as it is.
- ``--ssim-patch-padding=same|valid`` / ini ``ssim_patch_padding`` (default same).
- ``--ssim-patch-strict=on|off`` / ini ``ssim_patch_strict`` (default on): an unsupported
  torchmetrics release stops the session with a usage error; off makes it a warning.

Per test: ``@pytest.mark.ssim_patch(padding=..., strict=...)`` runs a test with the patch applied
with these options, ``@pytest.mark.ssim_unpatched`` runs it against torchmetrics' own SSIM and UQI,
and the
``ssim_patch`` fixture gives ``apply``/``revert``/``patched``/``status``/``is_applied``; each puts
back the state it found when the test ends.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, NoReturn, Optional

import pytest

from ssim_patch._options import PADDINGS

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ssim_patch import PatchReport
    from ssim_patch import patched as Patched

_ON = ("on", "true", "yes", "1")
_OFF = ("off", "false", "no", "0")
_WORKER_KEY = "ssim_patch"


@dataclass(frozen=True)
class Settings:
    """The plugin's resolved settings for a session."""

    enabled: bool
    padding: str
    strict: bool


@dataclass(frozen=True)
class _State:
    """A patch state to put back: applied (or pending) with these options, or not."""

    patched: bool
    padding: str = "same"
    strict: bool = True


@dataclass
class _Session:
    settings: Settings
    before: Optional[_State] = None  # the state found in pytest_configure; None: nothing changed
    environ: Optional[tuple[Optional[str], Optional[str]]] = None  # SSIM_PATCH_AUTO/_PADDING then
    header: str = ""
    report: Optional[PatchReport] = None  # the patch's state when on (the header is made from it)


_session_key = pytest.StashKey[_Session]()
_item_key = pytest.StashKey[_State]()


def _choices() -> str:
    return " or ".join(repr(p) for p in PADDINGS)


def _switch(value: str, source: str) -> bool:
    text = value.strip().lower()
    if text in _ON:
        return True
    if text in _OFF:
        return False
    raise pytest.UsageError(f"{source} must be on or off (or true/false, yes/no, 1/0), got {value!r}.")


def _padding(value: str, source: str) -> str:
    text = value.strip().lower()
    if text not in PADDINGS:
        raise pytest.UsageError(f"{source} must be {_choices()}, got {value!r}.")
    return text


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ssim-patch", "corrected torchmetrics SSIM (ssim-patch)")
    group.addoption(
        "--ssim-patch",
        dest="ssim_patch",
        metavar="on|off",
        default=None,
        help="Patch torchmetrics' SSIM for this session (default: on; ini: ssim_patch).",
    )
    group.addoption(
        "--ssim-patch-padding",
        dest="ssim_patch_padding",
        metavar="same|valid",
        default=None,
        help="Padding of the corrected SSIM (default: same; ini: ssim_patch_padding).",
    )
    group.addoption(
        "--ssim-patch-strict",
        dest="ssim_patch_strict",
        metavar="on|off",
        default=None,
        help="Stop the session on an unsupported torchmetrics release; off: only warn "
        "(default: on; ini: ssim_patch_strict).",
    )
    parser.addini("ssim_patch", "Patch torchmetrics' SSIM for the session: on or off.", default="on")
    parser.addini("ssim_patch_padding", "Padding of the corrected SSIM: same or valid.", default="same")
    parser.addini(
        "ssim_patch_strict",
        "Unsupported torchmetrics release: on = usage error, off = warning.",
        default="on",
    )


def _resolve(config: pytest.Config) -> tuple[Settings, str]:
    """Command line, else ini, else default, and where on/off came from; an xdist worker takes
    the controller's settings."""
    workerinput = getattr(config, "workerinput", None)
    if isinstance(workerinput, dict) and _WORKER_KEY in workerinput:
        return Settings(**workerinput[_WORKER_KEY]), "the xdist controller"

    def pick(name: str, flag: str) -> tuple[str, str]:
        value = config.getoption(name)
        if value is not None:
            return str(value), flag
        return str(config.getini(name)), f"ini option {name}"

    value, source = pick("ssim_patch", "--ssim-patch")
    enabled = _switch(value, source)
    padding = _padding(*pick("ssim_patch_padding", "--ssim-patch-padding"))
    strict = _switch(*pick("ssim_patch_strict", "--ssim-patch-strict"))
    return Settings(enabled, padding, strict), f"{source} = {value.strip()}"


def _current() -> _State:
    from ssim_patch import _patcher

    options = _patcher._snapshot()  # cheap, unlike status(), which lists the bindings
    return _State(False) if options is None else _State(True, options.padding, options.strict)


def _restore(state: _State) -> None:
    import ssim_patch

    if state.patched:
        ssim_patch.apply(padding=state.padding, strict=state.strict)  # a no-op when already so
    elif _current().patched or ssim_patch.is_applied():
        ssim_patch.revert()


class _XdistHooks:
    """Registered only when pytest-xdist is loaded (its hook spec must exist)."""

    def pytest_configure_node(self, node: Any) -> None:
        session = node.config.stash.get(_session_key, None)
        if session is not None:
            node.workerinput[_WORKER_KEY] = asdict(session.settings)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "ssim_patch(padding='same', strict=True): run the test with torchmetrics' SSIM and UQI "
        "patched with these options (ssim-patch); the previous state is restored afterwards.",
    )
    config.addinivalue_line(
        "markers",
        "ssim_unpatched: run the test against torchmetrics' own, unpatched SSIM and UQI "
        "(ssim-patch); the previous state is restored afterwards.",
    )
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(), "ssim_patch_xdist")
    settings, source = _resolve(config)
    session = _Session(settings)
    config.stash[_session_key] = session
    if not settings.enabled:
        session.header = f"ssim-patch: off ({source})"
        return
    try:
        import ssim_patch
    except ImportError as exc:
        _unavailable(config, session, f"ssim_patch cannot be imported: {exc}")
        return
    try:
        release = ssim_patch.status().release
    except Exception as exc:  # pragma: no cover - status() reads package metadata only
        release = None
        _unavailable(config, session, f"{type(exc).__name__}: {exc}")
        return
    if release is None:
        session.header = "ssim-patch: off (torchmetrics is not installed)"
        return
    from ssim_patch import _patcher

    before, environ = _current(), _patcher._environ()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            report = ssim_patch.apply(padding=settings.padding, strict=settings.strict)
        except ssim_patch.PatchError as exc:
            raise pytest.UsageError(
                f"ssim-patch: {exc} Run with --ssim-patch-strict=off to only warn, or "
                "-p no:ssim_patch to disable the plugin."
            ) from None
    for warning in caught:
        config.issue_config_time_warning(
            pytest.PytestConfigWarning(f"ssim-patch: {warning.message}"), stacklevel=2
        )
    if not (report.applied or report.pending):
        reason = "; ".join(str(w.message) for w in caught) or "the patch was not applied"
        session.header = f"ssim-patch: off ({reason})"
        return
    session.before, session.environ = before, environ
    session.report = report


def _unavailable(config: pytest.Config, session: _Session, reason: str) -> None:
    if session.settings.strict:
        raise pytest.UsageError(
            f"ssim-patch: {reason}. Run with --ssim-patch-strict=off to only warn, or "
            "-p no:ssim_patch to disable the plugin."
        )
    config.issue_config_time_warning(pytest.PytestConfigWarning(f"ssim-patch: {reason}"), stacklevel=2)
    session.header = f"ssim-patch: off ({reason})"


def _hook_names(report: PatchReport) -> str:
    """The release's hook points by name (``_ssim_update, _uqi_compute, ...``), SSIM's first."""
    from ssim_patch import _releases

    names = {hook.qualified: hook.name for hook in _releases.ALL_HOOK_POINTS}
    return ", ".join(names.get(hook, hook) for hook in report.hooks) or str(report.hook)


def _describe(report: PatchReport) -> str:
    tested = "tested" if report.tested else "untested"
    if report.applied and not report.pending:
        when = ""
    elif report.applied:
        when = ", the rest applied when imported"
    else:
        when = ", applied when torchmetrics is imported"
    from ssim_patch import backends

    backend = backends.summary(report.backend, report.backend_for)
    route = backends.route_summary(report.route, report.route_why)
    return (
        f"ssim-patch: on (torchmetrics {report.release}, {tested}; hooks {_hook_names(report)}; "
        f"padding {report.padding}{when}; backend {backend}; route {route})"
    )


def pytest_report_header(config: pytest.Config) -> Optional[str]:
    """The header, made now: the route is known once torch is imported (by a conftest, say)."""
    session = config.stash.get(_session_key, None)
    if session is None:
        return None
    if session.report is not None:
        from ssim_patch import backends

        route, why = backends.route()
        return _describe(dataclasses.replace(session.report, route=route, route_why=why))
    return session.header


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_session_key, None)
    if session is not None and session.before is not None:
        from ssim_patch import _patcher

        _restore(session.before)
        if session.environ is not None:
            _patcher._set_environ(session.environ)  # what child processes saw before the session
        session.before = session.environ = None


def _misuse(message: str) -> NoReturn:  # type: ignore[misc, unused-ignore]  # (1)
    # (1) only for scripts/mypy-py39.ini, where pytest is not followed and pytest.fail is Any
    pytest.fail(message, pytrace=False)


def _marker_state(item: pytest.Item) -> Optional[_State]:
    patch = item.get_closest_marker("ssim_patch")
    unpatched = item.get_closest_marker("ssim_unpatched")
    if patch is not None and unpatched is not None:
        _misuse(f"{item.nodeid}: the markers ssim_patch and ssim_unpatched cannot both apply to one test.")
    if unpatched is not None:
        if unpatched.args or unpatched.kwargs:
            _misuse(f"{item.nodeid}: @pytest.mark.ssim_unpatched takes no arguments.")
        return _State(False)
    if patch is None:
        return None
    if patch.args:
        _misuse(
            f"{item.nodeid}: @pytest.mark.ssim_patch takes keyword arguments only "
            f"(padding=..., strict=...), got {patch.args!r}."
        )
    unknown = sorted(set(patch.kwargs) - {"padding", "strict"})
    if unknown:
        _misuse(
            f"{item.nodeid}: @pytest.mark.ssim_patch got unknown arguments {unknown}; "
            "it takes padding='same'|'valid' and strict=True|False."
        )
    padding = patch.kwargs.get("padding", "same")
    if padding not in PADDINGS:
        _misuse(f"{item.nodeid}: @pytest.mark.ssim_patch(padding={padding!r}): padding must be {_choices()}.")
    return _State(True, padding, bool(patch.kwargs.get("strict", True)))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    wanted = _marker_state(item)
    if wanted is None:
        return
    item.stash[_item_key] = _current()
    _restore(wanted)


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    yield  # fixtures (the ssim_patch fixture among them) are torn down first
    saved = item.stash.get(_item_key, None)
    if saved is not None:
        del item.stash[_item_key]
        _restore(saved)


class SsimPatchFixture:
    """The ``ssim_patch`` fixture: ssim_patch's API, with the state put back when the test ends."""

    def __init__(self) -> None:
        self._saved = _current()

    def apply(self, *, padding: str = "same", strict: bool = True) -> PatchReport:
        """Apply the patch with these options (see :func:`ssim_patch.apply`)."""
        import ssim_patch

        return ssim_patch.apply(padding=padding, strict=strict)

    def revert(self) -> PatchReport:
        """Put torchmetrics' own SSIM and UQI back (see :func:`ssim_patch.revert`)."""
        import ssim_patch

        return ssim_patch.revert()

    def patched(self, *, padding: str = "same", strict: bool = True) -> Patched:
        """Context manager and decorator (see :class:`ssim_patch.patched`)."""
        import ssim_patch

        return ssim_patch.patched(padding=padding, strict=strict)

    def status(self) -> PatchReport:
        """Where the patch stands (see :func:`ssim_patch.status`)."""
        import ssim_patch

        return ssim_patch.status()

    def is_applied(self) -> bool:
        """True when the corrected functions are bound in torchmetrics now."""
        import ssim_patch

        return ssim_patch.is_applied()

    def restore(self) -> None:
        """Put back the state found when the fixture was set up (also done after the test)."""
        _restore(self._saved)


@pytest.fixture(name="ssim_patch")
def ssim_patch_fixture() -> Iterator[SsimPatchFixture]:
    """Control the patch in one test (apply with other options, revert); restored afterwards."""
    control = SsimPatchFixture()
    yield control
    control.restore()
