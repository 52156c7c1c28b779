"""Where torchmetrics' SSIM hook function is bound right now (for the patch-state tests)."""

from __future__ import annotations

import sys
import types
from typing import Any

from ssim_patch import _releases


def hook_bindings(hook: str) -> dict[str, Any]:
    """``module.attr`` -> value for every module attribute holding the hook function named ``hook``:
    the original, an older copy, or a replacement (which carries the original's name)."""
    out = {}
    for name, module in list(sys.modules.items()):
        namespace = getattr(module, "__dict__", None) if isinstance(module, types.ModuleType) else None
        if not isinstance(namespace, dict):
            continue
        for attr, value in list(namespace.items()):
            if (
                type(value) is types.FunctionType
                and value.__module__ == _releases.MODULE
                and value.__qualname__ == hook
            ):
                out[f"{name}.{attr}"] = value
    return out
