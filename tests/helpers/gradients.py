"""Image pairs and the gradient tolerance shared by tests/test_gradients.py (the installed release)
and tests/matrix/test_loss_gradients.py (every pinned release)."""

from __future__ import annotations

import torch

REL = 1e-8  # float64, relative to the largest entry of the reference gradient
ROUNDING = 1e-13  # float64 rounding of the reference's own autograd, where the gradient is ~0


def random_images(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64)


def _half_flat(t):
    out = t.clone()
    out[..., : t.shape[-1] // 2] = 0.4
    return out


PAIRS = {
    "random": lambda t: 0.7 * t + 0.3 * random_images(t.shape, seed=99),
    "identical": lambda t: t.clone(),
    "affine": lambda t: 0.5 * t + 0.2,
    "anti-correlated": lambda t: 1 - t,
    "flat": lambda t: torch.full_like(t, 0.4),
    "half-flat": _half_flat,
}


def assert_gradient(got: torch.Tensor, expected: torch.Tensor) -> None:
    scale = float(expected.abs().max())
    err = float((got - expected).abs().max())
    assert err <= REL * scale + ROUNDING, f"max error {err:.3g} against a gradient of size {scale:.3g}"


def within(got, expected, rel):
    """``got`` is ``expected`` to ``rel`` of the reference's largest entry (and float64 rounding)."""
    scale = float(expected.abs().max())
    err = float((got - expected).abs().max())
    assert err <= rel * scale + 1e-14, f"max error {err:.3g} against a size of {scale:.3g}"
