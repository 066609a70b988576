"""A recording's timeline as named series: one value per interval for every syscall, process,
function, connection, drop reason and memory level the rows hold.

Counts become events per second of their row (the last row of a run is usually shorter than
the others, and a count per row would make it look like a drop); levels (outstanding bytes,
smoothed RTT) and percentiles are taken as they are. A series is the unit the anomaly
detector tests, and the names here are what findings, evidence tables and alert rules use.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from otlp_ebpf.model import (
    OTHER_KEY,
    CpuSnapshot,
    IntervalPoint,
    NetSnapshot,
    RecordSnapshot,
    Snapshot,
    SyscallsSnapshot,
    TimelineRow,
)

# How a series' values are read: a rate of events, a level at the end of the row, or a
# latency percentile of the row's calls (absent in a row without calls).
Nature = Literal["rate", "level", "latency"]
# A last row shorter than this share of an interval says too little about a rate (a run that
# ended 50 ms into its last row would turn 3 calls into 60 per second): it is left out.
SHORTEST_ROW_SHARE = 0.5


@dataclass(frozen=True, eq=False)  # identity: numpy arrays inside
class Series:
    """One named quantity over the rows of a window. `values[i]` belongs to the row that
    ends at `ends[i]` and starts at `starts[i]` (seconds from the run's start); NaN where
    the row holds no value (a percentile in a row without calls)."""

    signal: str
    name: str  # what is measured: "calls", "errors", "p99_ns", "samples", "bytes", ...
    labels: dict[str, str]
    nature: Nature
    unit: str  # "1/s", "B/s", "ns", "B", "us", "samples/s", "s/s" (seconds blocked per second)
    starts: np.ndarray
    ends: np.ndarray
    values: np.ndarray

    @property
    def key(self) -> str:
        """`syscalls.errors{syscall=openat}`: unique within a recording."""
        inner = ",".join(f"{k}={v}" for k, v in self.labels.items())
        return f"{self.signal}.{self.name}{{{inner}}}" if inner else f"{self.signal}.{self.name}"


@dataclass(frozen=True)
class Timeline:
    """The rows of a snapshot's window, with what the rows could not say."""

    interval_s: float
    starts: np.ndarray
    ends: np.ndarray
    series: list[Series]
    cpu_hz: int = 0  # samples per second per busy CPU (0: no cpu signal)
    notes: list[str] = field(default_factory=list)


_Key = tuple[str, str, str, str]  # signal, name, label name ("" for none), label value


@dataclass
class _Builder:
    """Collects per-row values under a series key, filling absent rows with a default.
    (Called once per value of every row: a 1-hour recording makes close to a million calls,
    so keys are flat tuples, not label dicts, and columns are `array('d')`, whose item
    assignment costs a fraction of a numpy array's; numpy takes them over without a copy.)"""

    rows: int
    columns: dict[_Key, array[float]] = field(default_factory=dict)
    natures: dict[_Key, tuple[Nature, str]] = field(default_factory=dict)

    def put(
        self,
        key: _Key,
        index: int,
        value: float,
        nature: Nature = "rate",
        unit: str = "1/s",
    ) -> None:
        column = self.columns.get(key)
        if column is None:
            # Rates and levels are 0 in a row that does not mention them; percentiles unknown.
            column = array("d", [math.nan if nature == "latency" else 0.0]) * self.rows
            self.columns[key] = column
            self.natures[key] = (nature, unit)
        if nature == "rate":
            column[index] += value  # a name seen twice in a row (two pids) adds up
        else:
            column[index] = value

    def build(self, starts: np.ndarray, ends: np.ndarray) -> list[Series]:
        out = []
        for key, values in self.columns.items():
            signal, name, label, label_value = key
            nature, unit = self.natures[key]
            labels = {label: label_value} if label else {}
            column = np.frombuffer(values, dtype=float) if len(values) else np.zeros(0)
            out.append(Series(signal, name, labels, nature, unit, starts, ends, column))
        return out


def timeline_of(
    snapshot: Snapshot, since: float | None = None, until: float | None = None
) -> Timeline | None:
    """The series of a snapshot's timeline within [since, until] (seconds from the run's
    start; a row belongs to the window when it ends inside it), or None when the snapshot
    has no rows over time (a single-signal snapshot taken without --interval)."""
    if isinstance(snapshot, RecordSnapshot) and snapshot.timeline:
        return _record_timeline(snapshot, since, until)
    if isinstance(snapshot, SyscallsSnapshot | NetSnapshot) and snapshot.series:
        return _interval_timeline(snapshot, since, until)
    return None


def _window(
    ends_all: Sequence[float], interval: float, since: float | None, until: float | None
) -> list[int]:
    """Indices of the rows kept: inside the window, and not a stub of a last row."""
    kept = []
    previous = 0.0
    for index, end in enumerate(ends_all):
        length = end - previous
        start = previous
        previous = end
        last = index == len(ends_all) - 1
        if last and index > 0 and length < SHORTEST_ROW_SHARE * interval:
            continue
        if since is not None and end <= since:
            continue
        if until is not None and start >= until:
            continue
        kept.append(index)
    return kept


def _bounds(ends_all: Sequence[float], kept: list[int]) -> tuple[np.ndarray, np.ndarray]:
    starts = np.array([ends_all[i - 1] if i > 0 else 0.0 for i in kept], dtype=float)
    ends = np.array([ends_all[i] for i in kept], dtype=float)
    return starts, ends


def _record_timeline(record: RecordSnapshot, since: float | None, until: float | None) -> Timeline:
    ends_all = [row.t_s for row in record.timeline]
    kept = _window(ends_all, record.interval_s, since, until)
    starts, ends = _bounds(ends_all, kept)
    builder = _Builder(len(kept))
    for out_index, row_index in enumerate(kept):
        row = record.timeline[row_index]
        length = max(float(ends[out_index] - starts[out_index]), 1e-9)
        _add_row(builder, out_index, row, length)
    cpu = record.signals.get("cpu")
    hz = cpu.frequency_hz if isinstance(cpu, CpuSnapshot) else 0
    notes = []
    if len(kept) < len(ends_all) and since is None and until is None:
        notes.append(f"last row ({ends_all[-1]:g} s) left out: shorter than half an interval")
    return Timeline(record.interval_s, starts, ends, builder.build(starts, ends), hz, notes)


def _add_row(builder: _Builder, index: int, row: TimelineRow, length: float) -> None:
    per_s = 1.0 / length
    if row.cpu is not None:
        total = 0
        for pid, n in row.cpu.samples.items():
            builder.put(("cpu", "samples", "pid", pid), index, n * per_s, unit="samples/s")
            total += n
        builder.put(("cpu", "samples", "", ""), index, total * per_s, unit="samples/s")
        for function, n in row.cpu.functions.items():
            if function != OTHER_KEY:
                builder.put(
                    ("cpu", "function", "function", function), index, n * per_s, unit="samples/s"
                )
        _add_off_cpu(builder, index, row, per_s)
    if row.syscalls is not None:
        for tick in row.syscalls:
            builder.put(("syscalls", "calls", "syscall", tick.name), index, tick.count * per_s)
            builder.put(("syscalls", "errors", "syscall", tick.name), index, tick.errors * per_s)
            if tick.count:
                builder.put(
                    ("syscalls", "p99_ns", "syscall", tick.name),
                    index,
                    tick.p99_ns,
                    "latency",
                    "ns",
                )
    if row.net is not None:
        _add_net(builder, index, row, per_s)
    if row.mem is not None:
        mem = row.mem
        builder.put(
            ("mem", "outstanding_bytes", "", ""), index, mem.outstanding_bytes, "level", "B"
        )
        builder.put(("mem", "allocations", "", ""), index, mem.allocations * per_s)
        builder.put(("mem", "page_faults", "", ""), index, mem.page_faults * per_s)


def _add_off_cpu(builder: _Builder, index: int, row: TimelineRow, per_s: float) -> None:
    """Blocked time (`record --off-cpu`) as seconds blocked per second of the row: the
    number of the process's threads blocked on average (8 threads waiting for one lock
    all the time: 7 s/s)."""
    assert row.cpu is not None
    per_s_in_s = per_s / 1e9
    for pid, ns in row.cpu.off_cpu_ns.items():
        builder.put(("cpu", "off_cpu", "pid", pid), index, ns * per_s_in_s, unit="s/s")
    for site, ns in row.cpu.blocked_ns.items():
        if site != OTHER_KEY:
            builder.put(("cpu", "blocked", "site", site), index, ns * per_s_in_s, unit="s/s")


def _add_net(builder: _Builder, index: int, row: TimelineRow, per_s: float) -> None:
    assert row.net is not None
    retransmits = resets = 0
    for conn in row.net.connections:
        moved = (conn.tx_bytes + conn.rx_bytes) * per_s
        builder.put(("net", "bytes", "connection", conn.label), index, moved, unit="B/s")
        if conn.label != OTHER_KEY:
            builder.put(
                ("net", "retransmits", "connection", conn.label), index, conn.retransmits * per_s
            )
            builder.put(("net", "resets", "connection", conn.label), index, conn.resets * per_s)
        retransmits += conn.retransmits
        resets += conn.resets
    builder.put(("net", "retransmits", "", ""), index, retransmits * per_s)
    builder.put(("net", "resets", "", ""), index, resets * per_s)
    for reason, n in row.net.drops.items():
        builder.put(("net", "drops", "reason", reason), index, n * per_s)


def _interval_timeline(
    snapshot: SyscallsSnapshot | NetSnapshot, since: float | None, until: float | None
) -> Timeline:
    """`--interval` series of a single-signal snapshot: calls per syscall, or bytes per
    connection (what those series hold)."""
    points: Sequence[IntervalPoint] = snapshot.series
    ends_all = [p.t_s for p in points]
    interval = snapshot.interval_s or (ends_all[0] if ends_all else 1.0)
    kept = _window(ends_all, interval, since, until)
    starts, ends = _bounds(ends_all, kept)
    builder = _Builder(len(kept))
    put: Callable[[int, str, float], None]
    if isinstance(snapshot, SyscallsSnapshot):

        def put(i: int, key: str, per_s: float) -> None:
            builder.put(("syscalls", "calls", "syscall", key), i, per_s)

    else:

        def put(i: int, key: str, per_s: float) -> None:
            builder.put(("net", "bytes", "connection", key), i, per_s, unit="B/s")

    for out_index, row_index in enumerate(kept):
        length = max(float(ends[out_index] - starts[out_index]), 1e-9)
        for key, n in points[row_index].values.items():
            put(out_index, key, n / length)
    return Timeline(interval, starts, ends, builder.build(starts, ends))


def rows_between(timeline: Timeline, start_s: float, end_s: float) -> Iterable[int]:
    """Indices of the rows that overlap [start_s, end_s]."""
    for index in range(len(timeline.ends)):
        if timeline.ends[index] > start_s and timeline.starts[index] < end_s:
            yield index
