"""One rank of tests/test_distributed.py. It never imports ssim_patch: the start-up hook
(SSIM_PATCH_AUTO=1 in the environment) is what patches torchmetrics in this process."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

#: How long a rank that passed the barrier waits for the others to pass it before it leaves.
LEAVE_SECONDS = 60.0


def _stage(out_dir: str, rank: int, stage: str) -> None:
    """Notes how far this rank got (``rank<r>.stage``), for the test's message if a rank dies."""
    with open(os.path.join(out_dir, f"rank{rank}.stage"), "w") as f:
        f.write(stage)


def _read(path: str) -> str:
    """The text of ``path``, or "" where there is none yet."""
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _wait_for(out_dir: str, world_size: int, stage: str) -> None:
    """Waits (at most ``LEAVE_SECONDS``) until every rank's stage file says ``stage``."""
    paths = [os.path.join(out_dir, f"rank{r}.stage") for r in range(world_size)]
    deadline = time.monotonic() + LEAVE_SECONDS
    while time.monotonic() < deadline:
        if all(_read(p) == stage for p in paths):
            return
        time.sleep(0.05)


def run(rank: int, world_size: int, rendezvous: str, data_path: str, out_dir: str) -> None:
    """Update a StructuralSimilarityIndexMeasure with this rank's shard, compute (synced), report.

    The ranks meet through a file (``rendezvous``, a path that does not exist yet), not a TCP
    port: no port picked in advance that another process can take, and no store server thread in
    rank 0. A rank that got through waits until every rank has passed the barrier (their stage
    files), then leaves with ``os._exit(0)`` without destroying the process group: on torch
    2.1.2 gloo's group destructor can deadlock (it holds the GIL and joins gloo's work thread,
    which waits for the GIL to free a tensor: a rank hung for good in CI twice, once with the
    destructor in a thread of its own, as the interpreter can never run the waiting thread
    again), and the interpreter's teardown once aborted a rank with gloo's "terminate called
    without an active exception" (a C++ thread destroyed while joinable). ``os._exit`` runs
    neither."""
    _stage(out_dir, rank, "started")
    dist.init_process_group(
        "gloo",
        init_method=f"file://{rendezvous}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=60),
    )
    _stage(out_dir, rank, "joined the group")
    from torchmetrics.functional.image import ssim as functional
    from torchmetrics.image import StructuralSimilarityIndexMeasure

    data = torch.load(data_path)
    metric = StructuralSimilarityIndexMeasure(**data["kwargs"])
    metric.update(data["preds"][rank::world_size], data["target"][rank::world_size])
    value = float(metric.compute())
    report = {
        "rank": rank,
        "value": value,
        "startup_hook_loaded": "_ssim_patch_startup" in sys.modules,
        "hook_point_wrapped": any(
            hasattr(getattr(functional, name, None), "__wrapped__")
            for name in ("_ssim_update", "_ssim_compute")
        ),
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
    _stage(out_dir, rank, "reported")
    dist.barrier()
    _stage(out_dir, rank, "passed the barrier")
    _wait_for(out_dir, world_size, "passed the barrier")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
