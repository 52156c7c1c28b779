"""The launch/byte floor, counted on ``device="meta"``: the patched SSIM dispatches no more aten ops and
writes no more bytes than torchmetrics 1.9.0's own, forward and forward+backward.

On meta tensors the engine takes its non-CPU path and nothing is computed, so these counts are
exact and cost nothing. Each dispatched op that writes is a kernel launch on CUDA. The first test
checks the counting mode itself on a hand-checked example.
"""

from __future__ import annotations

from importlib.metadata import version

import pytest
import torch

from benchmarks.cases import COUNT_SHAPES, MODES, Case, shape_text
from benchmarks.contenders import Contender, make_contenders
from benchmarks.dispatch_count import DispatchCounter, OpCounts
from benchmarks.meta_counts import COUNTED, count_call


def test_counter_counts_ops_writes_and_bytes() -> None:
    a = torch.empty(4, 8, device="meta")  # 32 float32: 128 bytes
    b = torch.empty(4, 8, device="meta")
    with DispatchCounter() as counter:
        c = a + b  # new tensor: 128 bytes
        a.add_(b)  # in place: writes a, 128 bytes
        v = a.view(32)  # view: nothing
        row = a[0]  # select (a view): nothing
        row.fill_(1.0)  # in place on a view: its 8 elements, 32 bytes
        torch.mul(a, b, out=c)  # out=: writes c, 128 bytes
        buffer = torch.empty(16, device="meta")  # allocation: no launch, nothing written
        d = a.double()  # a new float64 tensor: 256 bytes
    counts = counter.counts
    assert dict(counts.by_op) == {
        "aten.add.Tensor": 1,
        "aten.add_.Tensor": 1,
        "aten.view.default": 1,
        "aten.select.int": 1,
        "aten.fill_.Scalar": 1,
        "aten.mul.out": 1,
        "aten.empty.memory_format": 1,
        "aten._to_copy.default": 1,
    }
    assert dict(counts.writes_by_op) == {
        "aten.add.Tensor": 1,
        "aten.add_.Tensor": 1,
        "aten.fill_.Scalar": 1,
        "aten.mul.out": 1,
        "aten._to_copy.default": 1,
    }
    assert (counts.ops, counts.writing_ops) == (8, 5)
    assert counts.bytes_written == 128 + 128 + 32 + 128 + 256
    assert v.shape == (32,) and buffer.shape == (16,) and d.dtype == torch.float64


def test_counter_sees_the_backward() -> None:
    x = torch.empty(64, device="meta", requires_grad=True)
    with DispatchCounter() as forward_only:
        (x * 2.0).sum()
    with DispatchCounter() as both:
        (x * 2.0).sum().backward()
    assert both.counts.writing_ops > forward_only.counts.writing_ops
    assert x.grad is not None and x.grad.shape == (64,)


@pytest.fixture(scope="module")
def contenders() -> dict[str, Contender]:
    if version("torchmetrics") != "1.9.0":
        pytest.skip("the launch/byte floor is measured against torchmetrics 1.9.0")
    return make_contenders(COUNTED)


def _top(counts: OpCounts) -> str:
    return ", ".join(f"{name} x{n}" for name, n in counts.writes_by_op.most_common(8))


@pytest.mark.skipif(
    not torch._C._dispatch_has_kernel_for_dispatch_key("aten::reflection_pad2d.out", "Meta"),
    reason=f"torch {torch.__version__} has no meta kernel for reflection_pad2d.out, which the CUDA route "
    "writes its padding with: on meta the patch pads out of place, so meta's counts are not the CUDA route's",
)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", COUNT_SHAPES, ids=shape_text)
def test_patched_dispatches_and_writes_no_more_than_unpatched(
    contenders: dict[str, Contender], shape: tuple[int, ...], mode: str
) -> None:
    case = Case("meta", shape, mode)
    unpatched = count_call(contenders["unpatched"], case)
    patched = count_call(contenders["patched"], case)

    # The instrument saw the unpatched call: one convolution writing the five moment maps.
    assert unpatched.writes_by_op["aten.convolution.default"] == 1
    assert unpatched.bytes_written >= 5 * 4 * torch.Size(shape).numel()

    measures = ("ops", "writing_ops", "bytes_written")
    over = {m: (getattr(patched, m), getattr(unpatched, m)) for m in measures}
    over = {m: pu for m, pu in over.items() if pu[0] > pu[1]}
    assert not over, (
        f"{shape_text(shape)} {mode}: patched > unpatched in "
        + ", ".join(f"{m} ({p} > {u})" for m, (p, u) in over.items())
        + f"; patched writes by op: {_top(patched)}"
    )
