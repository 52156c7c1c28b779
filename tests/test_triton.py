"""The Triton backend (``ssim_patch.backends.triton``) under Triton's interpreter, on CPU tensors.

The interpreter only works when ``TRITON_INTERPRET=1`` is set before the kernels are defined, so
every case runs in one child interpreter (this file run as a script): it prints one JSON line per
case with the errors it measured against the float64 references (``tests/helpers/reference_torch.py``'s
window and formula, differentiated by autograd), and the tests here assert each. Images are tiny
and blocks small: the interpreter costs about a millisecond per masked load. The interpreter shows
neither races nor speed: ``benchmarks/gpu_check.py`` measures those on a GPU.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import pytest
from packaging.version import Version

HERE = Path(__file__).resolve().parent

#: Bounds: values against float64 (absolute), gradients max |error| / max |float64 gradient|.
VALUE_BOUND = 1e-5
GRAD_BOUND = {"float32": 1e-4, "float16": 1e-3, "bfloat16": 8e-3}  # gradients stored in the input's dtype
#: One ulp just below 1 of a reduced-precision output dtype (the engine returns values in it).
OUTPUT_ROUNDING = {"float16": 2.0**-11, "bfloat16": 2.0**-8}

#: The cases: name -> what the child runs (see ``_run_case``).
CASES: dict[str, dict[str, Any]] = {
    "gaussian 3-tap 1x1x16x16": {"shape": (1, 1, 16, 16), "sigma": 0.5},
    "gaussian 11-tap 1x1x16x16": {"shape": (1, 1, 16, 16), "sigma": 1.5},
    "gaussian 11-tap, smallest image 1x1x6x6 (both edges reflect onto the same pixels)": {
        "shape": (1, 1, 6, 6),
        "sigma": 1.5,
    },
    "gaussian 5-tap 1x1x11x13, ragged blocks": {"shape": (1, 1, 11, 13), "sigma": 0.6, "blocks": (4, 8)},
    "gaussian 11-tap 1x1x10x64, blocks 4x8: edge and interior strips (two backward launches)": {
        "shape": (1, 1, 10, 64),
        "sigma": 1.5,
        "blocks": (4, 8),
    },
    "gaussian 5-tap 1x1x5x32, blocks 4x8: edge and interior strips (two backward launches)": {
        "shape": (1, 1, 5, 32),
        "sigma": 0.5,
        "blocks": (4, 8),
    },
    "gaussian 5-tap 1x1x5x29, blocks 4x8, edge strips 4 wide (the right edge's last ragged)": {
        "shape": (1, 1, 5, 29),
        "sigma": 0.5,
        "blocks": (4, 8),
        "edge_w": 4,
    },
    "valid 5x3 1x1x9x40, blocks 4x8: edge and interior strips": {
        "shape": (1, 1, 9, 40),
        "uniform": (5, 3),
        "padding": "valid",
        "blocks": (4, 8),
    },
    "uniform 5 1x1x12x12": {"shape": (1, 1, 12, 12), "uniform": (5, 5)},
    "anisotropic uniform 3x7 1x1x10x13": {"shape": (1, 1, 10, 13), "uniform": (3, 7)},
    "one-row window, uniform 1x5 1x1x7x12": {"shape": (1, 1, 7, 12), "uniform": (1, 5)},
    "31-row window, uniform 31x3 1x1x40x9, blocks 8x8 (30 partial sums carried)": {
        "shape": (1, 1, 40, 9),
        "uniform": (31, 3),
        "blocks": (8, 8),
    },
    "anisotropic gaussian sigma (1.0, 0.5) 1x1x11x10": {"shape": (1, 1, 11, 10), "sigma": (1.0, 0.5)},
    "valid 5x5 1x1x13x21, ragged blocks": {
        "shape": (1, 1, 13, 21),
        "uniform": (5, 5),
        "padding": "valid",
        "blocks": (4, 8),
    },
    "valid, smallest image 1x1x5x7 (window 5x7)": {
        "shape": (1, 1, 5, 7),
        "uniform": (5, 7),
        "padding": "valid",
    },
    "persistent grid: 2 programs for 9 tiles": {
        "shape": (1, 1, 9, 17),
        "sigma": 0.5,
        "blocks": (4, 8),
        "programs": 2,
    },
    "map output, gradient through the map": {"shape": (2, 1, 12, 12), "sigma": 0.5, "output": "map"},
    "cs output, gradient through cs": {"shape": (2, 1, 12, 12), "sigma": 0.5, "output": "cs"},
    "UQI 5x5 gaussian": {"shape": (1, 1, 12, 12), "sigma": 1.5, "taps": (5, 5), "uqi": True},
    "UQI, both images flat (0.7123) on the left half: flat windows are 0": {
        "shape": (1, 1, 10, 16),
        "sigma": 1.5,
        "taps": (5, 5),
        "uqi": True,
        "flat": 0.7123,
        "grad": False,
    },
    "float16 images": {"shape": (1, 1, 16, 16), "sigma": 0.5, "dtype": "float16"},
    "bfloat16 images": {"shape": (1, 1, 16, 16), "sigma": 0.5, "dtype": "bfloat16"},
    "strided (non-contiguous) images": {"shape": (1, 2, 12, 12), "sigma": 0.5, "layout": "strided"},
    "channels_last images": {"shape": (1, 2, 8, 8), "sigma": 0.5, "layout": "channels_last"},
    "tensor c1, c2: their gradients, x only": {"shape": (2, 1, 12, 12), "sigma": 0.5, "constants": "tensor"},
    "y only needs a gradient": {"shape": (1, 1, 12, 12), "sigma": 0.5, "needs": "y"},
    "forward only 2x3x40x40": {"shape": (2, 3, 40, 40), "sigma": 0.5, "grad": False},
    "through the op (SSIM_PATCH_BACKEND=triton, ssim_patch.ssim)": {
        "shape": (2, 1, 8, 8),
        "sigma": 0.5,
        "engine": True,
    },
    "through the op, bfloat16 images read as they are": {
        "shape": (1, 1, 8, 8),
        "sigma": 0.5,
        "engine": True,
        "dtype": "bfloat16",
    },
}


#: The oldest Triton these tests run on. Triton 3.0 (torch 2.4's) reads the kernels' tl.constexpr
#: annotations as strings (the module has ``from __future__ import annotations``), and its
#: ASTSource lacks an argument test_kernels_compile_for_sm90 passes. A CUDA torch pins its own
#: Triton, which the test extra must not replace, so these tests skip there instead.
TRITON_NEEDED = Version("3.2")


def _skip_reason() -> Optional[str]:
    if importlib.util.find_spec("triton") is None:
        return f"triton is not installed (these tests need triton>={TRITON_NEEDED})"
    found = Version(importlib.metadata.version("triton"))
    if found.release < TRITON_NEEDED.release:
        return f"these tests need triton>={TRITON_NEEDED}; this torch pins triton {found}"
    if found.release < (3, 8) and _numpy_refuses_one_element_ints():
        import numpy as np

        return (
            f"Triton {found}'s interpreter converts 1-element arrays to ints, which numpy {np.__version__} "
            "refuses (a launch of more than one program fails inside Triton); Triton 3.8+ or numpy<2.4 run them"
        )
    return None


def _numpy_refuses_one_element_ints() -> bool:
    """numpy 2.4 and later: ``int()`` of a 1-element array is a TypeError (before, a warning)."""
    import warnings

    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            int(np.ones(1))
        except TypeError:
            return True
    return False


#: The cases the default run checks (about 10 s of CPU time under the interpreter): the usual
#: window, both edges reflecting, valid, UQI, bfloat16, through the op, identical images. Every
#: case runs under the slow marker.
QUICK = (
    "gaussian 11-tap 1x1x16x16",
    "gaussian 5-tap 1x1x5x32, blocks 4x8: edge and interior strips (two backward launches)",
    "gaussian 5-tap 1x1x5x29, blocks 4x8, edge strips 4 wide (the right edge's last ragged)",
    "gaussian 11-tap, smallest image 1x1x6x6 (both edges reflect onto the same pixels)",
    "valid, smallest image 1x1x5x7 (window 5x7)",
    "one-row window, uniform 1x5 1x1x7x12",
    "UQI 5x5 gaussian",
    "bfloat16 images",
    "through the op (SSIM_PATCH_BACKEND=triton, ssim_patch.ssim)",
)


def _interpret(*names: str) -> dict[str, dict[str, Any]]:
    """The measurements of the cases ``names`` (all when none), from one child interpreter run
    with ``TRITON_INTERPRET=1``."""
    from tests.helpers.fresh_interpreter import unpatched_environ

    env = {**unpatched_environ(), "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    # Every case: about a minute of CPU time, 62 s on 2 lightly loaded cores, 274 s at a load
    # average of 7.5 (a 300 s cap failed there), so they are slow (CI runs them with -m slow). The
    # cap is only there so a hung child fails instead of stalling the run.
    out = subprocess.run(
        [sys.executable, "-m", "tests.test_triton", *names],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=HERE.parent,
    )
    found = {}
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            found[record["case"]] = record
    if not found:
        pytest.fail(f"the interpreter child printed no case:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return found


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, Any]]:
    """Every case's measurements."""
    return _interpret()


@pytest.fixture(scope="module")
def quick_results() -> dict[str, dict[str, Any]]:
    """The measurements of :data:`QUICK` and of identical images."""
    return _interpret(*QUICK, "identical")


def _result(results: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    assert name in results, f"the child did not report {name!r}"
    record = results[name]
    assert record["error"] is None, record["error"]
    return record


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_against_float64(results: dict[str, dict[str, Any]], name: str) -> None:
    _check_against_float64(results, name)


@pytest.mark.parametrize("name", QUICK)
def test_quick_cases_against_float64(quick_results: dict[str, dict[str, Any]], name: str) -> None:
    _check_against_float64(quick_results, name)


def test_quick_identical_images_exact(quick_results: dict[str, dict[str, Any]]) -> None:
    _check_identical(quick_results)


def _check_against_float64(results: dict[str, dict[str, Any]], name: str) -> None:
    record = _result(results, name)
    bound = VALUE_BOUND
    if CASES[name].get("engine") and CASES[name].get("dtype", "float32") != "float32":
        bound = OUTPUT_ROUNDING[CASES[name]["dtype"]]  # ssim_patch.ssim answers in the images' dtype
    assert record["value_err"] <= bound, record
    if CASES[name].get("grad", True):
        assert record["grad_err"] <= GRAD_BOUND[CASES[name].get("dtype", "float32")], record
    for key in ("c1_err", "c2_err"):
        if key in record:
            assert record[key] <= GRAD_BOUND["float32"], record


@pytest.mark.slow
def test_persistent_grid_has_fewer_programs_than_tiles(results: dict[str, dict[str, Any]]) -> None:
    record = _result(results, "persistent grid: 2 programs for 9 tiles")
    assert record["programs"] == 2 and record["tiles"] == 9, record


@pytest.mark.slow
def test_gradient_keeps_layout(results: dict[str, dict[str, Any]]) -> None:
    """A channels_last image gets a channels_last gradient (written through its strides, no copy)."""
    record = _result(results, "channels_last images")
    assert record["grad_strides"] == record["image_strides"], record


@pytest.mark.slow
def test_identical_images_exact(results: dict[str, dict[str, Any]]) -> None:
    _check_identical(results)


def _check_identical(results: dict[str, dict[str, Any]]) -> None:
    """Equal images: SSIM exactly 1 and a gradient of exactly 0 (not rounding noise)."""
    record = _result(results, "identical")
    assert record["values"] == [1.0, 1.0], record
    assert record["grad_max"] == 0.0, record


@pytest.mark.slow
def test_fallback_agrees_with_the_kernels(results: dict[str, dict[str, Any]]) -> None:
    """What the fall-back's forward keeps, and its gradients, agree with the kernels' to rounding."""
    record = _result(results, "fall-back")
    assert record["kept"] <= 1e-5 and record["grad"] <= 1e-5, record


@pytest.mark.slow
def test_two_runs_bit_identical(results: dict[str, dict[str, Any]]) -> None:
    record = _result(results, "determinism")
    assert record["identical"], record


@pytest.mark.slow
def test_reduced_precision_gradient_dtype(results: dict[str, dict[str, Any]]) -> None:
    for name in ("float16 images", "bfloat16 images"):
        record = _result(results, name)
        assert record["grad_dtype"] == CASES[name]["dtype"], record


def test_unsupported_says_why() -> None:
    """float64, 3-D images and windows over 31 taps are for other backends; the reason names
    what was given."""
    import torch

    from ssim_patch import _filters
    from ssim_patch.backends import triton as backend
    from ssim_patch.backends._protocol import Plan

    plan = Plan(_filters.Blur(((1 / 3,) * 3, (1 / 3,) * 3), "same"))
    why = backend.BACKEND.unsupported(torch.zeros(1, 1, 8, 8, dtype=torch.float64), plan)
    assert why is not None and "float64" in why
    volume = Plan(_filters.Blur(((1 / 3,) * 3,) * 3, "same"))
    why = backend.BACKEND.unsupported(torch.zeros(1, 1, 8, 8, 8), volume)
    assert why is not None and "3-D" in why
    wide = Plan(_filters.Blur(((1 / 33,) * 33, (1 / 3,) * 3), "same"))
    why = backend.BACKEND.unsupported(torch.zeros(1, 1, 40, 40), wide)
    assert why is not None and "33" in why


# --- the fall-back under auto: a kernel that cannot compile or launch ----------------------------


def _fallback_case(output: str) -> tuple[Any, ...]:
    """Random 2x2x20x24 float32 images, an 11-tap Gaussian, their float64 reference per image (and
    map) and gradients for a unit upstream gradient per image."""
    import torch

    from ssim_patch import _filters, _formula
    from ssim_patch.backends._protocol import Plan

    gen = torch.Generator().manual_seed(7)
    x64 = torch.rand(2, 2, 20, 24, generator=gen, dtype=torch.float64).requires_grad_()
    y64 = (
        x64.detach() * 0.7 + 0.2 * torch.rand(2, 2, 20, 24, generator=gen, dtype=torch.float64)
    ).requires_grad_()
    c1, c2 = 0.01**2, 0.03**2
    spec = {"sigma": 1.5}
    ref_map, _ = _reference(x64, y64, _windows(spec), "same", c1, c2, None)
    ref_image = ref_map.mean((1, 2, 3))
    gx64, gy64 = torch.autograd.grad(ref_image.sum(), (x64, y64))
    blur = _filters.Blur((_filters.gaussian_taps(1.5, 11),) * 2, "same")
    k = _formula.constants(c1, c2, None, torch.empty((), dtype=torch.float32))
    plan = Plan(blur, None, output)  # type: ignore[arg-type]
    x, y = x64.detach().float(), y64.detach().float()
    return x, y, k, plan, ref_image.detach(), ref_map.detach(), gx64, gy64


def _grad_err(g: Any, ref: Any) -> float:
    return float((g.double() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("output", ["ssim", "map"])
def test_auto_falls_back_when_the_kernels_cannot_launch(monkeypatch: pytest.MonkeyPatch, output: str) -> None:
    """Under auto a kernel that fails (here the real Triton JIT, given CPU tensors without the
    interpreter: no GPU driver, or CPU pointers on a GPU machine) falls back to convolutions for
    its specialization, with one warning naming the error, and the numbers and gradients still
    match float64; the fall-back shows in ``status()``'s backend line; forced, the error is raised."""
    import warnings

    import torch

    from ssim_patch import backends
    from ssim_patch.backends import triton as backend
    from ssim_patch.backends._protocol import Needs

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if backend.interpreting():
        pytest.skip("the kernels were loaded for the interpreter")
    monkeypatch.setattr(backend, "FALLBACKS", {}, raising=False)
    monkeypatch.delenv(backends.ENV, raising=False)
    x, y, k, plan, ref_image, ref_map, gx64, gy64 = _fallback_case(output)
    needs = Needs(True, True, False, False)
    with pytest.warns(
        RuntimeWarning, match=r"Triton kernels failed on cpu for float32 images.*conv backend"
    ) as caught:
        per_image, extra, kept = backend.BACKEND.forward(x, y, k, plan, needs)
    assert len([w for w in caught if "Triton kernels failed" in str(w.message)]) == 1
    assert kept is not None
    assert [(t.shape, t.dtype) for t in kept] == [
        (t.shape, t.dtype) for t in backend.kept_like(x, plan, needs)
    ]
    assert float((per_image.double() - ref_image).abs().max()) <= VALUE_BOUND
    g_extra = None
    if output == "map":
        assert extra is not None and float((extra.double() - ref_map).abs().max()) <= VALUE_BOUND
        g_image, g_extra = torch.zeros(2), torch.full_like(extra, 1.0 / extra[0].numel())
    else:
        g_image = torch.ones(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning: the specialization is remembered
        gx, gy, _, _ = backend.BACKEND.backward(x, y, k, kept, g_image, g_extra, plan, needs)
        assert gx is not None and gy is not None
        assert _grad_err(gx, gx64) <= GRAD_BOUND["float32"] and _grad_err(gy, gy64) <= GRAD_BOUND["float32"]
        again, _, _ = backend.BACKEND.forward(x, y, k, plan, None)
    assert torch.equal(again, per_image)
    (failure,) = backend.FALLBACKS.values()
    name, picks = backends.describe()
    assert name == "auto" and "conv where a kernel failed (1): cpu float32 11x11 same" in dict(picks)["cuda"]
    assert failure in backends.summary(name, picks)
    monkeypatch.setenv(backends.ENV, "triton")
    with pytest.raises(Exception) as raised:
        backend.BACKEND.forward(x, y, k, plan, None)
    assert f"{type(raised.value).__name__}: {raised.value}".startswith(failure), failure


def test_auto_falls_back_when_only_the_backward_kernel_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forward kept in the kernels' layout (here by the fall-back's own forward) and a backward
    kernel that fails (an ``OutOfResources`` as Triton raises it) under auto: the gradient comes
    from the transposed convolutions, exact against float64; forced, the error is raised."""
    import torch
    from triton.runtime.errors import OutOfResources

    from ssim_patch import backends
    from ssim_patch.backends import triton as backend
    from ssim_patch.backends._protocol import Needs

    class Failing:
        def __getitem__(self, grid: Any) -> Any:
            def launch(*args: Any, **kwargs: Any) -> None:
                raise OutOfResources(300000, 232448, "shared memory")

            return launch

    kernels = type("Kernels", (), {"ssim_backward_kernel": Failing(), "ssim_forward_kernel": Failing()})
    monkeypatch.setattr(backend, "_KERNELS", kernels)
    monkeypatch.setattr(backend, "FALLBACKS", {}, raising=False)
    monkeypatch.delenv(backends.ENV, raising=False)
    x, y, k, plan, ref_image, _, gx64, gy64 = _fallback_case("ssim")
    needs = Needs(True, True, False, False)
    per_image, _, kept = backend._forward_torch(x, y, k, plan, needs)
    assert kept is not None and float((per_image.double() - ref_image).abs().max()) <= VALUE_BOUND
    monkeypatch.setenv(backends.ENV, "triton")
    with pytest.raises(OutOfResources):
        backend.BACKEND.backward(x, y, k, kept, torch.ones(2), None, plan, needs)
    monkeypatch.delenv(backends.ENV)
    with pytest.warns(RuntimeWarning, match="OutOfResources: out of resource: shared memory"):
        gx, gy, _, _ = backend.BACKEND.backward(x, y, k, kept, torch.ones(2), None, plan, needs)
    assert gx is not None and gy is not None
    assert _grad_err(gx, gx64) <= GRAD_BOUND["float32"] and _grad_err(gy, gy64) <= GRAD_BOUND["float32"]


def test_module_imports_without_triton() -> None:
    """Importing the backend does not import triton (it is imported on first use)."""
    from tests.helpers.fresh_interpreter import unpatched_environ

    code = "import sys, ssim_patch.backends.triton; print('triton' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=unpatched_environ()
    )
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize(
    ("width", "block_w", "edge_w", "pad"),
    [
        (1920, 256, 128, 5),
        (1920, 256, 256, 5),
        (61, 8, 4, 5),
        (64, 8, 2, 5),
        (32, 8, 4, 2),
        (40, 8, 4, 0),
        (6, 8, 4, 5),
        (300, 256, 128, 15),
        (1000, 128, 32, 3),
    ],
)
def test_strip_launches_cover_each_column_once(width: int, block_w: int, edge_w: int, pad: int) -> None:
    """The backward's launches (``_strip_launches``) take every column once, no strip wholly past
    the image; the edge launch's strips are ``edge_w`` wide and take every column within ``pad``
    of a border's window reach, the interior ones ``block_w`` wide and none of those."""
    from ssim_patch.backends import triton as tb

    taken: list[int] = []
    for strip0, strips, skip, gap, edge, strip_w in tb._strip_launches(width, block_w, edge_w, pad):
        assert strip_w == (edge_w if edge else block_w)
        for i in range(strips):
            s = strip0 + i + (gap if i >= skip else 0)
            cols = [c for c in range(s * strip_w, (s + 1) * strip_w) if c < width]
            assert cols, (s, strip_w)
            if not edge:  # an interior strip's windows stay inside the image
                assert cols[0] - pad > 0 and cols[-1] + pad < width - 1, cols
            taken += cols
    assert sorted(taken) == list(range(width))


@pytest.mark.parametrize(
    ("arch", "interpreting", "expected"), [(90, False, 128), (80, False, None), (90, True, None)]
)
def test_register_cap_only_where_compiled_for_sm90(
    monkeypatch: pytest.MonkeyPatch, arch: int, interpreting: bool, expected: Optional[int]
) -> None:
    """The interior forward's ``maxnreg`` reaches the launch on sm_90 and later only (sm_80 would
    spill under it), and never under the interpreter."""
    from ssim_patch.backends import triton as tb

    monkeypatch.setattr(tb, "_arch", lambda: arch)
    monkeypatch.setattr(tb, "interpreting", lambda: interpreting)
    config = tb.CONFIG
    assert tb._options(config.forward, config, config.forward_registers[1]).get("maxnreg") == expected
    assert "maxnreg" not in tb._options(config.forward, config, config.forward_registers[0])


def test_the_compiled_arch_is_read_once_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_arch`` asks Triton's driver for a device's target once, and tells devices and drivers
    apart (the offline model swaps in a driver per target)."""
    from triton.runtime import driver

    from ssim_patch.backends import triton as tb

    asked: list[int] = []
    current = [0]

    class Driver:
        def get_current_device(self) -> int:
            return current[0]

        def get_current_target(self) -> Any:
            asked.append(current[0])
            return SimpleNamespace(arch=(90, 80)[current[0]])

    monkeypatch.setattr(tb, "_ARCHS", {})
    monkeypatch.setattr(driver, "_active", Driver())
    assert [tb._arch(), tb._arch()] == [90, 90]
    current[0] = 1
    assert [tb._arch(), tb._arch()] == [80, 80]
    assert asked == [0, 1]
    monkeypatch.setattr(driver, "_active", Driver())  # another driver, device 1 again
    assert tb._arch() == 80 and asked == [0, 1, 1]


@pytest.mark.parametrize(("taps", "n"), [(11, 16), (11, 6), (5, 7), (3, 2), (7, 40)])
def test_edge_weights_are_the_padded_window_transposed(taps: int, n: int) -> None:
    """The backward's table (``_edge_weights``): position ``c`` of a reflect-padded axis takes
    ``w[c][t]`` of the adjoint at ``c + pad - t``: the Jacobian of the reflect-padded correlation
    (float64, ``F.pad``), read there. Random taps, so that no symmetry hides an index error."""
    import torch
    import torch.nn.functional as F

    from ssim_patch.backends import triton as tb

    generator = torch.Generator().manual_seed(taps * 100 + n)
    window = tuple(float(v) for v in torch.rand(taps, dtype=torch.float64, generator=generator))
    pad = taps // 2
    padded = F.pad(torch.eye(n, dtype=torch.float64)[:, None, :], (pad, pad), mode="reflect")[:, 0]
    jacobian = sum(window[t] * padded[:, t : t + n] for t in range(taps))  # [input c, output o]
    positions = [*range(pad + 1), *range(n - 1 - pad, n)]
    weights = tb._edge_weights(window, n, pad)
    assert len(weights) == len(positions)
    for c, row in zip(positions, weights):
        for t in range(taps):
            o = c + pad - t
            if 0 <= o < n:
                assert row[t] == pytest.approx(float(jacobian[c, o]), abs=1e-15), (c, t)


@pytest.mark.slow
def test_kernels_compile_for_sm90() -> None:
    """Every kernel specialization compiles to a cubin for sm_90 (H100/H200) on this machine, no
    GPU needed: what the interpreter lets through (types, layouts, registers) must also compile."""
    from tests.helpers.fresh_interpreter import unpatched_environ

    out = subprocess.run(
        [sys.executable, "-m", "tests.test_triton", "--compile"],
        cwd=HERE.parent,
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in unpatched_environ().items() if k != "TRITON_INTERPRET"},
    )
    records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(records) == len(_COMPILED), out.stdout + out.stderr[-4000:]
    failed = {r["case"]: r["error"] for r in records if r["error"] is not None}
    assert not failed, "\n".join(f"--- {k}\n{v}" for k, v in failed.items())


# --- the child: runs the kernels under the interpreter ---------------------------------------------


def _child() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1"
    import torch

    torch.set_num_threads(1)
    only = set(sys.argv[1:])
    for name, spec in CASES.items():
        if not only or name in only:
            _emit(name, lambda spec=spec: _run_case(spec))
    for name, fn in (
        ("identical", _identical),
        ("determinism", _determinism),
        ("fall-back", _fallback_agrees),
    ):
        if not only or name in only:
            _emit(name, fn)


def _emit(name: str, fn: Any) -> None:
    start = time.process_time()
    try:
        record = {"case": name, "error": None, **fn()}
    except Exception:
        record = {"case": name, "error": traceback.format_exc()}
    record["cpu_seconds"] = round(time.process_time() - start, 2)
    print(json.dumps(record), flush=True)


def _windows(spec: dict[str, Any]) -> list[Any]:
    import torch

    from tests.helpers import reference_torch as rt

    if "uniform" in spec:
        return [torch.full((k,), 1.0 / k, dtype=torch.float64) for k in spec["uniform"]]
    sigma = spec["sigma"] if isinstance(spec["sigma"], tuple) else (spec["sigma"],) * 2
    sizes = spec.get("taps", (None, None))
    return [rt.gaussian_window(s, k) for s, k in zip(sigma, sizes)]


def _reference(
    x: Any, y: Any, windows: list[Any], padding: str, c1: Any, c2: Any, eps: Optional[float]
) -> Any:
    """Float64 S map and cs map: the textbook formula on tests/helpers/reference_torch.py's window."""
    from tests.helpers import reference_torch as rt

    def blur(a: Any) -> Any:
        return rt.blur(a, windows, padding)

    mx, my = blur(x), blur(y)
    vx = (blur(x * x) - mx * mx).clamp_min(0)
    vy = (blur(y * y) - my * my).clamp_min(0)
    cov = blur(x * y) - mx * my
    if eps is not None:  # UQI
        return (2 * mx * my) * (2 * cov) / ((mx * mx + my * my) * (vx + vy) + eps), None
    cs = (2 * cov + c2) / (vx + vy + c2)
    return (2 * mx * my + c1) / (mx * mx + my * my + c1) * cs, cs


def _images(spec: dict[str, Any], seed: int = 0) -> tuple[Any, Any]:
    import torch

    dtype = getattr(torch, spec.get("dtype", "float32"))
    shape = spec["shape"]
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    x = u.to(dtype)
    y = (0.7 * u + 0.3 * torch.rand(shape, generator=gen, dtype=torch.float64)).to(dtype)
    if "flat" in spec:  # both images one value on the left half
        x[..., : shape[3] // 2] = spec["flat"]
        y[..., : shape[3] // 2] = spec["flat"]
    layout = spec.get("layout")
    if layout == "strided":  # every other column of a wider image, and a transposed one
        wide = torch.zeros(*shape[:3], 2 * shape[3], dtype=dtype)
        wide[..., ::2] = x
        x = wide[..., ::2]
        y = y.transpose(2, 3).contiguous().transpose(2, 3)
        assert not x.is_contiguous() and not y.is_contiguous()
    elif layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        y = y.contiguous(memory_format=torch.channels_last)
    return x, y


def _run_case(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from ssim_patch import _filters, _formula
    from ssim_patch.backends import triton as backend
    from ssim_patch.backends._protocol import Needs, Plan

    if spec.get("engine"):
        return _through_engine(spec)
    x, y = _images(spec)
    windows = _windows(spec)
    padding = spec.get("padding", "same")
    output = spec.get("output", "ssim")
    uqi = spec.get("uqi", False)
    eps = float(torch.finfo(torch.float32).eps) if uqi else None
    plan = Plan(_filters.Blur(tuple(tuple(w.tolist()) for w in windows), padding), eps=eps, output=output)
    config = backend.CONFIG
    if "blocks" in spec:
        block_h, block_w = spec["blocks"]
        launch = backend.Launch(block_h=block_h, block_w=block_w)
        config = backend.with_config(
            forward=launch, backward=launch, edge_block_w=spec.get("edge_w", block_w)
        )
    if "programs" in spec:
        config = backend.with_config(
            forward=config.forward, backward=config.backward, max_programs=spec["programs"]
        )
    grad = spec.get("grad", True)
    tensor_constants = spec.get("constants") == "tensor"
    c1v, c2v = (0.0, 0.0) if uqi else (1e-4, 9e-4)
    c1_64 = torch.tensor(c1v, dtype=torch.float64, requires_grad=tensor_constants)
    c2_64 = torch.tensor(c2v, dtype=torch.float64, requires_grad=tensor_constants)
    if tensor_constants:
        c1: Any = c1_64.detach().float().requires_grad_()
        c2: Any = c2_64.detach().float().requires_grad_()
    else:
        c1, c2 = c1v, c2v
    k = _formula.constants(c1, c2, eps, torch.empty((), dtype=torch.float32))
    which = spec.get("needs", "xy")
    needs = Needs("x" in which, "y" in which, tensor_constants, tensor_constants)
    assert backend.BACKEND.unsupported(x, plan) is None
    old = backend.CONFIG
    backend.CONFIG = config
    try:
        per_image, extra, kept = backend.BACKEND.forward(x, y, k, plan, needs if grad else None)
    finally:
        backend.CONFIG = old
    if kept is not None:  # what a fake implementation is told the forward keeps
        like = backend.BACKEND.kept_like(x, plan, needs)
        assert [(t.shape, t.dtype) for t in like] == [(t.shape, t.dtype) for t in kept], (like, kept)
    xr = x.double().requires_grad_(needs.x)
    yr = y.double().requires_grad_(needs.y)
    ref_map, ref_cs = _reference(xr, yr, windows, padding, c1_64, c2_64, eps)
    ref_image = ref_map.flatten(1).mean(1)
    record: dict[str, Any] = {"value_err": float((per_image.double() - ref_image).abs().max())}
    if output == "map":
        assert extra is not None
        record["value_err"] = max(record["value_err"], float((extra.double() - ref_map).abs().max()))
    if output == "cs":
        assert extra is not None and ref_cs is not None
        ref_extra = ref_cs.flatten(1).mean(1)
        record["value_err"] = max(record["value_err"], float((extra.double() - ref_extra).abs().max()))
    if "blocks" in spec or "programs" in spec:
        oh, ow = plan.blur.out_size(tuple(x.shape[2:]))
        launch = config.forward
        record["tiles"] = (
            x.shape[0] * x.shape[1] * math.ceil(oh / launch.block_h) * math.ceil(ow / launch.block_w)
        )
        record["programs"] = backend._programs(record["tiles"], x.device, config)
    if not grad:
        return record
    gen = torch.Generator().manual_seed(5)
    g_image = g_extra = None
    if output == "ssim":
        g_image = torch.rand(x.shape[0], generator=gen, dtype=torch.float64) + 0.5
        loss = (ref_image * g_image).sum()
    elif output == "map":
        g_extra = torch.rand(ref_map.shape, generator=gen, dtype=torch.float64)
        loss = (ref_map * g_extra).sum()
    else:
        g_extra = torch.rand(x.shape[0], generator=gen, dtype=torch.float64)
        loss = (ref_cs.flatten(1).mean(1) * g_extra).sum()
    leaves = [t for t, need in ((xr, needs.x), (yr, needs.y), (c1_64, needs.c1), (c2_64, needs.c2)) if need]
    ref_grads = iter(torch.autograd.grad(loss, leaves))
    backend.CONFIG = config
    try:
        grads = backend.BACKEND.backward(
            x,
            y,
            k,
            kept,
            None if g_image is None else g_image.float(),
            None if g_extra is None else g_extra.float(),
            plan,
            needs,
        )
    finally:
        backend.CONFIG = old
    errors = []
    for got, need, image in zip(grads[:2], (needs.x, needs.y), (x, y)):
        if not need:
            assert got is None
            continue
        ref = next(ref_grads)
        assert got is not None and got.dtype == x.dtype and got.shape == x.shape
        errors.append(float((got.double() - ref).abs().max()) / float(ref.abs().max()))
        record["grad_dtype"] = str(got.dtype).replace("torch.", "")
        record["grad_strides"] = list(got.stride())
        record["image_strides"] = list(image.stride())
    record["grad_err"] = max(errors)
    for key, got, need in (("c1_err", grads[2], needs.c1), ("c2_err", grads[3], needs.c2)):
        if need:
            ref = next(ref_grads)
            assert got is not None and got.ndim == 0
            record[key] = float((got.double() - ref).abs()) / float(ref.abs())
    return record


def _through_engine(spec: dict[str, Any]) -> dict[str, Any]:
    """ssim_patch.ssim with the backend forced: the op runs the kernels forward and backward."""
    import ssim_patch
    from ssim_patch.backends import triton as backend
    from tests.helpers import reference_torch as rt

    calls = {"forward": 0, "backward": 0}
    real_forward, real_backward = backend.forward, backend.backward

    seen = []

    def counted_forward(*args: Any, **kwargs: Any) -> Any:
        calls["forward"] += 1
        seen.append(str(args[0].dtype).replace("torch.", ""))
        return real_forward(*args, **kwargs)

    def counted_backward(*args: Any, **kwargs: Any) -> Any:
        calls["backward"] += 1
        return real_backward(*args, **kwargs)

    os.environ["SSIM_PATCH_BACKEND"] = "triton"
    backend.forward, backend.backward = counted_forward, counted_backward  # type: ignore[assignment]
    try:
        x, y = _images(spec)
        x.requires_grad_()
        per_image = ssim_patch.ssim(x, y, sigma=spec["sigma"], data_range=1.0, reduction="none")
        per_image.sum().backward()
    finally:
        backend.forward, backend.backward = real_forward, real_backward  # type: ignore[assignment]
        del os.environ["SSIM_PATCH_BACKEND"]
    assert calls == {"forward": 1, "backward": 1}, calls
    assert seen == [spec.get("dtype", "float32")], seen  # no float32 copy of half images
    assert x.grad is not None and x.grad.dtype == x.dtype
    xr = x.detach().double().requires_grad_()
    ref, _, _ = rt.ssim(xr, y.double(), sigma=spec["sigma"], data_range=1.0)
    ref.sum().backward()
    assert x.grad is not None and xr.grad is not None
    return {
        "grad_dtype": str(x.grad.dtype).replace("torch.", ""),
        "value_err": float((per_image.detach().double() - ref.detach()).abs().max()),
        "grad_err": float((x.grad.double() - xr.grad).abs().max()) / float(xr.grad.abs().max()),
    }


def _identical() -> dict[str, Any]:
    import torch

    from ssim_patch import _filters, _formula
    from ssim_patch.backends import triton as backend
    from ssim_patch.backends._protocol import Needs, Plan

    spec = {"shape": (2, 1, 6, 7), "sigma": 1.5}
    x, _ = _images(spec, seed=3)
    x = x * 7 - 3  # far from the shift's scale: an FMA residue would show
    plan = Plan(_filters.Blur(tuple(tuple(w.tolist()) for w in _windows(spec)), "same"))
    k = _formula.constants(1e-4, 9e-4, None, x)
    needs = Needs(True, True, False, False)
    per_image, _, kept = backend.BACKEND.forward(x, x.clone(), k, plan, needs)
    assert kept is not None
    gx, gy, _, _ = backend.BACKEND.backward(x, x.clone(), k, kept, torch.ones(2), None, plan, needs)
    assert gx is not None and gy is not None
    return {"values": per_image.tolist(), "grad_max": float(torch.cat((gx, gy)).abs().max())}


def _fallback_agrees() -> dict[str, Any]:
    """The fall-back's forward and backward against the kernels', on the same inputs: what they
    keep (the kernels' layout and shifts) and the gradients, for the loss and the map, valid too."""
    import torch

    from ssim_patch import _filters, _formula
    from ssim_patch.backends import triton as backend
    from ssim_patch.backends._protocol import Needs, Plan

    worst = {"kept": 0.0, "grad": 0.0}
    for output, padding in (("ssim", "same"), ("map", "same"), ("ssim", "valid")):
        spec = {"shape": (2, 1, 9, 11), "sigma": 0.6}
        x, y = _images(spec, seed=5)
        plan = Plan(_filters.Blur(tuple(tuple(w.tolist()) for w in _windows(spec)), padding), None, output)
        k = _formula.constants(1e-4, 9e-4, None, x)
        needs = Needs(True, True, False, False)
        ran = backend.forward(x, y, k, plan, needs)
        fell = backend._forward_torch(x, y, k, plan, needs)
        assert ran[2] is not None and fell[2] is not None
        assert [t.shape for t in ran[2]] == [t.shape for t in fell[2]]
        compared = ran[2] if output == "map" else ran[2][:1]  # c sums: left empty unless c1, c2 need them
        for a, b in zip(compared, fell[2]):
            worst["kept"] = max(worst["kept"], float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)))
        g_image = torch.ones(2) if output == "ssim" else torch.zeros(2)
        g_extra = None if output == "ssim" else torch.rand(ran[1].shape)  # type: ignore[union-attr]
        for a, b in zip(
            backend.backward(x, y, k, ran[2], g_image, g_extra, plan, needs),
            backend.backward(x, y, k, ran[2], g_image, g_extra, plan, needs, fall_back=True),
        ):
            if a is not None and b is not None:
                worst["grad"] = max(worst["grad"], float((a - b).abs().max() / b.abs().max()))
    return worst


def _determinism() -> dict[str, Any]:
    import torch

    from ssim_patch import _filters, _formula
    from ssim_patch.backends import triton as backend
    from ssim_patch.backends._protocol import Needs, Plan

    spec = {"shape": (1, 1, 8, 9), "sigma": 0.5}
    x, y = _images(spec, seed=4)
    plan = Plan(_filters.Blur(tuple(tuple(w.tolist()) for w in _windows(spec)), "same"))
    k = _formula.constants(torch.tensor(1e-4), torch.tensor(9e-4), None, x)
    needs = Needs(True, True, True, True)
    launch = backend.Launch(block_h=4, block_w=4)
    config = backend.with_config(forward=launch, backward=launch, max_programs=3)  # 6 tiles
    runs = []
    for _ in range(2):
        per_image, _, kept = backend.forward(x, y, k, plan, needs, config)
        assert kept is not None
        grads = backend.backward(x, y, k, kept, torch.ones(1), None, plan, needs, config)
        runs.append([per_image, *kept, *(g for g in grads if g is not None)])
    same = all(torch.equal(a, b) for a, b in zip(*runs))
    return {"identical": same}


#: Kernel specializations compiled for sm_90: (kernel, image dtype, constexprs, num_warps).
_WINDOW = {"KH": 11, "KW": 11, "PAD_H": 5, "PAD_W": 5, "BLOCK_H": 64, "BLOCK_W": 128}
_FORWARD = {
    "EDGE": True,
    "HAS_EPS": False,
    "HAS_FLAT": False,
    "WRITE_MAP": False,
    "WRITE_CS": False,
    "WRITE_TERMS": False,
    "WRITE_ADJ": False,
    "NEED_X": False,
    "NEED_Y": False,
    "Y_AT": 0,
    "DIFF_AT": 0,
    "WRITE_CSUMS": False,
}
_LOSS_X = {"WRITE_ADJ": True, "NEED_X": True, "Y_AT": 1, "DIFF_AT": 1}
_EDGE = {"EDGE": True, "MASKS": True, "EDGE_AT": 352}
_INTERIOR = {"EDGE": False, "MASKS": False, "EDGE_AT": 352}
_COMPILED: dict[str, tuple[str, str, dict[str, Any], int]] = {
    "forward, metric, fp32": ("forward", "fp32", {**_WINDOW, **_FORWARD}, 4),
    "forward, loss for x, fp32, edge strips": ("forward", "fp32", {**_WINDOW, **_FORWARD, **_LOSS_X}, 4),
    "forward, loss for x, fp32, 256 columns, interior strips": (
        "forward",
        "fp32",
        {**_WINDOW, **_FORWARD, **_LOSS_X, "EDGE": False, "BLOCK_W": 256},
        4,
    ),
    "forward, loss for x and y with c sums, bf16": (
        "forward",
        "bf16",
        {**_WINDOW, **_FORWARD, **_LOSS_X, "NEED_Y": True, "DIFF_AT": 2, "WRITE_CSUMS": True},
        8,
    ),
    "forward, UQI map and terms, fp16": (
        "forward",
        "fp16",
        {**_WINDOW, **_FORWARD, "HAS_EPS": True, "HAS_FLAT": True, "WRITE_MAP": True, "WRITE_TERMS": True},
        4,
    ),
    "forward, cs, 1x1 window, unit strides, one plane": (
        "forward",
        "fp32",
        {
            **_FORWARD,
            "KH": 1,
            "KW": 1,
            "PAD_H": 0,
            "PAD_W": 0,
            "BLOCK_H": 16,
            "BLOCK_W": 32,
            "WRITE_CS": True,
            "sxw": 1,
            "syw": 1,
            "P": 1,
            "C": 1,
        },
        1,
    ),
    "backward, x, fp32, edge strips": (
        "backward",
        "fp32",
        {**_WINDOW, **_EDGE, "NEED_X": True, "NEED_Y": False, "Y_AT": 1, "DIFF_AT": 1, "HAS_SCALE": True},
        4,
    ),
    "backward, x, fp32, interior strips": (
        "backward",
        "fp32",
        {**_WINDOW, **_INTERIOR, "NEED_X": True, "NEED_Y": False, "Y_AT": 1, "DIFF_AT": 1, "HAS_SCALE": True},
        4,
    ),
    "backward, x and y, no scale, bf16, 256 columns, interior strips": (
        "backward",
        "bf16",
        {
            **_WINDOW,
            **_INTERIOR,
            "BLOCK_W": 256,
            "NEED_X": True,
            "NEED_Y": True,
            "Y_AT": 1,
            "DIFF_AT": 2,
            "HAS_SCALE": False,
        },
        8,
    ),
}


def _compile_child() -> None:
    """Compile every :data:`_COMPILED` specialization for sm_90; one JSON line each."""
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ssim_patch.backends import _triton_kernels as kernels

    images = {"x_ptr", "y_ptr", "gx_ptr", "gy_ptr"}
    for name, (which, dtype, constants, warps) in _COMPILED.items():
        start = time.process_time()
        try:
            fn = kernels.ssim_forward_kernel if which == "forward" else kernels.ssim_backward_kernel
            params = list(inspect.signature(fn.fn).parameters)
            signature = {}
            for p in params:
                if p in constants:
                    signature[p] = "constexpr"
                elif p.endswith("_ptr"):
                    signature[p] = "*" + (dtype if p in images else "fp32")
                else:
                    signature[p] = "fp32" if p == "unit" else "i32"
            source = ASTSource(
                fn, signature, constexprs={(params.index(k),): v for k, v in constants.items()}
            )
            triton.compile(
                source,
                target=GPUTarget("cuda", 90, 32),
                options={"num_warps": warps, "enable_fp_fusion": True},
            )
            error = None
        except Exception:
            error = traceback.format_exc()
        seconds = round(time.process_time() - start, 2)
        print(json.dumps({"case": name, "error": error, "cpu_seconds": seconds}), flush=True)


if __name__ == "__main__":
    if "--compile" in sys.argv:
        _compile_child()
    else:
        _child()
