"""UQI under the installed torchmetrics release: the patch makes the functional UQI and
``UniversalImageQualityIndex`` (update, compute, forward; every reduction; both paddings) equal the
float64 reference, revert() restores the release bit for bit, each UQI bug of the release
reproduces unpatched and is gone patched, and the release's own argument errors are kept.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import subprocess
import sys
import textwrap
import warnings
from typing import Any, Callable, Optional

import numpy as np
import pytest
import torch

import ssim_patch
from ssim_patch import _releases
from tests.helpers.flat_images import FLAT_CASES, flat_half, flat_windows, uqi_about
from tests.helpers.fresh_interpreter import unpatched_environ
from tests.helpers.parity import UPSTREAM_IDS, UPSTREAM_INVALID, assert_parity, both, side_by_side
from tests.helpers.reference import reduce, uqi_reference, zeroed_border
from tests.helpers.torch_support import reset_dynamo, skip_unless_compiles
from tests.helpers.upstream_bugs import assert_reproduces_unpatched_and_the_patch_fixes_it

TOL = 1e-10  # float64 all the way (the Metric's states too, with set_dtype)
U = importlib.import_module("torchmetrics.functional.image.uqi")
METRICS = importlib.import_module("torchmetrics.image.uqi")
UQI = U.universal_image_quality_index
EPS64 = float(np.finfo(np.float64).eps)

WINDOWS = {
    "11x11": dict(kernel_size=(11, 11), sigma=(1.5, 1.5)),
    "11x3": dict(kernel_size=(11, 3), sigma=(1.5, 0.5)),
    "5x7": dict(kernel_size=(5, 7), sigma=(1.0, 2.0)),
    "1x1": dict(kernel_size=(1, 1), sigma=(1.5, 1.5)),
}
REDUCTIONS = ["elementwise_mean", "sum", "none", None]


def _pair(shape=(2, 3, 40, 36), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    return x, 0.6 * x + 0.4 * torch.rand(shape, generator=g, dtype=torch.float64)


def _map(x, y, padding="same", **window):
    window = {**WINDOWS["11x11"], **window}
    return uqi_reference(x.numpy(), y.numpy(), eps=EPS64, padding=padding, **window)


def _metric(**kw: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "will save all targets and predictions in the buffer"
        metric = METRICS.UniversalImageQualityIndex(**kw)
    return metric.set_dtype(torch.float64)


def _keeps_a_count(metric: Any) -> bool:
    """From 1.2.1 the class sums the map and counts it (else it keeps preds and target)."""
    return "numel" in metric._defaults


# --- the patched functional and Metric class equal the reference ----------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS, ids=str)
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("window", list(WINDOWS))
def test_functional(window, padding, reduction):
    x, y = _pair()
    ssim_patch.apply(padding=padding)
    got = UQI(x, y, reduction=reduction, **WINDOWS[window])
    expected = reduce(_map(x, y, padding, **WINDOWS[window]), reduction)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.numpy(), expected, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_hook_point_directly(padding):
    """``_uqi_compute`` itself, positionally; before 1.0 its two extra arguments are ignored, as
    the release ignores them."""
    x, y = _pair(seed=1)
    kw = WINDOWS["11x3"]
    ssim_patch.apply(padding=padding)
    expected = _map(x, y, padding, **kw)
    got = U._uqi_compute(x, y, kw["kernel_size"], kw["sigma"], "none")
    np.testing.assert_allclose(got.numpy(), expected, rtol=TOL, atol=TOL)
    params = tuple(inspect.signature(U._uqi_compute).parameters)
    assert params == _releases.uqi_hook_points(_release())[0].parameters
    if "data_range" in params:
        again = U._uqi_compute(x, y, kw["kernel_size"], kw["sigma"], "none", 0.5, True)
        assert torch.equal(again, got)


@pytest.mark.parametrize("reduction", REDUCTIONS, ids=str)
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("window", ["11x11", "11x3"])
def test_metric_update_compute_forward(window, padding, reduction):
    """forward on a first batch (that batch's value), update with a second, compute over both."""
    x, y = _pair((3, 2, 30, 33), seed=2)
    kw = WINDOWS[window]
    ssim_patch.apply(padding=padding)
    metric = _metric(reduction=reduction, **kw)
    batch = metric(x[:2], y[:2])
    metric.update(x[2:], y[2:])
    total = metric.compute()
    for got, a, b in ((batch, x[:2], y[:2]), (total, x, y)):
        expected = reduce(_map(a, b, padding, **kw), reduction)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got.numpy(), expected, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("reduction", ["elementwise_mean", "sum"])
def test_metric_over_images_of_different_sizes(reduction, padding):
    """Where the class sums and counts (1.2.1 on), the count is that of the maps summed: the mean
    over batches of different sizes is the mean over all their map elements."""
    x1, y1 = _pair((2, 1, 40, 36), seed=3)
    x2, y2 = _pair((1, 1, 23, 30), seed=4)
    kw = WINDOWS["11x3"]
    ssim_patch.apply(padding=padding)
    metric = _metric(reduction=reduction, **kw)
    metric.update(x1, y1)
    metric.update(x2, y2)
    if not _keeps_a_count(metric):  # the release's own bookkeeping: it concatenates preds and target
        with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
            metric.compute()
        return
    maps = [_map(x1, y1, padding, **kw), _map(x2, y2, padding, **kw)]
    total = sum(m.sum() for m in maps)
    expected = total if reduction == "sum" else total / sum(m.size for m in maps)
    np.testing.assert_allclose(metric.compute().item(), expected, rtol=TOL, atol=TOL)


def _collection(**kw: Any) -> Any:
    from torchmetrics import MetricCollection

    return MetricCollection({"uqi": _metric(**kw)})


def _subclass(**kw: Any) -> Any:
    """A subclass that inherits ``update``."""
    sub = type("Sub", (METRICS.UniversalImageQualityIndex,), {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sub(**kw).set_dtype(torch.float64)


def _overriding(**kw: Any) -> Any:
    """A subclass whose ``update`` calls ``super().update``."""

    class Overriding(METRICS.UniversalImageQualityIndex):
        def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
            super().update(preds, target)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Overriding(**kw).set_dtype(torch.float64)


def _update_eagerly(metric: Any, batches: list) -> None:
    for a, b in batches:
        metric.update(a, b)


def _update_compiled(metric: Any, batches: list) -> None:
    skip_unless_compiles()
    pytest.importorskip("torch._dynamo")
    reset_dynamo()
    compiled = torch.compile(metric, backend="eager")
    for a, b in batches:
        compiled(a, b)
    reset_dynamo()


def _update_from_two_threads(metric: Any, batches: list) -> None:
    import threading

    errors: list = []

    def run(part: list) -> None:
        try:
            _update_eagerly(metric, part)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(batches[i::2],)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


BEFORE_APPLY = {
    "eager": (_metric, _update_eagerly),
    "compiled": (_metric, _update_compiled),
    "collection": (_collection, _update_eagerly),
    "subclass": (_subclass, _update_eagerly),
    "overriding-subclass": (_overriding, _update_eagerly),
    "two-threads": (_metric, _update_from_two_threads),
}


#: With reduction="none" the class keeps preds and target in two lists, which two threads updating
#: one instance at once can interleave (the release's own bookkeeping): not a case for threads.
BEFORE_APPLY_CASES = [
    (how, reduction)
    for how in BEFORE_APPLY
    for reduction in ("elementwise_mean", "sum", "none")
    if not (how == "two-threads" and reduction == "none")
]


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize(("how", "reduction"), BEFORE_APPLY_CASES, ids=lambda v: str(v))
def test_metric_created_before_apply(how, reduction, padding):
    """``Metric.__init__`` wraps the bound ``update``, so an instance created before apply() holds
    the release's own update function. While patched that function runs a trampoline to the
    corrected update: the instance gets the very value of one created after apply() (the whole map
    with padding="same"), with no warning, eagerly, compiled, in a MetricCollection, as a subclass
    and from two threads."""
    make, run = BEFORE_APPLY[how]
    x, y = _pair((4, 2, 30, 33), seed=5)
    kw = WINDOWS["11x3"]
    metric = make(reduction=reduction, **kw)
    ssim_patch.apply(padding=padding)
    batches = [(x[i : i + 1], y[i : i + 1]) for i in range(4)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(metric, batches)
    assert not [w for w in caught if "ssim_patch" in str(w.message)], [str(w.message) for w in caught]
    got = metric.compute()
    got = got["uqi"] if isinstance(got, dict) else got
    expected = reduce(_map(x, y, padding, **kw), reduction)
    np.testing.assert_allclose(got.numpy(), expected, rtol=TOL, atol=TOL)
    fresh = _metric(reduction=reduction, **kw)  # created after apply(): the same value
    _update_eagerly(fresh, batches)
    np.testing.assert_allclose(fresh.compute().numpy(), expected, rtol=TOL, atol=TOL)


def test_metric_created_before_apply_is_the_releases_again_after_revert():
    """revert() gives the release's update back its own code: the instance created before apply()
    updates as the release does again."""
    x, y = _pair((2, 1, 32, 30), seed=6)
    kw = WINDOWS["11x3"]
    before = _metric(**kw)
    ssim_patch.apply()
    before.update(x, y)
    ssim_patch.revert()
    before.reset()
    before.update(x, y)
    unpatched = _metric(**kw)
    unpatched.update(x, y)
    assert torch.equal(before.compute(), unpatched.compute())


@pytest.mark.parametrize("reduction", ["elementwise_mean", "none"])
def test_metric_created_while_patched_follows_revert(reduction):
    """An instance created while patched updates as the release does once revert() has run."""
    x, y = _pair((2, 1, 32, 30), seed=6)
    kw = WINDOWS["11x3"]
    ssim_patch.apply()
    patched = _metric(reduction=reduction, **kw)
    ssim_patch.revert()
    patched.update(x, y)
    unpatched = _metric(reduction=reduction, **kw)
    unpatched.update(x, y)
    assert torch.equal(patched.compute(), unpatched.compute())


def test_revert_restores_the_release_bit_for_bit():
    original = U._uqi_compute
    update = METRICS.UniversalImageQualityIndex.__dict__["update"]
    code = update.__code__
    x, y = _pair(seed=7)
    kw = WINDOWS["11x3"]
    metric = _metric(**kw)
    metric.update(x, y)
    before = (UQI(x, y, reduction="none", **kw), metric.compute())
    report = ssim_patch.apply()
    assert U._uqi_compute is not original and U._uqi_compute.__wrapped__ is original
    assert METRICS._uqi_compute is U._uqi_compute
    assert f"{_releases.UQI_MODULE}._uqi_compute" in report.uqi_places
    assert f"{_releases.UQI_METRIC_MODULE}._uqi_compute" in report.uqi_places
    swaps_update = _releases.UQI_METRIC_UPDATE in _releases.uqi_hook_points(_release())
    assert (METRICS.UniversalImageQualityIndex.__dict__["update"] is not update) is swaps_update
    assert (update.__code__ is not code) is swaps_update
    assert (_releases.UQI_METRIC_UPDATE.qualified in report.uqi_places) is swaps_update
    ssim_patch.revert()
    assert U._uqi_compute is original and METRICS._uqi_compute is original
    assert METRICS.UniversalImageQualityIndex.__dict__["update"] is update
    assert update.__code__ is code  # while patched it ran a trampoline to the corrected update
    metric = _metric(**kw)
    metric.update(x, y)
    after = (UQI(x, y, reduction="none", **kw), metric.compute())
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_the_table_knows_this_releases_uqi(release):
    report = ssim_patch.status()
    hooks = [f"{_releases.UQI_MODULE}._uqi_compute"]
    if "UniversalImageQualityIndex.update" in release["uqi_hooks"]:
        hooks.append(_releases.UQI_METRIC_UPDATE.qualified)
    assert list(report.hooks[1:]) == hooks
    assert [h.rpartition(".")[2] for h in hooks] == [h.rpartition(".")[2] for h in release["uqi_hooks"]]


def _release():
    from ssim_patch import _patcher

    return _patcher._release()


FRESH = textwrap.dedent(
    """
    import importlib, json, sys, warnings
    warnings.simplefilter("ignore")
    import torch, ssim_patch

    def purge():
        ssim_patch.revert()
        for name in [n for n in sys.modules if n.startswith("torchmetrics")]:
            del sys.modules[name]

    def values():
        report = ssim_patch.status()
        assert report.applied and not report.pending, report
        f = sys.modules["torchmetrics.functional.image.uqi"].universal_image_quality_index
        M = sys.modules["torchmetrics.image.uqi"].UniversalImageQualityIndex
        s = sys.modules["torchmetrics.functional.image.ssim"].structural_similarity_index_measure
        x = torch.rand(2, 3, 40, 36, generator=torch.Generator().manual_seed(0))
        y = x.clone(); y[..., 0, :] = 0; y[..., -1, :] = 0; y[..., :, 0] = 0; y[..., :, -1] = 0
        m = M(kernel_size=(11, 3), sigma=(1.5, 0.5)); m.update(x, y)
        return [f(x, y).item(), m.compute().item(), s(x, y).item()]

    for order in sys.argv[1:]:
        purge()  # each order starts with no torchmetrics module loaded
        if order == "apply-then-import":
            ssim_patch.apply()
            import torchmetrics
        elif order == "import-then-apply":
            import torchmetrics
            ssim_patch.apply()
        else:  # torchmetrics imports everything: take one metric's modules out, apply, import them
            import torchmetrics
            dropped = "uqi" if order == "ssim-then-uqi" else "ssim"
            for name in ("torchmetrics.functional.image." + dropped, "torchmetrics.image." + dropped):
                del sys.modules[name]
            report = ssim_patch.apply()
            assert report.applied and report.pending, report
            importlib.import_module("torchmetrics.functional.image." + dropped)
            importlib.import_module("torchmetrics.image." + dropped)
        print(json.dumps({"order": order, "values": values()}), flush=True)
    """
)
ORDERS = ["apply-then-import", "import-then-apply", "ssim-then-uqi", "uqi-then-ssim"]


def test_fresh_process():
    """In one fresh interpreter, torchmetrics imported after apply() (post-import hooks) or before
    it; and each metric's modules imported on their own after apply(), one before the other."""
    # The child starts unpatched whatever this process exported: it applies the patch itself.
    env = unpatched_environ()
    out = subprocess.run([sys.executable, "-c", FRESH, *ORDERS], capture_output=True, text=True, env=env)
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["order"] for r in results] == ORDERS, out.stderr[-3000:]
    x = torch.rand(2, 3, 40, 36, generator=torch.Generator().manual_seed(0))
    y = zeroed_border(x)
    expected = [
        float(_map(x.double(), y.double()).mean()),
        float(_map(x.double(), y.double(), **WINDOWS["11x3"]).mean()),
        float(ssim_patch.ssim(x.double(), y.double())),
    ]
    for r in results:  # the child computes in float32
        np.testing.assert_allclose(r["values"], expected, atol=1e-5, rtol=0, err_msg=r["order"])


# --- the release's own UQI bugs: each reproduces unpatched, and the patch fixes it ---------------


def _call(fn: Callable[[], Any]) -> tuple[Any, Optional[BaseException]]:
    try:
        return fn(), None
    except Exception as exc:
        return None, exc


def _uqi_border_crop() -> bool:
    x = torch.rand(2, 3, 40, 36, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = zeroed_border(x)
    value, _ = _call(lambda: UQI(x, y).item())
    return value is not None and abs(value - _map(x, y).mean()) > 1e-3


def _uqi_pad_swap() -> bool:
    """A non-square window: the map is neither the image's size nor the valid windows'."""
    x, y = _pair((1, 1, 40, 36), seed=8)
    full, _ = _call(lambda: U._uqi_compute(x, y, (11, 3), (1.5, 0.5), "none"))
    return full is not None and tuple(full.shape[2:]) not in ((40, 36), (30, 34))


def _uqi_one_tap_nan() -> bool:
    x, y = _pair((1, 2, 20, 20), seed=9)
    values = [
        _call(lambda k=k: UQI(x, y, kernel_size=k, sigma=(1.5, 1.5)).item())[0] for k in ((1, 1), (1, 5))
    ]
    return any(v is not None and math.isnan(v) for v in values)


def _uqi_flat_nan() -> bool:
    zeros = torch.zeros(1, 1, 16, 16)
    value, _ = _call(lambda: UQI(zeros, zeros.clone()).item())
    return value is not None and math.isnan(value)


def _uqi_flat_rounding() -> bool:
    """float32 images whose top half is flat at 100.3 in both: every window there is 0 / eps (its
    variances and covariance are 0), so the map is 0 there up to rounding; upstream's is not."""
    p, t, flat = flat_half(100.3, torch.float32)
    rows = int(flat.sum(1).bool().sum()) - 10  # map rows whose window is flat ("same" or cropped map)
    full, _ = _call(lambda: UQI(p, t, reduction="none"))
    if full is None:
        return True
    top = full[..., :rows, :]
    return not bool(torch.isfinite(top).all()) or float(top.abs().max()) > 1e-3


def _uqi_host_sync() -> bool:
    x, y = _pair((1, 1, 24, 24), seed=10)
    calls = []
    original_bool = torch.Tensor.__bool__

    def spy(self):
        calls.append(1)
        return original_bool(self)

    torch.Tensor.__bool__ = spy
    try:
        _call(lambda: UQI(x, y))
    finally:
        torch.Tensor.__bool__ = original_bool
    return bool(calls)


def _uqi_metric_count() -> bool:
    """The class's mean is not the functional's for a non-square window."""
    x, y = _pair((2, 1, 32, 30), seed=11)
    kw = WINDOWS["11x3"]
    metric = _metric(**kw)
    metric.update(x, y)
    functional, _ = _call(lambda: UQI(x, y, **kw).item())
    return functional is not None and abs(metric.compute().item() - functional) > 1e-6


UQI_SYMPTOMS = {
    "uqi-border-crop": _uqi_border_crop,
    "uqi-pad-swap": _uqi_pad_swap,
    "uqi-one-tap-nan": _uqi_one_tap_nan,
    "uqi-flat-nan": _uqi_flat_nan,
    "uqi-flat-rounding": _uqi_flat_rounding,
    "uqi-host-sync": _uqi_host_sync,
    "uqi-metric-count": _uqi_metric_count,
}


@pytest.mark.parametrize("bug", list(UQI_SYMPTOMS))
def test_upstream_uqi_bug_reproduces_unpatched_and_the_patch_fixes_it(release, bug):
    assert_reproduces_unpatched_and_the_patch_fixes_it(release, bug, UQI_SYMPTOMS[bug])


def test_uqi_symptom_table_covers_every_uqi_bug():
    assert set(UQI_SYMPTOMS) == {bug for bug in _releases.BUGS if bug.startswith("uqi-")}


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("case", list(FLAT_CASES))
def test_flat_regions_in_float32(case, padding):
    """Images with flat regions (torchmetrics issue 2281) in float32 (one case in float16): the
    patched functional's map is within 1e-3 of the float64 reference (the input dtype's eps, the
    variances taken about the flat level) in every flat window, its mean and the Metric class's
    value within 1e-4 (for float16, plus half an ulp; the class's sum of the float16 map, one ulp
    of the mean more)."""
    make, level, dtype = FLAT_CASES[case]
    p, t, flat = make(level, dtype)
    eps = float(torch.finfo(dtype).eps)
    ssim_patch.apply(padding=padding)
    expected = uqi_about(p.double().numpy(), t.double().numpy(), level, eps)
    where = flat_windows(flat).numpy()
    if padding == "valid":  # the windows wholly inside the image
        expected, where = expected[..., 5:-5, 5:-5], where[5:-5, 5:-5]
    got = UQI(p, t, reduction="none")
    np.testing.assert_allclose(got.double().numpy()[..., where], expected[..., where], rtol=0, atol=1e-3)
    half_ulp = eps / 2 if dtype == torch.float16 else 0.0
    assert abs(UQI(p, t).double().item() - expected.mean()) < 1e-4 + half_ulp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric = METRICS.UniversalImageQualityIndex()
    metric.update(p, t)
    assert abs(metric.compute().double().item() - expected.mean()) < 1e-4 + 3 * half_ulp


# --- the release's own argument errors ------------------------------------------------------------

# torchmetrics' own test_uqi invalid inputs are SSIM's list (shapes, kernel_size, sigma); then more.
MORE_INVALID = [
    ((1, 1, 16, 16), (1, 1, 16, 16), [11, 11, 11], [1.5, 1.5, 1.5]),
    ((1, 1, 16, 16), (1, 1, 16, 16), [11.0, 11], [1.5, 1.5]),
    ((1, 1, 16, 16), (1, 1, 16, 16), [11, 11], [math.inf, 1.5]),
    ((1, 1, 16, 16), (1, 1, 16, 16), [11, 11], [math.nan, 1.5]),
    ((1, 1, 5, 16), (1, 1, 5, 16), [11, 11], [1.5, 1.5]),  # too small for reflect padding by 5
    ((1, 1, 16, 16), (1, 1, 16, 17), [11, 11], [1.5, 1.5]),
    ((1, 1, 8, 16, 16), (1, 1, 8, 16, 16), [11, 11], [1.5, 1.5]),
]
INVALID = UPSTREAM_INVALID + MORE_INVALID
IDS = [
    *UPSTREAM_IDS,
    "kernel-3",
    "kernel-float",
    "sigma-inf",
    "sigma-nan",
    "too-small",
    "shapes-differ",
    "5d",
]


def _images(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("preds", "target", "kernel", "sigma"), INVALID, ids=IDS)
def test_invalid_inputs_functional(preds, target, kernel, sigma):
    p, t = _images(preds, 0), _images(target, 1)
    assert_parity(*both(lambda: UQI(p, t, kernel_size=kernel, sigma=sigma)))


@pytest.mark.parametrize(("preds", "target", "kernel", "sigma"), UPSTREAM_INVALID, ids=UPSTREAM_IDS)
def test_upstream_invalid_inputs_are_the_releases_errors(preds, target, kernel, sigma):
    p, t = _images(preds, 0), _images(target, 1)
    unpatched, patched = both(lambda: UQI(p, t, kernel_size=kernel, sigma=sigma))
    assert unpatched[0] is ValueError, "torchmetrics' own test expects a ValueError" + side_by_side(
        unpatched, patched
    )
    assert patched == unpatched, side_by_side(unpatched, patched)


@pytest.mark.parametrize(("preds", "target", "kernel", "sigma"), INVALID, ids=IDS)
def test_invalid_inputs_metric_class(preds, target, kernel, sigma):
    p, t = _images(preds, 0), _images(target, 1)

    def call() -> Any:
        metric = _metric(kernel_size=kernel, sigma=sigma)
        metric.update(p, t)
        return metric.compute()

    assert_parity(*both(call))


@pytest.mark.parametrize(
    "kw",
    [
        dict(reduction="mean"),
        dict(reduction="sum", kernel_size=(10, 11)),
        dict(shape=(1, 1, 12, 16, 16), kernel_size=(5, 11, 11), sigma=(1.5, 1.5, 1.5)),
        dict(shape=(1, 1, 12, 16, 16)),
    ],
    ids=["reduction-mean", "reduction-sum-kernel-even", "3d-window", "5d-images"],
)
def test_hook_point_errors(kw):
    """What only the hook point checks (the functional checks the images' shape before it)."""
    kw = dict(kw)
    shape = kw.pop("shape", (1, 1, 16, 16))
    p, t = _images(shape, 2), _images(shape, 3)
    window = {"kernel_size": (11, 11), "sigma": (1.5, 1.5), "reduction": "elementwise_mean", **kw}
    call = lambda: U._uqi_compute(p, t, window["kernel_size"], window["sigma"], window["reduction"])  # noqa: E731
    assert_parity(*both(call))


def test_too_small_image_is_the_patchs_error():
    x = _images((1, 1, 5, 16), 4)
    unpatched, patched = both(lambda: UQI(x, x * 0.5))
    assert unpatched[0] is RuntimeError or unpatched == (None, "not finite"), unpatched
    assert patched[0] is ValueError and "Axis 2 (height) has size 5" in patched[1], patched
