"""The argument forms torchmetrics' SSIM lets through its own code, on 0.8.2 ... 1.9.0, each beside
the plain value it means (read from each release's ``_ssim_compute``/``_ssim_update``: sigma and
kernel_size go through Python comparisons and ``int()``, data_range, k1 and k2 through arithmetic
with tensors, the flags through ``if``): numbers (a bool is one), numpy scalars, numpy arrays of one
number, one-element tensors, and tuples and lists of them. Shared by tests/test_arguments.py (the
installed release) and tests/matrix/test_argument_parity.py (every pinned release)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from tests.helpers.reference import reduce, ssim_reference, uqi_reference

T = torch.tensor
F64 = torch.float64

#: (argument, the value it means, forms of that value); a (lo, hi) data_range is taken by the
#: releases from 1.0 (earlier ones fail on any tuple, inside Python's arithmetic).
_SPECS: list[tuple[str, Any, list[Any], dict[str, Any]]] = [
    (
        "data_range",
        1.0,
        [
            1,
            True,
            np.float64(1.0),
            np.float32(1.0),
            np.int64(1),
            np.array(1.0),
            np.array([1.0]),
            T(1.0),
            T([1.0]),
            T(1.0, dtype=F64),
            T(1),
        ],
        {},
    ),
    (
        "data_range",
        (0.125, 0.875),
        [
            [0.125, 0.875],
            (np.float32(0.125), np.float32(0.875)),
            (np.array(0.125), np.array(0.875)),
            (T(0.125), T(0.875)),
            (T([0.125]), T([0.875])),
            (T(0.125, dtype=F64), T(0.875, dtype=F64)),
            (0.125, T(0.875)),
        ],
        {},
    ),
    (
        "sigma",
        1.5,
        [
            np.float32(1.5),
            np.array(1.5),
            np.array([1.5]),
            T(1.5),
            T([1.5]),
            (T(1.5), T(1.5)),
            (np.array(1.5), np.array(1.5)),
            [np.float32(1.5)] * 2,
            T([1.5, 1.5]),
            np.array([1.5, 1.5]),
        ],
        {},
    ),
    ("sigma", 1.0, [True, (True, True), 1, T(1)], {}),
    (
        "kernel_size",
        7,
        [
            np.int64(7),
            np.array(7),
            T(7),
            (T(7), T(7)),
            [np.int64(7)] * 2,
            (np.array(7),) * 2,
            T([7, 7]),
            np.array([7, 7]),
        ],
        {"gaussian_kernel": False},
    ),
    ("kernel_size", 1, [True], {"gaussian_kernel": False}),
    # A Gaussian window does not use kernel_size: torchmetrics only checks it (neither even nor <= 0).
    ("kernel_size", 11, [7.0, 6.5, (7.0, 9.0), np.array(7), (T(7), T(9)), True, math.inf], {}),
    ("k1", 0.01, [np.float64(0.01), np.array(0.01), T(0.01, dtype=F64), T([0.01], dtype=F64)], {}),
    ("k2", 0.03, [np.float64(0.03), np.array(0.03), T(0.03, dtype=F64), T([0.03], dtype=F64)], {}),
    ("reduction", "sum", [np.str_("sum")], {}),
    ("return_full_image", True, [1, np.bool_(True), T(True), "yes"], {}),
    ("return_contrast_sensitivity", False, [0, np.bool_(False), T(False), ""], {}),
    ("gaussian_kernel", False, [0, np.bool_(False), T(False)], {}),
]


def _label(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return type(value).__name__ + "-" + "-".join(_label(v) for v in value[:2])
    if isinstance(value, torch.Tensor):
        return f"tensor{list(value.shape)}{str(value.dtype).replace('torch.', '')}"
    if isinstance(value, np.ndarray):
        return f"ndarray{list(value.shape)}"
    return f"{type(value).__name__}({value!r})".replace("np.", "").replace(" ", "")


def forms() -> list[Any]:
    """pytest params of (form's keyword arguments, the plain keyword arguments they mean)."""
    params = []
    for name, plain, values, extra in _SPECS:
        for value in values:
            form, meant = {**extra, name: value}, {**extra, name: plain}
            params.append(pytest.param(form, meant, id=f"{name}={_label(value)}"))
    return params


#: Forms every release rejects with one of its own ``raise`` statements (a tensor or numpy value
#: out of range, a length that does not match the images).
REJECTED: list[Any] = [
    pytest.param({"sigma": (T(-1.5), T(1.5))}, id="sigma=tensor-negative"),
    pytest.param({"sigma": (np.array(0.0), 1.5)}, id="sigma=ndarray-zero"),
    pytest.param({"sigma": [T(1.5)]}, id="sigma=one-of-two"),
    pytest.param({"kernel_size": (T(6), T(7)), "gaussian_kernel": False}, id="kernel_size=tensor-even"),
    pytest.param({"kernel_size": np.int64(10)}, id="kernel_size=int64-even-gaussian"),
    pytest.param({"kernel_size": 6.0}, id="kernel_size=float-even-gaussian"),
    pytest.param({"reduction": "mean"}, id="reduction=mean"),
]


def call_with(fn: Any, preds: torch.Tensor, target: torch.Tensor, form: dict[str, Any]) -> torch.Tensor:
    """``fn(preds, target, **form)`` per image (unless the form sets the reduction), its SSIM only."""
    out = fn(preds, target, **{"reduction": "none", **form})
    return out[0] if isinstance(out, tuple) else out


def expected(preds: torch.Tensor, target: torch.Tensor, meant: dict[str, Any]) -> np.ndarray:
    """The float64 reference for the plain arguments, reduced as :func:`call_with` asks."""
    window = ("gaussian_kernel", "sigma", "kernel_size", "data_range", "k1", "k2")
    kw = {k: v for k, v in meant.items() if k in window}
    return reduce(
        ssim_reference(preds.numpy(), target.numpy(), **kw).per_image, meant.get("reduction", "none")
    )


#: UQI's kernel_size and sigma (two of each, as every release requires): the forms its releases take.
UQI_FORMS: list[Any] = [
    pytest.param(dict(kernel_size=form), dict(kernel_size=(7, 5)), id=f"kernel_size={_label(form)}")
    for form in [[7, 5], (np.int64(7), np.int64(5)), (np.array(7), np.array(5)), (T(7), T(5)), T([7, 5])]
] + [
    pytest.param(dict(sigma=form), dict(sigma=(1.5, 1.0)), id=f"sigma={_label(form)}")
    for form in [[1.5, True], (np.float32(1.5), np.float64(1.0)), (np.array(1.5), T(1.0)), T([1.5, 1.0])]
]


def uqi_expected(preds: torch.Tensor, target: torch.Tensor, meant: dict[str, Any]) -> np.ndarray:
    """The float64 reference UQI (mean over the whole map) for the plain arguments."""
    kw = {"kernel_size": (11, 11), "sigma": (1.5, 1.5), "eps": torch.finfo(preds.dtype).eps, **meant}
    return np.asarray(uqi_reference(preds.numpy(), target.numpy(), **kw).mean())
