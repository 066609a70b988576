"""Terminal views of a syscalls snapshot: the top table and a latency histogram."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from otlp_ebpf.latency import percentile_ns
from otlp_ebpf.model import SyscallsSnapshot, SyscallStat


def format_ns(ns: float) -> str:
    if ns >= 1e9:
        return f"{ns / 1e9:.2f} s"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.1f} us"
    return f"{ns:.0f} ns"


def merge_by_name(stats: Iterable[SyscallStat]) -> list[SyscallStat]:
    """One row per syscall across processes (percentiles re-estimated from merged slots)."""
    groups: dict[str, list[SyscallStat]] = defaultdict(list)
    for s in stats:
        groups[s.name].append(s)
    merged = []
    for name, rows in groups.items():
        width = max(len(r.hist) for r in rows)
        hist = tuple(sum(r.hist[i] for r in rows if i < len(r.hist)) for i in range(width))
        errno: dict[str, int] = defaultdict(int)
        for r in rows:
            for k, v in r.errno.items():
                errno[k] += v
        lo = min((r.min_ns for r in rows if r.min_ns), default=0)
        hi = max(r.max_ns for r in rows)
        merged.append(
            SyscallStat(
                pid=0,
                comm="",
                name=name,
                count=sum(r.count for r in rows),
                errors=sum(r.errors for r in rows),
                errno=dict(sorted(errno.items())),
                total_ns=sum(r.total_ns for r in rows),
                p50_ns=percentile_ns(hist, 0.5, lo, hi) if hist else max(r.p50_ns for r in rows),
                p99_ns=percentile_ns(hist, 0.99, lo, hi) if hist else max(r.p99_ns for r in rows),
                max_ns=hi,
                min_ns=lo,
                hist=hist,
            )
        )
    merged.sort(key=lambda s: (-s.count, s.name))
    return merged


def _errno_text(errno: Mapping[str, int]) -> str:
    items = sorted(errno.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k} {v:,}" for k, v in items[:3]) + (" ..." if len(items) > 3 else "")


def syscalls_table(
    rows: Sequence[SyscallStat], *, by_process: bool, top: int | None, title: str = ""
) -> Table:
    table = Table(title=title or None, title_justify="left")
    if by_process:
        table.add_column("pid", justify="right")
        table.add_column("comm")
    for col in ("syscall", "count", "errors", "p50", "p99", "max", "total"):
        table.add_column(col, justify="left" if col == "syscall" else "right")
    table.add_column("errno")
    for s in rows[:top] if top else rows:
        cells = [str(s.pid), escape(s.comm)] if by_process else []
        cells += [
            escape(s.name),
            f"{s.count:,}",
            f"{s.errors:,}" if s.errors else "",
            format_ns(s.p50_ns),
            format_ns(s.p99_ns),
            format_ns(s.max_ns),
            format_ns(s.total_ns),
            escape(_errno_text(s.errno)),
        ]
        table.add_row(*cells)
    return table


def render_table(
    snapshot: SyscallsSnapshot, console: Console, *, by_process: bool = False, top: int | None = 30
) -> None:
    rows = list(snapshot.syscalls) if by_process else merge_by_name(snapshot.syscalls)
    if not rows:
        console.print("no syscalls recorded")
        return
    console.print(syscalls_table(rows, by_process=by_process, top=top))


def render_latency(snapshot: SyscallsSnapshot, name: str, console: Console) -> None:
    """A log2 histogram of one syscall's latency, like bcc's `-L` views."""
    merged = [s for s in merge_by_name(snapshot.syscalls) if s.name == name]
    if not merged or not any(merged[0].hist):
        console.print(f"no latency recorded for {escape(name)}")
        return
    hist = merged[0].hist
    last = max(i for i, n in enumerate(hist) if n)
    first = min(i for i, n in enumerate(hist) if n)
    peak = max(hist)
    table = Table(title=f"{escape(name)} latency ({merged[0].count:,} calls)", title_justify="left")
    table.add_column("range", justify="right")
    table.add_column("count", justify="right")
    table.add_column("distribution")
    for i in range(first, last + 1):
        lo = 0 if i == 0 else 1 << i
        hi = (1 << (i + 1)) - 1
        bar = "█" * round(40 * hist[i] / peak) if peak else ""
        table.add_row(f"{format_ns(lo)} - {format_ns(hi)}", f"{hist[i]:,}", bar)
    console.print(table)
