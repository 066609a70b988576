"""The signals of `record` as the agent runs them: each tick takes what the kernel aggregated
since the last one and keeps nothing of it, so memory stays flat however long the agent runs
and however many processes and connections come and go.

- cpu: the interval's samples, named as they are taken out of the sampler (which then forgets
  their stacks and the processes it no longer unwinds);
- syscalls: the cumulative rows since the start, and record's per-name tick (the watch reads
  it; the agent clears it after each interval); the collector folds exited processes' rows
  into a bounded table;
- net: closed connections taken out of the collector each tick and folded into one
  cumulative row per process and peer, forgotten once the process is gone and the row sent;
- mem: the outstanding allocations read while attached (bounded by the kernel's table) and
  the allocation and free counters.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Mapping

from otlp_ebpf.collectors import base
from otlp_ebpf.collectors.budget import CYCLE_S
from otlp_ebpf.collectors.record import (
    CpuSignal,
    MemSignal,
    NetSignal,
    RecordConfig,
    Signal,
    SyscallsSignal,
)
from otlp_ebpf.model import Connection, MemSnapshot, NetSnapshot, ProcessInfo, StackCount

# (pid, comm, family, remote address, remote port): one cumulative row of closed connections
PeerKey = tuple[int, str, int, str, int]
MAX_FOLDED_PEERS = 4096  # rows of closed connections kept (the oldest go first)
EXITED_KEPT_BY_PID = 64  # exited processes whose syscall rows keep their pid (then: by name)
# Of the budget: what the unwind-table decoder may always use on average. It also gets what
# the rest of the agent leaves unspent (`fund_decoder`), so its decodes fit in the budget
# whenever the rest does; this much goes on even when it does not, so that tables still come.
DECODER_FLOOR_SHARE = 0.05
# What the rest of the agent spent over the budget is taken from what it leaves next, up to
# this many seconds of the budget: it spends unevenly (an interval's export and inspections
# land in one second of ten), and its cheap seconds alone would overstate the room.
SLACK_MEMORY_S = 10.0
# Of the budget: loading new binaries' symbols (the files beyond it wait in a queue, their
# frames named module+offset meanwhile).
SYMBOLS_SHARE = 0.1
AGENT_WAITING_BYTES = 2 * 1024 * 1024  # of copied stacks waiting for a table (~125 samples)
# The syscall programs' duty cycle in the agent: each window's attach and detach cost ~0.5 ms
# of CPU, 0.4% of a core at record's 8 a second, where the agent's budget is 1% in all. An
# interval of 10 s still holds 10 windows, and its counters add up over the run.
AGENT_CYCLE_S = 1.0
WINDOWS_PER_INTERVAL = 10  # at least, when the interval is short (but never above record's rate)


def duty_cycle_s(interval_s: float) -> float:
    """The agent's duty cycle for `interval_s`: AGENT_CYCLE_S, shorter for short intervals
    (each interval's estimate rests on its own windows; with none in it, the watch would see
    a row's calls jump between nothing and N times as many), never shorter than record's."""
    return min(AGENT_CYCLE_S, max(CYCLE_S, interval_s / WINDOWS_PER_INTERVAL))


class AgentCpuSignal(CpuSignal):
    """On-CPU samples, taken out of the sampler every tick."""

    def __init__(self, config: RecordConfig, targets: base.Targets) -> None:
        # DWARF sampling throughout: the budget lowers its rate but does not switch the agent
        # to frame pointers (their sampler keeps counts for the whole run, not per interval).
        super().__init__(dataclasses.replace(config, budget_pct=None), targets)
        from otlp_ebpf.collectors.cpu_dwarf import CpuDwarfSampler

        assert isinstance(self.sampler, CpuDwarfSampler)  # the agent's config always gives it
        self.dwarf = self.sampler
        worker = self.dwarf.sampler.cfi.worker
        if worker is not None:  # tables decoded with CPU the workload does not want
            worker.idle = True
        self.limit_decoder(config.budget_pct)
        # Tables come slowly from a decoder held to the budget: fewer samples wait for them
        # (each holds its stack copy and keeps its exited process's maps until then).
        self.dwarf.sampler.max_waiting_bytes = AGENT_WAITING_BYTES
        self.ticked = False  # the first interval has ended
        self.slack_s = 0.0  # the rest's spending over the budget not yet made up (<= 0)
        self.interval: list[StackCount] = []
        self.infos: dict[int, ProcessInfo] = {}

    def limit_decoder(self, budget_pct: float | None) -> None:
        """Hold the unwind-table decoder to DECODER_FLOOR_SHARE of the budget plus what the
        rest leaves (`fund_decoder`), and symbol loading to SYMBOLS_SHARE (no limit without a
        budget): no sampling rate lowers the work done once per new binary, and a binary of
        tens of MB costs a minute of CPU."""
        self.budget_pct = budget_pct or 0.0
        sampler = self.dwarf.sampler
        worker = sampler.cfi.worker
        if worker is not None:
            worker.allowance.pct = DECODER_FLOOR_SHARE * self.budget_pct
        sampler.symbolizer.load_allowance.pct = SYMBOLS_SHARE * self.budget_pct

    def fund_decoder(self, slack_s: float, wall_s: float) -> None:
        """The budget's `slack_s` CPU seconds that the rest of the agent left unspent over
        `wall_s` (below zero: spent over it) go to the decoder, beyond what its floor share
        earned meanwhile: over time the agent with its decodes holds the budget as long as
        the rest does."""
        worker = self.dwarf.sampler.cfi.worker
        if worker is None or not worker.allowance.pct:
            return
        floor_s = worker.allowance.pct / 100 * wall_s
        owed_at_most_s = self.budget_pct / 100 * SLACK_MEMORY_S
        self.slack_s = max(-owed_at_most_s, self.slack_s + slack_s - floor_s)
        if self.slack_s > 0:
            worker.allowance.deposit(self.slack_s)
            self.slack_s = 0.0

    def deferred(self) -> tuple[int, int]:
        """New binaries whose symbols were queued under the budget so far, and how many of
        them left the queue for room before they were loaded."""
        symbolizer = self.dwarf.sampler.symbolizer
        return symbolizer.deferred_files, symbolizer.deferred_dropped

    def cache_marks(self) -> dict[str, int]:
        """Sizes of the sampler's caches of binaries and stacks now (see `trim_caches`)."""
        return self.dwarf.sampler.cache_marks()

    def trim_caches(self, marks: dict[str, int]) -> int:
        """Shrink those caches back to `marks`; returns the entries dropped."""
        return self.dwarf.sampler.trim_caches(marks)

    def start(self) -> None:
        self.sampler.start(self.targets)  # no raw counts: they would keep every stack's key

    def tick(self) -> None:
        self.interval, self.infos = self.dwarf.take_stacks()
        if not self.ticked:
            self.ticked = True
            self._end_decoder_startup()

    def _end_decoder_startup(self) -> None:
        """The decoder starts with credit for the binaries met at start (PACE_AHEAD_S):
        what is left of it when the first interval ends lapses, and from then on (the
        steady state) it decodes with what it is given, within the budget."""
        worker = self.dwarf.sampler.cfi.worker
        if worker is not None and worker.allowance.pct:
            worker.allowance.lapse()


class AgentSyscallsSignal(SyscallsSignal):
    """Syscall rows, read by the agent once per tick. An exited process keeps its pid only
    if an interval already showed it (`shown`, the agent's to update), and then only the
    EXITED_KEPT_BY_PID most recent: a process that lived within one interval is folded per
    command name at once, as `syscalls` folds its oldest. On a churning host those are
    nearly all of them, and each one kept by pid would cost a row per syscall in every
    interval's export and in the watch's ring."""

    def __init__(self, config: RecordConfig, targets: base.Targets) -> None:
        from otlp_ebpf.collectors.syscalls import ExitedProcesses

        super().__init__(config, targets)
        self.collector.cycle_s = duty_cycle_s(config.interval_s)
        self.shown: set[int] = set()
        self.collector.exited = ExitedProcesses(EXITED_KEPT_BY_PID, self.shown.__contains__)

    def tick(self) -> None:
        # The agent reads the rows again right after (the series that moved, for export):
        # one read of the kernel's table serves both.
        self._record(self._totals(self.collector.read_rows_to_reuse()))


class AgentNetSignal(NetSignal):
    """TCP connections: closed ones folded per process and peer, open ones read each tick."""

    def __init__(self, config: RecordConfig, targets: base.Targets) -> None:
        super().__init__(config, targets)
        self.folded: OrderedDict[PeerKey, Connection] = OrderedDict()
        self.moved: set[PeerKey] = set()
        self.closed_in_interval = 0

    def tick(self) -> None:
        c = self.collector
        c.drain()
        closed, c.closed = c.closed, []
        self.closed_in_interval = len(closed)
        for conn in closed:
            self._fold(conn)

    def _fold(self, conn: Connection) -> None:
        key = (conn.pid, conn.comm, conn.family, conn.raddr, conn.rport)
        known = self.folded.pop(key, None)
        if known is None:
            # state "" marks a fold of closed connections, not one connection (not counted by
            # state in OTLP)
            known = dataclasses.replace(conn, lport=0, state="", open=False, srtt_us=0.0)
            known = dataclasses.replace(known, tx_bytes=0, rx_bytes=0, retransmits=0)
            known = dataclasses.replace(known, resets_sent=0, resets_received=0)
        self.folded[key] = dataclasses.replace(
            known,
            tx_bytes=known.tx_bytes + conn.tx_bytes,
            rx_bytes=known.rx_bytes + conn.rx_bytes,
            retransmits=known.retransmits + conn.retransmits,
            resets_sent=known.resets_sent + conn.resets_sent,
            resets_received=known.resets_received + conn.resets_received,
            duration_ms=known.duration_ms + conn.duration_ms,
        )
        self.moved.add(key)
        while len(self.folded) > MAX_FOLDED_PEERS:
            self.folded.popitem(last=False)

    def section(self, clock: base.RunClock) -> NetSnapshot:
        """Cumulative since the agent started: the folded rows that moved in this interval and
        every open connection. A folded row of a process that is gone is sent this once more,
        then forgotten."""
        from otlp_ebpf.collectors.net import (
            COUNTER_RESETS_RECEIVED,
            COUNTER_RESETS_SENT,
            resets_summary,
        )

        c = self.collector
        still_open = c.open_connections()
        moved = [self.folded[k] for k in self.moved if k in self.folded]
        self.moved = set()
        for key in [k for k in self.folded if not base.process_alive(k[0])]:
            del self.folded[key]
        connections = sorted(
            [*moved, *still_open], key=lambda x: (x.pid, x.raddr, x.rport, x.lport)
        )
        pids = sorted({x.pid for x in connections if x.pid})
        return NetSnapshot(
            started_at=clock.started_at,
            duration_s=round(clock.elapsed(), 3),
            host=base.hostname(),
            targets=self.config.targets.describe(),
            lost_events=c.lost(),
            processes=tuple(p for pid in pids if (p := base.read_process_info(pid))),
            connections=tuple(connections),
            retransmits=sum(x.retransmits for x in connections),
            resets=resets_summary(
                self.config,
                connections,
                c.counter(COUNTER_RESETS_SENT),
                c.counter(COUNTER_RESETS_RECEIVED),
            ),
            drops=c.drops(),
        )


class AgentMemSignal(MemSignal):
    """Outstanding allocations, read while attached each tick; no page faults (their table
    would fill with the stacks of every process that ever faulted)."""

    def __init__(self, config: RecordConfig, targets: base.Targets) -> None:
        from otlp_ebpf.collectors.mem import MemCollector, MemConfig

        self.config = MemConfig(targets=config.targets, duration_s=None, page_faults=False)
        self.collector = MemCollector(self.config, targets)
        self._last = (0, 0, 0, 0)
        self.rows = []
        self.raw = None
        self.bpf = (0, 0)
        self.allocations_before = 0
        self.allocations_in_interval = 0

    def tick(self) -> None:
        pass  # read by `section`, once per tick

    def section(self, clock: base.RunClock) -> MemSnapshot:
        """Outstanding allocations now, allocations and frees since the agent started."""
        from otlp_ebpf.collectors.mem import build_snapshot, read_result

        c = self.collector
        if not c.kernel_mode:
            c.remember_targets()
        assert c.obj is not None
        raw = read_result(c)
        bpf = base.program_cost(c.obj, c.obj.program_names())
        self.allocations_in_interval = raw.allocations - self.allocations_before
        self.allocations_before = raw.allocations
        return build_snapshot(c, clock, clock.elapsed(), "running", raw, bpf)


AGENT_SIGNAL_TYPES: Mapping[str, Callable[[RecordConfig, base.Targets], Signal]] = {
    "cpu": AgentCpuSignal,
    "syscalls": AgentSyscallsSignal,
    "net": AgentNetSignal,
    "mem": AgentMemSignal,
}
