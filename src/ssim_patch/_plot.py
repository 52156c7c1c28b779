"""``ssim-patch check --plot FILE.png``: the unpatched and the patched SSIM maps of the zeroed-border
example side by side, with what each score counts.

On torchmetrics <= 1.4.1 the full map returned with ``return_full_image=True`` is the uncropped
map, but the score is the mean of that map cropped by the pad: the unpatched panel greys out what
the score leaves out, read off the release itself (the crop whose mean is the score). matplotlib
is an optional extra (``ssim-patch[plot]``) and is imported only here, only when drawing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor

if TYPE_CHECKING:
    # matplotlib is the optional [plot] extra: without it these names are Any to mypy.
    from matplotlib.axes import Axes  # type: ignore[import-not-found, unused-ignore]

    from ssim_patch.engine import Padding

#: The line ``check --plot`` prints when matplotlib is missing.
INSTALL_HINT = "pip install 'ssim-patch[plot]'"
#: The corner drawn big: a 1-pixel frame is invisible on a whole 256x256 map.
ZOOM = 24
#: A crop counts as what the score counts when its mean is the score within this.
CROP_TOL = 1e-5


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
    """One SSIM map as torchmetrics returned it, and what its score counts."""

    title: str
    score: float  # the mean of the per-image scores, as ``check`` prints it
    full: Tensor  # (N, C, *map) as returned with return_full_image=True
    crop: Optional[int]  # map pixels left out on each side by the score; None: not found

    def counted(self, image: Sequence[int]) -> Optional[tuple[int, int]]:
        """[lo, hi) of the rows (and columns) of an (N, C, H, W) image the score counts, or None
        when not found."""
        if self.crop is None:
            return None
        offset = (image[-2] - self.full.shape[-2]) // 2
        return offset + self.crop, offset + self.full.shape[-2] - self.crop


@dataclass(frozen=True)
class BorderMaps:
    """Both panels of the zeroed-border example, and what the figure says about them."""

    release: str
    padding: str
    image: tuple[int, ...]  # (N, C, H, W) of the inputs
    unpatched: Panel
    patched: Panel
    same_map: Optional[float]  # max |unpatched map - patched map| when the shapes agree


def _score_crop(per_image: Tensor, full: Tensor) -> Optional[int]:
    """The crop c for which the mean of full[..., c:-c, c:-c] is each image's score."""
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


def border_maps(preds: Tensor, target: Tensor, padding: Padding = "same") -> BorderMaps:
    """SSIM maps of ``preds`` against ``target`` through torchmetrics, unpatched and patched;
    the patch state found on entry is put back."""
    import ssim_patch

    release = ssim_patch.status().release or "?"
    with ssim_patch.patched(padding=padding):  # puts back the state found on entry
        ssim_patch.revert()
        up_scores, up_full = _full_image_ssim(preds, target)
        ssim_patch.apply(padding=padding)
        p_scores, p_full = _full_image_ssim(preds, target)
    same = float((up_full - p_full).abs().max()) if up_full.shape == p_full.shape else None
    return BorderMaps(
        release=release,
        padding=padding,
        image=tuple(preds.shape),
        unpatched=Panel(
            f"torchmetrics {release}, unpatched",
            float(up_scores.mean()),
            up_full,
            _score_crop(up_scores, up_full),
        ),
        patched=Panel(
            f"patched, padding={padding!r}",
            float(p_scores.mean()),
            p_full,
            _score_crop(p_scores, p_full),
        ),
        same_map=same,
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

    fig = Figure(figsize=(9.0, 10.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    fig.subplots_adjust(left=0.07, right=0.86, top=0.87, bottom=0.15, hspace=0.32, wspace=0.18)
    fig.suptitle("SSIM maps of the zeroed-border example, channel 0 of image 0", fontsize=13)
    shown: Any = None
    for col, (panel, canvas) in enumerate(zip(panels, canvases)):
        span = panel.counted(image)
        for row in range(2):
            ax = axes[row][col]
            shown = ax.imshow(canvas, cmap=cmap, vmin=vmin, vmax=1.0, interpolation="nearest")
            _grey_frame(ax, span, size)
            if row == 0:
                ax.set_title(
                    f"{panel.title}\nSSIM = {panel.score:.5f}\n{_counted_text(panel, image)}",
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
                        "not counted by the score",
                        ha="center",
                        va="center",
                        fontsize=9,
                        bbox={"boxstyle": "round", "fc": "white", "alpha": 0.9, "lw": 0},
                    )
            ax.tick_params(labelsize=8)
    fig.colorbar(shown, cax=fig.add_axes((0.89, 0.3, 0.022, 0.42)), label="local SSIM")

    n, c, h, w = image
    notes = [
        f"preds = torch.rand({n}, {c}, {h}, {w}) (seed 0); target = preds with a 1-pixel frame set to 0. "
        "SSIM = mean over the batch.",
    ]
    if maps.unpatched.crop:
        notes.append(
            f"Grey, hatched: the {maps.unpatched.crop}-px frame of the map that the unpatched score crops "
            "away, so the damaged border never counts."
        )
        if maps.same_map is not None and maps.same_map < 1e-4:
            notes.append(
                "The full map torchmetrics returns unpatched is the patched map "
                f"(max difference {maps.same_map:.0e}); only its score leaves the frame out."
            )
    elif maps.unpatched.crop == 0:
        notes.append(f"torchmetrics {maps.release} counts the whole map upstream: no border is lost.")
    if maps.padding == "valid":
        notes.append(
            "padding='valid' leaves the frame out on purpose: no window fits there (Wang et al.'s ssim_index.m)."
        )
    fig.text(0.07, 0.025, "\n".join(notes), fontsize=9, va="bottom")
    fig.savefig(path, dpi=90, metadata={"Software": None})


def plot_border(path: str, preds: Tensor, target: Tensor, padding: Padding = "same") -> BorderMaps:
    """Compute both maps and write the figure to ``path``."""
    require_matplotlib()
    maps = border_maps(preds, target, padding)
    draw(maps, path)
    return maps
