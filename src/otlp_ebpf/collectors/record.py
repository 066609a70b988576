"""`record`: the collectors of several signals on one target, one poll loop, one timeline.

Every chosen signal's collector is built on one shared `Targets` (one filter, one held command)
and attached before the command is released; one loop polls them all, and every `interval_s`
each signal turns the change of its in-kernel aggregates since the previous tick into a
timeline entry (nothing is symbolized while recording: cpu keeps raw stack keys, named once
at the end). When the run ends, each signal builds exactly the snapshot its own command
builds, and the last timeline row is the difference between those sections and the previous
tick, so the rows add up to the sections' totals.
"""

from __future__ import annotations

import dataclasses
import platform
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from otlp_ebpf import console
from otlp_ebpf.collectors import base
from otlp_ebpf.collectors.budget import (
    BudgetController,
    CostMeter,
    Governor,
    Knob,
    cpu_budget_note,
    cpu_knob,
)
from otlp_ebpf.errors import EnvironmentLacks, UsageError
from otlp_ebpf.latency import percentile_ns
from otlp_ebpf.model import (
    KERNEL_SUFFIX,
    OTHER_KEY,
    SIGNALS,
    Connection,
    ConnTick,
    CostTick,
    CpuSnapshot,
    CpuTick,
    MemTick,
    NetTick,
    ProcessInfo,
    RecordSnapshot,
    SelfCost,
    Snapshot,
    SyscallsSnapshot,
    SyscallTick,
    TimelineRow,
    is_kernel_frame,
)
from otlp_ebpf.runtime import features
from otlp_ebpf.targets import TargetSpec

if TYPE_CHECKING:
    from otlp_ebpf.collectors.syscalls import _Row as SyscallRow

DEFAULT_INTERVAL_S = 1.0
TOP_FUNCTIONS = 10
TOP_CONNECTIONS = 20
POLL_S = 0.05  # a launched target paused at exit (mem) waits at most this long
PAGE_FAULT_TRACEPOINT = ("exceptions", "page_fault_user")
# Fast reads first, so the counts end close to the run's end; cpu symbolizes (the slow part).
FINISH_ORDER = ("syscalls", "net", "mem", "cpu")
RawStack = tuple[Any, ...]
# The syscalls a uprobe's trampoline makes (uretprobe, uprobe on x86_64 since 6.11): with mem's
# probes in the same run they are the tool's doing, not the target's.
PROBE_SYSCALLS = {"x86_64": (335, 336)}  # a cpu sampler's stack key, pid first (collectors/cpu.py)


@dataclass(frozen=True)
class RecordConfig:
    """What `otlp-ebpf record` was asked to do. `signals_given` is False when the user left
    --signals at its default (then a signal this kernel cannot record is skipped, not fatal)."""

    targets: TargetSpec = field(default_factory=TargetSpec)
    duration_s: float | None = None
    interval_s: float = DEFAULT_INTERVAL_S
    signals: tuple[str, ...] = SIGNALS
    signals_given: bool = False
    frequency_hz: int = 99
    budget_pct: float | None = None
    off_cpu: bool = False  # cpu: blocked time by stack too, per tick (`record --off-cpu`)


def parse_signals(text: str) -> tuple[str, ...]:
    """`cpu,net` -> ("cpu", "net") in the canonical order; UsageError naming an unknown one."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError(f"--signals: give one or more of {','.join(SIGNALS)}")
    unknown = [n for n in names if n not in SIGNALS]
    if unknown:
        raise UsageError(
            f"--signals: unknown signal {unknown[0]!r}; known signals: {','.join(SIGNALS)}"
        )
    return tuple(s for s in SIGNALS if s in names)


def check_interval(interval_s: float, duration_s: float | None) -> None:
    if not interval_s > 0:
        raise UsageError(f"--interval must be a positive number of seconds, got {interval_s:g}")
    if duration_s is not None and interval_s > duration_s:
        raise UsageError(
            f"--interval {interval_s:g} s is longer than --duration {duration_s:g} s: "
            "the timeline would have no full interval"
        )


def required_tracepoints(signal: str, targets: TargetSpec) -> list[tuple[str, str]]:
    """The tracepoints a signal cannot run without on this kind of target."""
    if signal == "syscalls":
        return [("raw_syscalls", "sys_enter"), ("raw_syscalls", "sys_exit")]
    if signal == "net":
        from otlp_ebpf.collectors.net import PROGRAMS, REQUIRED

        return [PROGRAMS[p] for p in REQUIRED]
    if signal == "mem" and not (targets.pids or targets.tid or targets.command):
        from otlp_ebpf.collectors.mem import KMEM_TRACEPOINTS

        return [("kmem", tp) for tp in KMEM_TRACEPOINTS]
    if signal == "cpu":
        return [("sched", "sched_process_exec"), ("sched", "sched_process_exit")]
    return []


def missing_tracepoints(signals: Sequence[str], targets: TargetSpec) -> dict[str, list[str]]:
    """Per signal, the required tracepoints this kernel lacks (signals lacking none left out)."""
    out: dict[str, list[str]] = {}
    for signal in signals:
        missing = [
            f"{c}/{n}"
            for c, n in required_tracepoints(signal, targets)
            if not features.tracepoint_exists(c, n)
        ]
        if missing:
            out[signal] = missing
    return out


def plan_signals(
    signals: Sequence[str], given: bool, missing: Mapping[str, Sequence[str]]
) -> tuple[tuple[str, ...], dict[str, str]]:
    """The signals to run and those skipped (name -> why). A signal the user asked for by
    name that cannot run is an environment failure (exit 3); with the default set the rest
    run."""
    blocked = {s: f"no {', '.join(missing[s])} tracepoint" for s in signals if missing.get(s)}
    if blocked and given:
        what = "; ".join(f"{s}: {why}" for s, why in blocked.items())
        raise EnvironmentLacks(
            f"cannot record {', '.join(blocked)}: {what}",
            hint="leave those out of --signals; `otlp-ebpf doctor` lists what this kernel offers",
        )
    run = tuple(s for s in signals if s not in blocked)
    if not run:
        raise EnvironmentLacks(
            "no signal can be recorded here: "
            + "; ".join(f"{s}: {why}" for s, why in blocked.items()),
            hint="`otlp-ebpf doctor` lists what this kernel offers",
        )
    return run, blocked


class Signal(Protocol):
    """One signal inside a recording."""

    name: str

    def start(self) -> None: ...

    def poll(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for events; False when this signal has nothing to wait on."""
        ...

    def tick(self) -> None: ...

    def stop(self) -> None: ...

    def finish(self, run: base.Session, duration: float, ended: str) -> Snapshot: ...

    def ticks(self, section: Snapshot) -> list[object]: ...

    def helper_cpu_s(self) -> float: ...

    def bpf_ns(self) -> int:
        """Run time of this signal's BPF programs so far (the traced processes pay it)."""
        ...

    def budget_knobs(self, budget_pct: float) -> list[Knob]:
        """What an overhead budget may turn down in this signal (cpu's rate is the
        recording's own knob)."""
        ...

    def budget_notes(self) -> tuple[str, ...]:
        """What the budget did to this signal's fidelity."""
        ...

    def close(self) -> None: ...


def _delta(now: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in now.items() if n != before.get(k, 0)}


def top_with_other(values: Mapping[str, int], keep: Sequence[str]) -> dict[str, int]:
    """`values` restricted to `keep`, everything else summed under OTHER_KEY."""
    out = {k: values[k] for k in keep if values.get(k)}
    rest = sum(n for k, n in values.items() if k not in out)
    if rest:
        out[OTHER_KEY] = rest
    return out


# A kernel frame naming the system call a blocked thread waits in: `__x64_sys_futex_[k]`.
_SYSCALL_FRAME = re.compile(
    r"^(?:__x64_sys|__ia32_sys|__arm64_sys|__se_sys|__do_sys)_(\w+?)_\[k\]$"
)
# Kernel frames of the scheduler itself: every blocked stack ends in them, they say nothing
# of why it blocked.
_SCHEDULER_FRAMES = ("schedule", "__schedule", "preempt_schedule", "schedule_")


def blocked_site(frames: Sequence[str]) -> str:
    """Where a blocked stack waited, as a timeline key: the innermost user frame (the code
    that made the waiting call: `__lll_lock_wait`) and the system call it waited in, as
    `__lll_lock_wait (futex)`; a kernel-only stack is named by its innermost kernel frame
    below the scheduler's."""
    user = [f for f in frames if not is_kernel_frame(f)]
    kernel = [f for f in frames if is_kernel_frame(f)]
    syscall = next((m.group(1) for f in kernel if (m := _SYSCALL_FRAME.match(f))), "")
    if user:
        return f"{user[-1]} ({syscall})" if syscall else user[-1]
    waiting = [f for f in kernel if not f.removesuffix(KERNEL_SUFFIX).startswith(_SCHEDULER_FRAMES)]
    return waiting[-1] if waiting else (kernel[-1] if kernel else OTHER_KEY)


class CpuSignal:
    """On-CPU samples: the cpu command's sampler; per tick, samples per raw stack key (and,
    with off-CPU recording, blocked nanoseconds per raw stack key)."""

    name = "cpu"

    def __init__(self, config: RecordConfig, targets: base.Targets) -> None:
        from otlp_ebpf.collectors.cpu import check_config, pick_sampler
        from otlp_ebpf.collectors.cpu_sampling import CpuConfig
        from otlp_ebpf.symbolize.resolver import Symbolizer

        self.config = CpuConfig(
            targets=config.targets,
            duration_s=config.duration_s,
            frequency_hz=config.frequency_hz,
            off_cpu=config.off_cpu,
            budget_pct=config.budget_pct,  # DWARF sampling may fall back to frame pointers
        )
        check_config(self.config)
        self.targets = targets
        self.symbolizer = Symbolizer()
        self.sampler = pick_sampler(self.config, self.symbolizer)
        self._last: dict[RawStack, int] = {}
        self.deltas: list[dict[RawStack, int]] = []
        self.frames: dict[RawStack, tuple[str, ...]] = {}
        self._last_blocked: dict[RawStack, int] = {}
        self.blocked_deltas: list[dict[RawStack, int]] = []
        self.blocked_frames: dict[RawStack, tuple[str, ...]] = {}

    def start(self) -> None:
        self.sampler.start(self.targets)
        self._last = self.sampler.raw_counts()  # from here on the sampler keeps raw keys
        self._last_blocked = self.sampler.raw_blocked()

    def poll(self, timeout_s: float) -> bool:
        self.sampler.poll(timeout_s)
        return True

    def tick(self) -> None:
        counts = self.sampler.raw_counts()
        delta = {k: n - self._last.get(k, 0) for k, n in counts.items()}
        self.deltas.append({k: n for k, n in delta.items() if n})
        self._last = dict(counts)
        if self.config.off_cpu:
            blocked = self.sampler.raw_blocked()
            # A block in progress counts up to each tick; one whose thread exited while
            # blocked vanishes from the kernel's table (no negative time).
            moved = {k: n - self._last_blocked.get(k, 0) for k, n in blocked.items()}
            self.blocked_deltas.append({k: n for k, n in moved.items() if n > 0})
            self._last_blocked = blocked

    def stop(self) -> None:
        self.sampler.stop()

    def finish(self, run: base.Session, duration: float, ended: str) -> Snapshot:
        from otlp_ebpf.collectors.cpu import build_snapshot

        bpf = self.sampler.cost()
        sampled = self.sampler.finish()
        lost = {**sampled.lost, **self.targets.losses()}
        self.tick()  # the samples unwound at the end belong to the last interval
        keys = {k for delta in self.deltas for k in delta}
        self.frames = self.sampler.raw_frames(keys)
        blocked_keys = {k for delta in self.blocked_deltas for k in delta}
        self.blocked_frames = self.sampler.raw_blocked_frames(blocked_keys)
        return build_snapshot(
            self.config,
            self.targets,
            run,
            duration,
            ended,
            self.sampler,
            sampled,
            lost,
            bpf,
            self.symbolizer,
        )

    def ticks(self, section: Snapshot) -> list[object]:
        """One CpuTick per interval: samples per process and per leaf function (the run's
        busiest functions by name, the rest under OTHER_KEY)."""
        leaf = {k: frames[-1] if frames else OTHER_KEY for k, frames in self.frames.items()}
        overall: Counter[str] = Counter()
        for delta in self.deltas:
            for k, n in delta.items():
                overall[leaf[k]] += n
        keep = [name for name, _ in overall.most_common(TOP_FUNCTIONS) if name != OTHER_KEY]
        blocked = self._blocked_ticks(section)
        out: list[object] = []
        for index, delta in enumerate(self.deltas):
            per_pid: Counter[str] = Counter()
            per_function: Counter[str] = Counter()
            for k, n in delta.items():
                per_pid[str(k[0])] += n
                per_function[leaf[k]] += n
            off_cpu, sites = blocked[index] if index < len(blocked) else ({}, {})
            out.append(CpuTick(dict(per_pid), top_with_other(per_function, keep), off_cpu, sites))
        return out

    def _blocked_ticks(self, section: Snapshot) -> list[tuple[dict[str, int], dict[str, int]]]:
        """Per tick, blocked nanoseconds per process and per blocking site (the run's top
        sites by blocked time, the rest under OTHER_KEY). Processes the section leaves out
        (this tool's helpers) are left out here too."""
        if not self.config.off_cpu or not isinstance(section, CpuSnapshot):
            return []
        kept_pids = {s.pid for s in section.off_cpu}
        site = {k: blocked_site(frames) for k, frames in self.blocked_frames.items()}
        overall: Counter[str] = Counter()
        for delta in self.blocked_deltas:
            for k, n in delta.items():
                if k[0] in kept_pids:
                    overall[site.get(k, OTHER_KEY)] += n
        keep = [name for name, _ in overall.most_common(TOP_FUNCTIONS) if name != OTHER_KEY]
        out = []
        for delta in self.blocked_deltas:
            per_pid: Counter[str] = Counter()
            per_site: Counter[str] = Counter()
            for k, n in delta.items():
                if k[0] in kept_pids:
                    per_pid[str(k[0])] += n
                    per_site[site.get(k, OTHER_KEY)] += n
            out.append((dict(per_pid), top_with_other(per_site, keep)))
        return out

    def helper_cpu_s(self) -> float:
        return self.sampler.helper_cpu_s()

    def bpf_ns(self) -> int:
        return self.sampler.cost()[0]

    def set_frequency(self, hz: int) -> None:
        self.sampler.set_frequency(hz)

    def budget_knobs(self, budget_pct: float) -> list[Knob]:
        return []

    def budget_notes(self) -> tuple[str, ...]:
        return ()

    def close(self) -> None:
        self.symbolizer.close()


class SyscallsSignal:
    """Exact syscall counts; per tick, count, errors and latency percentiles per name."""

    name = "syscalls"

    def __init__(self, config: RecordConfig, targets: base.Targets) -> None:
        from otlp_ebpf.collectors.syscalls import SyscallsCollector, SyscallsConfig, syscall_name

        self.config = SyscallsConfig(targets=config.targets, duration_s=config.duration_s)
        self.collector = SyscallsCollector(self.config, targets)
        probe_nrs = PROBE_SYSCALLS.get(platform.machine(), ()) if "mem" in config.signals else ()
        self.excluded = {syscall_name(nr, self.collector.table) for nr in probe_nrs}
        self._last: dict[str, tuple[int, int, list[int]]] = {}
        self.rows: list[list[SyscallTick]] = []

    def start(self) -> None:
        self.collector.start()

    def poll(self, timeout_s: float) -> bool:
        """Fold the rows of processes that exited out of the kernel's tables, as `syscalls`
        does (they are counted from the collector's own table from then on)."""
        if self.collector.exits is None:
            return False
        self.collector.poll(timeout_s)
        return True

    def _totals(
        self, live: Mapping[tuple[int, int], SyscallRow] | None = None
    ) -> dict[str, tuple[int, int, list[int]]]:
        """Per syscall name, so far: live processes' rows in the kernel's tables (`live` when
        already read) and the rows of those that exited, already folded out of them."""
        from otlp_ebpf.collectors.syscalls import SYSCALL_SLOTS, syscall_name

        if live is None:
            live = self.collector.read_rows()
        rows = [(nr, row) for (_tgid, nr), row in live.items()]
        for _pid, proc in self.collector.exited.entries():
            rows += list(proc.rows.items())
        out: dict[str, tuple[int, int, list[int]]] = {}
        for nr, row in rows:
            name = syscall_name(nr, self.collector.table)
            if name in self.excluded:
                continue
            count, errors, hist = out.get(name, (0, 0, [0] * SYSCALL_SLOTS))
            summed = [a + b for a, b in zip(hist, row.hist or [0] * SYSCALL_SLOTS, strict=True)]
            out[name] = (count + row.count, errors + row.errors, summed)
        return out

    def _record(self, totals: dict[str, tuple[int, int, list[int]]]) -> None:
        row = []
        for name, (count, errors, hist) in totals.items():
            count0, errors0, hist0 = self._last.get(name, (0, 0, [0] * len(hist)))
            if count == count0:
                continue
            delta = [a - b for a, b in zip(hist, hist0, strict=True)]
            row.append(
                SyscallTick(
                    name,
                    count - count0,
                    errors - errors0,
                    percentile_ns(delta, 0.50, 0, 0),
                    percentile_ns(delta, 0.99, 0, 0),
                    {str(slot): n for slot, n in enumerate(delta) if n},
                )
            )
        row.sort(key=lambda t: (-t.count, t.name))
        self.rows.append(row)
        self._last = totals

    def tick(self) -> None:
        self._record(self._totals())

    def stop(self) -> None:
        pass  # counting goes on until its maps are read, like `syscalls`

    def finish(self, run: base.Session, duration: float, ended: str) -> Snapshot:
        from otlp_ebpf.collectors.syscalls import build_snapshot

        section = build_snapshot(self.collector, run.clock, ended, self.collector.stats())
        section = self._without_probe_calls(section)
        totals: dict[str, tuple[int, int, list[int]]] = {}
        for s in section.syscalls:
            count, errors, hist = totals.get(s.name, (0, 0, [0] * len(s.hist)))
            totals[s.name] = (
                count + s.count,
                errors + s.errors,
                [a + b for a, b in zip(hist, s.hist, strict=True)],
            )
        self._record(totals)
        return section

    def _without_probe_calls(self, section: SyscallsSnapshot) -> SyscallsSnapshot:
        """Leave out the calls mem's return probes make in the target."""
        left_out = [s for s in section.syscalls if s.name in self.excluded]
        if not left_out:
            return section
        names = ", ".join(sorted({s.name for s in left_out}))
        note = (
            f"left out: {sum(s.count for s in left_out):,} {names} calls made by mem's "
            "uprobe trampolines"
        )
        return dataclasses.replace(
            section,
            syscalls=tuple(s for s in section.syscalls if s.name not in self.excluded),
            notes=(*section.notes, note),
        )

    def ticks(self, section: Snapshot) -> list[object]:
        return [tuple(row) for row in self.rows]

    def helper_cpu_s(self) -> float:
        return 0.0

    def bpf_ns(self) -> int:
        c = self.collector
        assert c.obj is not None
        return base.program_cost(c.obj, (*c._programs(), *base.TARGET_PROGRAMS))[0]

    def budget_knobs(self, budget_pct: float) -> list[Knob]:
        return [self.collector.sampling_knob(budget_pct)]

    def budget_notes(self) -> tuple[str, ...]:
        return self.collector.sampling_notes()

    def close(self) -> None:
        pass


ConnKey = tuple[int, int, int, str, str]


def connection_key(conn: Connection) -> ConnKey:
    return (conn.started_at_ns, conn.lport, conn.rport, conn.laddr, conn.raddr)


class NetSignal:
    """TCP connections; per tick, what each connection moved, its retransmits and resets,
    its srtt, and packet drops by reason."""

    name = "net"

    def __init__(self, config: RecordConfig, targets: base.Targets) -> None:
        from otlp_ebpf.collectors.net import NetCollector, NetConfig

        self.config = NetConfig(targets=config.targets, duration_s=config.duration_s)
        self.collector = NetCollector(self.config, targets)
        self._closed_seen = 0
        self._last: dict[ConnKey, tuple[int, int, int, int]] = {}
        self._last_drops: dict[str, int] = {}
        self.rows: list[NetTick] = []

    def start(self) -> None:
        self.collector.start()

    def poll(self, timeout_s: float) -> bool:
        self.collector.poll(timeout_s)
        return True

    def _record(self, connections: Sequence[Connection], drops: Mapping[str, int]) -> None:
        from otlp_ebpf.collectors.net import connection_label

        moved: list[ConnTick] = []
        for conn in connections:
            key = connection_key(conn)
            now = (conn.tx_bytes, conn.rx_bytes, conn.retransmits, _resets(conn))
            before = self._last.get(key, (0, 0, 0, 0))
            self._last[key] = now
            tx, rx, retransmits, resets = (a - b for a, b in zip(now, before, strict=True))
            if tx or rx or retransmits or resets:
                moved.append(
                    ConnTick(
                        connection_label(conn), tx, rx, retransmits, resets, srtt_us=conn.srtt_us
                    )
                )
        moved.sort(key=lambda c: (-(c.tx_bytes + c.rx_bytes), c.label))
        kept, rest = moved[:TOP_CONNECTIONS], moved[TOP_CONNECTIONS:]
        if rest:
            kept.append(
                ConnTick(
                    OTHER_KEY,
                    sum(c.tx_bytes for c in rest),
                    sum(c.rx_bytes for c in rest),
                    sum(c.retransmits for c in rest),
                    sum(c.resets for c in rest),
                )
            )
        self.rows.append(NetTick(tuple(kept), _delta(drops, self._last_drops)))
        self._last_drops = dict(drops)

    def tick(self) -> None:
        c = self.collector
        c.drain()
        closed = c.closed[self._closed_seen :]
        self._closed_seen = len(c.closed)
        self._record([*closed, *c.open_connections()], c.drops())

    def stop(self) -> None:
        pass

    def finish(self, run: base.Session, duration: float, ended: str) -> Snapshot:
        from otlp_ebpf.collectors.net import build_snapshot

        section = build_snapshot(self.collector, self.config, run.clock, ended)
        self._record(section.connections, section.drops)
        return section

    def ticks(self, section: Snapshot) -> list[object]:
        return list(self.rows)

    def helper_cpu_s(self) -> float:
        return 0.0

    def bpf_ns(self) -> int:
        assert self.collector.obj is not None
        return base.program_cost(self.collector.obj, self.collector.programs())[0]

    def budget_knobs(self, budget_pct: float) -> list[Knob]:
        return []

    def budget_notes(self) -> tuple[str, ...]:
        return ()

    def close(self) -> None:
        if self.collector.ring is not None:
            self.collector.ring.close()
            self.collector.ring = None


def _resets(conn: Connection) -> int:
    return conn.resets_sent + conn.resets_received


class MemSignal:
    """Outstanding allocations; per tick, outstanding bytes, allocations, frees, page faults."""

    name = "mem"

    def __init__(self, config: RecordConfig, targets: base.Targets) -> None:
        from otlp_ebpf.collectors.mem import MemCollector, MemConfig

        self.config = MemConfig(
            targets=config.targets,
            duration_s=config.duration_s,
            page_faults=features.tracepoint_exists(*PAGE_FAULT_TRACEPOINT),
            budget_pct=config.budget_pct,  # probes as `mem --budget` places them
        )
        self.collector = MemCollector(self.config, targets)
        self._last = (0, 0, 0, 0)
        self.rows: list[MemTick] = []
        self.raw: object = None
        self.bpf = (0, 0)

    def start(self) -> None:
        self.collector.start()

    def poll(self, timeout_s: float) -> bool:
        self.collector.poll(timeout_s)
        return self.collector.exits is not None

    def _record(self, levels: tuple[int, int, int, int]) -> None:
        outstanding, allocs, frees, faults = levels
        _, allocs0, frees0, faults0 = self._last
        self.rows.append(MemTick(outstanding, allocs - allocs0, frees - frees0, faults - faults0))
        self._last = levels

    def tick(self) -> None:
        self._record(self.collector.read_levels())

    def stop(self) -> None:
        """Read the kernel's side and detach, as `mem` does: afterwards no target can be
        paused at exit, and every paused one runs again."""
        from otlp_ebpf.collectors.mem import read_result

        c = self.collector
        try:
            c.end_per_call()
            c.resume_all()
            if not c.kernel_mode:
                c.remember_targets()
            assert c.obj is not None
            self.bpf = base.program_cost(c.obj, c.obj.program_names())
            self.raw = read_result(c)
        finally:
            c.detach()
            c.resume_all()

    def finish(self, run: base.Session, duration: float, ended: str) -> Snapshot:
        from otlp_ebpf.collectors.mem import RawResult, build_snapshot

        assert isinstance(self.raw, RawResult)
        section = build_snapshot(self.collector, run.clock, duration, ended, self.raw, self.bpf)
        faults = sum(f.count for f in section.page_faults)
        self._record(
            (section.outstanding_bytes, section.allocations_total, section.frees_total, faults)
        )
        return section

    def ticks(self, section: Snapshot) -> list[object]:
        return list(self.rows)

    def helper_cpu_s(self) -> float:
        return 0.0

    def bpf_ns(self) -> int:
        obj = self.collector.obj
        assert obj is not None
        return base.program_cost(obj, obj.program_names())[0]

    def budget_knobs(self, budget_pct: float) -> list[Knob]:
        return [self.collector.sampling_knob(budget_pct)]

    def budget_notes(self) -> tuple[str, ...]:
        # the recording's steady state counts every signal: mem says when its per-call
        # programs alone cost more than the budget
        return (*self.collector.sampling_notes(), *self.collector.not_held_notes(None))

    def close(self) -> None:
        self.collector.close()


SIGNAL_TYPES: dict[str, Callable[[RecordConfig, base.Targets], Signal]] = {
    "cpu": CpuSignal,
    "syscalls": SyscallsSignal,
    "net": NetSignal,
    "mem": MemSignal,
}


@dataclass
class Recording:
    """The signals of one run and the times of their ticks."""

    config: RecordConfig
    targets: base.Targets
    signals: list[Signal]
    skipped: dict[str, str]
    tick_times: list[float] = field(default_factory=list)
    meter: CostMeter | None = None
    governor: Governor | None = None
    cpu_controller: BudgetController | None = None

    def start(self) -> None:
        for signal in self.signals:
            signal.start()
        self.meter = CostMeter(self.bpf_ns, self.launched)
        budget = self.config.budget_pct
        knobs: list[Knob] = []
        if budget:
            cpu = self.cpu_signal()
            if cpu is not None:
                from otlp_ebpf.collectors.cpu import unwind_fallback

                self.cpu_controller = BudgetController(
                    budget,
                    self.config.frequency_hz,
                    fallback=unwind_fallback(cpu.sampler, cpu.config),
                )
                knobs.append(cpu_knob(self.cpu_controller, cpu.set_frequency))
            for signal in self.signals:
                knobs += signal.budget_knobs(budget)
        self.governor = Governor(budget or 0.0, self.meter, knobs)

    @property
    def costs(self) -> list[CostTick]:
        """Each tick's cost and rates so far (the governor's list: trimming it trims them)."""
        return self.governor.ticks if self.governor is not None else []

    @property
    def controller(self) -> BudgetController | None:
        """The cpu sampling rate's controller under a budget."""
        return self.cpu_controller

    @controller.setter
    def controller(self, value: BudgetController | None) -> None:
        """A budget set, changed or lifted while running (the agent on SIGHUP): the cpu
        rate's knob follows."""
        self.cpu_controller = value
        if self.governor is None:
            return
        self.governor.knobs = [k for k in self.governor.knobs if k.rate_key != "cpu_hz"]
        cpu = self.cpu_signal()
        if value is not None and cpu is not None:
            self.governor.knobs.insert(0, cpu_knob(value, cpu.set_frequency))
            self.governor.budget_pct = value.budget_pct

    def bpf_ns(self) -> int:
        return sum(s.bpf_ns() for s in self.signals)

    def launched(self) -> list[int]:
        """Our children that are the target, not helpers of ours."""
        held = self.targets.held
        return [held.pid] if held is not None else []

    def cpu_signal(self) -> CpuSignal | None:
        return next((s for s in self.signals if isinstance(s, CpuSignal)), None)

    def begin_loop(self) -> float:
        """Mark the start of the steady state; its cost so far (load, attach) is startup."""
        assert self.governor is not None
        return self.governor.begin()

    def poll(self, timeout_s: float) -> None:
        """One wait for all: the first signal with events to wait on takes the timeout, the
        others are only checked. Under a budget the rates follow the cost every quarter second
        (sooner than a tick, so a rate far too high is short-lived)."""
        if self.governor is not None:
            self.governor.poll(self.poll_signals, timeout_s)
        else:
            self.poll_signals(timeout_s)
        if self.governor is not None and self.governor.knobs:
            self.governor.control()

    def poll_signals(self, timeout_s: float) -> None:
        waited = False
        for signal in self.signals:
            waited = signal.poll(0.0 if waited else timeout_s) or waited
        if not waited:
            base.sleep_poll(timeout_s)

    def tick(self, elapsed: float) -> None:
        for signal in self.signals:
            signal.tick()
        self.tick_times.append(round(elapsed, 3))
        if self.governor is not None:
            self.governor.measure(elapsed)


def collect(config: RecordConfig) -> RecordSnapshot:
    """Run every chosen signal to the end of the run and return the recording."""
    base.require_privileges("record")
    missing = missing_tracepoints(config.signals, config.targets)
    chosen, skipped = plan_signals(config.signals, config.signals_given, missing)
    for name, why in skipped.items():
        console.warn(f"record: {name} skipped ({why})")
    targets = base.Targets(config.targets)
    signals: list[Signal] = []
    try:
        for name in chosen:
            signals.append(SIGNAL_TYPES[name](dataclasses.replace(config, signals=chosen), targets))
    except BaseException:
        targets.abandon()
        base.cleanup()
        raise
    recording = Recording(dataclasses.replace(config, signals=chosen), targets, signals, skipped)
    try:
        return _run(recording)
    finally:
        for signal in signals:
            signal.close()


def _run(recording: Recording) -> RecordSnapshot:
    config, targets = recording.config, recording.targets
    with base.session(targets, recording.start) as run:
        try:
            startup_cpu = recording.meter.cpu_s() - run.clock.cpu0 if recording.meter else 0.0
            recording.begin_loop()
            ended = base.run_loop(
                targets,
                recording.poll,
                duration_s=config.duration_s,
                interval_s=config.interval_s,
                on_interval=recording.tick,
                clock=run.clock,
                stop=run.stop,
                poll_s=POLL_S,
            )
            assert recording.meter is not None and recording.governor is not None
            recording.governor.finish(recording.poll_signals)
            duration = run.clock.elapsed()
            # The first tick is where a budget finds its rates: the steady state starts after
            # it, when the run had more than one tick.
            steady = recording.governor.steady_pct()
            final_cpu0 = recording.meter.cpu_s()
        finally:
            # Whatever happened: sampling stops and no target stays paused at exit (mem).
            for signal in recording.signals:
                signal.stop()
        finished = {}
        for signal in sorted(recording.signals, key=lambda s: FINISH_ORDER.index(s.name)):
            finished[signal.name] = _same_duration(signal.finish(run, duration, ended), duration)
        sections = {s.name: finished[s.name] for s in recording.signals}
    recording.tick_times.append(round(duration, 3))
    costs = RunCosts(startup_cpu, steady, recording.meter.cpu_s() - final_cpu0)
    return assemble(recording, run, sections, duration, ended, costs)


@dataclass(frozen=True)
class RunCosts:
    """Startup (load, attach), the steady state (% of one core, BPF included), and the final
    reading and symbolization, reported apart."""

    startup_cpu_s: float
    steady_pct: float
    final_cpu_s: float


def _same_duration(section: Snapshot, duration: float) -> Snapshot:
    """Every section covers the run, whenever it was read at the end."""
    return dataclasses.replace(section, duration_s=round(duration, 3))


def assemble(
    recording: Recording,
    run: base.Session,
    sections: dict[str, Snapshot],
    duration: float,
    ended: str,
    costs: RunCosts,
) -> RecordSnapshot:
    """The recording: sections, their timeline, and the run's cost as a whole."""
    per_signal = {
        s.name: s.ticks(sections[s.name]) for s in recording.signals if s.name in sections
    }
    rows = []
    for i, t_s in enumerate(recording.tick_times):
        values = {name: ticks[i] for name, ticks in per_signal.items() if i < len(ticks)}
        rows.append(TimelineRow(t_s, **values))  # type: ignore[arg-type]
    helpers = sum(s.helper_cpu_s() for s in recording.signals)
    cost = base.self_cost(run.clock, 0, 0)
    governor = recording.governor
    assert governor is not None
    cost = SelfCost(
        cpu_s=round(cost.cpu_s + helpers, 4),
        bpf_ns=sum(s.self_cost.bpf_ns for s in sections.values()),
        bpf_runs=sum(s.self_cost.bpf_runs for s in sections.values()),
        peak_rss_kb=cost.peak_rss_kb,
        budget_pct=recording.config.budget_pct or 0.0,
        steady_pct=round(costs.steady_pct, 3),
        startup_cpu_s=round(costs.startup_cpu_s, 4),
        final_cpu_s=round(costs.final_cpu_s, 4),
        ticks=tuple(governor.ticks) if recording.config.budget_pct else (),
    )
    notes = [f"ended: {ended}", f"attach: {run.attach_ms:.1f} ms"]
    notes.append(
        f"cost: {costs.steady_pct:.2f}% of one core in the steady state (from the end of the "
        "first interval: CPU of this tool and its helpers, and BPF run time); "
        f"{costs.startup_cpu_s:.2f} s CPU to load and attach, "
        f"{costs.final_cpu_s:.2f} s to read and symbolize at the end"
    )
    if recording.cpu_controller is not None:
        notes.append(cpu_budget_note(recording.cpu_controller))
    notes += [note for signal in recording.signals for note in signal.budget_notes()]
    if recording.config.budget_pct and not governor.knobs:
        notes.append(f"budget {recording.config.budget_pct:g}%: nothing to sample less (net)")
    notes += [f"skipped {name}: {why}" for name, why in recording.skipped.items()]
    notes += recording.targets.command_notes()
    first = next(iter(sections.values()))
    return RecordSnapshot(
        started_at=run.clock.started_at,
        duration_s=round(duration, 3),
        host=first.host,
        targets=recording.config.targets.describe(),
        lost_events={
            f"{name}: {reason}": n
            for name, section in sections.items()
            for reason, n in section.lost_events.items()
        },
        processes=_processes(sections.values()),
        self_cost=cost,
        notes=tuple(notes),
        signals=sections,
        command_exit=recording.targets.command_exit(),
        interval_s=recording.config.interval_s,
        timeline=tuple(rows),
    )


def _processes(sections: Iterable[Snapshot]) -> tuple[ProcessInfo, ...]:
    seen: dict[int, ProcessInfo] = {}
    for section in sections:
        for info in section.processes:
            seen.setdefault(info.pid, info)
    return tuple(seen[pid] for pid in sorted(seen))
