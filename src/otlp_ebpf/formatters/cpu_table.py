"""Terminal view of a cpu snapshot: the functions that took the most time, self and total.

Self is the share of weight where the function is the leaf (it was running, or blocked
there); total is the share of weight where it appears anywhere in the stack, counted once per
stack even when recursive. On-CPU weight is samples, off-CPU weight blocked nanoseconds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from otlp_ebpf.model import CpuSnapshot, Snapshot, StackCount, StackProfile

DEFAULT_TOP = 20


@dataclass(frozen=True)
class FunctionShare:
    """One function's weight as the leaf (`self_weight`) and anywhere on the stack (`total`)."""

    name: str
    self_weight: int
    total_weight: int


def function_shares(profile: StackProfile) -> list[FunctionShare]:
    """Every function of `profile`, heaviest self weight first (ties by total, then name)."""
    self_w: dict[str, int] = defaultdict(int)
    total_w: dict[str, int] = defaultdict(int)
    for stack in profile.stacks:
        weight = profile.weight(stack)
        if not stack.frames or not weight:
            continue
        self_w[stack.frames[-1]] += weight
        for name in set(stack.frames):
            total_w[name] += weight
    shares = [FunctionShare(n, self_w.get(n, 0), t) for n, t in total_w.items()]
    shares.sort(key=lambda s: (-s.self_weight, -s.total_weight, s.name))
    return shares


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def _amount(weight: int, unit: str) -> str:
    if unit == "nanoseconds":
        if weight >= 1_000_000_000:
            return f"{weight / 1e9:.2f} s"
        if weight >= 1_000_000:
            return f"{weight / 1e6:.1f} ms"
        return f"{weight / 1e3:.1f} us"
    return f"{weight:,}"


def profile_table(profile: StackProfile, *, top: int | None, title: str) -> Table:
    """A rich table of the top functions of one profile."""
    whole = profile.total
    table = Table(title=title, title_justify="left")
    for col in ("self %", "total %", "self", "total"):
        table.add_column(col, justify="right")
    table.add_column("function")
    shares = function_shares(profile)
    for share in shares[:top] if top else shares:
        table.add_row(
            _pct(share.self_weight, whole),
            _pct(share.total_weight, whole),
            _amount(share.self_weight, profile.unit),
            _amount(share.total_weight, profile.unit),
            escape(share.name),
        )
    return table


def _processes(stacks: Iterable[StackCount]) -> int:
    return len({s.pid for s in stacks})


def run_summary(snapshot: CpuSnapshot) -> str:
    """What the tables cover: samples, rate, duration, processes, blocked time."""
    parts = []
    off_cpu_only = snapshot.frequency_hz == 0
    if off_cpu_only and not snapshot.off_cpu:
        return (
            f"no blocked time recorded over {snapshot.duration_s:.1f} s "
            f"(>= {snapshot.off_cpu_min_block_us} us)"
        )
    if not off_cpu_only and (snapshot.stacks or not snapshot.off_cpu):
        parts.append(
            f"{snapshot.samples_total:,} samples at {snapshot.frequency_hz} Hz "
            f"over {snapshot.duration_s:.1f} s in {_processes(snapshot.stacks)} processes"
        )
    if snapshot.off_cpu:
        blocked = sum(s.total_ns for s in snapshot.off_cpu)
        parts.append(
            f"off-CPU {_amount(blocked, 'nanoseconds')} blocked in "
            f"{sum(s.count for s in snapshot.off_cpu):,} blocks "
            f"(>= {snapshot.off_cpu_min_block_us} us)"
        )
    return "; ".join(parts)


def render_table(snapshot: Snapshot, console: Console, *, top: int | None = DEFAULT_TOP) -> None:
    """Print the top-functions table of each profile of a cpu snapshot, then its summary."""
    if not isinstance(snapshot, CpuSnapshot):
        raise TypeError(f"cpu_table renders cpu snapshots, not {snapshot.kind}")
    titles = {"cpu": "on-CPU: top functions", "off_cpu": "off-CPU: top functions (blocked time)"}
    for profile in snapshot.stack_profiles():
        console.print(profile_table(profile, top=top, title=titles.get(profile.name, profile.name)))
    console.print(escape(run_summary(snapshot)))
