"""Benchmark instruments for ssim-patch (not installed with the package).

- ``cases``: the shapes, passes and inputs that are measured;
- ``contenders``: the SSIM implementations compared, and the patch state each runs under;
- ``timing``: one call, one timed call, interleaved rounds;
- ``memory``: peak extra memory of one call (CPU subprocesses, CUDA allocator);
- ``dispatch_count``: a dispatch mode counting aten ops and the bytes they write;
- ``meta_counts``: those counts for torchmetrics unpatched vs patched on ``device="meta"``;
- ``machine``: the machine, versions and git state behind a set of numbers;
- ``report``: tables as plain text and Markdown, and sections of ``results.md``;
- ``plot``: the bar chart of speed ratios;
- ``bench_ssim`` and ``gpu_check``: the command lines.
"""

from pathlib import Path

#: The repository root (the directory above ``benchmarks/``).
ROOT = Path(__file__).resolve().parent.parent
