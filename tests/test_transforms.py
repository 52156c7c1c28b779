"""Every PyTorch transform works on the patched SSIM and agrees with eager autograd (2-D and 3-D,
through ``ssim_patch.ssim`` and through patched torchmetrics); where unpatched torchmetrics
supports a transform, side by side with it."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import operator
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vmap
from torch.utils.checkpoint import checkpoint

import ssim_patch
from ssim_patch.backends import _op, cpu
from ssim_patch.backends._protocol import Plan
from ssim_patch.backends.traced import similarity as traced_similarity
from tests.helpers import reference_torch as ref
from tests.helpers.fresh_interpreter import unpatched_environ

F = importlib.import_module("torchmetrics.functional.image.ssim")
TOL = dict(atol=1e-12, rtol=1e-9)

CASES = {
    "2d": ((2, 2, 12, 13), dict(sigma=1.0)),
    "3d": ((2, 1, 7, 8, 9), dict(sigma=(0.8, 0.8, 1.0))),
}
APIS = ("ssim_patch", "torchmetrics")


def _images(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=g, dtype=torch.float64)
    return 0.7 * target + 0.3 * torch.rand(shape, generator=g, dtype=torch.float64), target


def _per_image(api: str, kw: dict):
    """preds -> per-image SSIM against a fixed target, through ``api``."""

    def fn(x, y):
        if api == "ssim_patch":
            return ssim_patch.ssim(x, y, data_range=1.0, reduction="none", **kw)
        return F.structural_similarity_index_measure(x, y, data_range=1.0, reduction="none", **kw)

    return fn


pytestmark = pytest.mark.usefixtures("patch_applied")


def _eager_jacobian(v, x):
    return torch.autograd.functional.jacobian(v, x)


TRANSFORMS = [
    "grad",
    "jacrev",
    "jacfwd",
    "jvp",
    "vmap",
    "vmap(grad)",
    "forward-ad",
    "checkpoint",
    "checkpoint-reentrant",
]


def _run(transform: str, fn, x, y):
    """(what the transform gives, what eager autograd gives) for ``fn(x, y)`` per image."""
    n = x.shape[0]
    weights = torch.arange(1.0, n + 1, dtype=x.dtype)

    def loss(a):
        return (fn(a, y) * weights).sum()

    def eager_grad(a):
        a = a.detach().requires_grad_()
        return torch.autograd.grad(loss(a), a)[0]

    tangent = torch.linspace(-1, 1, x.numel(), dtype=x.dtype).view(x.shape)
    if transform == "grad":
        return grad(loss)(x), eager_grad(x)
    if transform in ("jacrev", "jacfwd"):
        got = (jacrev if transform == "jacrev" else jacfwd)(lambda a: fn(a, y))(x)
        return got, _eager_jacobian(lambda a: fn(a, y), x)
    if transform == "jvp":
        _, got = jvp(lambda a: fn(a, y), (x,), (tangent,))
        jac = _eager_jacobian(lambda a: fn(a, y), x)
        return got, (jac.reshape(n, -1) @ tangent.reshape(-1))
    if transform == "vmap":
        got = vmap(lambda a, b: fn(a[None], b[None])[0])(x, y)
        with torch.no_grad():
            return got, fn(x, y)
    if transform == "vmap(grad)":
        got = vmap(grad(lambda a, b: fn(a[None], b[None])[0]))(x, y)
        expected = []
        for i in range(n):
            a = x[i : i + 1].detach().requires_grad_()
            expected.append(torch.autograd.grad(fn(a, y[i : i + 1])[0], a)[0][0])
        return got, torch.stack(expected)
    if transform == "forward-ad":
        with fwAD.dual_level():
            got = fwAD.unpack_dual(fn(fwAD.make_dual(x, tangent), y)).tangent
        jac = _eager_jacobian(lambda a: fn(a, y), x)
        return got, (jac.reshape(n, -1) @ tangent.reshape(-1))
    if transform in ("checkpoint", "checkpoint-reentrant"):
        a = x.detach().requires_grad_()
        checkpoint(loss, a, use_reentrant=transform == "checkpoint-reentrant").backward()
        return a.grad, eager_grad(x)
    raise AssertionError(transform)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_transform_agrees_with_eager_autograd(transform, case, api):
    shape, kw = CASES[case]
    x, y = _images(shape)
    got, expected = _run(transform, _per_image(api, kw), x, y)
    torch.testing.assert_close(got, expected, **TOL)


def _upstream_is_right() -> bool:
    from packaging.version import Version

    return Version(importlib.metadata.version("torchmetrics")) >= Version("1.4.2")


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_transform_side_by_side_with_unpatched(transform):
    """Whatever a transform gives unpatched (2-D Gaussian SSIM, right upstream from 1.4.2), it
    gives patched, with the same numbers."""
    if not _upstream_is_right():
        pytest.skip("2-D SSIM is right upstream from 1.4.2 on")
    shape, kw = CASES["2d"]
    x, y = _images(shape, seed=1)
    fn = _per_image("torchmetrics", kw)
    ssim_patch.revert()
    try:
        upstream, _ = _run(transform, fn, x, y)
    except Exception as exc:  # unpatched does not support it: nothing to keep
        pytest.skip(f"unpatched torchmetrics fails under {transform}: {type(exc).__name__}")
    ssim_patch.apply()
    patched, _ = _run(transform, fn, x, y)
    torch.testing.assert_close(patched, upstream, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("case", list(CASES))
def test_hessian(case):
    """torch.func.hessian (forward over reverse), eager double backward and the reference agree."""
    shape, kw = CASES[case]
    shape = (1, 1, 9, 8) if case == "2d" else (1, 1, 5, 6, 7)
    x, y = _images(shape, seed=2)

    def loss(a):
        return ssim_patch.ssim(a, y, data_range=1.0, **kw)

    got = hessian(loss)(x)
    eager = torch.autograd.functional.hessian(loss, x, vectorize=True)  # batched double backward
    reference = torch.autograd.functional.hessian(
        lambda a: ref.ssim(a, y, data_range=1.0, **kw)[0].sum(), x, vectorize=True
    )
    torch.testing.assert_close(got, eager, **TOL)
    torch.testing.assert_close(got, reference, atol=1e-12, rtol=1e-7)


@pytest.mark.parametrize("case", list(CASES))
def test_gradgradcheck(case):
    _, kw = CASES[case]
    x, y = _images((1, 1, 8, 7) if case == "2d" else (1, 1, 5, 5, 6), seed=3)
    x.requires_grad_()
    y.requires_grad_()
    assert torch.autograd.gradgradcheck(
        lambda a, b: ssim_patch.ssim(a, b, data_range=1.0, **kw), (x, y), eps=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("output", ["map", "cs"])
def test_jacfwd_and_jacrev_of_the_other_outputs(output):
    shape, kw = CASES["2d"]
    x, y = _images((1, 1, *shape[2:]), seed=4)
    flag = {"return_full_image": True} if output == "map" else {"return_contrast_sensitivity": True}

    def fn(a):
        return ssim_patch.ssim(a, y, data_range=1.0, reduction="none", **flag, **kw)[1]

    expected = _eager_jacobian(fn, x)
    torch.testing.assert_close(jacrev(fn)(x), expected, **TOL)
    torch.testing.assert_close(jacfwd(fn)(x), expected, **TOL)


def test_vmap_with_data_range_none_and_a_tensor_range():
    shape, kw = CASES["2d"]
    x, y = _images(shape, seed=5)
    got = vmap(lambda a, b: ssim_patch.ssim(a[None], b[None], **kw))(x, y)
    expected = torch.stack([ssim_patch.ssim(x[i : i + 1], y[i : i + 1], **kw) for i in range(x.shape[0])])
    torch.testing.assert_close(got, expected, **TOL)
    ranges = torch.tensor([1.0, 2.0], dtype=torch.float64)
    got = vmap(lambda a, b, r: ssim_patch.ssim(a[None], b[None], data_range=r, **kw))(x, y, ranges)
    expected = torch.stack(
        [ssim_patch.ssim(x[i : i + 1], y[i : i + 1], data_range=float(ranges[i]), **kw) for i in range(2)]
    )
    torch.testing.assert_close(got, expected, **TOL)


# --- the autograd.Function itself: setup_context, its vmap rule and its jvp ---------------------


def _plan(kw):
    from ssim_patch import _filters

    taps = _filters.gaussian_taps(1.0, 7)
    return Plan(_filters.Blur((taps, taps), "same"), output=kw)


@pytest.mark.parametrize("output", ["ssim", "map", "cs"])
def test_the_function_under_vmap_jvp_and_grad(output):
    """The fused autograd.Function is only reached outside transforms, but works inside them too."""
    x, y = _images((3, 2, 10, 11), seed=6)
    plan = _plan(output)

    def fused(a, b, c1=1e-4):
        out = _op._apply(a, b, c1, 9e-4, plan, cpu.BACKEND)
        return out[1] if output != "ssim" else out[0]

    def traced(a, b, c1=1e-4):
        per_image, extra = traced_similarity(a, b, c1, 9e-4, plan)
        return extra if output != "ssim" else per_image

    torch.testing.assert_close(vmap(fused)(x[:, None], y[:, None]).squeeze(1), traced(x, y), **TOL)
    c1 = torch.tensor([1e-4, 2e-4, 3e-4], dtype=torch.float64)
    got = vmap(fused)(x[:, None], y[:, None], c1)
    expected = torch.stack([traced(x[i : i + 1], y[i : i + 1], float(c1[i]))[0] for i in range(3)])
    torch.testing.assert_close(got.squeeze(1), expected, **TOL)
    tangent = torch.linspace(-1, 1, x.numel(), dtype=x.dtype).view(x.shape)
    torch.testing.assert_close(
        jvp(lambda a: fused(a, y), (x,), (tangent,))[1],
        jvp(lambda a: traced(a, y), (x,), (tangent,))[1],
        **TOL,
    )
    with fwAD.dual_level():
        got = fwAD.unpack_dual(fused(fwAD.make_dual(x, tangent), y)).tangent
    torch.testing.assert_close(got, jvp(lambda a: traced(a, y), (x,), (tangent,))[1], **TOL)
    torch.testing.assert_close(
        grad(lambda a: fused(a, y).sum())(x), grad(lambda a: traced(a, y).sum())(x), **TOL
    )


# --- torch.compile ----------------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("case", list(CASES))
def test_compile_fullgraph_dynamic_forward_and_backward(case, api, dynamo):
    shape, kw = CASES[case]
    fn = _per_image(api, kw)

    def loss(a, b):
        return fn(a, b).sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True, dynamic=True)
    for grow in (0, 1, 3):  # other batch and spatial sizes: one dynamic graph, no specialisation
        bigger = (shape[0] + grow, shape[1], *(s + grow for s in shape[2:]))
        x, y = _images(bigger, seed=grow)
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        value = compiled(a, y)
        eager = loss(b, y)
        torch.testing.assert_close(value, eager, **TOL)
        torch.testing.assert_close(torch.autograd.grad(value, a)[0], torch.autograd.grad(eager, b)[0], **TOL)


@pytest.mark.parametrize("case", list(CASES))
def test_compile_with_mark_dynamic_on_batch_and_space(case, dynamo):
    """mark_dynamic on N and every spatial axis: no ConstraintViolationError (nothing specialises
    a marked size), and the graph is reused for other sizes."""
    shape, kw = CASES[case]

    def loss(a, b):
        return ssim_patch.ssim(a, b, data_range=1.0, **kw)

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    for grow in (0, 2):
        bigger = (shape[0] + grow, shape[1], *(s + grow for s in shape[2:]))
        x, y = _images(bigger, seed=grow)
        a = x.clone().requires_grad_()
        for dim in (0, *range(2, x.ndim)):
            dynamo.mark_dynamic(a, dim)
            dynamo.mark_dynamic(y, dim)
        value = compiled(a, y)
        torch.testing.assert_close(value, loss(x, y), **TOL)
        assert torch.isfinite(torch.autograd.grad(value, a)[0]).all()


#: Cap on one inductor child: several times what a cold compile takes on 2 loaded cores.
INDUCTOR_CAP_S = 900

INDUCTOR_CHILD = textwrap.dedent(
    """
    import json, warnings
    warnings.simplefilter("ignore")
    import torch
    import ssim_patch
    from torchmetrics.functional.image.ssim import structural_similarity_index_measure as f
    ssim_patch.apply()
    g = torch.Generator().manual_seed(0)
    diffs = []
    loss = lambda a, b: 1 - f(a, b, data_range=1.0)
    compiled = torch.compile(loss, fullgraph=True, dynamic=True)
    for shape in SHAPES:
        x = torch.rand(shape, generator=g)
        y = 0.6 * x + 0.4 * torch.rand(shape, generator=g)
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        out, eager = compiled(a, y), loss(b, y)
        ga, gb = torch.autograd.grad(out, a)[0], torch.autograd.grad(eager, b)[0]
        diffs.append(max((out - eager).abs().item(), ((ga - gb).abs().max() / gb.abs().max()).item()))
    print(json.dumps({"diff": max(diffs)}))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "shapes", [((2, 3, 24, 25), (2, 3, 29, 30)), ((1, 2, 12, 13, 14), (1, 2, 15, 16, 17))], ids=["2d", "3d"]
)
def test_inductor_dynamic_forward_and_backward(shapes):
    """Inductor (C++ on CPU) with dynamic shapes, forward and backward. Compiling takes one to two
    minutes on a cold cache on 2 cores (slow: CI runs it with -m slow); the cap is only there so a
    hung compiler fails instead of stalling the run."""
    env = unpatched_environ()
    try:
        out = subprocess.run(
            [sys.executable, "-c", f"SHAPES = {shapes!r}\n" + INDUCTOR_CHILD],
            capture_output=True,
            text=True,
            timeout=INDUCTOR_CAP_S,
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"inductor did not finish compiling and running within {INDUCTOR_CAP_S} s")
    assert out.returncode == 0, out.stderr[-4000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["diff"] < 1e-4, out.stdout


# --- traces that leave the process: torch.jit.trace, torch.export -----------------------------------


class _Loss(torch.nn.Module):
    """A module computing SSIM through patched torchmetrics."""

    def forward(self, a, b):
        return F.structural_similarity_index_measure(a, b, data_range=1.0)


def _reference_value(x, y):
    return ref.ssim(x.double(), y.double(), data_range=1.0)[0].mean()


def test_jit_trace_records_the_corrected_computation():
    """``torch.jit.trace`` of a module computing SSIM traces (it raised 'Tracing a list of bool
    type is currently not supported'), and the traced module computes the corrected SSIM of
    other images too."""
    x, y = (t.float() for t in _images((2, 3, 24, 25)))
    traced_module = torch.jit.trace(_Loss(), (x, y))
    other = (x.flip(-1), y)
    for a, b in ((x, y), other):
        torch.testing.assert_close(traced_module(a, b).double(), _reference_value(a, b), atol=2e-6, rtol=0)


LOADER = textwrap.dedent(
    """
    import json, sys
    assert "ssim_patch" not in sys.modules
    sys.modules["ssim_patch"] = None  # importing it would fail: the artifacts need nothing of it
    import torch
    folder, modes = sys.argv[1], sys.argv[2:]
    x, y = torch.load(folder + "/images.pt")
    values = {mode: torch.export.load(f"{folder}/{mode}.pt2").module()(x, y).item() for mode in modes}
    values["jit"] = torch.jit.load(folder + "/traced.pt")(x, y).item()
    print(json.dumps(values))
    """
)


def _export_modes() -> dict[str, dict[str, bool]]:
    """torch.export's modes on this torch: strict (dynamo traces; torch 2.1 on), and non-strict
    (the Python runs on fake tensors) where ``export`` takes ``strict=False``."""
    if importlib.util.find_spec("torch.export") is None:
        return {}
    export = importlib.import_module("torch.export").export
    modes = {"strict": {}}
    if "strict" in inspect.signature(export).parameters:
        modes["non-strict"] = {"strict": False}
    return modes


@pytest.mark.skipif(not _export_modes(), reason=f"torch {torch.__version__} has no torch.export")
def test_exported_and_traced_programs_load_where_ssim_patch_is_not(tmp_path):
    """Under ``torch.export`` (strict and, where torch has it, non-strict) and ``torch.jit.trace``
    the computation is recorded as aten ops (the traced route): the saved programs load and run in
    a process that cannot import ssim_patch, with the corrected value. (The exported program held
    ``ssim_patch::similarity`` and did not load there; on torch 2.4, which has no
    ``torch.compiler.is_exporting``, non-strict export held it, strict export failed on a graph
    break, and this test skipped.)"""
    x, y = (t.float() for t in _images((2, 3, 24, 25)))
    modes = _export_modes()
    for mode, options in modes.items():
        exported = torch.export.export(_Loss(), (x, y), **options)
        targets = {node.target for node in exported.graph.nodes if node.op == "call_function"}
        others = {t for t in targets if t is not operator.getitem and getattr(t, "namespace", None) != "aten"}
        assert not others, (mode, sorted(map(str, others)))
        torch.export.save(exported, str(tmp_path / f"{mode}.pt2"))
    torch.jit.trace(_Loss(), (x, y)).save(str(tmp_path / "traced.pt"))
    a, b = x.flip(-1).contiguous(), y
    torch.save((a, b), str(tmp_path / "images.pt"))
    out = subprocess.run(
        [sys.executable, "-c", LOADER, str(tmp_path), *modes],
        capture_output=True,
        text=True,
        timeout=240,
        env=unpatched_environ(),
    )
    assert out.returncode == 0, out.stderr[-4000:]
    values = json.loads(out.stdout.strip().splitlines()[-1])
    expected = _reference_value(a, b).item()
    assert set(values) == {*modes, "jit"}
    assert all(abs(v - expected) < 2e-6 for v in values.values()), (values, expected)
