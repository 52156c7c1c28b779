"""SSIM as a loss: the gradient is the exact derivative of the corrected formula (the float64
autograd reference in reference_torch.py), on degenerate pairs too, through every input."""

from __future__ import annotations

import importlib

import pytest
import torch

import ssim_patch
from ssim_patch import ssim
from tests.helpers import patch_state
from tests.helpers import reference_torch as ref
from tests.helpers.gradients import PAIRS, assert_gradient, random_images

F = importlib.import_module("torchmetrics.functional.image.ssim")
WINDOWS = {
    "gauss": ((2, 3, 20, 22), dict(sigma=1.5)),
    "gauss-aniso": ((2, 2, 19, 23), dict(sigma=(0.8, 1.6))),
    "uniform": ((2, 2, 18, 17), dict(gaussian_kernel=False, kernel_size=7)),
    "uniform-aniso": ((1, 3, 16, 15), dict(gaussian_kernel=False, kernel_size=(3, 5))),
    "3d-gauss": ((1, 2, 9, 10, 11), dict(sigma=1.0)),
    "3d-aniso": ((2, 1, 12, 9, 11), dict(sigma=(0.6, 1.0, 1.3))),
    "3d-uniform": ((1, 2, 8, 9, 7), dict(gaussian_kernel=False, kernel_size=(3, 5, 3))),
}


def _grads(fn, x, y, weights):
    x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
    return torch.autograd.grad((fn(x, y) * weights).sum(), (x, y))


@pytest.fixture(params=["fused", "device-path"])
def path(request, monkeypatch):
    """The fused CPU path, and the non-CPU (convolution) path forced on CPU tensors."""
    monkeypatch.setenv("SSIM_PATCH_BACKEND", "conv" if request.param == "device-path" else "cpu")
    return request.param


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("window", list(WINDOWS))
@pytest.mark.parametrize("pair", list(PAIRS))
def test_gradient_is_the_exact_derivative(pair, window, padding, path):
    shape, kw = WINDOWS[window]
    target = random_images(shape)
    preds = PAIRS[pair](target)
    weights = torch.arange(1.0, shape[0] + 1, dtype=torch.float64)
    got = _grads(
        lambda a, b: ssim(a, b, data_range=1.0, padding=padding, reduction="none", **kw),
        preds,
        target,
        weights,
    )
    expected = _grads(
        lambda a, b: ref.ssim(a, b, data_range=1.0, padding=padding, **kw)[0], preds, target, weights
    )
    for g, e in zip(got, expected):
        assert_gradient(g, e)
    if pair == "identical":
        assert max(float(g.abs().max()) for g in got) <= 1e-15


@pytest.mark.parametrize("output", ["map", "cs"])
@pytest.mark.parametrize("window", ["gauss-aniso", "uniform", "3d-aniso"])
@pytest.mark.parametrize("pair", ["random", "identical", "flat", "anti-correlated"])
def test_gradient_of_the_map_and_the_contrast_term(pair, window, output, path):
    shape, kw = WINDOWS[window]
    target = random_images(shape, seed=1)
    preds = PAIRS[pair](target)
    if output == "map":
        weights = random_images(shape, seed=5)

        def ours(a, b):
            return ssim(a, b, data_range=1.0, reduction="none", return_full_image=True, **kw)[1]

        def theirs(a, b):
            return ref.ssim(a, b, data_range=1.0, **kw)[1]
    else:
        weights = torch.arange(1.0, shape[0] + 1, dtype=torch.float64)

        def ours(a, b):
            return ssim(a, b, data_range=1.0, reduction="none", return_contrast_sensitivity=True, **kw)[1]

        def theirs(a, b):
            return ref.ssim(a, b, data_range=1.0, **kw)[2]

    got = _grads(ours, preds, target, weights)
    for g, e in zip(got, _grads(theirs, preds, target, weights)):
        assert_gradient(g, e)
    if pair == "identical":
        assert max(float(g.abs().max()) for g in got) <= 1e-15


@pytest.mark.parametrize("both", [False, True], ids=["ssim", "ssim-and-cs"])
def test_gradient_of_two_outputs_at_once(both, path):
    """MS-SSIM asks for SSIM and cs together; a loss on both gets both gradients."""
    shape, kw = WINDOWS["gauss"]
    target = random_images(shape, seed=2)
    preds = PAIRS["random"](target)

    def loss(fn, a, b):
        sim, cs = fn(a, b)
        return (sim * torch.tensor([1.0, 2.0], dtype=torch.float64)).sum() + (3 * cs.sum() if both else 0)

    def ours(a, b):
        return ssim(a, b, data_range=1.0, reduction="none", return_contrast_sensitivity=True, **kw)

    def theirs(a, b):
        sim, _, cs = ref.ssim(a, b, data_range=1.0, **kw)
        return sim, cs

    p1, p2 = preds.clone().requires_grad_(), preds.clone().requires_grad_()
    (g,) = torch.autograd.grad(loss(ours, p1, target), p1)
    (e,) = torch.autograd.grad(loss(theirs, p2, target), p2)
    assert_gradient(g, e)


@pytest.mark.parametrize("window", ["gauss", "uniform-aniso", "3d-gauss"])
@pytest.mark.parametrize("pair", ["random", "affine", "half-flat"])
def test_data_range_none_gradient_flows_through_the_range(pair, window, path):
    """With data_range=None, L = max(max - min) of the images is a function of the pixels."""
    shape, kw = WINDOWS[window]
    target = random_images(shape, seed=3) * 3 - 1  # a range far from 1
    preds = PAIRS[pair](target)
    weights = torch.arange(1.0, shape[0] + 1, dtype=torch.float64)
    got = _grads(lambda a, b: ssim(a, b, reduction="none", **kw), preds, target, weights)
    expected = _grads(lambda a, b: ref.ssim(a, b, **kw)[0], preds, target, weights)
    for g, e in zip(got, expected):
        assert_gradient(g, e)


@pytest.mark.parametrize("window", ["gauss", "3d-aniso"])
def test_tensor_data_range_gets_its_gradient(window, path):
    shape, kw = WINDOWS[window]
    target = random_images(shape, seed=4)
    preds = PAIRS["random"](target)
    results = []
    for fn in (
        lambda a, b, r: ssim(a, b, data_range=r, reduction="none", **kw),
        lambda a, b, r: ref.ssim(a, b, data_range=r, **kw)[0],
    ):
        p, t = preds.clone().requires_grad_(), target.clone().requires_grad_()
        r = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
        results.append(torch.autograd.grad(fn(p, t, r).sum(), (p, t, r)))
    for g, e in zip(*results):
        assert_gradient(g, e)
    assert results[0][2].shape == ()


def test_range_tuple_gradient_stops_at_the_clamp():
    shape, kw = WINDOWS["gauss"]
    target = random_images(shape, seed=6) * 1.4 - 0.2  # some pixels outside (0, 1)
    preds = PAIRS["random"](target)
    got = _grads(lambda a, b: ssim(a, b, data_range=(0.0, 1.0), reduction="none", **kw), preds, target, 1.0)
    expected = _grads(lambda a, b: ref.ssim(a, b, data_range=(0.0, 1.0), **kw)[0], preds, target, 1.0)
    for g, e in zip(got, expected):
        assert_gradient(g, e)
    assert torch.all(got[0][(preds < 0) | (preds > 1)] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_data_range_whose_constants_underflow_is_a_clear_error(dtype):
    x, y = random_images((1, 1, 16, 16)).to(dtype), random_images((1, 1, 16, 16), seed=1).to(dtype)
    tiny = 1e-30 if dtype == torch.float32 else 1e-200
    with pytest.raises(ValueError, match=r"k1=0\.01 gives \(k1 \* data_range\)\^2 = .* which is 0 in float"):
        ssim(x * tiny, y * tiny, data_range=tiny)
    ssim(x * tiny, y * tiny, data_range=tiny, k1=0.0, k2=0.0)  # the constants asked to be 0: allowed
    with pytest.raises(ValueError, match="which is 0 in"):
        ssim(x, y, data_range=torch.tensor(tiny, dtype=torch.float64))


# --- side by side with unpatched torchmetrics -----------------------------------------------------


def _upstream_is_right() -> bool:
    from packaging.version import Version

    return Version(importlib.metadata.version("torchmetrics")) >= Version("1.4.2")


@pytest.mark.parametrize("pair", ["random", "identical", "affine", "anti-correlated", "flat"])
def test_patched_gradient_equals_unpatched_where_upstream_is_right(pair):
    """2-D Gaussian SSIM is right upstream from 1.4.2: patched and unpatched gradients agree."""
    if not _upstream_is_right():
        pytest.skip("2-D SSIM is right upstream from 1.4.2 on")
    target = random_images((2, 3, 48, 48), seed=7)
    preds = PAIRS[pair](target)
    grads = []
    for on in (False, True):
        with ssim_patch.patched() if on else patch_state.reverted():
            p = preds.clone().requires_grad_()
            (g,) = torch.autograd.grad(F.structural_similarity_index_measure(p, target, data_range=1.0), p)
            grads.append(g)
    assert_gradient(grads[1], grads[0])


@pytest.mark.parametrize("normalize", [None, "relu", "simple"])
def test_patched_ms_ssim_gradient_is_exact(normalize):
    if (
        not hasattr(F, "_multiscale_ssim_update")
        or "normalize" not in F._multiscale_ssim_update.__code__.co_varnames
    ):
        pytest.skip("this release composes MS-SSIM differently")
    target = random_images((2, 2, 64, 64), seed=8)
    preds = 0.8 * target + 0.2 * random_images(target.shape, seed=9)
    betas = (0.3, 0.4, 0.3)
    with ssim_patch.patched():
        p = preds.clone().requires_grad_()
        value = F.multiscale_structural_similarity_index_measure(
            p, target, data_range=1.0, betas=betas, normalize=normalize, reduction="none"
        )
        (g,) = torch.autograd.grad(value.sum(), p)
    p = preds.clone().requires_grad_()
    (e,) = torch.autograd.grad(ref.ms_ssim(p, target, betas, normalize=normalize, data_range=1.0).sum(), p)
    assert_gradient(g, e)


def _descend(loss_fn, start: torch.Tensor, steps: int, lr: float) -> float:
    x = start.clone().requires_grad_()
    opt = torch.optim.SGD([x], lr=lr)
    loss = float("inf")
    for _ in range(steps):
        opt.zero_grad()
        value = loss_fn(x)
        loss = value.item()
        if loss <= 1e-12:
            break
        value.backward()
        opt.step()
    return loss


def test_sgd_on_one_minus_ssim_reaches_zero_loss_like_unpatched():
    """Gradient descent from a perturbed copy converges to the target: the gradient vanishes only
    at the optimum (a detached guard used to stall it at 2e-8)."""
    target = random_images((1, 1, 32, 32), seed=10)
    start = target + 0.02 * (random_images(target.shape, seed=11) - 0.5)
    losses = {}
    for name in ("unpatched", "patched"):
        if name == "unpatched" and not _upstream_is_right():
            continue
        with ssim_patch.patched() if name == "patched" else patch_state.reverted():
            losses[name] = _descend(
                lambda x: 1 - F.structural_similarity_index_measure(x, target, data_range=1.0),
                start,
                steps=200,
                lr=30.0,
            )
    assert losses["patched"] <= 1e-12, losses
    if "unpatched" in losses:
        assert losses["unpatched"] <= 1e-12, losses
