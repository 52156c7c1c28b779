"""Scratch buffers for the CPU backend: each thread's :class:`Workspace`, kept from call to call.

A fresh large allocation on CPU costs a page fault per 4 KiB touched, and glibc gives freed heap
back to the OS eagerly until the process has freed one large block: a call takes its map-sized
temporaries from the calling thread's workspace (:func:`workspace`) instead, and allocates only
what it returns and keeps for the backward. The workspace also keeps what the backend made of its
buffers (views, index tensors: its ``plans``), dropped whenever a buffer is made anew.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any, Optional

import torch
from torch import Tensor

#: A thread keeps its scratch buffers from call to call up to this many bytes (a 2-D piece needs
#: well under 2 MiB of them; a band of a large 3-D volume more).
_KEEP_BYTES = 16 << 20
#: A scratch buffer's key: its name, and the dtype, device, tensor type and inference mode it was
#: made for (a tensor made under ``torch.inference_mode`` may not be written outside it).
_Key = tuple[str, torch.dtype, torch.device, type, bool]
#: A workspace keeps at most this many plans (views of its buffers; ``cpu.BandBlur``'s).
_PLANS = 64
#: ... and at most this many views of its buffers (:meth:`Workspace.take`'s).
_VIEWS = 256
#: Tensor types whose scratch is a plain tensor, kept from call to call.
_PLAIN = (Tensor, torch.nn.Parameter)


def _nbytes(buf: Tensor) -> int:
    """``buf.nbytes`` (which torch 2.0 lacks)."""
    return buf.numel() * buf.element_size()


class Workspace:
    """Scratch buffers by name, reused for every request that fits (by dtype, device, tensor
    type and inference mode: a fake tensor, from shape inference, gets fake ones)."""

    def __init__(self) -> None:
        self._buffers: dict[_Key, Tensor] = {}
        self._taken: set[_Key] = set()
        self._nbytes = 0
        #: The views :meth:`take` returned, by key and shape (a view costs microseconds to make,
        #: and a call takes dozens); cleared with the plans.
        self._views: dict[tuple[_Key, tuple[int, ...]], Tensor] = {}
        #: What the backend made of these buffers (views, index tensors), by what it is for;
        #: cleared whenever a buffer is made anew, so that nothing here views a dropped one.
        self.plans: dict[tuple[object, ...], Any] = {}

    def take(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        size = math.prod(shape)
        kind = Tensor if type(like) in _PLAIN else type(like)
        key = (name, like.dtype, like.device, kind, torch.is_inference_mode_enabled())
        self._taken.add(key)
        view = self._views.get((key, shape))
        if view is not None:
            return view
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < size:
            self._nbytes -= 0 if buf is None else _nbytes(buf)
            self._forget()
            buf = like.new_empty(size)
            self._nbytes += _nbytes(buf)
            self._buffers[key] = buf
        if len(self._views) >= _VIEWS:
            self._views.clear()
        view = self._views[(key, shape)] = buf[:size].view(shape)
        return view

    def remember(self, key: tuple[object, ...], plan: Any) -> None:
        """Keeps ``plan`` in :attr:`plans` (which holds at most ``_PLANS``: shapes that vary from
        call to call would add one each)."""
        if len(self.plans) >= _PLANS:
            self.plans.clear()
        self.plans[key] = plan

    def _forget(self) -> None:
        """Drops every view of the buffers (before one is made anew or dropped)."""
        self.plans.clear()
        self._views.clear()

    def formula(self, name: str, like: Tensor) -> Tensor:
        """A :data:`ssim_patch._formula.Buffers` of this workspace."""
        return self.take(f"formula {name}", tuple(like.shape), like)

    def kept(self) -> bool:
        """Ends a call: whether to keep the buffers for the thread's next call. Plain tensors only,
        ``_KEEP_BYTES`` in all: over that, first only those of this call's dtype and device (the
        forward and the backward take different ones), then only those this call took, else none."""
        taken, self._taken = self._taken, set()
        if any(key[3] is not Tensor for key in taken):
            return False
        kinds = {key[1:] for key in taken}
        if self._nbytes > _KEEP_BYTES:
            self._keep_only(lambda key: key[1:] in kinds)
        if self._nbytes > _KEEP_BYTES:
            self._keep_only(lambda key: key in taken)
        return self._nbytes <= _KEEP_BYTES

    def _keep_only(self, wanted: Callable[[_Key], bool]) -> None:
        self._buffers = {key: buf for key, buf in self._buffers.items() if wanted(key)}
        self._nbytes = sum(_nbytes(buf) for buf in self._buffers.values())
        self._forget()


#: Each thread's workspace between calls (``free``): see :func:`workspace`.
_IDLE = threading.local()


@contextlib.contextmanager
def workspace() -> Iterator[Workspace]:
    """The calling thread's scratch buffers, kept from one call to the next (up to
    ``_KEEP_BYTES``, see :meth:`Workspace.kept`): a fresh large allocation on CPU costs a page
    fault per 4 KiB touched, and glibc gives freed heap back to the OS eagerly until the process
    has freed one large block. A call made while another holds the workspace (no call does; a
    dispatch mode could) gets a workspace of its own."""
    work: Optional[Workspace] = getattr(_IDLE, "free", None)
    _IDLE.free = None
    if work is None:
        work = Workspace()
    try:
        yield work
    finally:
        if work.kept():
            _IDLE.free = work
