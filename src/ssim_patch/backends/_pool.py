"""The CPU backend's own threads: pieces of one call run at once, each op on one thread.

torch parallelises each op above its grain size over its intra-op threads: a call of a few
hundred such ops opens a few hundred parallel regions, and each waits at a barrier for every
thread of the team. Beside a busy process the OS parks one of them now and then, and a region
costs a scheduler time slice (issue 24: 4-40x slower than one thread). Here the pieces are the
unit of parallel work instead: a pool of the library's own threads takes them one at a time from
the call, as the calling thread does, each running its ops single-threaded (torch releases the GIL
inside them), and the call waits once, for the last piece. A parked thread delays only the piece
it holds.

A worker's ops run single-threaded because its thread counts, per-thread settings, are set to 1:
OpenMP's (``omp_set_num_threads`` in that thread only; torch reads it through
``omp_get_max_threads``) and, where torch carries MKL, MKL's (``MKL_Set_Num_Threads_Local``: its
matrix products read no other).
Nothing of the user's process changes: not ``torch.set_num_threads``, not the environment, not
the threads of any other thread. A call uses at most as many workers as its caller's
``torch.get_num_threads()``; where that is 1, or the OpenMP runtime is not found, or a worker's
ops would not run single-threaded (another parallel backend), :func:`width` is 0 and the caller
runs its pieces itself, as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Callable, Optional

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode


class _Batch:
    """One call's pieces: taken one at a time by the workers that hold one of its tokens."""

    def __init__(self, tasks: Sequence[Callable[[], None]], inference: bool) -> None:
        self.tasks: Sequence[Callable[[], None]] = tasks
        self.inference = inference
        self.lock = threading.Lock()
        self.next = 0
        self.left = len(tasks)
        self.done = threading.Event()
        self.error: Optional[BaseException] = None

    def claim(self) -> Optional[Callable[[], None]]:
        with self.lock:
            if self.next >= len(self.tasks) or self.error is not None:  # tasks () once all done
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
                # Nothing of the call stays with a worker that still holds the batch: a late one
                # would free the call's tensors whenever it next wakes, at interpreter exit too,
                # where freeing a tensor (which lets go of the GIL) ends the process in abort().
                self.tasks = ()
                self.done.set()


class _Counts:
    """A thread's own thread counts: OpenMP's (``omp_set_num_threads``, which torch's parallel
    loops and oneDNN read) and, where torch carries MKL, MKL's thread-local one
    (``MKL_Set_Num_Threads_Local``: MKL's products read their own count, which torch sets per
    thread on its first look, not OpenMP's)."""

    def __init__(self, omp_set: Callable[[int], None], mkl: Optional[ctypes.CDLL]) -> None:
        self.omp_set = omp_set
        self.mkl_set: Optional[Callable[[int], int]] = None
        self.mkl_get: Optional[Callable[[], int]] = None
        if mkl is not None:
            # the C interface (the lower-case names are Fortran's, which take pointers)
            self.mkl_set = mkl.MKL_Set_Num_Threads_Local
            self.mkl_set.argtypes, self.mkl_set.restype = [ctypes.c_int], ctypes.c_int
            self.mkl_get = mkl.MKL_Get_Max_Threads
            self.mkl_get.argtypes, self.mkl_get.restype = [], ctypes.c_int

    def single(self) -> tuple[int, int]:
        """This thread's ops single-threaded from here on; what :meth:`restore` puts back."""
        before = torch.get_num_threads()  # torch sets a thread's counts once, on its first look
        self.omp_set(1)
        return before, (self.mkl_set(1) if self.mkl_set is not None else 0)

    def restore(self, saved: tuple[int, int]) -> None:
        self.omp_set(saved[0])
        if self.mkl_set is not None:
            self.mkl_set(saved[1])  # 0: MKL's global count again

    def are_single(self) -> bool:
        return torch.get_num_threads() == 1 and (self.mkl_get is None or self.mkl_get() == 1)


def _loaded(*needles: str) -> list[str]:
    """The absolute paths of the libraries loaded in this process whose file name holds one of
    ``needles`` (from /proc/self/maps; none where it cannot be read)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps}
    except OSError:
        return []
    return sorted(p for p in paths if os.path.isabs(p) and any(n in p.rsplit("/", 1)[-1] for n in needles))


def _counts() -> Optional[_Counts]:
    """The setters of the OpenMP runtime torch loaded and of the MKL it carries (where it carries
    MKL and its thread-local setter is found), or None where no OpenMP runtime is to be found."""
    omp_set = None
    for path in _loaded("omp"):
        try:
            omp_set = ctypes.CDLL(path).omp_set_num_threads
        except (OSError, AttributeError):
            continue
        omp_set.argtypes, omp_set.restype = [ctypes.c_int], None
        break
    if omp_set is None:
        return None
    if not torch.backends.mkl.is_available():  # type: ignore[no-untyped-call]
        return _Counts(omp_set, None)
    for path in _loaded("libtorch_cpu", "libmkl"):
        try:
            lib = ctypes.CDLL(path)
            lib.MKL_Set_Num_Threads_Local, lib.MKL_Get_Max_Threads  # noqa: B018 (present?)
        except (OSError, AttributeError):
            continue
        return _Counts(omp_set, lib)
    return _Counts(omp_set, None)  # MKL's setter not found: its products keep their own count


class _Pool:
    """Worker threads fed by one queue of tokens ``(batch)``; started as calls need them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tokens: queue.SimpleQueue[_Batch] = queue.SimpleQueue()
        self.workers = 0
        #: None until the first worker has checked that its ops run single-threaded.
        self.usable: Optional[bool] = None
        self.checked = threading.Event()
        self.counts: Optional[_Counts] = None

    def caller_counts(self) -> Optional[_Counts]:
        """The thread-count setters (found once), for a caller that runs single-threaded."""
        with self.lock:
            if self.counts is None:
                self.counts = _counts()
            return self.counts

    def grow(self, count: int) -> bool:
        """At least ``count`` workers; False where a worker's ops would not run single-threaded."""
        with self.lock:
            if self.usable is False:
                return False
            if self.counts is None:
                self.counts = _counts()
            counts = self.counts
            if counts is None:
                self.usable = False
                return False
            while self.workers < count:
                threading.Thread(
                    target=self._work, args=(counts,), name="ssim-patch-cpu", daemon=True
                ).start()
                self.workers += 1
        self.checked.wait()
        return bool(self.usable)

    def _work(self, counts: _Counts) -> None:
        counts.single()
        single = counts.are_single()
        if self.usable is None:
            self.usable = single
            self.checked.set()
        if not single:
            return
        while True:
            batch = self.tokens.get()
            # no_grad inside: inference_mode(False) turns grad mode on
            with torch.inference_mode(batch.inference), torch.no_grad():
                _drain(batch)
            del batch  # not held while waiting for the next (see _Batch.finished)


def _drain(batch: _Batch) -> None:
    """Runs ``batch``'s pieces as long as there are any to take; an error is handed to the caller."""
    ran = 0
    try:
        task = batch.claim()
        while task is not None:
            task()
            ran += 1
            task = batch.claim()
    except BaseException as error:
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


def width(tasks: int) -> int:
    """How many threads, the caller's among them, a call of ``tasks`` pieces runs on (:func:`run`):
    ``min(tasks, torch.get_num_threads())`` of the caller, at least 1 (one piece runs on the
    caller alone, single-threaded, where it would open parallel regions); or 0 where the caller
    runs them itself as it is: one thread; a dispatch or function mode active, whose handling is
    the caller thread's own; no single-threaded workers."""
    threads = torch.get_num_threads()
    if threads < 2:
        return 0
    if _get_current_dispatch_mode() is not None or torch._C._is_torch_function_mode_enabled():
        return 0
    count = max(1, min(tasks, threads))
    return count if _POOL.grow(max(1, count - 1)) else 0


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """The calling thread's ops single-threaded inside: its own OpenMP and MKL counts at 1,
    restored after (a caller with one thread, or where no OpenMP runtime is found: as it is)."""
    counts = _POOL.caller_counts() if torch.get_num_threads() > 1 else None
    if counts is None:
        yield
        return
    saved = counts.single()
    try:
        yield
    finally:
        counts.restore(saved)


def run(tasks: Sequence[Callable[[], None]], count: int) -> None:
    """Runs ``tasks`` on ``count`` threads (from :func:`width`): the caller and ``count - 1``
    workers, under no_grad and the caller's inference mode, and returns when all are done; the
    first exception is raised here. The caller takes pieces too, its ops single-threaded while it
    does (its own OpenMP and MKL counts, restored after): a worker the OS has not woken yet delays
    nothing, and a call of one piece hands nothing over."""
    batch = _Batch(tasks, torch.is_inference_mode_enabled())
    for _ in range(count - 1):
        _POOL.tokens.put(batch)
    with alone(), torch.no_grad():  # width() found the counts: the caller's are set to 1
        _drain(batch)
    batch.done.wait()
    if batch.error is not None:
        raise batch.error
