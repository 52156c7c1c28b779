"""``ssim-patch check --plot FILE.png``: what the patch changes on the installed torchmetrics
release, drawn on the zeroed-border example (``rand(3, 3, 256, 256)``, seed 0; the target is the
same images with their 1-pixel frame set to 0), unpatched and patched side by side.

- A release with the 2-D border crop (up to 1.4.1): the SSIM maps. The map torchmetrics returns
  with ``return_full_image=True`` is uncropped, but the score is the mean of that map cropped by
  the pad.
- A release without it (1.4.2 on): the contrast-sensitivity maps, the term MS-SSIM multiplies over
  its scales, which those releases still crop. torchmetrics returns only its mean, so the map is
  computed here (torchmetrics' default window and data range).

Either way, what each value counts is read off the release itself: the crop of the map whose mean
is the value returned. matplotlib is an optional extra and is imported only here, only when drawing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Optional

import torch
from torch import Tensor

if TYPE_CHECKING:
    # matplotlib is the optional [plot] extra: without it these names are Any to mypy.
    from matplotlib.axes import Axes  # type: ignore[import-not-found, unused-ignore]

    from ssim_patch.engine import Padding

Quantity = Literal["ssim", "contrast"]

#: The line ``check --plot`` prints when matplotlib is missing (the extra only pins matplotlib).
INSTALL_HINT = "pip install matplotlib (from a checkout of ssim-patch also: pip install -e '.[plot]')"
#: The corner drawn big: a 1-pixel frame is invisible on a whole 256x256 map.
ZOOM = 24
#: A crop counts as what a value counts when its mean is the value within this.
CROP_TOL = 1e-5
#: MS-SSIM's default scales: the contrast term of each but the last, SSIM of the last.
SCALES = 5
#: torchmetrics' defaults, which the example uses.
SIGMA, K2 = 1.5, 0.03

_LABEL = {"ssim": "SSIM", "contrast": "contrast term"}


class PlotUnavailable(RuntimeError):
    """matplotlib cannot be imported; the message is the one line the command prints."""


def require_matplotlib() -> None:
    """Raise :class:`PlotUnavailable` unless matplotlib imports."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != "matplotlib":
            raise
        raise PlotUnavailable(f"matplotlib is not installed: {INSTALL_HINT}") from None


@dataclass(frozen=True)
class Panel:
    """One map, the value torchmetrics returned for it, and what that value counts."""

    title: str
    score: float  # the mean over the batch of the per-image values torchmetrics returned
    full: Tensor  # (N, C, *map)
    crop: Optional[int]  # map pixels left out on each side by the value; None: not found

    def counted(self, image: Sequence[int]) -> Optional[tuple[int, int]]:
        """[lo, hi) of the rows (and columns) of an (N, C, H, W) image the value counts, or None
        when not found."""
        if self.crop is None:
            return None
        offset = (image[-2] - self.full.shape[-2]) // 2
        return offset + self.crop, offset + self.full.shape[-2] - self.crop


@dataclass(frozen=True)
class Scale:
    """MS-SSIM's contrast term at one scale, unpatched and patched (means over the batch)."""

    size: tuple[int, int]
    unpatched: float
    patched: float


@dataclass(frozen=True)
class BorderMaps:
    """Both panels of the zeroed-border example, and what the figure says about them."""

    release: str
    padding: str
    image: tuple[int, ...]  # (N, C, H, W) of the inputs
    quantity: Quantity  # what the panels map
    unpatched: Panel
    patched: Panel
    ssim: tuple[float, float]  # SSIM, unpatched and patched
    same_map: Optional[float] = None  # "ssim": max |unpatched map - patched map| when the shapes agree
    ms_ssim: Optional[tuple[float, float]] = None  # "contrast": MS-SSIM, unpatched and patched
    scales: tuple[Scale, ...] = ()  # "contrast": the contrast term at each scale but the last

    @property
    def label(self) -> str:
        return _LABEL[self.quantity]


def default_quantity(upstream_bugs: Sequence[str]) -> Quantity:
    """The SSIM map where the release crops it, else the contrast map where that is cropped."""
    return "contrast" if "cs-crop" in upstream_bugs and "border-crop" not in upstream_bugs else "ssim"


def _score_crop(per_image: Tensor, full: Tensor) -> Optional[int]:
    """The crop c for which the mean of full[..., c:-c, c:-c] is each image's value."""
    spatial = full.shape[2:]
    for crop in range(min(spatial) // 2):
        index: tuple[Any, ...] = (Ellipsis, *(slice(crop, n - crop) for n in spatial))
        region = full[index]
        means = region.reshape(region.shape[0], -1).double().mean(1)
        if float((means - per_image.double()).abs().max()) <= CROP_TOL:
            return crop
    return None


def _full_image_ssim(preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    import torchmetrics.functional.image as tmf

    # reduction="none": on 0.8-0.9 any other reduction is applied to the map too.
    out = tmf.structural_similarity_index_measure(preds, target, return_full_image=True, reduction="none")
    if not (isinstance(out, tuple) and len(out) == 2):
        raise RuntimeError("structural_similarity_index_measure(return_full_image=True) returned no map")
    per_image, full = out
    if full.ndim != preds.ndim:
        raise RuntimeError(f"the full SSIM image has shape {tuple(full.shape)}, not one map per channel")
    return per_image.detach().reshape(-1), full.detach()


def _contrast_by_scale(preds: Tensor, target: Tensor) -> list[Tensor]:
    """torchmetrics' per-image contrast term at each MS-SSIM scale but the last."""
    import torch.nn.functional as F
    import torchmetrics.functional.image as tmf

    values = []
    for _ in range(SCALES - 1):
        out = tmf.structural_similarity_index_measure(
            preds, target, return_contrast_sensitivity=True, reduction="none"
        )
        if not (isinstance(out, tuple) and len(out) == 2):
            raise RuntimeError(
                "structural_similarity_index_measure(return_contrast_sensitivity=True) returned no contrast term"
            )
        values.append(out[1].detach().reshape(-1))
        preds, target = F.avg_pool2d(preds, 2), F.avg_pool2d(target, 2)
    return values


def _ms_ssim(preds: Tensor, target: Tensor) -> float:
    import torchmetrics.functional.image as tmf

    return float(tmf.multiscale_structural_similarity_index_measure(preds, target))


def contrast_map(preds: Tensor, target: Tensor) -> Tensor:
    """The whole contrast-sensitivity map ``(2*s_xy + c2) / (s_x^2 + s_y^2 + c2)`` of (N, C, H, W)
    images in float32 (as torchmetrics computes it), with torchmetrics' defaults: a Gaussian window
    of sigma 1.5 (11 taps), reflect padding by 5, ``c2 = (0.03 * L)^2`` with L the larger
    ``max - min`` of preds and of target (``data_range=None``)."""
    import torch.nn.functional as F

    x, y = preds.float(), target.float()
    big_l = torch.maximum(x.max() - x.min(), y.max() - y.min())
    c2 = (K2 * big_l) ** 2
    half = int(3.5 * SIGMA + 0.5)
    offsets = torch.arange(-half, half + 1, dtype=torch.float32)
    taps = torch.exp(-((offsets / SIGMA) ** 2) / 2)
    taps = taps / taps.sum()
    planes = x.shape[1]
    rows, cols = (
        taps.view(1, 1, -1, 1).expand(planes, 1, -1, 1),
        taps.view(1, 1, 1, -1).expand(planes, 1, 1, -1),
    )

    def local_mean(v: Tensor) -> Tensor:  # the 2-D Gaussian window is separable: rows, then columns
        v = F.pad(v, (half, half, half, half), mode="reflect")
        return F.conv2d(F.conv2d(v, rows, groups=planes), cols, groups=planes)

    mean_x, mean_y = local_mean(x), local_mean(y)
    var_x = (local_mean(x * x) - mean_x * mean_x).clamp_min(0.0)
    var_y = (local_mean(y * y) - mean_y * mean_y).clamp_min(0.0)
    cov = local_mean(x * y) - mean_x * mean_y
    return (2 * cov + c2) / (var_x + var_y + c2)


@dataclass(frozen=True)
class _Measured:
    """What torchmetrics returns for the example in one patch state."""

    scores: Tensor  # per-image SSIM
    full: Tensor  # the SSIM map
    contrast: list[Tensor]  # "contrast": the per-image contrast term at each scale but the last
    ms_ssim: Optional[float]  # "contrast": MS-SSIM


def _measure(preds: Tensor, target: Tensor, quantity: Quantity) -> _Measured:
    scores, full = _full_image_ssim(preds, target)
    if quantity == "ssim":
        return _Measured(scores, full, [], None)
    return _Measured(scores, full, _contrast_by_scale(preds, target), _ms_ssim(preds, target))


def border_maps(
    preds: Tensor, target: Tensor, padding: Padding = "same", quantity: Optional[Quantity] = None
) -> BorderMaps:
    """The maps of ``preds`` against ``target`` through torchmetrics, unpatched and patched;
    ``quantity`` None picks it from the release's upstream bugs (:func:`default_quantity`).
    The patch state found on entry is put back."""
    import ssim_patch

    status = ssim_patch.status()
    release = status.release or "?"
    what: Quantity = quantity or default_quantity(status.upstream_bugs)
    with ssim_patch.patched(padding=padding):  # puts back the state found on entry
        ssim_patch.revert()
        up = _measure(preds, target, what)
        ssim_patch.apply(padding=padding)
        p = _measure(preds, target, what)
    titles = (f"torchmetrics {release}, unpatched", f"patched, padding={padding!r}")
    ssim = (float(up.scores.mean()), float(p.scores.mean()))
    if what == "ssim":
        return BorderMaps(
            release=release,
            padding=padding,
            image=tuple(preds.shape),
            quantity=what,
            unpatched=Panel(titles[0], ssim[0], up.full, _score_crop(up.scores, up.full)),
            patched=Panel(titles[1], ssim[1], p.full, _score_crop(p.scores, p.full)),
            ssim=ssim,
            same_map=float((up.full - p.full).abs().max()) if up.full.shape == p.full.shape else None,
        )
    cs_map = contrast_map(preds, target)
    up_cs, p_cs = up.contrast[0], p.contrast[0]
    return BorderMaps(
        release=release,
        padding=padding,
        image=tuple(preds.shape),
        quantity=what,
        unpatched=Panel(titles[0], float(up_cs.mean()), cs_map, _score_crop(up_cs, cs_map)),
        patched=Panel(titles[1], float(p_cs.mean()), cs_map, _score_crop(p_cs, cs_map)),
        ssim=ssim,
        ms_ssim=(up.ms_ssim, p.ms_ssim) if up.ms_ssim is not None and p.ms_ssim is not None else None,
        scales=tuple(
            Scale((preds.shape[-2] >> i, preds.shape[-1] >> i), float(u.mean()), float(q.mean()))
            for i, (u, q) in enumerate(zip(up.contrast, p.contrast))
        ),
    )


def _canvas(panel: Panel, image: Sequence[int]) -> Tensor:
    """Channel 0 of image 0 in image coordinates; NaN where the map has no pixel (``valid``)."""
    height, width = image[-2:]
    canvas = torch.full((height, width), float("nan"), dtype=torch.float64)
    plane = panel.full[0, 0].double()
    top, left = (height - plane.shape[0]) // 2, (width - plane.shape[1]) // 2
    canvas[top : top + plane.shape[0], left : left + plane.shape[1]] = plane
    return canvas


def _counted_text(panel: Panel, image: Sequence[int]) -> str:
    height, width = image[-2:]
    span = panel.counted(image)
    if span is None:
        return "counts: not found"
    side = span[1] - span[0]
    if side == height and side == width:
        return f"counts the whole {height}x{width} map"
    return f"counts the inner {side}x{side}: a {span[0]}-px frame left out"


def notes(maps: BorderMaps) -> list[str]:
    """The lines under the figure: the data, what is greyed out, and what it does to the values."""
    n, c, h, w = maps.image
    lines = [
        f"preds = torch.rand({n}, {c}, {h}, {w}) (seed 0); target = preds with a 1-pixel frame set to 0. "
        "Values: means over the batch.",
    ]
    crop = maps.unpatched.crop
    if crop:
        lines.append(
            f"Grey, hatched: the {crop}-px frame of the map that the unpatched {maps.label} crops away, "
            "so the damaged border never counts."
        )
    elif crop == 0:
        lines.append(
            f"torchmetrics {maps.release} counts the whole {maps.label} map upstream: no border is lost."
        )
    if maps.quantity == "ssim" and crop and maps.same_map is not None and maps.same_map < 1e-4:
        lines.append(
            "The full map torchmetrics returns unpatched is the patched map "
            f"(max difference {maps.same_map:.0e}); only its score leaves the frame out."
        )
    if maps.quantity == "contrast":
        up, p = maps.ssim
        if abs(up - p) < CROP_TOL:
            lines.append(
                f"On this release the SSIM already counts the whole map ({up:.5f} unpatched and patched)."
            )
        lines.append(
            "MS-SSIM multiplies the contrast term of each scale but the last (each scale halves the image):"
        )
        lines += [
            f"    {s.size[0]}x{s.size[1]}: {s.unpatched:.5f} unpatched, {s.patched:.5f} patched"
            for s in maps.scales
        ]
        if maps.ms_ssim is not None:
            lines.append(f"MS-SSIM: {maps.ms_ssim[0]:.5f} unpatched, {maps.ms_ssim[1]:.5f} patched.")
    if maps.padding == "valid":
        lines.append(
            "padding='valid' leaves the frame out on purpose: no window fits there (Wang et al.'s ssim_index.m)."
        )
    return lines


def _grey_frame(ax: Axes, span: Optional[tuple[int, int]], size: int) -> None:
    """Grey and hatch the pixels of a size x size image outside rows/columns [lo, hi)."""
    from matplotlib.patches import Rectangle  # type: ignore[import-not-found, unused-ignore]

    if span is None:
        return
    lo, hi = span
    lo_edge, hi_edge, end = lo - 0.5, hi - 0.5, size - 0.5
    strips = [
        (-0.5, -0.5, size, lo),  # top
        (-0.5, hi_edge, size, end - hi_edge),  # bottom
        (-0.5, lo_edge, lo, hi - lo),  # left
        (hi_edge, lo_edge, end - hi_edge, hi - lo),  # right
    ]
    for x, y, w, h in strips:
        if w > 0 and h > 0:
            ax.add_patch(Rectangle((x, y), w, h, facecolor="#d9d9d9", alpha=0.8, edgecolor="none"))
            ax.add_patch(Rectangle((x, y), w, h, fill=False, hatch="////", edgecolor="#707070", lw=0))
    if lo > 0:
        ax.add_patch(
            Rectangle((lo_edge, lo_edge), hi - lo, hi - lo, fill=False, edgecolor="black", lw=1.0, ls="--")
        )


def draw(maps: BorderMaps, path: str) -> None:
    """Write the figure to ``path`` (the format from its suffix, PNG by default)."""
    require_matplotlib()
    # A Figure on its own Agg canvas: no pyplot, so no global backend or figure state is touched.
    from matplotlib import colormaps  # type: ignore[import-not-found, unused-ignore]
    from matplotlib.backends.backend_agg import (  # type: ignore[import-not-found, unused-ignore]
        FigureCanvasAgg,
    )
    from matplotlib.figure import Figure  # type: ignore[import-not-found, unused-ignore]
    from matplotlib.patches import Rectangle  # type: ignore[import-not-found, unused-ignore]

    image = maps.image
    size = image[-1]
    panels = (maps.unpatched, maps.patched)
    canvases = [_canvas(p, image).numpy() for p in panels]
    low = min(float(torch.from_numpy(c).nan_to_num(1.0).min()) for c in canvases)
    vmin = min(math.floor(low * 10) / 10, 0.9)
    cmap = colormaps["viridis"].with_extremes(bad="#d9d9d9")
    text = notes(maps)

    # Inches: the four panels take 8.6, the notes a line each at the bottom.
    note_h = 0.3 + 0.17 * len(text)
    height = 8.6 + note_h
    fig = Figure(figsize=(9.0, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    fig.subplots_adjust(
        left=0.07,
        right=0.86,
        top=1 - (1.3 if maps.quantity == "ssim" else 1.55) / height,
        bottom=(note_h + 0.45) / height,
        hspace=0.32,
        wspace=0.18,
    )
    if maps.quantity == "ssim":
        title = "SSIM maps of the zeroed-border example, channel 0 of image 0"
    else:
        title = (
            "Contrast-sensitivity maps (MS-SSIM's per-scale term) of the zeroed-border example,\n"
            "full resolution, channel 0 of image 0"
        )
    fig.suptitle(title, fontsize=13)
    shown: Any = None
    for col, (panel, canvas) in enumerate(zip(panels, canvases)):
        span = panel.counted(image)
        for row in range(2):
            ax = axes[row][col]
            shown = ax.imshow(canvas, cmap=cmap, vmin=vmin, vmax=1.0, interpolation="nearest")
            _grey_frame(ax, span, size)
            if row == 0:
                ax.set_title(
                    f"{panel.title}\n{maps.label} = {panel.score:.5f}\n{_counted_text(panel, image)}",
                    fontsize=11,
                )
                ax.add_patch(
                    Rectangle((-0.5, -0.5), ZOOM, ZOOM, fill=False, edgecolor="red", lw=1.5, clip_on=False)
                )
                ax.set_xticks([0, 64, 128, 192, size - 1])
                ax.set_yticks([0, 64, 128, 192, size - 1])
            else:
                ax.set_xlim(-0.5, ZOOM - 0.5)
                ax.set_ylim(ZOOM - 0.5, -0.5)
                ax.set_xticks(range(0, ZOOM, 4))
                ax.set_yticks(range(0, ZOOM, 4))
                ax.set_title(f"top-left {ZOOM}x{ZOOM} corner (red box above)", fontsize=10)
                for spine in ax.spines.values():
                    spine.set_edgecolor("red")
                    spine.set_linewidth(1.5)
                ax.annotate(
                    "zeroed 1-px frame\nof the target",
                    xy=(0, 10),
                    xytext=(7, 14),
                    fontsize=9,
                    color="white",
                    arrowprops={"arrowstyle": "->", "color": "white"},
                    bbox={"boxstyle": "round", "fc": "black", "alpha": 0.6, "lw": 0},
                )
                if span is not None and 0 < span[0] < ZOOM // 2:
                    ax.text(
                        (span[0] + ZOOM) / 2,
                        (span[0] - 1) / 2,
                        f"not counted in the {maps.label}",
                        ha="center",
                        va="center",
                        fontsize=9,
                        bbox={"boxstyle": "round", "fc": "white", "alpha": 0.9, "lw": 0},
                    )
            ax.tick_params(labelsize=8)
    fig.colorbar(shown, cax=fig.add_axes((0.89, 0.35, 0.022, 0.4)), label=f"local {maps.label}")
    fig.text(0.07, 0.3 / height, "\n".join(text), fontsize=9, va="bottom", linespacing=1.35)
    fig.savefig(path, dpi=90, metadata={"Software": None})


def plot_border(
    path: str, preds: Tensor, target: Tensor, padding: Padding = "same", quantity: Optional[Quantity] = None
) -> BorderMaps:
    """Compute both maps and write the figure to ``path``."""
    require_matplotlib()
    maps = border_maps(preds, target, padding, quantity)
    draw(maps, path)
    return maps
