"""`agent`: the record engine run open-ended, handing over one batch of snapshots per interval.

The signals, their shared targets, the poll loop and the overhead budget are those of
`record` (collectors/record.py); what differs is what a tick leaves behind. Every interval the
agent turns what the kernel aggregated into snapshots for export and forgets its own
per-interval history, so its memory stays flat however long it runs:

- cpu: the samples of this interval alone (the change of the in-kernel counts since the last
  tick), symbolized now, as a `CpuSnapshot` covering the interval;
- syscalls: the cumulative counts, errors and latency histograms since the agent started
  (OTLP cumulative points: a receiver takes the difference, and a lost batch loses nothing),
  of the series that changed in the interval;
- net: per process and peer, the bytes, retransmits and resets since the agent started of
  the connections closed (folded, see collectors/agent_signals.py) and of those open;
- mem: the outstanding allocations by stack now, allocations and frees since the start.

What each signal keeps between ticks is in collectors/agent_signals.py.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from otlp_ebpf import console
from otlp_ebpf.collectors import base
from otlp_ebpf.collectors.agent_signals import (
    AGENT_SIGNAL_TYPES,
    AgentCpuSignal,
    AgentMemSignal,
    AgentNetSignal,
    AgentSyscallsSignal,
)
from otlp_ebpf.collectors.budget import CONTROL_S, BudgetController
from otlp_ebpf.collectors.cgroup_targets import CgroupTargets
from otlp_ebpf.collectors.containers import ProcessAttributes
from otlp_ebpf.collectors.record import (
    POLL_S,
    RecordConfig,
    Recording,
    Signal,
    missing_tracepoints,
    plan_signals,
)
from otlp_ebpf.errors import UsageError
from otlp_ebpf.model import (
    CpuSnapshot,
    MemSnapshot,
    NetSnapshot,
    Snapshot,
    SyscallsSnapshot,
    SyscallTick,
)
from otlp_ebpf.runtime import stats
from otlp_ebpf.runtime.heap import freeze_long_lived
from otlp_ebpf.targets import TargetSpec

if TYPE_CHECKING:
    from otlp_ebpf.analysis.watch import FindingEvent
    from otlp_ebpf.collectors.agent_watch import Watch

AGENT_SIGNALS = ("cpu", "syscalls", "net", "mem")
DEFAULT_SIGNALS = ("cpu", "syscalls")
DEFAULT_INTERVAL_S = 10.0
DEFAULT_BUDGET_PCT = 1.0
# Every this many intervals the allocator's free pages go back to the system: each interval
# frees what it built (stacks, rows, encoded requests), and glibc keeps freed pages in the
# middle of its heap otherwise (a few ms each time, ~0.01% of a core at 10 s intervals).
RELEASE_EVERY = 6
# The loop's wait between two looks at the signals. Samples and exits wake it as they come;
# what runs at each turn regardless (the decoder's queue, maps recorded at exit, the other
# rings) was a fifth of the agent's CPU at record's 50 ms on a churning host. The mem signal
# keeps record's (a target paused at its exit waits at most that long).
AGENT_POLL_S = 0.25
# How often the budget reads the cost and may change the rates (record: 4 times a second).
# Each look reads every program's run time and the helpers' CPU, ~0.4 ms; at intervals of
# seconds, a rate settled a second later costs less than looking four times as often.
AGENT_CONTROL_S = 1.0


def control_period_s(interval_s: float) -> float:
    """How often the budget decides: AGENT_CONTROL_S, but four times an interval at least
    (and never more often than record's): a finding in a short interval sees rates the
    budget set for it."""
    return min(AGENT_CONTROL_S, max(CONTROL_S, interval_s / 4))


@dataclass(frozen=True)
class AgentConfig:
    """What `otlp-ebpf agent` collects and how often it hands a batch over."""

    targets: TargetSpec = field(default_factory=TargetSpec)
    interval_s: float = DEFAULT_INTERVAL_S
    signals: tuple[str, ...] = DEFAULT_SIGNALS
    frequency_hz: int = 99
    budget_pct: float | None = DEFAULT_BUDGET_PCT
    cgroup: str | None = None  # a cgroup directory whose membership is followed (--cgroup)


def parse_agent_signals(text: str) -> tuple[str, ...]:
    """`cpu,syscalls` -> the signals in canonical order; UsageError for one the agent lacks."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError(f"--signals: give one or more of {','.join(AGENT_SIGNALS)}")
    for name in names:
        if name not in AGENT_SIGNALS:
            raise UsageError(
                f"--signals: the agent cannot run {name!r}; it runs {','.join(AGENT_SIGNALS)}"
            )
    return tuple(s for s in AGENT_SIGNALS if s in names)


@dataclass(frozen=True)
class IntervalBatch:
    """One interval's export and the agent's own figures at its end (cumulative unless named
    per interval)."""

    seq: int  # 1, 2, ...: intervals since the agent started
    t_s: float  # end of the interval, seconds from the start
    duration_s: float  # of this interval
    sections: Mapping[str, Snapshot]
    events: Mapping[str, int]  # per signal, in this interval
    lost: Mapping[str, int]  # per signal, since the start
    bpf_ns: int
    cpu_s: float  # this process and its helpers, since the start
    rss_kb: int
    cost_pct: float  # this interval's cost, % of one core (BPF included)
    rates: Mapping[str, float]  # effective sampling rates at the end of the interval
    # container.id, k8s.pod.uid, service.name ... of each process in the sections
    process_attributes: Mapping[int, Mapping[str, str]] = field(default_factory=dict)
    helpers_rss_kb: int = 0  # the helper processes' (the unwind-table decoder), apart
    final: bool = False
    # per kind of work held to a share of the budget (symbols of new binaries): how many
    # were queued so far, and how many of those left the queue for room unloaded
    deferred: Mapping[str, int] = field(default_factory=dict)
    deferred_dropped: Mapping[str, int] = field(default_factory=dict)
    findings: tuple[FindingEvent, ...] = ()  # new in this interval (collectors/agent_watch.py)


class Agent:
    """Turns each tick of a recording into an `IntervalBatch` and hands it to `deliver`."""

    def __init__(
        self,
        recording: Recording,
        clock: base.RunClock,
        deliver: Callable[[IntervalBatch], None],
        watch: Watch | None = None,
    ) -> None:
        self.recording = recording
        self.watch = watch
        self.clock = clock
        self.deliver = deliver
        self.seq = 0
        self.last_t = 0.0
        self.started_wall = datetime.now(UTC)
        self.attributes = ProcessAttributes()
        self._sent_counts: dict[tuple[int, str, str], int] = {}
        # The sizes of the cpu sampler's caches when the burst under way started: they are
        # trimmed back to them when it ends (None: no burst under way).
        self._pre_burst_marks: dict[str, int] | None = None
        self.caches_trimmed = 0  # cache entries dropped at the end of bursts

    def tick(self, elapsed: float, final: bool = False) -> None:
        self.recording.tick(elapsed)
        sections: dict[str, Snapshot] = {}
        events: dict[str, int] = {}
        syscall_ticks: list[SyscallTick] | None = None
        for signal in self.recording.signals:
            if isinstance(signal, AgentCpuSignal):
                sections["cpu"] = self._cpu_interval(signal, elapsed)
                events["cpu"] = sum(s.count for s in signal.interval)
            elif isinstance(signal, AgentSyscallsSignal):
                sections["syscalls"] = self._syscalls_so_far(signal)
                syscall_ticks = signal.rows[-1] if signal.rows else []
                events["syscalls"] = sum(t.count for t in syscall_ticks)
            elif isinstance(signal, AgentNetSignal):
                sections["net"] = signal.section(self.clock)
                events["net"] = signal.closed_in_interval
            elif isinstance(signal, AgentMemSignal):
                sections["mem"] = signal.section(self.clock)
                events["mem"] = signal.allocations_in_interval
        cost = self.recording.costs[-1] if self.recording.costs else None
        deferred, deferred_dropped = self._deferred()
        self.seq += 1
        batch = IntervalBatch(
            seq=self.seq,
            t_s=round(elapsed, 3),
            duration_s=round(elapsed - self.last_t, 3),
            sections=sections,
            events=events,
            lost={name: sum(s.lost_events.values()) for name, s in sections.items()},
            bpf_ns=self.recording.bpf_ns(),
            cpu_s=round(self._cpu_s(), 4),
            rss_kb=current_rss_kb(),
            helpers_rss_kb=self._helpers_rss_kb(),
            cost_pct=cost.cost_pct if cost else 0.0,
            rates=self._rates(cost.rates if cost else {}),
            process_attributes=self.attributes.of(_pids_of(sections.values())),
            final=final,
            deferred=deferred,
            deferred_dropped=deferred_dropped,
        )
        self.last_t = elapsed
        if self.watch is not None:
            batch = self._watched(batch, syscall_ticks)
        if final:
            self._burst_ended()  # a burst under way ends with the agent
        self._forget_history()
        self.deliver(batch)
        if self.seq % RELEASE_EVERY == 0:
            from otlp_ebpf.runtime import heap

            heap.release_free_memory(collect=False)

    def _deferred(self) -> tuple[dict[str, int], dict[str, int]]:
        """Work queued under the budget so far, and dropped from its queue, by kind."""
        cpu = self.recording.cpu_signal()
        if not isinstance(cpu, AgentCpuSignal):
            return {}, {}
        queued, dropped = cpu.deferred()
        return {"symbols": queued}, {"symbols": dropped}

    def _cpu_s(self) -> float:
        """CPU seconds of this process and its helpers since the start, the helpers' counted
        while they run (the cost meter follows them), not only once they ended."""
        meter = self.recording.meter
        if meter is not None:
            return meter.cpu_s() - self.clock.cpu0
        helpers = sum(s.helper_cpu_s() for s in self.recording.signals)
        return stats.process_cpu_seconds() - self.clock.cpu0 + helpers

    def _helpers_rss_kb(self) -> int:
        """Resident memory of this process's helpers now: its children but the targets it
        launched."""
        from otlp_ebpf.collectors.budget import children_of

        launched = set(self.recording.launched())
        return sum(process_rss_kb(pid) for pid in children_of(os.getpid()) - launched)

    def _watched(
        self, batch: IntervalBatch, syscall_ticks: list[SyscallTick] | None
    ) -> IntervalBatch:
        """The batch with the findings the watch found new in it (and the watch's burst and
        recordings under way)."""
        assert self.watch is not None
        cpu = self.recording.cpu_signal()
        findings = self.watch.observe(
            batch,
            syscall_ticks,
            self.recording.governor,
            cpu.config.frequency_hz if cpu is not None else 0,
            self.started_wall,
        )
        self.follow_burst()
        return dataclasses.replace(batch, findings=tuple(findings)) if findings else batch

    def follow_burst(self) -> None:
        """Take the marks when a burst has started, trim when it has ended, however it ended:
        its last interval (`observe`), a reload that cut it short or replaced the watch.
        Called after every interval and every poll (where reloads are applied). Whether a
        burst is under way is the agent's own record (the marks), not a look at the watch
        before and after one call: a burst ended between two looks was never trimmed."""
        bursting = self.watch is not None and self.watch.burst.active
        if bursting and self._pre_burst_marks is None:
            self._burst_started()
        elif not bursting and self._pre_burst_marks is not None:
            self._burst_ended()

    def _burst_started(self) -> None:
        """Note the size of the caches a burst fills (new binaries' symbol and unwind tables,
        named stacks), to give back what it added when it ends."""
        cpu = self.recording.cpu_signal()
        # empty marks without a DWARF sampler still record that a burst is under way
        self._pre_burst_marks = cpu.cache_marks() if isinstance(cpu, AgentCpuSignal) else {}

    def _burst_ended(self) -> None:
        """Trim the caches back to their size before the burst and return the freed memory to
        the system: a burst met more binaries and stacks than the steady state needs, and
        with caps far above that, its memory otherwise stayed for good (RSS stepped up by
        5-30 MB at each burst)."""
        from otlp_ebpf.runtime import heap

        marks, self._pre_burst_marks = self._pre_burst_marks, None
        cpu = self.recording.cpu_signal()
        if marks is None or not isinstance(cpu, AgentCpuSignal):
            return
        before = current_rss_kb()
        dropped = cpu.trim_caches(marks)
        self.caches_trimmed += dropped
        heap.release_free_memory()
        console.debug(
            f"agent: burst over: {dropped} cache entries trimmed, RSS "
            f"{before / 1024:.1f} -> {current_rss_kb() / 1024:.1f} MB"
        )

    def set_budget(self, pct: float | None) -> None:
        """A new overhead budget from now on (SIGHUP); None or 0 samples at the asked rate."""
        recording = self.recording
        cpu = recording.cpu_signal()
        if cpu is None:
            return
        if isinstance(cpu, AgentCpuSignal):
            cpu.limit_decoder(pct)
        if not pct:
            if recording.controller is not None:
                cpu.set_frequency(recording.controller.requested_hz)
            recording.controller = None
        elif recording.controller is not None:
            recording.controller.budget_pct = pct
        else:
            recording.controller = BudgetController(pct, cpu.config.frequency_hz)

    def _rates(self, measured: Mapping[str, float]) -> dict[str, float]:
        """Sampling rates now: the budget's when it set one, else the rate asked for."""
        rates = {k: float(v) for k, v in measured.items() if k.endswith("_duty")}
        cpu = self.recording.cpu_signal()
        if cpu is not None:
            rates["cpu_hz"] = float(measured.get("cpu_hz", cpu.config.frequency_hz))
        return rates

    def _cpu_interval(self, signal: AgentCpuSignal, elapsed: float) -> CpuSnapshot:
        stacks = sorted(signal.interval, key=lambda s: (-s.count, s.pid, s.frames))
        started = self.started_wall + timedelta(seconds=self.last_t)
        hz = (
            self.recording.controller.hz
            if self.recording.controller
            else signal.config.frequency_hz
        )
        infos = signal.infos
        return CpuSnapshot(
            started_at=started.isoformat(timespec="milliseconds"),
            duration_s=round(elapsed - self.last_t, 3),
            host=base.hostname(),
            targets=signal.config.targets.describe(),
            lost_events=signal.targets.losses(),
            processes=tuple(infos[p] for p in sorted(infos)),
            frequency_hz=hz,
            samples_total=sum(s.count for s in stacks),
            stacks=tuple(stacks),
        )

    def _syscalls_so_far(self, signal: AgentSyscallsSignal) -> Snapshot:
        """The rows that moved since the last batch (cumulative since the start)."""
        from otlp_ebpf.collectors.syscalls import build_snapshot

        collector = signal.collector
        # Only the series that moved: an exited process's rows are sent once, not at every
        # interval after (a churning host would otherwise re-send hundreds of dead processes),
        # and the rows that did not move are not even made.
        counts: dict[tuple[int, str, str], int] = {}
        sent = self._sent_counts

        def moved_since_sent(pid: int, comm: str, name: str, count: int) -> bool:
            counts[(pid, comm, name)] = count
            return sent.get((pid, comm, name)) != count

        moved = collector.stats(moved_since_sent)
        self._sent_counts = counts
        signal.shown.clear()  # the set the collector's ExitedProcesses reads
        signal.shown.update(pid for pid, _, _ in counts if pid)
        section = build_snapshot(collector, self.clock, "running", moved)
        return signal._without_probe_calls(section)

    def _forget_history(self) -> None:
        """What `record` keeps for its timeline, the agent has already handed over."""
        for signal in self.recording.signals:
            if isinstance(signal, AgentSyscallsSignal):
                signal.rows.clear()
        self.recording.tick_times.clear()
        del self.recording.costs[:-1]


def _pids_of(sections: Iterable[Snapshot]) -> list[int]:
    """The processes a batch describes (the ones its resources are made for)."""
    pids: set[int] = set()
    for section in sections:
        pids.update(p.pid for p in section.processes)
        if isinstance(section, CpuSnapshot):
            pids.update(s.pid for s in section.stacks)
        elif isinstance(section, SyscallsSnapshot):
            pids.update(s.pid for s in section.syscalls)
        elif isinstance(section, NetSnapshot):
            pids.update(c.pid for c in section.connections)
        elif isinstance(section, MemSnapshot):
            pids.update(a.pid for a in section.outstanding)
    return sorted(p for p in pids if p > 0)


def current_rss_kb() -> int:
    """Resident set size now (VmRSS), not the peak: the figure that must stay flat."""
    return process_rss_kb("self")


def process_rss_kb(pid: int | str) -> int:
    """VmRSS of a process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def run(
    config: AgentConfig,
    deliver: Callable[[IntervalBatch], None],
    on_ready: Callable[[], None] = lambda: None,
    on_poll: Callable[[Agent], None] = lambda agent: None,
    watch: Watch | None = None,
) -> int:
    """Collect until SIGINT/SIGTERM (or every --pid target exited), handing a batch to
    `deliver` every interval and a final one for the interval cut short. Every program, link
    and perf event of the agent is gone when it returns. The number of batches handed over."""
    base.require_privileges("agent")
    record_config = RecordConfig(
        targets=config.targets,
        duration_s=None,
        interval_s=config.interval_s,
        signals=config.signals,
        signals_given=True,
        frequency_hz=config.frequency_hz,
        budget_pct=config.budget_pct,
    )
    chosen, _ = plan_signals(
        config.signals, True, missing_tracepoints(config.signals, config.targets)
    )
    record_config = dataclasses.replace(record_config, signals=chosen)
    targets = (
        CgroupTargets(config.targets, config.cgroup)
        if config.cgroup
        else base.Targets(config.targets)
    )
    signals: list[Signal] = []
    try:
        for name in chosen:
            signals.append(AGENT_SIGNAL_TYPES[name](record_config, targets))
    except BaseException:
        targets.abandon()
        base.cleanup()
        raise
    recording = Recording(record_config, targets, signals, {})
    try:
        return _loop(recording, deliver, on_ready, on_poll, watch)
    finally:
        for signal in signals:
            signal.close()


def _polling(agent: Agent, on_poll: Callable[[Agent], None]) -> Callable[[float], None]:
    """The recording's poll, the cgroup's new members added (--cgroup), then `on_poll` (the
    health check sees the loop turn; a reload asked by SIGHUP is applied here, between two
    polls, so no interval is cut), then the burst's end looked for (a reload can end it)."""

    targets = agent.recording.targets

    def poll(timeout_s: float) -> None:
        agent.recording.poll(timeout_s)
        if isinstance(targets, CgroupTargets):
            targets.refresh()
        on_poll(agent)
        agent.follow_burst()  # a reload may have ended the burst under way

    return poll


def _loop(
    recording: Recording,
    deliver: Callable[[IntervalBatch], None],
    on_ready: Callable[[], None],
    on_poll: Callable[[Agent], None],
    watch: Watch | None = None,
) -> int:
    config = recording.config
    with base.session(recording.targets, recording.start) as session:
        agent = Agent(recording, session.clock, deliver, watch)
        try:
            if recording.governor is not None:
                recording.governor.control_s = control_period_s(config.interval_s)
                recording.governor.window_s = config.interval_s
                cpu = recording.cpu_signal()
                if isinstance(cpu, AgentCpuSignal):
                    recording.governor.on_slack = cpu.fund_decoder
            recording.begin_loop()
            freeze_long_lived()
            on_ready()
            ended = base.run_loop(
                recording.targets,
                _polling(agent, on_poll),
                duration_s=None,
                interval_s=config.interval_s,
                on_interval=agent.tick,
                clock=session.clock,
                stop=session.stop,
                poll_s=POLL_S if "mem" in config.signals else AGENT_POLL_S,
            )
            console.status(f"agent: stopping ({ended}); flushing the current interval")
            t0 = time.monotonic()
            agent.tick(session.clock.elapsed(), final=True)
            console.debug(f"agent: last interval read in {time.monotonic() - t0:.2f} s")
        finally:
            for signal in recording.signals:
                signal.stop()
    return agent.seq
