"""The engine's plan cache (``_arguments._PLANS``): a call that follows another gives exactly what it
gives after a fresh start, whichever argument that decides the plan differs between the two.

Each pair below differs in one field of the key (``_arguments._plan_key``); dropping that field from
the key makes the second call reuse the first's plan, and its pair fails.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from ssim_patch import _arguments, engine

Call = Callable[[], Any]


def _images(*shape: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(sum(shape))
    return torch.rand(shape, generator=g, dtype=dtype), torch.rand(shape, generator=g, dtype=dtype)


X2, Y2 = _images(2, 1, 16, 16)
X3, Y3 = _images(1, 1, 16, 16, 16)
X32, Y32 = _images(2, 1, 16, 16, dtype=torch.float32)


def ssim(x: torch.Tensor = X2, y: torch.Tensor = Y2, **kwargs: Any) -> Call:
    return lambda: engine.ssim(x, y, data_range=1.0, **kwargs)


def uqi(x: torch.Tensor = X2, y: torch.Tensor = Y2, **kwargs: Any) -> Call:
    return lambda: engine.uqi(x, y, **kwargs)


#: (what differs, the first call, the second call).
PAIRS: list[tuple[str, Call, Call]] = [
    ("gaussian_kernel", ssim(kernel_size=7), ssim(kernel_size=7, gaussian_kernel=False)),
    ("sigma", ssim(sigma=1.5), ssim(sigma=1.0)),
    ("kernel_size", ssim(gaussian_kernel=False, kernel_size=7), ssim(gaussian_kernel=False, kernel_size=5)),
    (
        "a number's type",
        ssim(gaussian_kernel=False, kernel_size=7),
        ssim(gaussian_kernel=False, kernel_size=7.0),
    ),
    (
        "a number's type in a sequence",
        ssim(gaussian_kernel=False, kernel_size=(7, 7)),
        ssim(gaussian_kernel=False, kernel_size=(7.0, 7)),
    ),
    ("a number or a sequence", ssim(sigma=1.5), ssim(sigma=[1.5])),
    ("spatial axes", ssim(sigma=1.0), ssim(X3, Y3, sigma=1.0)),
    ("padding", ssim(padding="same"), ssim(padding="valid")),
    ("output", ssim(), ssim(return_full_image=True)),
    ("output cs", ssim(), ssim(return_contrast_sensitivity=True)),
    ("eps", uqi(X32, Y32), uqi(X32.double(), Y32.double())),
    ("SSIM or UQI", uqi(kernel_size=(13, 13)), ssim(sigma=(1.5, 1.5), kernel_size=(13, 13))),
]


def _outcome(call: Call) -> tuple[Any, ...]:
    """What ``call`` returns (its tensors) or raises (its type and message)."""
    try:
        out = call()
    except (ValueError, TypeError) as exc:
        return ("raised", type(exc), str(exc))
    return ("returned", *(out if isinstance(out, tuple) else (out,)))


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    if len(a) != len(b) or a[0] != b[0]:
        return False
    if a[0] == "raised":
        return a == b
    return all(u.dtype == v.dtype and u.shape == v.shape and torch.equal(u, v) for u, v in zip(a[1:], b[1:]))


@pytest.mark.parametrize("first, second", [p[1:] for p in PAIRS], ids=[p[0] for p in PAIRS])
def test_a_call_after_another_gives_what_it_gives_alone(first: Call, second: Call) -> None:
    _arguments._PLANS.clear()
    alone = _outcome(second)
    _arguments._PLANS.clear()
    _outcome(first)
    after = _outcome(second)
    assert _same(after, alone), (after[:1], alone[:1])
    assert not _same(_outcome(first), alone)  # the pair tells the two plans apart


def test_a_repeated_call_reuses_its_plan() -> None:
    _arguments._PLANS.clear()
    first = _outcome(ssim())
    assert len(_arguments._PLANS) == 1
    assert _same(_outcome(ssim()), first) and len(_arguments._PLANS) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sigma": torch.tensor(1.5)},  # a tensor: read at each call
        {"kernel_size": (11, True)},  # a bool among the numbers
        {"gaussian_kernel": torch.tensor(True)},
    ],
    ids=["tensor", "bool", "tensor flag"],
)
def test_other_argument_types_are_not_cached(kwargs: dict[str, Any]) -> None:
    _arguments._PLANS.clear()
    _outcome(ssim(**kwargs))
    assert _arguments._PLANS == {}


def test_an_argument_error_is_raised_at_each_call() -> None:
    _arguments._PLANS.clear()
    for _ in range(2):
        with pytest.raises(ValueError, match="kernel_size"):
            engine.ssim(X2, Y2, gaussian_kernel=False, kernel_size=4)
    assert _arguments._PLANS == {}


def test_nothing_is_cached_while_a_transform_runs() -> None:
    _arguments._PLANS.clear()
    torch.func.grad(lambda x: engine.ssim(x, Y2, data_range=1.0))(X2)
    assert _arguments._PLANS == {}
