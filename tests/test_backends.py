"""The backends (``ssim_patch.backends``): every backend that runs on CPU tensors (cpu, its dense
path and its pieces each forced; conv forced on CPU; traced) against the float64 autograd
reference in reference_torch.py, values and gradients of every output, 2-D and 3-D; identical
images give a gradient of exactly 0 on each; ``SSIM_PATCH_BACKEND`` and its errors; what auto
picks."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import ssim_patch
from ssim_patch import _filters, backends
from ssim_patch.backends import _custom_op, _dense, _route, conv, cpu
from ssim_patch.backends._protocol import Needs, Plan
from tests.helpers import reference_torch as ref
from tests.helpers.autocast import assert_autocast_changes_nothing
from tests.helpers.flat_images import image_pair
from tests.helpers.gradients import within

#: The backends that run on CPU tensors.
CPU_BACKENDS = ["cpu", "conv", "traced"]
REL = 1e-10  # float64, relative to the largest entry of the reference

WINDOWS = {
    "2d-gauss": ((2, 3, 21, 18), dict(sigma=1.5)),
    "2d-uniform-aniso": ((1, 2, 16, 13), dict(gaussian_kernel=False, kernel_size=(3, 7))),
    "3d-gauss-aniso": ((2, 1, 9, 11, 12), dict(sigma=(0.6, 1.0, 1.3))),
    "3d-uniform": ((1, 2, 8, 9, 7), dict(gaussian_kernel=False, kernel_size=3)),
}
OUTPUTS = {"ssim": {}, "map": {"return_full_image": True}, "cs": {"return_contrast_sensitivity": True}}


@pytest.fixture(params=["custom-op", "function"])
def route(request, monkeypatch):
    """The torch.library custom op (torch >= 2.4; forced for eager calls too), and the
    autograd.Function that plain eager calls and an older torch take."""
    if request.param == "function":
        monkeypatch.setattr(_route, "CUSTOM_OP", False)
    elif not _custom_op.AVAILABLE:
        pytest.skip("this torch has no torch.library.custom_op")
    else:
        monkeypatch.setattr(_route, "through_custom_op", lambda x: True)
    return request.param


#: The cpu backend's two paths, each forced on every call: the dense matrices of small calls
#: (``_dense.MAX_WORK`` unbounded) and the pieces (0).
CPU_PATHS = {"cpu-dense": 1 << 62, "cpu-pieces": 0}


@pytest.fixture(params=[*CPU_PATHS, *CPU_BACKENDS[1:]])
def backend(request, route, monkeypatch):
    name = request.param
    if name in CPU_PATHS:
        monkeypatch.setattr(_dense, "MAX_WORK", CPU_PATHS[name])
        name = "cpu"
    monkeypatch.setenv(backends.ENV, name)
    return name


_pair = image_pair  # a float64 noise image and a correlated copy
_close = functools.partial(within, rel=REL)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("output", list(OUTPUTS))
@pytest.mark.parametrize("window", list(WINDOWS))
def test_values_and_gradients_match_the_reference(window, output, padding, backend):
    shape, kw = WINDOWS[window]
    x, y = _pair(shape)
    r = torch.tensor(1.3, dtype=torch.float64)
    a, b, rg = x.clone().requires_grad_(), y.clone().requires_grad_(), r.clone().requires_grad_()
    out = ssim_patch.ssim(a, b, data_range=rg, padding=padding, reduction="none", **kw, **OUTPUTS[output])
    ra, rb, rr = x.clone().requires_grad_(), y.clone().requires_grad_(), r.clone().requires_grad_()
    per_image, maps, cs = ref.ssim(ra, rb, data_range=rr, padding=padding, **kw)
    expected = {"ssim": (per_image,), "map": (per_image, maps), "cs": (per_image, cs)}[output]
    got = out if isinstance(out, tuple) else (out,)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == torch.float64
        _close(g.detach(), e.detach())
    weights = [torch.linspace(0.5, 1.5, e.numel(), dtype=torch.float64).view(e.shape) for e in expected]
    grads = torch.autograd.grad(sum((g * w).sum() for g, w in zip(got, weights)), (a, b, rg))
    ref_grads = torch.autograd.grad(sum((e * w).sum() for e, w in zip(expected, weights)), (ra, rb, rr))
    for g, e in zip(grads, ref_grads):
        _close(g, e)


@pytest.mark.parametrize("asked", ["x", "y"])
@pytest.mark.parametrize("window", list(WINDOWS))
def test_the_gradient_of_one_image_alone_matches_the_reference(window, asked, backend):
    """A loss that asks one image's gradient (the backward then forms that image's shifted
    difference alone): x's, then y's, against the reference, as a weighted loss of the per-image
    SSIM and of 1 - SSIM."""
    shape, kw = WINDOWS[window]
    x, y = _pair(shape)
    for sign in (1.0, -1.0):
        images = [x.clone(), y.clone()]
        leaf = images[asked == "y"].requires_grad_()
        out = ssim_patch.ssim(*images, data_range=1.3, reduction="none", **kw)
        refs = [x.clone(), y.clone()]
        ref_leaf = refs[asked == "y"].requires_grad_()
        expected = ref.ssim(*refs, data_range=1.3, **kw)[0]
        w = sign * torch.linspace(0.5, 1.5, expected.numel(), dtype=torch.float64)
        (g,) = torch.autograd.grad((out * w).sum(), leaf)
        (e,) = torch.autograd.grad((expected * w).sum(), ref_leaf)
        _close(g, e)


SHAPES = [(1, 1, 16, 16), (2, 3, 23, 19), (1, 2, 40, 33), (1, 1, 7, 8, 9), (2, 2, 9, 11, 12)]


#: Where each backend applies ``W^T`` to its stack of adjoint maps (rows on the first axis).
ADJOINTS = {
    "cpu-dense": (_dense, "blur_adjoint"),
    "cpu-pieces": (cpu.BandBlur, "adjoint"),
    "conv": (conv, "conv_blur_adjoint"),
    "traced": (_filters, "blur_adjoint"),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_identical_images_give_exactly_zero_where_w_transpose_rounds_equal_rows_apart(
    dtype, backend, request, monkeypatch
):
    """A matrix product may round two equal rows of its input apart, by where they sit in it (MKL
    on AMD EPYC did, for the 414x19 product of a 2x3x23x19 float64 call: 1.1e-16 apart): ``W^T`` here
    scales row i of the stack by 1 + i 2^-20. The gradient of identical images stays exactly 0: no
    term of it takes the difference of ``W^T`` of two rows."""
    owner, name = ADJOINTS[request.node.callspec.params["backend"]]
    exact = getattr(owner, name)

    calls = []

    def apart(*args, **kwargs):
        out = exact(*args, **kwargs)
        calls.append(out.shape)
        rows = torch.arange(out.shape[0], dtype=out.dtype).view(-1, *[1] * (out.ndim - 1))
        return out * (1 + rows * 2.0**-20)

    monkeypatch.setattr(owner, name, apart)
    x = _pair((2, 3, 23, 19), seed=3, dtype=dtype)[0]
    for both in (False, True):
        preds = x.clone().requires_grad_()
        target = x.clone().requires_grad_(both)
        out = ssim_patch.ssim(preds, target, data_range=1.0, reduction="none")
        grads = torch.autograd.grad(out.sum(), [preds, target] if both else [preds])
        assert [g.abs().max().item() for g in grads] == [0.0] * len(grads), both
    assert calls, f"{name} was not called"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
@pytest.mark.parametrize("data_range", [None, 1.0])
def test_identical_images_give_a_gradient_of_exactly_zero(shape, dtype, data_range, backend):
    x = _pair(shape, seed=3, dtype=dtype)[0]
    for output in OUTPUTS.values():
        preds = x.clone().requires_grad_()
        out = ssim_patch.ssim(preds, x.clone(), data_range=data_range, reduction="none", **output)
        loss = sum(o.sum() for o in out) if isinstance(out, tuple) else out.sum()
        (g,) = torch.autograd.grad(loss, preds)
        assert g.abs().max().item() == 0.0, (output, g.abs().max().item())
        target = x.clone().requires_grad_()
        out = ssim_patch.ssim(x.clone(), target, data_range=data_range, reduction="none", **output)
        loss = sum(o.sum() for o in out) if isinstance(out, tuple) else out.sum()
        (g,) = torch.autograd.grad(loss, target)
        assert g.abs().max().item() == 0.0, (output, g.abs().max().item())
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        out = ssim_patch.ssim(a, b, data_range=data_range, reduction="none", **output)
        loss = sum(o.sum() for o in out) if isinstance(out, tuple) else out.sum()
        ga, gb = torch.autograd.grad(loss, (a, b))
        assert ga.abs().max().item() == 0.0 and gb.abs().max().item() == 0.0, output


def test_reduced_precision_is_computed_in_float32(backend):
    """float16 / bfloat16 images give what their float32 values give (the cast is the op's)."""
    x, y = _pair((2, 3, 20, 17), seed=4, dtype=torch.float16)
    for dtype in (torch.float16, torch.bfloat16):
        a, b = x.to(dtype), y.to(dtype)
        got = ssim_patch.ssim(a, b, data_range=1.0, reduction="none")
        want = ssim_patch.ssim(a.float(), b.float(), data_range=1.0, reduction="none")
        assert got.dtype == dtype
        assert torch.equal(got, want.to(dtype))
        pa = a.clone().requires_grad_()
        ssim_patch.ssim(pa, b, data_range=1.0).backward()
        assert pa.grad is not None and pa.grad.dtype == dtype


# --- SSIM_PATCH_BACKEND ------------------------------------------------------------------------


def _plan():
    taps = _filters.gaussian_taps(1.5, 11)
    return Plan(_filters.Blur((taps, taps), "same"))


@pytest.mark.parametrize(
    ("value", "name"), [("", "auto"), ("auto", "auto"), (" Conv ", "conv"), ("CPU", "cpu")]
)
def test_the_variable_names_a_backend(value, name, monkeypatch):
    monkeypatch.setenv(backends.ENV, value)
    assert backends.requested() == name


def test_unset_is_auto(monkeypatch):
    monkeypatch.delenv(backends.ENV, raising=False)
    assert backends.requested() == "auto"
    assert backends.choose(torch.empty(1, 1, 8, 8), _plan()).name == "cpu"


def test_an_unknown_name_raises_with_the_value_and_the_names(monkeypatch):
    monkeypatch.setenv(backends.ENV, "cuda")
    x = torch.rand(1, 1, 16, 16)
    with pytest.raises(ValueError, match=r"SSIM_PATCH_BACKEND='cuda' is not a backend") as info:
        ssim_patch.ssim(x, x)
    for name in backends.NAMES:
        assert name in str(info.value)


def test_a_forced_backend_that_cannot_run_the_call_says_why_and_what_can(monkeypatch):
    monkeypatch.setenv(backends.ENV, "cpu")
    x = torch.empty(1, 1, 16, 16, device="meta")
    with pytest.raises(RuntimeError) as info:
        ssim_patch.ssim(x, x, data_range=1.0)
    message = str(info.value)
    assert message.startswith(
        "SSIM_PATCH_BACKEND=cpu cannot compute SSIM of (1, 1, 16, 16) float32 images on meta"
    )
    assert "CPU tensors only" in message
    assert "Backends that can: " in message and "conv" in message and "traced" in message


def test_auto_picks_cpu_for_cpu_tensors_and_conv_for_other_devices(monkeypatch):
    monkeypatch.setenv(backends.ENV, "auto")
    plan = _plan()
    assert backends.choose(torch.empty(2, 3, 16, 16), plan).name == "cpu"
    assert backends.choose(torch.empty(2, 3, 16, 16, dtype=torch.float64), plan).name == "cpu"
    assert backends.choose(torch.empty(2, 3, 8, 16, 16, device="meta"), plan).name == "conv"
    assert backends.choose(torch.empty(2, 3, 16, 16, device="meta"), plan).name == "conv"


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_a_forced_backend_runs_every_call(name, monkeypatch):
    monkeypatch.setenv(backends.ENV, name)
    assert backends.choose(torch.empty(2, 3, 16, 16), _plan()).name == name


@pytest.mark.parametrize("cpu_path", list(CPU_PATHS))
def test_every_backend_keeps_what_kept_like_says(cpu_path, monkeypatch):
    """The shapes and dtypes a fake implementation gets from ``kept_like`` are those kept."""
    monkeypatch.setattr(_dense, "MAX_WORK", CPU_PATHS[cpu_path])
    x, y = _pair((2, 3, 12, 10), dtype=torch.float32)
    k = ssim_patch.backends._dtypes.constants(1e-4, 9e-4, _plan(), x)
    for name in CPU_BACKENDS:
        be = backends.load(name)
        assert not isinstance(be, str)
        for output in ("ssim", "map", "cs"):
            taps = _filters.uniform_taps(3)
            plan = Plan(_filters.Blur((taps, taps), "valid"), output=output)  # type: ignore[arg-type]
            for keep in (Needs(True, False, False, False), Needs(True, True, True, True)):
                _, _, kept = be.forward(x, y, k, plan, keep)
                assert kept is not None
                like = be.kept_like(x, plan, keep)
                assert [(t.shape, t.dtype) for t in kept] == [(t.shape, t.dtype) for t in like], (
                    name,
                    output,
                )


def test_no_fake_tensor_warning_from_the_cpu_backend(monkeypatch):
    """The CPU backend's filter cache is not keyed on a fake tensor's address (a warning now, an
    error in a later torch)."""
    monkeypatch.setenv(backends.ENV, "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with FakeTensorMode():
            x = torch.empty(2, 3, 32, 32, requires_grad=True)
            ssim_patch.ssim(x, torch.empty(2, 3, 32, 32), data_range=1.0).backward()


# --- where the backend in use is reported ------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "backend", "line"),
    [
        ("", "auto", "auto (CPU: cpu, CUDA: "),
        ("conv", "conv", "conv (forced by SSIM_PATCH_BACKEND)"),
        ("nope", "invalid SSIM_PATCH_BACKEND='nope'", "invalid SSIM_PATCH_BACKEND='nope'"),
    ],
)
def test_status_check_and_header_report_the_backend(value, backend, line, monkeypatch):
    from ssim_patch import _selfcheck, pytest_plugin

    monkeypatch.setenv(backends.ENV, value)
    report = ssim_patch.status()
    assert report.backend == backend
    if backend == "auto":
        picks = dict(report.backend_for)
        assert picks["cpu"] == "cpu" and picks["cuda"] in ("triton", "conv")
    elif backend == "conv":
        assert report.backend_for == (("cpu", "conv"), ("cuda", "conv"))
    text = _selfcheck.render(
        _selfcheck.Report(
            "0", torchmetrics="1.9.0", backend=report.backend, backend_for=dict(report.backend_for)
        )
    )
    assert f"\nbackend: {line}" in text
    header = pytest_plugin._describe(report)
    assert f"; backend {line}" in header


class _ReadsHalf:
    """The cpu backend, declared to read float16 / bfloat16 itself: records the dtype it is given."""

    name = "cpu"
    reads_reduced_precision = True

    def __init__(self):
        from ssim_patch.backends import cpu

        self.inner, self.seen = cpu.BACKEND, []

    def unsupported(self, x, plan):
        return self.inner.unsupported(x, plan)

    def forward(self, x, y, k, plan, keep):
        self.seen.append(x.dtype)
        return self.inner.forward(x.float(), y.float(), k, plan, keep)

    def kept_like(self, x, plan, keep):
        return self.inner.kept_like(x, plan, keep)

    def backward(self, x, y, k, kept, g_image, g_extra, plan, needs):
        self.seen.append(x.dtype)
        return self.inner.backward(x.float(), y.float(), k, kept, g_image, g_extra, plan, needs)


@pytest.mark.parametrize("data_range", [None, 1.0, "tensor"])
def test_a_backend_that_reads_half_gets_the_images_as_they_are(data_range, route, monkeypatch):
    """No float32 copy on the way (neither engine nor op) for a backend that reads half itself;
    the numbers are those of the float32 route, the gradient comes back in the images' dtype."""
    monkeypatch.setenv(backends.ENV, "cpu")
    x, y = _pair((2, 3, 20, 17), seed=5, dtype=torch.float16)
    r = torch.tensor(1.0) if data_range == "tensor" else data_range
    want = ssim_patch.ssim(x, y, data_range=r, reduction="none", return_contrast_sensitivity=True)
    pa = x.clone().requires_grad_()
    ssim_patch.ssim(pa, y, data_range=r).backward()
    reader = _ReadsHalf()
    monkeypatch.setitem(backends._LOADED, "cpu", reader)
    got = ssim_patch.ssim(x, y, data_range=r, reduction="none", return_contrast_sensitivity=True)
    assert reader.seen == [torch.float16]
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    pb = x.clone().requires_grad_()
    ssim_patch.ssim(pb, y, data_range=r).backward()
    assert reader.seen == [torch.float16] * 3
    assert pb.grad is not None and pb.grad.dtype == torch.float16 and torch.equal(pb.grad, pa.grad)


def test_the_variable_holds_for_the_whole_process():
    """Set before the program starts: every call of that process uses it (and a name that is not
    a backend is an error at the next call)."""
    import subprocess
    import sys

    from tests.helpers.fresh_interpreter import unpatched_environ

    code = (
        "import os, torch, ssim_patch\n"
        "from ssim_patch import backends\n"
        "x = torch.rand(1, 1, 16, 16)\n"
        "print(backends.choose(x, None).name, ssim_patch.status().backend)\n"
        "ssim_patch.ssim(x, x)\n"
        "os.environ['SSIM_PATCH_BACKEND'] = 'fast'\n"
        "ssim_patch.ssim(x, x)\n"
    )
    env = dict(unpatched_environ(), **{backends.ENV: "conv"})
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["conv", "conv"], done.stderr[-2000:]
    assert done.returncode != 0 and "ValueError: SSIM_PATCH_BACKEND='fast' is not a backend" in done.stderr


def test_a_backend_that_does_not_load_is_named_with_the_reason(monkeypatch):
    monkeypatch.setitem(backends._LOADED, "triton", "it does not load here (RuntimeError: 0 active drivers)")
    monkeypatch.setenv(backends.ENV, "triton")
    x = torch.rand(1, 1, 16, 16)
    with pytest.raises(RuntimeError) as info:
        ssim_patch.ssim(x, x)
    assert str(info.value) == (
        "SSIM_PATCH_BACKEND=triton cannot compute SSIM of (1, 1, 16, 16) float32 images on cpu: it does "
        "not load here (RuntimeError: 0 active drivers). Backends that can: conv, cpu, traced (or unset "
        "SSIM_PATCH_BACKEND for auto)."
    )


@pytest.mark.parametrize("shape", [(1, 1, 16, 16), (2, 3, 23, 19)], ids=["16x16", "2x3x23x19"])
def test_cpu_autocast_changes_no_number(shape, backend):
    """Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (a training loop's mixed precision)
    the float32 values and gradients are those without it: the dense path's matrix products and
    the conv backend's convolutions, which autocast would run in bfloat16 (an SSIM off by 1e-3,
    gradients by 1%), run in float32."""
    x, y = (t.float() for t in _pair(shape, seed=7))
    assert_autocast_changes_nothing(x, y, "cpu", torch.bfloat16)
