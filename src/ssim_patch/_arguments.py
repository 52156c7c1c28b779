"""How torchmetrics-style arguments become the engine's inputs: numbers, numpy values and
tensors coerced and checked as each release lets them through, the windows and the plan (cached by
every argument that decides them), the image sizes the windows need (:class:`ImageTooSmallError`),
the data range (on the device, no host sync) and the constants ``c1``, ``c2``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, Optional, Union

import torch
from torch import Tensor

from ssim_patch import _filters
from ssim_patch._torch_features import constant_under_old_dynamo, is_compiling, is_fake
from ssim_patch.backends import _route
from ssim_patch.backends._dtypes import compute_dtype
from ssim_patch.backends._protocol import Output, Plan

Padding = Literal["same", "valid"]
Reduction = Optional[Literal["elementwise_mean", "sum", "none"]]
DataRange = Union[None, float, tuple[float, float], Tensor]

_AXIS_NAMES = {2: ("height", "width"), 3: ("depth", "height", "width")}


def _from_numpy(value: object) -> bool:
    """A numpy value. Never while dynamo traces (it turns numpy values into tensors itself, and
    dynamo of torch 2.4-2.5 cannot trace ``type(value).__module__``)."""
    return not is_compiling() and type(value).__module__ == "numpy"


def _plain(value: object) -> object:
    """A numpy scalar or numpy array of one number as the Python number it holds (torchmetrics'
    arithmetic takes them as that number); anything else unchanged."""
    if _from_numpy(value) and getattr(value, "size", None) == 1:
        return value.item()  # type: ignore[attr-defined]
    return value


def _host_number(value: object) -> object:
    """:func:`_plain`, and a one-element tensor as the number it holds: for ``sigma`` and
    ``kernel_size``, which torchmetrics reads on the host too (its checks compare them in Python)."""
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.item()
    return _plain(value)


def _is_number(value: object) -> bool:
    """A real number (bool included, as in Python) or a real tensor of one element."""
    if type(value) in _KEYED:  # the common case, without the ABC's isinstance
        return True
    if isinstance(value, Tensor):
        return value.numel() == 1 and not value.dtype.is_complex
    return isinstance(value, numbers.Real)


def _per_axis(value: object, ndim: int, name: str) -> list[object]:
    """``value`` for each of ``ndim`` axes: one number for all, or one per axis; numpy values and
    tensors count as the numbers they hold."""
    value = _host_number(value)
    if isinstance(value, Tensor) or _from_numpy(value):
        value = value.tolist()  # type: ignore[attr-defined]
    if isinstance(value, numbers.Real):
        return [value] * ndim
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"`{name}` must be a number or {ndim} numbers, got {value!r}.")
    values = [_host_number(v) for v in value]
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
    if preds.dtype.is_complex or target.dtype.is_complex:  # dynamo of 2.1-2.2 cannot trace is_complex()
        raise TypeError("SSIM is defined for real images; got a complex tensor.")
    if preds.shape[0] == 0 or preds.shape[1] == 0:
        raise ValueError(f"Expected at least one image and one channel, got shape {tuple(preds.shape)}.")


def _window_args(
    sigma: Union[float, Sequence[float]],
    kernel_size: Union[int, Sequence[int]],
    nd: int,
    sizes_used: bool = True,
) -> tuple[list[float], list[int]]:
    """``sigma`` and ``kernel_size`` per axis, checked: positive finite sigmas, odd positive sizes.

    Sizes a window does not use (a Gaussian window's; ``sizes_used=False``) are only checked as
    torchmetrics checks them (a number neither even nor <= 0), and come back as ``[]``."""
    sigmas = _per_axis(sigma, nd, "sigma")
    sizes = _per_axis(kernel_size, nd, "kernel_size")
    for s in sigmas:
        if not isinstance(s, numbers.Real) or not 0 < float(s) < math.inf:
            raise ValueError(f"`sigma` must be positive finite numbers, got {sigmas}.")
    for k in sizes:
        if not _size_ok(k, sizes_used):
            odd = [_odd_above(v) for v in sizes]
            raise ValueError(f"`kernel_size` must be odd positive integers, got {sizes}; try {odd}.")
    if not sizes_used:
        return [float(s) for s in sigmas], []  # type: ignore[arg-type]
    return [float(s) for s in sigmas], [int(k) for k in sizes]  # type: ignore[arg-type, call-overload]


def _size_ok(size: object, used: bool) -> bool:
    """An odd positive integer; a size the window does not use passes torchmetrics' own check."""
    if not isinstance(size, numbers.Real):
        return False
    if used:
        return isinstance(size, numbers.Integral) and int(size) > 0 and int(size) % 2 == 1
    return not (size % 2 == 0 or size <= 0)


#: One axis's window: (gaussian, sigma, uniform size, window size).
Window = tuple[bool, float, int, int]
#: Plans already checked and built, by everything that decides them (:func:`_plan_key`).
_PLANS: dict[tuple[object, ...], tuple[tuple[Window, ...], Plan]] = {}
#: :data:`_PLANS` is emptied when it holds this many (arguments that vary from call to call).
_MAX_PLANS = 64
#: The argument types a plan is cached for: anything else is checked and built at each call.
_KEYED = (int, float)


def _key_of(value: object) -> Optional[tuple[object, ...]]:
    """``value`` for a cache key: a Python int or float, or a tuple or list of them (marked as a
    sequence: ``1.5`` and ``[1.5]`` are checked differently), each number with its type (``11``
    and ``11.0`` are too); None for anything else (not cached)."""
    if type(value) in _KEYED:
        return (type(value), value)
    if type(value) is tuple or type(value) is list:
        items: list[object] = ["sequence"]
        for v in value:
            if type(v) not in _KEYED:
                return None
            items += (type(v), v)
        return tuple(items)
    return None


def _plan_key(*decides: object) -> Optional[tuple[object, ...]]:
    """The key of a plan decided by ``decides`` (``str``, ``bool``, ``None`` as they are, the rest
    by :func:`_key_of`), or None where it must not be cached: an argument of another type, or a
    trace or transform running (the engine is traced as it runs)."""
    if _route.tracing():
        return None
    key: list[object] = []
    for value in decides:
        if value is None or type(value) in (str, bool):
            key.append(value)
            continue
        part = _key_of(value)
        if part is None:
            return None
        key.append(part)
    return tuple(key)


def _cached_plan(
    key: Optional[tuple[object, ...]], make: Callable[[], tuple[tuple[Window, ...], Plan]]
) -> tuple[tuple[Window, ...], Plan]:
    """``make()``, kept under ``key`` (None: not kept). Only a plan that was made is kept: the
    arguments' errors are raised again at each call."""
    if key is None:
        return make()
    found = _PLANS.get(key)
    if found is None:
        found = make()
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        _PLANS[key] = found
    return found


def _windows(
    gaussian_kernel: bool,
    sigma: Union[float, Sequence[float]],
    kernel_size: Union[int, Sequence[int]],
    nd: int,
) -> list[Window]:
    """SSIM's window per axis. Both arguments are always checked, as torchmetrics does, whichever
    window is used."""
    sigmas, sizes = _window_args(sigma, kernel_size, nd, sizes_used=not gaussian_kernel)
    if gaussian_kernel:
        return [(True, s, 0, _filters.gaussian_size(s)) for s in sigmas]
    return [(False, 0.0, k, k) for k in sizes]


@constant_under_old_dynamo
def _ssim_plan(
    gaussian_kernel: bool,
    sigma: Union[float, Sequence[float]],
    kernel_size: Union[int, Sequence[int]],
    nd: int,
    padding: str,
    output: Output,
) -> tuple[tuple[Window, ...], Plan]:
    """SSIM's windows, checked, and its :class:`Plan` (cached, see :func:`_plan_key`). Dynamo of
    torch 2.0-2.2, which cannot build the frozen dataclasses, takes both as constants."""

    def make() -> tuple[tuple[Window, ...], Plan]:
        windows = tuple(_windows(gaussian_kernel, sigma, kernel_size, nd))
        return windows, Plan(_blur(windows, padding), output=output)

    key = _plan_key(gaussian_kernel, sigma, kernel_size, nd, padding, output, None)
    return _cached_plan(key, make)


@constant_under_old_dynamo
def _uqi_plan(
    sigma: Union[float, Sequence[float]],
    kernel_size: Union[int, Sequence[int]],
    nd: int,
    padding: str,
    output: Output,
    eps: float,
) -> tuple[tuple[Window, ...], Plan]:
    """UQI's windows (Gaussian, ``kernel_size`` taps), checked, and its :class:`Plan` (cached)."""

    def make() -> tuple[tuple[Window, ...], Plan]:
        sigmas, sizes = _window_args(sigma, kernel_size, nd)
        windows = tuple((True, s, k, k) for s, k in zip(sigmas, sizes))
        return windows, Plan(_blur(windows, padding), eps=eps, output=output)

    # Keyed as SSIM's plans are, with a Gaussian window; UQI's eps (a float, never None) sets
    # them apart.
    return _cached_plan(_plan_key(True, sigma, kernel_size, nd, padding, output, eps), make)


def _blur(windows: Sequence[Window], padding: str) -> _filters.Blur:
    taps = tuple(
        _filters.gaussian_taps(s, size) if gaussian else _filters.uniform_taps(size)
        for gaussian, s, _, size in windows
    )
    return _filters.Blur(taps, padding)  # type: ignore[arg-type]


def _odd_above(value: object) -> int:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        v = float(value)
        if math.isfinite(v) and v > 0:
            return int(v) if int(v) % 2 else int(v) + 1
    return 1


class ImageTooSmallError(ValueError):
    """An image axis too short for the window with the padding in use. Its message says how to
    switch padding with the engine's ``padding=`` argument; :meth:`through_apply` says it for a
    call through torchmetrics, which has no such argument (the patch's padding is set by
    ``ssim_patch.apply``)."""

    def __init__(self, template: str, switch_to: str) -> None:
        self.template, self.switch_to = template, switch_to
        super().__init__(template.format(switch=f"padding={switch_to!r}"))

    def through_apply(self) -> ValueError:
        """The same error for a call through torchmetrics' API."""
        p = self.switch_to
        return ValueError(
            self.template.format(switch=f"ssim_patch.apply(padding={p!r}) (pytest: --ssim-patch-padding={p})")
        )


def _check_sizes(shape: Sequence[int], windows: Sequence[Window], padding: str) -> None:
    for i, (_, _, _, size) in enumerate(windows):
        need = (size - 1) // 2 + 1 if padding == "same" else size
        if shape[2 + i] < need:
            raise _too_small(shape, windows, padding, i)


def _too_small(shape: Sequence[int], windows: Sequence[Window], padding: str, i: int) -> ImageTooSmallError:
    """The error for axis ``2 + i``, too short for its window with ``padding``."""
    names = _AXIS_NAMES[len(windows)]
    gaussian, s, _, size = windows[i]
    n = shape[2 + i]
    what = f"Gaussian window of sigma={s} ({size} taps)" if gaussian else f"uniform window of {size} taps"
    if padding == "same":
        need = (size - 1) // 2 + 1
        return ImageTooSmallError(
            f"Axis {2 + i} ({names[i]}) has size {n}, too short for reflect padding by "
            f"{need - 1} for a {what}: it needs at least {need}, or use a smaller window "
            f"or {{switch}} with at least {size}.",
            "valid",
        )
    return ImageTooSmallError(
        f"Axis {2 + i} ({names[i]}) has size {n}, shorter than the {what}: padding='valid' "
        f"needs at least {size}; use a smaller window or {{switch}} (needs "
        f"{(size - 1) // 2 + 1}).",
        "same",
    )


def _finite_range(images: Tensor) -> Tensor:
    """max - min over the finite pixels (a NaN or inf pixel spoils only its own image)."""
    high = images.nan_to_num(nan=-math.inf, posinf=-math.inf).amax()
    low = images.nan_to_num(nan=math.inf, neginf=math.inf).amin()
    dtype = compute_dtype(images.dtype)  # exact for float16 / bfloat16 images
    return high.to(dtype) - low.to(dtype)


def _data_range(
    preds: Tensor, target: Tensor, data_range: DataRange
) -> tuple[Tensor, Tensor, Union[float, Tensor]]:
    """Clamp for a (lo, hi) range and return L, as a float or a 0-d tensor (never synced).

    With ``data_range=None`` L is a function of the pixels, and the gradient flows through it.
    """
    if data_range is None:
        preds_range, target_range = _finite_range(preds), _finite_range(target)
        # torchmetrics' Python max(preds_range, target_range): preds' range unless target's is
        # larger, so on a tie L (and the gradient through it) is preds' range.
        big = torch.where(target_range > preds_range, target_range, preds_range)
        # A batch with no range at all (both images constant) scores with L=1 instead of 0/0.
        return preds, target, torch.where(big > 0, big, 1.0)
    if type(data_range) in _KEYED:  # the common case, without the ABC's isinstance
        _check_positive(float(data_range))  # type: ignore[arg-type]
        return preds, target, float(data_range)  # type: ignore[arg-type]
    data_range = _plain(data_range)  # type: ignore[assignment]
    if isinstance(data_range, Tensor):
        if data_range.numel() != 1:
            raise ValueError(
                f"A tensor `data_range` must hold one number, got shape {tuple(data_range.shape)}."
            )
        readable = _readable(data_range)
        if readable is not None:
            _check_positive(readable)
        big_l = data_range.reshape(()).to(device=preds.device, dtype=compute_dtype(preds.dtype))
        return preds, target, big_l
    if isinstance(data_range, (tuple, list)):
        # The clamp copies the images anyway: in the compute dtype, so the bounds are exact.
        preds, target = (t.to(compute_dtype(t.dtype)) for t in (preds, target))
        lo, hi = _bounds(data_range, preds)
        if (
            isinstance(lo, float)
            and isinstance(hi, float)
            and not (math.isfinite(lo) and math.isfinite(hi) and hi > lo)
        ):
            raise ValueError(f"`data_range` (lo, hi) needs finite lo < hi, got {data_range!r}.")
        return preds.clamp(lo, hi), target.clamp(lo, hi), hi - lo  # type: ignore[arg-type]
    if isinstance(data_range, numbers.Real):
        _check_positive(float(data_range))
        return preds, target, float(data_range)
    raise TypeError(f"`data_range` must be None, a positive number or a (lo, hi) tuple, got {data_range!r}.")


def _bounds(data_range: Sequence[object], like: Tensor) -> tuple[Union[float, Tensor], Union[float, Tensor]]:
    """A (lo, hi) range as two floats where both can be read without a sync, else as two 0-d
    tensors in ``like``'s dtype and device (unchecked, differentiable: tensor bounds stay tensors,
    as in torchmetrics, where the gradient reaches them through the clamp and hi - lo)."""
    values = [_plain(v) for v in data_range]
    if len(values) != 2 or not all(_is_number(v) for v in values):
        raise ValueError(f"`data_range` as a range must be two numbers (lo, hi), got {data_range!r}.")
    lo, hi = (_readable(v) for v in values)  # type: ignore[arg-type]
    if lo is not None and hi is not None:
        return lo, hi

    def as_tensor(v: object) -> Tensor:
        if isinstance(v, Tensor):
            return v.reshape(()).to(dtype=like.dtype, device=like.device)
        return torch.full((), float(v), dtype=like.dtype, device=like.device)  # type: ignore[arg-type]

    return as_tensor(values[0]), as_tensor(values[1])


def _check_positive(value: float) -> None:
    if not 0 < value < math.inf:
        raise ValueError(f"`data_range` must be positive and finite, got {value!r}.")


def _smallest(dtype: torch.dtype) -> float:
    """The smallest positive number of a compute dtype: a constant below it rounds to 0. (Not a
    dict by dtype: dynamo of torch 2.1 guards on such a lookup with a guard it cannot evaluate.)"""
    return 2.0**-1074 if dtype == torch.float64 else 2.0**-149


def _readable(value: Union[float, Tensor]) -> Optional[float]:
    """``value`` as a float where reading it costs no device sync and breaks no trace, else None."""
    if not isinstance(value, Tensor):
        return float(value)
    if value.device.type == "cpu" and not value.requires_grad and not _route.tracing() and not is_fake(value):
        return float(value)
    return None


def _constants(
    big_l: Union[float, Tensor], k1: object, k2: object, like: Tensor
) -> tuple[Union[float, Tensor], Union[float, Tensor]]:
    """c1 = (k1 L)^2 and c2 = (k2 L)^2: floats where they can be read without a sync, else 0-d
    tensors in ``like``'s dtype and device (``k1``, ``k2``: numbers or one-element tensors, as in
    torchmetrics). A ValueError where a nonzero one underflows to 0 (SSIM would then be 0/0 on flat
    windows), checked wherever it can be read."""
    constants: list[Union[float, Tensor]] = []
    for name, k in (("k1", _plain(k1)), ("k2", _plain(k2))):
        if not _is_number(k):
            raise TypeError(f"`{name}` must be a number, got {k!r}.")
        c: Union[float, Tensor] = (k * big_l) ** 2  # type: ignore[operator]
        value = _readable(c)
        if value is not None and _readable(k) != 0 and value < _smallest(like.dtype):  # type: ignore[arg-type]
            raise ValueError(
                f"`data_range`={_readable(big_l)!r} with {name}={k!r} gives ({name} * data_range)^2 = "
                f"{value:.3g}, which is 0 in {str(like.dtype).replace('torch.', '')}: SSIM would be 0/0 on "
                "flat windows. Express the images and data_range in a larger unit (e.g. both times 1e6)."
            )
        if value is None:
            assert isinstance(c, Tensor)  # only a tensor can be unreadable
            constants.append(c.reshape(()).to(dtype=like.dtype, device=like.device))
        else:
            constants.append(value)
    return constants[0], constants[1]
