"""Small device tensors made once and kept across calls (window taps, convolution weights, filter
matrices, constants): :class:`KeptTensors`, one store per kind, keyed by all that decides a value.

On CUDA a kept value is made by work on the stream current then (a fill, a copy); a later call
may run on another stream. A call from a stream other than the one that made the value first
makes its stream wait for the making (an event: no host sync) and records the stream on the
value's memory, so that emptying the store never hands the memory back while that stream may
still read it. Nothing is made and kept during CUDA graph capture (its memory would come from the
graph's pool and be written only by a replay); a value read during capture is held for the life
of the process, as the graph holds its address.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Optional, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


@dataclass
class _Entry(Generic[T]):
    value: T
    stream: Any = None  # the CUDA stream that made it (None off CUDA)
    event: Any = None  # recorded on that stream after the making
    readers: set[Any] = field(default_factory=set)  # streams already made to wait


class _Cuda:
    """The few CUDA calls the store makes, in one place (a test stands in for them on CPU)."""

    def current_stream(self, device: torch.device) -> Any:
        return torch.cuda.current_stream(device)

    def capturing(self) -> bool:
        return bool(torch.cuda.is_current_stream_capturing())

    def record_event(self, stream: Any) -> Any:
        event = torch.cuda.Event()  # type: ignore[no-untyped-call]
        event.record(stream)
        return event

    def wait(self, stream: Any, event: Any) -> None:
        stream.wait_event(event)

    def record_stream(self, tensor: Tensor, stream: Any) -> None:
        tensor.record_stream(stream)


_CUDA = _Cuda()
#: Values read during CUDA graph capture: a graph may replay them for as long as it lives.
_HELD_FOR_GRAPHS: dict[int, object] = {}


def _tensors(value: object) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)


class KeptTensors(Generic[T]):
    """Values (a tensor, or a tuple of tensors and None) by key; emptied when it holds ``limit``."""

    def __init__(self, limit: int = 64) -> None:
        self._entries: dict[tuple[object, ...], _Entry[T]] = {}
        self._limit = limit

    def get(self, key: tuple[object, ...], device: torch.device, make: Callable[[], T]) -> T:
        """The value kept for ``key`` (``device`` is part of it), made by ``make`` on a miss."""
        entry = self._entries.get(key)
        if device.type != "cuda":
            if entry is None:
                entry = self._keep(key, make())
            return entry.value
        stream = _CUDA.current_stream(device)
        if _CUDA.capturing():
            if entry is None:
                return make()
            _HELD_FOR_GRAPHS[id(entry.value)] = entry.value
            return entry.value  # capture starts after a device sync (torch.cuda.graph)
        if entry is None:
            value = make()
            entry = self._keep(key, value, stream, _CUDA.record_event(stream))
        elif stream != entry.stream and stream not in entry.readers:
            _CUDA.wait(stream, entry.event)
            for tensor in _tensors(entry.value):
                _CUDA.record_stream(tensor, stream)
            entry.readers.add(stream)
        return entry.value

    def _keep(self, key: tuple[object, ...], value: T, stream: Any = None, event: Any = None) -> _Entry[T]:
        if len(self._entries) >= self._limit:
            self._entries.clear()
        entry = _Entry(value, stream, event)
        self._entries[key] = entry
        return entry

    def find(self, key: tuple[object, ...]) -> Optional[T]:
        """The value kept for ``key``, or None (no stream bookkeeping: for tests and reports)."""
        entry = self._entries.get(key)
        return None if entry is None else entry.value

    def keys(self) -> list[tuple[object, ...]]:
        return list(self._entries)

    def __iter__(self) -> Iterator[tuple[object, ...]]:
        return iter(list(self._entries))

    def values(self) -> list[T]:
        return [entry.value for entry in self._entries.values()]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
