"""Separable window filtering: the 1-D windows, the blur ``W`` and its adjoint ``W^T``.

``W`` reflect-pads every spatial axis by ``(k - 1) // 2`` ("same"; torch's reflect, the edge sample
is not repeated) or not at all ("valid"), then correlates each axis with its 1-D window, exactly
in the working precision (no matrix products).

:func:`blur` / :func:`blur_adjoint` are plain tensor ops (``F.pad`` and shifted multiply-adds):
autograd, every ``torch.func`` transform and ``torch.compile`` work through them (inductor fuses
the taps into one kernel). The backends' own implementations of ``W`` live with them
(``backends.cpu.BandBlur``, ``backends.conv.conv_blur``).

Tensors are ``(..., *spatial)``: the last ``len(blur.taps)`` axes are filtered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Mode = Literal["same", "valid"]


def gaussian_size(sigma: float) -> int:
    """Size of the Gaussian window torchmetrics uses for ``sigma``: ``2*int(3.5*sigma+0.5)+1``."""
    return 2 * int(3.5 * sigma + 0.5) + 1


def gaussian_taps(sigma: float, size: int) -> tuple[float, ...]:
    """``size`` taps of ``exp(-(d/sigma)^2/2)``, d the offsets from the centre, normalised (float64)."""
    raw = []
    for d in range(size):
        z = (d - (size - 1) / 2) / sigma
        raw.append(math.exp(-z * z / 2))  # not z ** 2: dynamo cannot trace a negative float's power
    total = math.fsum(raw)
    return tuple(v / total for v in raw)


def uniform_taps(size: int) -> tuple[float, ...]:
    """``size`` taps of ``1/size``."""
    return (1.0 / size,) * size


@dataclass(frozen=True)
class Blur:
    """``W``: one 1-D window per spatial axis (odd lengths), with "same" or "valid" padding."""

    taps: tuple[tuple[float, ...], ...]
    padding: Mode

    @property
    def pads(self) -> tuple[int, ...]:
        return tuple((len(t) - 1) // 2 if self.padding == "same" else 0 for t in self.taps)

    def out_size(self, sizes: tuple[int, ...]) -> tuple[int, ...]:
        """Spatial size of ``W``'s output for an input of spatial size ``sizes``."""
        if self.padding == "same":
            return tuple(sizes)
        return tuple(n - len(t) + 1 for n, t in zip(sizes, self.taps))


# --- plain tensor ops: differentiable, transformable, compilable --------------------------------


def _pad_spec(ndim: int, dim: int, before: int, after: int) -> list[int]:
    """``F.pad``'s list for padding axis ``dim`` of an ``ndim``-d tensor."""
    return [0, 0] * (ndim - 1 - dim) + [before, after]


def reflect_pad(t: Tensor, pads: tuple[int, ...]) -> Tensor:
    """Reflect-pad the last ``len(pads)`` axes of ``t`` by ``pads[i]`` on both sides."""
    if not any(pads):
        return t
    flat: list[int] = []
    for pad in reversed(pads):
        flat += [pad, pad]
    nd = len(pads)
    spatial = t.shape[t.ndim - nd :]
    padded = F.pad(t.reshape(-1, *spatial), flat, mode="reflect")
    return padded.reshape(*t.shape[: t.ndim - nd], *padded.shape[1:])


def _correlate(t: Tensor, dim: int, taps: tuple[float, ...]) -> Tensor:
    m = t.shape[dim] - len(taps) + 1
    out = t.narrow(dim, 0, m) * taps[0]
    for j in range(1, len(taps)):
        out = torch.add(out, t.narrow(dim, j, m), alpha=taps[j])
    return out


def _fold_reflect(g: Tensor, dim: int, pad: int) -> Tensor:
    """The adjoint of reflect padding by ``pad`` along ``dim``: the pads folded back onto the edge."""
    if pad == 0:
        return g
    n = g.shape[dim] - 2 * pad
    left = g.narrow(dim, 0, pad).flip(dim)  # padded sample i is image sample pad - i
    right = g.narrow(dim, n + pad, pad).flip(dim)  # padded sample n + pad + j is n - 2 - j
    return (
        g.narrow(dim, pad, n)
        + F.pad(left, _pad_spec(g.ndim, dim, 1, n - 1 - pad))
        + F.pad(right, _pad_spec(g.ndim, dim, n - 1 - pad, 1))
    )


def blur(t: Tensor, blur: Blur) -> Tensor:
    """``W t`` in plain tensor ops."""
    nd = len(blur.taps)
    t = reflect_pad(t, blur.pads)
    for i, taps in enumerate(blur.taps):
        t = _correlate(t, t.ndim - nd + i, taps)
    return t


def blur_adjoint(g: Tensor, blur: Blur) -> Tensor:
    """``W^T g`` in plain tensor ops: each window spread back, then the reflect pads folded."""
    nd = len(blur.taps)
    for i in reversed(range(nd)):
        dim, k = g.ndim - nd + i, len(blur.taps[i])
        g = _correlate(F.pad(g, _pad_spec(g.ndim, dim, k - 1, k - 1)), dim, blur.taps[i][::-1])
    for i, pad in enumerate(blur.pads):
        g = _fold_reflect(g, g.ndim - nd + i, pad)
    return g
