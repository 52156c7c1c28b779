"""The cpu backend's two ways of filtering 2-D pieces (``backends/cpu.py``): matrix products with
band matrices (``BandBlur._folded`` for whole planes, ``BandBlur._banded`` for bands of rows, where
a thread's ops run single-threaded; the dense path of small calls is kept out) and shifted
multiply-adds (else), each against the float64 reference: values and gradients of every output,
windows whose block is wider than the default, of one tap, "valid" windows, widths that are and
are not a multiple of the block; a NaN stays in its image (a product's zero weights spread it
through a block); identical images give exactly 1 and a gradient of exactly 0."""

from __future__ import annotations

import functools
import math

import pytest
import torch

import ssim_patch
from ssim_patch import backends
from ssim_patch.backends import cpu
from tests.helpers import reference_torch as ref
from tests.helpers.flat_images import image_pair
from tests.helpers.gradients import within

REL = 1e-10  # float64, relative to the largest entry of the reference

#: (shape, window): the default window on widths (12, 22, 41) below, at and past a multiple of the banded
#: path's block (its padded row is 22 + 10 = 32 wide), several planes a piece; a block wider than 16
#: (23 taps); one tap; an anisotropic uniform window; the folded path's blocks of 32 at both edges and
#: between; the fewest rows.
CASES = {
    "gauss-narrow": ((2, 3, 13, 12), {"sigma": 1.5}),
    "gauss-block-wide": ((3, 2, 18, 22), {"sigma": 1.5}),
    "gauss-wide-rows": ((1, 2, 70, 41), {"sigma": 1.5}),
    "23-taps": ((1, 2, 30, 27), {"sigma": 3.0}),
    "1-tap": ((2, 1, 9, 17), {"sigma": 0.1}),
    "uniform-3x7": ((2, 2, 35, 19), {"gaussian_kernel": False, "kernel_size": (3, 7)}),
    # blocks of 32 output columns and rows at both edges and between them; the fewest rows a
    # reflect pad of 5 allows
    "interior-blocks": ((1, 1, 70, 75), {"sigma": 1.5}),
    "fewest-rows": ((2, 1, 6, 40), {"sigma": 1.5}),
}
#: (case, padding): "valid" padding needs a whole window, which the fewest rows are too short for
CASES_PADDINGS = [
    (case, padding)
    for case in CASES
    for padding in ("same", "valid")
    if not (padding == "valid" and case == "fewest-rows")
]
OUTPUTS = {"ssim": {}, "map": {"return_full_image": True}, "cs": {"return_contrast_sensitivity": True}}


@pytest.fixture(params=["products", "shifts"])
def way(request, monkeypatch):
    monkeypatch.setenv(backends.ENV, "cpu")
    monkeypatch.setattr(cpu, "_products_here", lambda: request.param == "products")
    # the pieces, not the dense path small calls take
    monkeypatch.setattr(cpu._dense, "takes", lambda x, plan: False)
    return request.param


_close = functools.partial(within, rel=REL)


@pytest.mark.parametrize("output", list(OUTPUTS))
@pytest.mark.parametrize(("case", "padding"), CASES_PADDINGS)
def test_both_ways_give_the_reference(case, output, padding, way):
    shape, kw = CASES[case]
    x, y = image_pair(shape)
    a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
    out = ssim_patch.ssim(a, b, data_range=1.0, padding=padding, reduction="none", **kw, **OUTPUTS[output])
    ra, rb = x.clone().requires_grad_(), y.clone().requires_grad_()
    per_image, maps, cs = ref.ssim(ra, rb, data_range=1.0, padding=padding, **kw)
    expected = {"ssim": (per_image,), "map": (per_image, maps), "cs": (per_image, cs)}[output]
    got = out if isinstance(out, tuple) else (out,)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        _close(g.detach(), e.detach())
    weights = [torch.linspace(0.5, 1.5, e.numel(), dtype=torch.float64).view(e.shape) for e in expected]
    grads = torch.autograd.grad(sum((g * w).sum() for g, w in zip(got, weights)), (a, b))
    ref_grads = torch.autograd.grad(sum((e * w).sum() for e, w in zip(expected, weights)), (ra, rb))
    for g, e in zip(grads, ref_grads):
        _close(g, e)


@pytest.mark.parametrize(("case", "padding"), CASES_PADDINGS)
def test_a_backward_by_bands_of_rows_gives_the_reference(case, padding, way, monkeypatch):
    """Planes larger than a piece (here 150 samples): the backward of a loss goes by bands of 8
    rows, each with the pad rows that fold onto it near an edge."""
    monkeypatch.setattr(cpu, "_CHUNK", 150)
    shape, kw = CASES[case]
    x, y = image_pair(shape, seed=7)
    a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
    out = ssim_patch.ssim(a, b, data_range=1.0, padding=padding, reduction="none", **kw)
    ra, rb = x.clone().requires_grad_(), y.clone().requires_grad_()
    expected = ref.ssim(ra, rb, data_range=1.0, padding=padding, **kw)[0]
    _close(out.detach(), expected.detach())
    weights = torch.linspace(0.5, 1.5, out.numel(), dtype=torch.float64)
    for g, e in zip(
        torch.autograd.grad((out * weights).sum(), (a, b)),
        torch.autograd.grad((expected * weights).sum(), (ra, rb)),
    ):
        _close(g, e)


@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize(
    "where", [(0, 0), (-1, -1), (0, -1), (-1, 0)], ids=["first", "last", "row-end", "row-start"]
)
def test_a_bad_pixel_stays_in_its_image(where, bad, way):
    """Planes lie side by side in a piece, a row's end next to the next plane's row: a bad pixel at
    a corner of image 1 leaves images 0, 2 and 3 (and their gradients) as they are without it."""
    shape = (4, 2, 18, 22)  # eight planes in one piece, side by side in every product
    x, y = image_pair(shape, seed=5)
    bx = x.clone()
    bx[1, 1, where[0], where[1]] = bad
    a = bx.clone().requires_grad_()
    out = ssim_patch.ssim(a, y, data_range=1.0, reduction="none")
    (grad,) = torch.autograd.grad(out.nansum(), a)
    assert torch.isnan(out[1])
    ra = x.clone().requires_grad_()
    per_image = ref.ssim(ra, y, data_range=1.0)[0]
    (ref_grad,) = torch.autograd.grad(per_image[[0, 2, 3]].sum(), ra)
    keep = [0, 2, 3]
    _close(out[keep].detach(), per_image[keep].detach())
    _close(grad[keep], ref_grad[keep])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", list(CASES))
def test_identical_images_give_one_and_a_gradient_of_exactly_zero(case, dtype, way):
    shape, kw = CASES[case]
    x = image_pair(shape, seed=3, dtype=dtype)[0]
    for output in OUTPUTS.values():
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        out = ssim_patch.ssim(a, b, data_range=1.0, reduction="none", **kw, **output)
        values = out if isinstance(out, tuple) else (out,)
        assert bool((values[0] == 1).all()), values[0]
        loss = sum(v.sum() for v in values)
        ga, gb = torch.autograd.grad(loss, (a, b))
        assert ga.abs().max().item() == 0.0 and gb.abs().max().item() == 0.0, output


@pytest.fixture
def medium_matmul_precision():
    """torch's "medium" float32 matmul precision, which Lightning suggests for GPUs: oneDNN may
    then multiply float32 in bfloat16 on CPUs that have it (as this project's CI machine does)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    yield
    torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 1, 200, 200)], ids=["pieces", "one-large-plane"])
def test_float32_stays_float32_under_medium_matmul_precision(shape, medium_matmul_precision):
    """The band products would have run in bfloat16: SSIM off by 9e-6 and its gradient by 2e-3 of
    its size on an AMX CPU. Float32 accuracy, as with the default precision."""
    x, y = image_pair(shape, seed=4)
    a = x.float().requires_grad_()
    got = ssim_patch.ssim(a, y.float(), data_range=1.0, reduction="none")
    got.sum().backward()
    b = x.clone().requires_grad_()
    want = ssim_patch.ssim(b, y, data_range=1.0, reduction="none")
    want.sum().backward()
    assert float((got.detach().double() - want.detach()).abs().max()) < 1e-6
    assert float((a.grad.double() - b.grad).abs().max()) < 1e-5 * float(b.grad.abs().max())
