"""Tiny calls (issue 26): a plain eager call takes the ``autograd.Function`` (no custom-op
dispatch) and the custom op carries every call that needs it; small CPU calls take the cpu
backend's dense-matrix path (``backends._dense``), a third of the ops, whose matrices equal the
window with its reflect padding and are kept by everything that decides them.

Values and gradients of both cpu paths against the float64 reference are in test_backends.py
(each path forced on every case).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import ssim_patch
from benchmarks.dispatch_count import DispatchCounter
from ssim_patch import _filters, _formula, _torch_features
from ssim_patch._torch_features import META_REFLECT_PAD2D_OUT
from ssim_patch.backends import _algebra, _custom_op, _dense, _dtypes, _route
from ssim_patch.backends._protocol import Plan

pytestmark = pytest.mark.usefixtures("patch_applied")


def _pair(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    return x.to(dtype), (0.7 * x + 0.3 * torch.rand(shape, generator=g, dtype=torch.float64)).to(dtype)


# --- the route of an eager call -------------------------------------------------------------------


class _Passing(TorchDispatchMode):
    """A dispatch mode that changes nothing (as a user's counting or debugging mode)."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return func(*args, **(kwargs or {}))


class _Sub(torch.Tensor):
    """A tensor subclass that changes nothing."""


@pytest.mark.skipif(not _route.CUSTOM_OP, reason="this torch has no custom op: every call takes the Function")
def test_a_plain_eager_call_does_not_dispatch_the_custom_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forward and forward+backward, CPU and meta: the autograd.Function carries the backend."""
    calls: list[str] = []
    for name in ("similarity", "similarity_backward"):
        original = getattr(_custom_op, name)

        def spy(*args: Any, _original: Callable[..., Any] = original, _name: str = name) -> Any:
            calls.append(_name)
            return _original(*args)

        monkeypatch.setattr(_custom_op, name, spy)
    for device in ("cpu", "meta"):
        x, y = (t.to(device) for t in _pair((1, 1, 16, 16)))
        with torch.no_grad():
            ssim_patch.ssim(x, y, data_range=1.0)
        leaf = x.clone().requires_grad_()
        ssim_patch.ssim(leaf, y, data_range=1.0).backward()
        assert leaf.grad is not None and leaf.grad.device.type == device
    assert calls == []


@pytest.mark.skipif(not _route.CUSTOM_OP, reason="this torch has no custom op")
def test_the_custom_op_carries_the_calls_that_need_it() -> None:
    """Under a dispatch mode (fake tensors, a user's mode) and for a tensor subclass; plain
    tensors on any device go without it."""
    x = torch.rand(1, 1, 16, 16)
    assert not _route.through_custom_op(x)
    assert not _route.through_custom_op(torch.nn.Parameter(x))
    assert not _route.through_custom_op(x.to("meta"))
    assert _route.through_custom_op(x.as_subclass(_Sub))
    with _Passing():
        assert _route.through_custom_op(x)
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(x)
        assert _route.through_custom_op(fake)
    assert _route.through_custom_op(fake)  # a fake tensor outside its mode: a subclass


@pytest.mark.skipif(not _route.CUSTOM_OP, reason="this torch has no custom op")
def test_a_call_under_a_dispatch_mode_goes_through_the_op() -> None:
    seen: list[str] = []

    class Recording(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    x, y = _pair((1, 1, 16, 16))
    with Recording():
        ssim_patch.ssim(x, y, data_range=1.0)
    assert "ssim_patch.similarity.default" in seen


# --- the dense path: fewer ops ----------------------------------------------------------------------


def _ops(fn: Callable[[], object]) -> int:
    fn()
    with DispatchCounter() as counter:
        fn()
    return counter.counts.ops


def test_a_16x16_call_dispatches_a_third_of_the_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    """1x1x16x16 on the cpu backend: forward and forward+backward dispatch at most 40 and 95
    aten ops (the pieces: 107 and 238; torchmetrics 1.9.0 unpatched: 51 and 108)."""
    monkeypatch.setenv("SSIM_PATCH_BACKEND", "cpu")
    x, y = _pair((1, 1, 16, 16))
    assert _dense.takes(x, Plan(_plan(0)))

    def forward() -> object:
        with torch.no_grad():
            return ssim_patch.ssim(x, y, data_range=1.0)

    def loss() -> object:
        leaf = x.clone().requires_grad_()
        (1 - ssim_patch.ssim(leaf, y, data_range=1.0)).backward()
        return leaf.grad

    assert _ops(forward) <= 40
    assert _ops(loss) <= 95


def test_which_calls_take_the_dense_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decided by the size of the call's largest product (its shape): small planes and batches;
    where the products are BLAS products (float64, or float32 at torch's "highest" matmul
    precision; not at "medium", where they would multiply in bfloat16) 2-D calls up to 16 times
    larger and 3-D calls up to 1024 times."""
    plan = Plan(_plan(0))
    assert _dense.takes(torch.empty(1, 1, 16, 16), plan)
    assert _dense.takes(torch.empty(4, 3, 16, 16), plan)
    assert _dense.takes(torch.empty(1, 1, 8, 8, 8), plan)
    assert _dense.takes(torch.empty(1, 3, 32, 32), plan)
    assert _dense.takes(torch.empty(1, 1, 64, 64), plan)
    assert _dense.takes(torch.empty(1, 3, 64, 64, dtype=torch.float64), plan)
    assert _dense.takes(torch.empty(1, 1, 96, 96), plan)
    assert not _dense.takes(torch.empty(4, 3, 64, 64), plan)
    assert not _dense.takes(torch.empty(1, 1, 128, 128), plan)
    assert _dense.takes(torch.empty(1, 1, 32, 32, 32), plan)
    assert _dense.takes(torch.empty(4, 1, 64, 64, 64), plan)  # 2^28
    assert not _dense.takes(torch.empty(4, 1, 64, 64, 65), plan)
    assert not _dense.takes(torch.empty(1, 1, 128, 128, 128), plan)
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "medium")
    assert _dense.takes(torch.empty(4, 3, 16, 16), plan)
    assert not _dense.takes(torch.empty(1, 3, 32, 32), plan)
    assert not _dense.takes(torch.empty(1, 1, 32, 32, 32), plan)
    assert _dense.takes(torch.empty(1, 3, 32, 32, dtype=torch.float64), plan)


@pytest.mark.parametrize("shape", [(2, 3, 20, 24), (2, 1, 9, 20, 14)], ids=["2d", "3d"])
def test_dense_products_follow_the_matmul_precision(
    shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Matrix products (one an axis) at "highest" and for float64, broadcast sums otherwise: the
    same numbers to float32's rounding, and the float64 product's; W^T of a non-contiguous
    gradient too."""
    x, _ = _pair(shape)
    nd = len(shape) - 2
    blur = _plan(0, nd=nd)
    spatial = shape[2:]
    g = x.transpose(-1, -2).contiguous().transpose(-1, -2)  # the same values, other strides
    seen: list[str] = []
    real = torch.matmul
    monkeypatch.setattr(torch, "matmul", lambda *a: seen.append("matmul") or real(*a))
    product = _dense.blur(x, blur, spatial)
    back = _dense.blur_adjoint(g, blur, spatial)
    assert seen == ["matmul"] * 2 * nd
    seen.clear()
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "medium")
    summed = _dense.blur(x, blur, spatial)
    summed_back = _dense.blur_adjoint(g, blur, spatial)
    assert seen == []
    torch.testing.assert_close(product, summed, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(back, summed_back, rtol=1e-6, atol=1e-6)
    exact = _dense.blur(x.double(), blur, spatial)
    assert seen == ["matmul"] * nd
    torch.testing.assert_close(product.double(), exact, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(exact, _filters.blur(x.double(), blur), rtol=1e-12, atol=1e-12)


# --- the dense path: its matrices ----------------------------------------------------------------


def _plan(index: int, padding: _filters.Mode = "same", nd: int = 2) -> _filters.Blur:
    taps = (_filters.gaussian_taps(1.5, 11), _filters.gaussian_taps(1.0, 7), _filters.uniform_taps(3))
    return _filters.Blur((taps[index],) * nd, padding)  # type: ignore[return-value]


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("shape", [(2, 3, 11, 16), (1, 2, 8, 9, 13)], ids=["2d", "3d"])
def test_the_matrices_are_the_window_and_its_padding(shape: tuple[int, ...], padding: str) -> None:
    """W and W^T against the plain shifted multiply-adds of ``_filters`` (float64)."""
    nd = len(shape) - 2
    taps = (_filters.gaussian_taps(1.0, 7), _filters.uniform_taps(5), _filters.gaussian_taps(0.6, 5))
    blur = _filters.Blur(taps[:nd], padding)  # type: ignore[arg-type]
    t = torch.rand(shape, dtype=torch.float64)
    spatial = shape[2:]
    want = _filters.blur(t, blur)
    got = _dense.blur(t, blur, spatial)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-15)
    g = torch.rand(want.shape, dtype=torch.float64)
    torch.testing.assert_close(
        _dense.blur_adjoint(g, blur, spatial), _filters.blur_adjoint(g, blur), rtol=1e-14, atol=1e-15
    )


def _blurred(
    shape: tuple[int, ...], blur: _filters.Blur, dtype: Any = torch.float64, device: str = "cpu"
) -> Any:
    t = torch.arange(float(torch.Size(shape).numel()), dtype=dtype).view(shape).remainder(7).to(device)
    try:
        return _dense.blur(t, blur, shape[2:])
    except RuntimeError as exc:
        return exc


def _expected(
    shape: tuple[int, ...], blur: _filters.Blur, dtype: Any = torch.float64, device: str = "cpu"
) -> Any:
    t = torch.arange(float(torch.Size(shape).numel()), dtype=dtype).view(shape).remainder(7).to(device)
    return _filters.blur(t, blur)


#: (what differs, the first call's arguments, the second call's); each pair differs in one field of
#: ``_dense._matrix``'s key: dropping it from the key makes the second call wrong.
PAIRS: list[tuple[str, tuple[Any, ...], tuple[Any, ...]]] = [
    ("taps", ((1, 1, 16, 16), _plan(0)), ((1, 1, 16, 16), _plan(1))),
    ("padding", ((1, 1, 16, 16), _plan(1, "same")), ((1, 1, 16, 16), _plan(1, "valid"))),
    ("n", ((1, 1, 16, 16), _plan(1)), ((1, 1, 17, 17), _plan(1))),
    ("axis (trailing ones)", ((1, 1, 16, 16), _plan(1)), ((1, 1, 16, 5, 6), _plan(1, nd=3))),
    ("dtype", ((1, 1, 16, 16), _plan(1)), ((1, 1, 16, 16), _plan(1), torch.float32)),
    ("device", ((1, 1, 16, 16), _plan(1)), ((1, 1, 16, 16), _plan(1), torch.float64, "meta")),
]


@pytest.mark.parametrize("blas", [True, False], ids=["products", "broadcast sums"])
@pytest.mark.parametrize("first, second", [p[1:] for p in PAIRS], ids=[p[0] for p in PAIRS])
def test_a_matrix_is_kept_by_all_that_decides_it(
    first: tuple[Any, ...], second: tuple[Any, ...], blas: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_dense, "products", lambda dtype: blas)
    _dense._MATRICES.clear()
    _blurred(*first)
    got, want = _blurred(*second), _expected(*second)
    assert isinstance(got, torch.Tensor), got
    assert (got.shape, got.dtype, got.device) == (want.shape, want.dtype, want.device)
    if want.device.type != "meta":
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_repeated_call_reuses_its_matrices() -> None:
    _dense._MATRICES.clear()
    _blurred((1, 1, 16, 20), _plan(0))
    kept = {k: _dense._MATRICES.find(k) for k in _dense._MATRICES}
    assert len(kept) == 2  # one per axis (a square plane's share one)
    _blurred((1, 1, 16, 20), _plan(0))
    assert _dense._MATRICES.keys() == list(kept)
    assert all(_dense._MATRICES.find(k) is v for k, v in kept.items())


def test_a_matrix_made_in_inference_mode_serves_a_later_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSIM_PATCH_BACKEND", "cpu")
    _dense._MATRICES.clear()
    x, y = _pair((1, 1, 16, 16), torch.float64)
    with torch.inference_mode():
        first = ssim_patch.ssim(x, y, data_range=1.0)
    leaf = x.clone().requires_grad_()
    again = ssim_patch.ssim(leaf, y, data_range=1.0)
    again.backward()
    assert torch.equal(first, again.detach()) and leaf.grad is not None


# --- kept 0-d constants (_dtypes.kept) -------------------------------------------------------------

#: (what differs, the first call's (value, dtype, device), the second call's); each pair differs in
#: one field of ``_dtypes.kept``'s key: dropping it from the key makes the second call wrong.
SCALAR_PAIRS: list[tuple[str, tuple[Any, ...], tuple[Any, ...]]] = [
    ("value", (2e-4, torch.float32, "cpu"), (1.8e-3, torch.float32, "cpu")),
    ("value: the sign of 0", (0.0, torch.float64, "cpu"), (-0.0, torch.float64, "cpu")),
    ("dtype", (2e-4, torch.float64, "cpu"), (2e-4, torch.float32, "cpu")),
    ("device", (2e-4, torch.float32, "cpu"), (2e-4, torch.float32, "meta")),
]


@pytest.mark.parametrize("first, second", [p[1:] for p in SCALAR_PAIRS], ids=[p[0] for p in SCALAR_PAIRS])
def test_a_kept_scalar_is_kept_by_all_that_decides_it(
    first: tuple[Any, ...], second: tuple[Any, ...]
) -> None:
    _dtypes._KEPT.clear()
    value, dtype, device = first
    _dtypes.kept(value, torch.empty(0, dtype=dtype, device=device))
    value, dtype, device = second
    got = _dtypes.kept(value, torch.empty(0, dtype=dtype, device=device))
    assert (got.shape, got.dtype, got.device.type) == ((), dtype, device)
    if device != "meta":
        want = torch.full((), value, dtype=dtype)
        assert torch.equal(got, want) and torch.equal(got.signbit(), want.signbit())


def _plan_eps(eps: Any) -> Plan:
    return Plan(_plan(0), eps=eps)


#: Likewise for ``_dtypes.constants``' key: (c1, c2, eps, dtype, device).
CONSTANT_PAIRS: list[tuple[str, tuple[Any, ...], tuple[Any, ...]]] = [
    ("c1", (1e-4, 9e-4, None, torch.float32, "cpu"), (2e-4, 9e-4, None, torch.float32, "cpu")),
    ("c2", (1e-4, 9e-4, None, torch.float32, "cpu"), (1e-4, 8e-4, None, torch.float32, "cpu")),
    ("c2: zero", (1e-4, 9e-4, None, torch.float32, "cpu"), (1e-4, 0.0, None, torch.float32, "cpu")),
    ("eps: none", (0.0, 0.0, None, torch.float64, "cpu"), (0.0, 0.0, 1e-8, torch.float64, "cpu")),
    ("eps", (0.0, 0.0, 1e-8, torch.float64, "cpu"), (0.0, 0.0, 3e-8, torch.float64, "cpu")),
    ("dtype", (0.0, 0.0, 1e-8, torch.float64, "cpu"), (0.0, 0.0, 1e-8, torch.float32, "cpu")),
    ("device", (1e-4, 9e-4, None, torch.float32, "cpu"), (1e-4, 9e-4, None, torch.float32, "meta")),
]


@pytest.mark.parametrize("first, second", [p[1:] for p in CONSTANT_PAIRS], ids=[p[0] for p in CONSTANT_PAIRS])
def test_kept_constants_are_kept_by_all_that_decides_them(
    first: tuple[Any, ...], second: tuple[Any, ...]
) -> None:
    _dtypes._CONSTANTS.clear()
    c1, c2, eps, dtype, device = first
    _dtypes.constants(c1, c2, _plan_eps(eps), torch.empty(0, dtype=dtype, device=device))
    c1, c2, eps, dtype, device = second
    got = _dtypes.constants(c1, c2, _plan_eps(eps), torch.empty(0, dtype=dtype, device=device))
    want = _formula.constants(
        c1, c2, eps, torch.empty(0, dtype=dtype), torch.tensor((-1.0, 1.0), dtype=dtype)
    )
    assert [t is None for t in got] == [t is None for t in want]
    for g, w in zip(got, want):
        if isinstance(g, bool):  # c2_zero
            assert g == w
        elif g is not None:
            assert (g.shape, g.dtype, g.device.type) == (w.shape, dtype, device)
            assert device == "meta" or torch.equal(g, w)


@pytest.mark.skipif(
    not META_REFLECT_PAD2D_OUT,
    reason=f"torch {torch.__version__} has no meta kernel for reflection_pad2d.out: on meta the conv route "
    "pads out of place and copies, one op more than on CUDA",
)
@pytest.mark.parametrize("metric, forward_most, loss_most", [("ssim", 22, 47), ("uqi", 26, 52)])
def test_the_conv_route_of_a_16x16_call_launches_fewer_kernels(
    metric: str, forward_most: int, loss_most: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The conv route (CUDA without Triton) at 1x1x16x16 on meta, steady state: at most 22 writing
    ops (kernel launches on CUDA) forward, 47 for a loss forward and backward (the leaf's clone
    included; were 25 and 67: no constant filled, x + y and x - y in one op, the c sums summed only
    where c1 or c2 needs a gradient, the own shifts in two ops; the moments' gradients as pairs,
    ``(a - b, a + b)`` in one op; one image's shifted difference in two). UQI: 26 and 52 (were 27
    and 63: C_den without the zero c2, the flat windows found once)."""
    monkeypatch.setenv("SSIM_PATCH_BACKEND", "conv")
    x, y = (torch.empty(1, 1, 16, 16, device="meta") for _ in range(2))
    similarity = ssim_patch.uqi if metric == "uqi" else functools.partial(ssim_patch.ssim, data_range=1.0)

    def forward() -> object:
        with torch.no_grad():
            return similarity(x, y)

    def loss() -> object:
        leaf = x.clone().requires_grad_()
        similarity(leaf, y).backward()
        return leaf.grad

    for fn, most in ((forward, forward_most), (loss, loss_most)):
        fn()
        with DispatchCounter() as counter:
            fn()
        assert counter.counts.writing_ops <= most, dict(counter.counts.writes_by_op)


def test_a_repeated_call_takes_its_constants_from_the_kept_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """The conv route of a loss on meta (as on CUDA, where a fill is a launch) fills no constant
    once warm: the constants, the unit gradient, and the backward's constants."""
    monkeypatch.setenv("SSIM_PATCH_BACKEND", "conv")
    x, y = (torch.empty(1, 1, 16, 16, device="meta") for _ in range(2))

    def loss() -> object:
        leaf = x.clone().requires_grad_()
        ssim_patch.ssim(leaf, y, data_range=1.0).backward()
        return leaf.grad

    _dtypes._CONSTANTS.clear()
    _dtypes._KEPT.clear()
    loss()
    with DispatchCounter() as counter:
        loss()
    assert counter.counts.by_op["aten.full.default"] == 0, dict(counter.counts.by_op)
    assert len(_dtypes._CONSTANTS) == 1  # 2 c1, 2 c2
    assert len(_dtypes._KEPT) == 4  # 1 / 121, 2 / 121, (1, -1), (-1, 1)


def test_constants_made_in_inference_mode_serve_a_later_double_backward() -> None:
    """Kept constants are made outside inference mode: autograd may save them for a backward (the
    double backward recomputes through the traced route's ops, the constants kept ones)."""
    _dtypes._CONSTANTS.clear()
    x, y = _pair((1, 1, 16, 16), torch.float64)
    with torch.inference_mode():
        first = ssim_patch.ssim(x, y, data_range=1.0)
    kept = [t for k in _dtypes._CONSTANTS.values() for t in k if isinstance(t, torch.Tensor)]
    assert kept and not any(t.is_inference() for t in kept)
    leaf = x.clone().requires_grad_()
    again = ssim_patch.ssim(leaf, y, data_range=1.0)
    (grad,) = torch.autograd.grad(again, leaf, create_graph=True)
    grad.sum().backward()
    assert torch.equal(first, again.detach()) and leaf.grad is not None


def test_scalars_are_kept_for_plain_eager_calls_only() -> None:
    """Not under a fake-tensor mode, a transform, forward AD or a trace (a kept tensor would be a
    constant of its graph); a mode that only watches (a counting one) may see them."""
    like = torch.empty(3)
    assert _dtypes.keeps(like)
    with _Passing():
        assert _dtypes.keeps(like)
    assert not _dtypes.keeps(torch.empty(3).as_subclass(_Sub))
    with FakeTensorMode() as fake:
        assert not _dtypes.keeps(fake.from_tensor(like))
        assert not _dtypes.keeps(like)
    seen: list[bool] = []

    def probe(t: torch.Tensor) -> torch.Tensor:
        seen.append(_dtypes.keeps(t))
        return t * 2

    torch.func.vmap(probe)(torch.ones(2, 3))
    torch.jit.trace(probe, (like,), check_trace=False)
    with torch.autograd.forward_ad.dual_level():
        probe(like)
    assert seen == [False, False, False]


def test_a_scalar_made_in_inference_mode_is_not_an_inference_tensor() -> None:
    _dtypes._KEPT.clear()
    with torch.inference_mode():
        made = _dtypes.kept(0.5, torch.empty(0))
    assert not made.is_inference()
    assert _dtypes.kept(0.5, torch.empty(0)) is made


@pytest.mark.parametrize("kept", [True, False], ids=["kept signs", "signs made"])
def test_plus_minus_is_exactly_the_sum_and_the_difference(
    kept: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_dtypes, "keeps", lambda like: kept)
    x, y = _pair((2, 3, 7, 5))
    got = _algebra.plus_minus(x, y)
    assert torch.equal(got, torch.stack((x + y, x - y)))


def test_fake_cuda_images_keep_nothing_and_ask_cuda_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake CUDA tensors (shape inference for a CUDA target, on a machine without one): no kept
    constant, and no question to CUDA (whether a stream captures a graph), which needs a GPU."""

    def no_gpu() -> bool:
        raise AssertionError("asked CUDA")

    with FakeTensorMode():
        try:
            cuda_like = torch.empty(3, device="cuda")
        except (RuntimeError, AssertionError) as exc:  # torch 2.0 wants a driver for fake CUDA
            pytest.skip(f"no fake CUDA tensor on this machine: {exc}")
        monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", no_gpu)
        assert cuda_like.device.type == "cuda"
        assert not _dtypes.keeps(cuda_like)


@pytest.mark.skipif(
    not _torch_features.PYTHON_FUNCTION_APPLY,
    reason=f"torch {torch.__version__}'s Function.apply is not Python's (or lacks unwrap_dead_wrappers): it is used "
    "as it is, binding included",
)
def test_a_plain_eager_loss_binds_no_arguments_to_a_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Function.apply`` binds the arguments to ``forward``'s signature at every call (inspect's
    ``bind``, ~40 us of a 16x16 loss); the patched call passes all six positionally and skips it,
    outside a transform. Under ``torch.func`` (the traced route) gradients stay exact."""
    import inspect

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("Signature.bind called")

    x, y = _pair((1, 1, 16, 16), torch.float64)
    leaf = x.clone().requires_grad_()
    monkeypatch.setattr(inspect.Signature, "bind", refuse)
    ssim_patch.ssim(leaf, y, data_range=1.0).backward()
    monkeypatch.undo()
    reference = x.clone().requires_grad_()
    ssim_patch.ssim(reference, y, data_range=1.0, reduction="none").sum().backward()
    assert torch.equal(leaf.grad, reference.grad)
    grads = torch.func.grad(lambda a: ssim_patch.ssim(a, y, data_range=1.0))(x)
    torch.testing.assert_close(grads, leaf.grad, rtol=1e-10, atol=1e-14)
