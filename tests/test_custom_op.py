"""The engine as torch.library custom ops (``ssim_patch::similarity`` and its backward): the ops
pass ``torch.library.opcheck``, are registered once per process, carry eager calls, and under
``torch.compile`` (fullgraph, static and dynamic shapes) stand in the graph as one op each, with
values and gradients equal to the float64 reference. Inductor (minutes on a cold cache) is behind
the ``slow`` marker."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ssim_patch
from ssim_patch import _filters
from ssim_patch.backends import _custom_op, _op, _route
from ssim_patch.backends._protocol import Needs, Plan
from tests.helpers import reference_torch as ref
from tests.helpers.fresh_interpreter import unpatched_environ
from tests.helpers.torch_support import metric_fullgraph_unsupported

# Skipped only where torch has no torch.library.custom_op; a failed registration fails here.
pytestmark = [
    pytest.mark.skipif(
        not hasattr(torch.library, "custom_op"), reason="torch has no torch.library.custom_op"
    ),
    pytest.mark.usefixtures("patch_applied"),
]

FORWARD = "ssim_patch.similarity.default"
BACKWARD = "ssim_patch.similarity_backward.default"


def _pair(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=g, dtype=torch.float64)
    preds = 0.7 * target + 0.3 * torch.rand(shape, generator=g, dtype=torch.float64)
    return preds.to(dtype), target.to(dtype)


def _plan(output="ssim", eps=None, padding="same"):
    taps = _filters.gaussian_taps(1.0, 7)
    return Plan(_filters.Blur((taps, _filters.uniform_taps(5)), padding), eps, output)


# --- the ops themselves -----------------------------------------------------------------------------


def test_the_route_is_the_custom_op_on_every_torch_that_has_it():
    """torch.library.custom_op (2.4 on) carries the fused route. Before, on 2.4-2.6 the schema
    inferred from list[float] annotations was refused, and on 2.7-2.12 a meta kernel beside the
    fake one; the failure was caught and the autograd.Function taken, saying nothing."""
    assert _op.route() == (
        "custom op",
        f"torch {torch.__version__} has torch.library.custom_op; plain eager calls take the autograd.Function",
    )
    assert _route.CUSTOM_OP and _custom_op.AVAILABLE


def test_the_route_says_what_torch_lacks(monkeypatch):
    """Decided by feature detection, and said: what a torch lacks for the custom op."""
    monkeypatch.delattr(torch.library, "register_autograd")
    assert _route._missing() == f"torch {torch.__version__} has no torch.library.register_autograd"
    monkeypatch.undo()
    monkeypatch.setattr(torch.library, "custom_op", lambda name, fn=None, *, mutates_args: None)
    assert _route._missing() == f"torch {torch.__version__}'s torch.library.custom_op takes no schema"


def test_plain_meta_tensors_run_the_backend(monkeypatch):
    """Tensors on device "meta" (no fake mode) go through the op and run the backend itself, as
    on a device (launches and bytes are counted there); fake tensors get shapes only."""
    ran = _spy_backends(monkeypatch)
    x = torch.empty(2, 3, 16, 17, device="meta", requires_grad=True)
    with _Ops() as ops:
        value = ssim_patch.ssim(x, x.detach(), data_range=1.0)
        value.backward()
    assert value.device.type == "meta" and x.grad.shape == x.shape
    assert FORWARD in ops.names and BACKWARD in ops.names
    assert ran == ["conv"]


def test_ops_are_registered_once_per_process():
    assert _custom_op.AVAILABLE, _custom_op.MISSING
    op = torch.ops.ssim_patch.similarity.default
    importlib.reload(_custom_op)  # a re-import finds them registered: no error, the same ops
    assert torch.ops.ssim_patch.similarity.default is op
    assert torch.ops.ssim_patch.similarity_backward.default is not None
    assert op._schema.name == "ssim_patch::similarity"
    assert not any(arg.alias_info is not None and arg.alias_info.is_write for arg in op._schema.arguments)


@pytest.mark.parametrize("backend", ["cpu", "conv", "traced"])
@pytest.mark.parametrize(
    ("output", "eps", "padding"),
    [("ssim", None, "same"), ("map", None, "valid"), ("cs", None, "same"), ("map", 1e-6, "same")],
)
def test_opcheck(backend, output, eps, padding):
    """Schema, fake implementation (also with dynamic shapes), autograd registration; forward and
    backward op. c1 a tensor that needs a gradient, c2 a number."""
    x, y = _pair((2, 2, 9, 10), dtype=torch.float64)
    x.requires_grad_()
    c1 = torch.tensor(1e-4, dtype=torch.float64, requires_grad=True)
    keep = Needs(True, False, True, False)
    args = _custom_op.args(x, y, c1, 9e-4, _plan(output, eps, padding), backend, keep)
    torch.library.opcheck(torch.ops.ssim_patch.similarity.default, tuple(args))
    with torch.no_grad():
        out = torch.ops.ssim_patch.similarity(*args)
    g_image = torch.linspace(0.5, 1.5, 2, dtype=torch.float64)
    g_extra = torch.ones_like(out[1]) if output != "ssim" else None
    detached = args._replace(x=x.detach(), c1=c1.detach())
    torch.library.opcheck(
        torch.ops.ssim_patch.similarity_backward.default, (*detached, list(out[2:]), g_image, g_extra)
    )


def test_plan_travels_exactly():
    plan = _plan("cs", 1e-7, "valid")
    assert _custom_op.unpack_plan(_custom_op.pack_plan(plan)) == plan


class _Ops(TorchDispatchMode):
    """The ops dispatched, by name."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("data_range", [1.0, None], ids=["number", "tensor"])
def test_eager_calls_go_through_the_op(data_range):
    """Forward and backward are one op each (c1, c2 as numbers, or as tensors from the pixels)."""
    x, y = _pair((2, 3, 16, 17))
    x.requires_grad_()
    with _Ops() as ops:
        value = ssim_patch.ssim(x, y, data_range=data_range)
        value.backward()
    assert ops.names.count(FORWARD) == 1 and ops.names.count(BACKWARD) == 1, ops.names
    r = x.detach().double().requires_grad_()
    expected = ref.ssim(r, y.double(), data_range=data_range)[0].mean()
    (e,) = torch.autograd.grad(expected, r)
    torch.testing.assert_close(value.double(), expected, atol=2e-6, rtol=0)
    torch.testing.assert_close(x.grad.double(), e, atol=1e-4 * e.abs().max().item(), rtol=0)


@pytest.mark.skipif(not hasattr(torch._C, "_set_view_replay_enabled"), reason="no view replay here")
def test_backends_run_without_view_replay(monkeypatch):
    """AOT autograd's compiled training forward turns view replay on (every view then records how
    to replay itself: each of the backend's views about twice as slow); the op turns it off while
    the backend runs, and back on after, with the same numbers."""
    from ssim_patch.backends import cpu

    seen = []
    for name in ("forward", "backward"):
        original = getattr(cpu.CpuBackend, name)

        def spy(self, *args, _original=original, **kwargs):
            seen.append(torch._C._is_view_replay_enabled())
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cpu.CpuBackend, name, spy)
    monkeypatch.setenv("SSIM_PATCH_BACKEND", "cpu")
    # View replay is on only in AOT's compiled code, which calls the op; an eager call here too.
    monkeypatch.setattr(_route, "through_custom_op", lambda x: True)
    x, y = _pair((2, 3, 16, 17))
    grads = []
    for replay in (False, True):
        a = x.clone().requires_grad_()
        torch._C._set_view_replay_enabled(replay)
        try:
            ssim_patch.ssim(a, y, data_range=1.0).backward()
            assert torch._C._is_view_replay_enabled() == replay
        finally:
            torch._C._set_view_replay_enabled(False)
        grads.append(a.grad)
    assert seen == [False] * 4
    assert torch.equal(grads[0], grads[1])


def test_double_backward_recomputes_through_the_traced_route():
    x, y = _pair((1, 1, 9, 8), dtype=torch.float64)
    x.requires_grad_()
    (g,) = torch.autograd.grad(ssim_patch.ssim(x, y, data_range=1.0), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.pow(2).sum(), x)
    r = x.detach().clone().requires_grad_()
    (e,) = torch.autograd.grad(ref.ssim(r, y, data_range=1.0)[0].mean(), r, create_graph=True)
    (ee,) = torch.autograd.grad(e.pow(2).sum(), r)
    torch.testing.assert_close(g, e, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(gg, ee, atol=1e-10, rtol=1e-7)


# --- torch.compile --------------------------------------------------------------------------------


def _recording_backend(kind: str, seen: set):
    """``kind`` ("eager" or "aot_eager") that records the ops in the graphs it is given."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def record(gm, _inputs):
        seen.update(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return make_boxed_func(gm.forward) if kind == "aot_eager" else gm.forward

    return aot_autograd(fw_compiler=record, bw_compiler=record) if kind == "aot_eager" else record


def _functional(name):
    image = importlib.import_module("torchmetrics.functional.image")
    if name == "ssim":
        return lambda a, b: image.structural_similarity_index_measure(a, b, data_range=1.0, sigma=1.0)
    if name == "ms-ssim":
        return lambda a, b: image.multiscale_structural_similarity_index_measure(
            a, b, data_range=1.0, sigma=1.0, betas=(0.4, 0.6)
        )
    if name == "uqi":
        return lambda a, b: image.universal_image_quality_index(a, b, kernel_size=(7, 7), sigma=(1.0, 1.0))
    metrics = importlib.import_module("torchmetrics.image")
    if name == "SSIM-class":
        metric = metrics.StructuralSimilarityIndexMeasure(data_range=1.0, sigma=1.0)
    elif name == "MS-SSIM-class":
        metric = metrics.MultiScaleStructuralSimilarityIndexMeasure(
            data_range=1.0, sigma=1.0, betas=(0.4, 0.6)
        )
    else:
        metric = metrics.UniversalImageQualityIndex(kernel_size=(7, 7), sigma=(1.0, 1.0))
    return lambda a, b: metric(a, b)


def _uqi_reference(x, y):
    windows = [ref.gaussian_window(1.0, 7)] * 2
    mx, my = (ref.blur(a, windows, "same") for a in (x, y))
    vx = ref.blur(x * x, windows, "same") - mx * mx
    vy = ref.blur(y * y, windows, "same") - my * my
    cov = ref.blur(x * y, windows, "same") - mx * my
    eps = torch.finfo(torch.float32).eps
    return ((2 * mx * my) * (2 * cov) / ((mx * mx + my * my) * (vx + vy) + eps)).mean()


def _reference(name, x, y):
    if name in ("ssim", "SSIM-class"):
        return ref.ssim(x, y, data_range=1.0, sigma=1.0)[0].mean()
    if name in ("ms-ssim", "MS-SSIM-class"):
        return ref.ms_ssim(x, y, (0.4, 0.6), normalize=_ms_normalize(), data_range=1.0, sigma=1.0).mean()
    return _uqi_reference(x, y)


def _ms_normalize():
    import inspect

    image = importlib.import_module("torchmetrics.functional.image")
    default = inspect.signature(image.multiscale_structural_similarity_index_measure).parameters["normalize"]
    return default.default


FUNCTIONALS = ["ssim", "ms-ssim", "uqi"]
CLASSES = ["SSIM-class", "MS-SSIM-class", "UQI-class"]
COMPILE_CASES = [(name, "eager") for name in FUNCTIONALS] + [
    (name, "aot_eager") for name in FUNCTIONALS + CLASSES
]


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize(("name", "kind"), COMPILE_CASES)
def test_compiled_loss_is_one_op_and_equals_the_reference(name, kind, dynamic, dynamo):
    """fullgraph=True (no graph break), the custom op in the graph (forward, and with AOT
    autograd the backward op), and the float64 reference's value and gradient in float32; with
    dynamic shapes a second size reuses the graph."""
    if name in CLASSES and metric_fullgraph_unsupported() is not None:
        pytest.skip(str(metric_fullgraph_unsupported()))
    fn = _functional(name)
    seen: set = set()
    compiled = torch.compile(
        lambda a, b: 1 - fn(a, b), backend=_recording_backend(kind, seen), fullgraph=True, dynamic=dynamic
    )
    for grow in (0, 3) if dynamic else (0,):
        x, y = _pair((2, 2, 32 + grow, 33 + grow), seed=grow)
        a = x.clone().requires_grad_()
        value = compiled(a, y)
        (g,) = torch.autograd.grad(value, a)
        r = x.double().requires_grad_()
        expected = 1 - _reference(name, r, y.double())
        (e,) = torch.autograd.grad(expected, r)
        torch.testing.assert_close(value.double(), expected, atol=2e-6, rtol=0)
        torch.testing.assert_close(g.double(), e, atol=1e-4 * e.abs().max().item(), rtol=0)
    assert {FORWARD, FORWARD.removesuffix(".default")} & seen, sorted(seen)  # overload or packet
    if kind == "aot_eager":
        assert BACKWARD in seen, sorted(seen)


def test_compile_with_a_tensor_data_range_and_3d(dynamo):
    """c1, c2 as tensors that need a gradient (data_range=None) and volumes, dynamic shapes."""
    seen: set = set()
    fn = lambda a, b: ssim_patch.ssim(a, b, sigma=(0.8, 0.8, 1.0))  # noqa: E731
    compiled = torch.compile(fn, backend=_recording_backend("aot_eager", seen), fullgraph=True, dynamic=True)
    for grow in (0, 2):
        x, y = _pair((2, 1, 9 + grow, 10, 11 + grow), seed=grow)
        a = x.clone().requires_grad_()
        value = compiled(a, y)
        (g,) = torch.autograd.grad(value, a)
        r = x.double().requires_grad_()
        expected = ref.ssim(r, y.double(), sigma=(0.8, 0.8, 1.0))[0].mean()
        (e,) = torch.autograd.grad(expected, r)
        torch.testing.assert_close(value.double(), expected, atol=2e-6, rtol=0)
        torch.testing.assert_close(g.double(), e, atol=1e-4 * e.abs().max().item(), rtol=0)
    assert {FORWARD, BACKWARD} <= seen


def test_no_graph_break_by_explain(dynamo):
    x, y = _pair((2, 3, 20, 21))
    explanation = dynamo.explain(lambda a, b: 1 - ssim_patch.ssim(a, b, data_range=None))(x, y)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation


# --- inductor ------------------------------------------------------------------------------------

INDUCTOR_CHILD = textwrap.dedent(
    """
    import json, warnings
    warnings.simplefilter("ignore")
    import torch
    import ssim_patch
    from torchmetrics.functional.image import structural_similarity_index_measure as f
    ssim_patch.apply()
    loss = lambda a, b: 1 - f(a, b, data_range=1.0)
    compiled = torch.compile(loss, fullgraph=True, dynamic=True)
    g = torch.Generator().manual_seed(0)
    diffs = []
    for shape in ((2, 3, 24, 25), (3, 3, 29, 30), (2, 1, 12, 13, 14)):
        x = torch.rand(shape, generator=g)
        y = 0.6 * x + 0.4 * torch.rand(shape, generator=g)
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        out, eager = compiled(a, y), loss(b, y)
        ga, gb = torch.autograd.grad(out, a)[0], torch.autograd.grad(eager, b)[0]
        diffs.append(max((out - eager).abs().item(), ((ga - gb).abs().max() / gb.abs().max()).item()))
    from torch._dynamo.utils import counters
    print(json.dumps({"diff": max(diffs), "breaks": sum(counters["graph_break"].values())}))
    """
)


@pytest.mark.slow
def test_inductor_dynamic_through_the_custom_op():
    """Inductor (C++ on CPU) with dynamic shapes, 2-D and 3-D, forward and backward: the same
    numbers as eager, no graph break."""
    out = subprocess.run(
        [sys.executable, "-c", INDUCTOR_CHILD],
        capture_output=True,
        text=True,
        timeout=600,
        env=unpatched_environ(),
    )
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["diff"] < 1e-5 and result["breaks"] == 0, result


TRITON_CHILD = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.simplefilter("ignore")
    import torch
    from tests.helpers import reference_torch as ref
    import ssim_patch
    from ssim_patch.backends import _custom_op, _op, _route
    loss = lambda a, b: 1 - ssim_patch.ssim(a, b, data_range=1.0, sigma=1.0)
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True, dynamic=True)
    g = torch.Generator().manual_seed(0)
    diffs, dtypes = [], []
    for fn, shape, dtype in ((loss, (2, 2, 16, 17), torch.float16), (compiled, (2, 2, 16, 17), torch.float32),
                             (compiled, (1, 3, 18, 20), torch.float32)):
        x = torch.rand(shape, generator=g).to(dtype)
        y = torch.rand(shape, generator=g).to(dtype)
        a = x.clone().requires_grad_()
        value = fn(a, y)
        (grad,) = torch.autograd.grad(value, a)
        r = x.double().requires_grad_()
        expected = 1 - ref.ssim(r, y.double(), data_range=1.0, sigma=1.0)[0].mean()
        (e,) = torch.autograd.grad(expected, r)
        diffs.append([abs(value.double() - expected).item(), ((grad.double() - e).abs().max() / e.abs().max()).item()])
        dtypes.append(str(grad.dtype))
    print(json.dumps({"diffs": diffs, "dtypes": dtypes}))
    """
)


@pytest.mark.slow
def test_triton_backend_through_the_op_in_the_interpreter():
    """The Triton backend (Triton's interpreter on CPU tensors) inside the op: eager float16 (its
    gradient in float16) and aot_eager with dynamic shapes (the fake implementation takes the
    Triton backend's kept_like), against the float64 reference. About a minute."""
    pytest.importorskip("triton")
    env = unpatched_environ()
    env.update(TRITON_INTERPRET="1", SSIM_PATCH_BACKEND="triton")
    out = subprocess.run(
        [sys.executable, "-c", TRITON_CHILD],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    (v16, g16), *float32 = result["diffs"]
    # float16 out: SSIM is rounded to float16, then 1 - SSIM (an ulp is 2**-11 just below 1); the
    # gradient is computed in float32 from the float16 images (the reference sees the same images).
    assert v16 <= 2**-10 and g16 < 2e-3, result
    assert all(v < 1e-6 and g < 1e-5 for v, g in float32), result
    assert result["dtypes"] == ["torch.float16", "torch.float32", "torch.float32"], result


# --- a compiled graph and SSIM_PATCH_BACKEND -------------------------------------------------------


def _spy_backends(monkeypatch) -> list:
    """The names of the backends whose forward runs, in order."""
    from ssim_patch.backends import conv, cpu, traced

    ran: list = []
    for module in (cpu, conv, traced):
        cls = type(module.BACKEND)

        def spy(self, *args, _original=cls.forward, **kwargs):
            ran.append(self.name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", spy)
    return ran


def test_a_compiled_graph_follows_the_backend_variable(dynamo, monkeypatch):
    """What the op keeps depends on the backend: a graph compiled under one backend, called after
    ``SSIM_PATCH_BACKEND`` changed (set, changed, unset), recompiles for the backend asked for;
    its value and gradient are the reference's. (It crashed replaying the old graph.)"""
    ran = _spy_backends(monkeypatch)
    compiled = torch.compile(
        lambda a, b: 1 - ssim_patch.ssim(a, b, data_range=1.0), backend="aot_eager", fullgraph=True
    )
    x, y = _pair((2, 2, 20, 21))
    r = x.double().requires_grad_()
    expected = 1 - ref.ssim(r, y.double(), data_range=1.0)[0].mean()
    (e,) = torch.autograd.grad(expected, r)
    monkeypatch.delenv("SSIM_PATCH_BACKEND", raising=False)
    for name in (None, "traced", "conv", "cpu", "traced", None):
        if name is None:
            monkeypatch.delenv("SSIM_PATCH_BACKEND", raising=False)
        else:
            monkeypatch.setenv("SSIM_PATCH_BACKEND", name)
        a = x.clone().requires_grad_()
        value = compiled(a, y)
        (g,) = torch.autograd.grad(value, a)
        assert ran[-1] == (name or "cpu"), (name, ran)
        torch.testing.assert_close(value.double(), expected, atol=2e-6, rtol=0)
        torch.testing.assert_close(g.double(), e, atol=1e-4 * e.abs().max().item(), rtol=0)


CACHED_CHILD = textwrap.dedent(
    """
    import json, warnings
    warnings.simplefilter("ignore")
    import torch
    import ssim_patch
    from torchmetrics.functional.image import structural_similarity_index_measure as f
    ssim_patch.apply()
    loss = lambda a, b: 1 - f(a, b, data_range=1.0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 33, generator=g)
    y = 0.6 * x + 0.4 * torch.rand(x.shape, generator=g)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, eager = torch.compile(loss)(a, y), loss(b, y)
    out.backward(); eager.backward()
    print(json.dumps({"value": (out - eager).abs().item(), "grad": ((a.grad - b.grad).abs().max() / b.grad.abs().max()).item()}))
    """
)


@pytest.mark.slow
def test_inductor_cache_shared_by_processes_with_other_backends(tmp_path):
    """Processes that share inductor's on-disk cache and ask for other backends (auto, traced,
    cpu): each compiles or loads a graph for its own backend and gets the eager numbers. (A graph
    cached under one backend was replayed under another, and crashed.)"""
    for name in ("auto", "traced", "cpu", "auto"):
        env = unpatched_environ()
        env.update(TORCHINDUCTOR_CACHE_DIR=str(tmp_path), SSIM_PATCH_BACKEND=name)
        out = subprocess.run(
            [sys.executable, "-c", CACHED_CHILD], capture_output=True, text=True, timeout=600, env=env
        )
        assert out.returncode == 0, f"{name}: {out.stderr[-4000:]}"
        diff = json.loads(out.stdout.strip().splitlines()[-1])
        assert diff["value"] < 1e-6 and diff["grad"] < 1e-4, (name, diff)
