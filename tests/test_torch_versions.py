"""A drop-in on every torch from the floor (2.0) to the newest: what moved between torch releases
(``ssim_patch._torch_features``), torchmetrics' APIs under ``torch.compile(fullgraph=True)`` where
dynamo of torch 2.1-2.5 could not trace the patch's argument checks, and the floor itself.

CI runs this file on the floor torch and on the newest besides the default one (``.ci/run``).
"""

from __future__ import annotations

import gc
import importlib
import inspect
import pathlib
import re
import sys
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from packaging.version import Version

import ssim_patch
from ssim_patch import _patcher, _releases, _torch_features
from ssim_patch._torch_features import exporting, fake_mode_active, is_compiling, is_fake, transforms_active
from tests.helpers.reference import ms_ssim_reference, ssim_reference, uqi_reference
from tests.helpers.torch_support import reset_dynamo

ROOT = pathlib.Path(__file__).resolve().parents[1]
TORCH = Version(torch.__version__)
#: torch.compile itself refuses Python 3.11 before torch 2.1 (unpatched torchmetrics too).
COMPILES = not (Version("2.1") > TORCH and sys.version_info >= (3, 11))
needs_compile = pytest.mark.skipif(not COMPILES, reason=f"torch {TORCH} cannot compile on this Python")


# --- what the installed torch offers ---------------------------------------------------------------


def test_fake_tensors_are_told_apart():
    from torch._subclasses.fake_tensor import FakeTensorMode

    real = torch.ones(2)
    assert not is_fake(real) and not fake_mode_active(real)
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(real) if hasattr(mode, "from_tensor") else torch.ones(2)
        assert is_fake(fake) and fake_mode_active(fake)


@pytest.mark.filterwarnings("ignore:torch.is_autocast_cpu_enabled:DeprecationWarning")
@pytest.mark.parametrize(
    "by_device_type", [True, False], ids=["per device type (2.4 on)", "cpu and cuda (2.0-2.3)"]
)
def test_autocast_is_told_on_and_off_per_device_type(monkeypatch, by_device_type):
    if by_device_type and not hasattr(torch, "get_autocast_dtype"):
        pytest.skip("this torch has no torch.get_autocast_dtype")
    if not by_device_type and not hasattr(torch, "is_autocast_cpu_enabled"):
        pytest.skip("this torch has no torch.is_autocast_cpu_enabled")
    probe = _torch_features._autocast_probe(by_device_type)
    assert not probe("cpu") and not probe("cuda") and not probe("meta")  # meta: no autocast, no error
    monkeypatch.setattr(_torch_features, "autocast_on", probe)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert probe("cpu") and not probe("cuda") and not probe("meta")
        with _torch_features.autocast_off("cpu"):
            assert not probe("cpu")
        assert probe("cpu")


@pytest.mark.parametrize("mark", ["dynamo_constant", "constant_under_old_dynamo"])
def test_dynamo_constants_are_marked_as_assume_constant_result_does(monkeypatch, mark):
    dynamo = pytest.importorskip("torch._dynamo")
    monkeypatch.setattr(_torch_features, "OLD_DYNAMO", True)

    def mine() -> int:
        return 1

    def theirs() -> int:
        return 1

    getattr(_torch_features, mark)(mine)
    dynamo.assume_constant_result(theirs)
    marks = {name for name in vars(theirs) if name.startswith("_dynamo")}
    assert marks and {name: vars(mine).get(name) for name in marks} == {
        name: vars(theirs)[name] for name in marks
    }


@pytest.mark.parametrize(
    "value", [0, 1, 2, 5, 11, 64, 1000, -3, (5, 3), [7, 1], ((2,), [3]), True, 1.5, "same", None]
)
def test_specialized_values_are_the_values(value):
    """Dynamo of 2.1-2.2 traces these comparisons on a symbolic int; eagerly they give every int,
    in tuples and lists too, and leave the rest (bools included) as it is."""
    got = _torch_features._specialized(value)
    assert got == value and type(got) is type(value)


@needs_compile
def test_is_compiling_is_true_while_dynamo_traces(dynamo):
    assert not is_compiling()

    def probe(x: torch.Tensor) -> torch.Tensor:
        return x + 1 if is_compiling() else x - 1

    assert torch.compile(probe, backend="eager", fullgraph=True)(torch.zeros(1)).item() == 1.0


def _plus_one_if(flag):
    def probe(x: torch.Tensor) -> torch.Tensor:
        return x + 1 if flag() else x - 1

    return probe


@needs_compile
def test_transforms_active_is_read_while_dynamo_traces(dynamo):
    """Dynamo before torch 2.5 could not trace ``torch._C._are_functorch_transforms_active``
    (fullgraph and strict export stopped there); it reads it as a constant."""
    probe = _plus_one_if(transforms_active)
    assert probe(torch.zeros(1)).item() == -1.0
    assert torch.func.vmap(probe)(torch.zeros(2)).tolist() == [1.0, 1.0]
    assert torch.compile(probe, backend="eager", fullgraph=True)(torch.zeros(1)).item() == -1.0


class _Exporting(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _plus_one_if(exporting)(x)


def _export_modes() -> list[dict[str, bool]]:
    """The modes of torch.export this torch has and :func:`exporting` tells: strict where dynamo
    keeps the translator it runs (``symbolic_convert.tls``: torch 2.4 has it, 2.1 not; there
    every dynamo trace takes the traced route anyway), non-strict where export takes strict=False."""
    export = pytest.importorskip("torch.export", reason=f"torch {TORCH} has no torch.export")
    convert = importlib.import_module("torch._dynamo.symbolic_convert")
    modes = [{"strict": True}] if hasattr(convert, "tls") else []
    if "strict" in inspect.signature(export.export).parameters:
        modes.append({"strict": False})
    if not modes:
        pytest.skip(f"torch {TORCH}: neither export mode is told from a compile")
    return modes


@needs_compile
def test_exporting_is_told_from_compiling(dynamo):
    """``exporting()``: False eagerly and while ``torch.compile`` traces, True while
    ``torch.export`` records, strict (dynamo traces) or not (on torch 2.4, before
    ``torch.compiler.is_exporting``, nothing told a strict export from a compile)."""
    assert _Exporting()(torch.zeros(1)).item() == -1.0
    assert torch.compile(_Exporting(), backend="eager", fullgraph=True)(torch.zeros(1)).item() == -1.0
    for mode in _export_modes():
        exported = torch.export.export(_Exporting(), (torch.zeros(1),), **mode)
        assert exported.module()(torch.zeros(1)).item() == 1.0, mode
    reset_dynamo()
    assert torch.compile(_Exporting(), backend="eager", fullgraph=True)(torch.zeros(1)).item() == -1.0


# --- torchmetrics' APIs, compiled ------------------------------------------------------------------


def _pair(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=g)
    return (0.8 * target + 0.2 * torch.rand(shape, generator=g)), target


def _ssim(p, t, **kw):
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(p, t, reduction="none", **kw)


def _ms_ssim(p, t):
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    return multiscale_structural_similarity_index_measure(p, t, data_range=1.0, reduction="none")


def _uqi(p, t, **kw):
    from torchmetrics.functional.image import universal_image_quality_index

    return universal_image_quality_index(p, t, **kw)


#: name: (call, shape, the float64 reference of the result)
CASES = {
    "ssim data_range=1.0": (
        lambda p, t: _ssim(p, t, data_range=1.0),
        (2, 3, 32, 32),
        lambda p, t: ssim_reference(p, t, data_range=1.0).per_image,
    ),
    "ssim data_range=None": (_ssim, (2, 3, 32, 32), lambda p, t: ssim_reference(p, t).per_image),
    "ms-ssim": (_ms_ssim, (1, 1, 180, 180), lambda p, t: ms_ssim_reference(p, t, data_range=1.0)),
    "uqi": (_uqi, (2, 3, 32, 32), lambda p, t: np.asarray(uqi_reference(p, t).mean())),
}


@needs_compile
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("case", list(CASES))
def test_torchmetrics_compiles_with_fullgraph(case, dynamic, dynamo):
    """fullgraph=True through torchmetrics' own API gives the corrected numbers (before: dynamo of
    2.1-2.5 stopped at the argument checks; 2.1-2.2 traced into the backend's choice)."""
    call, shape, reference = CASES[case]
    p, t = _pair(shape)
    with ssim_patch.patched():
        got = torch.compile(call, backend="aot_eager", fullgraph=True, dynamic=dynamic)(p, t)
    expected = reference(p.double().numpy(), t.double().numpy())
    np.testing.assert_allclose(got.double().numpy(), expected, atol=2e-5, rtol=0)


@needs_compile
def test_compiled_loss_has_eager_gradients(dynamo):
    """The user's loss, compiled (default options, inductor left out for time): eager's value and
    gradient (before, on torch 2.1.2 with suppress_errors, SSIM came back [1.0, 1.0])."""
    p, t = _pair((2, 3, 32, 32), seed=1)

    def loss(a: torch.Tensor) -> torch.Tensor:
        return (1 - _ssim(a, t, data_range=1.0)).sum()

    with ssim_patch.patched():
        a, b = p.clone().requires_grad_(), p.clone().requires_grad_()
        compiled = torch.compile(loss, backend="aot_eager")(a)
        eager = loss(b)
        compiled.backward()
        eager.backward()
    torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=0)
    expected = ssim_reference(p.double().numpy(), t.double().numpy(), data_range=1.0).per_image
    np.testing.assert_allclose(compiled.item(), 2 - expected.sum(), atol=2e-5)


@needs_compile
@pytest.mark.parametrize("api", ["ssim", "uqi"])
def test_compiled_dynamic_reads_the_window_from_its_closure(api, dynamo):
    """``dynamic=True`` makes symbolic the ints a compiled function reads from its closure: dynamo
    of torch 2.1-2.2 then stopped at the patched call (``InternalTorchDynamoError: SymNodeVariable()
    is not a constant``) where unpatched torchmetrics compiles. The corrected value for each
    window; the function compiled for one window is compiled again for the next."""
    p, t = _pair((2, 1, 24, 25), seed=2)

    def compiled(kernel_size: tuple[int, int]) -> Any:
        kw: dict[str, Any] = dict(kernel_size=kernel_size)

        def call(a: torch.Tensor) -> torch.Tensor:
            if api == "ssim":
                return _ssim(a, t, data_range=1.0, gaussian_kernel=False, **kw)
            return _uqi(a, t, sigma=(1.0, 0.7), **kw)

        return torch.compile(call, backend="aot_eager", dynamic=True)

    pd, td = p.double().numpy(), t.double().numpy()
    with ssim_patch.patched():
        for kernel_size in ((5, 3), (7, 5)):
            got = compiled(kernel_size)(p)
            if api == "ssim":
                ref = ssim_reference(pd, td, gaussian_kernel=False, kernel_size=kernel_size, data_range=1.0)
                expected = ref.per_image
            else:
                expected = np.asarray(uqi_reference(pd, td, kernel_size=kernel_size, sigma=(1.0, 0.7)).mean())
            np.testing.assert_allclose(got.double().numpy(), expected, atol=2e-5, rtol=0)


def _compiled_globals() -> dict[str, frozenset[str]]:
    """The names dynamo has put in each module's globals for the frames it compiled."""
    return {
        name: frozenset(
            k for k in getattr(module, "__dict__", {}) if k.startswith(("__compiled_fn", "__resume_at"))
        )
        for name, module in list(sys.modules.items())
    }


@needs_compile
@pytest.mark.skipif(not _torch_features.OLD_DYNAMO, reason="revert() resets dynamo on torch 2.0-2.2 only")
def test_revert_leaves_no_compiled_frame_to_the_garbage_collector(dynamo, patch_reverted):
    """revert() resets dynamo's caches on torch 2.0-2.2. Dynamo there removes the globals a compiled
    frame put in its module (a resume function after a graph break) when that frame's code is
    collected; left to a later collection, the removal could land while dynamo traced another frame
    of that module and iterated its globals (``InternalTorchDynamoError: dictionary changed size
    during iteration``, a UQI metric compiled after revert() on torch 2.1.2). revert() collects it."""
    x, y = _pair((1, 2, 30, 33), seed=3)
    metric = importlib.import_module("torchmetrics.image.uqi").UniversalImageQualityIndex(reduction="none")
    gc.disable()  # no collection but those asked for
    try:
        ssim_patch.apply()
        torch.compile(metric, backend="eager")(x, y)
        ssim_patch.revert()
        installed = _compiled_globals()
        gc.collect()
    finally:
        gc.enable()
    assert _compiled_globals() == installed


@pytest.mark.parametrize("compiled", [[], ["a frame"]], ids=["nothing compiled", "compiled"])
def test_revert_collects_only_where_dynamo_compiled_something(monkeypatch, compiled):
    """revert()'s reset on torch 2.0-2.2 collects the dropped code only where dynamo compiled a
    frame since its last reset (a full collection takes ~90 ms with torch loaded): a stand-in
    dynamo, on every torch."""
    calls: list[str] = []

    codes = SimpleNamespace(seen=list(compiled))

    def reset() -> None:
        calls.append("reset")
        codes.seen.clear()  # in place, as dynamo's reset() does

    dynamo = SimpleNamespace(reset=reset, convert_frame=SimpleNamespace(input_codes=codes))
    monkeypatch.setitem(sys.modules, "torch._dynamo", dynamo)
    monkeypatch.setattr(_torch_features, "OLD_DYNAMO", True)
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append("collect") or 0)
    _patcher._forget_compiled()
    assert calls == (["reset", "collect"] if compiled else ["reset"])


# --- the floor -------------------------------------------------------------------------------------


def test_pyproject_floor_is_the_runtime_floor():
    text = (ROOT / "pyproject.toml").read_text()
    floor = re.search(r'"torch>=([0-9.]+)"', text)
    assert floor is not None and Version(floor.group(1)) == _releases.TORCH_FLOOR
    assert Version(torch.__version__).release >= _releases.TORCH_FLOOR.release


@pytest.mark.parametrize("strict", [True, False])
def test_apply_on_a_torch_below_the_floor_names_both(monkeypatch, strict):
    before = _patcher._snapshot()
    monkeypatch.setattr(_patcher, "_torch_version", lambda: Version("1.13.1"))
    if strict:
        with pytest.raises(ssim_patch.PatchError, match=r"torch 1\.13\.1 is older than torch 2\.0"):
            ssim_patch.apply(padding="valid")
    else:
        with pytest.warns(UserWarning, match=r"torch 1\.13\.1 is older than torch 2\.0"):
            ssim_patch.apply(padding="valid", strict=False)
    assert _patcher._snapshot() == before


def test_the_torch_version_is_read_without_importing_torch_again():
    assert _patcher._torch_version() == Version(torch.__version__)
