"""Misuse and faults: changed or unsupported torchmetrics releases, partial imports, copies of the
hook function in third-party modules, reloads, pickling, torch.compile, NaN/inf pixels, and the
table of bad inputs (docs/bad-inputs.md, checked against the library's actual behaviour).

``python -m scripts.gen_docs bad-inputs`` rewrites docs/bad-inputs.md (the cases: tests/helpers/bad_inputs.py).
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import json
import math
import pathlib
import pickle
import subprocess
import sys
import textwrap
import types
import warnings
from typing import Any, Optional

import numpy as np
import pytest
import torch
from packaging.version import Version

import ssim_patch
from ssim_patch import PatchError, UntestedReleaseWarning, _patcher, _releases
from tests.helpers.bad_inputs import BAD_INPUTS, table_rows
from tests.helpers.fresh_interpreter import assert_scenarios_pass, unpatched_environ
from tests.helpers.hook_bindings import hook_bindings as _hook_bindings
from tests.helpers.reference import ssim_reference
from tests.helpers.torch_support import requires_compile, reset_dynamo

MODULE = _releases.MODULE
F = importlib.import_module(MODULE)
METRICS = importlib.import_module("torchmetrics.image.ssim")
HOOK = ssim_patch.status().hook
RELEASE = ssim_patch.status().release
ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bad-inputs.md"


def _pair(shape=(3, 2, 24, 24), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    y = 0.7 * x + 0.3 * torch.rand(shape, generator=g, dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def bindings() -> dict[str, Any]:
    return _hook_bindings(HOOK)


def _is_patched(value: Any) -> bool:
    return hasattr(value, "__ssim_patch__")


# The original, in a container (a module-level binding of it would itself be patched).
KEEP: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def unpatched(ssim_patch):
    """Each test starts unpatched; the plugin's fixture puts the session's state back after."""
    ssim_patch.revert()
    KEEP["original"] = getattr(F, HOOK)
    assert not _is_patched(KEEP["original"])
    yield
    # A test that replaced the hook must have put the original back before the plugin re-applies.
    if getattr(F, HOOK) is not KEEP["original"] and not _is_patched(getattr(F, HOOK)):
        setattr(F, HOOK, KEEP["original"])


def assert_all(state: Optional[str], extra: tuple[str, ...] = ()) -> None:
    """All bindings are the original (state None) or one replacement with padding ``state``."""
    found = bindings()
    assert {f"{MODULE}.{HOOK}", f"torchmetrics.image.ssim.{HOOK}", *extra} <= set(found)
    assert len(set(map(id, found.values()))) == 1, {
        k: getattr(v, "__ssim_patch__", "-") for k, v in found.items()
    }
    bound = next(iter(found.values()))
    if state is None:
        assert bound is KEEP["original"]
        assert not ssim_patch.is_applied()
    else:
        assert bound.__ssim_patch__ == state and bound.__wrapped__ is KEEP["original"]
        assert ssim_patch.is_applied()


# --- a release whose hook point changed -----------------------------------------------------------


def _changed(
    preds,
    target,
    gaussian_kernel=True,
    sigma=1.5,
    kernel_size=11,
    data_range=None,
    k1=0.01,
    k2=0.03,
    return_full_image=False,
    return_contrast_sensitivity=False,
    padding="same",
):
    raise AssertionError("the simulated release's function must never be called")


@pytest.mark.parametrize("before", [None, "same"])
def test_changed_signature_strict_raises_and_changes_nothing(before):
    if before:
        ssim_patch.apply(padding=before)
    metric_binding = METRICS.__dict__[HOOK]
    setattr(F, HOOK, _changed)  # what a release with another signature would have
    try:
        with pytest.raises(PatchError) as info:
            ssim_patch.apply(padding="valid")
        message = str(info.value)
        assert f"Cannot patch torchmetrics {RELEASE}" in message
        assert f"{MODULE}.{HOOK} takes (" in message and "padding)" in message
        assert "expected (preds, target, " in message and message.endswith("Nothing was changed.")
        assert getattr(F, HOOK) is _changed and METRICS.__dict__[HOOK] is metric_binding
        report = ssim_patch.status()
        assert report.applied is bool(before) and report.padding == before and not report.pending
    finally:
        setattr(F, HOOK, KEEP["original"] if before is None else metric_binding)
    assert_all(before)


def test_changed_signature_lax_warns_and_changes_nothing():
    setattr(F, HOOK, _changed)
    try:
        with pytest.warns(UserWarning, match=r"takes \(.*padding\).*Nothing was changed \(strict=False\)"):
            report = ssim_patch.apply(strict=False)
        assert not report.applied and not report.pending and report.places == ()
        assert getattr(F, HOOK) is _changed and METRICS.__dict__[HOOK] is KEEP["original"]
    finally:
        setattr(F, HOOK, KEEP["original"])
    assert_all(None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, "has no function"), (42, "is int, not a function")],
    ids=["missing", "not-callable"],
)
def test_hook_missing_or_not_a_function(value, expected):
    if value is None:
        delattr(F, HOOK)
    else:
        setattr(F, HOOK, value)
    try:
        with pytest.raises(PatchError, match=expected):
            ssim_patch.apply()
        assert not ssim_patch.is_applied()
    finally:
        setattr(F, HOOK, KEEP["original"])
    assert_all(None)


def test_metadata_says_an_older_release_than_the_code(monkeypatch):
    """Package metadata of 0.9.3 (hook ``_ssim_compute``) over 1.9.0's code: the signature check
    catches it, naming the release and both signatures."""
    monkeypatch.setattr(_patcher, "_release", lambda: Version("0.9.3"))
    with pytest.raises(PatchError) as info:
        ssim_patch.apply()
    message = str(info.value)
    assert message.startswith("Cannot patch torchmetrics 0.9.3:")
    assert "_ssim_compute takes (" in message and "expected (preds, target, gaussian_kernel" in message
    monkeypatch.undo()
    assert_all(None)


# --- unsupported, newer, unreadable and missing releases ---------------------------------------


@pytest.mark.parametrize("before", [None, "valid"])
def test_unsupported_release(monkeypatch, before):
    if before:
        ssim_patch.apply(padding=before)
    monkeypatch.setattr(_patcher, "_release", lambda: Version("0.7.0"))
    with pytest.raises(
        PatchError, match=r"torchmetrics 0\.7\.0 is not supported: .*from 0\.8\.2 .*Nothing was changed\."
    ):
        ssim_patch.apply()
    with pytest.warns(UserWarning, match=r"0\.7\.0 is not supported.*\(strict=False\)"):
        ssim_patch.apply(strict=False)
    report = ssim_patch.status()
    assert not report.supported and report.hook is None and not report.tested
    monkeypatch.undo()
    assert_all(before)


def test_newer_release_warns_once_and_applies(monkeypatch):
    monkeypatch.setattr(_patcher, "_release", lambda: Version("99.1.0"))
    monkeypatch.setattr(_patcher, "_warned", set())
    with pytest.warns(UntestedReleaseWarning, match="99.1.0 is newer than"):
        report = ssim_patch.apply(padding="valid")
    assert report.applied and not report.tested and report.release == "99.1.0"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ssim_patch.apply(padding="same")  # no second warning
    assert_all("same")


def test_unreadable_or_missing_metadata(monkeypatch):
    monkeypatch.setattr(_patcher.importlib.metadata, "version", lambda name: "not-a-version")
    with pytest.raises(PatchError, match="unreadable version 'not-a-version'"):
        ssim_patch.apply()
    assert ssim_patch.status().release is None

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(_patcher.importlib.metadata, "version", missing)
    assert ssim_patch.apply().applied  # falls back on torchmetrics.__version__
    ssim_patch.revert()
    monkeypatch.delattr(sys.modules["torchmetrics"], "__version__")
    with pytest.raises(PatchError, match="torchmetrics is not installed"):
        ssim_patch.apply()
    monkeypatch.undo()
    assert_all(None)


# --- a third-party module with its own copy -------------------------------------------------------


def _third_party(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(f"from {MODULE} import {HOOK}\nfrom {MODULE} import {HOOK} as renamed", module.__dict__)
    return module


def test_third_party_copy_is_patched_and_reverted():
    mod = _third_party("_thirdparty_before")
    try:
        places = (f"{mod.__name__}.{HOOK}", f"{mod.__name__}.renamed")
        report = ssim_patch.apply()
        assert set(places) <= set(report.places)
        assert_all("same", places)
        late = _third_party("_thirdparty_while_patched")  # copies the replacement
        places += (f"{late.__name__}.{HOOK}", f"{late.__name__}.renamed")
        ssim_patch.apply(padding="valid")
        assert_all("valid", places)
        ssim_patch.revert()
        assert_all(None, places)
        assert mod.__dict__[HOOK] is KEEP["original"] and late.__dict__["renamed"] is KEEP["original"]
    finally:
        sys.modules.pop("_thirdparty_before", None)
        sys.modules.pop("_thirdparty_while_patched", None)


# --- pickling and copying Metric objects while patched -------------------------------------------


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_metric_pickle_and_deepcopy_while_patched(padding):
    ssim_patch.apply(padding=padding)
    x, y = _pair((4, 1, 40, 40), seed=1)
    ref = ssim_reference(x.numpy(), y.numpy(), data_range=1.0, padding=padding).per_image
    metrics = {
        "ssim": METRICS.StructuralSimilarityIndexMeasure(data_range=1.0).double(),
        "ms-ssim": METRICS.MultiScaleStructuralSimilarityIndexMeasure(
            data_range=1.0, betas=(0.5, 0.5), kernel_size=5, sigma=0.8
        ).double(),
    }
    for name, metric in metrics.items():
        metric.update(x[:2], y[:2])
        copies = [pickle.loads(pickle.dumps(metric)), copy.deepcopy(metric)]
        clone = type(metric)(
            **(
                {"data_range": 1.0}
                if name == "ssim"
                else dict(data_range=1.0, betas=(0.5, 0.5), kernel_size=5, sigma=0.8)
            )
        ).double()
        clone.load_state_dict(metric.state_dict())
        for other in (metric, *copies):
            other.update(x[2:], y[2:])  # the copies keep computing with the patched function
        values = [m.compute().item() for m in (metric, *copies)]
        assert values[1:] == [values[0]] * 2, (name, values)
        if name == "ssim":
            assert abs(values[0] - ref.mean()) < 1e-6
    # The hook function itself pickles by reference, and deepcopy keeps it.
    bound = getattr(F, HOOK)
    assert pickle.loads(pickle.dumps(bound)) is bound and copy.deepcopy(bound) is bound


def test_metric_pickled_while_patched_loads_after_revert():
    ssim_patch.apply(padding="valid")
    metric = METRICS.StructuralSimilarityIndexMeasure(data_range=1.0).double()
    blob = pickle.dumps(metric)
    ssim_patch.revert()
    x, y = _pair((2, 1, 32, 32), seed=2)
    loaded = pickle.loads(blob)
    loaded.update(x, y)  # no reference to the function is pickled: the current binding is used
    expected = METRICS.StructuralSimilarityIndexMeasure(data_range=1.0).double()
    expected.update(x, y)
    assert loaded.compute().item() == expected.compute().item()


# --- torch.compile ------------------------------------------------------------------------------


@requires_compile
def test_compile_traces_the_patched_functional_in_one_graph():
    """Dynamo captures the patched functional without a graph break (no host sync, even with
    data_range=None), AOT autograd runs it, and a compiled function follows revert()."""
    pytest.importorskip("torch._dynamo")
    reset_dynamo()
    ssim_patch.apply()
    f = F.structural_similarity_index_measure
    # float64: in float32 the 1-tap window's variance x*x - x*x is pure rounding, and a traced
    # graph may round it differently (no fused multiply-add) than eager does.
    x, y = _pair((2, 3, 32, 32), seed=3)
    kw = dict(sigma=0.1, return_contrast_sensitivity=True)  # upstream's cs is NaN for sigma < 1/7
    eager = f(x, y, **kw)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    got = compiled(x, y, **kw)
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    assert torch.isfinite(got[1]).all()
    ssim_patch.revert()
    follows = torch.compile(f, backend="aot_eager")  # upstream's code has graph breaks
    upstream = f(x, y, **kw)
    again = follows(x, y, **kw)
    assert torch.equal(again[1].isnan(), upstream[1].isnan())
    reset_dynamo()


COMPILE_CHILD = textwrap.dedent(
    """
    import json, warnings
    warnings.simplefilter("ignore")
    import torch, torch._dynamo
    import ssim_patch
    from torchmetrics.functional.image.ssim import structural_similarity_index_measure as f
    ssim_patch.apply()
    torch._dynamo.config.suppress_errors = True  # a failing backend falls back to eager
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    y = 0.6 * x + 0.4 * torch.rand(2, 3, 32, 32, generator=g)
    eager = f(x, y, reduction="none")
    out = torch.compile(f)(x, y, reduction="none")
    from torch._dynamo.utils import counters
    print(json.dumps({"diff": (out - eager).abs().max().item(), "graph_breaks": sum(counters["graph_break"].values()),
                      "fell_back": bool(counters["unimplemented"]) or "inductor" not in counters}))
    """
)


@pytest.mark.slow
def test_inductor_compiles_or_falls_back_cleanly():
    """The default backend (inductor, C++ on CPU; slow: 20-60 s on a cold cache, CI runs it with
    -m slow): a compiler failure must fall back to eager with the same numbers. The cap is only
    there so a hung compiler fails instead of stalling the run."""
    # The child starts unpatched: nothing this session exported (the plugin exports the patch).
    env = unpatched_environ()
    cap_s = 900
    try:
        out = subprocess.run(
            [sys.executable, "-c", COMPILE_CHILD], capture_output=True, text=True, timeout=cap_s, env=env
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"inductor did not finish compiling and running within {cap_s} s")
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["diff"] < 1e-5, result
    assert result["graph_breaks"] == 0, result


# --- NaN and inf pixels ------------------------------------------------------------------------


def _with_bad_pixel(x: torch.Tensor, value: float, image: int = 1) -> torch.Tensor:
    out = x.clone()
    out[image, 0, 5, 7] = value
    return out


NAN_CASES = [
    pytest.param(where, bad, data_range, padding, id=f"{where}-{name}-{rname}-{padding}")
    for where in ("preds", "target")
    for bad, name in ((math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf"))
    for data_range, rname in ((1.0, "range-1"), (None, "range-None"))
    for padding in ("same", "valid")
    # With data_range=None the engine issue is the same for every padding, side and sign.
    if data_range == 1.0 or (padding == "same" and where == "preds" and name != "-inf")
]


@pytest.mark.parametrize(("where", "bad", "data_range", "padding"), NAN_CASES)
def test_nan_inf_pixels_spoil_only_their_image(where, bad, data_range, padding):
    """NaN/inf in one image: that image's SSIM is NaN, every other image's is what it is without
    the bad pixel (with data_range=None, L comes from the finite pixels)."""
    x, y = _pair((4, 2, 20, 20), seed=4)
    x, y = x * 255, y * 255  # a range far from 1, so an L that falls back to 1 shows
    bx, by = (_with_bad_pixel(x, bad), y) if where == "preds" else (x, _with_bad_pixel(y, bad))
    out = ssim_patch.ssim(bx, by, reduction="none", data_range=data_range, padding=padding)
    assert torch.isnan(out[1]), out
    if data_range is None:  # the range of the finite pixels of the batch, by definition
        finite = lambda t: t[torch.isfinite(t)]  # noqa: E731
        big = max((finite(bx).max() - finite(bx).min()).item(), (finite(by).max() - finite(by).min()).item())
    else:
        big = data_range
    ref = ssim_reference(x.numpy(), y.numpy(), data_range=big, padding=padding).per_image
    keep = [0, 2, 3]
    np.testing.assert_allclose(out[keep].numpy(), ref[keep], atol=1e-9, rtol=0)


@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])
def test_nan_inf_pixels_through_the_patched_metric(bad):
    ssim_patch.apply()
    x, y = _pair((4, 1, 20, 20), seed=5)
    bx = _with_bad_pixel(x, bad)
    per_image = F.structural_similarity_index_measure(bx, y, data_range=1.0, reduction="none")
    assert torch.isnan(per_image[1]) and torch.isfinite(per_image[[0, 2, 3]]).all()
    metric = METRICS.StructuralSimilarityIndexMeasure(data_range=1.0, reduction="none").double()
    assert torch.equal(metric(bx, y).isnan(), per_image.isnan())


def test_range_tuple_clamps_inf_and_keeps_nan():
    """A (lo, hi) range clamps both images first: inf becomes hi (documented), NaN stays NaN."""
    x, y = _pair((3, 1, 20, 20), seed=6)
    out = ssim_patch.ssim(_with_bad_pixel(x, math.inf), y, reduction="none", data_range=(0.0, 1.0))
    clamped = ssim_patch.ssim(_with_bad_pixel(x, 1.0), y, reduction="none", data_range=(0.0, 1.0))
    assert torch.equal(out, clamped)
    out = ssim_patch.ssim(_with_bad_pixel(x, math.nan), y, reduction="none", data_range=(0.0, 1.0))
    assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all()


# --- fresh interpreters: reloads, partial imports, import-time signature changes -----------------

FAULTS_CHILD = textwrap.dedent(
    """
    import importlib, json, sys, traceback, types, warnings
    warnings.simplefilter("ignore")
    import torch, wrapt
    import ssim_patch
    MODULE = "torchmetrics.functional.image.ssim"

    def bindings():
        out = {}
        for name, module in list(sys.modules.items()):
            d = getattr(module, "__dict__", None) if isinstance(module, types.ModuleType) else None
            if isinstance(d, dict):
                for attr, v in list(d.items()):
                    if type(v) is types.FunctionType and v.__module__ == MODULE and v.__qualname__ == "_ssim_update":
                        out[name + "." + attr] = v
        return out

    def consistent(padding):
        # patched: one replacement everywhere, wrapping the module's current original;
        # unpatched: no replacement anywhere.
        found = bindings()
        F = sys.modules[MODULE]
        if "torchmetrics.image.ssim" in sys.modules:
            assert "torchmetrics.image.ssim._ssim_update" in found, sorted(found)
        report = ssim_patch.status()
        if padding is None:
            assert not any(hasattr(v, "__ssim_patch__") for v in found.values()), found
            assert not report.applied and not report.pending, report
            return
        assert len(set(map(id, found.values()))) == 1, {k: getattr(v, "__ssim_patch__", "-") for k, v in found.items()}
        bound = F._ssim_update
        assert bound.__ssim_patch__ == padding and not hasattr(bound.__wrapped__, "__ssim_patch__")
        assert report.applied and report.padding == padding and set(report.places) == set(found), report
        x = torch.rand(2, 1, 24, 24, dtype=torch.float64)
        y = 0.5 * x + 0.5 * torch.rand(2, 1, 24, 24, dtype=torch.float64)
        want = ssim_patch.ssim(x, y, reduction="none", padding=padding)
        assert torch.equal(F.structural_similarity_index_measure(x, y, reduction="none"), want)
        if "torchmetrics.image.ssim" in sys.modules:
            metric = sys.modules["torchmetrics.image.ssim"].StructuralSimilarityIndexMeasure(reduction="none")
            assert torch.equal(metric(x, y), want)

    def purge():
        ssim_patch.revert()
        for name in [n for n in sys.modules if n.startswith("torchmetrics")]:
            del sys.modules[name]

    def changed_signature_on_import(module):
        def _ssim_update(preds, target, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=None,
                         k1=0.01, k2=0.03, return_full_image=False, return_contrast_sensitivity=False, padding="same"):
            raise AssertionError
        _ssim_update.__module__, _ssim_update.__qualname__ = MODULE, "_ssim_update"
        module._ssim_update = _ssim_update

    def reload_before_first_apply():
        import torchmetrics
        importlib.reload(sys.modules[MODULE])  # torchmetrics.image.ssim keeps the older function
        ssim_patch.apply()
        consistent("same")
        ssim_patch.revert()
        consistent(None)

    def reload_while_patched():
        ssim_patch.apply()
        importlib.reload(sys.modules[MODULE])
        ssim_patch.apply()  # same options: must notice the module is no longer patched
        consistent("same")
        importlib.reload(sys.modules["torchmetrics.image.ssim"])  # re-imports the replacement
        consistent("same")
        importlib.reload(sys.modules[MODULE])
        ssim_patch.revert()
        consistent(None)
        ssim_patch.apply(padding="valid")
        consistent("valid")
        ssim_patch.revert()
        consistent(None)

    def pending_apply_after_torchmetrics_was_dropped():
        purge()
        ssim_patch.apply(padding="valid")
        assert ssim_patch.status().pending
        import torchmetrics
        consistent("valid")

    def import_time_signature_change(strict):
        def run():
            purge()
            wrapt.register_post_import_hook(changed_signature_on_import, MODULE)  # fires before ssim_patch's
            ssim_patch.apply(strict=strict)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    import torchmetrics
                    error = None
                except ssim_patch.PatchError as exc:
                    error = str(exc)
            if strict:
                assert error and "Cannot patch torchmetrics" in error and "padding)" in error, error
                import torchmetrics  # a second import works, unpatched
            else:
                assert error is None and any("Nothing was changed (strict=False)" in str(w.message) for w in caught)
            report = ssim_patch.status()
            assert not report.applied and not report.pending, report
            consistent(None)
        return run

    def partially_imported_torchmetrics():
        purge()

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name == "torchmetrics.image.ssim":
                    raise ImportError("simulated: torchmetrics.image.ssim failed to import")

        blocker = Blocker()
        ssim_patch.apply()
        sys.meta_path.insert(0, blocker)
        try:
            import torchmetrics
            raise AssertionError("the import should have failed")
        except ImportError:
            pass
        finally:
            sys.meta_path.remove(blocker)
        if MODULE in sys.modules:
            consistent("same")
        else:
            assert ssim_patch.status().pending
        import torchmetrics
        consistent("same")

    scenarios = {
        "reload before the first apply": reload_before_first_apply,
        "reload while patched": reload_while_patched,
        "pending apply after torchmetrics was dropped": pending_apply_after_torchmetrics_was_dropped,
        "import-time signature change, strict": import_time_signature_change(True),
        "import-time signature change, lax": import_time_signature_change(False),
        "partially imported torchmetrics": partially_imported_torchmetrics,
    }
    for name, run in scenarios.items():
        try:
            run()
            print(json.dumps({"scenario": name, "ok": True}), flush=True)
        except BaseException:
            print(json.dumps({"scenario": name, "ok": False, "error": traceback.format_exc()}), flush=True)
    """
)


def test_faults_in_fresh_interpreters():
    assert_scenarios_pass(FAULTS_CHILD, count=6)  # the child starts unpatched


# --- bad inputs: the table in docs/bad-inputs.md -------------------------------------------------

#: Cases that should raise a clear error (or, for numpy scalars, work as upstream torchmetrics does)
#: but do not today: engine issues, reported. Their tests fail until the engine is fixed.
SHOULD_RAISE = {
    "empty-batch": (ValueError,),  # before the fix: RuntimeError from amax() inside the engine
    "no-channels": (ValueError,),  # before the fix: RuntimeError from amax() inside the engine
    "empty-batch-range": (ValueError,),  # before the fix: UnboundLocalError from inside the engine
    "range-infinite": (ValueError,),  # before the fix: NaN
    "range-tensor-zero": (ValueError,),  # before the fix: a number (c1 = c2 = 0)
    "range-tensor-negative": (ValueError,),  # before the fix: silently the same as +1
    "range-tensor-nan": (ValueError,),  # before the fix: NaN
    "sigma-str": (TypeError,),  # before the fix: ValueError "`sigma` has 3 entries (['1', '.', '5'])"
}
#: Cases upstream torchmetrics accepts (numpy scalars; True, a number to Python): they work patched too.
SHOULD_WORK = ("kernel-numpy", "sigma-numpy", "range-numpy", "range-bool")


def test_bad_inputs_doc_is_current():
    doc = DOC.read_text()
    stale = [row for row in table_rows() if row not in doc]
    assert not stale, (
        "docs/bad-inputs.md is stale; run `python -m scripts.gen_docs bad-inputs`:\n" + "\n".join(stale)
    )


@pytest.mark.parametrize("case", list(SHOULD_RAISE))
def test_bad_input_raises_a_clear_error(case):
    call = dict((c, f) for c, _, f in BAD_INPUTS)[case]
    with pytest.raises(SHOULD_RAISE[case]):
        call(ssim_patch.ssim)


@pytest.mark.parametrize("case", SHOULD_WORK)
def test_numpy_scalars_work_as_upstream(case):
    call = dict((c, f) for c, _, f in BAD_INPUTS)[case]
    ssim_patch.apply()
    assert torch.isfinite(call(ssim_patch.ssim)).all()
    assert torch.isfinite(call(F.structural_similarity_index_measure)).all()


def test_no_bad_input_gives_an_internal_error():
    """Every bad input gets ValueError/TypeError (or a number); never an error from deep inside."""
    internal = {}
    for case, _, call in BAD_INPUTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                call(ssim_patch.ssim)
        except (ValueError, TypeError):
            pass
        except Exception as exc:
            internal[case] = f"{type(exc).__name__}: {exc}"
    assert not internal, internal
