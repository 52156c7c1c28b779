"""The patch covers UQI: ``_uqi_compute`` (every module binding of it) and, from torchmetrics 1.2.1,
``UniversalImageQualityIndex.update`` are swapped and put back by the same apply(), revert() and
patched() as SSIM's hook point; a UQI hook point with another signature stops the whole patch;
status() lists every hook point; each module is patched when it is imported, in any order.

The numbers themselves are checked against the float64 reference in tests/matrix/test_uqi_release.py
(under every pinned release) and tests/test_uqi.py (the engine).
"""

from __future__ import annotations

import copy
import importlib
import pickle
import random
import sys
import textwrap
import types
import warnings
from typing import Any, Optional

import pytest
import torch

import ssim_patch
from ssim_patch import PatchError, _adapters, _patcher, _releases
from tests.helpers.fresh_interpreter import assert_scenarios_pass
from tests.helpers.hook_bindings import hook_bindings
from tests.helpers.reference import uqi_reference
from tests.helpers.torch_support import requires_compile, reset_dynamo

U = importlib.import_module(_releases.UQI_MODULE)
METRICS = importlib.import_module(_releases.UQI_METRIC_MODULE)
SSIM_HOOK = ssim_patch.status().hook
UQI_HOOKS = _releases.uqi_hook_points(_patcher._release())
SWAPS_UPDATE = _releases.UQI_METRIC_UPDATE in UQI_HOOKS
CLASS = METRICS.UniversalImageQualityIndex
PREFIX = "_ssim_patch_uqi_test_"

# The originals, in a container (a module-level binding of one would itself be patched).
KEEP: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def unpatched(ssim_patch):
    """Each test starts unpatched; the plugin's fixture puts the session's state back after."""
    ssim_patch.revert()
    KEEP.update(compute=U._uqi_compute, update=CLASS.__dict__["update"], ssim=hook_bindings(SSIM_HOOK))
    KEEP["code"] = KEEP["update"].__code__
    assert not hasattr(KEEP["compute"], "__ssim_patch__") and not hasattr(KEEP["update"], "__ssim_patch__")
    yield
    for name in [n for n in sys.modules if n.startswith(PREFIX)]:
        del sys.modules[name]
    # A test that replaced a hook point must have put the original back.
    assert KEEP["compute"] in (U._uqi_compute, getattr(U._uqi_compute, "__wrapped__", None))


def uqi_bindings() -> dict[str, Any]:
    """``module.attr`` -> value for every module binding of UQI's hook function."""
    return hook_bindings("_uqi_compute", _releases.UQI_MODULE)


def assert_uqi(state: Optional[str], extra: tuple[str, ...] = ()) -> None:
    """Every binding of ``_uqi_compute`` is the original (state None) or one replacement with
    padding ``state``; the class's update likewise; status() lists exactly those places."""
    found = uqi_bindings()
    assert {
        f"{_releases.UQI_MODULE}._uqi_compute",
        f"{_releases.UQI_METRIC_MODULE}._uqi_compute",
        *extra,
    } <= set(found)
    assert len(set(map(id, found.values()))) == 1, {
        k: getattr(v, "__ssim_patch__", "-") for k, v in found.items()
    }
    bound = next(iter(found.values()))
    update = CLASS.__dict__["update"]
    report = ssim_patch.status()
    if state is None:
        assert bound is KEEP["compute"] and update is KEEP["update"] and update.__code__ is KEEP["code"]
        assert report.uqi_places == () and not ssim_patch.is_applied()
        return
    assert bound.__ssim_patch__ == state and bound.__wrapped__ is KEEP["compute"]
    if SWAPS_UPDATE:
        assert update.__ssim_patch__ == state and update.__wrapped__ is KEEP["update"]
        # The release's own function (held by instances created before apply()) runs the trampoline.
        assert KEEP["update"].__code__ is _adapters._update_trampoline.__code__
        found[_releases.UQI_METRIC_UPDATE.qualified] = update
    else:
        assert update is KEEP["update"] and update.__code__ is KEEP["code"]
    assert set(report.uqi_places) == set(found) and not set(report.places) & set(found)
    assert ssim_patch.is_applied() and report.padding == state


def _module(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(PREFIX + name)
    module.__dict__.update(attrs)
    sys.modules[module.__name__] = module
    return module


def _pair(shape=(2, 2, 24, 26), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    return x, 0.6 * x + 0.4 * torch.rand(shape, generator=g, dtype=torch.float64)


# --- apply / revert / patched --------------------------------------------------------------------


def test_status_lists_every_hook_point():
    report = ssim_patch.status()
    assert report.hooks == tuple(h.qualified for h in _releases.hook_points(_patcher._release()))
    assert report.hooks[0] == f"{_releases.MODULE}.{report.hook}"
    assert report.hooks[1] == f"{_releases.UQI_MODULE}._uqi_compute"
    assert (_releases.UQI_METRIC_UPDATE.qualified in report.hooks) is SWAPS_UPDATE
    assert {"uqi-border-crop", "uqi-pad-swap", "uqi-one-tap-nan"} <= set(report.upstream_bugs)


def test_apply_revert_and_patched_cover_uqi():
    third = _module("copy")
    exec(f"from {_releases.UQI_MODULE} import _uqi_compute as copy", third.__dict__)
    places = (f"{third.__name__}.copy",)
    assert_uqi(None, places)
    report = ssim_patch.apply(padding="valid")
    assert report.applied and set(report.places) == set(hook_bindings(SSIM_HOOK))
    assert_uqi("valid", places)
    with ssim_patch.patched(padding="same"):
        assert_uqi("same", places)
        late = _module("late", again=U._uqi_compute)  # binds the replacement: patched later too
        places += (f"{late.__name__}.again",)
    assert_uqi("valid", places)
    ssim_patch.revert()
    assert_uqi(None, places)
    assert third.copy is KEEP["compute"] and late.again is KEEP["compute"]


def test_randomised_sequences_keep_every_binding_consistent():
    """apply / revert / patched() entered and left in any order, with modules coming and going."""
    rng = random.Random(13)
    state: Optional[str] = None
    stack: list[tuple[ssim_patch.patched, Optional[str]]] = []
    extra: list[str] = []
    for step in range(40):
        op = rng.choice(["apply", "apply", "revert", "enter", "exit", "module"])
        padding = rng.choice(["same", "valid"])
        if op == "apply":
            ssim_patch.apply(padding=padding)
            state = padding
        elif op == "revert":
            ssim_patch.revert()
            state = None
        elif op == "enter":
            cm = ssim_patch.patched(padding=padding)
            cm.__enter__()
            stack.append((cm, state))
            state = padding
        elif op == "exit" and stack:  # any entered one: it restores the state its entry saved
            cm, state = stack.pop(rng.randrange(len(stack)))
            cm.__exit__(None, None, None)
        elif op == "module":
            module = _module(f"s{step}", bound=U._uqi_compute)
            extra.append(f"{module.__name__}.bound")
        assert_uqi(state, tuple(extra))
        assert set(ssim_patch.status().places) == (set(hook_bindings(SSIM_HOOK)) if state else set())
    while stack:
        stack.pop()[0].__exit__(None, None, None)


def test_the_patched_functional_is_differentiable():
    x, y = _pair(seed=1)
    ssim_patch.apply()
    a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
    got = torch.autograd.grad(
        U.universal_image_quality_index(a, b, kernel_size=(7, 5), sigma=(1.2, 0.9)), (a, b)
    )
    a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
    want = torch.autograd.grad(ssim_patch.uqi(a, b, kernel_size=(7, 5), sigma=(1.2, 0.9)), (a, b))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=0, rtol=0)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_metric_pickled_and_copied_while_patched(padding):
    ssim_patch.apply(padding=padding)
    x, y = _pair((3, 1, 30, 28), seed=2)
    kw = dict(kernel_size=(11, 3), sigma=(1.5, 0.5))
    metric = CLASS(**kw).set_dtype(torch.float64)
    metric.update(x[:2], y[:2])
    copies = [pickle.loads(pickle.dumps(metric)), copy.deepcopy(metric)]
    for m in (metric, *copies):
        m.update(x[2:], y[2:])
    values = [m.compute().item() for m in (metric, *copies)]
    expected = uqi_reference(
        x.numpy(), y.numpy(), eps=float(torch.finfo(torch.float64).eps), padding=padding, **kw
    )
    assert values == [values[0]] * 3 and abs(values[0] - expected.mean()) < 1e-10


def test_a_copy_made_after_apply_of_a_metric_made_before_gets_the_patched_update():
    """``Metric.__setstate__`` (pickle, deepcopy, ``clone()``) wraps the class's update again."""
    kw = dict(kernel_size=(11, 3), sigma=(1.5, 0.5))
    metric = CLASS(**kw).set_dtype(torch.float64)
    ssim_patch.apply()
    x, y = _pair((2, 1, 30, 28), seed=3)
    clone = metric.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the copy runs the replacement: no warning
        clone.update(x, y)
    expected = uqi_reference(x.numpy(), y.numpy(), eps=float(torch.finfo(torch.float64).eps), **kw)
    assert abs(clone.compute().item() - expected.mean()) < 1e-10


# --- a release whose UQI hook point changed --------------------------------------------------------


def _changed_uqi(
    preds, target, kernel_size=(11, 11), sigma=(1.5, 1.5), reduction="elementwise_mean", padding="same"
):
    raise AssertionError("the simulated release's function must never be called")


def _changed_update(self, preds, target, weights=None):
    raise AssertionError("the simulated release's update must never be called")


@pytest.mark.parametrize("before", [None, "same"])
@pytest.mark.parametrize("where", ["_uqi_compute", "UniversalImageQualityIndex.update"])
def test_a_uqi_hook_point_with_another_signature_changes_nothing(where, before):
    if where.endswith("update") and not SWAPS_UPDATE:
        pytest.skip("this release's UniversalImageQualityIndex.update is not a hook point")
    if before:
        ssim_patch.apply(padding=before)
    saved_ssim = hook_bindings(SSIM_HOOK)
    saved_uqi = uqi_bindings()
    saved_update = CLASS.__dict__["update"]
    if where == "_uqi_compute":
        U._uqi_compute = _changed_uqi
        qualified, params = f"{_releases.UQI_MODULE}._uqi_compute", "padding)"
    else:
        CLASS.update = _changed_update
        qualified, params = _releases.UQI_METRIC_UPDATE.qualified, "(self, preds, target, weights)"
    try:
        with pytest.raises(PatchError) as info:
            ssim_patch.apply(padding="valid")
        message = str(info.value)
        assert message.startswith(f"Cannot patch torchmetrics {_patcher._release()}: {qualified} takes (")
        assert params in message and message.endswith("Nothing was changed.")
        with pytest.warns(UserWarning, match=r"takes \(.*Nothing was changed \(strict=False\)"):
            assert ssim_patch.apply(padding="valid", strict=False).padding == before
        assert hook_bindings(SSIM_HOOK) == saved_ssim  # SSIM's hook point was not swapped either
        replaced = f"{_releases.UQI_MODULE}._uqi_compute" if where == "_uqi_compute" else None
        assert uqi_bindings() == {k: v for k, v in saved_uqi.items() if k != replaced}
        assert CLASS.__dict__["update"] is (saved_update if replaced else _changed_update)
        report = ssim_patch.status()
        assert report.padding == before and not report.pending
    finally:
        U._uqi_compute = saved_uqi[f"{_releases.UQI_MODULE}._uqi_compute"]
        CLASS.update = saved_update
    assert_uqi(before)


def test_a_metric_update_with_a_closure_changes_nothing(monkeypatch):
    """The release's update must be a plain function without a closure: its code is swapped for
    the trampoline's while patched (instances created before apply() hold it)."""
    if not SWAPS_UPDATE:
        pytest.skip("this release's UniversalImageQualityIndex.update is not a hook point")
    release_update = KEEP["update"]

    def update(self, preds, target):
        return release_update(self, preds, target)  # a closure over release_update

    monkeypatch.setattr(CLASS, "update", update)
    with pytest.raises(
        PatchError, match=r"UniversalImageQualityIndex\.update is not a plain function without a closure"
    ):
        ssim_patch.apply()
    assert not ssim_patch.is_applied() and hook_bindings(SSIM_HOOK) == KEEP["ssim"]
    assert update.__code__ is not _adapters._update_trampoline.__code__
    monkeypatch.undo()
    assert_uqi(None)


def test_a_missing_metric_class_changes_nothing(monkeypatch):
    if not SWAPS_UPDATE:
        pytest.skip("this release's UniversalImageQualityIndex.update is not a hook point")
    monkeypatch.delattr(METRICS, "UniversalImageQualityIndex")
    with pytest.raises(
        PatchError, match=r"torchmetrics\.image\.uqi has no function UniversalImageQualityIndex\.update"
    ):
        ssim_patch.apply()
    assert not ssim_patch.is_applied() and hook_bindings(SSIM_HOOK) == KEEP["ssim"]
    monkeypatch.undo()
    assert_uqi(None)


# --- fresh interpreters: import order, reloads, import-time changes, the start-up hook ---------------

CHILD = textwrap.dedent(
    """
    import importlib, json, sys, traceback, types, warnings
    warnings.simplefilter("ignore")
    import wrapt
    import ssim_patch
    SSIM, UQI, UQI_METRIC = ("torchmetrics.functional.image.ssim", "torchmetrics.functional.image.uqi",
                             "torchmetrics.image.uqi")

    def replacements():
        out = {}
        for name, module in list(sys.modules.items()):
            d = getattr(module, "__dict__", None) if isinstance(module, types.ModuleType) else None
            if isinstance(d, dict):
                out.update({name + "." + a: v for a, v in list(d.items())
                            if type(v) is types.FunctionType and "__ssim_patch__" in v.__dict__})
        cls = getattr(sys.modules.get(UQI_METRIC), "UniversalImageQualityIndex", None)
        if cls is not None and hasattr(cls.__dict__["update"], "__ssim_patch__"):
            out[UQI_METRIC + ".UniversalImageQualityIndex.update"] = cls.__dict__["update"]
        return out

    def corrected():
        import torch
        x = torch.rand(2, 1, 30, 28, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        y = 0.5 * x + 0.5 * torch.rand(2, 1, 30, 28, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        kw = dict(kernel_size=(11, 3), sigma=(1.5, 0.5))
        want = ssim_patch.uqi(x, y, **kw)
        got = sys.modules[UQI].universal_image_quality_index(x, y, **kw)
        m = sys.modules[UQI_METRIC].UniversalImageQualityIndex(**kw).set_dtype(torch.float64)
        m.update(x, y)
        return torch.equal(got, want) and abs(m.compute().item() - want.item()) < 1e-12

    def purge():
        ssim_patch.revert()
        for name in [n for n in sys.modules if n.startswith("torchmetrics")]:
            del sys.modules[name]

    def startup_hook_patches_uqi():
        from ssim_patch import _startup
        assert "torchmetrics" not in sys.modules
        assert _startup.install({"SSIM_PATCH_AUTO": "1", "SSIM_PATCH_PADDING": "same"})
        import torchmetrics
        report = ssim_patch.status()
        assert report.applied and not report.pending and report.uqi_places, report
        assert corrected()

    def reload_of_the_uqi_module():
        ssim_patch.apply()
        importlib.reload(sys.modules[UQI])
        report = ssim_patch.status()
        assert not ssim_patch.is_applied() and not report.applied and report.uqi_places == (), report
        ssim_patch.apply()  # same options: must notice the module is no longer patched
        assert ssim_patch.is_applied() and corrected()
        ssim_patch.revert()
        assert not replacements(), replacements()

    def changed_on_import(where, strict):
        def change(module):
            if where == "_uqi_compute":
                def _uqi_compute(preds, target, kernel_size=(11, 11), sigma=(1.5, 1.5), reduction="elementwise_mean", padding="same"):
                    raise AssertionError
                _uqi_compute.__module__ = UQI
                module._uqi_compute = _uqi_compute
            else:
                def update(self, preds, target, weights=None):
                    raise AssertionError
                module.UniversalImageQualityIndex.update = update

        def run():
            purge()
            wrapt.register_post_import_hook(change, UQI if where == "_uqi_compute" else UQI_METRIC)
            ssim_patch.apply(strict=strict)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    import torchmetrics
                    error = None
                except ssim_patch.PatchError as exc:
                    error = str(exc)
            if strict:
                assert error and "Cannot patch torchmetrics" in error and where in error, error
                import torchmetrics  # a second import works, unpatched
            else:
                assert error is None and any("Nothing was changed (strict=False)" in str(w.message) for w in caught)
            report = ssim_patch.status()
            assert not report.applied and not report.pending, report
            # SSIM's module, patched before (or after) UQI's failed, is not patched either.
            assert not replacements(), sorted(replacements())
        return run

    scenarios = {
        "the start-up hook patches UQI": startup_hook_patches_uqi,
        "reload of the UQI module": reload_of_the_uqi_module,
        "_uqi_compute changed at import, strict": changed_on_import("_uqi_compute", True),
        "_uqi_compute changed at import, lax": changed_on_import("_uqi_compute", False),
        "update changed at import, strict": changed_on_import("UniversalImageQualityIndex.update", True),
    }
    swaps_update = sys.argv[1] == "1"
    for name, run in scenarios.items():
        if name.startswith("update") and not swaps_update:
            continue
        try:
            run()
            print(json.dumps({"scenario": name, "ok": True}), flush=True)
        except BaseException:
            print(json.dumps({"scenario": name, "ok": False, "error": traceback.format_exc()}), flush=True)
    """
)


def test_faults_in_a_fresh_interpreter():
    assert_scenarios_pass(CHILD, "1" if SWAPS_UPDATE else "0", count=4 + SWAPS_UPDATE)


@requires_compile
def test_compile_traces_the_patched_uqi_sum_in_one_graph():
    """The patched ``_uqi_compute`` with ``reduction="sum"`` (what the Metric class sums) traces in
    one graph: it depends on its arguments only, not on who calls it."""
    pytest.importorskip("torch._dynamo")
    reset_dynamo()
    ssim_patch.apply()
    x, y = _pair((2, 1, 24, 24), seed=4)
    compiled = torch.compile(
        lambda a, b: U._uqi_compute(a, b, (11, 11), (1.5, 1.5), "sum"), backend="aot_eager", fullgraph=True
    )
    torch.testing.assert_close(compiled(x, y), U._uqi_compute(x, y, (11, 11), (1.5, 1.5), "sum"))
    reset_dynamo()


# --- an instance created before apply() -------------------------------------------------------------


def _before_apply_expected(x, y, kw):
    return uqi_reference(x.numpy(), y.numpy(), eps=float(torch.finfo(torch.float64).eps), **kw).mean()


@requires_compile
@pytest.mark.parametrize("compile_backend", ["eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_metric_created_before_apply_compiled(compile_backend):
    """The issue's case: created before apply(), then run through torch.compile. The release's own
    update function (which the instance holds) runs a trampoline to the corrected update, which
    compiles like any code: the value is the corrected one (it was 1.7 > 1 with a frame test)."""
    if not SWAPS_UPDATE:
        pytest.skip("this release's UniversalImageQualityIndex keeps preds and target")
    pytest.importorskip("torch._dynamo")
    kw = dict(kernel_size=(11, 3), sigma=(1.5, 0.5))
    metric = CLASS(**kw).set_dtype(torch.float64)
    ssim_patch.apply()
    x, y = _pair((2, 1, 24, 24), seed=5)
    reset_dynamo()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # no "created before apply()" warning any more
            value = torch.compile(metric, backend=compile_backend)(x, y)
    finally:
        reset_dynamo()
    expected = _before_apply_expected(x, y, kw)
    assert abs(value.item() - expected) < 1e-10 and abs(metric.compute().item() - expected) < 1e-10


@requires_compile
def test_a_metric_compiled_and_run_before_apply_follows_apply_and_revert():
    """A compiled metric run unpatched, then patched (both paddings), then reverted: torch.compile
    retraces when the hook points change, and each call gets the state's value."""
    if not SWAPS_UPDATE:
        pytest.skip("this release's UniversalImageQualityIndex keeps preds and target")
    pytest.importorskip("torch._dynamo")
    kw = dict(kernel_size=(11, 3), sigma=(1.5, 0.5))
    x, y = _pair((2, 1, 24, 24), seed=6)
    eps = float(torch.finfo(torch.float64).eps)
    metric = CLASS(**kw).set_dtype(torch.float64)
    reset_dynamo()
    try:
        compiled = torch.compile(metric, backend="eager")
        unpatched = compiled(x, y).item()
        for padding in ("same", "valid"):
            ssim_patch.apply(padding=padding)
            expected = uqi_reference(x.numpy(), y.numpy(), eps=eps, padding=padding, **kw).mean()
            assert abs(compiled(x, y).item() - expected) < 1e-10, padding
        ssim_patch.revert()
        assert compiled(x, y).item() == unpatched
    finally:
        reset_dynamo()


def test_metric_created_before_apply_from_two_threads():
    """Instances created before apply(), updated at once from two threads, each get the corrected
    value (the trampoline has no state of its own)."""
    import threading

    if not SWAPS_UPDATE:
        pytest.skip("this release's UniversalImageQualityIndex keeps preds and target")
    kw = dict(kernel_size=(11, 3), sigma=(1.5, 0.5))
    metrics = [CLASS(**kw).set_dtype(torch.float64) for _ in range(2)]
    ssim_patch.apply()
    pairs = [_pair((1, 2, 26, 24), seed=10 + i) for i in range(2)]

    def run(metric, pair):
        for _ in range(5):
            metric.update(*pair)

    threads = [threading.Thread(target=run, args=args) for args in zip(metrics, pairs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for metric, (x, y) in zip(metrics, pairs):
        assert abs(metric.compute().item() - _before_apply_expected(x, y, kw)) < 1e-10


def test_metric_created_before_apply_in_a_collection_and_subclasses():
    """A MetricCollection's member, a subclass that inherits ``update`` and one whose ``update``
    calls ``super().update``, all created before apply(): each gets the corrected value."""
    from torchmetrics import MetricCollection

    if not SWAPS_UPDATE:
        pytest.skip("this release's UniversalImageQualityIndex keeps preds and target")

    class Overriding(CLASS):
        def update(self, preds, target):
            super().update(preds, target)

    kw = dict(kernel_size=(11, 3), sigma=(1.5, 0.5))
    inherits = type("Inherits", (CLASS,), {})
    metrics = [cls(**kw).set_dtype(torch.float64) for cls in (inherits, Overriding)]
    collection = MetricCollection({"uqi": CLASS(**kw)}).set_dtype(torch.float64)
    ssim_patch.apply()
    x, y = _pair((2, 1, 26, 24), seed=12)
    expected = _before_apply_expected(x, y, kw)
    for metric in (*metrics, collection):
        metric.update(x, y)
        value = metric.compute()
        value = value["uqi"] if isinstance(value, dict) else value
        assert abs(value.item() - expected) < 1e-10, type(metric).__name__


def test_the_trampoline_is_undone_by_every_way_out():
    """revert() and patched()'s exit each give the release's update its own code back."""
    if not SWAPS_UPDATE:
        pytest.skip("this release's UniversalImageQualityIndex.update is not a hook point")
    for leave in ("revert", "patched"):
        if leave == "revert":
            ssim_patch.apply()
            assert KEEP["update"].__code__ is not KEEP["code"]
            ssim_patch.revert()
        else:
            with ssim_patch.patched():
                assert KEEP["update"].__code__ is not KEEP["code"]
        assert KEEP["update"].__code__ is KEEP["code"] and CLASS.__dict__["update"] is KEEP["update"]
