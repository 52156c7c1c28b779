"""Shared by both suites: one torch thread per test process, torch's TorchScript warnings loaded
away, and the ``patch_applied`` / ``patch_reverted`` fixtures."""

import os
import warnings
from collections.abc import Iterator

import pytest

# One torch thread per test process, and in the processes the tests start (they inherit the
# variable), unless the caller chose a number. With more OpenMP threads than idle cores, every
# parallel region waits for threads the OS has not scheduled: on a 2-core machine shared with
# other work, gradgradcheck took 12.7 s with 2 threads against 2.7 s with one. No test depends on
# the number of threads; a run that wants more sets OMP_NUM_THREADS itself.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Two torch modules use TorchScript when they are first imported, and each use warns "deprecated":
# forward-mode AD's decompositions script 18 functions with torch.jit.script
# (torch/_decomp/decompositions_for_jvp.py, loaded on the first dual tensor), and inductor imports
# torch/utils/mkldnn.py, whose classes have 14 torch.jit.script_method methods. Both are torch's own
# code: load them here with those warnings silenced, so a TorchScript call anywhere else still warns.
with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message=r"`torch\.jit\.script(_method)?` is deprecated", category=DeprecationWarning
    )
    import torch._decomp.decompositions_for_jvp
    import torch.utils.mkldnn


@pytest.fixture
def patch_applied() -> Iterator[None]:
    """The test runs with the patch applied (default options); the state found comes back after."""
    from tests.helpers import patch_state

    with patch_state.applied():
        yield


@pytest.fixture
def patch_reverted() -> Iterator[None]:
    """The test runs against torchmetrics' own SSIM and UQI; the state found comes back after."""
    from tests.helpers import patch_state

    with patch_state.reverted():
        yield


@pytest.fixture
def dynamo():
    """torch._dynamo, reset before and after the test (compiled graphs and guards of one test
    never reach another). Skips where torch cannot compile (torch 2.0 on Python 3.11+)."""
    from tests.helpers.torch_support import reset_dynamo, skip_unless_compiles

    skip_unless_compiles()
    dynamo = pytest.importorskip("torch._dynamo")
    reset_dynamo()
    yield dynamo
    reset_dynamo()
