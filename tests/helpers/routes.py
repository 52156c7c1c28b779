"""The route a fused call must take on the torch installed (``ssim_patch.backends.route``), found
here from torch itself: the custom op where ``torch.library.custom_op`` exists, unless registering
it failed (and then the reason ``_custom_op`` recorded); else ``autograd.Function``."""

from __future__ import annotations

import torch


def expected_route() -> tuple[str, str]:
    if not hasattr(torch.library, "custom_op"):
        return "autograd.Function", "this torch has no torch.library.custom_op (torch 2.4 added it)"
    from ssim_patch.backends import _custom_op

    if _custom_op.UNAVAILABLE is not None:
        return "autograd.Function", _custom_op.UNAVAILABLE
    return "custom op", "torch.library.custom_op registered ssim_patch::similarity"
