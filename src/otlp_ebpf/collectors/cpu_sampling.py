"""What every cpu sampler shares: the run's settings, the Sampler interface, what a sampler
hands back, and the kernel frames of the tracing machinery that no profile should show.

collectors/cpu.py (frame pointers) and collectors/cpu_dwarf.py (DWARF unwinding) both build on
this module; cpu.py picks and combines them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from otlp_ebpf.collectors import base
from otlp_ebpf.model import ProcessInfo, StackCount
from otlp_ebpf.targets import TargetSpec

KERNEL_MODULE = "[kernel.kallsyms]"
# Kernel frames of the tracing machinery itself (sched_switch runs our program on top of the
# blocked task's stack; a sample's copy starts in the perf overflow path): not part of what
# the task was doing.
TRACING_FRAME_PREFIXES = (
    "bpf_prog_",
    "bpf_trace_run",
    "__bpf_trace_",
    "perf_trace_",
    "trace_call_bpf",
    "__traceiter_",
    "bpf_overflow_handler",
    "__perf_event_overflow",
)

# An on-CPU stack as a sampler counts it, before symbolization; the pid comes first.
RawStack = tuple[Any, ...]


@dataclass(frozen=True)
class CpuConfig:
    """What `otlp-ebpf cpu` was asked to record."""

    targets: TargetSpec = field(default_factory=TargetSpec)
    duration_s: float | None = None
    frequency_hz: int = 99
    on_cpu: bool = True
    off_cpu: bool = False
    min_block_us: int = 1
    user_stacks: bool = True
    kernel_stacks: bool = True
    unwind: str = "auto"
    stack_entries: int = 16384
    python: bool = True  # Python frames of CPython processes (collectors/python_frames.py)
    budget_pct: float | None = None  # --budget: lower the on-CPU rate to keep the cost under it


@dataclass
class SampledStacks:
    """What a sampler hands back at the end of a run, already symbolized."""

    on_cpu: list[StackCount] = field(default_factory=list)
    off_cpu: list[StackCount] = field(default_factory=list)
    lost: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    own_pids: frozenset[int] = frozenset()  # this tool's helper processes, left out


class Sampler(Protocol):
    """One way of collecting stacks: load + attach, poll while running, stop (detach) at the
    end of the run, then read."""

    def start(self, targets: base.Targets) -> None: ...

    def poll(self, timeout_s: float) -> None: ...

    def stop(self) -> None: ...

    def finish(self) -> SampledStacks: ...

    def cost(self) -> tuple[int, int]: ...

    def helper_cpu_s(self) -> float: ...

    def processes(self) -> dict[int, ProcessInfo]: ...

    def raw_counts(self) -> dict[RawStack, int]:
        """On-CPU samples so far per stack, unsymbolized (read while running: a timeline)."""
        ...

    def raw_frames(self, keys: Iterable[RawStack]) -> dict[RawStack, tuple[str, ...]]:
        """Root-first frames of keys from `raw_counts`, named at the end of the run."""
        ...

    def raw_blocked(self) -> dict[RawStack, int]:
        """Off-CPU blocked nanoseconds so far per stack, unsymbolized (a timeline); empty
        without off-CPU recording."""
        ...

    def raw_blocked_frames(self, keys: Iterable[RawStack]) -> dict[RawStack, tuple[str, ...]]:
        """Root-first frames of keys from `raw_blocked`, named at the end of the run."""
        ...

    def set_frequency(self, hz: int) -> None:
        """On-CPU sampling at `hz` from now on (an overhead budget changes it while running)."""
        ...


class CompositeSampler:
    """Two samplers in one run: one for on-CPU samples, one for off-CPU blocks."""

    def __init__(self, on_cpu: Sampler, off_cpu: Sampler) -> None:
        self.parts = (on_cpu, off_cpu)

    def start(self, targets: base.Targets) -> None:
        for part in self.parts:
            part.start(targets)

    def poll(self, timeout_s: float) -> None:
        self.parts[0].poll(timeout_s)
        self.parts[1].poll(0.0)

    def stop(self) -> None:
        for part in self.parts:
            part.stop()

    def finish(self) -> SampledStacks:
        self.stop()  # both at once: neither keeps recording while the other is read
        on, off = (part.finish() for part in self.parts)
        lost = dict(on.lost)
        for reason, n in off.lost.items():
            lost[reason] = lost.get(reason, 0) + n
        own = on.own_pids | off.own_pids
        off_cpu = [s for s in off.off_cpu if s.pid not in own]
        return SampledStacks(on.on_cpu, off_cpu, lost, on.notes + off.notes, own)

    def cost(self) -> tuple[int, int]:
        costs = [part.cost() for part in self.parts]
        return sum(c[0] for c in costs), sum(c[1] for c in costs)

    def helper_cpu_s(self) -> float:
        return sum(part.helper_cpu_s() for part in self.parts)

    def processes(self) -> dict[int, ProcessInfo]:
        return {**self.parts[1].processes(), **self.parts[0].processes()}

    def raw_counts(self) -> dict[RawStack, int]:
        return self.parts[0].raw_counts()

    def raw_frames(self, keys: Iterable[RawStack]) -> dict[RawStack, tuple[str, ...]]:
        return self.parts[0].raw_frames(keys)

    def raw_blocked(self) -> dict[RawStack, int]:
        return self.parts[1].raw_blocked()

    def raw_blocked_frames(self, keys: Iterable[RawStack]) -> dict[RawStack, tuple[str, ...]]:
        return self.parts[1].raw_blocked_frames(keys)

    def set_frequency(self, hz: int) -> None:
        self.parts[0].set_frequency(hz)


def merge_stacks(stacks: Sequence[StackCount]) -> list[StackCount]:
    """One entry per (pid, tid, comm, frames): different stack ids can symbolize alike."""
    merged: dict[tuple[int, int, str, tuple[str, ...]], StackCount] = {}
    for s in stacks:
        key = (s.pid, s.tid, s.comm, s.frames)
        prev = merged.get(key)
        if prev is None:
            merged[key] = s
        else:
            merged[key] = StackCount(
                s.pid,
                s.tid,
                s.comm,
                s.frames,
                prev.count + s.count,
                prev.total_ns + s.total_ns,
                modules=prev.modules,
            )
    return sorted(merged.values(), key=lambda s: (-(s.total_ns or s.count), s.pid, s.tid))


def without_tracing_frames(kernel_leaf_first: list[str]) -> list[str]:
    """Drop the tracing machinery's frames from the leaf end of a kernel stack."""
    start = 0
    while start < len(kernel_leaf_first) and kernel_leaf_first[start].startswith(
        TRACING_FRAME_PREFIXES
    ):
        start += 1
    return kernel_leaf_first[start:]
