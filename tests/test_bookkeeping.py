"""The patcher's index of bindings: cheap, and still complete.

Each loaded module is read once; it is read again only when it changes in a way that can add a
binding. These tests check that nothing is missed: modules imported after apply(), modules that
gain a binding after they were read, a name rebound while its module is still being imported,
third-party copies, reloads (in a fresh interpreter), an original that does not look like
torchmetrics' function, and that a no-op apply()/status()/patched() reads no module at all.
Timings are in benchmarks/bench_patcher.py, not here.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
import types
from typing import Any

import pytest

import ssim_patch as sp
from ssim_patch import _patcher, _releases
from tests.helpers.fresh_interpreter import assert_scenarios_pass
from tests.helpers.hook_bindings import hook_bindings

F = importlib.import_module(_releases.MODULE)
METRICS = importlib.import_module("torchmetrics.image.ssim")
HOOK = sp.status().hook
PREFIX = "_ssim_patch_bookkeeping_"


@pytest.fixture
def clean(ssim_patch: Any):
    """Unpatched; afterwards the synthetic modules are gone and the plugin's fixture puts the
    session's state back."""
    sp.revert()
    original = getattr(F, HOOK)
    yield original
    for name in [n for n in sys.modules if n.startswith(PREFIX)]:
        del sys.modules[name]
    sp.revert()
    assert getattr(F, HOOK) is original


def _module(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(PREFIX + name)
    module.__dict__.update(attrs)
    sys.modules[module.__name__] = module
    return module


def assert_bound(state: Any, original: Any) -> None:
    """Every module binding of the hook function is the original (state None) or one replacement
    with padding ``state`` wrapping it; status() lists exactly the patched places."""
    found = hook_bindings(HOOK)
    ids = {id(v) for v in found.values()}
    assert len(ids) == 1, {k: getattr(v, "__ssim_patch__", "original") for k, v in found.items()}
    bound = next(iter(found.values()))
    if state is None:
        assert bound is original and not sp.is_applied()
    else:
        assert bound.__ssim_patch__ == state and bound.__wrapped__ is original
        assert set(sp.status().places) == set(found)


def test_modules_coming_and_going_at_every_step(clean):
    original = clean
    kept: list[types.ModuleType] = []
    for step, action in enumerate(
        ["apply same", "revert", "apply valid", "apply same", "revert", "apply valid"]
    ):
        # Modules that bind whatever is bound now, under new names, some with many attributes.
        for i in range(5):
            attrs = {f"attr{j}": j for j in range(200 * (i == 0))}
            attrs[f"hook_{step}_{i}"] = getattr(F, HOOK)
            kept.append(_module(f"s{step}_{i}", **attrs))
        kept[step].__dict__[f"added_{step}"] = getattr(F, HOOK)  # an older module gains one
        if step % 2:
            del sys.modules[kept.pop(0).__name__]  # one goes away (and is left alone)
        kind, *padding = action.split()
        if kind == "apply":
            sp.apply(padding=padding[0])
        else:
            sp.revert()
        assert_bound(padding[0] if padding else None, original)


def test_a_module_read_earlier_gains_a_binding(clean):
    original = clean
    module = _module("late")
    sp.apply()
    sp.status()  # reads the module: nothing bound there yet
    module.late = getattr(F, HOOK)  # the replacement
    sp.revert()
    assert module.late is original
    sp.status()
    module.later = original
    sp.apply(padding="valid")
    assert module.later.__ssim_patch__ == "valid" and module.late is module.later
    sp.revert()
    assert module.late is module.later is original


MODULE_SOURCE = """
import ssim_patch
late = None
ssim_patch.apply()  # a no-op (already applied): the index reads this module while it imports
from {module} import {hook} as late  # rebinds a name that already existed
"""


def test_a_name_rebound_while_its_module_is_being_imported(clean, tmp_path, monkeypatch):
    original = clean
    (tmp_path / f"{PREFIX}importing.py").write_text(MODULE_SOURCE.format(module=_releases.MODULE, hook=HOOK))
    monkeypatch.syspath_prepend(str(tmp_path))
    sp.apply()
    module = importlib.import_module(f"{PREFIX}importing")
    assert module.late.__ssim_patch__ == "same"
    sp.revert()
    assert module.late is original


def test_an_original_that_does_not_look_like_torchmetrics_function(clean):
    """A hook point replaced by a function of another module (same signature): its bindings
    elsewhere cannot be told by name, yet they are swapped and put back."""
    original = clean
    names = ", ".join(_releases.hook_point(_patcher._release()).parameters)
    other_module = _module("other")
    exec(f"def other({names}):\n    return 'other'\n", other_module.__dict__)
    other = other_module.other
    user = _module("user", fn=other)
    metric_binding = METRICS.__dict__[HOOK]
    setattr(F, HOOK, other)
    METRICS.__dict__[HOOK] = other
    try:
        sp.apply(padding="valid")
        for module in (F, METRICS, other_module, user):
            bound = module.__dict__["fn" if module is user else ("other" if module is other_module else HOOK)]
            assert bound.__ssim_patch__ == "valid" and bound.__wrapped__ is other
        sp.revert()
        assert user.fn is other and other_module.other is other and getattr(F, HOOK) is other
        user.extra = 1  # the module is read again: fn is still known as an original
        sp.apply()
        assert user.fn.__ssim_patch__ == "same"
        sp.revert()
    finally:
        setattr(F, HOOK, original)
        METRICS.__dict__[HOOK] = metric_binding
    assert_bound(None, original)


def test_no_op_calls_read_no_module(clean, monkeypatch):
    sp.apply()
    sp.status()
    reads: list[int] = []
    read = _patcher._bindings._read
    monkeypatch.setattr(_patcher._bindings, "_read", lambda i: (reads.append(i), read(i)))
    for _ in range(3):
        sp.apply()
        sp.status()
        sp.is_applied()
        sp.patched()(lambda: None)()
        with sp.patched(padding="valid"):
            pass
    sp.revert()
    sp.apply()
    assert reads == []
    _module("new", x=1)
    sp.status()
    assert len(reads) == 1  # the new module, once


RELOADS = textwrap.dedent(
    """
    import importlib, json, sys, traceback, types, warnings
    warnings.simplefilter("ignore")
    sys.path.insert(0, sys.argv[1])
    import ssim_patch
    import torchmetrics
    MODULE = "torchmetrics.functional.image.ssim"
    F = sys.modules[MODULE]
    HOOK = ssim_patch.status().hook

    def replacements():
        return {n: v for n, v in bindings().items() if hasattr(v, "__ssim_patch__")}

    def bindings():
        out = {}
        for name, module in list(sys.modules.items()):
            d = getattr(module, "__dict__", None) if isinstance(module, types.ModuleType) else None
            if isinstance(d, dict):
                for attr, v in list(d.items()):
                    if type(v) is types.FunctionType and v.__module__ == MODULE and v.__qualname__ == HOOK:
                        out[name + "." + attr] = v
        return out

    def reload_of_the_hook_module():
        ssim_patch.apply()
        importlib.reload(F)
        report = ssim_patch.status()
        assert not ssim_patch.is_applied() and not report.applied and report.places == (), report
        assert not report.pending, report
        ssim_patch.apply()
        assert ssim_patch.is_applied() and len({id(v) for v in bindings().values()}) == 1
        ssim_patch.revert()
        assert not replacements()

    def torchmetrics_dropped_and_imported_again():
        ssim_patch.apply(padding="valid")
        for name in [n for n in sys.modules if n.startswith("torchmetrics")]:
            del sys.modules[name]
        import torchmetrics  # fresh modules, unpatched: nothing asked for the patch again
        assert not ssim_patch.is_applied() and not ssim_patch.status().applied
        ssim_patch.apply(padding="valid")
        assert ssim_patch.is_applied()
        assert set(replacements()) == set(bindings()) and len(bindings()) >= 2, bindings()
        ssim_patch.revert()
        assert not replacements()

    def reload_of_a_third_party_module():
        import thirdparty_copy
        ssim_patch.apply()
        importlib.reload(thirdparty_copy)  # binds the replacement again, and under a new name
        assert thirdparty_copy.copy.__ssim_patch__ == "same", thirdparty_copy.copy
        thirdparty_copy.RELOADED = True
        importlib.reload(thirdparty_copy)
        assert thirdparty_copy.second_copy.__ssim_patch__ == "same"
        ssim_patch.revert()
        assert not replacements(), replacements()

    for run in (reload_of_the_hook_module, torchmetrics_dropped_and_imported_again, reload_of_a_third_party_module):
        try:
            run()
            print(json.dumps({"scenario": run.__name__, "ok": True}), flush=True)
        except BaseException:
            print(json.dumps({"scenario": run.__name__, "ok": False, "error": traceback.format_exc()}), flush=True)
    """
)

THIRD_PARTY = """
from torchmetrics.functional.image.ssim import {hook} as copy
if globals().get("RELOADED"):
    from torchmetrics.functional.image.ssim import {hook} as second_copy
"""


def test_reloads_in_a_fresh_interpreter(tmp_path):
    (tmp_path / "thirdparty_copy.py").write_text(THIRD_PARTY.format(hook=HOOK))
    assert_scenarios_pass(RELOADS, str(tmp_path), count=3)
