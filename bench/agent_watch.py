#!/usr/bin/env python3
"""The agent's watch: what running analyze's inspections every interval costs.

No BPF: interval batches shaped like a busy host's are handed to `Watch.observe` as the agent
hands them (cpu stacks of the interval, cumulative syscall rows that moved, the interval's
syscall ticks), for windows of 30 and 60 intervals and hosts of 10 and 50 processes. Printed
per case: the CPU time of one `observe` (median and 95th percentile over the intervals once
the window is full), that time as a share of one core at the default 10 s interval, and the
ring's size. Run: `PYTHONPATH=src .venv/bin/python bench/agent_watch.py`.
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from otlp_ebpf.collectors.agent import IntervalBatch
from otlp_ebpf.collectors.agent_watch import Watch, WatchConfig
from otlp_ebpf.model import (
    CpuSnapshot,
    ProcessInfo,
    StackCount,
    SyscallsSnapshot,
    SyscallStat,
    SyscallTick,
)

SYSCALLS = [f"sys{i}" for i in range(40)]
STACKS_PER_PROCESS = 40
INTERVALS = 120
INTERVAL_S = 10.0


class Host:
    def __init__(self, processes: int, seed: int = 1) -> None:
        self.rng = np.random.default_rng(seed)
        self.pids = list(range(1000, 1000 + processes))
        self.totals: dict[tuple[int, str], int] = {}
        self.seq = 0
        self.frames = {
            pid: [
                ("main", f"loop{pid % 7}", f"fn{(pid * 31 + k) % 300}", f"leaf{k % 60}")
                for k in range(STACKS_PER_PROCESS)
            ]
            for pid in self.pids
        }

    def next(self) -> tuple[IntervalBatch, list[SyscallTick]]:
        self.seq += 1
        stats, ticks = [], {}
        for pid in self.pids:
            for name in SYSCALLS:
                n = int(self.rng.poisson(50))
                if not n:
                    continue
                total = self.totals.get((pid, name), 0) + n
                self.totals[(pid, name)] = total
                hist = tuple([0] * 10 + [total] + [0] * 21)
                stats.append(SyscallStat(pid, f"p{pid}", name, total, 0, {}, 0, 0, 0, 0, 0, hist))
                count = ticks.get(name, 0) + n
                ticks[name] = count
        stacks = tuple(
            StackCount(pid, pid, f"p{pid}", frames, int(self.rng.poisson(5)) + 1)
            for pid in self.pids
            for frames in self.frames[pid]
        )
        processes = tuple(ProcessInfo(pid, f"p{pid}") for pid in self.pids)
        cpu = CpuSnapshot("", INTERVAL_S, "h", processes=processes, frequency_hz=99, stacks=stacks)
        section = SyscallsSnapshot("", 0.0, "h", processes=processes, syscalls=tuple(stats))
        batch = IntervalBatch(
            seq=self.seq, t_s=self.seq * INTERVAL_S, duration_s=INTERVAL_S,
            sections={"cpu": cpu, "syscalls": section}, events={}, lost={}, bpf_ns=0,
            cpu_s=0.0, rss_kb=0, cost_pct=0.0, rates={},
        )  # fmt: skip
        row = [SyscallTick(name, n, 0, 2000, 4000) for name, n in ticks.items()]
        return batch, row


def measure(window: int, processes: int) -> None:
    watch = Watch(WatchConfig(window=window), INTERVAL_S)
    host = Host(processes)
    started = datetime.now(UTC)
    costs = []
    for _ in range(INTERVALS):
        batch, ticks = host.next()
        t0 = time.process_time()
        watch.observe(batch, ticks, None, 99, started)
        spent = time.process_time() - t0
        if host.seq > window + 5:
            costs.append(spent)
    costs.sort()
    median = statistics.median(costs)
    p95 = costs[int(0.95 * (len(costs) - 1))]
    series = 3 * len(SYSCALLS) + processes + 11
    print(
        f"window {window:3d} intervals, {processes:3d} processes (~{series} series): "
        f"observe {median * 1e3:6.1f} ms median, {p95 * 1e3:6.1f} ms p95 = "
        f"{100 * median / INTERVAL_S:.3f}% of one core at a {INTERVAL_S:g} s interval; "
        f"ring {watch.ring.bytes / 1e6:.1f} MB"
    )


def main() -> None:
    for window in (30, 60):
        for processes in (10, 50):
            measure(window, processes)


if __name__ == "__main__":
    main()
