"""The ``ssim-patch`` command (also ``python -m ssim_patch``).

``ssim-patch check [--padding same|valid] [--json] [--plot FILE.png]``: report the installed
torchmetrics release (supported, tested, hook points, upstream bugs), then compute torchmetrics' SSIM,
MS-SSIM, UQI and their Metric classes on built-in examples unpatched and patched, and check the
patched values against ``ssim_patch.ssim`` / ``ssim_patch.uqi`` on float64 inputs (the self-test:
``ssim_patch._selfcheck``). Exit status 0 only when the patch applied and every check passed. Warnings raised while checking (e.g. ``UntestedReleaseWarning`` for a release newer
than the newest tested one) are lines of the report, not Python warnings. ``--plot`` also draws
what the patch changes on the installed release, unpatched and patched, on the zeroed-border
example (``ssim_patch._plot``; needs matplotlib, the ``[plot]`` extra).

``ssim-patch matrix [ARGS...]``: run the compatibility matrix from a checkout
(``ssim_patch._matrix.main(ARGS)``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Optional

from ssim_patch._selfcheck import draw_plot, render, run_check


def _add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--padding",
        choices=("same", "valid"),
        default="same",
        help="padding of the corrected SSIM and UQI to apply and verify (default: same)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also draw what the patch changes on this release, unpatched and patched, on the "
        "zeroed-border example: the SSIM maps up to torchmetrics 1.4.1, the contrast-sensitivity "
        "maps MS-SSIM uses from 1.4.2 (needs matplotlib)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssim-patch", description="Corrected SSIM for torchmetrics: check the patch, run the matrix."
    )
    from ssim_patch._version import __version__

    parser.add_argument("--version", action="version", version=f"ssim-patch {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="report the torchmetrics release, apply the patch and verify it on built-in examples",
        description="Report the installed torchmetrics release, apply the patch and verify it.",
    )
    _add_check_arguments(check)
    commands.add_parser(
        "matrix",
        help="run the compatibility matrix from a checkout (arguments go to the matrix runner)",
        add_help=False,
    )
    return parser


def _matrix(argv: list[str]) -> int:
    try:
        module = importlib.import_module("ssim_patch._matrix")
    except ModuleNotFoundError as exc:
        if exc.name != "ssim_patch._matrix":
            raise
        print(
            "ssim-patch matrix: this install has no matrix runner (ssim_patch._matrix); "
            "run it from a checkout of ssim-patch.",
            file=sys.stderr,
        )
        return 1
    result = module.main(argv)
    return int(result or 0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``ssim-patch`` console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["matrix"]:
        return _matrix(args[1:])
    parser = _parser()
    options = parser.parse_args(args)
    if options.command is None:
        parser.print_help(sys.stderr)
        return 2
    if options.plot is not None:
        from ssim_patch._plot import PlotUnavailable, require_matplotlib

        try:
            require_matplotlib()
        except PlotUnavailable as exc:
            print(f"ssim-patch check --plot: {exc}", file=sys.stderr)
            return 1
    report = run_check(options.padding)
    if options.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print(render(report))
    status = 0
    if not report.ok:
        print(f"ssim-patch check: FAILED: {report.error}", file=sys.stderr)
        status = 1
    if options.plot is not None:
        error = draw_plot(options.plot, options.padding, report)
        if error is not None:
            print(f"ssim-patch check --plot: {error}", file=sys.stderr)
            return 1
        print(f"plot: wrote {options.plot}", file=sys.stderr if options.json else sys.stdout)
    return status
