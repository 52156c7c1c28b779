"""Where a torchmetrics hook function (SSIM's or UQI's) is bound right now (for the patch-state tests)."""

from __future__ import annotations

import sys
import types
from typing import Any

from ssim_patch import _releases


def hook_bindings(hook: str, defined_in: str = _releases.MODULE) -> dict[str, Any]:
    """``module.attr`` -> value for every module attribute holding the function ``hook`` of
    torchmetrics module ``defined_in``: the original, an older copy, or a replacement (which carries
    the original's name)."""
    out = {}
    for name, module in list(sys.modules.items()):
        namespace = getattr(module, "__dict__", None) if isinstance(module, types.ModuleType) else None
        if not isinstance(namespace, dict):
            continue
        for attr, value in list(namespace.items()):
            if (
                type(value) is types.FunctionType
                and value.__module__ == defined_in
                and value.__qualname__ == hook
            ):
                out[f"{name}.{attr}"] = value
    return out
