"""apply / revert / patched() / imports in any order: the bindings are never mixed.

After every step every module binding of torchmetrics' hook function (the functional module,
``torchmetrics.image.ssim``, third-party modules that imported it by name) is exactly the
original or exactly the corrected function with the expected options, ``status()`` says so, and
the functional API computes what that state computes.

- In process: a hypothesis state machine (apply, revert, nested and out-of-order ``patched()``,
  ``patched`` as a decorator, third-party modules coming and going).
- Fresh interpreters: random sequences where torchmetrics is imported at a random point
  (before it, ``apply()`` is pending and lands through the post-import hook).
- Racing threads: apply / revert / patched() / status() from 8 threads, while readers compute
  SSIM and check the bindings under the patcher's lock.
"""

from __future__ import annotations

import importlib
import inspect
import json
import random
import subprocess
import sys
import textwrap
import threading
import types
from typing import Any, Optional

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import ssim_patch
from ssim_patch import _patcher, _releases
from tests.helpers import patch_state
from tests.helpers.fresh_interpreter import unpatched_environ
from tests.helpers.hook_bindings import hook_bindings as _hook_bindings

MODULE = _releases.MODULE
F = importlib.import_module(MODULE)
METRICS = importlib.import_module("torchmetrics.image.ssim")
HOOK = ssim_patch.status().hook
PADDINGS = ("same", "valid")

State = Optional[tuple[str, bool]]  # (padding, strict) when patched, None when not


def hook_bindings() -> dict[str, Any]:
    return _hook_bindings(HOOK)


def _pair():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 16, 16, generator=g, dtype=torch.float64)
    return x, 0.6 * x + 0.4 * torch.rand(1, 1, 16, 16, generator=g, dtype=torch.float64)


X, Y = _pair()


def functional_value() -> tuple[float, float]:
    value, cs = F.structural_similarity_index_measure(X, Y, data_range=1.0, return_contrast_sensitivity=True)
    return round(value.item(), 12), round(cs.reshape(-1)[0].item(), 12)


def _original() -> Any:
    current = getattr(F, HOOK)
    return current.__wrapped__ if hasattr(current, "__ssim_patch__") else current


def _expected_values() -> dict[Optional[str], tuple[float, float]]:
    with patch_state.kept():
        out: dict[Optional[str], tuple[float, float]] = {}
        ssim_patch.revert()
        out[None] = functional_value()
        for padding in PADDINGS:
            ssim_patch.apply(padding=padding)
            out[padding] = functional_value()
        return out


# Filled when each test starts (another test may have reloaded torchmetrics' module). Kept in a
# container: a module-level name bound to the original would itself be patched (the patcher swaps
# every module binding of it, which is how third-party copies get patched).
KEEP: dict[str, Any] = {}
EXPECTED: dict[Optional[str], tuple[float, float]] = {}


@pytest.fixture(autouse=True)
def _current_original():
    KEEP["original"] = _original()
    if not EXPECTED:
        EXPECTED.update(_expected_values())


def assert_consistent(state: State, extra: tuple[str, ...] = (), check_status: bool = True) -> None:
    """The bindings, is_applied(), status() and the computed value all agree with ``state``."""
    bindings = hook_bindings()
    must = {f"{MODULE}.{HOOK}", f"{METRICS.__name__}.{HOOK}", *extra}
    assert must <= set(bindings), sorted(must - set(bindings))
    values = set(map(id, bindings.values()))
    assert len(values) == 1, (
        f"mixed bindings: { {k: getattr(v, '__ssim_patch__', 'original') for k, v in bindings.items()} }"
    )
    bound = next(iter(bindings.values()))
    assert ssim_patch.is_applied() is (state is not None)
    if state is None:
        assert bound is KEEP["original"]
    else:
        assert bound.__ssim_patch__ == state[0]
        assert bound.__wrapped__ is KEEP["original"]
        assert inspect.signature(bound) == inspect.signature(KEEP["original"])
    if check_status:
        report = ssim_patch.status()
        assert report.applied is (state is not None) and not report.pending
        if state is None:
            assert report.places == () and report.padding is None
        else:
            assert (report.padding, report.strict) == state
            assert set(report.places) == set(bindings)
    assert functional_value() == EXPECTED[None if state is None else state[0]]


# --- in process: a state machine --------------------------------------------------------------


class PatchMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        ssim_patch.revert()
        self.state: State = None
        self.stack: list[tuple[ssim_patch.patched, State]] = []  # entered context managers
        self.fakes: list[str] = []
        self.counter = 0

    @rule(padding=st.sampled_from(PADDINGS), strict=st.booleans())
    def apply(self, padding: str, strict: bool) -> None:
        report = ssim_patch.apply(padding=padding, strict=strict)
        assert report.applied
        self.state = (padding, strict)

    @rule()
    def revert(self) -> None:
        assert not ssim_patch.revert().applied
        self.state = None

    @rule(padding=st.sampled_from(PADDINGS), strict=st.booleans())
    def enter_patched(self, padding: str, strict: bool) -> None:
        cm = ssim_patch.patched(padding=padding, strict=strict)
        cm.__enter__()
        self.stack.append((cm, self.state))
        self.state = (padding, strict)

    @precondition(lambda self: self.stack)
    @rule(data=st.data())
    def reenter_patched(self, data: st.DataObject) -> None:
        """The same patched object entered again (it is re-entrant)."""
        cm = data.draw(st.sampled_from([cm for cm, _ in self.stack]))
        cm.__enter__()
        self.stack.append((cm, self.state))
        self.state = (cm.padding, cm.strict)

    @precondition(lambda self: self.stack)
    @rule(data=st.data())
    def exit_patched(self, data: st.DataObject) -> None:
        """Exit any entered context manager, not only the innermost: each object restores the
        state saved by its own latest entry."""
        cm = self.stack[data.draw(st.integers(0, len(self.stack) - 1))][0]
        j = max(i for i, (c, _) in enumerate(self.stack) if c is cm)
        _, saved = self.stack.pop(j)
        cm.__exit__(None, None, None)
        self.state = saved

    @rule(padding=st.sampled_from(PADDINGS))
    def decorated_call(self, padding: str) -> None:
        @ssim_patch.patched(padding=padding)
        def evaluate() -> tuple[float, float]:
            assert_consistent((padding, True), tuple(self.fakes), check_status=False)
            return functional_value()

        assert evaluate() == EXPECTED[padding]

    @rule(alias=st.booleans())
    def third_party_imports_it(self, alias: bool) -> None:
        """A module that did ``from torchmetrics.functional.image.ssim import <hook>``."""
        self.counter += 1
        name = f"_ssim_patch_test_thirdparty_{self.counter}"
        module = types.ModuleType(name)
        sys.modules[name] = module
        as_ = " as imported_hook" if alias else ""
        exec(f"from {MODULE} import {HOOK}{as_}", module.__dict__)
        self.fakes.append(f"{name}.{'imported_hook' if alias else HOOK}")

    @precondition(lambda self: self.fakes)
    @rule(data=st.data())
    def third_party_unloads(self, data: st.DataObject) -> None:
        place = data.draw(st.sampled_from(self.fakes))
        self.fakes.remove(place)
        del sys.modules[place.rsplit(".", 1)[0]]

    @invariant()
    def consistent(self) -> None:
        assert_consistent(self.state, tuple(self.fakes))

    def teardown(self) -> None:
        while self.stack:
            self.stack.pop()[0].__exit__(None, None, None)
        for place in self.fakes:
            sys.modules.pop(place.rsplit(".", 1)[0], None)
        ssim_patch.revert()


def test_state_machine(ssim_patch):  # the fixture (pytest plugin) restores the session's state
    run_state_machine_as_test(
        PatchMachine,
        settings=settings(
            max_examples=5,
            stateful_step_count=9,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# --- fresh interpreters: torchmetrics imported at any point ------------------------------------

CHILD = textwrap.dedent(
    """
    import importlib, inspect, json, sys, types, warnings
    warnings.simplefilter("ignore")
    import ssim_patch
    MODULE = "torchmetrics.functional.image.ssim"

    def bindings(hook):
        out = {}
        for name, module in list(sys.modules.items()):
            d = getattr(module, "__dict__", None) if isinstance(module, types.ModuleType) else None
            if isinstance(d, dict):
                for attr, v in list(d.items()):
                    if type(v) is types.FunctionType and v.__module__ == MODULE and v.__qualname__ == hook:
                        out[name + "." + attr] = v
        return out

    def check(state, fakes):
        report = ssim_patch.status()
        if MODULE not in sys.modules:
            assert not report.applied and report.pending is (state is not None), report
            assert (report.padding, report.strict) == (state or (None, None)), report
            return
        hook = report.hook
        found = bindings(hook)
        must = {MODULE + "." + hook, *fakes}
        if "torchmetrics.image.ssim" in sys.modules:
            must.add("torchmetrics.image.ssim." + hook)
        assert must <= set(found), (sorted(must), sorted(found))
        assert len(set(map(id, found.values()))) == 1, {k: getattr(v, "__ssim_patch__", "orig") for k, v in found.items()}
        bound = next(iter(found.values()))
        assert report.applied is (state is not None) and not report.pending, report
        if state is None:
            assert not hasattr(bound, "__ssim_patch__")
            return
        assert (bound.__ssim_patch__, report.padding, report.strict) == (state[0], *state), report
        assert inspect.signature(bound) == inspect.signature(bound.__wrapped__)
        import torch
        F = sys.modules[MODULE]
        g = torch.Generator().manual_seed(1)
        x = torch.rand(2, 1, 20, 20, generator=g, dtype=torch.float64)
        y = 0.5 * x + 0.5 * torch.rand(2, 1, 20, 20, generator=g, dtype=torch.float64)
        got = F.structural_similarity_index_measure(x, y, reduction="none", return_contrast_sensitivity=True)
        want = ssim_patch.ssim(x, y, reduction="none", return_contrast_sensitivity=True, padding=state[0])
        assert all(torch.equal(a, b) for a, b in zip(got, want)), (got, want)
        if "torchmetrics.image.ssim" in sys.modules:
            metric = sys.modules["torchmetrics.image.ssim"].StructuralSimilarityIndexMeasure(reduction="none")
            assert torch.equal(metric(x, y), want[0])

    def run(ops):
        state, stack, fakes = None, [], []
        for step, op in enumerate(ops):
            kind, *arg = op.split()
            if kind == "apply":
                ssim_patch.apply(padding=arg[0], strict=arg[1] == "strict")
                state = (arg[0], arg[1] == "strict")
            elif kind == "revert":
                ssim_patch.revert()
                state = None
            elif kind == "enter":
                cm = ssim_patch.patched(padding=arg[0])
                cm.__enter__()
                stack.append(state)
                state = (arg[0], True)
                cms.append(cm)
            elif kind == "exit":
                if not cms:
                    continue
                cms.pop().__exit__(None, None, None)
                state = stack.pop()
            elif kind == "import":
                importlib.import_module(arg[0])
            elif kind == "thirdparty":
                name = "thirdparty_%d" % step
                module = sys.modules[name] = types.ModuleType(name)
                exec("from torchmetrics.functional.image.ssim import _ssim_update, structural_similarity_index_measure", module.__dict__)
                fakes.append(name + "._ssim_update")
            check(state, fakes)
        return "ok"

    cms = []
    for ops in json.loads(sys.argv[1]):
        assert not any(n.startswith("torchmetrics") for n in sys.modules)
        print(json.dumps({"ops": ops, "result": run(ops)}), flush=True)
        while cms:
            cms.pop().__exit__(None, None, None)
        ssim_patch.revert()
        for name in [n for n in sys.modules if n.startswith(("torchmetrics", "thirdparty_"))]:
            del sys.modules[name]
    """
)

IMPORTS = ("torchmetrics", MODULE, "torchmetrics.image.ssim", "torchmetrics.image")
OPS = (
    "apply same strict",
    "apply valid strict",
    "apply valid lax",
    "revert",
    "enter same",
    "enter valid",
    "exit",
    "exit",
    "thirdparty",
)


def random_sequences(seed: int, count: int, length: int = 6) -> list[list[str]]:
    """Sequences with one import of some torchmetrics module at a random position."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        ops = [rng.choice(OPS) for _ in range(length)]
        at = rng.randrange(0, length)
        ops = [op for op in ops[:at] if op != "thirdparty"] + [f"import {rng.choice(IMPORTS)}"] + ops[at:]
        out.append(ops)
    return out


HAND_WRITTEN = [
    ["apply same strict", "import torchmetrics", "revert", "apply valid strict", "revert"],
    ["enter valid", "import " + MODULE, "thirdparty", "exit", "import torchmetrics.image.ssim"],
    ["enter valid", "enter same", "exit", "import torchmetrics", "thirdparty", "exit", "apply same lax"],
]


def _spawn(sequences: list[list[str]]) -> subprocess.Popen:
    # The child starts unpatched: nothing this session exported (the plugin exports the patch).
    env = unpatched_environ()
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(sequences)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_import_order_in_fresh_interpreters():
    """The first sequence runs where torchmetrics was never imported; the later ones after every
    torchmetrics module was dropped from sys.modules, so each import makes fresh modules (and the
    post-import hook must fire again)."""
    batch = HAND_WRITTEN + random_sequences(1, 1)
    child = _spawn(batch)
    out, err = child.communicate(timeout=240)
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert child.returncode == 0 and len(results) == len(batch), f"{out}\n{err[-4000:]}"
    assert [r["ops"] for r in results] == batch


# --- racing threads -----------------------------------------------------------------------------


def _consistent_snapshot() -> Optional[str]:
    """Under the patcher's lock (every change to the bindings happens under it): the bindings
    are all the original or all one replacement; returns its padding or None."""
    with _patcher._lock:
        bindings = hook_bindings()
        options = _patcher._snapshot()
        applied = ssim_patch.is_applied()
    assert len(set(map(id, bindings.values()))) == 1, "mixed bindings"
    bound = next(iter(bindings.values()))
    padding = getattr(bound, "__ssim_patch__", None)
    assert applied is (padding is not None)
    assert (options.padding if options is not None else None) == padding
    return padding


def test_racing_threads(ssim_patch):
    import ssim_patch as sp

    sp.revert()
    errors: list[BaseException] = []
    seen: set[Optional[str]] = set()
    stop = threading.Event()
    barrier = threading.Barrier(8)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            barrier.wait()
            for _ in range(4):
                op = rng.choice(["apply", "apply", "revert", "patched", "status", "decorated"])
                padding = rng.choice(PADDINGS)
                if op == "apply":
                    sp.apply(padding=padding, strict=rng.random() < 0.5)
                elif op == "revert":
                    sp.revert()
                elif op == "patched":
                    with sp.patched(padding=padding):
                        functional_value()
                elif op == "decorated":
                    sp.patched(padding=padding)(functional_value)()
                else:
                    sp.status()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def observer() -> None:
        try:
            while True:  # looks at least once, however late the scheduler first runs this thread
                seen.add(_consistent_snapshot())
                # A caller without the lock sees one of the three computations, never an error.
                assert functional_value() in EXPECTED.values()
                if stop.is_set():
                    break
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    watchers = [threading.Thread(target=observer)]
    workers = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for t in watchers + workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    stop.set()
    for t in watchers:
        t.join(timeout=30)
    assert not errors, errors
    final = _consistent_snapshot()
    options = _patcher._snapshot()
    assert_consistent(None if options is None else (options.padding, options.strict))
    assert final == (options.padding if options else None)
    assert seen  # the observers did look
