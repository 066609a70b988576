#!/usr/bin/env python3
"""The agent's watch: what running analyze's inspections every interval costs.

No BPF: interval batches shaped like a busy host's are handed to `Watch.observe` as the agent
hands them (cpu stacks of the interval, cumulative syscall rows that moved, the interval's
syscall ticks), for windows of 30 and 60 intervals and hosts of 10 and 50 processes. Printed
per case: the CPU time of one `observe` (median and 95th percentile over the intervals once
the window is full), that time as a share of one core at the default 10 s interval, and the
ring's size.

Then a churning host (the agent's soak: a shell starting short processes without pause, cpu
sampled at its 1 Hz floor): 40 new processes an interval, each seen in one interval with a
sample or two, over the default window, observed with the detector as it is and with its
shortcuts turned off (`plain_detector`: np.median, every segment's split sought each round,
every series cut, scipy's tests through their decorator, no p-value kept), in the same run:
the ratio is what the shortcuts save. Run: `PYTHONPATH=src .venv/bin/python bench/agent_watch.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from otlp_ebpf.analysis import anomalies
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


class ChurningHost(Host):
    """A few long-lived processes and `churn` new ones an interval, each gone by the next,
    sampled at 1 Hz (the budget's floor) and counted at the requested 99 Hz."""

    def __init__(self, churn: int = 40, seed: int = 2) -> None:
        super().__init__(5, seed)
        self.churn = churn
        self.next_pid = 5000

    def next(self) -> tuple[IntervalBatch, list[SyscallTick]]:
        batch, ticks = super().next()
        cpu = batch.sections["cpu"]
        assert isinstance(cpu, CpuSnapshot)
        born = list(range(self.next_pid, self.next_pid + self.churn))
        self.next_pid += self.churn
        short = tuple(
            StackCount(pid, pid, "sh", ("main", f"fn{pid % 40}"), int(self.rng.integers(1, 3)))
            for pid in born
            if self.rng.random() < 0.6
        )
        long = tuple(dataclasses.replace(s, count=max(1, round(s.count / 20))) for s in cpu.stacks)
        processes = cpu.processes + tuple(ProcessInfo(pid, "sh") for pid in born)
        cpu = dataclasses.replace(cpu, frequency_hz=1, stacks=long + short, processes=processes)
        return dataclasses.replace(batch, sections={**batch.sections, "cpu": cpu}), ticks


@contextlib.contextmanager
def plain_detector() -> Iterator[None]:
    """The detector without its shortcuts (see the module's docstring)."""
    saved = {
        name: getattr(anomalies, name)
        for name in ("_median", "_within_floor", "_direct_tests", "departure_p_value")
    }
    anomalies._median = lambda values: float(np.median(values))  # type: ignore[assignment]
    anomalies._within_floor = lambda values, floor: False  # type: ignore[assignment]
    anomalies._direct_tests = lambda rows, baseline: False  # type: ignore[assignment]
    anomalies.departure_p_value = anomalies._departure_p_value  # type: ignore[assignment]
    saved["change_points"] = anomalies.change_points
    anomalies.change_points = _change_points_every_round  # type: ignore[assignment]
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(anomalies, name, value)


def _change_points_every_round(values: np.ndarray, min_size: int, max_points: int) -> list[int]:
    """change_points seeking the best split of every segment at every round."""
    n = len(values)
    if n < 2 * min_size:
        return []
    first, second, penalty = anomalies.segmentation_costs(values)
    segments, cuts = [(0, n)], []
    while len(cuts) < max_points:
        best = None
        for index, (a, b) in enumerate(segments):
            split = anomalies._best_split(first, second, a, b, min_size)
            if split is not None and split[1] > penalty and (best is None or split[1] > best[0]):
                best = (split[1], index, split[0])
        if best is None:
            break
        _, index, k = best
        a, b = segments[index]
        segments[index : index + 1] = [(a, k), (k, b)]
        cuts.append(k)
    return sorted(cuts)


def observe_costs(host: Host, window: int, intervals: int = INTERVALS) -> tuple[list[float], Watch]:
    """CPU seconds of each `observe` once the window is full."""
    watch = Watch(WatchConfig(window=window), INTERVAL_S)
    started = datetime.now(UTC)
    costs = []
    for _ in range(intervals):
        batch, ticks = host.next()
        t0 = time.process_time()
        watch.observe(batch, ticks, None, 99, started)
        spent = time.process_time() - t0
        if host.seq > window + 5:
            costs.append(spent)
    return sorted(costs), watch


def measure(window: int, processes: int) -> None:
    costs, watch = observe_costs(Host(processes), window)
    median = statistics.median(costs)
    p95 = costs[int(0.95 * (len(costs) - 1))]
    series = 3 * len(SYSCALLS) + processes + 11
    print(
        f"window {window:3d} intervals, {processes:3d} processes (~{series} series): "
        f"observe {median * 1e3:6.1f} ms median, {p95 * 1e3:6.1f} ms p95 = "
        f"{100 * median / INTERVAL_S:.3f}% of one core at a {INTERVAL_S:g} s interval; "
        f"ring {watch.ring.bytes / 1e6:.1f} MB"
    )


def measure_churn(window: int = 30) -> None:
    """The churning host, with the detector's shortcuts and without, alternately (3 runs)."""
    medians: dict[str, list[float]] = {"shortcuts": [], "plain": []}
    for _ in range(3):
        costs, _watch = observe_costs(ChurningHost(), window, window + 20)
        medians["shortcuts"].append(statistics.median(costs))
        with plain_detector():
            costs, _watch = observe_costs(ChurningHost(), window, window + 20)
        medians["plain"].append(statistics.median(costs))
    fast, plain = (statistics.median(medians[k]) for k in ("shortcuts", "plain"))
    ratios = sorted(p / f for p, f in zip(medians["plain"], medians["shortcuts"], strict=True))
    print(
        f"churning host, window {window}: observe {fast * 1e3:.1f} ms median "
        f"({100 * fast / INTERVAL_S:.3f}% of one core at {INTERVAL_S:g} s); without the "
        f"detector's shortcuts {plain * 1e3:.1f} ms: {plain / fast:.2f}x "
        f"(runs: {', '.join(f'{r:.2f}x' for r in ratios)})"
    )


def main() -> None:
    for window in (30, 60):
        for processes in (10, 50):
            measure(window, processes)
    measure_churn()


if __name__ == "__main__":
    main()
