"""What is measured: image shapes, the two passes (metric and loss), and the inputs."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch import Tensor

Shape = tuple[int, ...]

CPU_SHAPES: tuple[Shape, ...] = ((8, 3, 256, 256), (1, 1, 1024, 1024), (32, 1, 64, 64), (2, 1, 64, 64, 64))
CUDA_SHAPES: tuple[Shape, ...] = ((16, 3, 512, 512), *CPU_SHAPES)
QUICK_SHAPES: tuple[Shape, ...] = ((2, 3, 32, 32), (2, 1, 16, 16, 16))
#: The shapes of the launch/byte floor (counted on ``device="meta"``).
COUNT_SHAPES: tuple[Shape, ...] = ((16, 3, 512, 512), (32, 1, 64, 64), (2, 1, 64, 64, 64))
#: The shapes ``gpu_check.py`` times on a GPU.
GPU_CHECK_SHAPES: tuple[Shape, ...] = ((16, 3, 512, 512), (5, 3, 1080, 1920), (2, 1, 96, 96, 96))

#: ``forward``: the metric under ``torch.no_grad()``; ``backward``: SSIM as a loss,
#: ``preds.requires_grad_()`` and ``(1 - ssim).backward()``.
MODES = ("forward", "backward")
MODE_LABELS = {"forward": "fwd", "backward": "fwd+bwd"}


@dataclass(frozen=True)
class Case:
    """One measurement: a device, an input shape and a pass (``forward`` or ``backward``)."""

    device: str
    shape: Shape
    mode: str

    @property
    def key(self) -> str:
        """``device|shape|mode``, unique per case (a JSON-safe dictionary key)."""
        return f"{self.device}|{shape_text(self.shape)}|{self.mode}"


def shape_text(shape: Shape) -> str:
    """``(8, 3, 256, 256)`` -> ``"8x3x256x256"``."""
    return "x".join(str(n) for n in shape)


def parse_shape(text: str) -> Shape:
    """``"8x3x256x256"`` -> ``(8, 3, 256, 256)``; 4-D (2-D images) or 5-D (3-D volumes)."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: write it like 8x3x256x256") from None
    if len(shape) not in (4, 5) or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: need N x C x H x W or N x C x D x H x W")
    return shape


def make_inputs(case: Case) -> tuple[Tensor, Tensor]:
    """Uniform noise and a noisy copy of it, float32, on the case's device (fixed seed).

    On ``meta`` the tensors have no data (nothing to generate); ``preds`` requires grad for
    ``backward``.
    """
    if case.device == "meta":
        x = torch.empty(case.shape, device="meta")
        y = torch.empty(case.shape, device="meta")
    else:
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(case.shape, generator=gen, dtype=torch.float32)
        y = (x + 0.1 * torch.randn(case.shape, generator=gen, dtype=torch.float32)).clamp_(0.0, 1.0)
        x, y = x.to(case.device), y.to(case.device)
    if case.mode == "backward":
        x.requires_grad_(True)
    return x, y
