"""The conv backend (convolutions over the whole stack of maps, the non-CPU route), forced on CPU
tensors with ``SSIM_PATCH_BACKEND=conv``: the same numbers as the cpu backend, and no host sync
anywhere, checked on ``meta`` tensors and under ``FakeTensorMode`` (any read of a tensor's value
raises there)."""

from __future__ import annotations

import importlib
import itertools

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import ssim_patch
from ssim_patch.backends import conv
from tests.helpers.torch_support import fake_cuda_unsupported

F = importlib.import_module("torchmetrics.functional.image.ssim")

WINDOWS = [
    ((2, 3, 23, 19), dict(sigma=1.5)),
    ((1, 2, 30, 17), dict(sigma=(0.7, 2.0))),
    ((2, 1, 16, 18), dict(gaussian_kernel=False, kernel_size=(5, 3))),
    ((1, 2, 9, 11, 12), dict(sigma=(0.6, 1.0, 1.3))),
    ((2, 1, 8, 7, 9), dict(gaussian_kernel=False, kernel_size=3)),
]
RANGES = [None, 1.0, (0.1, 0.9), "tensor"]
OUTPUTS = [{}, {"return_full_image": True}, {"return_contrast_sensitivity": True}]


def _pair(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    return x, 0.6 * x + 0.4 * torch.rand(shape, generator=g, dtype=torch.float64)


def _range(value, like):
    return torch.tensor(1.3, dtype=torch.float64, device=like.device) if value == "tensor" else value


def _both_backends(monkeypatch, fn):
    results = []
    for backend in ("cpu", "conv"):
        monkeypatch.setenv("SSIM_PATCH_BACKEND", backend)
        results.append(fn())
    return results


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize(
    ("shape", "window"), WINDOWS, ids=[f"{len(s) - 2}d-{i}" for i, (s, _) in enumerate(WINDOWS)]
)
def test_conv_backend_equals_cpu_backend_in_float64(shape, window, padding, monkeypatch):
    x, y = _pair(shape)
    for data_range, output in itertools.product(RANGES, OUTPUTS):
        kw = dict(window, padding=padding, data_range=_range(data_range, x), reduction="none", **output)

        def forward_and_backward(kw=kw):
            a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
            out = ssim_patch.ssim(a, b, **kw)
            values = out if isinstance(out, tuple) else (out,)
            loss = sum(
                (v * torch.linspace(0.5, 1.5, v.numel(), dtype=v.dtype).view(v.shape)).sum() for v in values
            )
            return (*values, *torch.autograd.grad(loss, (a, b)))

        cpu, device = _both_backends(monkeypatch, forward_and_backward)
        for c, d in zip(cpu, device):
            torch.testing.assert_close(d, c, atol=1e-12, rtol=0)


# --- no host sync -------------------------------------------------------------------------------------


def _calls(device, data_range):
    """What a user runs: the engine, patched torchmetrics' functional SSIM and MS-SSIM, forward
    and backward."""
    shape = (2, 3, 64, 64)
    x = torch.empty(shape, device=device).requires_grad_()
    y = torch.empty(shape, device=device)
    r = torch.tensor(1.0, device=device) if data_range == "tensor" else data_range
    yield lambda: ssim_patch.ssim(x, y, data_range=r)
    yield lambda: ssim_patch.ssim(x, y, data_range=r, reduction="none", return_full_image=True)[1].sum()
    yield lambda: F.structural_similarity_index_measure(x, y, data_range=r)
    yield lambda: F.multiscale_structural_similarity_index_measure(
        x, y, data_range=r, betas=(0.5, 0.5), kernel_size=5, sigma=1.0
    )


@pytest.mark.parametrize("data_range", [None, 1.0, (0.0, 1.0), "tensor"])
def test_no_value_is_read_on_meta_tensors(data_range, patch_applied):
    """Meta tensors have no values: any host read (item, bool, tolist) raises."""
    for call in _calls("meta", data_range):
        loss = call()
        assert loss.device.type == "meta"
        loss.backward()


@pytest.mark.parametrize("backend", ["cpu", "conv", "traced"])
@pytest.mark.parametrize("data_range", [None, 1.0, (0.0, 1.0), "tensor"])
def test_no_value_is_read_under_fake_tensor_mode(data_range, backend, patch_applied, monkeypatch):
    monkeypatch.setenv("SSIM_PATCH_BACKEND", backend)
    with FakeTensorMode():
        for call in _calls("cpu", data_range):
            call().backward()


def test_fake_cuda_tensors_take_the_conv_backend_without_a_read(patch_applied, monkeypatch):
    """Fake CUDA tensors (no GPU needed): the conv backend and its TF32 guard."""
    if fake_cuda_unsupported():
        pytest.skip(fake_cuda_unsupported())
    monkeypatch.setenv("SSIM_PATCH_BACKEND", "conv")
    with FakeTensorMode():
        x = torch.empty(2, 3, 32, 32, device="cuda")
        for data_range in (None, 1.0, torch.tensor(1.0, device="cuda")):
            out = ssim_patch.ssim(
                x, x, data_range=data_range, reduction="none", return_contrast_sensitivity=True
            )
            assert out[0].device.type == "cuda" and out[1].shape == (2,)


def test_fake_weights_are_not_kept():
    """Window weights made under a fake mode are not cached for later real calls."""
    from ssim_patch import _filters

    blur = _filters.Blur((_filters.uniform_taps(3), _filters.uniform_taps(5)), "same")
    with FakeTensorMode():
        conv.conv_blur(torch.empty(1, 1, 8, 8, dtype=torch.float64), blur)
    real = conv.conv_blur(torch.ones(1, 1, 8, 8, dtype=torch.float64), blur)  # valid windows
    assert type(real) is torch.Tensor
    torch.testing.assert_close(real, torch.ones(1, 1, 6, 4, dtype=torch.float64), atol=1e-15, rtol=0)
