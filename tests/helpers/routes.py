"""The route a fused call must take on the torch installed (``ssim_patch.backends.route``), found
here from torch itself: the custom op where ``torch.library`` has ``custom_op`` (taking a schema),
``register_fake`` and ``register_autograd``; else ``autograd.Function``, naming what is missing."""

from __future__ import annotations

import inspect

import torch


def expected_route() -> tuple[str, str]:
    version = torch.__version__
    for name in ("custom_op", "register_fake", "register_autograd"):
        if not hasattr(torch.library, name):
            return "autograd.Function", f"torch {version} has no torch.library.{name}"
    if "schema" not in inspect.signature(torch.library.custom_op).parameters:
        return "autograd.Function", f"torch {version}'s torch.library.custom_op takes no schema"
    return (
        "custom op",
        f"torch {version} has torch.library.custom_op; plain eager calls take the autograd.Function",
    )
