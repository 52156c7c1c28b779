"""The corrected SSIM: whole-map SSIM with reflect padding sized from the window actually used.

Semantics (see SPEC.md): per spatial axis i (tensor dim 2+i) a Gaussian window of
``2*int(3.5*sigma_i+0.5)+1`` taps or a uniform window of ``kernel_size_i`` taps; "same" padding
reflects by ``(size_i-1)//2`` so the map has the input's shape, "valid" keeps only windows wholly
inside the image. SSIM and contrast sensitivity are means over the whole map.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Literal, Optional, Union

import torch
from torch import Tensor

from ssim_patch import _filters
from ssim_patch._options import check_padding as _check_padding
from ssim_patch._options import check_reduction as _check_reduction

Padding = Literal["same", "valid"]
Reduction = Optional[Literal["elementwise_mean", "sum", "none"]]
DataRange = Union[None, float, tuple[float, float], Tensor]

_AXIS_NAMES = {2: ("height", "width"), 3: ("depth", "height", "width")}


def _per_axis(value: object, ndim: int, name: str) -> list[object]:
    if isinstance(value, Tensor):
        value = value.tolist()
    if isinstance(value, numbers.Real):
        return [value] * ndim
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"`{name}` must be a number or {ndim} numbers, got {value!r}.")
    values = list(value)
    if len(values) != ndim:
        raise ValueError(
            f"`{name}` has {len(values)} entries ({values}) but the images have {ndim} spatial "
            f"axes: give one number or {ndim} numbers."
        )
    return values


def _check_inputs(preds: Tensor, target: Tensor) -> None:
    for name, value in (("preds", preds), ("target", target)):
        if not isinstance(value, Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}.")
    if preds.shape != target.shape:
        raise ValueError(
            f"`preds` and `target` must have the same shape, got {tuple(preds.shape)} and "
            f"{tuple(target.shape)}."
        )
    if preds.ndim not in (4, 5):
        raise ValueError(
            f"Expected images of shape (N, C, H, W) or (N, C, D, H, W), got {preds.ndim} "
            f"dimensions: {tuple(preds.shape)}."
        )
    if preds.is_complex() or target.is_complex():
        raise TypeError("SSIM is defined for real images; got a complex tensor.")
    if preds.shape[0] == 0 or preds.shape[1] == 0:
        raise ValueError(f"Expected at least one image and one channel, got shape {tuple(preds.shape)}.")


def _windows(
    gaussian_kernel: bool,
    sigma: Union[float, Sequence[float]],
    kernel_size: Union[int, Sequence[int]],
    nd: int,
) -> list[tuple[bool, float, int, int]]:
    """Per axis: (gaussian, sigma, uniform size, window size). Both arguments are always checked,
    as torchmetrics does, whichever window is used."""
    sigmas = _per_axis(sigma, nd, "sigma")
    sizes = _per_axis(kernel_size, nd, "kernel_size")
    for s in sigmas:
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not 0 < float(s) < math.inf:
            raise ValueError(f"`sigma` must be positive finite numbers, got {sigmas}.")
    for k in sizes:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k <= 0 or k % 2 == 0:
            odd = [_odd_above(v) for v in sizes]
            raise ValueError(f"`kernel_size` must be odd positive integers, got {sizes}; try {odd}.")
    if gaussian_kernel:
        return [(True, float(s), 0, _filters.gaussian_size(float(s))) for s in sigmas]  # type: ignore[arg-type]
    return [(False, 0.0, int(k), int(k)) for k in sizes]  # type: ignore[call-overload]


def _odd_above(value: object) -> int:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        v = float(value)
        if math.isfinite(v) and v > 0:
            return int(v) if int(v) % 2 else int(v) + 1
    return 1


def _check_sizes(shape: Sequence[int], windows: list[tuple[bool, float, int, int]], padding: str) -> None:
    nd = len(windows)
    names = _AXIS_NAMES[nd]
    for i, (gaussian, s, _, size) in enumerate(windows):
        n = shape[2 + i]
        what = f"Gaussian window of sigma={s} ({size} taps)" if gaussian else f"uniform window of {size} taps"
        if padding == "same":
            need = (size - 1) // 2 + 1
            if n < need:
                raise ValueError(
                    f"Axis {2 + i} ({names[i]}) has size {n}, too short for reflect padding by "
                    f"{need - 1} for a {what}: it needs at least {need}, or use a smaller window "
                    f"or padding='valid' with at least {size}."
                )
        elif n < size:
            raise ValueError(
                f"Axis {2 + i} ({names[i]}) has size {n}, shorter than the {what}: padding='valid' "
                f"needs at least {size}; use a smaller window or padding='same' (needs "
                f"{(size - 1) // 2 + 1})."
            )


def _finite_range(images: Tensor) -> Tensor:
    """max - min over the finite pixels (a NaN or inf pixel spoils only its own image)."""
    high = images.nan_to_num(nan=-math.inf, posinf=-math.inf).amax()
    low = images.nan_to_num(nan=math.inf, neginf=math.inf).amin()
    return high - low


def _data_range(
    preds: Tensor, target: Tensor, data_range: DataRange
) -> tuple[Tensor, Tensor, Union[float, Tensor]]:
    """Clamp for a (lo, hi) range and return L, as a float or a 0-d tensor (never synced)."""
    if data_range is None:
        big = torch.maximum(_finite_range(preds), _finite_range(target))
        # A batch with no range at all (both images constant) scores with L=1 instead of 0/0.
        return preds, target, torch.where(big > 0, big, torch.ones_like(big)).detach()
    if isinstance(data_range, Tensor):
        if data_range.numel() != 1:
            raise ValueError(
                f"A tensor `data_range` must hold one number, got shape {tuple(data_range.shape)}."
            )
        if data_range.device.type == "cpu":  # checked only where reading it costs no device sync
            _check_positive(float(data_range))
        return preds, target, data_range.reshape(()).to(device=preds.device, dtype=preds.dtype)
    if isinstance(data_range, (tuple, list)):
        if len(data_range) != 2 or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in data_range
        ):
            raise ValueError(f"`data_range` as a range must be two numbers (lo, hi), got {data_range!r}.")
        lo, hi = (float(v) for v in data_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ValueError(f"`data_range` (lo, hi) needs finite lo < hi, got {data_range!r}.")
        return preds.clamp(lo, hi), target.clamp(lo, hi), hi - lo
    if isinstance(data_range, numbers.Real) and not isinstance(data_range, bool):
        _check_positive(float(data_range))
        return preds, target, float(data_range)
    raise TypeError(f"`data_range` must be None, a positive number or a (lo, hi) tuple, got {data_range!r}.")


def _check_positive(value: float) -> None:
    if not 0 < value < math.inf:
        raise ValueError(f"`data_range` must be positive and finite, got {value!r}.")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _ssim_per_image(
    preds: Tensor,
    target: Tensor,
    gaussian_kernel: bool = True,
    sigma: Union[float, Sequence[float]] = 1.5,
    kernel_size: Union[int, Sequence[int]] = 11,
    data_range: DataRange = None,
    k1: float = 0.01,
    k2: float = 0.03,
    return_full_image: bool = False,
    return_contrast_sensitivity: bool = False,
    padding: str = "same",
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Per-image SSIM, shape (N,); with a flag also the SSIM map or the per-image contrast term.

    This is what torchmetrics' ``_ssim_update`` returns from 0.10 on. Inputs are checked here.
    """
    _check_inputs(preds, target)
    _check_padding(padding)
    if return_full_image and return_contrast_sensitivity:
        raise ValueError(
            "`return_full_image` and `return_contrast_sensitivity` are mutually exclusive: set at most one."
        )
    nd = preds.ndim - 2
    windows = _windows(gaussian_kernel, sigma, kernel_size, nd)
    _check_sizes(preds.shape, windows, padding)

    out_dtype = preds.dtype if preds.is_floating_point() else torch.float32
    dtype = _compute_dtype(preds.dtype)
    x = preds.to(dtype)
    y = target.to(dtype)
    x, y, big_l = _data_range(x, y, data_range)
    c1 = (k1 * big_l) ** 2
    c2 = (k2 * big_l) ** 2

    n, channels = x.shape[:2]
    planes_x = x.reshape(n * channels, *x.shape[2:])
    planes_y = y.reshape(n * channels, *y.shape[2:])
    grad = torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
    sums, cs_sums, maps = [], [], []
    first = windows[0]
    weights = [_filters.window_values(gaussian, s, size) for gaussian, s, size, _ in windows]
    rows = x.shape[2]
    out_rows = rows if padding == "same" else rows - first[3] + 1
    pads = tuple((w[3] - 1) // 2 if padding == "same" else 0 for w in windows)
    work = None if grad else _filters.Workspace()
    for (p0, p1), bands in _chunks(planes_x.shape, out_rows, x.device):
        band_sums, band_cs, band_maps = [], [], []
        for r0, r1 in bands:
            if len(bands) == 1:  # the whole axis: pad every axis in one go
                xb = _filters.reflect_pad(planes_x[p0:p1], pads)
                yb = _filters.reflect_pad(planes_y[p0:p1], pads)
            else:  # rows r0:r1 with their halo (reflected at the edges), then the other axes
                src = _filters.source_rows(rows, first[3], padding, r0, r1, x.device)  # type: ignore[arg-type]
                xb = _filters.reflect_pad(planes_x[p0:p1].index_select(1, src), pads[1:])
                yb = _filters.reflect_pad(planes_y[p0:p1].index_select(1, src), pads[1:])
            ssim_map, cs_map = _maps(xb, yb, weights, c1, c2, work)
            band_sums.append(ssim_map.sum(tuple(range(1, ssim_map.ndim))))
            if return_contrast_sensitivity:
                band_cs.append(cs_map.sum(tuple(range(1, cs_map.ndim))))
            if return_full_image:
                band_maps.append(ssim_map if work is None else ssim_map.clone())
        sums.append(sum(band_sums[1:], band_sums[0]))
        if return_contrast_sensitivity:
            cs_sums.append(sum(band_cs[1:], band_cs[0]))
        if return_full_image:
            maps.append(torch.cat(band_maps, 1) if len(band_maps) > 1 else band_maps[0])
    spatial = ssim_map.shape[2:]
    size = channels * out_rows * math.prod(spatial)
    per_image = (torch.cat(sums).reshape(n, channels).sum(1) / size).to(out_dtype)
    if return_contrast_sensitivity:
        cs = (torch.cat(cs_sums).reshape(n, channels).sum(1) / size).to(out_dtype)
        return per_image, cs
    if return_full_image:
        full = torch.cat(maps).reshape(n, channels, out_rows, *spatial)
        return per_image, full.to(out_dtype)
    return per_image


#: On CPU the work is cut into pieces of about this many samples (whole planes, or bands of
#: rows of one plane), so that the five moment maps and their filtered copies stay in cache.
_CHUNK = 1 << 17


def _chunks(
    shape: Sequence[int], out_rows: int, device: torch.device
) -> list[tuple[tuple[int, int], list[tuple[int, int]]]]:
    """Pieces of work: (plane range, [output row bands]) along the first spatial axis."""
    count = shape[0]
    if device.type != "cpu":
        return [((0, count), [(0, out_rows)])]
    row = math.prod(shape[2:])
    plane = out_rows * row
    if plane <= _CHUNK:
        per = max(1, _CHUNK // max(1, plane))
        return [((lo, min(lo + per, count)), [(0, out_rows)]) for lo in range(0, count, per)]
    band = max(8, _CHUNK // max(1, row))
    bands = [(r0, min(r0 + band, out_rows)) for r0 in range(0, out_rows, band)]
    return [((p, p + 1), bands) for p in range(count)]


def _maps(
    x: Tensor,
    y: Tensor,
    weights: list[tuple[float, ...]],
    c1: Union[float, Tensor],
    c2: Union[float, Tensor],
    work: Optional[_filters.Workspace],
) -> tuple[Tensor, Tensor]:
    """SSIM and contrast-sensitivity maps of a padded band (P, rows + halo, *padded rest).

    The five moment maps are formed once on the padded band and every axis is filtered by
    shifted multiply-adds. ``work`` is None under autograd; otherwise the maps are computed in
    its reusable buffers, and the returned maps live there until the next band.
    """
    # Moments of x - a and y - a, a the band's mean per plane: the variance as a difference of
    # squares is then well conditioned whatever the images' offset. a is added back to the means.
    dims = tuple(range(1, x.ndim))
    shift = ((x.mean(dims, keepdim=True) + y.mean(dims, keepdim=True)) / 2).detach()
    if work is None:
        xs, ys = x - shift, y - shift
        stack = torch.stack((xs, ys, xs * xs, ys * ys, xs * ys))  # (5, P, *padded band)
    else:
        stack = work.take("a", (5, *x.shape), x)
        xs = torch.sub(x, shift, out=stack[0])
        ys = torch.sub(y, shift, out=stack[1])
        torch.mul(xs, xs, out=stack[2])
        torch.mul(ys, ys, out=stack[3])
        torch.mul(xs, ys, out=stack[4])
    for axis, taps in enumerate(weights):
        out = None
        if work is not None:
            shape = list(stack.shape)
            shape[2 + axis] -= len(taps) - 1
            out = work.take("b" if axis % 2 == 0 else "a", tuple(shape), x)
        stack = _filters.correlate_valid(stack, 2 + axis, taps, out)
    ms_x, ms_y, e_xx, e_yy, e_xy = stack.unbind(0)  # means and moments of the shifted images
    if work is None:
        var_x = (e_xx - ms_x * ms_x).clamp_min(0.0)
        var_y = (e_yy - ms_y * ms_y).clamp_min(0.0)
        # |cov| <= sqrt(var_x var_y) holds exactly; enforce it against rounding.
        bound = (var_x * var_y).sqrt().detach()
        cov = torch.minimum(torch.maximum(e_xy - ms_x * ms_y, -bound), bound)
        cs_map = (2 * cov + c2) / (var_x + var_y + c2)
        mu_x, mu_y = ms_x + shift, ms_y + shift
        lum = (2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
        return lum * cs_map, cs_map
    # No autograd: the same formula, in place and in reused buffers.
    var_x = e_xx.addcmul_(ms_x, ms_x, value=-1).clamp_min_(0.0)
    var_y = e_yy.addcmul_(ms_y, ms_y, value=-1).clamp_min_(0.0)
    bound = torch.mul(var_x, var_y, out=work.take("c", tuple(var_x.shape), x)).sqrt_()
    low = torch.neg(bound, out=work.take("d", tuple(var_x.shape), x))
    cov = e_xy.addcmul_(ms_x, ms_y, value=-1)
    cov = torch.clamp(cov, min=low, max=bound, out=cov)
    lower = var_x.add_(var_y).add_(c2)
    cs_map = cov.mul_(2).add_(c2).div_(lower)
    mu_x, mu_y = ms_x.add_(shift), ms_y.add_(shift)
    lum_den = torch.mul(mu_x, mu_x, out=bound).addcmul_(mu_y, mu_y).add_(c1)
    lum = mu_x.mul_(mu_y).mul_(2).add_(c1).div_(lum_den)
    return lum.mul_(cs_map), cs_map


def _reduce(values: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "elementwise_mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def ssim(
    preds: Tensor,
    target: Tensor,
    *,
    gaussian_kernel: bool = True,
    sigma: Union[float, Sequence[float]] = 1.5,
    kernel_size: Union[int, Sequence[int]] = 11,
    reduction: Reduction = "elementwise_mean",
    data_range: DataRange = None,
    k1: float = 0.01,
    k2: float = 0.03,
    return_full_image: bool = False,
    return_contrast_sensitivity: bool = False,
    padding: Padding = "same",
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Corrected SSIM of ``preds`` against ``target``, (N, C, H, W) or (N, C, D, H, W).

    Arguments, defaults and return shapes are those of torchmetrics'
    ``structural_similarity_index_measure``: the reduced SSIM, and with ``return_full_image``
    also the SSIM map, with ``return_contrast_sensitivity`` also the per-image contrast term.
    ``padding="same"`` reflect-pads so the whole image counts; ``"valid"`` keeps only windows
    wholly inside the image (Wang et al.'s ``ssim_index.m``).
    """
    _check_reduction(reduction)
    if isinstance(preds, Tensor) and isinstance(target, Tensor) and target.dtype != preds.dtype:
        target = target.to(preds.dtype)
    out = _ssim_per_image(
        preds,
        target,
        gaussian_kernel,
        sigma,
        kernel_size,
        data_range,
        k1,
        k2,
        return_full_image,
        return_contrast_sensitivity,
        padding,
    )
    if isinstance(out, tuple):
        return _reduce(out[0], reduction), out[1]
    return _reduce(out, reduction)
