"""The store of kept device tensors (``backends._kept``): what a call on another CUDA stream, or
under graph capture, does with a kept value. The CUDA calls are stood in for (no GPU here); each
test says what would go wrong on a GPU without the step it checks."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ssim_patch.backends import _kept

CUDA = torch.device("cuda", 0)


class _Streams:
    """Records the store's CUDA calls; ``current`` is the stream a call runs on."""

    def __init__(self) -> None:
        self.current = "s0"
        self.capture = False
        self.calls: list[tuple[Any, ...]] = []

    def current_stream(self, device: torch.device) -> Any:
        assert device == CUDA
        return self.current

    def capturing(self) -> bool:
        return self.capture

    def record_event(self, stream: Any) -> Any:
        self.calls.append(("record_event", stream))
        return f"event on {stream}"

    def wait(self, stream: Any, event: Any) -> None:
        self.calls.append(("wait", stream, event))

    def record_stream(self, tensor: torch.Tensor, stream: Any) -> None:
        self.calls.append(("record_stream", tensor.shape, stream))


@pytest.fixture
def streams(monkeypatch: pytest.MonkeyPatch) -> _Streams:
    fake = _Streams()
    monkeypatch.setattr(_kept, "_CUDA", fake)
    monkeypatch.setattr(_kept, "_HELD_FOR_GRAPHS", {})
    return fake


def _pair() -> tuple[torch.Tensor, None, torch.Tensor]:
    return (torch.zeros(2), None, torch.zeros(3))


def test_a_value_made_on_one_stream_is_waited_for_on_another(streams: _Streams) -> None:
    """Without the wait, a kernel on s1 could read the value before s0's fill or copy wrote it;
    without record_stream, emptying the store could hand its memory to s0 while s1 reads it."""
    store: _kept.KeptTensors[Any] = _kept.KeptTensors()
    made = store.get(("k",), CUDA, _pair)
    assert streams.calls == [("record_event", "s0")]
    assert store.get(("k",), CUDA, _pair) is made and len(streams.calls) == 1  # same stream: nothing
    streams.current = "s1"
    assert store.get(("k",), CUDA, _pair) is made
    assert streams.calls[1:] == [
        ("wait", "s1", "event on s0"),
        ("record_stream", (2,), "s1"),
        ("record_stream", (3,), "s1"),
    ]
    assert store.get(("k",), CUDA, _pair) is made and len(streams.calls) == 4  # once a stream
    streams.current = "s0"
    assert store.get(("k",), CUDA, _pair) is made and len(streams.calls) == 4


def test_nothing_is_kept_during_graph_capture(streams: _Streams) -> None:
    """A value made during capture lives in the graph's pool and is written only by a replay: a
    later eager call must not read it."""
    store: _kept.KeptTensors[Any] = _kept.KeptTensors()
    streams.capture = True
    first = store.get(("k",), CUDA, _pair)
    assert len(store) == 0 and streams.calls == []
    assert store.get(("k",), CUDA, _pair) is not first


def test_a_value_read_during_capture_outlives_the_store(streams: _Streams) -> None:
    """The graph replays the value's address for as long as it lives: emptying the store must not
    free it."""
    store: _kept.KeptTensors[Any] = _kept.KeptTensors(limit=1)
    made = store.get(("k",), CUDA, _pair)
    streams.capture, streams.current = True, "capture stream"
    assert store.get(("k",), CUDA, _pair) is made
    streams.capture = False
    store.get(("other",), CUDA, _pair)  # empties the store (limit 1)
    assert store.find(("k",)) is None
    assert any(held is made for held in _kept._HELD_FOR_GRAPHS.values())


def test_cpu_values_ask_cuda_nothing(streams: _Streams) -> None:
    store: _kept.KeptTensors[Any] = _kept.KeptTensors(limit=2)
    made = store.get(("a",), torch.device("cpu"), _pair)
    assert store.get(("a",), torch.device("cpu"), _pair) is made
    store.get(("b",), torch.device("cpu"), _pair)
    store.get(("c",), torch.device("cpu"), _pair)  # the limit: emptied, then kept
    assert store.keys() == [("c",)] and streams.calls == []
