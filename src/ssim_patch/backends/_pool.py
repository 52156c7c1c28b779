"""The CPU backend's own threads: pieces of one call run at once, each op on one thread.

torch parallelises each op above its grain size over its intra-op threads: a call of a few
hundred such ops opens a few hundred parallel regions, and each waits at a barrier for every
thread of the team. Beside a busy process the OS parks one of them now and then, and a region
costs a scheduler time slice (issue 24: 4-40x slower than one thread). Here the pieces are the
unit of parallel work instead: a pool of the library's own threads takes them one at a time from
the call, each runs its ops single-threaded (torch releases the GIL inside them), and the call
waits once, for the last piece. A parked thread delays only the piece it holds.

A worker's ops run single-threaded because its OpenMP thread count, a per-thread setting, is set
to 1 (``omp_set_num_threads`` in that thread only; torch reads it through ``omp_get_max_threads``).
Nothing of the user's process changes: not ``torch.set_num_threads``, not the environment, not
the threads of any other thread. A call uses at most as many workers as its caller's
``torch.get_num_threads()``; where that is 1, or the OpenMP runtime is not found, or a worker's
ops would not run single-threaded (another parallel backend), :func:`width` is 0 and the caller
runs its pieces itself, as before.
"""

from __future__ import annotations

import ctypes
import os
import queue
import threading
from collections.abc import Sequence
from typing import Callable, Optional

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode


class _Batch:
    """One call's pieces: taken one at a time by the workers that hold one of its tokens."""

    def __init__(self, tasks: Sequence[Callable[[], None]], inference: bool) -> None:
        self.tasks = tasks
        self.inference = inference
        self.lock = threading.Lock()
        self.next = 0
        self.left = len(tasks)
        self.done = threading.Event()
        self.error: Optional[BaseException] = None

    def claim(self) -> Optional[Callable[[], None]]:
        with self.lock:
            if self.next >= len(self.tasks) or self.error is not None:
                return None
            task = self.tasks[self.next]
            self.next += 1
            return task

    def finished(self, count: int, error: Optional[BaseException]) -> None:
        with self.lock:
            if error is not None and self.error is None:
                self.error = error
                count += len(self.tasks) - self.next  # the rest is skipped
                self.next = len(self.tasks)
            self.left -= count
            if self.left <= 0:
                self.done.set()


def _openmp() -> Optional[Callable[[int], None]]:
    """``omp_set_num_threads`` of the OpenMP runtime torch loaded (found in /proc/self/maps), or
    None where there is none to be found."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "omp" in line.rsplit("/", 1)[-1]}
    except OSError:
        return None
    for path in sorted(paths):
        if not os.path.isabs(path):
            continue
        try:
            setter = ctypes.CDLL(path).omp_set_num_threads
        except (OSError, AttributeError):
            continue
        setter.argtypes = [ctypes.c_int]
        setter.restype = None
        return setter
    return None


class _Pool:
    """Worker threads fed by one queue of tokens ``(batch)``; started as calls need them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tokens: queue.SimpleQueue[_Batch] = queue.SimpleQueue()
        self.workers = 0
        #: None until the first worker has checked that its ops run single-threaded.
        self.usable: Optional[bool] = None
        self.checked = threading.Event()
        self.setter: Optional[Callable[[int], None]] = None

    def grow(self, count: int) -> bool:
        """At least ``count`` workers; False where a worker's ops would not run single-threaded."""
        with self.lock:
            if self.usable is False:
                return False
            if self.setter is None:
                self.setter = _openmp()
            setter = self.setter
            if setter is None:
                self.usable = False
                return False
            while self.workers < count:
                threading.Thread(
                    target=self._work, args=(setter,), name="ssim-patch-cpu", daemon=True
                ).start()
                self.workers += 1
        self.checked.wait()
        return bool(self.usable)

    def _work(self, setter: Callable[[int], None]) -> None:
        torch.get_num_threads()  # torch sets a thread's OpenMP count once, on its first look
        setter(1)
        single = torch.get_num_threads() == 1
        if self.usable is None:
            self.usable = single
            self.checked.set()
        if not single:
            return
        while True:
            batch = self.tokens.get()
            ran = 0
            try:
                # no_grad inside: inference_mode(False) turns grad mode on
                with torch.inference_mode(batch.inference), torch.no_grad():
                    task = batch.claim()
                    while task is not None:
                        task()
                        ran += 1
                        task = batch.claim()
            except BaseException as error:  # handed to the caller
                batch.finished(ran + 1, error)
            else:
                batch.finished(ran, None)


_POOL = _Pool()


def _reset() -> None:
    """A forked child has none of its parent's threads: a pool of its own, started as needed."""
    global _POOL
    _POOL = _Pool()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset)


def width(tasks: int, alone: bool = False) -> int:
    """How many workers a call of ``tasks`` pieces runs on: ``min(tasks, torch.get_num_threads())``
    of the caller, or 0 where the caller runs them itself: one thread; one piece, unless ``alone``
    (a piece too large to run with no parallel region in it but on a worker); a dispatch or function
    mode active, whose handling is the caller thread's own; no single-threaded workers."""
    threads = torch.get_num_threads()
    count = min(tasks, threads)
    if threads < 2 or (count < 2 and not alone):
        return 0
    if _get_current_dispatch_mode() is not None or torch._C._is_torch_function_mode_enabled():
        return 0
    return count if _POOL.grow(count) else 0


def run(tasks: Sequence[Callable[[], None]], count: int) -> None:
    """Runs ``tasks`` on ``count`` workers (from :func:`width`), under no_grad and the caller's
    inference mode, and returns when all are done; the first exception is raised here."""
    batch = _Batch(tasks, torch.is_inference_mode_enabled())
    pool = _POOL
    for _ in range(count):
        pool.tokens.put(batch)
    batch.done.wait()
    if batch.error is not None:
        raise batch.error
