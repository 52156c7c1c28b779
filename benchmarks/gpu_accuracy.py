"""(b) of the GPU check: float32 per-image SSIM and its gradient against float64 references, with
TF32 on and off, and the caller's TF32 settings unchanged by the call. tests/test_gpu.py makes it
pass/fail."""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch
from torch import Tensor

from benchmarks import report
from benchmarks.cases import (
    Shape,
    shape_text,
)
from benchmarks.gpu_utils import BACKENDS, backend_for, forced_backend, kept_tf32, log, set_tf32, tf32_state
from benchmarks.timing import failure

ROOT = Path(__file__).resolve().parent.parent


def _numpy_reference() -> Optional[ModuleType]:
    path = ROOT / "tests" / "helpers" / "reference.py"
    try:
        spec = importlib.util.spec_from_file_location("ssim_numpy_reference", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    except Exception as exc:
        log(f"numpy reference {path} not usable: {exc}")
        return None


def float32_bound(x: Tensor, y: Tensor, data_range: float) -> float:
    """What float32 moments can promise (tests/test_properties.py): the variance is E[x^2] - E[x]^2,
    so its rounding error is ~eps * max(x^2), over a denominator no smaller than (0.03 L)^2."""
    top = max(float(x.abs().max()), float(y.abs().max()))
    return 1e-6 + 8 * torch.finfo(torch.float32).eps * top**2 / (0.03 * data_range) ** 2


#: Float32 gradient against the float64 one: max |difference| / max |float64 gradient|.
GRAD_BOUND = 1e-4
#: With TF32 on, errors may exceed the TF32-off ones by at most this factor, plus TF32_SLACK.
TF32_FACTOR, TF32_SLACK = 2.0, 1e-7
#: The two float64 references (engine on the device, numpy) must agree this closely.
REFERENCE_BOUND = 1e-9


def _torchmetrics_per_image(x: Tensor, y: Tensor, patched: bool) -> tuple[Tensor, Tensor]:
    """Per-image SSIM (data range 1) and the gradient of ``1 - mean`` w.r.t. ``x``."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    import ssim_patch

    x = x.detach().requires_grad_(True)
    with ssim_patch.patched() if patched else contextlib.nullcontext():
        per_image = structural_similarity_index_measure(x, y, data_range=1.0, reduction="none")
    assert isinstance(per_image, Tensor)
    (1.0 - per_image.mean()).backward()  # type: ignore[no-untyped-call]
    assert x.grad is not None
    return per_image.detach(), x.grad


ACCURACY_HEAD = [
    "data",
    "shape",
    "TF32",
    "backend",
    "patched err",
    "bound",
    "unpatched err",
    "patched grad err",
]
ACCURACY_HEAD += ["unpatched grad err", "refs agree", "TF32 settings kept", "holds"]


def _references(
    x32: Tensor, y32: Tensor, device: str, numpy_ref: Optional[ModuleType]
) -> tuple[Tensor, Tensor, str, bool]:
    """Float64 per-image SSIM (numpy's where available), the float64 gradient of ``1 - mean`` (the
    engine on the device), the two references' gap as text, and whether it is within bounds."""
    import ssim_patch

    xr, yr = x32.double().to(device).requires_grad_(True), y32.double().to(device)
    ref = ssim_patch.ssim(xr, yr, data_range=1.0, reduction="none")
    assert isinstance(ref, Tensor)
    (1.0 - ref.mean()).backward()  # type: ignore[no-untyped-call]
    assert xr.grad is not None
    values = ref.detach().cpu()
    if numpy_ref is None:
        return values, xr.grad, "n/a (no numpy reference)", True
    np_values = torch.from_numpy(
        numpy_ref.ssim_reference(x32.double().numpy(), y32.double().numpy(), data_range=1.0).per_image
    )
    gap = float((values - np_values).abs().max())
    return np_values, xr.grad, f"{gap:.1e}", gap <= REFERENCE_BOUND


def _errors(
    x: Tensor, y: Tensor, patched: bool, ref: Tensor, ref_grad: Tensor
) -> tuple[str, str, float, float]:
    """Max value error and relative gradient error of one torchmetrics call, as text and numbers."""
    try:
        values, grad = _torchmetrics_per_image(x, y, patched)
    except Exception as exc:
        text = failure("call", exc).split(": ", 1)[1][:80]
        return f"error: {text}", "n/a", float("inf"), float("inf")
    err = float((values.double().cpu() - ref).abs().max())
    g_err = float((grad.double() - ref_grad).abs().max()) / (float(ref_grad.abs().max()) or 1.0)
    return f"{err:.1e}", f"{g_err:.1e}", err, g_err


def accuracy_section(device: str, quick: bool) -> tuple[report.Rows, bool]:
    """The accuracy table, and whether every patched row holds its bounds with TF32 on and off."""
    numpy_ref = _numpy_reference()
    shapes: tuple[Shape, ...] = (
        ((1, 2, 24, 24), (1, 1, 12, 12, 12)) if quick else ((4, 3, 256, 256), (2, 1, 48, 48, 48))
    )
    data = {"U(0,1) pair": (0.0, 1.0), "0.9 + U(0,0.03)": (0.9, 0.03)}
    rows = [ACCURACY_HEAD]
    ok = True
    for label, (offset, amplitude) in data.items():
        for shape in shapes:
            gen = torch.Generator().manual_seed(2)
            u = torch.rand(shape, generator=gen, dtype=torch.float64)
            x32 = (offset + amplitude * u).float()
            y32 = (
                offset + amplitude * (0.7 * u + 0.3 * torch.rand(shape, generator=gen, dtype=torch.float64))
            ).float()
            try:
                ref, ref_grad, gap, refs_ok = _references(x32, y32, device, numpy_ref)
            except Exception as exc:
                ok = False
                rows.append([label, shape_text(shape), "-", f"reference failed: {failure('ssim', exc)}"])
                rows[-1] += ["n/a"] * (len(ACCURACY_HEAD) - len(rows[-1]))
                continue
            bound = float32_bound(x32, y32, 1.0)
            xd, yd = x32.to(device), y32.to(device)
            for backend in (None, *BACKENDS):
                used = backend_for(shape, device, name=backend)
                if used.startswith("n/a"):  # a forced backend that cannot take these images
                    rows.append(
                        [
                            label,
                            shape_text(shape),
                            "-",
                            f"{backend}: {used}",
                            *["-"] * (len(ACCURACY_HEAD) - 4),
                        ]
                    )
                    continue
                off = (0.0, 0.0)
                for tf32 in (False, True):
                    with kept_tf32(), forced_backend(backend):
                        set_tf32(tf32)
                        before = tf32_state()
                        err_text, g_text, err, g_err = _errors(xd, yd, True, ref, ref_grad)
                        kept = tf32_state() == before
                        u_err_text, u_g_text, _, _ = _errors(xd, yd, False, ref, ref_grad)
                    holds = err <= bound and g_err <= GRAD_BOUND and kept and refs_ok
                    if tf32:  # no accuracy lost to TF32
                        holds = holds and err <= TF32_FACTOR * off[0] + TF32_SLACK
                        holds = holds and g_err <= TF32_FACTOR * off[1] + TF32_SLACK
                    off = (err, g_err)
                    ok = ok and holds
                    row = [label, shape_text(shape), "on" if tf32 else "off"]
                    row += [
                        used if backend is None else f"{used} (forced)",
                        err_text,
                        f"{bound:.1e}",
                        u_err_text,
                    ]
                    row += [g_text, u_g_text, gap, "yes" if kept else "**no**", "yes" if holds else "**no**"]
                    rows.append(row)
    return rows, ok


ACCURACY_NOTES = f"""\
Float32 inputs, `data_range=1.0`, per-image SSIM (`reduction="none"`) of torchmetrics'
`structural_similarity_index_measure`, patched and unpatched; `backend`: what the patched call ran
on (`auto`'s pick, then each backend forced; one that cannot take the images is a row of its
own, not a failure). `err`: max absolute error against
the numpy float64 reference (`tests/helpers/reference.py`) of the float32-rounded inputs; `bound`: what
float32 moments can promise (`1e-6 + 8 eps max|x|^2 / (0.03 L)^2`, as in tests/test_properties.py).
`grad err`: max |float32 gradient of `1 - mean(ssim)` - float64 gradient| / max |float64 gradient|
(float64: `ssim_patch.ssim` on the device; bound {GRAD_BOUND:g}). `refs agree`: the two float64
references' max difference (bound {REFERENCE_BOUND:g}). TF32 on: `torch.backends.cudnn.allow_tf32 =
True`, `torch.backends.cuda.matmul.allow_tf32 = True`, `torch.set_float32_matmul_precision("high")`;
off: False, False, "highest". `TF32 settings kept`: every TF32 setting read back after the patched
call equals what it was before. `holds`: patched err <= bound, patched grad err <= {GRAD_BOUND:g}, settings
kept, references agree, and with TF32 on both errors at most {TF32_FACTOR:g} x the TF32-off ones +
{TF32_SLACK:g} (no accuracy lost to TF32). Unpatched numbers are for comparison only."""
