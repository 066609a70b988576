"""Small, hand-made snapshots for formatter tests: names chosen to trip escaping and parsing."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from otlp_ebpf.model import (
    Allocation,
    CpuSnapshot,
    MemSnapshot,
    StackCount,
    StackProfile,
    SyscallsSnapshot,
    SyscallStat,
)

COMMON: dict[str, Any] = {
    "started_at": "2026-01-02T03:04:05+00:00",
    "duration_s": 10.0,
    "host": "box",
}

# Names a browser or a parser could misread: markup, brackets, separators, non-ASCII.
AWKWARD_FRAMES = ("[unknown]", "<lambda>", "operator<", "a;b", "naïve_λ", "</script>")


def cpu_snapshot(*, off_cpu: bool = True) -> CpuSnapshot:
    """Two processes; `app` spends 3/4 of the samples in `compute`, 1/4 in a syscall."""
    stacks = (
        StackCount(10, 10, "app", ("_start", "main", "compute"), 60),
        StackCount(10, 11, "app", ("_start", "main", "compute", "inner"), 15),
        StackCount(10, 10, "app", ("_start", "main", "write", "vfs_write_[k]"), 20),
        StackCount(20, 20, "db", ("run", *AWKWARD_FRAMES), 5),
    )
    blocked = (
        StackCount(10, 10, "app", ("_start", "main", "read", "schedule_[k]"), 3, 3_000_000),
        StackCount(20, 20, "db", ("run", "poll"), 1, 1_000_000),
    )
    return CpuSnapshot(
        **COMMON,
        targets=("pid 10", "pid 20"),
        frequency_hz=100,
        samples_total=100,
        stacks=stacks,
        off_cpu=blocked if off_cpu else (),
    )


def mem_snapshot(*, page_faults: bool = False) -> MemSnapshot:
    """Outstanding allocations with modules, optionally page faults on other stacks."""
    outstanding = (
        Allocation(30, ("main", "load", "malloc"), 4096, 4, "srv", ("srv", "srv", "libc.so.6")),
        Allocation(
            30, ("main", "cache_put", "malloc"), 1024, 16, "srv", ("srv", "srv", "libc.so.6")
        ),
    )
    faults = (StackCount(30, 31, "srv", ("main", "touch", "asm_exc_page_fault_[k]"), 7),)
    return MemSnapshot(
        **COMMON,
        outstanding=outstanding,
        outstanding_bytes=5120,
        page_faults=faults if page_faults else (),
    )


def syscalls_snapshot() -> SyscallsSnapshot:
    stat = SyscallStat(10, "app", "read", 5, 0, {}, 500, 90, 200, 300)
    return SyscallsSnapshot(**COMMON, syscalls=(stat,))


def stack_profiles_strategy(unit: str = "count") -> st.SearchStrategy[StackProfile]:
    """Profiles with arbitrary frame text (separators, unicode, empty names, empty stacks)."""
    frame = st.text(max_size=10)
    stack = st.builds(
        StackCount,
        pid=st.integers(1, 4),
        tid=st.integers(1, 4),
        comm=st.text(max_size=6),
        frames=st.lists(frame, max_size=6).map(tuple),
        count=st.integers(0, 10_000),
        total_ns=st.integers(0, 10**12),
    )
    return st.lists(stack, max_size=12).map(
        lambda stacks: StackProfile("p", "samples", unit, tuple(stacks))
    )
