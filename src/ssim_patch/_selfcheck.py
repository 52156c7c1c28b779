"""The ``ssim-patch check`` self-test: built-in examples computed through torchmetrics' SSIM, MS-SSIM,
UQI and their Metric classes, unpatched and patched; the patched values verified against
``ssim_patch.ssim`` / ``ssim_patch.uqi`` on float64 inputs; the report (``Report``), rendered as
text (``render``) and, for ``--plot``, drawn (``draw_plot``). The command line is ``ssim_patch.cli``.
Importing this module loads no torch.
"""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    from torch import Tensor

    from ssim_patch.engine import Padding

#: The zeroed-border example (README) with default arguments: the corrected SSIM (padding="same").
ZEROED_BORDER_SAME = 0.98349
#: The UQI examples (``rand(2, 3, 40, 36)``, seed 0, its 1-pixel frame set to 0): the corrected
#: UQI by padding, with the default window and with ``kernel_size=(11, 3), sigma=(1.5, 0.5)``.
#: (Upstream, every release: 0.99969 and 0.93597; a 1x1 window gives NaN upstream, 0 corrected.)
UQI_ZEROED_BORDER = {"same": 0.89478, "valid": 0.99969}
UQI_ANISOTROPIC = {"same": 0.88247, "valid": 0.98614}
UQI_ANISOTROPIC_WINDOW: dict[str, Any] = {"kernel_size": (11, 3), "sigma": (1.5, 0.5)}
#: Patched torchmetrics against ``ssim_patch.ssim``/``ssim_patch.uqi`` on float64 inputs
#: (float32 round-off).
TOLERANCE = 1e-5


class CheckFailed(Exception):
    """A check could not run to the end; the message is the one line the command prints."""


@dataclass
class Check:
    """One example computed through one torchmetrics API, unpatched and patched."""

    name: str
    api: str
    unpatched: Optional[float] = None
    unpatched_error: Optional[str] = None
    patched: Optional[float] = None
    patched_error: Optional[str] = None
    reference: Optional[float] = None
    abs_error: Optional[float] = None
    ok: bool = False
    note: Optional[str] = None


@dataclass
class Report:
    """Everything ``check`` found; ``--json`` prints it as one object."""

    ssim_patch: str
    torchmetrics: Optional[str] = None
    supported: bool = False
    tested: bool = False
    hook: Optional[str] = None  # SSIM's hook point
    hooks: list[str] = field(default_factory=list)  # every hook point: SSIM's, then UQI's
    upstream_bugs: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)  # {"category", "message"}, in order
    padding: str = "same"
    applied: bool = False
    places: list[str] = field(default_factory=list)  # where the corrected SSIM is bound
    uqi_places: list[str] = field(default_factory=list)  # where the corrected UQI is bound
    backend: str = "auto"  # the engine's backend: SSIM_PATCH_BACKEND, "auto" unless forced
    backend_for: dict[str, str] = field(default_factory=dict)  # what CPU and CUDA calls use
    route: str = "undecided"  # how a call reaches the backend: "custom op" or "autograd.Function"
    route_why: str = ""  # why that route (ssim_patch.backends.route)
    checks: list[Check] = field(default_factory=list)
    verified: bool = False
    ok: bool = False
    error: Optional[str] = None


@dataclass
class _Example:
    name: str
    api: str
    run: Callable[[], Any]  # torchmetrics' result (a scalar tensor)
    reference: Callable[[], float]  # ssim_patch.ssim (or .uqi) on float64 inputs
    expected: Optional[float] = None  # a documented value it must also match
    expected_tol: float = 0.0


def _zero_frame(images: Tensor, axes: Sequence[int]) -> Tensor:
    out = images.clone()
    for axis in axes:
        out.select(axis, 0).zero_()
        out.select(axis, -1).zero_()
    return out


def _once(compute: Callable[[], float]) -> Callable[[], float]:
    """``compute``, evaluated on the first call only (two APIs share one reference)."""
    cache: list[float] = []

    def value() -> float:
        if not cache:
            cache.append(compute())
        return cache[0]

    return value


def _border_example() -> tuple[Tensor, Tensor]:
    """The zeroed-border example: ``rand(3, 3, 256, 256)`` (seed 0), its 1-pixel frame set to 0."""
    import torch

    preds = torch.rand(3, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    return preds, _zero_frame(preds, (2, 3))


def _uqi_example() -> tuple[Tensor, Tensor]:
    """UQI's zeroed-border example: ``rand(2, 3, 40, 36)`` (seed 0), its 1-pixel frame set to 0."""
    import torch

    preds = torch.rand(2, 3, 40, 36, generator=torch.Generator().manual_seed(0))
    return preds, _zero_frame(preds, (2, 3))


def _uqi_examples(padding: Padding) -> list[_Example]:
    """UQI's examples: the zeroed border with the default window, an anisotropic window (which
    upstream pads on the wrong axes, and its Metric class divides by the wrong count from 1.2.1)
    and a 1x1 window (NaN upstream)."""
    import torchmetrics.functional.image as tmf
    from torchmetrics.image import uqi as tm_image_uqi

    import ssim_patch

    preds, target = _uqi_example()
    aniso = UQI_ANISOTROPIC_WINDOW
    one_tap: dict[str, Any] = {"kernel_size": (1, 1), "sigma": (1.5, 1.5)}

    def ref(**kw: Any) -> Callable[[], float]:
        return _once(lambda: float(ssim_patch.uqi(preds.double(), target.double(), padding=padding, **kw)))

    def metric(**kw: Any) -> Any:
        m = tm_image_uqi.UniversalImageQualityIndex(**kw)
        m.update(preds, target)
        return m.compute()

    name = "UQI zeroed border, " + "x".join(map(str, preds.shape))
    window = ", kernel_size=(11, 3), sigma=(1.5, 0.5)"
    default_ref, aniso_ref = ref(), ref(**aniso)
    return [
        _Example(
            name,
            "universal_image_quality_index",
            lambda: tmf.universal_image_quality_index(preds, target),
            default_ref,
            UQI_ZEROED_BORDER[padding],
            1e-5,
        ),
        _Example(name, "UniversalImageQualityIndex", metric, default_ref, UQI_ZEROED_BORDER[padding], 1e-5),
        _Example(
            name + window,
            "universal_image_quality_index",
            lambda: tmf.universal_image_quality_index(preds, target, **aniso),
            aniso_ref,
            UQI_ANISOTROPIC[padding],
            1e-5,
        ),
        _Example(
            name + window,
            "UniversalImageQualityIndex",
            lambda: metric(**aniso),
            aniso_ref,
            UQI_ANISOTROPIC[padding],
            1e-5,
        ),
        _Example(
            name + ", kernel_size=(1, 1)",
            "universal_image_quality_index",
            lambda: tmf.universal_image_quality_index(preds, target, **one_tap),
            ref(**one_tap),
            0.0,
            1e-12,
        ),
    ]


def _examples(padding: Padding) -> list[_Example]:
    """The built-in examples: the zeroed border (2-D), an anisotropic 3-D one, then UQI's."""
    import torch
    import torch.nn.functional as F
    import torchmetrics.functional.image as tmf
    from torchmetrics.image import ssim as tm_image_ssim

    import ssim_patch

    preds, target = _border_example()
    one_p, one_t = preds[:1], target[:1]
    p3 = torch.rand(2, 1, 32, 40, 48, generator=torch.Generator().manual_seed(1))
    t3 = _zero_frame(p3, (2, 3, 4))
    sigma3 = (1.0, 1.5, 3.0)
    betas = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

    def ref(p: Tensor, t: Tensor, **kw: Any) -> float:
        out = ssim_patch.ssim(p.double(), t.double(), padding=padding, **kw)
        return float(out if isinstance(out, torch.Tensor) else out[0])

    border_ref = _once(lambda: ref(preds, target))

    @_once
    def ms_ref() -> float:
        # MS-SSIM of one image: contrast sensitivity at each scale but the last, SSIM at the last,
        # each raised to its beta; each scale is a 2x2 average pooling of the previous one.
        p, t = one_p.double(), one_t.double()
        value = 1.0
        for i, beta in enumerate(betas):
            sim, cs = ssim_patch.ssim(
                p, t, data_range=1.0, padding=padding, return_contrast_sensitivity=True, reduction="none"
            )
            term = float(sim[0]) if i == len(betas) - 1 else float(cs[0])
            value *= max(term, 0.0) ** beta
            p, t = F.avg_pool2d(p, 2), F.avg_pool2d(t, 2)
        return value

    def metric(cls_name: str, p: Tensor, t: Tensor, **kw: Any) -> Any:
        m = getattr(tm_image_ssim, cls_name)(**kw)
        m.update(p, t)
        return m.compute()

    def dims(t: Tensor) -> str:
        return "x".join(map(str, t.shape))

    border = f"zeroed border, {dims(preds)}"
    same = padding == "same"
    return [
        _Example(
            border,
            "structural_similarity_index_measure",
            lambda: tmf.structural_similarity_index_measure(preds, target),
            border_ref,
            ZEROED_BORDER_SAME if same else None,
            1e-5,
        ),
        _Example(
            border,
            "StructuralSimilarityIndexMeasure",
            lambda: metric("StructuralSimilarityIndexMeasure", preds, target),
            border_ref,
            ZEROED_BORDER_SAME if same else None,
            1e-5,
        ),
        _Example(
            f"zeroed border, {dims(one_p)}, data_range=1",
            "multiscale_structural_similarity_index_measure",
            lambda: tmf.multiscale_structural_similarity_index_measure(one_p, one_t, data_range=1.0),
            ms_ref,
        ),
        _Example(
            f"zeroed border, {dims(one_p)}, data_range=1",
            "MultiScaleStructuralSimilarityIndexMeasure",
            lambda: metric("MultiScaleStructuralSimilarityIndexMeasure", one_p, one_t, data_range=1.0),
            ms_ref,
        ),
        _Example(
            f"3-D zeroed border, {dims(p3)}, sigma={sigma3}",
            "structural_similarity_index_measure",
            lambda: tmf.structural_similarity_index_measure(p3, t3, sigma=sigma3),
            lambda: ref(p3, t3, sigma=sigma3),
        ),
        *_uqi_examples(padding),
    ]


def _value(run: Callable[[], Any]) -> tuple[Optional[float], Optional[str]]:
    try:
        return float(run()), None
    except Exception as exc:
        text = str(exc).strip().splitlines()
        return None, f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _verify(example: _Example, check: Check) -> None:
    if check.patched is None:
        check.note = f"patched torchmetrics failed: {check.patched_error}"
        if example.name.startswith("3-D") and check.unpatched is None:
            check.note += " (this release cannot compute 3-D SSIM upstream either)"
        return
    reference = example.reference()
    check.reference = reference
    check.abs_error = abs(check.patched - reference)
    problems = []
    if not math.isfinite(check.patched) or check.abs_error > TOLERANCE:
        engine = "ssim_patch.uqi" if example.name.startswith("UQI") else "ssim_patch.ssim"
        problems.append(f"differs from {engine} on float64 inputs by {check.abs_error:.2e}")
    if example.expected is not None and abs(reference - example.expected) > example.expected_tol:
        problems.append(f"the reference {reference:.5f} is not the documented {example.expected:.5f}")
    check.ok = not problems
    check.note = "; ".join(problems) or None


def run_check(padding: Padding = "same") -> Report:
    """Report the release, revert, compute unpatched, apply, compute patched, verify; then put
    back the patch state found on entry. Never raises: failures are in ``Report.error``."""
    from ssim_patch._version import __version__

    report = Report(ssim_patch=__version__, padding=padding)
    # Warnings become lines of the report instead of being printed (the filters in force apply).
    with warnings.catch_warnings(record=True) as caught:
        try:
            _run_check(report, padding)
        except CheckFailed as exc:
            report.error = str(exc)
    for item in caught:
        entry = {"category": item.category.__name__, "message": str(item.message)}
        if entry not in report.warnings:
            report.warnings.append(entry)
    report.verified = bool(report.checks) and all(c.ok for c in report.checks)
    report.ok = report.error is None and report.applied and report.verified
    if report.error is None and not report.ok:
        failed = [f"{c.api} on {c.name}: {c.note}" for c in report.checks if not c.ok]
        report.error = "not verified: " + (failed[0] if failed else "no check ran")
    return report


def _run_check(report: Report, padding: Padding) -> None:
    try:
        import ssim_patch
        from ssim_patch import _releases
    except ImportError as exc:
        raise CheckFailed(f"ssim_patch cannot be imported: {exc}") from None
    # An untested release is always reported, whatever the filters (run_check restores them).
    warnings.simplefilter("always", ssim_patch.UntestedReleaseWarning)
    try:
        importlib.import_module("torchmetrics")
    except ImportError as exc:
        raise CheckFailed(
            f"torchmetrics cannot be imported ({exc}): install a release from {_releases.OLDEST} "
            f"to {_releases.NEWEST}, e.g. pip install 'torchmetrics=={_releases.NEWEST}'."
        ) from None
    status = ssim_patch.status()
    report.torchmetrics = status.release
    report.supported, report.tested = status.supported, status.tested
    report.hook = f"{_releases.MODULE}.{status.hook}" if status.hook else None
    report.hooks = list(status.hooks)
    report.backend, report.backend_for = status.backend, dict(status.backend_for)
    report.route, report.route_why = status.route, status.route_why
    report.upstream_bugs = [{"id": b, "description": _releases.BUGS[b]} for b in status.upstream_bugs]
    if status.release is None:
        raise CheckFailed("torchmetrics is installed without package metadata; its release is unknown.")
    if not status.supported:
        raise CheckFailed(
            f"torchmetrics {status.release} is not supported: ssim-patch supports releases from "
            f"{_releases.OLDEST} (tested up to {_releases.NEWEST})."
        )
    entry = status
    examples = _examples(padding)
    try:
        ssim_patch.revert()
        checks = []
        for example in examples:
            value, error = _value(example.run)
            checks.append(Check(example.name, example.api, unpatched=value, unpatched_error=error))
        try:
            applied = ssim_patch.apply(padding=padding, strict=True)
        except ssim_patch.PatchError as exc:
            raise CheckFailed(str(exc)) from None
        report.applied, report.places = applied.applied, list(applied.places)
        report.uqi_places = list(applied.uqi_places)
        if not applied.applied:
            raise CheckFailed("apply() returned but the patch is not bound in torchmetrics.")
        for example, check in zip(examples, checks):
            check.patched, check.patched_error = _value(example.run)
            _verify(example, check)
        report.checks = checks
    finally:
        if entry.applied or entry.pending:
            ssim_patch.apply(padding=entry.padding or "same", strict=bool(entry.strict))
        else:
            ssim_patch.revert()


def _fmt(value: Optional[float], error: Optional[str] = None) -> str:
    """A value to 7 decimals: float32 round-off (about 1e-7) shows, so patched and reference
    visibly agree to the tolerance instead of differing in a rounded last digit."""
    if value is not None:
        return f"{value:.7f}"
    return "error" if error else "-"


def _fmt_diff(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1e}"


def render(report: Report) -> str:
    """The human-readable report."""
    lines = [f"ssim-patch {report.ssim_patch}"]
    warned = [f"warning: {w['message']} ({w['category']})" for w in report.warnings]
    if report.torchmetrics is None:
        return "\n".join(lines + warned)
    support = "supported" if report.supported else "NOT supported"
    tested = "tested in the compatibility matrix" if report.tested else "not tested (not a pinned release)"
    lines.append(f"torchmetrics {report.torchmetrics}: {support}, {tested}")
    lines += warned
    if report.hook:
        lines.append(f"hook point: {report.hook}")
    others = [hook for hook in report.hooks if hook != report.hook]
    if others:
        lines.append(f"UQI hook points: {', '.join(others)}")
    from ssim_patch import backends

    lines.append(f"backend: {backends.summary(report.backend, tuple(report.backend_for.items()))}")
    lines.append(f"route: {backends.route_summary(report.route, report.route_why)}")
    lines.append("upstream bugs in this release:")
    width = max((len(b["id"]) for b in report.upstream_bugs), default=0)
    lines += [f"  {b['id']:<{width}}  {b['description']}" for b in report.upstream_bugs] or ["  none"]
    if report.applied:
        places = [*report.places, *report.uqi_places]
        lines.append(f"patch: applied, padding={report.padding!r}, bound in {len(places)} places:")
        lines += [f"  {place}" for place in places]
    if report.checks:
        api_w = max(max(len(c.api) + 2, len(c.name)) for c in report.checks)
        groups: dict[str, list[Check]] = {}
        for c in report.checks:
            groups.setdefault(c.name, []).append(c)
        for name, checks in groups.items():
            lines.append("")
            lines.append(
                f"{name:<{api_w}}  {'unpatched':>10}  {'patched':>10}  {'reference':>10}  {'|diff|':>7}  ok"
            )
            for c in checks:
                lines.append(
                    f"  {c.api:<{api_w - 2}}  {_fmt(c.unpatched, c.unpatched_error):>10}  "
                    f"{_fmt(c.patched, c.patched_error):>10}  {_fmt(c.reference):>10}  "
                    f"{_fmt_diff(c.abs_error):>7}  {'yes' if c.ok else 'NO'}"
                )
                if c.unpatched_error:
                    lines.append(f"    unpatched: {c.unpatched_error}")
                if c.note:
                    lines.append(f"    {c.note}")
        lines.append("")
        lines.append(
            "reference: ssim_patch.ssim (UQI: ssim_patch.uqi) on float64 inputs; |diff|: patched "
            f"against it, tolerance {TOLERANCE:g}"
        )
    if report.ok:
        lines.append(
            f"OK: torchmetrics {report.torchmetrics} gives the corrected SSIM and UQI "
            f"({len(report.checks)} checks)."
        )
    return "\n".join(lines)


def draw_plot(path: str, padding: Padding, report: Report) -> Optional[str]:
    """Draw ``check --plot``'s figure (``ssim_patch._plot``); the one-line error, or None once written."""
    if not report.supported:
        return "not drawn: torchmetrics is missing or not supported"
    from ssim_patch._plot import plot_border

    try:
        plot_border(path, *_border_example(), padding=padding)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
        return f"cannot draw {path}: {reason}"
    return None
