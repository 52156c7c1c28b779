"""The cpu backend's scratch: after a thread's first step, a forward+backward allocates no
map-sized tensor but what it returns and keeps for the backward.

Why it matters: a fresh CPU allocation costs a page fault per 4 KiB touched, and glibc gives freed
heap back to the OS eagerly until the process has freed one large block. A process that only ever
ran the eager loss (4x3x64x64, float32) took ~1000 page faults and 4.3 ms per forward+backward with
a fresh tensor for every formula temporary, 2.1 ms and none with them written into the thread's
reused scratch. The count of fresh map-sized tensors is the deterministic part of that, asserted
here; the reuse must never show in a number (threads, fake tensors, several shapes in turn).
"""

from __future__ import annotations

import threading

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import ssim_patch
from ssim_patch import _filters, backends
from ssim_patch.backends import _workspace, cpu
from ssim_patch.backends._dtypes import constants
from ssim_patch.backends._protocol import Needs, Plan


class _FreshTensors(TorchDispatchMode):
    """Records every op output of at least ``min_numel`` elements that shares memory with none of
    the op's arguments (``out=`` included): a fresh allocation."""

    def __init__(self, min_numel: int) -> None:
        super().__init__()
        self.min_numel = min_numel
        self.found: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        given = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(result)[0]:
            big = isinstance(t, torch.Tensor) and t.numel() >= self.min_numel
            if big and t.untyped_storage().data_ptr() not in given:
                self.found.append((str(func), tuple(t.shape)))
        return result


def _plan(output="ssim"):
    taps = _filters.gaussian_taps(1.5, 11)
    return Plan(_filters.Blur((taps, taps), "same"), output=output)


def _pair(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    return x.to(dtype), (0.6 * x + 0.4 * torch.rand(shape, generator=g, dtype=torch.float64)).to(dtype)


def _fresh_in_a_step(plan, shape=(4, 3, 64, 64)):
    """The fresh tensors of half a map or more in a forward+backward of the cpu backend, after one."""
    x, y = _pair(shape)
    k = constants(1e-4, 9e-4, plan, x)
    keep = Needs(True, False, False, False)
    be = backends.load("cpu")
    assert not isinstance(be, str)
    n, c, *spatial = shape
    g_image = torch.ones(n)
    g_extra = (
        torch.ones(n, c, *spatial) if plan.output == "map" else torch.ones(n) if plan.output == "cs" else None
    )

    def step():
        _, _, kept = be.forward(x, y, k, plan, keep)
        be.backward(x, y, k, kept, g_image, g_extra, plan, keep)

    step()  # the forward's and the backward's scratch, each taken once
    with _FreshTensors(min_numel=n * c * spatial[0] * spatial[1] // 2) as fresh:
        step()
    return fresh.found


MAP = (12, 64, 64)


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        # the kept adjoint maps (g_x, g_sq, g_cross), the gradient (no padded copy of either
        # image: the products fold the reflect padding in)
        ("ssim", [(3, *MAP), MAP]),
        # the map, the kept means and contrast factors; the loss's gradient of the map
        # (upstream of the map and the mean), the gradient
        ("map", [MAP, (2, *MAP), (2, *MAP), (4, 3, 64, 64), MAP]),
        ("cs", [(2, *MAP), (2, *MAP), MAP]),
    ],
)
def test_a_step_allocates_only_what_it_returns_and_keeps(output, expected):
    found = _fresh_in_a_step(_plan(output))
    assert sorted(shape for _, shape in found) == sorted(expected), found


def test_threads_each_get_their_own_scratch(monkeypatch):
    """Four threads, each its own shapes, at once: every result is the one computed alone."""
    monkeypatch.setenv(backends.ENV, "cpu")
    shapes = [(2, 3, 40, 40), (1, 1, 64, 48), (3, 2, 33, 35), (1, 3, 90, 20)]
    pairs = [_pair(s, seed=i) for i, s in enumerate(shapes)]

    def loss_and_grad(x, y):
        x = x.clone().requires_grad_()
        value = ssim_patch.ssim(x, y, data_range=1.0)
        (grad,) = torch.autograd.grad(value, x)
        return value.detach(), grad

    alone = [loss_and_grad(x, y) for x, y in pairs]
    got: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    start = threading.Barrier(len(pairs))

    def run(i):
        start.wait()
        got[i] = [loss_and_grad(*pairs[i]) for _ in range(5)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(pairs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (value, grad) in enumerate(alone):
        for v, g in got[i]:
            assert torch.equal(v, value) and torch.equal(g, grad), shapes[i]


def test_scratch_of_fake_tensors_is_not_kept():
    """A call on fake tensors (shape inference) leaves no fake buffer for the next real call."""
    x, y = _pair((2, 3, 32, 32))
    plan = _plan()
    k = constants(1e-4, 9e-4, plan, x)
    before = cpu.BACKEND.forward(x, y, k, plan, None)[0]
    with FakeTensorMode() as mode:
        fx, fy = mode.from_tensor(x), mode.from_tensor(y)
        cpu.BACKEND.forward(fx, fy, constants(1e-4, 9e-4, plan, fx), plan, None)
    after = cpu.BACKEND.forward(x, y, k, plan, None)[0]
    assert torch.equal(before, after)


def _step(x, y, plan):
    """Per-image SSIM and the gradient for x, from the cpu backend."""
    k = constants(1e-4, 9e-4, plan, x)
    keep = Needs(True, False, False, False)
    per_image, _, kept = cpu.BACKEND.forward(x, y, k, plan, keep)
    grads = cpu.BACKEND.backward(x, y, k, kept, torch.ones_like(per_image), None, plan, keep)
    return per_image, grads[0]


def test_windows_and_shapes_in_turn_give_the_numbers_of_a_fresh_workspace():
    """Windows and shapes that change from call to call (the kept buffers and the views made of
    them, grown, shrunk and made anew): each call equals one on a workspace of its own."""
    gauss, uniform = _filters.gaussian_taps(1.5, 11), _filters.uniform_taps(7)
    wide = _filters.gaussian_taps(2.5, 11)  # the same size: views of the same shapes
    plans = [
        Plan(_filters.Blur((gauss, gauss), "same")),
        Plan(_filters.Blur((uniform, gauss), "same")),
        Plan(_filters.Blur((gauss, gauss), "valid")),
        Plan(_filters.Blur((uniform, uniform), "same")),
        Plan(_filters.Blur((wide, wide), "same")),
    ]
    calls = [((2, 3, 70, 70), 0), ((1, 1, 16, 16), 1), ((2, 3, 70, 70), 2), ((3, 2, 300, 40), 3)]
    calls += [((1, 1, 16, 16), 0), ((2, 3, 70, 70), 0), ((2, 3, 70, 70), 4), ((2, 3, 70, 70), 1)]
    calls += [((3, 2, 300, 40), 3), ((3, 2, 300, 40), 0), ((3, 2, 300, 40), 4)]
    inputs = [(_pair(shape, seed=p), plans[p]) for shape, p in calls]
    expected = []
    for (x, y), plan in inputs:
        _workspace._IDLE.free = None  # a workspace of its own
        expected.append(_step(x, y, plan))
    for ((x, y), plan), want, call in zip(inputs, expected, calls):  # one workspace, in turn
        got = _step(x, y, plan)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), call


def test_inference_mode_and_training_calls_in_turn(monkeypatch):
    """Scratch made under ``torch.inference_mode`` is not written outside it (torch forbids it):
    evaluation and training calls alternate, each with its own numbers."""
    monkeypatch.setenv(backends.ENV, "cpu")
    x, y = _pair((2, 3, 40, 40))

    def train():
        a = x.clone().requires_grad_()
        value = ssim_patch.ssim(a, y, data_range=1.0)
        (grad,) = torch.autograd.grad(value, a)
        return value.detach(), grad

    _workspace._IDLE.free = None
    expected = train()
    _workspace._IDLE.free = None  # the scratch is made under inference mode first
    with torch.inference_mode():
        evaluated = ssim_patch.ssim(x, y, data_range=1.0)
    for _ in range(2):
        assert all(torch.equal(a, b) for a, b in zip(train(), expected))
        with torch.inference_mode():
            assert torch.equal(ssim_patch.ssim(x, y, data_range=1.0), evaluated)
    assert torch.equal(evaluated, expected[0])


def test_a_dtype_after_another_gives_the_numbers_of_a_fresh_workspace():
    """float64 calls then float32 calls of one window and shape (and back): each call equals one on
    a workspace of its own. The backward's plan was once kept by window and shape alone, and a
    float32 backward after a float64 one spread its gradient in the float64 scratch."""
    plan = _plan()
    pairs = {dtype: _pair((2, 3, 40, 40), dtype) for dtype in (torch.float32, torch.float64)}
    expected = {}
    for dtype, (x, y) in pairs.items():
        _workspace._IDLE.free = None  # a workspace of its own
        expected[dtype] = _step(x, y, plan)
    for dtype in (torch.float64, torch.float32, torch.float64, torch.float32):
        got = _step(*pairs[dtype], plan)
        assert all(a.dtype == dtype for a in got), dtype
        assert all(torch.equal(a, b) for a, b in zip(got, expected[dtype])), dtype


@pytest.mark.parametrize("uqi", [False, True], ids=["ssim", "uqi"])
def test_the_formula_written_over_reused_buffers_gives_the_fresh_numbers(uqi):
    """The formula writes several of its results over others it has spent (one buffer for the
    variances and then the means; the map over L_num; the adjoints' pairs over u, v and a, b):
    bit for bit what fresh tensors give, from buffers that start as NaN, for every output a
    caller reads."""
    from ssim_patch import _formula

    gen = torch.Generator().manual_seed(5)
    shape = (3, 2, 9, 7)
    m = torch.rand((4, *shape), generator=gen, dtype=torch.float64)
    m[2:] += m[:2] ** 2  # second moments above the squared means, as a blur of squares gives
    m[3, 0, 0] = m[1, 0, 0] ** 2  # a window with no variance of d (and, for UQI, a flat one)
    m[2, 0, 0] = m[0, 0, 0] ** 2
    shift = torch.rand((2, *shape[:1], 1, 1, 1), generator=gen, dtype=torch.float64)
    k = _formula.constants(0.0, 0.0, 1e-8, m) if uqi else _formula.constants(1e-4, 9e-4, None, m)
    grad_map = torch.rand(shape, generator=gen, dtype=torch.float64)
    grad_cs = torch.rand(shape, generator=gen, dtype=torch.float64)
    kept: dict[str, torch.Tensor] = {}

    def buffers(name: str, like: torch.Tensor) -> torch.Tensor:
        if name not in kept:
            kept[name] = torch.full(like.shape, float("nan"), dtype=like.dtype)
        assert kept[name].shape == like.shape, name
        return kept[name]

    fresh_t = _formula.terms(m.clone(), shift, k)
    fresh_made = _formula.similarity_map(fresh_t, k)
    s_alone = _formula.similarity(_formula.terms(m.clone(), shift, k, buffers=buffers), k, buffers)
    torch.testing.assert_close(s_alone, fresh_made.s, rtol=0, atol=0)
    for g_cs in (None,) if uqi else (None, grad_cs):  # UQI has no cs map
        fresh_adj = _formula.adjoints(fresh_t, shift, k, grad_map, g_cs, made=fresh_made)
        kept.clear()
        t = _formula.terms(m.clone(), shift, k, buffers=buffers)
        made = _formula.similarity_map(t, k, buffers)
        adj = _formula.adjoints(t, shift, k, grad_map, g_cs, made=made, buffers=buffers)
        for got, want in zip(adj, fresh_adj):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
