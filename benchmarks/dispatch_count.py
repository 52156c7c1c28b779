"""Count the aten ops a piece of code dispatches and the bytes of the tensors they write.

On CUDA each dispatched op that writes memory is (at least) one kernel launch, and the bytes it
writes are memory traffic, so on ``device="meta"`` tensors (no data, no compute) these counts
measure a GPU algorithm's launches and traffic exactly, on any machine.

What an op writes:

- the tensors it returns that share no storage with its inputs (a new result);
- the tensors it mutates: arguments marked ``(a!)`` in its schema (in-place ops, ``out=``);
- nothing for views and metadata ops (a result that shares an input's storage, or no tensor),
  and nothing for bare allocations (``empty``, ``new_empty``, ...), which launch no kernel: the op
  that later fills the buffer (an ``out=`` or in-place op) counts those bytes.

ssim_patch's custom op (``ssim_patch::similarity``, the engine where torch has
``torch.library.custom_op``) is not counted as one op: the ops its implementation runs are. Called
below autograd, a composite op there (``conv2d``) is seen as itself rather than as the op it
decomposes into (``convolution``): the same launches and bytes.

Reads are not counted. Usage::

    with DispatchCounter() as counter:
        loss = f(x)
        loss.backward()
    counter.counts.ops, counter.counts.writing_ops, counter.counts.bytes_written
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

#: Ops that only allocate: no kernel, nothing written.
ALLOCATIONS = frozenset(
    {"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty", "aten::new_empty_strided"}
)


@dataclass
class OpCounts:
    """What was dispatched: every op, the ops that write, and the bytes they write."""

    ops: int = 0
    writing_ops: int = 0
    bytes_written: int = 0
    by_op: Counter[str] = field(default_factory=Counter)  # every op, by overload name
    writes_by_op: Counter[str] = field(default_factory=Counter)  # ops that write, by overload name

    def add(self, name: str, written: list[Tensor]) -> None:
        """Record one dispatched op and the tensors it wrote (empty for a view or metadata op)."""
        self.ops += 1
        self.by_op[name] += 1
        if written:
            self.writing_ops += 1
            self.writes_by_op[name] += 1
            self.bytes_written += sum(t.numel() * t.element_size() for t in written)


def _tensors(value: Any) -> list[Tensor]:
    return [t for t in tree_flatten(value)[0] if isinstance(t, Tensor)]


def _storage_key(t: Tensor) -> Optional[int]:
    try:
        return int(t.untyped_storage()._cdata)
    except Exception:  # tensors without storage (some subclasses): never an alias
        return None


def _custom_op_implementation(func: torch._ops.OpOverload) -> Any:
    """The Python function behind ``func`` when it is one of ssim_patch's custom ops (the engine
    runs as ``ssim_patch::similarity`` where torch has ``torch.library.custom_op``), else None."""
    module = sys.modules.get("ssim_patch.backends._custom_op")
    return None if module is None else module.implementation(func)


def written_tensors(
    func: torch._ops.OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> list[Tensor]:
    """The tensors ``func(*args, **kwargs)`` wrote, given its result ``out``."""
    schema = func._schema
    if schema.name in ALLOCATIONS:
        return []
    mutated: list[Tensor] = []
    for i, arg in enumerate(schema.arguments):
        if arg.alias_info is not None and arg.alias_info.is_write:
            value = args[i] if i < len(args) and not arg.kwarg_only else kwargs.get(arg.name)
            mutated += _tensors(value)
    inputs = {_storage_key(t) for t in _tensors((args, kwargs))} - {None}
    fresh = [t for t in _tensors(out) if _storage_key(t) not in inputs]
    return mutated + fresh


class DispatchCounter(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch's __init_subclass__
    """A dispatch mode that runs every op as usual and records it in :attr:`counts`.

    Autograd's backward ops are counted too when ``backward()`` runs inside the mode.
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.counts = OpCounts()

    def __torch_dispatch__(
        self,
        func: torch._ops.OpOverload,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: Optional[dict[str, Any]] = None,
    ) -> Any:
        kwargs = kwargs or {}
        inside = _custom_op_implementation(func)
        if inside is not None:  # ssim_patch's custom op: count the aten ops it runs, not the op
            with self:
                return inside(*args, **kwargs)
        out = func(*args, **kwargs)
        self.counts.add(str(func), written_tensors(func, args, kwargs, out))
        return out
