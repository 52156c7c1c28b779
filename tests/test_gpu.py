"""The GPU checks that pass or fail (``-m cuda``; skipped without CUDA): no patched call syncs with
the host, and float32 results and gradients stay within their bounds of the float64 references with
TF32 on and off, the caller's TF32 settings unchanged. The machinery, and the same checks as tables
in the GPU report (benchmarks/gpu_check.py), is benchmarks/gpu_host_sync.py and gpu_accuracy.py."""

from __future__ import annotations

import pytest
import torch

from benchmarks import gpu_accuracy, gpu_host_sync, report
from benchmarks.cases import MODE_LABELS, shape_text
from tests.helpers.autocast import assert_autocast_changes_nothing

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
CALLS = gpu_host_sync._sync_calls(quick=False)


@pytest.mark.parametrize(
    "call",
    CALLS,
    ids=[f"{c.api}-{shape_text(c.shape)}-{MODE_LABELS[c.mode]}-range-{c.data_range}" for c in CALLS],
)
def test_patched_call_does_not_sync(call: gpu_host_sync.SyncCall) -> None:
    """Patched (the backend as found, then conv forced): no host sync outside torchmetrics' own
    code, and no error the unpatched call does not raise."""
    unpatched = gpu_host_sync.check_sync(call, False, "cuda")
    for backend in (None, "conv"):
        patched = gpu_host_sync.check_sync(call, True, "cuda", backend)
        assert not patched.fails_patched(unpatched), (
            f"patched ({backend or 'as found'}): {patched.text()}; unpatched: {unpatched.text()}"
        )


def test_float32_accuracy_with_tf32_on_and_off() -> None:
    """Every row of section (b) holds: errors within their bounds, TF32 settings kept."""
    rows, ok = gpu_accuracy.accuracy_section("cuda", quick=False)
    failed = [row for row in rows[1:] if row[-1] not in ("yes", "-")]
    assert ok, report.plain([rows[0], *failed])


@pytest.mark.parametrize("backend", ["conv", "auto"])
def test_cuda_autocast_changes_no_number(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``torch.autocast("cuda")`` (float16) the float32 values and gradients are those
    without it: the conv backend's convolutions (autocast would run them in float16) run in
    float32; Triton's kernels never read autocast."""
    if backend != "auto":
        monkeypatch.setenv("SSIM_PATCH_BACKEND", backend)
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(2, 3, 40, 36, generator=gen).cuda()
    y = (x + 0.1 * torch.rand(2, 3, 40, 36, generator=gen).cuda()).clamp(0, 1)
    assert_autocast_changes_nothing(x, y, "cuda")
