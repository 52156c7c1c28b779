"""Tables of timings, memory peaks and launch counts, as plain text and Markdown, and the
sections of ``results.md`` they go in."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from benchmarks.cases import MODE_LABELS, Case, shape_text
from benchmarks.contenders import CONTENDERS
from benchmarks.memory import Peaks
from benchmarks.meta_counts import CountRow
from benchmarks.timing import Timing

Rows = list[list[str]]

#: The heading of the launch-count section; the timing run keeps it when it rewrites the file.
COUNT_HEADING = '## Launches and bytes written on device="meta"'


def ms(seconds: Optional[float]) -> str:
    """Seconds as milliseconds with 2 decimals, ``"n/a"`` for None."""
    return "n/a" if seconds is None else f"{seconds * 1e3:.2f}"


def ratio(num: Optional[float], den: Optional[float]) -> str:
    """``num / den`` with 2 decimals, ``"n/a"`` where either is missing or ``den`` is 0."""
    return "n/a" if num is None or den is None or den == 0 else f"{num / den:.2f}"


def mib(n: Optional[float]) -> str:
    """Bytes as MiB with 1 decimal, ``"n/a"`` for None."""
    return "n/a" if n is None else f"{n / 2**20:.1f}"


def _others(names: Sequence[str]) -> list[str]:
    return [n for n in names if n not in ("unpatched", "patched")]


def speed_table(
    cases: list[Case], timings: dict[str, dict[str, Timing]], names: Sequence[str] = CONTENDERS
) -> Rows:
    """Median ms per contender, ``unpatched/patched`` and ``patched/<other>`` time ratios."""
    head = ["device", "shape", "mode", *[f"{name} ms" for name in names], "unpatched/patched"]
    head += [f"patched/{name}" for name in _others(names)]
    rows = [head]
    for case in cases:
        med = {name: t.median for name, t in timings[case.key].items()}
        row = [case.device, shape_text(case.shape), MODE_LABELS[case.mode]]
        row += [ms(med.get(name)) for name in names]
        row.append(ratio(med.get("unpatched"), med.get("patched")))
        row += [ratio(med.get("patched"), med.get(name)) for name in _others(names)]
        rows.append(row)
    return rows


def memory_table(cases: list[Case], memory: Peaks, names: Sequence[str] = CONTENDERS) -> Rows:
    """Peak extra MiB per contender and ``patched/unpatched``; cases with no number are left out."""
    head = ["device", "shape", "mode", *[f"{name} MiB" for name in names], "patched/unpatched"]
    rows = [head]
    for case in cases:
        got = {name: memory.get((name, case.key)) for name in names}
        if all(v is None for v in got.values()):
            continue
        unpatched, patched = got.get("unpatched"), got.get("patched")
        row = [case.device, shape_text(case.shape), MODE_LABELS[case.mode]]
        row += [mib(got[name]) for name in names]
        row.append(ratio(None if patched is None else float(patched), unpatched or None))
        rows.append(row)
    return rows


def detail_table(
    cases: list[Case], timings: dict[str, dict[str, Timing]], names: Sequence[str] = CONTENDERS
) -> Rows:
    """Per case and contender: median, quartiles, min, rounds and the SSIM value."""
    head = ["device", "shape", "mode", "contender", "median ms", "p25-p75 ms", "min ms", "rounds"]
    rows = [[*head, "SSIM value"]]
    for case in cases:
        for name in names:
            t = timings[case.key].get(name)
            if t is None or (t.skipped is not None and not t.times):
                continue  # not run: the notes say why
            q = t.quartiles()
            spread = "n/a" if q is None else f"{q[0] * 1e3:.2f}-{q[1] * 1e3:.2f}"
            value = "n/a" if t.value is None else f"{t.value:.6f}"
            best = ms(min(t.times) if t.times else None)
            row = [case.device, shape_text(case.shape), MODE_LABELS[case.mode], name]
            rows.append([*row, ms(t.median), spread, best, str(len(t.times)), value])
    return rows


def skipped_notes(cases: list[Case], timings: dict[str, dict[str, Timing]]) -> list[str]:
    """One line per contender and case that has no time, with the reason."""
    notes = []
    for case in cases:
        for t in timings[case.key].values():
            if t.skipped is not None and not t.times:
                notes.append(f"{case.device} {shape_text(case.shape)} {MODE_LABELS[case.mode]}: {t.skipped}")
    return notes


def count_table(rows: list[CountRow]) -> Rows:
    """Ops dispatched, ops that write (launches) and MiB written, unpatched / patched."""
    head = ["shape", "pass", "all ops", "ops that write (launches)", "MiB written", "bytes patched/unpatched"]
    out = [[*head, "floor holds"]]
    for r in rows:
        u, p = r.unpatched, r.patched
        out.append(
            [
                shape_text(r.case.shape),
                MODE_LABELS[r.case.mode],
                f"{u.ops} / {p.ops}",
                f"{u.writing_ops} / {p.writing_ops}",
                f"{mib(u.bytes_written)} / {mib(p.bytes_written)}",
                ratio(float(p.bytes_written), float(u.bytes_written)),
                "yes" if r.floor_holds() else "**no**",
            ]
        )
    return out


def count_ops_table(rows: list[CountRow]) -> Rows:
    """Which ops write, by name and count, per shape, pass and contender."""
    out = [["shape", "pass", "contender", "ops that write, by name"]]
    for r in rows:
        for name, counts in (("unpatched", r.unpatched), ("patched", r.patched)):
            ops = ", ".join(f"{op.removeprefix('aten.')} {n}" for op, n in counts.writes_by_op.most_common())
            out.append([shape_text(r.case.shape), MODE_LABELS[r.case.mode], name, ops])
    return out


def plain(rows: Rows) -> str:
    """Rows as an aligned text table (the first row is the header)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append(
            "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(rows: Rows) -> str:
    """Rows as a Markdown table (the first row is the header)."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def _bounds(lines: list[str], heading: str) -> Optional[tuple[int, int]]:
    """First and one-past-last line of the section under ``heading``, or None."""
    if heading not in lines:
        return None
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return start, end


def section(text: str, heading: str) -> Optional[str]:
    """The section of Markdown ``text`` under ``heading`` (a ``## `` line), up to the next one."""
    lines = text.splitlines()
    bounds = _bounds(lines, heading)
    return None if bounds is None else "\n".join(lines[bounds[0] : bounds[1]]).rstrip() + "\n"


def replace_section(text: str, heading: str, body: str) -> str:
    """``text`` with the section under ``heading`` replaced by ``body`` (appended if absent)."""
    lines = text.splitlines()
    bounds = _bounds(lines, heading)
    start, end = (len(lines), len(lines)) if bounds is None else bounds
    parts = ["\n".join(lines[:start]).strip(), body.strip(), "\n".join(lines[end:]).strip()]
    return "\n\n".join(part for part in parts if part) + "\n"


TIMING_METHOD = """\
Times are medians in milliseconds of one call: `fwd` is the metric under `torch.no_grad()`, `fwd+bwd`
is SSIM as a loss (`preds` requires grad, `(1 - ssim).backward()`). On CUDA each call is bracketed by
`torch.cuda.synchronize()`. `unpatched/patched` is the speed-up of the patch (higher is better);
`patched/kornia` and `patched/pytorch-msssim` are time ratios (lower is better, < 1 means the patched
call is faster). All contenders use an 11-tap Gaussian window, sigma 1.5, data range 1.0; kornia and
the patch reflect-pad ("same"), pytorch-msssim keeps only whole windows ("valid"), so its values
differ a little and it does less work at the border.

Peak extra memory is what one call needs on top of its inputs. CPU: each contender runs in a fresh
subprocess with glibc's mmap threshold fixed at 64 KiB (`MALLOC_MMAP_THRESHOLD_=65536`), so every
tensor buffer is mapped on allocation and unmapped on free and the resident set follows the live
tensors; after a warm-up call the resident-set high-water mark is reset (`/proc/self/clear_refs`)
and the number is `VmHWM` after one call minus `VmRSS` before it (4 KiB pages; includes the
returned gradient for `fwd+bwd`). Blocks under 64 KiB come from the malloc heap, which the warm-up
call has already grown, so tiny shapes read close to 0: the numbers mean something from about 1 MiB.
CUDA: `torch.cuda.max_memory_allocated()` minus `memory_allocated()` around one call after
`reset_peak_memory_stats()`."""

COUNT_METHOD = """\
Each cell is unpatched / patched: torchmetrics 1.9.0's `structural_similarity_index_measure(preds,
target, data_range=1.0)` as released and inside `with ssim_patch.patched():`, on `device="meta"`
float32 tensors (the engine's non-CPU path; nothing is computed). `fwd` runs under `no_grad`;
`fwd+bwd` has `preds.requires_grad_()` and includes `(1 - ssim).backward()`. A
`TorchDispatchMode` (`benchmarks/dispatch_count.py`) records every aten op dispatched (`all ops`).
An op *writes* when it returns a tensor that shares no storage with its inputs, or mutates an
argument (in-place ops, `out=`: the mutated tensor counts); views and metadata ops write nothing,
and bare allocations (`empty`, `new_empty`) write nothing and launch nothing (the op that fills the
buffer counts). Each op that writes is at least one kernel launch on CUDA; `MiB written` sums the
sizes of the tensors written (reads are not counted). The floor: patched <= unpatched in all
three, for every row (`floor holds`)."""


def count_section(rows: list[CountRow], provenance: list[str]) -> str:
    """The launch-count section of ``results.md``: its heading, provenance, tables and method."""
    text = [COUNT_HEADING, "", *provenance, "", markdown(count_table(rows)), "", COUNT_METHOD, ""]
    text += ["### Ops that write, by name", "", markdown(count_ops_table(rows)), ""]
    return "\n".join(text)


def write_count_section(path: Path, body: str) -> None:
    """Put the launch-count section into the Markdown file ``path``, keeping everything else."""
    old = path.read_text() if path.exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_section(old, COUNT_HEADING, body))


def write_timing_report(path: Path, text: str) -> None:
    """Write the timing report to ``path``, keeping a launch-count section the file already has."""
    kept = section(path.read_text(), COUNT_HEADING) if path.exists() else None
    if kept is not None:
        text = replace_section(text, COUNT_HEADING, kept)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
