"""Syscall counts, errors by errno and latency, aggregated in the kernel (bpf/syscalls.bpf.c).

tp_btf sys_enter/sys_exit with task storage is the fast path (measured ~1.4x the classic
tracepoints' throughput); the raw_syscalls tracepoints are the fallback. Only the aggregates
cross to user space: the maps are read at each --interval tick and at the end.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import difflib
import errno as errno_mod
import os
import platform
import struct
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import add

import numpy as np

from otlp_ebpf import console, hosttext
from otlp_ebpf.collectors import base
from otlp_ebpf.collectors.budget import (
    MAX_DUTY_PERIOD,
    BudgetedRun,
    DutyCycle,
    Knob,
    PeriodController,
    attached_at,
    detached_at,
    duty_knob,
    duty_note,
    start_budgeted_run,
)
from otlp_ebpf.collectors.syscall_table import ARM64, X86_64
from otlp_ebpf.errors import RuntimeFailure, UsageError
from otlp_ebpf.latency import percentile_ns
from otlp_ebpf.model import IntervalPoint, SyscallsSnapshot, SyscallStat
from otlp_ebpf.runtime import features, libbpf, probes
from otlp_ebpf.runtime.events import RingBuffer
from otlp_ebpf.runtime.loader import BpfObject, Link
from otlp_ebpf.runtime.maps import BpfMap
from otlp_ebpf.targets import TargetSpec

SYSCALL_SLOTS = 40
EXIT_ROWS_PER_RECORD = 32
PROC_ERRNOS = 64
MAX_SYSCALL_NR = 1024
DROP_REASONS = (
    "syscall table full",
    "errno table full",
    "start table full",
    "exit event lost",
    "syscall row allocation failed",
)
# Slots whose calls are still counted, in the `unattributed` rows: noted, not lost.
UNATTRIBUTED_SLOTS = {0: "syscall table full", 4: "no memory for a new row"}
UNATTRIBUTED_COMM = "[unattributed]"
BTF_PROGRAMS = ("btf_sys_enter", "btf_sys_exit")
TP_PROGRAMS = ("tp_sys_enter", "tp_sys_exit")
EXIT_PROGRAM = "process_gone"
# Exited processes whose rows keep their pid; older ones are folded per command name (pid 0),
# so a run that sees millions of short processes holds a bounded number of rows.
EXITED_KEPT = 512
# Exit records (a process's header, then its rows) handled per poll at most: a poll returns
# within milliseconds however fast processes come and go.
EXIT_RECORDS_PER_POLL = 8192


class SyscallKey(ctypes.Structure):
    """Mirror of struct syscall_key (bpf/syscalls.h)."""

    _fields_ = [("tgid", ctypes.c_uint32), ("nr", ctypes.c_uint32)]


class SyscallStats(ctypes.Structure):
    """Mirror of struct syscall_stats (bpf/syscalls.h)."""

    _fields_ = [
        ("count", ctypes.c_uint64),
        ("errors", ctypes.c_uint64),
        ("total_ns", ctypes.c_uint64),
        ("min_ns", ctypes.c_uint64),
        ("max_ns", ctypes.c_uint64),
        ("hist", ctypes.c_uint64 * SYSCALL_SLOTS),
    ]


# struct syscall_stats as plain integers: unpacking is ~20x faster than ctypes field access.
_STATS = struct.Struct(f"<{5 + SYSCALL_SLOTS}Q")
_SYSCALL_KEY = struct.Struct("<II")  # struct syscall_key: tgid, nr


class ErrnoKey(ctypes.Structure):
    """Mirror of struct errno_key (bpf/syscalls.h)."""

    _fields_ = [
        ("tgid", ctypes.c_uint32),
        ("nr", ctypes.c_uint32),
        ("err", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


class ErrnoPair(ctypes.Structure):
    """Mirror of struct errno_pair (bpf/syscalls.h)."""

    _fields_ = [("nr", ctypes.c_uint32), ("err", ctypes.c_uint32)]


class ProcUsage(ctypes.Structure):
    """Mirror of struct proc_usage (bpf/syscalls.h): the rows a process created, by key."""

    _fields_ = [
        ("nrs", ctypes.c_uint64 * (MAX_SYSCALL_NR // 64)),
        ("errnos", ErrnoPair * PROC_ERRNOS),
        ("nerrnos", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


class ExitEvent(ctypes.Structure):
    """Mirror of struct exit_event (bpf/syscalls.h): a process gone, and how many of its
    rows and errno counts follow it in the ring."""

    _fields_ = [
        ("kind", ctypes.c_uint32),
        ("tgid", ctypes.c_uint32),
        ("comm", ctypes.c_char * 16),
        ("rows", ctypes.c_uint32),
        ("errnos", ctypes.c_uint32),
        ("kept", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


class ExitRow(ctypes.Structure):
    """Mirror of struct exit_row (bpf/syscalls.h): one row of an exited process, its CPUs
    summed by the kernel."""

    _fields_ = [("nr", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("stats", SyscallStats)]


class ExitRows(ctypes.Structure):
    """Mirror of struct exit_rows (bpf/syscalls.h): up to EXIT_ROWS_PER_RECORD rows of an
    exited process (sent as far as its `count`-th row)."""

    _fields_ = [
        ("kind", ctypes.c_uint32),
        ("tgid", ctypes.c_uint32),
        ("count", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("rows", ExitRow * EXIT_ROWS_PER_RECORD),
    ]


class ExitErrno(ctypes.Structure):
    """Mirror of struct exit_errno (bpf/syscalls.h): one errno count of an exited process."""

    _fields_ = [
        ("kind", ctypes.c_uint32),
        ("tgid", ctypes.c_uint32),
        ("nr", ctypes.c_uint32),
        ("err", ctypes.c_uint32),
        ("count", ctypes.c_uint64),
    ]


EXIT_RECORD_PROCESS, EXIT_RECORD_ROWS, EXIT_RECORD_ERRNO = 1, 2, 3  # enum exit_record_kind
_EXIT_HEAD = struct.Struct("<II")  # every exit record begins with its kind and tgid
_ROWS_COUNT_AT = ExitRows.count.offset
_ROWS_AT = ExitRows.rows.offset
_ROW_WORDS = ctypes.sizeof(ExitRow) // 8  # nr and pad, then struct syscall_stats


def set_bits(words: Sequence[int]) -> list[int]:
    """Indexes of the bits set in a little-endian array of u64 words."""
    out = []
    for i, word in enumerate(words):
        while word:
            low = word & -word
            out.append(i * 64 + low.bit_length() - 1)
            word ^= low
    return out


def syscall_table(machine: str | None = None) -> dict[int, str]:
    return ARM64 if (machine or platform.machine()) == "aarch64" else X86_64


def syscall_name(nr: int, table: dict[int, str]) -> str:
    return table.get(nr, f"syscall_{nr}")


def resolve_names(names: Sequence[str], table: dict[int, str]) -> list[int]:
    """Syscall names (or `syscall_N`) to numbers; UsageError listing close matches."""
    by_name = {v: k for k, v in table.items()}
    numbers = []
    for name in names:
        if name in by_name:
            numbers.append(by_name[name])
        elif name.startswith("syscall_") and name[8:].isdigit():
            numbers.append(int(name[8:]))
        else:
            close = difflib.get_close_matches(name, by_name, n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UsageError(f"unknown syscall {name!r}{hint}")
    return numbers


@dataclass(frozen=True)
class SyscallsConfig:
    targets: TargetSpec = field(default_factory=TargetSpec)
    duration_s: float | None = None
    interval_s: float | None = None
    syscalls: tuple[str, ...] = ()
    errors_only: bool = False
    comm: str = ""
    table_size: int = 0  # rows of the (process, syscall) table; 0: the object's own size
    budget_pct: float | None = None  # --budget: sample calls to keep the tool's cost under it


@dataclass
class _Row:
    count: int = 0
    errors: int = 0
    total_ns: int = 0
    min_ns: int = 0
    max_ns: int = 0
    hist: list[int] | None = None

    def add(self, st: SyscallStats) -> None:
        self.add_values(_STATS.unpack(bytes(st)))

    def add_values(self, values: tuple[int, ...]) -> None:
        """One CPU's struct syscall_stats as unpacked integers (count, errors, total_ns,
        min_ns, max_ns, then the slots): the fast path for the rows of exited processes."""
        count, errors, total_ns, min_ns, max_ns = values[:5]
        self.count += count
        self.errors += errors
        self.total_ns += total_ns
        self.max_ns = max(self.max_ns, max_ns)
        if min_ns and (not self.min_ns or min_ns < self.min_ns):
            self.min_ns = min_ns
        slots = values[5:]
        self.hist = list(map(add, self.hist, slots)) if self.hist is not None else list(slots)

    def merge(self, other: _Row) -> None:
        self.count += other.count
        self.errors += other.errors
        self.total_ns += other.total_ns
        self.max_ns = max(self.max_ns, other.max_ns)
        if other.min_ns and (not self.min_ns or other.min_ns < self.min_ns):
            self.min_ns = other.min_ns
        if other.hist is not None:
            mine = self.hist or [0] * SYSCALL_SLOTS
            self.hist = list(map(add, mine, other.hist))


_NO_MIN = np.iinfo(np.uint64).max


def rows_of(values: Sequence[bytes], table: BpfMap) -> list[_Row]:
    """One row per per-CPU value of a stats table, its CPUs' counts, totals and slots added
    up, the smallest nonzero min and the largest max. All at once: a churning host folds
    hundreds of exited processes' rows a second, and one CPU at a time in Python cost twice
    as much as the system calls that take them."""
    if not values:
        return []
    words = table.slot // 8
    per_cpu = np.frombuffer(b"".join(values), dtype=np.uint64)
    cpus = per_cpu.reshape(len(values), table.ncpus, words)[:, :, : _STATS.size // 8]
    sums = cpus.sum(axis=1).tolist()
    highest = cpus[:, :, 4].max(axis=1).tolist()
    lows = cpus[:, :, 3]
    lowest = np.where(lows > 0, lows, _NO_MIN).min(axis=1)
    lowest = np.where(lowest == _NO_MIN, 0, lowest).tolist()
    return [
        _Row(s[0], s[1], s[2], low, high, s[5:])
        for s, low, high in zip(sums, lowest, highest, strict=True)
    ]


def exit_rows(data: bytes) -> list[tuple[int, _Row]]:
    """The (syscall, row) pairs of an exit_rows record: all at once with numpy, as a churning
    host sends hundreds of them a second."""
    count = int.from_bytes(data[_ROWS_COUNT_AT : _ROWS_COUNT_AT + 4], "little")
    words = np.frombuffer(data, dtype=np.uint64, count=count * _ROW_WORDS, offset=_ROWS_AT)
    return [
        (first & 0xFFFFFFFF, _Row(c, e, t, low, high, hist))
        for first, c, e, t, low, high, *hist in words.reshape(count, _ROW_WORDS).tolist()
    ]


@dataclass
class _Process:
    """The rows of one exited process (or of every folded process of one name)."""

    comm: str
    rows: dict[int, _Row] = field(default_factory=dict)
    errnos: dict[int, dict[str, int]] = field(default_factory=dict)

    def merge(self, other: _Process) -> None:
        for nr, row in other.rows.items():
            self.rows.setdefault(nr, _Row()).merge(row)
        for nr, counts in other.errnos.items():
            mine = self.errnos.setdefault(nr, {})
            for name, n in counts.items():
                mine[name] = mine.get(name, 0) + n


@dataclass
class _Folding:
    """An exited process whose rows are arriving: `left` records to go."""

    proc: _Process
    left: int


class ExitedProcesses:
    """Rows taken out of the kernel tables when their process exited. The `keep` most
    recent processes keep their pid; older ones fold into one row set per name, shown with
    pid 0, so memory stays bounded however many processes come and go."""

    def __init__(self, keep: int = EXITED_KEPT, keep_pid: Callable[[int], bool] | None = None):
        """`keep_pid`: which exited processes may keep their pid at all (None: any); the
        others are folded by name at once."""
        self.keep = keep
        self.keep_pid = keep_pid
        self.by_pid: OrderedDict[int, _Process] = OrderedDict()
        self.folded: dict[str, _Process] = {}
        self.processes = 0

    def add(self, pid: int, proc: _Process, new: bool = True) -> None:
        """`new`: a process not added before (False: more rows of one that was)."""
        self.processes += new
        known = self.by_pid.get(pid)
        if known is not None:  # the pid was used again within the run
            known.merge(proc)
            return
        if self.keep_pid is not None and not self.keep_pid(pid):
            self._fold(proc)
            return
        self.by_pid[pid] = proc
        while len(self.by_pid) > self.keep:
            self._fold(self.by_pid.popitem(last=False)[1])

    def _fold(self, proc: _Process) -> None:
        self.folded.setdefault(proc.comm, _Process(proc.comm)).merge(proc)

    def entries(self) -> Iterator[tuple[int, _Process]]:
        yield from self.by_pid.items()
        for proc in self.folded.values():
            yield 0, proc


# Kernel-internal codes a syscall can end with (restarts, mostly): not in libc's table.
KERNEL_ERRNOS = {
    512: "ERESTARTSYS",
    513: "ERESTARTNOINTR",
    514: "ERESTARTNOHAND",
    515: "ENOIOCTLCMD",
    516: "ERESTART_RESTARTBLOCK",
    517: "EPROBE_DEFER",
    518: "EOPENSTALE",
    519: "ENOPARAM",
    521: "EBADHANDLE",
    522: "ENOTSYNC",
    523: "EBADCOOKIE",
    524: "ENOTSUPP",
    525: "ETOOSMALL",
    526: "ESERVERFAULT",
    527: "EBADTYPE",
    528: "EJUKEBOX",
    529: "EIOCBQUEUED",
    530: "ERECALLCONFLICT",
}


def _errno_name(err: int) -> str:
    return errno_mod.errorcode.get(err) or KERNEL_ERRNOS.get(err, f"E{err}")


class SyscallsCollector:
    """Open, configure, load and attach syscalls.bpf.o; read its maps into snapshots."""

    def __init__(self, config: SyscallsConfig, targets: base.Targets | None = None) -> None:
        """`targets`: shared with other collectors of the same run (`record`)."""
        self.config = config
        self.table = syscall_table()
        self.selected = resolve_names(config.syscalls, self.table)
        for nr in self.selected:
            if nr >= MAX_SYSCALL_NR:
                raise UsageError(f"syscall number {nr} is out of range")
        self.targets = targets if targets is not None else base.Targets(config.targets)
        self.obj: BpfObject | None = None
        self.use_btf = True
        self.series: list[IntervalPoint] = []
        self._last_counts: dict[str, int] = {}
        self.exited = ExitedProcesses()
        self.exits: RingBuffer | None = None
        # Rows read for a caller that reads them again at once (the agent's tick, then its
        # export), valid while no exit has been folded since (`_exits_folded` unchanged).
        self._reused_rows: tuple[int, dict[tuple[int, int], _Row]] | None = None
        self._exits_folded = 0
        self._folding: dict[int, _Folding] = {}  # exited processes whose records are arriving
        self._exits_seen: set[int] | None = None  # exits arriving while the rows are read
        self._partly_sent: set[int] = set()  # exits whose records brought some rows, not all
        self.sampler: PeriodController | None = None
        self.cycle: DutyCycle | None = None
        self.cycle_s: float | None = None  # a duty cycle's length (None: record's CYCLE_S)
        self.event_links: list[Link] = []
        self._period = 1

    def _rodata(self) -> dict[str, int | bytes]:
        by_name = {v: k for k, v in self.table.items()}
        wanted = bytearray(MAX_SYSCALL_NR)
        for nr in self.selected:
            wanted[nr] = 1
        values: dict[str, int | bytes] = dict(self.targets.rodata())
        values.update(
            errors_only=int(self.config.errors_only),
            filter_syscalls=int(bool(self.selected)),
            syscall_wanted=bytes(wanted),
            nr_exit=by_name.get("exit", -1),
            nr_exit_group=by_name.get("exit_group", -1),
            possible_cpus=libbpf.lib().libbpf_num_possible_cpus(),
        )
        if self.config.comm:
            values.update(targ_has_comm=1, targ_comm=os.fsencode(self.config.comm)[:15])
        return values

    def start(self) -> None:
        self.use_btf = features.tp_btf_supported()
        try:
            self.obj = self._load(self.use_btf)
        except RuntimeFailure as exc:
            if not self.use_btf:
                raise
            # BTF present but tracing programs refused (as fentry is on some kernels):
            # the classic tracepoints count the same calls, a little slower.
            console.debug(f"syscalls: tp_btf refused ({exc.message}); using raw_syscalls")
            base.cleanup()
            self.use_btf = False
            self.obj = self._load(False)
        self.targets.attach(self.obj)
        # A host starting processes without pause exits as fast as their rows are folded:
        # the loop must come round between batches (ticks, exports, /healthz).
        self.exits = RingBuffer(self.obj.map("exits"), self._on_exit, EXIT_RECORDS_PER_POLL)
        probes.attach_auto(self.obj, EXIT_PROGRAM)
        self.attach_events()
        console.debug(f"syscalls: attached ({'tp_btf' if self.use_btf else 'raw_syscalls'})")

    def _load(self, use_btf: bool) -> BpfObject:
        obj = BpfObject.open("syscalls")
        obj.set_rodata(**self._rodata())
        if self.config.table_size:
            obj.resize_map("stats", self.config.table_size)
        for prog in TP_PROGRAMS if use_btf else BTF_PROGRAMS:
            obj.disable(prog)
        for prog in self.targets.unused_programs(use_btf):
            obj.disable(prog)
        obj.load()
        return obj

    def _programs(self) -> tuple[str, ...]:
        return BTF_PROGRAMS if self.use_btf else TP_PROGRAMS

    def programs(self) -> tuple[str, ...]:
        """Every program of this run whose run time the traced processes pay."""
        return (*self._programs(), EXIT_PROGRAM, *base.TARGET_PROGRAMS)

    def attach_events(self) -> float:
        """Attach the per-call programs (a duty cycle's window opens); returns when the exit
        program, which counts the calls, took effect."""
        assert self.obj is not None
        obj = self.obj
        enter, exit_ = self._programs()
        self.event_links = [probes.attach_auto(obj, enter)]
        at = attached_at(lambda: self.event_links.append(probes.attach_auto(obj, exit_)))
        return at

    def detach_events(self) -> float:
        """Detach the per-call programs: calls cost nothing until they are attached again.
        Returns when the exit program's detach took effect."""
        assert self.obj is not None
        obj = self.obj
        enter, exit_ = self.event_links
        at = detached_at(lambda: obj.release(exit_))
        obj.release(enter)
        self.event_links = []
        return at

    def _write_sampling(self, duty_weight: int = 1, generation: int = 0, end_ns: int = 0) -> None:
        assert self.obj is not None
        threshold = min(0xFFFFFFFF, (1 << 32) // max(1, self._period))
        value = struct.pack("<IIIIQ", self._period, threshold, duty_weight, generation, end_ns)
        self.obj.map("sampling").update((0).to_bytes(4, "little"), value)

    def set_sampling_period(self, period: int) -> None:
        """Record 1 call in `period` from now on (chosen at random on entry), each weighing
        `period` in the counts, errors and times (1: every call, exact)."""
        self._period = max(1, period)
        self._write_sampling()

    def open_window(self, weight: int, generation: int, until_s: float = 0.0) -> None:
        """The next duty-cycle window: each call seen in it weighs `weight`; none exiting
        after `until_s` (time.monotonic(), the kernel's CLOCK_MONOTONIC; 0: no end) counts."""
        self._write_sampling(weight, generation, int(until_s * 1e9))

    def sampling_knob(self, budget_pct: float) -> Knob:
        """The budget's hold on this collector: the share of the time its per-call programs
        are attached (the cost of a call the program is attached for is paid whatever the
        program does, so sampling inside it cannot go below that floor)."""
        self.sampler = PeriodController(budget_pct, MAX_DUTY_PERIOD)
        self.cycle = DutyCycle(self.attach_events, self.detach_events, self.open_window)
        if self.cycle_s is not None:
            self.cycle.cycle_s = self.cycle_s
        return duty_knob("syscalls_duty", self.sampler, self.cycle)

    def sampling_notes(self) -> tuple[str, ...]:
        """What a budget did to the counts (the summary line repeats it)."""
        if self.sampler is None or self.cycle is None:
            return ()
        note = duty_note("syscalls", self.sampler, self.cycle)
        if self.sampler.highest > 1:
            note += (
                "; a call is counted at its exit, its latency kept when its entry was seen in "
                "the same window (calls longer than a window have no latency)"
            )
        return (note,)

    def poll(self, timeout_s: float) -> None:
        """Wait for exited processes and fold their rows out of the kernel tables."""
        assert self.exits is not None
        self.exits.poll(max(0, int(timeout_s * 1000)))

    def close(self) -> None:
        if self.exits is not None:
            self.exits.close()
            self.exits = None

    def _on_exit(self, data: bytes) -> None:
        """One record of an exited process's fold (struct exit_event in bpf/syscalls.h): its
        header, then its rows and errno counts, each already summed over the CPUs."""
        kind, tgid = _EXIT_HEAD.unpack_from(data)
        if kind == EXIT_RECORD_PROCESS:
            self._on_exit_header(tgid, data)
            return
        folding = self._folding.get(tgid)
        if folding is None:
            return  # its header was never seen (the collector started after it)
        if kind == EXIT_RECORD_ROWS:
            rows = exit_rows(data)
            folding.proc.rows.update(rows)
            folding.left -= len(rows)
        elif kind == EXIT_RECORD_ERRNO:
            errno_count = ExitErrno.from_buffer_copy(data)
            counts = folding.proc.errnos.setdefault(errno_count.nr, {})
            name = _errno_name(errno_count.err)
            counts[name] = counts.get(name, 0) + errno_count.count
            folding.left -= 1
        if folding.left <= 0:
            del self._folding[tgid]
            self.exited.add(tgid, folding.proc)

    def _on_exit_header(self, tgid: int, data: bytes) -> None:
        self._exits_folded += 1
        if self._exits_seen is not None:
            self._exits_seen.add(tgid)
        event = ExitEvent.from_buffer_copy(data)
        if event.rows or event.errnos:
            if event.kept:  # the rest is taken from the tables (`_take_stranded`)
                self._partly_sent.add(tgid)
            proc = _Process(hosttext.decode(bytes(event.comm).split(b"\0", 1)[0]))
            self._folding[tgid] = _Folding(proc, event.rows + event.errnos)

    def read_rows(self) -> dict[tuple[int, int], _Row]:
        """The live processes' rows. A process whose exit takes its rows out of the table
        while it is read would be counted twice, in the read and in its exit's records: the
        exits that arrive just after the read are folded, and their processes' rows dropped
        from it (the records hold them all), as are those of processes stranded (their rows
        taken from the table by `_take_stranded`)."""
        assert self.obj is not None
        stats_map = self.obj.map("stats")
        self._exits_seen = set()
        try:
            entries = stats_map.items()
            if self.exits is not None:
                self.exits.drain()
            gone = self._exits_seen | self._take_stranded()
        finally:
            self._exits_seen = None
        entries = [(k, v) for k, v in entries if _SYSCALL_KEY.unpack(k)[0] not in gone]
        keys = [_SYSCALL_KEY.unpack(raw_key) for raw_key, _ in entries]
        rows = rows_of([raw_value for _, raw_value in entries], stats_map)
        return dict(zip(keys, rows, strict=True))

    def _take_stranded(self) -> set[int]:
        """Processes gone whose rows did not all fit in the exits ring (counted as exit
        event lost) left them in the tables, and their keys in `usage`: they are taken out
        here and folded as exited. Returns their pids."""
        assert self.obj is not None
        stranded = self.obj.map("stranded")
        entries = stranded.items()
        for raw_tgid, raw_comm in entries:
            tgid = int.from_bytes(raw_tgid, "little")
            proc = _Process(hosttext.decode(raw_comm.split(b"\0", 1)[0]))
            noted = self.obj.map("usage").lookup(raw_tgid)
            if noted is not None:
                self._take_noted(tgid, ProcUsage.from_buffer_copy(noted), proc)
                self.obj.map("usage").delete(raw_tgid)
            stranded.delete(raw_tgid)
            self._fold_stranded(tgid, proc)
        return {int.from_bytes(raw_tgid, "little") for raw_tgid, _ in entries}

    def _fold_stranded(self, tgid: int, proc: _Process) -> None:
        """With the rows its exit's records brought, if any (the header said some stayed)."""
        folding = self._folding.get(tgid)
        if folding is not None:  # its records are still arriving
            folding.proc.merge(proc)
            return
        header_seen = tgid in self._partly_sent
        self._partly_sent.discard(tgid)
        if proc.rows or proc.errnos:
            self.exited.add(tgid, proc, new=not header_seen)

    def _take_noted(self, tgid: int, noted: ProcUsage, proc: _Process) -> None:
        """The rows and errno counts a stranded process noted, those still in the tables."""
        assert self.obj is not None
        stats_map, errno_map = self.obj.map("stats"), self.obj.map("errnos")
        taken = {}
        for nr in set_bits(noted.nrs):
            key = _SYSCALL_KEY.pack(tgid, nr)
            raw = stats_map.lookup(key)
            if raw is not None:
                stats_map.delete(key)
                taken[nr] = raw
        proc.rows = dict(zip(taken, rows_of(list(taken.values()), stats_map), strict=True))
        for pair in noted.errnos[: min(noted.nerrnos, PROC_ERRNOS)]:
            key = bytes(ErrnoKey(tgid, pair.nr, pair.err, 0))
            raw = errno_map.lookup(key)
            if raw is None:
                continue
            errno_map.delete(key)
            n = sum(int.from_bytes(v[:8], "little") for v in errno_map.per_cpu(raw))
            counts = proc.errnos.setdefault(pair.nr, {})
            counts[_errno_name(pair.err)] = counts.get(_errno_name(pair.err), 0) + n

    def read_rows_to_reuse(self) -> dict[tuple[int, int], _Row]:
        """The kernel's rows now (exits folded first), kept for the next `stats` to use
        instead of reading them again, unless an exit is folded in between (its rows then
        left the kernel's table for ours)."""
        if self.exits is not None:
            self.exits.drain()
        rows = self.read_rows()
        self._reused_rows = (self._exits_folded, rows)
        return rows

    def _rows_to_reuse(self) -> dict[tuple[int, int], _Row] | None:
        kept, self._reused_rows = self._reused_rows, None
        if kept is None or kept[0] != self._exits_folded:
            return None
        return kept[1]

    def read_errnos(self) -> dict[tuple[int, int], dict[str, int]]:
        assert self.obj is not None
        emap = self.obj.map("errnos")
        out: dict[tuple[int, int], dict[str, int]] = defaultdict(dict)
        for raw_key, raw_value in emap.items():
            key = ErrnoKey.from_buffer_copy(raw_key)
            n = sum(int.from_bytes(v[:8], "little") for v in emap.per_cpu(raw_value))
            name = _errno_name(key.err)
            out[(key.tgid, key.nr)][name] = out[(key.tgid, key.nr)].get(name, 0) + n
        return out

    def read_comms(self) -> dict[int, str]:
        assert self.obj is not None
        return {
            int.from_bytes(k, "little"): hosttext.decode(v.split(b"\0", 1)[0])
            for k, v in self.obj.map("comms").items()
        }

    def read_drops(self) -> dict[str, int]:
        assert self.obj is not None
        drops = self.obj.map("drops")
        return {
            reason: n
            for i, reason in enumerate(DROP_REASONS)
            if i not in UNATTRIBUTED_SLOTS and (n := drops.lookup_u64(i))
        }

    def unattributed_notes(self) -> tuple[str, ...]:
        """Calls counted without their process, and why (they are in the rows of pid 0 named
        `[unattributed]`, not lost)."""
        assert self.obj is not None
        drops = self.obj.map("drops")
        why = {r: n for slot, r in UNATTRIBUTED_SLOTS.items() if (n := drops.lookup_u64(slot))}
        if not why:
            return ()
        detail = ", ".join(f"{r}: {n:,}" for r, n in why.items())
        return (f"{sum(why.values()):,} calls counted without their process ({detail})",)

    def read_unattributed(self) -> dict[int, _Row]:
        assert self.obj is not None
        rows: dict[int, _Row] = {}
        for raw_key, raw_value in self.obj.map("unattributed").items():
            values = _STATS.unpack(raw_value[: _STATS.size])
            if values[0]:
                row = rows[int.from_bytes(raw_key, "little")] = _Row()
                row.add_values(values)
        return rows

    def stats(
        self, wanted: Callable[[int, str, str, int], bool] | None = None
    ) -> list[SyscallStat]:
        """Every row so far: live processes from the kernel tables, exited ones from ours.
        `wanted(pid, comm, name, count)`: only the rows it says yes to are made (the agent
        asks for those that moved; the others cost it nothing more)."""
        if self.exits is not None:
            self.exits.drain()  # processes that exited since the last poll
        rows = self._rows_to_reuse() or self.read_rows()
        comms = self.read_comms()
        found: list[tuple[int, str, int, _Row, dict[str, int] | None]] = [
            (tgid, comms.get(tgid, ""), nr, row, None) for (tgid, nr), row in rows.items()
        ]
        for pid, proc in self.exited.entries():
            found += [
                (pid, proc.comm, nr, row, proc.errnos.get(nr, {})) for nr, row in proc.rows.items()
            ]
        found += [
            (0, UNATTRIBUTED_COMM, nr, row, {}) for nr, row in self.read_unattributed().items()
        ]
        kept = [
            item
            for item in found
            if item[3].count
            and (
                wanted is None
                or wanted(item[0], item[1], syscall_name(item[2], self.table), item[3].count)
            )
        ]
        errnos = self.read_errnos() if any(item[4] is None for item in kept) else {}
        out = [
            self._stat(pid, comm, nr, row, errs if errs is not None else errnos.get((pid, nr), {}))
            for pid, comm, nr, row, errs in kept
        ]
        out.sort(key=lambda s: (-s.count, s.name, s.pid))
        return out

    def _stat(self, pid: int, comm: str, nr: int, row: _Row, errnos: dict[str, int]) -> SyscallStat:
        hist = tuple(row.hist or [0] * SYSCALL_SLOTS)
        return SyscallStat(
            pid=pid,
            comm=comm,
            name=syscall_name(nr, self.table),
            count=row.count,
            errors=row.errors,
            errno=dict(sorted(errnos.items())),
            total_ns=row.total_ns,
            p50_ns=percentile_ns(hist, 0.50, row.min_ns, row.max_ns),
            p99_ns=percentile_ns(hist, 0.99, row.min_ns, row.max_ns),
            max_ns=row.max_ns,
            min_ns=row.min_ns,
            hist=hist,
        )

    def tick(self, elapsed: float) -> list[SyscallStat]:
        """One --interval step: remember per-syscall counts since the previous tick."""
        current = self.stats()
        totals: dict[str, int] = defaultdict(int)
        for s in current:
            totals[s.name] += s.count
        delta = {n: c - self._last_counts.get(n, 0) for n, c in totals.items()}
        self.series.append(IntervalPoint(round(elapsed, 3), {n: c for n, c in delta.items() if c}))
        self._last_counts = dict(totals)
        return current


def collect(
    config: SyscallsConfig,
    on_interval: Callable[[list[SyscallStat], float], None] | None = None,
    on_partial: Callable[[SyscallsSnapshot], None] | None = None,
) -> SyscallsSnapshot:
    """Run the syscalls collector to its end and return the snapshot. With --interval,
    `on_interval` gets the rows so far and `on_partial` the cumulative snapshot so far."""
    base.require_privileges("syscalls")
    collector = SyscallsCollector(config)
    budgeted: BudgetedRun | None = None
    with contextlib.closing(collector), base.session(collector.targets, collector.start) as run:
        poll: Callable[[float], None] = collector.poll
        if config.budget_pct:
            budgeted = budgeted_run(collector, config.budget_pct, run.clock.cpu0)
            poll = budgeted.poll

        def interval(elapsed: float) -> None:
            rows = collector.tick(elapsed)
            if on_interval is not None:
                on_interval(rows, elapsed)
            if on_partial is not None:
                on_partial(build_snapshot(collector, run.clock, "interval", rows))

        ended = base.run_loop(
            collector.targets,
            poll,
            duration_s=config.duration_s,
            interval_s=config.interval_s,
            on_interval=interval if config.interval_s else None,
            clock=run.clock,
            stop=run.stop,
        )
        steady = budgeted.end_loop() if budgeted is not None else 0.0
        snapshot = build_snapshot(collector, run.clock, ended, collector.stats())
        if budgeted is not None:
            cost = budgeted.self_cost(snapshot.self_cost, steady)
            snapshot = dataclasses.replace(snapshot, self_cost=cost)
        return snapshot


def budgeted_run(collector: SyscallsCollector, budget_pct: float, cpu0: float) -> BudgetedRun:
    """The run's budget: the tool's CPU and the programs' run time against the sampling."""
    obj = collector.obj
    assert obj is not None
    held = collector.targets.held
    return start_budgeted_run(
        budget_pct,
        cpu0,
        lambda: base.program_cost(obj, collector.programs())[0],
        held.pid if held is not None else None,
        collector.sampling_knob(budget_pct),
        collector.poll,
    )


def build_snapshot(
    collector: SyscallsCollector,
    clock: base.RunClock,
    ended: str,
    syscalls: list[SyscallStat],
) -> SyscallsSnapshot:
    """The aggregates so far as a snapshot (cumulative since the start of the run)."""
    assert collector.obj is not None
    duration = clock.elapsed()
    bpf_ns, runs = base.program_cost(collector.obj, collector.programs())
    processes = tuple(
        p for pid in sorted({s.pid for s in syscalls}) if (p := base.read_process_info(pid))
    )
    config = collector.config
    return SyscallsSnapshot(
        started_at=clock.started_at,
        duration_s=round(duration, 3),
        host=base.hostname(),
        targets=config.targets.describe(),
        lost_events={**collector.read_drops(), **collector.targets.losses()},
        processes=processes,
        self_cost=base.self_cost(clock, bpf_ns, runs),
        notes=(
            f"ended: {ended}",
            *collector.unattributed_notes(),
            *collector.sampling_notes(),
            *collector.targets.command_notes(),
        ),
        command_exit=collector.targets.command_exit(),
        syscalls=tuple(syscalls),
        series=tuple(collector.series),
        interval_s=config.interval_s or 0.0,
    )
