"""One rank of tests/test_distributed.py. It never imports ssim_patch: the start-up hook
(SSIM_PATCH_AUTO=1 in the environment) is what patches torchmetrics in this process."""

from __future__ import annotations

import json
import os
import sys
import threading
from datetime import timedelta

import torch
import torch.distributed as dist

#: How long a rank waits for its process group's destruction before it leaves anyway.
DESTROY_SECONDS = float(os.environ.get("DIST_WORKER_DESTROY_SECONDS", "20"))


def _destroy() -> None:
    """``dist.destroy_process_group()``; with ``DIST_WORKER_DESTROY_HANGS=1`` (the test of a hung
    destructor) it destroys the group, then never returns."""
    dist.destroy_process_group()
    if os.environ.get("DIST_WORKER_DESTROY_HANGS") == "1":
        threading.Event().wait()


def _stage(out_dir: str, rank: int, stage: str) -> None:
    """Notes how far this rank got (``rank<r>.stage``), for the test's message if a rank dies."""
    with open(os.path.join(out_dir, f"rank{rank}.stage"), "w") as f:
        f.write(stage)


def run(rank: int, world_size: int, rendezvous: str, data_path: str, out_dir: str) -> None:
    """Update a StructuralSimilarityIndexMeasure with this rank's shard, compute (synced), report.

    The ranks meet through a file (``rendezvous``, a path that does not exist yet), not a TCP
    port: no port picked in advance that another process can take, and no store server thread in
    rank 0. A rank that got through leaves with ``os._exit(0)`` after destroying the process
    group: twice in CI (1 run of ~1800 tests in 5) rank 0 aborted with gloo's "terminate called
    without an active exception", which is what a C++ thread still joinable when its object is
    destroyed gives, as in the interpreter's and the C++ runtime's teardown that this skips.
    The group is destroyed from a thread the rank waits for at most :data:`DESTROY_SECONDS`:
    on torch 2.1.2 a rank hung for good in ``ProcessGroupGloo``'s destructor (CI, after the
    barrier): it held the GIL and waited for a mutex that gloo's work thread held while it
    waited for the GIL to free a tensor."""
    _stage(out_dir, rank, "started")
    dist.init_process_group(
        "gloo",
        init_method=f"file://{rendezvous}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=60),
    )
    _stage(out_dir, rank, "joined the group")
    try:
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
    finally:
        closer = threading.Thread(target=_destroy, daemon=True)
        closer.start()
        closer.join(DESTROY_SECONDS)  # waiting releases the GIL
    _stage(out_dir, rank, "left the group undestroyed" if closer.is_alive() else "destroyed the group")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
