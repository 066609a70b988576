"""An overhead budget: measure the tool's own cost every tick and lower the sampling rate
until the steady state costs at most the budget.

The cost counted is what the machine pays for the tool: this process's CPU, that of its helper
processes (the unwind-table decoder), and the run time of its BPF programs (which the traced
processes pay), in percent of one core. What adapts today is on-CPU sampling: its frequency
goes down in proportion (aiming at 85% of the budget) when the last quarter second cost more
than the budget, and back up (a quarter at a time, never above the requested rate) when it
cost under 60% of it. Sampling keeps cpu
shares unbiased; only their precision drops.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from otlp_ebpf.runtime import stats

AIM = 0.85  # of the budget, when lowering: headroom for the cost's tick-to-tick noise
RAISE_BELOW = 0.6  # of the budget: room to sample faster again
RAISE_FACTOR = 1.25
MIN_HZ = 1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def check_budget(pct: float | None) -> None:
    from otlp_ebpf.errors import UsageError

    if pct is not None and not 0 < pct <= 100:
        raise UsageError(f"--budget must be a percentage of one core in (0, 100], got {pct:g}")


def child_cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process from /proc (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children_of(pid: int) -> set[int]:
    """Direct children of every thread of `pid`."""
    out: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            out.update(
                int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()
            )
        except (OSError, ValueError):
            continue
    return out


@dataclass
class CostMeter:
    """The tool's cumulative cost: own CPU, helper processes' CPU (its children other than the
    launched command), BPF run time of `bpf_ns` (a callable summing every signal's programs)."""

    bpf_ns: Callable[[], int]
    not_helpers: Callable[[], Iterable[int]]
    _helpers: dict[int, float] = field(default_factory=dict)

    def cpu_s(self) -> float:
        """This process's and its helpers' CPU seconds so far (a helper that ended keeps
        what it was last seen using)."""
        skip = set(self.not_helpers())
        for pid in children_of(os.getpid()) - skip:
            self._helpers[pid] = max(self._helpers.get(pid, 0.0), child_cpu_seconds(pid))
        return stats.process_cpu_seconds() + sum(self._helpers.values())

    def total_s(self) -> float:
        """CPU and BPF seconds so far: the cost in core-seconds."""
        return self.cpu_s() + self.bpf_ns() / 1e9


@dataclass
class Interval:
    """Cost over one stretch of wall time."""

    start_wall: float
    start_cost: float

    def pct(self, now_wall: float, now_cost: float) -> float:
        wall = now_wall - self.start_wall
        return 100.0 * (now_cost - self.start_cost) / wall if wall > 0 else 0.0


@dataclass
class BudgetController:
    """Picks the on-CPU sampling frequency for the next tick from the cost of the last one."""

    budget_pct: float
    requested_hz: int
    hz: int = 0
    lowest_hz: int = 0
    settle: bool = False  # the tick after a change mixes two rates: not judged

    def __post_init__(self) -> None:
        self.hz = self.lowest_hz = self.requested_hz

    def next_hz(self, cost_pct: float) -> int:
        """The frequency to sample at after a tick that cost `cost_pct` (unchanged: same)."""
        if self.settle:
            self.settle = False
            return self.hz
        if cost_pct > self.budget_pct:
            # cost roughly in proportion to the rate when sampling dominates
            wanted = int(self.hz * AIM * self.budget_pct / cost_pct)
        elif cost_pct < RAISE_BELOW * self.budget_pct and self.hz < self.requested_hz:
            wanted = int(self.hz * RAISE_FACTOR) + 1
        else:
            return self.hz
        wanted = max(MIN_HZ, min(self.requested_hz, wanted))
        if wanted != self.hz:
            self.hz = wanted
            self.lowest_hz = min(self.lowest_hz, wanted)
            self.settle = True
        return self.hz
