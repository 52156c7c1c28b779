"""How SSIM runs on CUDA: fused Triton kernels for 2-D images ``(N, C, H, W)``.

One kernel per pass (``_triton_kernels``), each reading the images once:

- forward: moments of ``s = x + y`` and ``d = x - y`` less a per-plane shift (``a_s = a_x + a_y``,
  ``a_d = a_x - a_y``, each image's the mean of 8 fixed samples of its plane, read inside both
  kernels: no extra pass over the images, and near enough the plane's mean to keep the
  variance, a difference of squares, well conditioned), the
  window (reflect "same" or "valid", any odd size and taps per axis), ``_formula``'s terms and S,
  per-tile partial sums (S; cs; for a tensor ``data_range`` g_c1, g_c2) reduced afterwards in a fixed
  order, and as asked the S map, the terms a backward needs (mu, C_num, C_den), or for a loss the
  adjoint maps of a unit upstream gradient per image (g_x, g_y where needed, g_diff, g_cross);
- backward: ``W^T`` of the adjoint maps with the reflect pads folded back, combined into the
  gradients of x and y in the images' dtype, scaled by the upstream gradient per image.

float16 and bfloat16 images are read as they are and computed in float32; strided and
channels_last images are read through their strides. No host sync, no float atomics: two runs
are bit-identical. Triton is imported on first use: ``import ssim_patch.backends`` works without
it, and :func:`unsupported` says why a call cannot run here. With ``TRITON_INTERPRET=1`` set
before the first use, the kernels run on CPU tensors (the tests do that).
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import Tensor

from ssim_patch import _filters, _formula
from ssim_patch.backends import _algebra, conv
from ssim_patch.backends._kept import KeptTensors
from ssim_patch.backends._protocol import Backend, Grads, Kept, Needs, Plan

#: The images' dtypes the kernels read (float64 is for the other backends).
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: The most taps per axis: the vertical pass keeps a register slot per tap (a power of 2) for
#: each of 4 moments, so longer windows would spill; the conv backend takes them.
MAX_TAPS = 31


@dataclass(frozen=True)
class Launch:
    """One kernel's launch parameters: a tile is ``block_h`` rows by ``block_w`` columns."""

    block_h: int = 64
    block_w: int = 128
    num_warps: int = 4


@dataclass(frozen=True)
class Config:
    """Launch parameters of both kernels, and the persistent grid's size: at most
    ``max_programs`` programs (None: ``programs_per_sm`` per multiprocessor; under the
    interpreter, one per tile), each looping over tiles. ``fp_fusion``: Triton's
    ``enable_fp_fusion`` (fused multiply-adds; given explicitly, since Triton 3.9 warns where it is
    left to a default that 3.10 changes). The kernels' exact cases (equal images: S exactly 1, a
    gradient of exactly 0; a flat plane: variances exactly 0) hold either way."""

    #: two columns a thread: each column the pair's windows read is loaded and squared once
    forward: Launch = field(default_factory=lambda: Launch(block_w=256))
    #: two columns a thread: each adjoint row's tap loads and weights serve both
    backward: Launch = field(default_factory=lambda: Launch(block_w=256))
    #: the backward's edge strips (columns whose windows reach the reflected pads) are at most this
    #: wide: one column a thread, as their weight-table reads leave no registers for two
    edge_block_w: int = 128
    #: ptxas's register cap for the forward's (edge, interior) strips on sm_90 and later (None:
    #: none). 128 lets 16 warps a SM hold the interior where ptxas takes 148 (float32, triton
    #: 3.9) or 168 (3.6), with no spill (``benchmarks/gpu_model.py``; sm_80 would spill 40 B).
    #: The edge strips' 229 would fit 168 unspilled, but their few tiles then take a longer last
    #: wave (the model: 0.088 -> 0.115 ms at 5x3x1080x1920)
    forward_registers: tuple[Optional[int], Optional[int]] = (None, 128)
    max_programs: Optional[int] = None
    programs_per_sm: int = 8
    fp_fusion: Optional[bool] = True


#: The configuration every call uses; tests and ``benchmarks/gpu_check.py`` replace it.
CONFIG = Config()

_KERNELS: Optional[ModuleType] = None
_IMPORT_ERROR: Optional[str] = None


def interpreting() -> bool:
    """True when Triton's interpreter runs the kernels (``TRITON_INTERPRET=1``): CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _kernels() -> Optional[ModuleType]:
    """The kernels' module, imported once; None (and ``_IMPORT_ERROR`` set) where triton is missing."""
    global _KERNELS, _IMPORT_ERROR
    if _KERNELS is None and _IMPORT_ERROR is None:
        try:
            from ssim_patch.backends import _triton_kernels
        except ImportError as exc:
            _IMPORT_ERROR = (
                "triton is not installed" if getattr(exc, "name", "") == "triton" else f"triton: {exc}"
            )
        else:
            _KERNELS = _triton_kernels
    return _KERNELS


def unsupported(x: Tensor, plan: Plan) -> Optional[str]:
    """Why these kernels cannot compute SSIM of images like ``x`` for ``plan``; None when they can."""
    if x.ndim != 4 or len(plan.blur.taps) != 2:
        return f"the Triton kernels take 2-D images (N, C, H, W), not {x.ndim - 2}-D ones"
    sizes = [len(taps) for taps in plan.blur.taps]
    if max(sizes) > MAX_TAPS:
        return f"the Triton kernels take windows of at most {MAX_TAPS} taps per axis, not {sizes}"
    if x.dtype not in DTYPES:
        name = str(x.dtype).replace("torch.", "")
        return f"the Triton kernels read float32, float16 and bfloat16 images, not {name}"
    wanted = "cpu" if interpreting() else "cuda"
    if x.device.type != wanted:
        return f"the Triton kernels run on {wanted} tensors here, not {x.device.type} ones"
    if x.numel() == 0:
        return "the Triton kernels take non-empty images"
    if _kernels() is None:
        return _IMPORT_ERROR
    return None


# --- small device tensors, made once ---------------------------------------------------------

#: The windows' taps as float32 tensors on a device, by (taps, device): a call copies nothing;
#: safe across CUDA streams (:mod:`._kept`).
_TAPS: KeptTensors[Tensor] = KeptTensors()


def _taps(taps: tuple[float, ...], device: torch.device) -> Tensor:
    def make() -> Tensor:
        host = torch.tensor(taps, dtype=torch.float32)
        if device.type == "cuda":
            host = host.pin_memory()  # an asynchronous copy: no host sync
        return host.to(device, non_blocking=True)

    return _TAPS.get((taps, device), device, make)


_SMS: dict[int, int] = {}


def _programs(tiles: int, device: torch.device, config: Config) -> int:
    """The persistent grid's size for ``tiles`` tiles."""
    cap = config.max_programs
    if cap is None and device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index not in _SMS:
            _SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
        cap = _SMS[index] * config.programs_per_sm
    return max(1, min(tiles, cap if cap is not None else tiles))


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _block_w(launch: Launch, width: int) -> int:
    return max(2, min(_pow2(launch.block_w), _pow2(width)))


def _options(launch: Launch, config: Config, max_registers: Optional[int] = None) -> dict[str, Any]:
    options: dict[str, Any] = {"num_warps": launch.num_warps}
    if config.fp_fusion is not None and not interpreting():
        options["enable_fp_fusion"] = config.fp_fusion
    if max_registers is not None and not interpreting() and _arch() >= 90:
        options["maxnreg"] = max_registers
    return options


#: The compute capability Triton compiles for, by (active driver, current device): read once
#: each (a forward's interior launch asks, and Triton's target query builds its answer anew each
#: time); the driver in the key, as a stand-in one (the offline model's) may claim any target.
_ARCHS: dict[tuple[object, object], int] = {}


def _arch() -> int:
    """The compute capability Triton compiles for on the current device (``90`` for sm_90; 0
    where it is not CUDA's)."""
    from triton.runtime import driver

    active = driver.active
    key = (active, active.get_current_device())
    if key not in _ARCHS:
        arch = active.get_current_target().arch
        _ARCHS[key] = arch if isinstance(arch, int) else 0
    return _ARCHS[key]


def _scalar(t: Optional[Tensor], like: Tensor) -> Tensor:
    """A 0-d constant as float32 on the images' device (no copy when it already is)."""
    if t is None:
        return like.new_zeros((), dtype=torch.float32)
    return t.to(device=like.device, dtype=torch.float32).reshape(())


def _window(blur: _filters.Blur) -> dict[str, int]:
    """The window's constexprs: sizes and pads."""
    (taps_h, taps_w), (pad_h, pad_w) = blur.taps, blur.pads
    return {"KH": len(taps_h), "KW": len(taps_w), "PAD_H": pad_h, "PAD_W": pad_w}


def _empty(shape: tuple[int, ...], like: Tensor) -> Tensor:
    return torch.empty(shape, dtype=torch.float32, device=like.device)


# --- the forward -------------------------------------------------------------------------------


def forward(
    x: Tensor,
    y: Tensor,
    k: _formula.Constants,
    plan: Plan,
    keep: Optional[Needs],
    config: Optional[Config] = None,
) -> tuple[Tensor, Optional[Tensor], Optional[Kept]]:
    """``(per_image, extra, kept)`` as the protocol's ``forward`` (float32 outputs).

    Kept for a loss (output "ssim"): the adjoint maps ``(S, N, C, *out)`` (g_x if x needs a
    gradient, g_y if y does, g_diff, g_cross, for a unit upstream gradient per image) and the
    per-plane sums of g_c1, g_c2 ``(2, N, C)`` (left empty unless c1 or c2 needs a gradient); for
    the map and cs outputs: mu ``(2, N, C, *out)`` (mu_s, mu_d), C_num, C_den ``(2, N, C, *out)``
    and the shifts ``(2, N, C)`` (a_s, a_d)."""
    kernels = _kernels()
    assert kernels is not None, _IMPORT_ERROR
    config = config if config is not None else CONFIG
    launch = config.forward
    blur, output = plan.blur, plan.output
    n, channels, h, w = x.shape
    oh, ow = blur.out_size((h, w))
    planes = n * channels
    block_w = _block_w(launch, ow)
    per_plane = math.ceil(ow / block_w) * math.ceil(oh / launch.block_h)
    sums = _empty((planes, per_plane), x)
    cs_sums = _empty((planes, per_plane), x) if output == "cs" else sums
    full = _empty((n, channels, oh, ow), x) if output == "map" else sums
    loss = keep is not None and output == "ssim"
    need_x = keep is not None and keep.x
    need_y = keep is not None and keep.y
    c_grads = keep is not None and loss and (keep.c1 or keep.c2)
    adjoints = _empty((int(need_x) + int(need_y) + 2, n, channels, oh, ow), x) if loss else sums
    terms = _empty((4, n, channels, oh, ow), x) if keep is not None and not loss else sums
    c_partial = _empty((2, planes, per_plane), x) if c_grads else sums
    shifts = _empty((2, n, channels), x) if keep is not None and not loss else sums
    two_c1 = _scalar(k.two_c1, x)
    two_c2 = _scalar(k.two_c2, x)
    four_eps = _scalar(k.four_eps, x) if k.four_eps is not None else two_c1
    flat = _scalar(k.flat, x) if k.flat is not None else two_c1
    taps_h = _taps(blur.taps[0] * 2, x.device)  # doubled: the kernels index it with no modulo
    taps_w = _taps(blur.taps[1], x.device)
    bands = math.ceil(oh / launch.block_h)
    for strip0, strips, skip, gap, edge in _forward_launches(w, ow, block_w, len(blur.taps[1]), blur.pads[1]):
        kernels.ssim_forward_kernel[(_programs(planes * bands * strips, x.device, config),)](
            x,
            y,
            *x.stride(),
            *y.stride(),
            taps_h,
            taps_w,
            two_c1,
            two_c2,
            four_eps,
            flat,
            1.0 / (channels * oh * ow),  # the S map's gradient for a unit gradient per image
            sums,
            cs_sums,
            c_partial,
            full,
            terms,
            shifts,
            adjoints,
            planes,
            channels,
            h,
            w,
            oh,
            ow,
            strip0,
            strips,
            skip,
            gap,
            per_plane // bands,
            **_window(blur),
            EDGE=edge,
            HAS_EPS=k.four_eps is not None,
            HAS_FLAT=k.flat is not None,
            WRITE_MAP=output == "map",
            WRITE_CS=output == "cs",
            WRITE_TERMS=keep is not None and not loss,
            WRITE_ADJ=loss,
            NEED_X=need_x,
            NEED_Y=need_y,
            Y_AT=int(need_x),
            DIFF_AT=int(need_x) + int(need_y),
            WRITE_CSUMS=c_grads,
            BLOCK_H=launch.block_h,
            BLOCK_W=block_w,
            **_options(launch, config, config.forward_registers[not edge]),
        )
    size = channels * oh * ow
    per_image = sums.view(n, -1).sum(1) / size
    extra: Optional[Tensor] = None
    if output == "map":
        extra = full
    elif output == "cs":
        extra = cs_sums.view(n, -1).sum(1) / size
    if keep is None:
        return per_image, extra, None
    if loss:
        c_sums = c_partial.view(2, n, channels, per_plane).sum(-1) if c_grads else _empty((2, n, channels), x)
        return per_image, extra, (adjoints, c_sums)
    return per_image, extra, (terms[:2], terms[2:], shifts)


def kept_like(x: Tensor, plan: Plan, keep: Needs) -> Kept:
    """Empty tensors shaped and typed as what :func:`forward` keeps for images ``x``."""
    n, channels, h, w = x.shape
    oh, ow = plan.blur.out_size((h, w))
    if plan.output == "ssim":
        rows = _algebra.adjoint_rows(keep)
        return _empty((rows, n, channels, oh, ow), x), _empty((2, n, channels), x)
    terms = _empty((2, n, channels, oh, ow), x), _empty((2, n, channels, oh, ow), x)
    return (*terms, _empty((2, n, channels), x))


# --- the backward ------------------------------------------------------------------------------


def backward(
    x: Tensor,
    y: Tensor,
    k: _formula.Constants,
    kept: Kept,
    g_image: Optional[Tensor],
    g_extra: Optional[Tensor],
    plan: Plan,
    needs: Needs,
    config: Optional[Config] = None,
    fall_back: bool = False,
) -> Grads:
    """Gradients for x and y (in their dtype) and for c1, c2 (0-d float32), as the protocol's
    ``backward``, from what :func:`forward` kept; ``fall_back``: ``W^T`` by convolutions instead
    of the kernel (:func:`_backward_torch`)."""
    n, channels, h, w = x.shape
    oh, ow = plan.blur.out_size((h, w))
    scale: Optional[Tensor] = None
    c_grad: Optional[Tensor] = None
    if plan.output == "ssim":  # the adjoints of a unit gradient per image: scaled in the kernel
        if g_image is None:
            return None, None, None, None
        stack, c_sums = kept
        scale = g_image.reshape(n)
        if needs.c1 or needs.c2:
            c_grad = (c_sums * scale.view(-1, 1)).sum((1, 2))
    else:
        mu, contrast, shifts = kept
        grad_map, grad_cs = _algebra.upstream(g_image, g_extra, plan, (n, channels, oh, ow))
        if grad_map is None and grad_cs is None:
            return None, None, None, None
        terms = _formula.Terms(mu, contrast[0], contrast[1])
        adj = _formula.adjoints(terms, shifts[..., None, None], k, grad_map, grad_cs, needs.x, needs.y)
        stack = torch.stack([g.expand(n, channels, oh, ow) for g in _algebra.adjoint_stack(adj)])
        if needs.c1 or needs.c2:
            c_grad = torch.stack((adj.g_c1.sum(), adj.g_c2.sum()))
    gx = torch.empty_like(x) if needs.x else None
    gy = torch.empty_like(y) if needs.y else None
    if (gx is not None or gy is not None) and fall_back:
        _backward_torch(x, y, stack, scale, (gx, gy), plan.blur)
    elif gx is not None or gy is not None:
        _backward_launch(x, y, stack, scale, gx, gy, plan.blur, config or CONFIG)
    gc1 = c_grad[0] if c_grad is not None and needs.c1 else None
    gc2 = c_grad[1] if c_grad is not None and needs.c2 else None
    return gx, gy, gc1, gc2


def _backward_launch(
    x: Tensor,
    y: Tensor,
    stack: Tensor,
    scale: Optional[Tensor],
    gx: Optional[Tensor],
    gy: Optional[Tensor],
    blur: _filters.Blur,
    config: Config,
) -> None:
    """``W^T`` of the adjoint ``stack``, combined into ``gx`` and ``gy`` (where given), times ``scale``."""
    kernels = _kernels()
    assert kernels is not None, _IMPORT_ERROR
    launch = config.backward
    n, channels, h, w = x.shape
    oh, ow = blur.out_size((h, w))
    expected = (int(gx is not None) + int(gy is not None) + 2, n, channels, oh, ow)
    if tuple(stack.shape) != expected:
        raise ValueError(f"the adjoint maps are {tuple(stack.shape)}, expected {expected}")
    stack = stack.to(torch.float32).contiguous()
    block_w = _block_w(launch, w)
    out_x = gx if gx is not None else gy
    out_y = gy if gy is not None else gx
    assert out_x is not None and out_y is not None
    bands = math.ceil(h / launch.block_h)
    edge_w = _edge_block_w(config, block_w)
    taps_h = _taps(blur.taps[0] * 2, x.device)  # doubled: the kernels index it with no modulo
    taps_w = _taps(blur.taps[1], x.device)
    for strip0, strips, skip, gap, edge, strip_w in _strip_launches(w, block_w, edge_w, blur.pads[1]):
        kernels.ssim_backward_kernel[(_programs(n * channels * bands * strips, x.device, config),)](
            stack,
            scale if scale is not None else stack,
            scale.stride(0) if scale is not None else 0,
            x,
            y,
            out_x,
            out_y,
            *x.stride(),
            *y.stride(),
            *out_x.stride(),
            *out_y.stride(),
            taps_h,
            taps_w,
            _taps(_edge_table(blur, h, w, edge), x.device),
            n * channels,
            channels,
            h,
            w,
            oh,
            ow,
            strip0,
            strips,
            skip,
            gap,
            **_window(blur),
            NEED_X=gx is not None,
            NEED_Y=gy is not None,
            Y_AT=int(gx is not None),
            DIFF_AT=int(gx is not None) + int(gy is not None),
            HAS_SCALE=scale is not None,
            EDGE=edge,
            EDGE_AT=_edge_at(blur),
            MASKS=edge or blur.pads[1] == 0,
            BLOCK_H=launch.block_h,
            BLOCK_W=strip_w,
            **_options(launch, config),
        )


def _edge_weights(taps: tuple[float, ...], n: int, pad: int) -> list[list[float]]:
    """The transposed window's weights at the positions ``0..pad`` and ``n-1-pad..n-1`` of a
    reflect-padded axis of length ``n``: position ``c`` takes ``sum_t w[c][t] g[c + pad - t]`` of
    the adjoint ``g``, ``w[c][t]`` the taps summed over ``c``'s preimages (itself and, through
    the pads, ``-c`` and ``2 (n - 1) - c``)."""
    k = len(taps)
    weights = []
    for c in [*range(pad + 1), *range(n - 1 - pad, n)]:
        row = list(taps)
        for image in (-c, 2 * (n - 1) - c):
            if image != c and -pad <= image < n + pad:
                for t in range(k):
                    j = image - c + t
                    if 0 <= j < k:
                        row[t] += taps[j]
        weights.append(row)
    return weights


@functools.lru_cache(maxsize=64)
def _edge_table(blur: _filters.Blur, height: int, width: int, edge: bool) -> tuple[float, ...]:
    """The backward's table of the steps near the top and bottom and (``edge``) of the columns
    near the edges. Steps: ``2 (k + pad)`` rows of ``k`` weights, the step completing image row
    ``low`` giving row ``low + t`` the weight ``w[low + t][t]`` of :func:`_edge_weights` (the
    plain taps for an interior row, 0 outside the image): steps ``low`` from ``-(k - 1)`` to
    ``pad``, then from ``bottom = max(n - k - pad, pad + 1)`` to ``n - 1`` (unused rows 0).
    Columns (from ``_edge_at``): ``2 (pad + 1)`` rows of ``k`` weights, then the plain taps."""
    (taps_h, taps_w), (pad_h, pad_w) = blur.taps, blur.pads
    k = len(taps_h)
    near = dict(
        zip([*range(pad_h + 1), *range(height - 1 - pad_h, height)], _edge_weights(taps_h, height, pad_h))
    )

    def weight(r: int, t: int) -> float:
        if r < 0 or r >= height:
            return 0.0
        return near[r][t] if r in near else taps_h[t]

    bottom = max(height - k - pad_h, pad_h + 1)
    table: list[float] = []
    for steps in (range(-(k - 1), pad_h + 1), range(bottom, height)):
        for low in steps:
            table += [weight(low + t, t) for t in range(k)]
        table += [0.0] * (k * (k + pad_h - len(steps)))
    if edge:
        for weights in _edge_weights(taps_w, width, pad_w):
            table += weights
        table += taps_w
    return tuple(table)


def _edge_at(blur: _filters.Blur) -> int:
    """Where the columns' weights start in :func:`_edge_table`."""
    k = len(blur.taps[0])
    return 2 * (k + blur.pads[0]) * k


def _split(count: int, edge: Callable[[int], bool]) -> tuple[int, int]:
    """The strips ``0..count-1`` as an edge prefix ``[0, left)``, interior ``[left, right)`` and an
    edge suffix ``[right, count)``: ``(left, right)``, ``left == right`` where all are edge strips."""
    left = 0
    while left < count and edge(left):
        left += 1
    right = count
    while right > left and edge(right - 1):
        right -= 1
    return left, right


def _forward_launches(
    width: int, out_w: int, block_w: int, taps: int, pad: int
) -> list[tuple[int, int, int, int, bool]]:
    """The forward's launches over the strips of ``block_w`` output columns: ``(strip0, strips,
    skip, gap, edge)`` as :func:`_strip_launches`. An interior strip's windows (``taps`` columns
    from ``pad`` before each output column) read only inside the row and all its columns are
    outputs, so its loads are at constant offsets (no reflection, no clamping); the others are
    edge strips, one launch."""
    count = math.ceil(out_w / block_w)

    def edge(s: int) -> bool:
        end = (s + 1) * block_w  # one past the strip's last column
        return s * block_w < pad or end > out_w or end - 1 + (taps - 1 - pad) > width - 1

    left, right = _split(count, edge)
    if left == right:
        return [(0, count, count, 0, True)]
    return [(0, left + count - right, left, right - left, True), (left, right - left, right - left, 0, False)]


def _edge_block_w(config: Config, block_w: int) -> int:
    """The width of the backward's edge strips: ``config.edge_block_w`` (a power of 2, at least 2),
    at most ``block_w``, so that it divides ``block_w``."""
    return min(block_w, max(2, _pow2(config.edge_block_w)))


def _strip_launches(
    width: int, block_w: int, edge_w: int, pad: int
) -> list[tuple[int, int, int, int, bool, int]]:
    """The backward's launches over the strips of the image's columns: ``(strip0, strips, skip,
    gap, edge, strip_w)``, a launch taking the strips of ``strip_w`` columns ``strip0 + i + (gap
    where i >= skip)`` for ``i < strips``. The edge strips (a prefix and a suffix of the strips of
    ``block_w`` columns: those whose columns reach the reflected pads) go to one launch that
    gathers through the pads, in strips of ``edge_w`` columns (a divisor of ``block_w``), the
    interior ones to a launch without that code and, for "same" padding, without bounds on its
    loads (fewer registers and instructions); one launch where every strip is an edge strip."""
    count = math.ceil(width / block_w)
    fold = block_w // edge_w

    def edge(s: int) -> bool:
        return s * block_w <= pad or s * block_w + block_w >= width - 1 - pad

    left, right = _split(count, edge)
    if left == right:
        narrow = math.ceil(width / edge_w)
        return [(0, narrow, narrow, 0, True, edge_w)]
    tail = math.ceil((width - right * block_w) / edge_w)  # the right edge's narrow strips
    return [
        (0, left * fold + tail, left * fold, (right - left) * fold, True, edge_w),
        (left, right - left, right - left, 0, False, block_w),
    ]


def with_config(**changes: Any) -> Config:
    """:data:`CONFIG` with some fields replaced (``forward=Launch(...)``, ``max_programs=2``, ...)."""
    return replace(CONFIG, **changes)


# --- the fall-back: a kernel that fails to compile or launch under auto -------------------------


#: Specializations whose kernel failed to compile or launch under auto (an ``OutOfResources``, a
#: ``CompilationError``, a Triton too old for a feature), with the error: those calls run on the
#: conv backend's convolutions (:func:`_forward_torch`, :func:`_backward_torch`, in this backend's
#: layout of what the forward keeps) for the rest of the process. ``backends.describe`` reports them.
class Specialization(NamedTuple):
    """What a failure is remembered by: the device, the images' dtype, the window and the outputs."""

    device: str
    dtype: str
    window: str  # "11x11"
    padding: str
    output: str
    uqi: bool

    def __str__(self) -> str:
        return f"{self.device} {self.dtype} {self.window} {self.padding} {self.output}" + (
            " UQI" if self.uqi else ""
        )


FALLBACKS: dict[Specialization, str] = {}


def _specialization(x: Tensor, plan: Plan) -> Specialization:
    window = "x".join(str(len(t)) for t in plan.blur.taps)
    dtype = str(x.dtype).replace("torch.", "")
    return Specialization(str(x.device), dtype, window, plan.blur.padding, plan.output, plan.eps is not None)


def _falls_back(x: Tensor, plan: Plan, exc: Optional[BaseException] = None) -> bool:
    """True when a call like this one runs on the fall-back: its specialization failed before, or
    fails now (``exc``: then remembered, with one warning), and the backend is not forced. A CUDA
    out-of-memory error is never a reason (the convolutions need more memory)."""
    from ssim_patch import backends

    if backends.requested() == "triton" or isinstance(exc, torch.cuda.OutOfMemoryError):
        return False
    key = _specialization(x, plan)
    if exc is None:
        return key in FALLBACKS
    lines = str(exc).strip().splitlines()
    error = f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]
    FALLBACKS[key] = error
    warnings.warn(
        f"ssim_patch: the Triton kernels failed on {key.device} for {key.dtype} images, a "
        f"{key.window} {key.padding} window, output {key.output!r} ({error}); such calls use the "
        f"conv backend's convolutions for the rest of the process (SSIM_PATCH_BACKEND=triton raises "
        "the error instead).",
        RuntimeWarning,
        stacklevel=4,
    )
    return True


def fallbacks() -> tuple[str, ...]:
    """One line per specialization that fell back: ``cuda:0 bfloat16 11x11 same ssim: <error>``."""
    return tuple(f"{key}: {error}" for key, error in FALLBACKS.items())


def _plane_shift(img: Tensor) -> Tensor:
    """The kernels' shift of each plane ``(N, C, 1, 1)``, float32, with their bits: the mean of 8
    fixed samples, summed in the kernels' order and scaled by 1/8."""
    h, w = img.shape[-2:]
    total: Optional[Tensor] = None
    for i in range(2):
        for j in range(4):
            v = img[:, :, (h * (2 * i + 1)) // 4, (w * (2 * j + 1)) // 8].float()
            total = v if total is None else total + v
    assert total is not None
    return (total * 0.125)[..., None, None]


def _forward_torch(
    x: Tensor, y: Tensor, k: _formula.Constants, plan: Plan, keep: Optional[Needs]
) -> tuple[Tensor, Optional[Tensor], Optional[Kept]]:
    """:func:`forward` by the conv backend's convolutions, with the kernels' shifts and what they keep."""
    xf, yf = x.float(), y.float()
    n, channels, h, w = x.shape
    a_x, a_y = _plane_shift(xf), _plane_shift(yf)
    shift = torch.stack((a_x + a_y, a_x - a_y))  # (2, N, C, 1, 1): a_s, a_d
    padded = [size + 2 * pad for size, pad in zip((h, w), plan.blur.pads)]
    stack = xf.new_empty((4, n, channels, *padded))
    sd = torch.stack((xf + yf, xf - yf)).sub_(shift)
    conv.reflect_pad_into(sd.view(-1, h, w), plan.blur.pads, stack[:2].view(-1, *padded))
    torch.mul(stack[:2], stack[:2], out=stack[2:])
    t = _formula.terms(conv.conv_blur(stack, plan.blur), shift, k)
    made = _formula.similarity_map(t, k)
    per_image, extra = _algebra.finish(made.s, t, plan)
    if keep is None:
        return per_image, extra, None
    if plan.output != "ssim":
        return per_image, extra, (t.mu, torch.stack((t.c_num, t.c_den)), shift.view(2, n, channels))
    into = xf.new_empty((_algebra.adjoint_rows(keep), *made.s.shape))
    unit = _algebra.unit_gradient(made.s.shape, xf)
    adj = _formula.adjoints(t, shift, k, unit, None, keep.x, keep.y, made, out=into)
    c_sums = torch.stack((adj.g_c1.sum((2, 3)), adj.g_c2.sum((2, 3))))
    return per_image, extra, (into, c_sums.expand(2, n, channels).contiguous())


_Outs = tuple[Optional[Tensor], Optional[Tensor]]


def _backward_torch(
    x: Tensor, y: Tensor, stack: Tensor, scale: Optional[Tensor], outs: _Outs, blur: _filters.Blur
) -> None:
    """:func:`_backward_launch` by the conv backend's transposed convolutions, into ``outs``
    (the gradients of x and y that are needed)."""
    gx, gy = outs
    xf, yf = x.float(), y.float()
    back = _algebra.unstack(conv.conv_blur_adjoint(stack.float(), blur, xf), gx is not None, gy is not None)
    xs, ys = xf - _plane_shift(xf), yf - _plane_shift(yf)
    for out, g in zip((gx, gy), _algebra.combine(back, xs, ys, in_place=True)):
        if out is not None and g is not None:
            out.copy_(g * scale.view(-1, 1, 1, 1) if scale is not None else g)


class TritonBackend:
    """Fused Triton kernels, 2-D CUDA images (see the module's docstring)."""

    name = "triton"
    reads_reduced_precision = True

    def unsupported(self, x: Tensor, plan: Plan) -> Optional[str]:
        return unsupported(x, plan)

    def forward(
        self, x: Tensor, y: Tensor, k: _formula.Constants, plan: Plan, keep: Optional[Needs]
    ) -> tuple[Tensor, Optional[Tensor], Optional[Kept]]:
        if _falls_back(x, plan):
            return _forward_torch(x, y, k, plan, keep)
        try:
            return forward(x, y, k, plan, keep)
        except Exception as exc:  # a kernel that cannot compile or launch here
            if not _falls_back(x, plan, exc):
                raise
        return _forward_torch(x, y, k, plan, keep)

    def kept_like(self, x: Tensor, plan: Plan, keep: Needs) -> Kept:
        return kept_like(x, plan, keep)

    def backward(
        self,
        x: Tensor,
        y: Tensor,
        k: _formula.Constants,
        kept: Kept,
        g_image: Optional[Tensor],
        g_extra: Optional[Tensor],
        plan: Plan,
        needs: Needs,
    ) -> Grads:
        if _falls_back(x, plan):
            return backward(x, y, k, kept, g_image, g_extra, plan, needs, fall_back=True)
        try:
            return backward(x, y, k, kept, g_image, g_extra, plan, needs)
        except Exception as exc:  # a kernel that cannot compile or launch here
            if not _falls_back(x, plan, exc):
                raise
        return backward(x, y, k, kept, g_image, g_extra, plan, needs, fall_back=True)


BACKEND: Backend = TritonBackend()  # mypy checks it against the protocol
