"""An offline GPU performance model of the Triton kernels: no GPU needed, a model, not a measurement.

For a shape and window, each specialization a training loop or a metric uses (the loss's forward
and backward, the metric's forward with and without the map; float32 and bfloat16 images) is bound
exactly as a launch binds it: ``ssim_patch.backends.triton.forward`` / ``backward`` run on empty
CPU tensors of that shape under a stand-in Triton driver for the target, and Triton's JIT binds
the real arguments (constexprs, 16-divisibility, strides of 1) up to the compile, which is done
here for ``sm_80``, ``sm_89`` and ``sm_90`` and nothing is launched. From the cubin (``cuobjdump``,
``nvdisasm``, shipped with Triton) it reads registers, the stack frame (spills), shared memory and
the SASS of the hot loop (the row loop: the innermost loop of the kernel), and reports per kernel:

- resident warps per SM and what limits them (registers, warps, blocks, shared memory);
- the hot loop's instructions (static count of its body, all paths), and warp-instructions per
  output pixel by class (fp32, integer/logic ALU, memory, uniform, control, other), counting the
  body once per row a tile sweeps (``BLOCK_H + KH - 1``) and the instructions outside it once per tile;
- the DRAM bytes the kernel must move (each input read once, each output written once);
- predicted H100 / H200 times (``sm_90`` only): the larger of the issue time and the DRAM time,
  with the assumptions printed beside the table (:data:`ASSUMPTIONS`).

What it cannot tell: caches (halo re-reads are assumed to hit L2), clocks, contention, memory
latency beyond a crude occupancy factor, instruction-cache misses, or whether a branch is taken
(the static body counts every path). Hold it against ``benchmarks/gpu_check.py`` the day a GPU is
lent: the gap is the next thing to learn.

    python benchmarks/gpu_model.py                          # 5x3x1080x1920, 11-tap Gaussian
    python benchmarks/gpu_model.py --shape 16x3x512x512 --uniform 7 --arch 90 --md out.md

Compiles go to Triton's cache (``TRITON_CACHE_DIR``): a second run takes seconds.
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))
import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime import driver  # noqa: E402

from ssim_patch import _filters  # noqa: E402
from ssim_patch.backends import _triton_kernels as kernels  # noqa: E402
from ssim_patch.backends import triton as tb  # noqa: E402
from ssim_patch.backends._dtypes import constants  # noqa: E402
from ssim_patch.backends._protocol import Needs, Plan  # noqa: E402

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


@dataclass(frozen=True)
class Arch:
    """A compute capability's limits per SM (the CUDA programming guide's occupancy table)."""

    cc: int
    max_warps: int
    max_blocks: int
    smem: int  # bytes a block may use, all blocks together
    regs: int = 65536


ARCHS = {
    80: Arch(80, 64, 32, 164 * 1024),
    89: Arch(89, 48, 24, 100 * 1024),
    90: Arch(90, 64, 32, 228 * 1024),
}


@dataclass(frozen=True)
class Device:
    """A GPU the times are predicted for (sm_90 kernels)."""

    name: str
    sms: int
    clock: float  # Hz, the boost clock assumed to hold
    dram: float  # bytes/s


DEVICES = (Device("H100", 132, 1.98e9, 3.35e12), Device("H200", 132, 1.98e9, 4.8e12))

#: Warp-instructions a scheduler (4 per SM) issues per clock, by class: the fp32 pipe takes one a
#: clock, the integer/logic ALU and IMAD pipes half, memory (LSU/MIO) a quarter, MUFU/conversions
#: an eighth; every instruction takes an issue slot.
RATES = {"fp32": 1.0, "alu": 0.5, "mem": 0.25, "xu": 0.125, "uniform": 1.0, "ctrl": 1.0, "other": 1.0}

ASSUMPTIONS = (
    "132 SMs at 1.98 GHz (boost held), 4 schedulers per SM, each issuing 1 warp-instruction a clock",
    "pipe rates per scheduler per clock: fp32 (FFMA/FADD/FMUL) 1, integer/logic ALU and IMAD 1/2, "
    "LSU 1/4, MUFU/conversions 1/8: the issue time is the largest of (all instructions / 1) and "
    "(each class / its rate)",
    "latency: with w resident warps per scheduler, issue efficiency min(1, 0.5 + w/8) "
    "(full at 4 warps per scheduler, 75% at 2)",
    "DRAM: H100 3.35 TB/s, H200 4.8 TB/s, each input read once and each output written once "
    "(halo re-reads hit L2); predicted time = max(issue time / efficiency, DRAM time) x the tail "
    "of the last wave of tiles",
    "the hot loop (the row loop) runs once per row a tile sweeps, the rest of the tile loop once "
    "per tile; an instruction of the loop counts as often as the run-time ifs of the source it "
    "lies in hold over the sweep (the kernels' loops replayed in Python; line info of the SASS); "
    "'all paths' counts every instruction on every row",
)

#: SASS opcodes by class (the opcode before the first dot).
CLASSES = {
    "fp32": {"FFMA", "FADD", "FMUL", "FMNMX", "FSEL", "FSETP", "FSET", "FCHK", "HADD2", "HFMA2", "HMUL2"},
    "mem": {
        "LDG",
        "STG",
        "LDS",
        "STS",
        "LDL",
        "STL",
        "LD",
        "ST",
        "LDSM",
        "ATOM",
        "ATOMG",
        "RED",
        "LDGSTS",
        "LDC",
    },
    "xu": {"MUFU", "I2F", "F2I", "F2F", "I2FP", "F2FP", "FRND"},
    "ctrl": {
        "BRA",
        "BSSY",
        "BSYNC",
        "EXIT",
        "WARPSYNC",
        "BAR",
        "NOP",
        "CALL",
        "RET",
        "BREAK",
        "JMP",
        "YIELD",
    },
}
ALU_PREFIXES = ("IMAD", "IADD", "LEA", "LOP", "SHF", "ISETP", "IABS", "SEL", "VIADD", "IMNMX", "PRMT")
ALU_EXACT = {
    "MOV",
    "SHL",
    "SHR",
    "PLOP3",
    "P2R",
    "R2P",
    "POPC",
    "FLO",
    "BREV",
    "VIMNMX",
    "IDP",
    "S2R",
    "CS2R",
}


def opclass(op: str) -> str:
    """The class of a SASS opcode (``IMAD.WIDE`` -> "alu")."""
    base = op.split(".")[0]
    if (base.startswith("U") and len(base) > 1) or base in {"S2UR", "R2UR"}:
        return "uniform"
    for name, ops in CLASSES.items():
        if base in ops:
            return name
    if base.startswith(ALU_PREFIXES) or base in ALU_EXACT:
        return "alu"
    return "other"


# --- binding a launch, and compiling it ------------------------------------------------------


class _Driver:
    """A stand-in Triton driver: the target's compute capability, no device."""

    def __init__(self, cc: int) -> None:
        self.cc = cc

    def is_active(self) -> bool:
        return True

    def get_current_device(self) -> str:
        return f"gpu-model-sm{self.cc}"

    def get_current_stream(self, device: Any = None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cuda", self.cc, 32)

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


@contextmanager
def _binding(cc: int, bound: list[tuple[Any, ...]]) -> Iterator[None]:
    """Launches inside bind their kernel's arguments through Triton's JIT for ``sm_<cc>`` and
    append ``(kernel, signature, constexprs, options, attrs)`` to ``bound``; nothing compiles or runs."""
    fns = (kernels.ssim_forward_kernel, kernels.ssim_backward_kernel)

    def capture(fn: Any) -> Any:
        def _do_compile(
            key: Any, signature: Any, device: Any, consts: Any, options: Any, attrs: Any, warmup: Any
        ) -> None:
            bound.append((fn, signature, consts, options, attrs))

        return _do_compile

    for fn in fns:
        fn._do_compile = capture(fn)
    saved = driver._active  # None where no GPU driver was ever made (reset_active would make one)
    driver.set_active(_Driver(cc))
    try:
        yield
    finally:
        driver._active = saved
        for fn in fns:
            del fn._do_compile
            fn.device_caches.pop(f"gpu-model-sm{cc}", None)


@dataclass(frozen=True)
class Spec:
    """One kernel launch of one case: what ``tb`` binds, with the tile it uses."""

    case: str
    dtype: str
    kernel: str  # "forward", "backward (edge strips)", "backward (interior)"
    binding: tuple[Any, ...]
    block_h: int
    block_w: int
    num_warps: int
    kh: int
    strips: tuple[int, ...]  # the strips of ``block_w`` columns this launch takes


CASES = (  # (name, output, needs of the forward (None: no gradient), with the backward)
    ("loss", "ssim", Needs(True, False, False, False), True),
    ("metric", "ssim", None, False),
    ("metric+map", "map", None, False),
)


def bind(
    shape: tuple[int, ...], blur: _filters.Blur, cc: int, dtypes: tuple[str, ...], cases: tuple[str, ...] = ()
) -> list[Spec]:
    """The launches of ``cases`` (all where empty) at ``shape`` for ``sm_<cc>``, bound as a real
    launch binds them."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: the model compiles for a GPU")
    specs: list[Spec] = []
    config = tb.with_config(max_programs=1)  # the grid's size does not change the compile
    for dtype in dtypes:
        for name, output, needs, with_backward in CASES:
            if cases and name not in cases:
                continue
            plan = Plan(blur, None, output)  # type: ignore[arg-type]
            x = torch.empty(shape, dtype=getattr(torch, dtype))
            y = torch.empty_like(x)
            k = constants(0.01**2, 0.03**2, plan, x)
            bound: list[tuple[Any, ...]] = []
            with _binding(cc, bound):
                _, _, kept = tb.forward(x, y, k, plan, needs, config)
                if with_backward:
                    assert kept is not None and needs is not None
                    tb.backward(x, y, k, kept, torch.ones(shape[0]), None, plan, needs, config)
            out_w = blur.out_size(shape[2:])[1]
            fwd_w = tb._block_w(config.forward, out_w)
            launches = []
            for first, taken, skip, gap, edge in tb._forward_launches(
                shape[3], out_w, fwd_w, len(blur.taps[1]), blur.pads[1]
            ):
                kind = "forward" + (" (edge strips)" if edge else " (interior)")
                ids = tuple(first + i + (gap if i >= skip else 0) for i in range(taken))
                launches.append((kind, config.forward, fwd_w, ids))
            if with_backward:  # the backward's launches: edge strips, then interior ones (where any)
                bwd_w = tb._block_w(config.backward, shape[3])
                edge_w = tb._edge_block_w(config, bwd_w)
                parts = tb._strip_launches(shape[3], bwd_w, edge_w, blur.pads[1])
                for first, taken, skip, gap, edge, strip_w in parts:
                    kind = "backward" + (" (edge strips)" if edge else " (interior)")
                    ids = tuple(first + i + (gap if i >= skip else 0) for i in range(taken))
                    launches.append((kind, config.backward, strip_w, ids))
            assert len(launches) == len(bound), (launches, len(bound))
            for (kind, launch, block_w, strips), b in zip(launches, bound):
                kh = len(blur.taps[0])
                specs.append(
                    Spec(name, dtype, kind, b, launch.block_h, block_w, launch.num_warps, kh, strips)
                )
    return specs


@dataclass
class Compiled:
    regs: int
    stack: int
    smem: int
    sass: list[Instr]
    seconds: float


def _compile(binding: tuple[Any, ...], cc: int) -> Compiled:
    fn, signature, consts, options, attrs = binding
    start = time.perf_counter()
    compiled = triton.compile(
        ASTSource(fn, signature, consts, attrs), target=GPUTarget("cuda", cc, 32), options=options.__dict__
    )
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run(
            [str(BIN / "cuobjdump"), "--dump-resource-usage", str(cubin)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        sass = subprocess.run(
            [str(BIN / "nvdisasm"), "-c", "-gi", str(cubin)], capture_output=True, text=True, check=True
        ).stdout
    regs = int(re.search(r"REG:(\d+)", usage).group(1))  # type: ignore[union-attr]
    stack = int(re.search(r"STACK:(\d+)", usage).group(1))  # type: ignore[union-attr]
    return Compiled(regs, stack, int(compiled.metadata.shared), parse_sass(sass), seconds)


_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)(.*);")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_TARGET = re.compile(r"\(?(\.L_x_\d+)\)?")
_SOURCE = re.compile(r'//## File "([^"]+)", line (\d+)(?: inlined at "([^"]+)", line (\d+))?')


@dataclass(frozen=True)
class Instr:
    """One SASS instruction: its opcode, the label just before it ("" where none), whether it is
    predicated, a branch's target label, and the lines of the kernels' source it comes from (its
    own and the one it is inlined at, where either is in ``_triton_kernels``)."""

    op: str
    label: str
    predicated: bool
    target: str
    lines: tuple[int, ...]


def parse_sass(text: str) -> list[Instr]:
    """The instructions of ``nvdisasm -c -gi`` output, in order."""
    out: list[Instr] = []
    label = ""
    lines: tuple[int, ...] = ()
    source = Path(kernels.__file__).name
    for line in text.splitlines():
        m = _LABEL.match(line.strip())
        if m:
            label = m.group(1)
            continue
        m = _SOURCE.search(line)
        if m:
            lines = tuple(
                int(m.group(i + 1)) for i in (1, 3) if m.group(i) is not None and m.group(i).endswith(source)
            )
            continue
        m = _LINE.search(line)
        if m:
            op = m.group(3)
            target = _TARGET.search(m.group(4)) if op.startswith(("BRA", "JMP")) else None
            out.append(Instr(op, label, m.group(2) is not None, target.group(1) if target else "", lines))
            label = ""
    return out


@dataclass(frozen=True)
class Loop:
    """The hot loop (the innermost loop; the largest where several are): its body, and the
    enclosing loop's instructions outside it (the per-tile work)."""

    body: list[Instr]
    rest: list[Instr]


def hot_loop(sass: list[Instr]) -> Loop:
    where = {ins.label: i for i, ins in enumerate(sass) if ins.label}
    loops = [
        (where[ins.target], i) for i, ins in enumerate(sass) if ins.target in where and where[ins.target] <= i
    ]
    if not loops:
        return Loop(sass, [])
    inner = [a for a in loops if not any(b != a and a[0] <= b[0] and b[1] <= a[1] for b in loops)]
    start, end = max(inner, key=lambda a: a[1] - a[0])
    outer = [a for a in loops if a[0] <= start and end <= a[1] and a != (start, end)]
    rest: list[Instr] = []
    if outer:
        o_start, o_end = min(outer, key=lambda a: a[1] - a[0])
        rest = sass[o_start:start] + sass[end + 1 : o_end + 1]
    return Loop(sass[start : end + 1], rest)


# --- how often each run-time branch of the kernels is taken ------------------------------------


@dataclass(frozen=True)
class Branch:
    """An ``if`` of the kernels' source: its body's lines and its test."""

    first: int
    last: int
    test: str


def branches() -> list[Branch]:
    """The run-time ``if`` statements of the kernels (a test that is one constexpr name, in capitals,
    is decided at compile time: its code is there only when it holds, and runs every time)."""
    tree = ast.parse(Path(kernels.__file__).read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and not (isinstance(node.test, ast.Name) and node.test.id.isupper()):
            last = max(getattr(n, "end_lineno", node.lineno) or node.lineno for n in node.body)
            out.append(Branch(node.body[0].lineno, last, ast.unparse(node.test)))
    return out


def sweep(spec: Spec, shape: tuple[int, ...], blur: _filters.Blur) -> Iterator[dict[str, int]]:
    """The variables the kernels' run-time tests read, on every row of every tile (the loops of
    ``ssim_forward_kernel`` and ``ssim_backward_kernel`` replayed in Python)."""
    h, w = shape[2:]
    oh, ow = blur.out_size((h, w))
    (pad_h, pad_w), kh, kw = blur.pads, len(blur.taps[0]), len(blur.taps[1])
    bh = spec.block_h
    fixed = {"H": h, "W": w, "OH": oh, "OW": ow, "KH": kh, "KW": kw, "PAD_H": pad_h, "PAD_W": pad_w}
    if spec.kernel.startswith("forward"):
        for o0 in range(0, oh, bh):
            o1 = min(o0 + bh, oh)
            for p in range(o0, o1 + kh - 1):
                yield {**fixed, "o0": o0, "o1": o1, "p": p, "o": p - (kh - 1)}
        return
    bottom = max(h - kh - pad_h, pad_h + 1)  # as ssim_backward_kernel computes it
    for strip in spec.strips:
        edge = int((strip * spec.block_w <= pad_w) | (strip * spec.block_w + spec.block_w >= w - 1 - pad_w))
        for r0 in range(0, h, bh):
            r1 = min(r0 + bh, h)
            for o in range(r0 + pad_h - (kh - 1), r1 + pad_h):
                yield {**fixed, "r0": r0, "r1": r1, "o": o, "low": o - pad_h, "edge": edge, "bottom": bottom}


def frequencies(spec: Spec, shape: tuple[int, ...], blur: _filters.Blur) -> dict[str, float]:
    """How often each run-time test holds over the rows the tiles sweep (a test whose variables
    the sweep does not give: 1, counted as always taken)."""
    tests = {b.test for b in branches()}
    held: Counter[str] = Counter()
    rows = 0
    codes = {t: compile(t, t, "eval") for t in tests}
    for env in sweep(spec, shape, blur):
        rows += 1
        for t, code in codes.items():
            try:
                held[t] += bool(eval(code, {}, env))  # the kernels' own source
            except NameError:
                held[t] += 1
    return {t: held[t] / max(1, rows) for t in tests}


def weight(ins: Instr, found: list[Branch], freq: dict[str, float]) -> float:
    """How often an instruction of the hot loop runs per row: the product of the frequencies of
    the run-time ``if`` bodies its source lines lie in."""
    w = 1.0
    for b in found:
        if any(b.first <= line <= b.last for line in ins.lines):
            w *= freq[b.test]
    return w


# --- the model ----------------------------------------------------------------------------------


def occupancy(arch: Arch, regs: int, smem: int, warps: int) -> tuple[int, str]:
    """Resident warps per SM and what limits them."""
    per_warp = math.ceil(regs * 32 / 256) * 256
    by_regs = (arch.regs // per_warp) // warps
    by_warps = arch.max_warps // warps
    by_smem = arch.smem // (smem + 1024) if smem else arch.max_blocks
    # on a tie the hard limits are named first
    limits = {"warps": by_warps, "blocks": arch.max_blocks, "registers": by_regs, "shared memory": by_smem}
    blocks = min(limits.values())
    return blocks * warps, min(limits, key=lambda name: limits[name])


def dram_bytes(spec: Spec, shape: tuple[int, ...], blur: _filters.Blur) -> int:
    """Bytes the launch must move: images read once, outputs written once."""
    n, c, h, w = shape
    oh, ow = blur.out_size((h, w))
    item = torch.empty((), dtype=getattr(torch, spec.dtype)).element_size()
    images = 2 * n * c * h * w * item
    out_px = n * c * oh * ow
    if spec.kernel.startswith("backward"):  # this launch's share of x, y, 3 adjoint maps, gx
        share = min(1.0, len(spec.strips) * spec.block_w / w)
        return int(share * (images + 4 * out_px * 3 + n * c * h * w * item))
    share = min(1.0, len(spec.strips) * spec.block_w / ow)  # this launch's share of the columns
    if spec.case == "loss":
        return int(share * (images + 4 * out_px * 3))
    if spec.case == "metric+map":
        return int(share * (images + 4 * out_px))
    return int(share * images)


@dataclass
class Path_:
    """The hot loop counted one way: instructions per row, warp-instructions per output pixel by
    class (and "total"), and the predicted times by device ("H200", "H200 issue", "H200 dram")."""

    body: float
    per_px: dict[str, float]
    times: dict[str, float]


@dataclass
class Row:
    spec: Spec
    cc: int
    compiled: Compiled
    warps_sm: int
    limiter: str
    dram: int
    every: Path_  # every instruction of the body on every row (an upper bound)
    typical: Path_  # each instruction as often as the run-time branches it lies in are taken


def _path(
    body: dict[str, float],
    rest: Counter[str],
    spec: Spec,
    cc: int,
    warps_sm: int,
    geometry: tuple[int, int, int],
    dram: int,
) -> Path_:
    tiles, swept, pixels = geometry
    per_px = {
        cls: (body.get(cls, 0.0) * swept + rest[cls] * tiles) * spec.num_warps / pixels for cls in RATES
    }
    per_px["total"] = sum(per_px[cls] for cls in RATES)
    times: dict[str, float] = {}
    if cc == 90:
        blocks = max(1, warps_sm // spec.num_warps)
        efficiency = min(1.0, 0.5 + (warps_sm / 4) / 8)
        cycles = max(per_px["total"], *(per_px[cls] / RATES[cls] for cls in RATES)) * pixels
        for device in DEVICES:
            slots = blocks * device.sms
            tail = math.ceil(tiles / slots) * slots / tiles
            issue = cycles / (4 * device.sms * device.clock) / efficiency
            memory = dram / device.dram
            times[device.name] = max(issue, memory) * tail * 1e3
            times[device.name + " issue"] = issue * 1e3
            times[device.name + " dram"] = memory * 1e3
    return Path_(sum(body.values()), per_px, times)


def model(spec: Spec, cc: int, compiled: Compiled, shape: tuple[int, ...], blur: _filters.Blur) -> Row:
    warps_sm, limiter = occupancy(ARCHS[cc], compiled.regs, compiled.smem, spec.num_warps)
    loop = hot_loop(compiled.sass)
    n, c, h, w = shape
    rows, width = blur.out_size((h, w)) if spec.kernel.startswith("forward") else (h, w)
    cols = min(width, len(spec.strips) * spec.block_w)
    bands, strips = math.ceil(rows / spec.block_h), len(spec.strips)
    tiles = n * c * bands * strips
    swept = n * c * strips * (rows + bands * (spec.kh - 1))  # rows the tiles sweep, summed
    geometry = (tiles, swept, n * c * rows * cols)
    dram = dram_bytes(spec, shape, blur)
    rest = Counter(opclass(ins.op) for ins in loop.rest)
    every: dict[str, float] = Counter(opclass(ins.op) for ins in loop.body)  # type: ignore[assignment]
    found, freq = branches(), frequencies(spec, shape, blur)
    typical: dict[str, float] = {}
    for ins in loop.body:
        cls = opclass(ins.op)
        typical[cls] = typical.get(cls, 0.0) + weight(ins, found, freq)
    return Row(
        spec,
        cc,
        compiled,
        warps_sm,
        limiter,
        dram,
        _path(every, rest, spec, cc, warps_sm, geometry, dram),
        _path(typical, rest, spec, cc, warps_sm, geometry, dram),
    )


def _work(args: tuple[int, int, int]) -> tuple[int, int, Compiled]:
    index, cc, _ = args
    return index, cc, _compile(_JOBS[index][1].binding, cc)


_JOBS: list[tuple[int, Spec]] = []


def run(
    shape: tuple[int, ...],
    blur: _filters.Blur,
    archs: tuple[int, ...],
    dtypes: tuple[str, ...],
    jobs: int,
    cases: tuple[str, ...] = (),
) -> list[Row]:
    """Bind, compile (``jobs`` processes) and model every case for every arch."""
    global _JOBS
    work: list[tuple[int, Spec]] = []
    for cc in archs:
        work += [(cc, spec) for spec in bind(shape, blur, cc, dtypes, cases)]
    _JOBS = work
    tasks = [(i, cc, 0) for i, (cc, _) in enumerate(work)]
    if jobs > 1:
        import multiprocessing

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            results = list(pool.map(_work, tasks))
    else:
        results = [_work(t) for t in tasks]
    return [model(work[i][1], cc, compiled, shape, blur) for i, cc, compiled in results]


# --- the report -------------------------------------------------------------------------------

HEAD = (
    "| kernel | dtype | sm | regs | spill B | smem B | warps/SM (limit) | loop instr (static) | per row "
    "| warp-instr/px (all paths) | by class: fp32 / alu / mem / unif / ctrl / other | DRAM MB | "
    "H100 ms | H200 ms | H200 issue / DRAM ms |"
)


def table(rows: list[Row]) -> str:
    lines = [HEAD, "|" + "---|" * 15]
    for r in rows:
        t = r.typical
        classes = " / ".join(f"{t.per_px[c]:.1f}" for c in ("fp32", "alu", "mem", "uniform", "ctrl", "other"))
        times = ["", "", ""]
        if t.times:
            times = [
                f"{t.times['H100']:.3f}",
                f"{t.times['H200']:.3f}",
                f"{t.times['H200 issue']:.3f} / {t.times['H200 dram']:.3f}",
            ]
        spill = f"**{r.compiled.stack}**" if r.compiled.stack else "0"
        lines.append(
            f"| {r.spec.case} {r.spec.kernel} | {r.spec.dtype} | sm_{r.cc} | {r.compiled.regs} | {spill} | "
            f"{r.compiled.smem} | {r.warps_sm} ({r.limiter}) | {r.every.body:.0f} | {t.body:.0f} | "
            f"{t.per_px['total']:.1f} ({r.every.per_px['total']:.1f}) | {classes} | {r.dram / 1e6:.0f} | "
            + " | ".join(times)
            + " |"
        )
    return "\n".join(lines)


def totals(rows: list[Row]) -> str:
    """The loss's forward + backward predicted per dtype."""
    out = []
    for dtype in sorted({r.spec.dtype for r in rows}):
        loss = [r for r in rows if r.cc == 90 and r.spec.case == "loss" and r.spec.dtype == dtype]
        if len(loss) >= 2:
            parts = ", ".join(
                f"{d.name} {sum(r.typical.times[d.name] for r in loss):.3f} ms" for d in DEVICES
            )
            out.append(f"- loss forward + backward, {dtype}: {parts}")
    return "\n".join(out)


def _shape(text: str) -> tuple[int, ...]:
    shape = tuple(int(v) for v in text.lower().split("x"))
    if len(shape) != 4:
        raise argparse.ArgumentTypeError("a shape is NxCxHxW")
    return shape


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=_shape, default=(5, 3, 1080, 1920))
    parser.add_argument("--sigma", type=float, default=1.5, help="Gaussian window (default 1.5: 11 taps)")
    parser.add_argument(
        "--uniform", type=int, default=None, help="a uniform window of this many taps instead"
    )
    parser.add_argument("--padding", choices=("same", "valid"), default="same")
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 89, 90], choices=sorted(ARCHS))
    parser.add_argument(
        "--dtype", nargs="+", default=["float32", "bfloat16"], choices=("float32", "bfloat16", "float16")
    )
    parser.add_argument("--cases", nargs="+", default=[], choices=[c[0] for c in CASES], help="default: all")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--md", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if args.uniform is not None:
        taps = _filters.uniform_taps(args.uniform)
        window = f"{args.uniform}-tap uniform"
    else:
        size = _filters.gaussian_size(args.sigma)
        taps = _filters.gaussian_taps(args.sigma, size)
        window = f"{size}-tap Gaussian (sigma {args.sigma:g})"
    blur = _filters.Blur((taps, taps), args.padding)
    start = time.perf_counter()
    os.environ.pop("TRITON_INTERPRET", None)  # compile for a GPU, never interpret
    rows = run(args.shape, blur, tuple(args.arch), tuple(args.dtype), max(1, args.jobs), tuple(args.cases))
    elapsed = time.perf_counter() - start
    shape = "x".join(map(str, args.shape))
    lines = [
        f"Offline model (not a measurement): {shape}, {window}, {args.padding} padding, "
        f"`triton.CONFIG` = {tb.CONFIG!r}; triton {triton.__version__}; {elapsed:.0f} s.",
        "",
        table(rows),
        "",
        totals(rows),
        "",
        "Assumptions:",
        *[f"- {a}" for a in ASSUMPTIONS],
    ]
    text = "\n".join(lines)
    print(text)
    if args.md is not None:
        args.md.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
