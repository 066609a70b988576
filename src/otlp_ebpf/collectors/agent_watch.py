"""The agent's watch: analyze's inspections every interval over a ring of recent intervals,
new findings told once, a burst of full-rate sampling after each, and a recording of the
window around it written to `--recordings-dir` (a flight recorder).

The ring keeps the last `window + record_after + 1` intervals (and at most RING_MAX_BYTES of
them): each one's timeline row (cpu samples per process and per leaf function, syscalls per
name, as `record` keeps them), its cpu section (the interval's symbolized stacks) and the
cumulative syscall rows that moved in it. Every interval the last `window` of them become a
`record` snapshot in the agent's own time, which `analysis.analyze` reads as it reads a
recording (nothing of the analysis is redone here); `analysis.watch.Episodes` says which of
its findings are new.

cpu samples are counted at the rate in force in each interval (a budget lowers it, a burst
raises it); the ring holds them scaled to the requested rate, as weighted estimates, so a
change of rate is not taken for a change of the workload.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from otlp_ebpf import console, hosttext
from otlp_ebpf.analysis.analyze import analyze
from otlp_ebpf.analysis.anomalies import DetectorSettings
from otlp_ebpf.analysis.watch import (
    Episodes,
    FindingEvent,
    WatchCounts,
    finding_key,
    severity_of,
)
from otlp_ebpf.collectors.agent_burst import (
    DEFAULT_BURST_BUDGET_PCT,
    DEFAULT_BURST_INTERVALS,
    Burst,
)
from otlp_ebpf.collectors.agent_recordings import DEFAULT_RECORDINGS_MAX_MB, RecordingsDir
from otlp_ebpf.collectors.base import process_alive
from otlp_ebpf.collectors.budget import PeriodController
from otlp_ebpf.collectors.record import TOP_FUNCTIONS, top_with_other
from otlp_ebpf.errors import OtlpEbpfError
from otlp_ebpf.latency import percentile_ns
from otlp_ebpf.model import (
    OTHER_KEY,
    CpuSnapshot,
    CpuTick,
    ProcessInfo,
    RecordSnapshot,
    Snapshot,
    StackCount,
    SyscallsSnapshot,
    SyscallStat,
    SyscallTick,
    TimelineRow,
)

if TYPE_CHECKING:
    from otlp_ebpf.collectors.budget import Governor

DEFAULT_WINDOW = 30
DEFAULT_RECORD_AFTER = 3
RING_MAX_BYTES = 64 * 1024 * 1024
# The detector needs a baseline and an anomaly of a few rows each before it says anything.
MIN_ROWS = DetectorSettings.baseline_min_rows + DetectorSettings.min_rows
# Cumulative syscall rows of intervals that left the ring, kept to take differences from:
# bounded like the agent's other per-process state on a churning host.
MAX_BASE_ROWS = 65536
STAT_BYTES = 800  # a cumulative syscall row with its latency histogram, measured
WATCH_SHARE = 0.1  # of the budget: what the inspections may cost on average
SyscallKey = tuple[int, str, str]


@dataclass(frozen=True)
class WatchConfig:
    window: int = DEFAULT_WINDOW  # intervals analyzed every interval; 0: no watch
    record_after: int = DEFAULT_RECORD_AFTER  # intervals after a finding in its recording
    burst_budget_pct: float = DEFAULT_BURST_BUDGET_PCT
    burst_intervals: int = DEFAULT_BURST_INTERVALS
    recordings_dir: str | None = None
    recordings_max_mb: float = DEFAULT_RECORDINGS_MAX_MB
    ring_max_bytes: int = RING_MAX_BYTES


class IntervalBatch(Protocol):
    """What the watch reads of an interval's batch (collectors/agent.py builds it)."""

    @property
    def seq(self) -> int: ...
    @property
    def t_s(self) -> float: ...
    @property
    def duration_s(self) -> float: ...
    @property
    def sections(self) -> Mapping[str, Snapshot]: ...
    @property
    def final(self) -> bool: ...


@dataclass(frozen=True)
class RingEntry:
    """One interval as the ring keeps it (times in seconds from the agent's start)."""

    seq: int
    t_s: float
    duration_s: float
    samples: Mapping[str, int] | None  # per pid, at the requested rate; None: no cpu signal
    functions: Mapping[str, int]  # per leaf function, at the requested rate
    syscalls: tuple[SyscallTick, ...] | None  # None: no syscalls signal
    cpu: CpuSnapshot | None
    cpu_scale: float  # requested rate / the rate in force
    stats: tuple[SyscallStat, ...]  # cumulative rows that moved in the interval
    processes: tuple[ProcessInfo, ...]
    size: int  # bytes, estimated
    syscalls_sampled: bool = False  # counted by duty-cycled probes (estimates) in the interval

    @property
    def start_s(self) -> float:
        return self.t_s - self.duration_s


def entry_of(
    batch: IntervalBatch,
    ticks: Sequence[SyscallTick] | None,
    requested_hz: int,
    syscalls_sampled: bool = False,
) -> RingEntry:
    """The ring's copy of one interval's batch."""
    cpu = batch.sections.get("cpu")
    cpu = cpu if isinstance(cpu, CpuSnapshot) else None
    syscalls = batch.sections.get("syscalls")
    stats = syscalls.syscalls if isinstance(syscalls, SyscallsSnapshot) else ()
    scale = requested_hz / cpu.frequency_hz if cpu is not None and cpu.frequency_hz else 1.0
    samples: Counter[str] | None = None
    functions: Counter[str] = Counter()
    if cpu is not None:
        samples = Counter()
        for stack in cpu.stacks:
            samples[str(stack.pid)] += stack.count
            functions[stack.frames[-1] if stack.frames else OTHER_KEY] += stack.count
    processes = {p.pid: p for s in batch.sections.values() for p in s.processes}
    return RingEntry(
        seq=batch.seq,
        t_s=batch.t_s,
        duration_s=batch.duration_s,
        samples=_scaled(samples, scale) if samples is not None else None,
        functions=_scaled(functions, scale),
        syscalls=tuple(ticks) if ticks is not None else None,
        cpu=cpu,
        cpu_scale=scale,
        stats=tuple(stats),
        processes=tuple(processes.values()),
        size=_size_of(cpu, stats, functions, ticks),
        syscalls_sampled=syscalls_sampled,
    )


def _scaled(counts: Mapping[str, int], scale: float) -> dict[str, int]:
    if scale == 1.0:
        return dict(counts)
    return {k: round(n * scale) for k, n in counts.items()}


def _size_of(
    cpu: CpuSnapshot | None,
    stats: Sequence[SyscallStat],
    functions: Mapping[str, int],
    ticks: Sequence[SyscallTick] | None,
) -> int:
    """A cheap estimate of what an entry holds (frames are shared strings, mostly)."""
    size = 512 + STAT_BYTES * len(stats) + 100 * len(functions) + 100 * len(ticks or ())
    if cpu is not None:
        size += sum(120 + 8 * len(s.frames) for s in cpu.stacks)
    return size


class IntervalRing:
    """The last intervals, bounded by count and by bytes (oldest dropped first)."""

    def __init__(self, max_intervals: int, max_bytes: int = RING_MAX_BYTES) -> None:
        self.max_intervals = max(1, max_intervals)
        self.max_bytes = max_bytes
        self.entries: deque[RingEntry] = deque()
        self.bytes = 0
        self.dropped = 0
        # The cumulative syscall rows as of the start of the oldest entry.
        self.base: dict[SyscallKey, SyscallStat] = {}
        self._in_ring: dict[SyscallKey, int] = {}  # rows of each series in the entries

    def __len__(self) -> int:
        return len(self.entries)

    def push(self, entry: RingEntry) -> None:
        self.entries.append(entry)
        self.bytes += entry.size
        for stat in entry.stats:
            self._count((stat.pid, stat.comm, stat.name), 1)
        while len(self.entries) > self.max_intervals or (
            self.bytes > self.max_bytes and len(self.entries) > 1
        ):
            self._drop_oldest()

    def resize(self, max_intervals: int) -> None:
        """Keep at most `max_intervals` from now on (the oldest dropped at once)."""
        self.max_intervals = max(1, max_intervals)
        while len(self.entries) > self.max_intervals:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        old = self.entries.popleft()
        self.bytes -= old.size
        self.dropped += 1
        alive: dict[int, bool] = {0: True}  # pid 0: the rows folded by name go on moving
        for stat in old.stats:
            key = (stat.pid, stat.comm, stat.name)
            self._count(key, -1)
            self.base.pop(key, None)  # re-inserted last: the dict's order is its age
            # A row is the base of the next row of its series: one of a process that is gone
            # is kept only while a later row of it is still in the ring.
            if stat.pid not in alive:
                alive[stat.pid] = process_alive(stat.pid)
            if alive[stat.pid] or key in self._in_ring:
                self.base[key] = stat
        while len(self.base) > MAX_BASE_ROWS:
            del self.base[next(iter(self.base))]

    def _count(self, key: SyscallKey, change: int) -> None:
        left = self._in_ring.get(key, 0) + change
        if left > 0:
            self._in_ring[key] = left
        else:
            self._in_ring.pop(key, None)

    def last(self, n: int) -> tuple[list[RingEntry], RingEntry | None]:
        """The newest `n` entries, oldest first, and the one before them (None: none)."""
        entries = list(self.entries)
        first = max(0, len(entries) - n)
        return entries[first:], entries[first - 1] if first > 0 else None

    def base_before(self, first: RingEntry) -> dict[SyscallKey, SyscallStat]:
        """Cumulative syscall rows as of the start of `first` (an entry of the ring), for the
        keys of the entries from it on."""
        earlier: dict[SyscallKey, SyscallStat] = {}
        for entry in self.entries:
            if entry is first:
                break
            for stat in entry.stats:
                earlier[(stat.pid, stat.comm, stat.name)] = stat
        return earlier


# ---------------------------------------------------------------- a window as a recording


def stat_delta(now: SyscallStat, before: SyscallStat | None) -> SyscallStat:
    """One (pid, syscall)'s calls between two cumulative rows (before None: since the start)."""
    if before is None:
        return now
    hist = tuple(a - b for a, b in zip(now.hist, before.hist, strict=False))
    errno = {k: n - before.errno.get(k, 0) for k, n in now.errno.items()}
    top = max((i for i, n in enumerate(hist) if n), default=-1)
    return dataclasses.replace(
        now,
        count=now.count - before.count,
        errors=now.errors - before.errors,
        errno={k: n for k, n in errno.items() if n > 0},
        total_ns=now.total_ns - before.total_ns,
        p50_ns=percentile_ns(hist, 0.50, 0, 0),
        p99_ns=percentile_ns(hist, 0.99, 0, 0),
        # the cumulative maximum, unless the window's calls all sit in lower slots
        max_ns=min(now.max_ns, (1 << (top + 1)) - 1) if top >= 0 else 0,
        min_ns=0,
        hist=hist,
    )


def window_syscalls(
    entries: Sequence[RingEntry],
    base: Mapping[SyscallKey, SyscallStat],
    template: Snapshot,
    errors_only: bool = False,
) -> SyscallsSnapshot:
    """The syscalls of the window's intervals: the newest cumulative row of each series
    minus the one it had when the window began. `errors_only`: only the series with errors
    (all the inspections read of the section is the errno breakdown; the rest would cost
    half of the watch's time on a host of thousands of series)."""
    latest: dict[SyscallKey, SyscallStat] = {}
    for entry in entries:
        for stat in entry.stats:
            if stat.errors or not errors_only:
                latest[(stat.pid, stat.comm, stat.name)] = stat
    rows = [stat_delta(stat, base.get(key)) for key, stat in latest.items()]
    rows = [s for s in rows if s.count > 0]
    rows.sort(key=lambda s: (-s.count, s.pid, s.name))
    return SyscallsSnapshot(
        started_at=template.started_at,
        duration_s=template.duration_s,
        host=template.host,
        targets=template.targets,
        processes=_processes(entries),
        syscalls=tuple(rows),
    )


def _processes(entries: Iterable[RingEntry]) -> tuple[ProcessInfo, ...]:
    seen: dict[int, ProcessInfo] = {}
    for entry in entries:
        for info in entry.processes:
            seen[info.pid] = info
    return tuple(seen[p] for p in sorted(seen))


def _merged_stacks(entries: Iterable[RingEntry]) -> tuple[StackCount, ...]:
    """The window's cpu stacks, each interval's counts scaled to the requested rate."""
    merged: dict[tuple[int, int, str, tuple[str, ...]], StackCount] = {}
    for entry in entries:
        if entry.cpu is None:
            continue
        for s in entry.cpu.stacks:
            key = (s.pid, s.tid, s.comm, s.frames)
            n = round(s.count * entry.cpu_scale)
            old = merged.get(key)
            merged[key] = dataclasses.replace(s, count=n + (old.count if old else 0))
    stacks = [s for s in merged.values() if s.count > 0]
    stacks.sort(key=lambda s: (-s.count, s.pid, s.frames))
    return tuple(stacks)


@dataclass(frozen=True)
class WindowSpec:
    """How a window becomes a snapshot: its time origin (seconds from the agent's start
    that become 0), the agent's start, the interval and the requested cpu rate."""

    origin_s: float
    started_wall: datetime
    interval_s: float
    cpu_hz: int
    host: str = ""
    targets: tuple[str, ...] = ()


def window_record(
    entries: Sequence[RingEntry],
    spec: WindowSpec,
    base: Mapping[SyscallKey, SyscallStat],
    *,
    boundary: RingEntry | None = None,
    stacks: bool = False,
    notes: Sequence[str] = (),
) -> RecordSnapshot:
    """The entries as a `record` snapshot, times from `spec.origin_s`. `boundary`, the
    interval before them, adds a row that only marks where the first one starts (analyze
    leaves it out with `since`); `stacks` merges the cpu stacks and keeps every syscall
    series (for a recording on disk; the inspections need only the rows and the errno
    breakdown)."""
    keep = _top_functions(entries)
    rows = []
    for entry in ([boundary] if boundary is not None else []) + list(entries):
        cpu = None
        if entry.samples is not None:
            cpu = CpuTick(dict(entry.samples), top_with_other(entry.functions, keep))
        rows.append(
            TimelineRow(round(entry.t_s - spec.origin_s, 3), cpu=cpu, syscalls=entry.syscalls)
        )
    started = spec.started_wall + timedelta(seconds=spec.origin_s)
    started_at = started.isoformat(timespec="milliseconds")
    duration = round(entries[-1].t_s - spec.origin_s, 3) if entries else 0.0
    host, targets = spec.host, spec.targets
    signals: dict[str, Snapshot] = {}
    if any(e.samples is not None for e in entries):
        merged = _merged_stacks(entries) if stacks else ()
        signals["cpu"] = CpuSnapshot(
            started_at,
            duration,
            host,
            targets,
            processes=_processes(entries),
            frequency_hz=spec.cpu_hz,
            samples_total=sum(s.count for s in merged),
            stacks=merged,
        )
    if any(e.syscalls is not None for e in entries):
        template = RecordSnapshot(started_at, duration, host, targets)
        signals["syscalls"] = window_syscalls(entries, base, template, errors_only=not stacks)
    return RecordSnapshot(
        started_at,
        duration,
        host,
        targets,
        processes=_processes(entries),
        notes=tuple(notes),
        signals=signals,
        interval_s=spec.interval_s,
        timeline=tuple(rows),
    )


def _top_functions(entries: Iterable[RingEntry]) -> list[str]:
    """The window's busiest leaf functions, as `record` keeps them for its whole run."""
    overall: Counter[str] = Counter()
    for entry in entries:
        overall.update(entry.functions)
    return [name for name, _ in overall.most_common(TOP_FUNCTIONS) if name != OTHER_KEY]


# ---------------------------------------------------------------- the watch

# Symptoms that duty-cycled syscall probes make up: while the per-call programs are attached
# for a share of the time, a row's calls are an estimate that can miss a quiet loop for a
# while ("calls fell to nothing"), and latency is kept only for calls seen whole in one
# window (the p99 jumps when a burst attaches them throughout). Errors rising stay findings.
SAMPLING_ARTIFACTS = frozenset({"fewer_calls", "syscall_latency"})


def syscalls_sampled(governor: Governor | None) -> bool:
    """The syscalls' probes are duty-cycled now (a budget knob of theirs above period 1)."""
    if governor is None:
        return False
    return any(
        knob.rate_key.startswith("syscalls")
        and isinstance(knob.owner, PeriodController)
        and knob.owner.period > 1
        for knob in governor.knobs
    )


class _Overlay(Mapping[SyscallKey, SyscallStat]):
    """`first` over `second` without copying `second` (up to MAX_BASE_ROWS rows)."""

    def __init__(
        self, first: Mapping[SyscallKey, SyscallStat], second: Mapping[SyscallKey, SyscallStat]
    ) -> None:
        self.first, self.second = first, second

    def __getitem__(self, key: SyscallKey) -> SyscallStat:
        found = self.first.get(key)
        return found if found is not None else self.second[key]

    def __iter__(self) -> Iterator[SyscallKey]:
        yield from self.first
        yield from (k for k in self.second if k not in self.first)

    def __len__(self) -> int:
        return len(set(self.first) | set(self.second))


def inspection_stride(
    spent_s: float, governor: Governor | None, interval_s: float, window: int
) -> int:
    """Every how many intervals to inspect so that the inspections take at most
    WATCH_SHARE of the budget on average (1: every interval; without a budget, always 1).
    The inspections' cost grows with the series in the window (a churning host brings
    hundreds of processes) and no sampling rate lowers it; inspecting every few intervals
    instead of each one delays a finding by as many intervals. At most a third of the
    window, and at most half of the rows where the detector can see a fault begin (after a
    baseline, with rows of its own left after it): every fault is inspected at least twice
    while it can be found, even when its first row holds only part of it."""
    if governor is None or not governor.budget_pct or interval_s <= 0:
        return 1
    allowed_s = governor.budget_pct / 100 * interval_s * WATCH_SHARE
    longest = min(window // 3, (window - MIN_ROWS) // 2)
    return max(1, min(math.ceil(spent_s / allowed_s), longest))


@dataclass
class PendingRecording:
    path: str
    into: RecordingsDir  # the directory it was announced in (a reload may change it)
    due_seq: int  # written at the end of this interval
    events: list[FindingEvent] = field(default_factory=list)


class Watch:
    """`observe` every interval's batch: returns it with the findings that are new."""

    def __init__(self, config: WatchConfig, interval_s: float) -> None:
        self.config = config
        self.interval_s = interval_s
        self.ring = IntervalRing(config.window + config.record_after + 1, config.ring_max_bytes)
        self.episodes = Episodes(config.window)
        self.burst = Burst(config.burst_budget_pct, config.burst_intervals)
        self.recordings = (
            RecordingsDir(config.recordings_dir, int(config.recordings_max_mb * 1024 * 1024))
            if config.recordings_dir
            else None
        )
        self.pending: PendingRecording | None = None
        self.counts = WatchCounts()
        self._sampled_before = False
        self.stride = 1  # inspect every `stride` intervals (the budget's share, see below)
        self.skipped = 0  # intervals not inspected to keep under it
        self._next_inspection = 0

    def reconfigure(
        self, config: WatchConfig, recordings: RecordingsDir | None, governor: Governor | None
    ) -> None:
        """New watch options (SIGHUP), in force from the next interval: the intervals in the
        ring and the open episodes are kept (a shorter ring drops its oldest), a burst under
        way answers to the new burst options, and a recording already announced is written
        where its findings said (`recordings`: the new directory, created by the caller)."""
        self.config = config
        self.ring.resize(config.window + config.record_after + 1)
        self.episodes.quiet = max(1, config.window)
        self.burst.reconfigure(config.burst_budget_pct, config.burst_intervals, governor)
        self.recordings = recordings

    def observe(
        self,
        batch: IntervalBatch,
        ticks: Sequence[SyscallTick] | None,
        governor: Governor | None,
        requested_hz: int,
        started_wall: datetime,
    ) -> list[FindingEvent]:
        """Keep the interval, inspect the window; the findings that are new in it."""
        sampled_now = syscalls_sampled(governor)
        # the rates at the end of the last interval were in force when this one started
        sampled = sampled_now or self._sampled_before
        self._sampled_before = sampled_now
        self.ring.push(entry_of(batch, ticks, requested_hz, sampled))
        if self.burst.tick(governor):
            console.status("agent: burst over, sampling under --budget again")
        events: list[FindingEvent] = []
        if len(self.ring) > MIN_ROWS and self.config.window > 0:
            if batch.seq >= self._next_inspection:
                events = self._inspect_guarded(batch, governor, requested_hz, started_wall)
            else:
                self.skipped += 1
        if self.pending is not None and (batch.seq >= self.pending.due_seq or batch.final):
            self._write(self.pending, requested_hz, started_wall, batch)
            self.pending = None
        return events

    def _inspect_guarded(
        self,
        batch: IntervalBatch,
        governor: Governor | None,
        requested_hz: int,
        started_wall: datetime,
    ) -> list[FindingEvent]:
        """Inspect now and set when next (under a budget, maybe not every interval)."""
        events: list[FindingEvent] = []
        try:
            events = self._inspect(batch, governor, requested_hz, started_wall)
        except Exception as exc:  # collection and export go on without the watch's word
            self.counts.analysis_errors += 1
            if self.counts.analysis_errors == 1:
                console.warn(f"agent: the watch could not inspect interval {batch.seq}: {exc}")
        self.stride = inspection_stride(
            self.counts.last_analysis_s, governor, self.interval_s, self.config.window
        )
        self._next_inspection = batch.seq + self.stride
        return events

    def _spec(
        self, origin_s: float, hz: int, started: datetime, batch: IntervalBatch
    ) -> WindowSpec:
        first = next(iter(batch.sections.values()), None)
        host = first.host if first is not None else ""
        targets = first.targets if first is not None else ()
        return WindowSpec(origin_s, started, self.interval_s, hz, host, targets)

    def _inspect(
        self,
        batch: IntervalBatch,
        governor: Governor | None,
        requested_hz: int,
        started_wall: datetime,
    ) -> list[FindingEvent]:
        cpu0 = time.process_time()
        entries, boundary = self.ring.last(self.config.window)
        base = _Overlay(self.ring.base_before(entries[0]), self.ring.base)
        spec = self._spec(0.0, requested_hz, started_wall, batch)
        snapshot = window_record(entries, spec, base, boundary=boundary)
        since = boundary.t_s if boundary is not None else None
        findings = analyze(snapshot, since=since).findings
        if any(e.syscalls_sampled for e in entries):
            kept = [f for f in findings if f.kind not in SAMPLING_ARTIFACTS]
            self.counts.sampling_artifacts += len(findings) - len(kept)
            findings = kept
        repeats = self.episodes.repeats
        new = self.episodes.see(findings, batch.seq)
        self.counts.repeats += self.episodes.repeats - repeats
        spent = time.process_time() - cpu0
        self.counts.analysis_s += spent
        self.counts.last_analysis_s = spent
        if not new:
            return []
        started_ns = int(started_wall.timestamp() * 1e9)
        events = []
        for finding in new:
            event = FindingEvent(
                finding=finding,
                key=finding_key(finding),
                severity=severity_of(finding),
                seq=batch.seq,
                start_s=finding.start_s,
                end_s=finding.end_s,
                started_unix_ns=started_ns,
                recording=self._schedule(batch.seq, started_wall, batch.t_s),
            )
            self.counts.findings[(event.kind, event.severity)] += 1
            console.status(
                f"agent: finding ({event.severity}, {event.kind}): "
                f"{hosttext.escape_controls(finding.summary)}"
            )
            events.append(event)
        if self.pending is not None:
            self.pending.events.extend(events)
        self._raise_fidelity(governor)
        return events

    def _raise_fidelity(self, governor: Governor | None) -> None:
        started = not self.burst.active
        if not self.burst.start(governor):
            return
        if started:
            self.counts.bursts += 1
            console.status(
                f"agent: sampling at full rate for {self.burst.intervals} intervals "
                f"(--burst-budget {self.burst.budget_pct:g}%)"
            )

    def _schedule(self, seq: int, started_wall: datetime, t_s: float) -> str:
        """The recording that will hold this finding's window: the pending one if a
        recording is already due (one file for findings close together), else a new one
        written `record_after` intervals from now."""
        if self.recordings is None:
            return ""
        if self.pending is None:
            when = started_wall + timedelta(seconds=t_s)
            path = self.recordings.path_for(when, seq)
            self.pending = PendingRecording(path, self.recordings, seq + self.config.record_after)
        return self.pending.path

    def _write(
        self,
        pending: PendingRecording,
        requested_hz: int,
        started_wall: datetime,
        batch: IntervalBatch,
    ) -> None:
        entries, _ = self.ring.last(self.config.window + self.config.record_after)
        origin = entries[0].start_s
        base = _Overlay(self.ring.base_before(entries[0]), self.ring.base)
        notes = [
            f"recorded by otlp-ebpf agent: intervals {entries[0].seq}-{entries[-1].seq} "
            f"({origin:g}-{entries[-1].t_s:g} s after the agent started) around "
            + "; ".join(f"{e.kind} at {e.start_s:g}-{e.end_s:g} s" for e in pending.events)
        ]
        notes.append(
            "a finding that keeps firing (or a finding about the same subject while it is "
            "open) is one episode: told once, recorded once"
        )
        if batch.final and batch.seq < pending.due_seq:
            notes.append("the agent stopped before every interval after the finding was in")
        spec = self._spec(origin, requested_hz, started_wall, batch)
        snapshot = window_record(entries, spec, base, stacks=True, notes=notes)
        try:
            pending.into.write(pending.path, snapshot)
        except (OSError, OtlpEbpfError) as exc:
            self.counts.recording_errors += 1
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            console.warn(f"agent: recording {pending.path} not written: {reason or exc}")
            return
        self.counts.recordings += 1
        console.status(
            f"agent: recording of {origin:g}-{entries[-1].t_s:g} s written to {pending.path}"
        )
