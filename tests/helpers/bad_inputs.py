"""The bad inputs (``BAD_INPUTS``: case id, what the user passed, the call) and what each one gets:
checked by tests/test_misuse.py and, against every pinned release, tests/matrix/test_errors.py;
tabled in docs/bad-inputs.md (``table_rows``, written by scripts/gen_docs.py)."""

from __future__ import annotations

import importlib
import math
import warnings
from typing import Any, Callable

import numpy as np
import torch

import ssim_patch
from ssim_patch import _releases
from tests.helpers import patch_state

F = importlib.import_module(_releases.MODULE)

_G = torch.Generator().manual_seed(0)
X = torch.rand(2, 1, 16, 16, generator=_G)
Y = torch.rand(2, 1, 16, 16, generator=_G)


def _call(**kw: Any) -> Callable[[Callable[..., Any]], Any]:
    preds, target = kw.pop("preds", X), kw.pop("target", Y)
    return lambda fn: fn(preds, target, **kw)


# (case id, description, call); the description is what the user passed.
BAD_INPUTS: list[tuple[str, str, Callable[[Callable[..., Any]], Any]]] = [
    ("ndim-3", "images of shape (1, 16, 16) (no batch axis)", _call(preds=X[0], target=Y[0])),
    ("ndim-6", "images of shape (1, 1, 2, 1, 16, 16)", _call(preds=X[None, None], target=Y[None, None])),
    ("shape", "preds (2, 1, 16, 16), target (2, 1, 15, 16)", _call(target=Y[:, :, :15])),
    ("numpy", "numpy arrays", _call(preds=X.numpy(), target=Y.numpy())),
    ("list", "nested lists", _call(preds=X.tolist(), target=Y.tolist())),
    ("complex", "complex64 tensors", _call(preds=X.to(torch.complex64), target=Y.to(torch.complex64))),
    ("bool", "bool tensors", _call(preds=X > 0.5, target=Y > 0.5)),
    (
        "int8",
        "int8 tensors, data_range=100.0",
        _call(preds=(X * 100).to(torch.int8), target=(Y * 100).to(torch.int8), data_range=100.0),
    ),
    (
        "dtype-mix",
        "preds float16, target float64 (target cast to preds' dtype)",
        _call(preds=X.half(), target=Y.double()),
    ),
    ("empty-batch", "an empty batch (0, 1, 16, 16), data_range=None", _call(preds=X[:0], target=Y[:0])),
    ("empty-batch-range", "an empty batch, data_range=1.0", _call(preds=X[:0], target=Y[:0], data_range=1.0)),
    ("no-channels", "no channels (2, 0, 16, 16)", _call(preds=X[:, :0], target=Y[:, :0])),
    ("kernel-even", "gaussian_kernel=False, kernel_size=10", _call(gaussian_kernel=False, kernel_size=10)),
    ("kernel-zero", "gaussian_kernel=False, kernel_size=0", _call(gaussian_kernel=False, kernel_size=0)),
    (
        "kernel-negative",
        "gaussian_kernel=False, kernel_size=-3",
        _call(gaussian_kernel=False, kernel_size=-3),
    ),
    (
        "kernel-float",
        "gaussian_kernel=False, kernel_size=11.0",
        _call(gaussian_kernel=False, kernel_size=11.0),
    ),
    (
        "kernel-3-for-2d",
        "kernel_size=(3, 3, 3) for 2-D images",
        _call(gaussian_kernel=False, kernel_size=(3, 3, 3)),
    ),
    (
        "kernel-even-gaussian",
        "kernel_size=10 with the Gaussian window (unused, still checked)",
        _call(kernel_size=10),
    ),
    (
        "kernel-numpy",
        "gaussian_kernel=False, kernel_size=np.int64(7)",
        _call(gaussian_kernel=False, kernel_size=np.int64(7)),
    ),
    ("sigma-zero", "sigma=0", _call(sigma=0)),
    ("sigma-negative", "sigma=-1.0", _call(sigma=-1.0)),
    ("sigma-nan", "sigma=nan", _call(sigma=math.nan)),
    ("sigma-inf", "sigma=inf", _call(sigma=math.inf)),
    ("sigma-3-for-2d", "sigma=(1.0, 1.0, 1.0) for 2-D images", _call(sigma=(1.0, 1.0, 1.0))),
    ("sigma-str", 'sigma="1.5"', _call(sigma="1.5")),
    ("sigma-numpy", "sigma=np.float32(1.5)", _call(sigma=np.float32(1.5))),
    ("short-same", "height 5 with sigma=1.5 (pad 5)", _call(preds=X[..., :5, :], target=Y[..., :5, :])),
    (
        "short-depth",
        "3-D, depth 2 with sigma=1.5",
        _call(preds=torch.rand(1, 1, 2, 16, 16), target=torch.rand(1, 1, 2, 16, 16)),
    ),
    (
        "short-valid",
        "height 10, padding='valid' (window 11)",
        _call(preds=X[..., :10, :], target=Y[..., :10, :], padding="valid"),
    ),
    ("padding", "padding='reflect'", _call(padding="reflect")),
    ("reduction", "reduction='mean'", _call(reduction="mean")),
    (
        "both-flags",
        "return_full_image=True and return_contrast_sensitivity=True",
        _call(return_full_image=True, return_contrast_sensitivity=True),
    ),
    ("range-zero", "data_range=0.0", _call(data_range=0.0)),
    ("range-negative", "data_range=-1.0", _call(data_range=-1.0)),
    ("range-inf", "data_range=inf", _call(data_range=math.inf)),
    ("range-nan", "data_range=nan", _call(data_range=math.nan)),
    ("range-bool", "data_range=True", _call(data_range=True)),
    ("range-str", 'data_range="1"', _call(data_range="1")),
    ("range-numpy", "data_range=np.float32(1.0)", _call(data_range=np.float32(1.0))),
    ("range-reversed", "data_range=(1.0, 0.0)", _call(data_range=(1.0, 0.0))),
    ("range-empty", "data_range=(0.0, 0.0)", _call(data_range=(0.0, 0.0))),
    ("range-3", "data_range=(0.0, 1.0, 2.0)", _call(data_range=(0.0, 1.0, 2.0))),
    ("range-nan-hi", "data_range=(0.0, nan)", _call(data_range=(0.0, math.nan))),
    ("range-infinite", "data_range=(-inf, inf)", _call(data_range=(-math.inf, math.inf))),
    ("range-str-tuple", 'data_range=("a", "b")', _call(data_range=("a", "b"))),
    ("range-tensor-2", "data_range=torch.tensor([0.0, 1.0])", _call(data_range=torch.tensor([0.0, 1.0]))),
    ("range-tensor-zero", "data_range=torch.tensor(0.0)", _call(data_range=torch.tensor(0.0))),
    ("range-tensor-negative", "data_range=torch.tensor(-1.0)", _call(data_range=torch.tensor(-1.0))),
    ("range-tensor-nan", "data_range=torch.tensor(nan)", _call(data_range=torch.tensor(math.nan))),
    ("k-negative", "k1=-0.01 (only its square is used)", _call(k1=-0.01)),
    (
        "k-zero-flat",
        "k1=0, k2=0 with two flat images",
        _call(preds=torch.ones(1, 1, 16, 16), target=torch.ones(1, 1, 16, 16), k1=0.0, k2=0.0),
    ),
]


def outcome(call: Callable[[Callable[..., Any]], Any], fn: Callable[..., Any]) -> str:
    """What happens: ``TypeName: message``, or ``returns <value>``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = call(fn)
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
    else:
        value = value[0] if isinstance(value, tuple) else value
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            text = f"returns {value.item():.4g}"
        elif isinstance(value, torch.Tensor):
            text = f"returns a tensor of shape {tuple(value.shape)}"
        else:
            text = f"returns {value!r}"
    text = " ".join(text.split())
    if len(text) > 400:
        text = text[:400] + " …"
    return text.replace("|", "\\|")


class _NoPadding(Exception):
    """torchmetrics' functional has no ``padding`` argument."""


def _torchmetrics(preds, target, **kw):
    if "padding" in kw:
        raise _NoPadding
    return F.structural_similarity_index_measure(preds, target, **kw)


def _outcome(call, fn) -> str:
    text = outcome(call, fn)
    return "n/a (no `padding` argument)" if text.startswith("_NoPadding") else text


def table_rows(with_upstream: bool = False) -> list[str]:
    """One markdown row per case: ssim_patch.ssim, patched torchmetrics, and with
    ``with_upstream`` torchmetrics' own function (unpatched)."""
    with patch_state.kept():
        ssim_patch.apply()
        ours = [_outcome(call, ssim_patch.ssim) for _, _, call in BAD_INPUTS]
        patched = [_outcome(call, _torchmetrics) for _, _, call in BAD_INPUTS]
        if with_upstream:
            ssim_patch.revert()
            upstream = [_outcome(call, _torchmetrics) for _, _, call in BAD_INPUTS]
    rows = []
    for i, (case, text, _) in enumerate(BAD_INPUTS):
        row = f"| `{case}` | {text} | {ours[i]} | {'same' if patched[i] == ours[i] else patched[i]} |"
        rows.append(row + (f" {upstream[i]} |" if with_upstream else ""))
    return rows
