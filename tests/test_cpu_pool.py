"""The cpu backend's pieces on the library's own workers (``backends/_pool.py``): the numbers and
gradients of the float64 reference, the caller's modes carried over, errors handed back, nothing
of the caller's state changed.

The test session runs torch with one thread (conftest.py), where a call runs its pieces itself;
each test here gives torch two threads, so that calls of several pieces go to the workers, and
makes the pieces small (``cpu._CHUNK``), so that small images are cut into several.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import warnings

import pytest
import torch

from ssim_patch import _formula, backends, ssim
from ssim_patch.backends import _dense, _pool, cpu
from tests.helpers import reference_torch as ref

REL = 1e-8  # float64, relative to the largest entry of the reference gradient

#: Pieces of about this many samples here (the backend's are 64 Ki).
CHUNK = 600
#: Calls of several pieces: whole planes (6), bands of rows (3 per plane), bands of a 3-D volume
#: (2 per plane); one plane, whose backward is one piece, large enough to go to a worker alone.
SHAPES = {
    "planes": (2, 3, 24, 24),
    "bands": (1, 2, 40, 36),
    "3d": (1, 2, 10, 12, 12),
    "one plane": (1, 1, 40, 36),
}


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.setenv(backends.ENV, "cpu")
    monkeypatch.setattr(cpu, "_CHUNK", CHUNK)
    monkeypatch.setattr(_dense, "MAX_WORK", 0)  # the pieces, also for these small shapes
    monkeypatch.setattr(cpu, "_SERIAL_FORWARD", 0)  # and on the workers, also without a gradient
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _pair(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    return x, 0.7 * x + 0.3 * torch.rand(shape, generator=g, dtype=torch.float64)


def _with_grads(fn, x, y, *extra):
    leaves = [t.clone().requires_grad_() for t in (x, y, *extra)]
    out = fn(*leaves)
    values = out if isinstance(out, tuple) else (out,)
    weights = torch.arange(1.0, values[0].shape[0] + 1, dtype=torch.float64)
    total = (values[0] * weights).sum() + sum(v.sum() for v in values[1:])
    return [v.detach() for v in values], torch.autograd.grad(total, leaves)


def _assert_close(got, expected):
    scale = float(expected.abs().max())
    assert float((got - expected).abs().max()) <= REL * scale + 1e-13


def _pieces_went_to_the_workers(monkeypatch):
    """Counts the calls of ``_pool.run`` from here on."""
    runs = []
    real = _pool.run

    def counted(tasks, count):
        runs.append((len(tasks), count))
        real(tasks, count)

    monkeypatch.setattr(_pool, "run", counted)
    return runs


@pytest.mark.parametrize("output", ["ssim", "map", "cs"])
@pytest.mark.parametrize("kind", list(SHAPES))
def test_pieces_on_the_workers_give_the_reference(kind, output, two_threads, monkeypatch):
    runs = _pieces_went_to_the_workers(monkeypatch)
    x, y = _pair(SHAPES[kind])
    data_range = torch.tensor(1.0, dtype=torch.float64)  # its gradient: the c1, c2 sums
    kw = {"return_full_image": output == "map", "return_contrast_sensitivity": output == "cs"}

    def patched(a, b, r):
        return ssim(a, b, data_range=r, reduction="none", **kw)

    def reference(a, b, r):
        per_image, maps, cs = ref.ssim(a, b, data_range=r)
        return per_image if output == "ssim" else (per_image, maps if output == "map" else cs)

    values, grads = _with_grads(patched, x, y, data_range)
    want_values, want_grads = _with_grads(reference, x, y, data_range)
    for got, want in zip(values, want_values):
        _assert_close(got, want)
    for got, want in zip(grads, want_grads):
        _assert_close(got, want)
    # forward (bands: the planes' shifts first, then the pieces) and backward, all on the workers
    assert len(runs) == (2 if kind == "planes" else 3), runs
    assert all(count == min(tasks, 2) for tasks, count in runs), runs


def test_workers_give_the_numbers_of_the_caller(two_threads):
    """The same pieces run by the caller (one thread) and by the workers: equal gradients, per-image
    values within the rounding of a sum's order."""
    x, y = _pair(SHAPES["bands"], seed=3)
    values, grads = _with_grads(lambda a, b: ssim(a, b, data_range=1.0, reduction="none"), x, y)
    torch.set_num_threads(1)
    alone, alone_grads = _with_grads(lambda a, b: ssim(a, b, data_range=1.0, reduction="none"), x, y)
    torch.testing.assert_close(values[0], alone[0], rtol=1e-15, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(grads, alone_grads))


def test_inference_mode_is_carried_to_the_workers(two_threads, monkeypatch):
    runs = _pieces_went_to_the_workers(monkeypatch)
    x, y = _pair(SHAPES["planes"], seed=1)
    with torch.inference_mode():
        evaluated = ssim(x, y, data_range=1.0, reduction="none")
    assert evaluated.is_inference()
    torch.testing.assert_close(evaluated, ssim(x, y, data_range=1.0, reduction="none"), rtol=0, atol=0)
    assert len(runs) == 2


def test_an_error_in_a_piece_is_raised_in_the_caller(two_threads, monkeypatch):
    x, y = _pair(SHAPES["planes"], seed=2)
    real = _formula.terms

    def broken(*args, **kwargs):
        raise ValueError("a piece failed")

    monkeypatch.setattr(cpu._formula, "terms", broken)
    with pytest.raises(ValueError, match="a piece failed"):
        ssim(x, y, data_range=1.0)
    monkeypatch.setattr(cpu._formula, "terms", real)
    torch.testing.assert_close(ssim(x, y, data_range=1.0), ref.ssim(x, y, data_range=1.0)[0].mean())


def test_the_callers_threads_and_environment_are_left_as_they_were(two_threads):
    environ = dict(os.environ)
    x, y = _pair(SHAPES["planes"])
    ssim(x.requires_grad_(), y, data_range=1.0).backward()
    assert torch.get_num_threads() == 2
    assert dict(os.environ) == environ


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork here")
def test_a_forked_child_gets_a_pool_of_its_own(two_threads):
    """A DataLoader worker is a fork of a process whose pool has threads the child lacks: the
    child's calls start workers of their own instead of waiting for its parent's."""
    x, y = _pair(SHAPES["planes"])
    expected = float(ssim(x, y, data_range=1.0))  # the parent's worker is started
    assert _pool._POOL.workers >= 1
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12: fork() of a threaded process
        pid = os.fork()
    if pid == 0:  # the child: report the value, never return into pytest
        try:
            os.write(write, repr(float(ssim(x, y, data_range=1.0))).encode())
        finally:
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + 120
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child's call did not return in 120 s")
        time.sleep(0.05)
    with os.fdopen(read) as pipe:
        assert float(pipe.read()) == expected


def test_the_caller_takes_the_pieces_no_worker_has_taken(two_threads):
    """A worker the OS has not woken (here: held by another batch) delays nothing: the caller runs
    the pieces itself, each op single-threaded, and its thread count is restored after. Before,
    the caller only waited, and this call waited for the held worker."""
    assert _pool.width(4) == 2
    release = threading.Event()
    held = threading.Thread(target=_pool.run, args=([release.wait, release.wait], 2))
    held.start()  # the caller's thread and the only worker each wait in one piece
    ran: list[tuple[int, int]] = []
    caller = threading.Thread(
        target=_pool.run,
        args=([lambda: ran.append((threading.get_ident(), torch.get_num_threads()))] * 4, 2),
    )
    try:
        caller.start()
        caller.join(timeout=60)
        assert not caller.is_alive(), "the call waited for a worker held elsewhere"
        assert ran == [(caller.ident, 1)] * 4
    finally:
        release.set()
        held.join(timeout=60)
        caller.join(timeout=60)


def test_a_worker_keeps_nothing_of_a_finished_call(two_threads):
    """Once a call's pieces are done, nothing of them stays with the pool: a worker (or its token,
    not yet taken) held the batch, its pieces and what they hold until the worker next woke, and
    one woken at interpreter exit freed the call's tensors there, which ends the process in
    abort() ("terminate called without an active exception": freeing a tensor lets go of the GIL,
    and a daemon thread that takes it back then is unwound through C++)."""
    import weakref

    class Held:
        pass

    for _ in range(20):  # whichever thread takes which piece, and whenever the worker wakes
        held = Held()
        ref = weakref.ref(held)
        pieces = [lambda held=held: None, lambda: time.sleep(0.001)]
        _pool.run(pieces, 2)
        del held, pieces
        deadline = time.monotonic() + 5
        while ref() is not None and time.monotonic() < deadline:
            time.sleep(0.001)  # the worker finishes its turn of the loop
        assert ref() is None, "a finished call's piece is still held"


def _counts_here() -> tuple[int, ...]:
    """This thread's torch (OpenMP) thread count and, where torch has MKL, MKL's, as torch's own
    report reads them."""
    mkl = re.search(r"mkl_get_max_threads\(\) : (\d+)", torch.__config__.parallel_info())
    return (torch.get_num_threads(), *([int(mkl.group(1))] if mkl else []))


def test_every_thread_that_runs_a_piece_runs_its_ops_single_threaded(two_threads):
    """Worker and caller alike: OpenMP's count and MKL's (its products read only their own). MKL's
    stayed at 2 on the workers before, so each band-matrix product opened a 2-thread region: 4
    threads on 2 cores, and every region's barrier waiting for a thread the OS had parked."""
    seen: list[tuple[int, ...]] = []
    lock = threading.Lock()

    def piece() -> None:
        with lock:
            seen.append(_counts_here())

    _pool.run([piece] * 64, _pool.width(64))
    assert seen and set(seen) == {(1,) * len(seen[0])}, seen
    assert _counts_here() == (2,) * len(seen[0])  # the caller's, restored


def test_a_small_forward_without_a_gradient_stays_on_the_callers_thread(two_threads, monkeypatch):
    """Below ``_SERIAL_FORWARD`` samples a second thread costs more than it gives (measured beside
    a busy loop): the pieces run on the caller alone, single-threaded; with a gradient, or above
    the size, on two threads. Same numbers either way."""
    x, y = _pair(SHAPES["planes"], seed=4)
    monkeypatch.setattr(cpu, "_SERIAL_FORWARD", x.numel())
    runs = _pieces_went_to_the_workers(monkeypatch)
    small = ssim(x, y, data_range=1.0, reduction="none")
    assert runs and all(count == 1 for _, count in runs), runs
    runs.clear()
    ssim(x.clone().requires_grad_(), y, data_range=1.0).backward()
    assert runs and all(count == 2 for _, count in runs), runs
    monkeypatch.setattr(cpu, "_SERIAL_FORWARD", x.numel() - 1)
    runs.clear()
    assert torch.equal(ssim(x, y, data_range=1.0, reduction="none"), small)
    assert runs and all(count == 2 for _, count in runs), runs


def test_a_dense_call_above_the_small_size_runs_single_threaded_on_the_caller(two_threads, monkeypatch):
    """The dense path's larger calls (BLAS products, maps above torch's grain size) run on the
    caller alone with its counts at 1, restored after; a small one as it is. Same numbers."""
    x, y = _pair((1, 2, 40, 36), seed=5)
    monkeypatch.setattr(_dense, "PRODUCT_FACTOR", 1 << 30)
    seen: list[tuple[int, ...]] = []
    real = _dense.blur

    def blur(*args):
        seen.append(_counts_here())
        return real(*args)

    monkeypatch.setattr(_dense, "blur", blur)
    monkeypatch.setattr(_dense, "MAX_WORK", _dense.work(x) - 1)
    alone = ssim(x, y, data_range=1.0, reduction="none")
    assert seen and set(seen) == {(1,) * len(seen[0])}, seen
    assert _counts_here() == (2,) * len(seen[0])
    seen.clear()
    monkeypatch.setattr(_dense, "MAX_WORK", _dense.work(x))
    assert torch.equal(ssim(x, y, data_range=1.0, reduction="none"), alone)
    assert seen and set(seen) == {(2,) * len(seen[0])}, seen
