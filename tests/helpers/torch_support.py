"""What the installed torch can do, found by trying it (unpatched): tests of a feature skip, naming
the torch, where torch itself lacks it, as they would for torchmetrics unpatched. torch 2.0 cannot
compile on Python 3.11+ and makes a fake CUDA tensor only with a CUDA driver."""

from __future__ import annotations

import functools
import gc
import sys
from typing import Optional

import pytest
import torch


@functools.cache
def compile_unsupported() -> Optional[str]:
    """Why ``torch.compile`` cannot run here, or None."""
    import torch._dynamo.eval_frame

    check = getattr(torch._dynamo.eval_frame, "check_if_dynamo_supported", None)
    if check is None:
        return None
    try:
        check()
    except RuntimeError as exc:
        return f"torch {torch.__version__} cannot compile on Python {sys.version.split()[0]}: {exc}"
    return None


@functools.cache
def fake_cuda_unsupported() -> Optional[str]:
    """Why a fake CUDA tensor cannot be made on this machine, or None."""
    if not torch.backends.cuda.is_built():
        return "fake CUDA tensors need a CUDA build of torch"
    from torch._subclasses.fake_tensor import FakeTensorMode

    try:
        with FakeTensorMode():
            torch.empty(1, device="cuda")
    except (RuntimeError, AssertionError) as exc:
        return f"torch {torch.__version__} makes fake CUDA tensors only with a CUDA driver: {exc}"
    return None


requires_compile = pytest.mark.skipif(compile_unsupported() is not None, reason=str(compile_unsupported()))


def skip_unless_compiles() -> None:
    """Skip the rest of a test that compiles, where torch cannot."""
    reason = compile_unsupported()
    if reason is not None:
        pytest.skip(reason)


@functools.cache
def metric_fullgraph_unsupported() -> Optional[str]:
    """Why a torchmetrics ``Metric`` (any: its ``forward`` machinery) cannot be compiled with
    ``fullgraph=True`` here, unpatched, or None (dynamo of torch 2.4 cannot inline the
    ``contextlib`` context manager of ``Metric.compute``)."""
    if compile_unsupported() is not None:
        return compile_unsupported()
    import torch._dynamo
    from torchmetrics import Metric

    class Total(Metric):
        def __init__(self) -> None:
            super().__init__()
            self.add_state("total", torch.zeros(()), dist_reduce_fx="sum")

        def update(self, a: torch.Tensor) -> None:
            self.total += a.sum()

        def compute(self) -> torch.Tensor:
            return self.total

    metric = Total()
    reset_dynamo()
    try:
        torch.compile(lambda a: metric(a), backend="eager", fullgraph=True)(torch.ones(2))
    except torch._dynamo.exc.Unsupported as exc:
        first = str(exc).splitlines()[0]
        return f"torch {torch.__version__} cannot compile a torchmetrics Metric with fullgraph=True: {first}"
    finally:
        reset_dynamo()
    return None


def reset_dynamo() -> None:
    """``torch._dynamo.reset()``; on torch 2.0-2.2, then collect the compiled code it dropped.
    Dynamo there removes the globals a compiled frame put in its module (resume functions) when
    that code is collected; left to a later collection, the removal could land while dynamo traced
    another frame of that module and iterated its globals (``InternalTorchDynamoError: dictionary
    changed size during iteration``: once in the matrix suite on torch 2.1.2, in torchmetrics'
    Metric.forward). ``ssim_patch.revert()`` collects after the reset it makes there."""
    import torch._dynamo

    from ssim_patch._torch_features import OLD_DYNAMO

    torch._dynamo.reset()
    if OLD_DYNAMO:
        gc.collect()
