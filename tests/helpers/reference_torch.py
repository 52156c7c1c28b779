"""Independent float64 SSIM reference in torch, for gradients: written from the definition, shares
nothing with ssim_patch, and autograd differentiates it.

The window is the full N-D kernel (outer product of the 1-D windows), applied by one convolution
after reflect padding ("same") or over whole windows ("valid"). The formula is the textbook one in
the images' own moments, without guards, so its autograd gradient is the exact derivative of the
corrected SSIM wherever that is differentiable.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor


def _axes(v: Union[float, Sequence[float]], nd: int) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v] * nd


def gaussian_window(sigma: float, size: Optional[int] = None) -> Tensor:
    size = size if size is not None else 2 * int(3.5 * sigma + 0.5) + 1
    d = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-((d / sigma) ** 2) / 2)
    return w / w.sum()


def _kernel(windows: list[Tensor]) -> Tensor:
    kernel = windows[0]
    for w in windows[1:]:
        kernel = kernel[..., None] * w
    return kernel


def blur(a: Tensor, windows: list[Tensor], padding: str) -> Tensor:
    """Every spatial axis of ``a`` (N, C, *spatial) filtered with its window."""
    n, c, *spatial = a.shape
    planes = a.reshape(n * c, 1, *spatial)
    if padding == "same":
        pads = []
        for w in reversed(windows):
            pads += [(len(w) - 1) // 2] * 2
        planes = F.pad(planes, pads, mode="reflect")
    kernel = _kernel(windows).to(a)[None, None]
    out = (F.conv2d if len(spatial) == 2 else F.conv3d)(planes, kernel)
    return out.reshape(n, c, *out.shape[2:])


def windows_for(nd: int, gaussian_kernel: bool = True, sigma=1.5, kernel_size=11) -> list[Tensor]:
    if gaussian_kernel:
        return [gaussian_window(s) for s in _axes(sigma, nd)]
    return [torch.full((k,), 1.0 / k, dtype=torch.float64) for k in _axes(kernel_size, nd)]


def data_range_of(x: Tensor, y: Tensor, data_range) -> tuple[Tensor, Tensor, Union[float, Tensor]]:
    """(preds, target, L) as docs/semantics.md defines them; L is differentiable where it is a tensor."""
    if data_range is None:
        # Python's max(), as torchmetrics computes L: on a tie, preds' range (and its gradient).
        big = max(x.max() - x.min(), y.max() - y.min())
        return x, y, torch.where(big > 0, big, torch.ones_like(big))
    if isinstance(data_range, tuple):
        lo, hi = data_range
        return x.clamp(lo, hi), y.clamp(lo, hi), hi - lo
    return x, y, data_range


def ssim_maps(
    x: Tensor,
    y: Tensor,
    gaussian_kernel: bool = True,
    sigma=1.5,
    kernel_size=11,
    data_range=None,
    k1: float = 0.01,
    k2: float = 0.03,
    padding: str = "same",
) -> tuple[Tensor, Tensor]:
    """The SSIM map and the contrast-sensitivity map, (N, C, *out)."""
    windows = windows_for(x.ndim - 2, gaussian_kernel, sigma, kernel_size)
    x, y, big_l = data_range_of(x, y, data_range)
    c1, c2 = (k1 * big_l) ** 2, (k2 * big_l) ** 2
    mx, my = blur(x, windows, padding), blur(y, windows, padding)
    vx = blur(x * x, windows, padding) - mx * mx
    vy = blur(y * y, windows, padding) - my * my
    cov = blur(x * y, windows, padding) - mx * my
    cs = (2 * cov + c2) / (vx + vy + c2)
    return (2 * mx * my + c1) / (mx * mx + my * my + c1) * cs, cs


def ssim(x: Tensor, y: Tensor, **kw) -> tuple[Tensor, Tensor, Tensor]:
    """(per-image SSIM, SSIM map, per-image contrast sensitivity)."""
    maps, cs = ssim_maps(x, y, **kw)
    return maps.flatten(1).mean(1), maps, cs.flatten(1).mean(1)


def ms_ssim(x: Tensor, y: Tensor, betas: Sequence[float], normalize=None, **kw) -> Tensor:
    """Per-image MS-SSIM composed as torchmetrics 0.10+ does: cs at the first scales, SSIM at the
    last, each raised to its beta (a float32 tensor, as there), multiplied; 2x average pooling
    between scales."""
    pool = F.avg_pool2d if x.ndim == 4 else F.avg_pool3d
    terms = []
    for i in range(len(betas)):
        sim, _, cs = ssim(x, y, **kw)
        if normalize == "relu":
            sim, cs = torch.relu(sim), torch.relu(cs)
        terms.append(sim if i == len(betas) - 1 else cs)
        x, y = pool(x, 2), pool(y, 2)
    stack = torch.stack(terms)
    if normalize == "simple":
        stack = (stack + 1) / 2
    return torch.prod(stack ** torch.tensor(betas).view(-1, 1), 0)
