"""The bar chart of speed ratios: time of each other contender / time of the patched call."""

from __future__ import annotations

from pathlib import Path

from benchmarks.cases import MODE_LABELS, Case, shape_text
from benchmarks.timing import Timing

#: Bar label -> contender; each bar is that contender's median over the patched median.
SERIES = {"torchmetrics unpatched": "unpatched", "kornia": "kornia", "pytorch-msssim": "pytorch-msssim"}


def require_matplotlib() -> None:
    """Exit with an install hint unless matplotlib imports (checked before a long run)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit(
            "--plot needs matplotlib: pip install matplotlib (or pip install 'ssim-patch[plot]')"
        ) from None


def write_plot(path: Path, cases: list[Case], timings: dict[str, dict[str, Timing]]) -> None:
    """Write the chart as a PNG to ``path`` (log scale; a missing median leaves no bar)."""
    require_matplotlib()
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{c.device}\n{shape_text(c.shape)}\n{MODE_LABELS[c.mode]}" for c in cases]
    width = 0.8 / len(SERIES)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(cases)), 4.5))
    for i, (label, name) in enumerate(SERIES.items()):
        heights = []
        for case in cases:
            other = timings[case.key][name].median
            mine = timings[case.key]["patched"].median
            heights.append(other / mine if other and mine else float("nan"))  # nan: no bar
        ax.bar(
            [k + (i - (len(SERIES) - 1) / 2) * width for k in range(len(cases))], heights, width, label=label
        )
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2.0, 5.0)))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("time of other / time of patched\n(> 1: patched is faster)")
    ax.set_title("Speed-up of torchmetrics SSIM with ssim_patch")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
