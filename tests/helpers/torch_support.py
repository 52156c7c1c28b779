"""What the installed torch can do, found by trying it (unpatched): tests of a feature skip, naming
the torch, where torch itself lacks it, as they would for torchmetrics unpatched. torch 2.0 cannot
compile on Python 3.11+ and makes a fake CUDA tensor only with a CUDA driver."""

from __future__ import annotations

import functools
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
