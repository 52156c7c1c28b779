"""One check for the autocast tests (CPU in test_backends.py, CUDA in test_gpu.py): a patched
SSIM's values, map and gradient under ``torch.autocast`` are those without it."""

from __future__ import annotations

from typing import Optional

import torch

import ssim_patch


def _run(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    a = x.clone().requires_grad_()
    out = ssim_patch.ssim(a, y, data_range=1.0, reduction="none", return_full_image=True)
    (grad,) = torch.autograd.grad(out[0].sum() + out[1].mean(), a)
    return out[0].detach(), out[1].detach(), grad


def assert_autocast_changes_nothing(
    x: torch.Tensor, y: torch.Tensor, device_type: str, dtype: Optional[torch.dtype] = None
) -> None:
    """float32 images ``x``, ``y``: the same numbers (to float32's rounding) with autocast on."""
    plain = _run(x, y)
    with torch.autocast(device_type, dtype=dtype):
        mixed = _run(x, y)
    for p, m in zip(plain, mixed):
        assert m.dtype == torch.float32
        torch.testing.assert_close(m, p, rtol=1e-5, atol=1e-6)
