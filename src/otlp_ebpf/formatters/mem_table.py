"""Terminal view of a mem snapshot: top stacks by outstanding bytes, and page faults."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape

from otlp_ebpf.model import Allocation, MemSnapshot, StackCount

DEFAULT_TOP = 10
FRAMES_SHOWN = 12


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{n:,} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def leaf_first(frames: Sequence[str], limit: int = FRAMES_SHOWN) -> list[str]:
    """The frames to print under a stack heading, leaf first, like memleak prints them."""
    ordered = list(reversed(frames))
    shown = ordered[:limit]
    if len(ordered) > limit:
        shown.append(f"... {len(ordered) - limit} more frames")
    return shown


def process_label(pid: int, comm: str) -> str:
    return f"{comm} ({pid})" if pid else "kernel"


def allocation_heading(a: Allocation) -> str:
    return f"{a.bytes:,} bytes in {a.count:,} allocations from {process_label(a.pid, a.comm)}"


def fault_heading(f: StackCount) -> str:
    return f"{f.count:,} page faults in {process_label(f.pid, f.comm)}"


def print_stack(console: Console, heading: str, frames: Sequence[str]) -> None:
    console.print(f"[bold]{escape(heading)}[/]")
    for frame in leaf_first(frames):
        console.print(f"    {escape(frame)}")


def render_table(snapshot: MemSnapshot, console: Console, *, top: int | None = DEFAULT_TOP) -> None:
    """Top stacks by outstanding bytes, each as "N bytes in M allocations", then page faults."""
    for a in snapshot.outstanding[:top] if top else snapshot.outstanding:
        print_stack(console, allocation_heading(a), a.frames)
    hidden = len(snapshot.outstanding) - top if top else 0
    if hidden > 0:
        console.print(f"... {hidden:,} more stacks (--top 0 shows all)")
    total_count = sum(a.count for a in snapshot.outstanding)
    age = f", older than {snapshot.min_age_ms} ms" if snapshot.min_age_ms else ""
    console.print(
        f"outstanding: {snapshot.outstanding_bytes:,} bytes "
        f"({human_bytes(snapshot.outstanding_bytes)}) in {total_count:,} allocations "
        f"from {len(snapshot.outstanding):,} stacks{age}"
    )
    if snapshot.page_faults:
        for f in snapshot.page_faults[:top] if top else snapshot.page_faults:
            print_stack(console, fault_heading(f), f.frames)
        console.print(f"page faults: {sum(f.count for f in snapshot.page_faults):,}")
