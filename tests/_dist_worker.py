"""One rank of tests/test_distributed.py. It never imports ssim_patch: the start-up hook
(SSIM_PATCH_AUTO=1 in the environment) is what patches torchmetrics in this process."""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist


def run(rank: int, world_size: int, rendezvous: str, data_path: str, out_dir: str) -> None:
    """Update a StructuralSimilarityIndexMeasure with this rank's shard, compute (synced), report.

    The ranks meet through a file (``rendezvous``, a path that does not exist yet), not a TCP
    port: no port picked in advance that another process can take, and no store server thread in
    rank 0 to be torn down while the other rank still talks to it (which once aborted rank 0 with
    "terminate called without an active exception")."""
    dist.init_process_group(
        "gloo",
        init_method=f"file://{rendezvous}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=60),
    )
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
        dist.barrier()
    finally:
        dist.destroy_process_group()
