"""Outstanding memory by stack (leaks), page faults, and kernel allocations (bpf/mem.bpf.c).

User mode (a --pid or `-- CMD` target): uprobes on the allocator's entry points and one return
probe; the kernel keeps every live block and per-stack totals, and only those maps are read,
at the end. `-- CMD` attaches by file (every process) before the command starts, so its first
allocation is seen, and filters by target in BPF; --pid attaches to that process only and
sees what it allocates after the attach. A launched target is paused for an instant when it
calls exit(), so its memory maps can be read for symbolization before they vanish.
Kernel mode (no target): the kmem tracepoints, by kernel stack, like bcc memleak without -p.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import math
import os
import platform
import signal
import struct
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from otlp_ebpf import console, hosttext
from otlp_ebpf.collectors import base, mem_allocator
from otlp_ebpf.collectors.budget import (
    BudgetedRun,
    Knob,
    PeriodController,
    floor_note,
    start_budgeted_run,
)
from otlp_ebpf.collectors.mem_python import MemPython, merged_frames, split_stack
from otlp_ebpf.collectors.resume_guard import ResumeGuard
from otlp_ebpf.collectors.stack_store import read_stored_stacks
from otlp_ebpf.errors import EnvironmentLacks, UsageError
from otlp_ebpf.model import Allocation, MemSnapshot, StackCount
from otlp_ebpf.runtime import features, probes, uprobe_multi
from otlp_ebpf.runtime.events import RingBuffer
from otlp_ebpf.runtime.loader import BpfObject
from otlp_ebpf.symbolize.python import PyFrame
from otlp_ebpf.symbolize.resolver import Symbolizer
from otlp_ebpf.targets import TargetSpec

DEFAULT_TABLE_SIZE = 262_144
MIN_TABLE_SIZE = 1024
# Each entry costs ~90 bytes of kernel memory (key, value and the hash table's own element);
# 16 Mi entries is ~1.4 GB. Far larger sizes are refused by the kernel itself (E2BIG, shown
# as "Argument list too long"), so say the limit up front.
MAX_TABLE_SIZE = 1 << 24
UNKNOWN_STACK = "[stack not recorded]"
DROP_REASONS = {
    0: "allocation table full",
    1: "call table full",
    2: "stack not recorded",
    3: "per-stack totals table full",
    4: "page-fault table full",
    5: "exit event lost (process not paused)",
    6: "events lost (a process not held, or a Python stack named late)",
}
COUNT_ALLOCS, COUNT_FREES = 0, 1
MMAP_SYSCALLS = {"x86_64": (9, 11), "aarch64": (222, 215)}
REMEMBER_EVERY_S = 0.5
REMEMBER_EVERY_S_BUDGETED = 2.0  # under a budget: a reading of every target's maps costs
BUDGET_POLL_S = 0.25  # the budget's own decisions come every CONTROL_S
# What BPF_LINK_CREATE answers on a kernel without multi-uprobe links (524: ENOTSUPP).
MULTI_REFUSED = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS, 524}
DETACH_THREADS = 32

# Allocator functions and the cookie that tells `alloc_enter` which one it is on (bpf/mem.h).
FN_MALLOC, FN_CALLOC, FN_REALLOC, FN_REALLOCARRAY = 0, 1, 2, 3
FN_POSIX_MEMALIGN, FN_MEMALIGN, FN_FREE, FN_EXIT = 4, 5, 6, 7
ALLOCATING = {
    "malloc": FN_MALLOC,
    "calloc": FN_CALLOC,
    "realloc": FN_REALLOC,
    "reallocarray": FN_REALLOCARRAY,
    "posix_memalign": FN_POSIX_MEMALIGN,
    "aligned_alloc": FN_MEMALIGN,
    "memalign": FN_MEMALIGN,
    "valloc": FN_MALLOC,
    "pvalloc": FN_MALLOC,
}
UPROBE_PROGRAMS = ("alloc_enter", "alloc_return")
# Under a budget where the kernel has uprobe sessions: blocks sampled at the entry, and the
# return probed only for sampled blocks; free through a program of its own.
SESSION_PROGRAMS = ("alloc_session", "free_enter")
PER_CALL_PROGRAMS = ("alloc_session", "free_enter", "alloc_enter")  # run on every call
RAW_MMAP_PROGRAMS = ("mmap_enter", "mmap_exit")  # every system call: the fallback
SYSCALL_MMAP_PROGRAMS = ("mmap_call_enter", "munmap_call_enter", "mmap_call_exit")
MMAP_TRACEPOINTS = (
    ("syscalls", "sys_enter_mmap"),
    ("syscalls", "sys_enter_munmap"),
    ("syscalls", "sys_exit_mmap"),
)
MMAP_PROGRAMS = (*RAW_MMAP_PROGRAMS, *SYSCALL_MMAP_PROGRAMS)
KERNEL_PROGRAMS = ("kmalloc", "kmem_cache_alloc", "kfree", "kmem_cache_free")
KMEM_TRACEPOINTS = ("kmalloc", "kmem_cache_alloc", "kfree", "kmem_cache_free")


class AllocKey(ctypes.Structure):
    """Mirror of struct alloc_key (bpf/mem.h)."""

    _fields_ = [("addr", ctypes.c_uint64), ("tgid", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class AllocInfo(ctypes.Structure):
    """Mirror of struct alloc_info (bpf/mem.h)."""

    _fields_ = [
        ("size", ctypes.c_uint64),
        ("ts", ctypes.c_uint64),
        ("stack_id", ctypes.c_int64),
        ("weight_bytes", ctypes.c_uint64),
        ("weight_count", ctypes.c_uint64),
    ]


class StackKey(ctypes.Structure):
    """Mirror of struct stack_key (bpf/mem.h)."""

    _fields_ = [("tgid", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("stack_id", ctypes.c_int64)]


class StackTotal(ctypes.Structure):
    """Mirror of struct stack_total (bpf/mem.h)."""

    _fields_ = [("bytes", ctypes.c_int64), ("count", ctypes.c_int64)]


class MemEvent(ctypes.Structure):
    """Mirror of struct mem_event (bpf/mem.h)."""

    _fields_ = [("tgid", ctypes.c_uint32), ("kind", ctypes.c_uint32), ("stack_id", ctypes.c_int64)]


EVENT_EXIT, EVENT_PY_HOLD, EVENT_PY_STACK, EVENT_NEW_PROCESS = 0, 1, 2, 3  # enum mem_event_kind


class MultiUprobeRefused(Exception):
    """The kernel refused a multi-uprobe link (it predates them or was built without)."""


@dataclass(frozen=True)
class ProbePoint:
    function: str
    offset: int
    cookie: int


@dataclass(frozen=True)
class MemConfig:
    targets: TargetSpec = field(default_factory=TargetSpec)
    duration_s: float | None = None
    min_age_ms: int = 0
    page_faults: bool = False
    track_mmap: bool = True
    table_size: int = DEFAULT_TABLE_SIZE
    multi_uprobes: bool = True  # one link for all probes where the kernel has it (6.6+)
    budget_pct: float | None = None  # --budget: sample blocks by bytes to keep the cost under it
    python: bool = True  # Python frames of CPython targets (collectors/python_frames.py)

    @property
    def kernel_mode(self) -> bool:
        return not (self.targets.pids or self.targets.tid or self.targets.command)


ProgramReading = dict[str, tuple[int, int]]  # program -> (run time in ns, runs) so far


@dataclass
class PerCallCost:
    """What the programs run on every allocator call and free cost over a budgeted loop."""

    start_s: float
    start: ProgramReading
    seconds: float = 0.0
    used: ProgramReading = field(default_factory=dict)  # over the loop

    def end(self, now: float, reading: ProgramReading) -> None:
        self.seconds = now - self.start_s
        self.used = {
            name: (ns - self.start.get(name, (0, 0))[0], runs - self.start.get(name, (0, 0))[1])
            for name, (ns, runs) in reading.items()
        }

    @property
    def runs(self) -> int:
        return sum(runs for _, runs in self.used.values())

    @property
    def pct(self) -> float:
        ns = sum(ns for ns, _ in self.used.values())
        return 100.0 * ns / 1e9 / self.seconds if self.seconds > 0 else 0.0

    @property
    def rate(self) -> float:
        return self.runs / self.seconds if self.seconds > 0 else 0.0

    @property
    def cheapest_ns(self) -> float:
        """The cheapest program's run (free's, nearly all filter misses): what every call
        costs at the least, sampled or not."""
        return min((ns / runs for ns, runs in self.used.values() if runs > 0), default=0.0)

    @property
    def floor_pct(self) -> float:
        """What no sampling period removes: every run at the cheapest run's cost."""
        return 100.0 * self.runs * self.cheapest_ns / 1e9 / self.seconds if self.seconds else 0.0


@dataclass
class RawOutstanding:
    """Outstanding totals per (tgid, stack id), before symbolization."""

    by_stack: dict[tuple[int, int], list[int]] = field(default_factory=dict)

    def add(self, tgid: int, stack_id: int, size: int, count: int) -> None:
        row = self.by_stack.setdefault((tgid, stack_id), [0, 0])
        row[0] += size
        row[1] += count


STOP_WAIT_S = 0.05
SIGSTOP_BIT = 1 << (signal.SIGSTOP - 1)


def wait_for_stop(pid: int, timeout_s: float = STOP_WAIT_S) -> None:
    """Until the SIGSTOP sent to a new process is queued (or it stopped, or ended): the fork's
    tracepoint sends it a moment after the event may be read (from irq_work, as programs
    there run with preemption off), and a SIGCONT sent before it would not cancel it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status = hosttext.read(f"/proc/{pid}/status")
        except OSError:
            return
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        pending = int(fields.get("ShdPnd", "0").strip() or "0", 16)
        if pending & SIGSTOP_BIT or fields.get("State", "").strip().startswith("T"):
            return
        time.sleep(0.0002)


def aggregate_blocks(
    blocks: list[tuple[AllocKey, AllocInfo]], *, now_ns: int, min_age_ns: int
) -> RawOutstanding:
    """Per-stack totals of live blocks at least `min_age_ns` old."""
    out = RawOutstanding()
    for key, info in blocks:
        if now_ns - info.ts < min_age_ns:
            continue
        out.add(key.tgid, max(info.stack_id, -1), info.weight_bytes, info.weight_count)
    return out


def return_addresses_to_calls(addrs: Sequence[int]) -> list[int]:
    """Stacks taken at a return probe hold only return addresses (the leaf too): look each
    up one byte back, inside the call instruction."""
    return [a - 1 if a > 0 else a for a in addrs]


# Under a budget the mean gap between byte sample points is this many bytes times the
# controller's period, up to 8192 x 64 = 512 KiB (tcmalloc's default): a block of 4 MB holds
# at least one point of the table's longest gap (6.2 x the mean) and is never missed.
SAMPLE_UNIT = 64
MAX_SAMPLE_PERIOD = 8192
# The budget fits its cost as floor + variable / period only from a mean gap of 16 KiB: below,
# most blocks of usual sizes (tens to hundreds of bytes) hold a point whatever the gap, and a
# raise that "bought nothing" there would stop the period rising for good (measured: 2.8% of a
# core held for 6 s at a 512-byte gap, every allocation walking its stack).
FIT_FROM_PERIOD = 256
GAP_SLOTS = 256


def sampling_value(mean_gap: int) -> bytes:
    """struct mem_sampling for a mean gap of `mean_gap` bytes: the quantiles of the
    exponential at the middles of 256 equal slices (q16 fixed point), scaled so that their
    mean is the gap the weights use."""
    quantiles = [round(-math.log((i + 0.5) / GAP_SLOTS) * 65536) for i in range(GAP_SLOTS)]
    mean_q16 = sum(quantiles) / GAP_SLOTS
    scale = round(mean_gap * 65536 / mean_q16) if mean_gap else 0
    # the mean gap BPF draws: mean of (q * scale >> 16) + 1 over the table
    drawn = sum((q * scale >> 16) + 1 for q in quantiles) // GAP_SLOTS if mean_gap else 0
    return struct.pack(f"<QQ{GAP_SLOTS}I", drawn, scale, *quantiles)


class MemCollector:
    """Open, configure, load and attach mem.bpf.o; read its maps into a snapshot."""

    def __init__(self, config: MemConfig, targets: base.Targets | None = None) -> None:
        """`targets`: shared with other collectors of the same run (`record`)."""
        self.sampler: PeriodController | None = None
        self._per_call: PerCallCost | None = None
        if config.min_age_ms < 0:
            raise UsageError(f"--min-age must be >= 0 ms, got {config.min_age_ms}")
        if not MIN_TABLE_SIZE <= config.table_size <= MAX_TABLE_SIZE:
            raise UsageError(
                f"--table-size must be from {MIN_TABLE_SIZE} to {MAX_TABLE_SIZE} (~1.4 GB of "
                f"kernel memory), got {config.table_size}"
            )
        self.config = config
        self.kernel_mode = config.kernel_mode
        self.launch = bool(config.targets.command)
        self.targets = targets if targets is not None else base.Targets(config.targets)
        self.obj: BpfObject | None = None
        self.allocators: dict[int, str] = {}  # pid (-1: every process) -> allocator file
        self.missing_functions: set[str] = set()
        self._points: dict[str, list[ProbePoint]] = {}
        self.symbolizer = Symbolizer()
        self.exits: RingBuffer | None = None  # exits, holds and new Python stacks
        self.guard: ResumeGuard | None = None
        self.stopped: set[int] = set()
        self.python = MemPython() if config.python and not self.kernel_mode else None
        # Targets may be stopped by the kernel side: at exit (launched), or a new image at its
        # first allocation until its interpreter is known (python.h).
        self.may_stop = self.launch or self.python is not None
        self._remembered_at = 0.0
        self.multi = (
            config.multi_uprobes and not self.kernel_mode and uprobe_multi.kernel_supports()
        )
        self.multi_refused = False
        self.session = (
            self.multi and config.budget_pct is not None and uprobe_multi.sessions_supported()
        )
        self._check_environment()

    @property
    def per_process(self) -> bool:
        """Probes attached per process (a launched command and each new process of it), so
        that other processes' allocator calls run nothing: under sessions."""
        return self.session and self.launch

    def _check_environment(self) -> None:
        needed: list[tuple[str, str]] = []
        if self.kernel_mode:
            needed += [("kmem", tp) for tp in KMEM_TRACEPOINTS]
        if self.config.page_faults:
            needed.append(("exceptions", "page_fault_user"))
        for category, name in needed:
            if not features.tracepoint_exists(category, name):
                raise EnvironmentLacks(
                    f"tracepoint {category}/{name} is missing on this kernel",
                    hint="`otlp-ebpf doctor` lists what this kernel offers",
                )
        if not self.kernel_mode and not features.uprobes_available():
            raise EnvironmentLacks(
                "uprobes are not available on this kernel (CONFIG_UPROBE_EVENTS)",
                hint="`otlp-ebpf doctor` lists what this kernel offers",
            )

    def _resolve_allocators(self) -> None:
        if self.kernel_mode:
            return
        if self.targets.held is not None:
            self.allocators[-1] = mem_allocator.allocator_of_command(self.targets.held.path)
            return
        for tgid in self.targets.tgids:
            self.allocators[tgid] = mem_allocator.allocator_of_process(tgid)
        # Sessions leave an unsampled call no trace, and glibc's arenas are told from the
        # program's own mmaps by their protection (mem.bpf.c): other allocators keep the
        # entry and return probes.
        self.session = self.session and all(map(mem_allocator.is_libc, self.allocators.values()))

    def _rodata(self) -> dict[str, int | bytes]:
        nr_mmap, nr_munmap = MMAP_SYSCALLS.get(platform.machine(), MMAP_SYSCALLS["x86_64"])
        values: dict[str, int | bytes] = dict(self.targets.rodata())
        values.update(
            stop_at_exit=int(self.launch),
            nr_mmap=nr_mmap,
            nr_munmap=nr_munmap,
            python_frames=int(self.python is not None),
            python_hold=int(self.python is not None),
            session=int(self.session),
            hold_new_processes=int(self.per_process),
        )
        return values

    def _programs_off(self) -> list[str]:
        off: list[str] = []
        if self.kernel_mode:
            off += [*UPROBE_PROGRAMS, *SESSION_PROGRAMS, *MMAP_PROGRAMS]
            off += ["forget_on_exec", "forget_thread"]
        else:
            off += KERNEL_PROGRAMS
            off += ["alloc_return"] if self.session else SESSION_PROGRAMS
            if not self.config.track_mmap:
                off += MMAP_PROGRAMS
            elif all(features.tracepoint_exists(*tp) for tp in MMAP_TRACEPOINTS):
                off += RAW_MMAP_PROGRAMS
            else:
                off += SYSCALL_MMAP_PROGRAMS
        if not self.per_process:
            off.append("hold_new_process")
        if not self.config.page_faults:
            off.append("page_fault")
        return off + self.targets.unused_programs()

    def start(self) -> None:
        self._resolve_allocators()
        try:
            self._load_and_attach()
        except MultiUprobeRefused as exc:
            # A kernel can report 6.6+ and still refuse multi-uprobe links (built without
            # them, or a distribution kernel that says so): start again, one uprobe each.
            console.debug(f"mem: multi-uprobe link refused ({exc}); classic uprobes")
            assert self.obj is not None
            if self.python is not None:
                self.python.frames.detach(self.obj)
            self.obj.close()
            self.multi = self.session = False
            self.multi_refused = True
            self._load_and_attach()
        if self.may_stop:
            # Targets may be stopped from now on: a tool killed with SIGKILL must not leave
            # them stopped (resume_guard.py).
            assert self.obj is not None
            self.guard = ResumeGuard(self.obj.map("targets").fd)

    def _load_and_attach(self) -> None:
        obj = BpfObject.open("mem")
        self.obj = obj
        obj.set_rodata(**self._rodata())
        obj.resize_map("allocs", self.config.table_size)
        for prog in self._programs_off():
            obj.disable(prog)
        if self.session:
            uprobe_multi.prepare(obj, ("alloc_enter", "free_enter"))
            uprobe_multi.prepare(obj, ("alloc_session",), session=True)
        elif self.multi and not self.kernel_mode:
            uprobe_multi.prepare(obj, UPROBE_PROGRAMS)
        obj.load()
        if self.python is not None:
            self.python.frames.attach(obj)
        self.targets.attach(obj, seed=False)
        for prog in self._tracepoint_programs():
            probes.attach_auto(obj, prog)
        for pid, binary in self.allocators.items():
            held = self.targets.held
            if pid == -1 and self.per_process and held is not None:
                pid = held.pid
            self._attach_allocator(obj, binary, pid)
        # Targets count only once entry and return probes are both live: a call entered
        # between the two attaches would never see its return (the launched child runs
        # Python code until it is released; a --pid target may be inside malloc).
        self.targets.seed(obj)
        if self.may_stop:
            self.exits = RingBuffer(obj.map("events"), self._on_event)
        for tgid in self.targets.tgids:
            if self.targets.held is None or tgid != self.targets.held.pid:
                self.symbolizer.remember_process(tgid)
                if self.python is not None:
                    self.python.frames.register_if_python(tgid, self.python.files)
        console.debug(f"mem: attached ({'kernel' if self.kernel_mode else 'user'} mode)")

    def _tracepoint_programs(self) -> list[str]:
        off = set(self._programs_off())
        candidates = [*MMAP_PROGRAMS, "forget_on_exec", "forget_thread", "page_fault"]
        candidates.append("hold_new_process")
        if self.kernel_mode:
            candidates += KERNEL_PROGRAMS
        return [p for p in candidates if p not in off]

    def probe_points(self, binary: str) -> list[ProbePoint]:
        """Where to probe in `binary`: one point per distinct function address (read once per
        file: under a budget each new process of a target is probed on its own)."""
        points = self._points.get(binary)
        if points is None:
            points = self._points[binary] = self._read_probe_points(binary)
        return points

    def _read_probe_points(self, binary: str) -> list[ProbePoint]:
        wanted = dict(ALLOCATING, free=FN_FREE)
        if self.launch:
            # _exit too: os._exit() ends a Python program without exit() (and without the
            # interpreter's finalization, so its Python frames can still be named there).
            wanted["exit"] = FN_EXIT
            wanted["_exit"] = FN_EXIT
        offsets = mem_allocator.function_offsets(binary, wanted)
        self.missing_functions |= set(wanted) - set(offsets)
        if "malloc" not in offsets or "free" not in offsets:
            raise UsageError(f"{binary}: no malloc/free to attach to")
        offsets["free"] = mem_allocator.cheap_probe_offset(
            binary, offsets["free"], platform.machine()
        )
        points: list[ProbePoint] = []
        for name, cookie in wanted.items():
            offset = offsets.get(name)
            if offset is not None and all(p.offset != offset for p in points):
                points.append(ProbePoint(name, offset, cookie))
        return points

    def _attach_multi(
        self,
        obj: BpfObject,
        binary: str,
        pid: int,
        points: list[ProbePoint],
        returning: list[ProbePoint],
    ) -> None:
        links: tuple[tuple[str, list[ProbePoint], bool], ...] = (
            ("alloc_enter", points, False),
            ("alloc_return", returning, True),
        )
        if self.session:
            links = (
                ("alloc_session", returning, False),
                ("free_enter", [p for p in points if p.cookie == FN_FREE], False),
                ("alloc_enter", [p for p in points if p.cookie == FN_EXIT], False),
            )
        try:
            for program, where, retprobe in links:
                if not where:
                    continue
                offsets, cookies = [p.offset for p in where], [p.cookie for p in where]
                uprobe_multi.attach_multi(
                    obj,
                    program,
                    binary,
                    offsets,
                    cookies,
                    pid=pid,
                    retprobe=retprobe,
                    session=program == "alloc_session",
                )
        except OSError as exc:
            if exc.errno in MULTI_REFUSED:
                raise MultiUprobeRefused(str(exc)) from exc
            raise

    def _attach_allocator(self, obj: BpfObject, binary: str, pid: int) -> None:
        points = self.probe_points(binary)
        returning = [p for p in points if p.cookie not in (FN_FREE, FN_EXIT)]
        try:
            if self.multi:
                self._attach_multi(obj, binary, pid, points, returning)
                return
            for point in points:
                uprobe_multi.attach_classic(
                    obj, "alloc_enter", binary, point.offset, point.cookie, pid=pid
                )
            for point in returning:
                uprobe_multi.attach_classic(
                    obj,
                    "alloc_return",
                    binary,
                    point.offset,
                    point.cookie,
                    pid=pid,
                    retprobe=True,
                )
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                raise UsageError(f"process {pid} exited before it could be attached") from exc
            raise

    # -- during the run ----------------------------------------------------------------------

    def _on_event(self, data: bytes) -> None:
        event = MemEvent.from_buffer_copy(data[: ctypes.sizeof(MemEvent)].ljust(16, b"\0"))
        tgid = int(event.tgid)
        if event.kind == EVENT_PY_STACK:
            if self.python is not None and self.obj is not None:
                self.python.name_stack(self.obj, tgid, int(event.stack_id))
            return
        self.stopped.add(tgid)
        if event.kind == EVENT_NEW_PROCESS:
            self._probe_new_process(tgid)
        elif event.kind == EVENT_PY_HOLD:
            if self.python is not None:
                self.python.decide(tgid)
        else:
            self.symbolizer.remember_process(tgid)
        self._resume(tgid)

    def _probe_new_process(self, tgid: int) -> None:
        """A target's new process, stopped at birth: its own probes before it runs."""
        if self.obj is None or -1 not in self.allocators:
            return
        try:
            self._attach_allocator(self.obj, self.allocators[-1], tgid)
        except (OSError, UsageError) as exc:
            console.debug(f"mem: process {tgid} not probed: {exc}")
        wait_for_stop(tgid)

    def _resume(self, tgid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(tgid, signal.SIGCONT)
        self.stopped.discard(tgid)

    def resume_all(self) -> None:
        """Never leave a target paused at exit, whatever ends the run: resume every stop we
        were told of, then any target still stopped (its event may not have been read)."""
        if self.exits is not None:
            with contextlib.suppress(OSError):
                self.exits.drain()
        for tgid in list(self.stopped):
            self._resume(tgid)
        if self.may_stop and self.obj is not None and self.obj.loaded:
            for raw in self.obj.map("targets"):
                tgid = int.from_bytes(raw, "little")
                if base.process_state(tgid) == "T":
                    self._resume(tgid)

    def poll(self, timeout_s: float) -> None:
        if self.exits is not None:
            self.exits.poll(max(0, int(timeout_s * 1000)))
        elif timeout_s > 0:
            time.sleep(timeout_s)

        now = time.monotonic()
        every = REMEMBER_EVERY_S if self.config.budget_pct is None else REMEMBER_EVERY_S_BUDGETED
        if not self.kernel_mode and now - self._remembered_at >= every:
            self._remembered_at = now
            self.remember_targets()

    def remember_targets(self) -> None:
        """Capture the maps of every live target (children and exec'd images included), for
        processes that end without calling exit()."""
        assert self.obj is not None
        held = self.targets.held
        target_keys = self.obj.map("targets").keys()
        for raw in target_keys:
            tgid = int.from_bytes(raw, "little")
            if held is not None and tgid == held.pid and held.poll() is not None:
                continue  # reaped: the pid may belong to another process now
            self.symbolizer.remember_process(tgid)

    def close(self) -> None:
        """Release what symbolization held (after build_snapshot)."""
        self.symbolizer.close()
        if self.python is not None:
            self.python.close()

    def detach(self) -> None:
        """Detach every probe at once: each uprobe detach waits ~0.1 s for the kernel to
        quiesce, and those waits overlap when the detaches run side by side."""
        if self.obj is None or not self.obj.links:
            return
        links = list(self.obj.links)
        with ThreadPoolExecutor(max_workers=min(DETACH_THREADS, len(links))) as pool:
            list(pool.map(lambda link: link.destroy(), links))

    # -- reading the maps --------------------------------------------------------------------

    def set_sampling(self, mean_gap: int) -> None:
        """Track blocks by byte sampling with a mean gap of `mean_gap` bytes from now on (0:
        every block). Blocks tracked so far keep their weights, so their frees still match."""
        assert self.obj is not None
        self.obj.map("sampling").update((0).to_bytes(4, "little"), sampling_value(mean_gap))

    def sampling_knob(self, budget_pct: float) -> Knob:
        """The budget's hold on this collector: the mean gap between sample points, in units
        of SAMPLE_UNIT bytes (period 1: every block)."""
        self.sampler = controller = PeriodController(
            budget_pct,
            MAX_SAMPLE_PERIOD,
            keep_raises=self.session,
            activity=self.calls_probed,
            fit_from=FIT_FROM_PERIOD,
        )
        self._per_call = PerCallCost(time.monotonic(), self._per_call_reading())

        def gap(period: int) -> int:
            return 0 if period <= 1 else period * SAMPLE_UNIT

        return Knob(
            "mem_sample_bytes",
            lambda pct: gap(controller.next_period(pct)),
            lambda: gap(controller.period),
            self.set_sampling,
            controller,
        )

    def _per_call_reading(self) -> ProgramReading:
        """Run time and runs so far of each program on every allocator call and free."""
        if self.obj is None or not self.obj.loaded:
            return {}
        names = [p for p in PER_CALL_PROGRAMS if self.obj.enabled(p)]
        return {name: base.program_cost(self.obj, [name]) for name in names}

    def calls_probed(self) -> float:
        """Runs so far of the programs on every allocator call and free (sampled or not): what
        the cost no sampling period removes is paid on."""
        return float(sum(runs for _, runs in self._per_call_reading().values()))

    def end_per_call(self) -> None:
        """The loop ended (before the detach): what the per-call programs cost in it."""
        if self._per_call is not None:
            self._per_call.end(time.monotonic(), self._per_call_reading())

    def not_held_notes(self, steady_pct: float | None) -> tuple[str, ...]:
        """`budget 1% not held: ...` when the steady state cost more than the budget (`None`:
        when the per-call programs alone did), saying what no sampling period removes."""
        sampler, per_call = self.sampler, self._per_call
        if sampler is None or per_call is None or per_call.seconds <= 0:
            return ()
        budget = sampler.budget_pct
        over = per_call.pct if steady_pct is None else steady_pct
        if over <= budget:
            return ()
        steady = "" if steady_pct is None else f" (steady {steady_pct:.2f}%)"
        sparsest = (
            "at the sparsest sampling"
            if sampler.highest >= MAX_SAMPLE_PERIOD
            else f"at one point per {sampler.highest * SAMPLE_UNIT:,} bytes at the sparsest"
        )
        return (
            f"budget {budget:g}% not held{steady}: {per_call.pct:.2f}% of a core went to the "
            f"programs on every allocator call and free of the targets, {per_call.floor_pct:.2f}% "
            f"of it whatever the sampling ({per_call.rate:,.0f} runs a second at "
            f"{per_call.cheapest_ns:.0f} ns, the cheapest run); the rest to the sampled blocks "
            f"({sparsest}) and the tool's own CPU",
        )

    def sampling_notes(self) -> tuple[str, ...]:
        """What a budget did to the figures (the summary line repeats it)."""
        if self.sampler is None:
            return ()
        head = f"budget {self.sampler.budget_pct:g}%"
        if self.sampler.highest == 1:
            return (f"{head}: every block tracked, figures exact",)
        return (
            f"{head}: blocks sampled by bytes, one sample point per "
            f"{self.sampler.highest * SAMPLE_UNIT:,} bytes allocated at the sparsest (per tick "
            "in self_cost.ticks as mem_sample_bytes); a block of s bytes is tracked with "
            "probability 1 - exp(-s / that) and weighs its points times it in bytes, so "
            "outstanding bytes and block counts are unbiased estimates and a block of many "
            "times that size is never missed" + floor_note(self.sampler),
        )

    def read_counter(self, slot: int) -> int:
        assert self.obj is not None
        return self.obj.map("counters").lookup_u64(slot)

    def read_drops(self) -> dict[str, int]:
        assert self.obj is not None
        drops = self.obj.map("drops")
        return {r: n for slot, r in DROP_REASONS.items() if (n := drops.lookup_u64(slot))}

    def read_outstanding(self, drops: dict[str, int]) -> RawOutstanding:
        """Per-stack totals: the kernel's own unless they are incomplete or an age filter
        needs each block's time, then summed from the live blocks."""
        assert self.obj is not None
        if self.config.min_age_ms == 0 and not drops.get(DROP_REASONS[3]):
            out = RawOutstanding()
            for raw_key, raw_value in self.obj.map("totals").items():
                key = StackKey.from_buffer_copy(raw_key)
                total = StackTotal.from_buffer_copy(raw_value)
                if total.count > 0:
                    out.add(key.tgid, key.stack_id, total.bytes, total.count)
            return out
        blocks = [
            (AllocKey.from_buffer_copy(k), AllocInfo.from_buffer_copy(v))
            for k, v in self.obj.map("allocs").items()
        ]
        return aggregate_blocks(
            blocks, now_ns=time.monotonic_ns(), min_age_ns=self.config.min_age_ms * 1_000_000
        )

    def read_levels(self) -> tuple[int, int, int, int]:
        """(outstanding bytes, allocations, frees, page faults) so far, for a timeline: the
        kernel's per-stack totals and counters, nothing symbolized."""
        assert self.obj is not None
        outstanding = 0
        for _key, raw_value in self.obj.map("totals").items():
            total = StackTotal.from_buffer_copy(raw_value)
            if total.count > 0:
                outstanding += total.bytes
        faults = sum(self.read_faults().values()) if self.config.page_faults else 0
        return (
            outstanding,
            self.read_counter(COUNT_ALLOCS),
            self.read_counter(COUNT_FREES),
            faults,
        )

    def read_faults(self) -> dict[tuple[int, int], int]:
        assert self.obj is not None
        out: dict[tuple[int, int], int] = defaultdict(int)
        for raw_key, raw_value in self.obj.map("faults").items():
            key = StackKey.from_buffer_copy(raw_key)
            out[(key.tgid, key.stack_id)] += int.from_bytes(raw_value[:8], "little")
        return out

    def read_stacks(self, ids: Iterator[int]) -> dict[int, tuple[int, ...]]:
        """Addresses (leaf first) of each wanted stack id; a negative id has none."""
        assert self.obj is not None
        return read_stored_stacks(self.obj.map("stacks"), ids)

    def read_comms(self) -> dict[int, str]:
        assert self.obj is not None
        return {
            int.from_bytes(k, "little"): hosttext.decode(v.split(b"\0", 1)[0])
            for k, v in self.obj.map("comms").items()
        }

    # -- symbolization -----------------------------------------------------------------------

    def frames_of(
        self, tgid: int, addrs: Sequence[int], *, at_return: bool, stack_id: int = -1
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(frames, modules) root first; a user stack's Python frames in place of the
        interpreter's evaluation loop."""
        if not addrs:
            return (UNKNOWN_STACK,), ("",)
        if tgid == 0:
            names = self.symbolizer.kernel_frames(addrs)
            return tuple(reversed(names)), ("",) * len(names)
        python: tuple[PyFrame, ...] = ()
        if self.python is not None:
            addrs, python = self.python.frames_for(tgid, stack_id, addrs)
        else:
            addrs = split_stack(addrs)[0]
        if at_return:
            pairs = self.symbolizer.user_frames(
                tgid, return_addresses_to_calls(addrs), adjust_return_addresses=False
            )
        else:
            pairs = self.symbolizer.user_frames(tgid, addrs)
        pairs = merged_frames(pairs, python)
        pairs.reverse()
        return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)


@dataclass
class RawResult:
    """Everything read from the kernel before the BPF object closes."""

    outstanding: RawOutstanding
    faults: dict[tuple[int, int], int]
    stacks: dict[int, tuple[int, ...]]
    comms: dict[int, str]
    drops: dict[str, int]
    allocations: int
    frees: int


def read_result(collector: MemCollector) -> RawResult:
    drops = collector.read_drops()
    outstanding = collector.read_outstanding(drops)
    faults = collector.read_faults()
    ids = [sid for _, sid in outstanding.by_stack] + [sid for _, sid in faults]
    return RawResult(
        outstanding=outstanding,
        faults=faults,
        stacks=collector.read_stacks(iter(ids)),
        comms=collector.read_comms(),
        drops={**drops, **collector.targets.losses()},
        allocations=collector.read_counter(COUNT_ALLOCS),
        frees=collector.read_counter(COUNT_FREES),
    )


@dataclass
class _Merged:
    bytes: int = 0
    count: int = 0
    modules: tuple[str, ...] = ()


def build_allocations(collector: MemCollector, raw: RawResult) -> list[Allocation]:
    """Symbolized outstanding allocations, merged by frames, largest first."""
    merged: dict[tuple[int, tuple[str, ...]], _Merged] = {}
    for (tgid, stack_id), (size, count) in raw.outstanding.by_stack.items():
        if count <= 0:
            continue
        frames, modules = collector.frames_of(
            tgid, raw.stacks.get(stack_id, ()), at_return=tgid != 0, stack_id=stack_id
        )
        row = merged.setdefault((tgid, frames), _Merged(modules=modules))
        row.bytes += size
        row.count += count
    out = [
        Allocation(
            pid=tgid,
            frames=frames,
            bytes=row.bytes,
            count=row.count,
            comm=raw.comms.get(tgid, "kernel" if tgid == 0 else ""),
            modules=row.modules,
        )
        for (tgid, frames), row in merged.items()
    ]
    out.sort(key=lambda a: (-a.bytes, -a.count, a.frames))
    return out


def build_faults(collector: MemCollector, raw: RawResult) -> list[StackCount]:
    counts: dict[tuple[int, tuple[str, ...]], int] = defaultdict(int)
    modules_of: dict[tuple[int, tuple[str, ...]], tuple[str, ...]] = {}
    for (tgid, stack_id), n in raw.faults.items():
        frames, modules = collector.frames_of(
            tgid, raw.stacks.get(stack_id, ()), at_return=False, stack_id=stack_id
        )
        counts[(tgid, frames)] += n
        modules_of[(tgid, frames)] = modules
    out = [
        StackCount(
            tgid, tgid, raw.comms.get(tgid, ""), frames, n, modules=modules_of[(tgid, frames)]
        )
        for (tgid, frames), n in counts.items()
    ]
    out.sort(key=lambda s: (-s.count, s.frames))
    return out


def notes_for(collector: MemCollector, ended: str) -> tuple[str, ...]:
    notes = [f"ended: {ended}"]
    if collector.kernel_mode:
        notes.append("kernel allocations (kmalloc, kmem_cache_alloc) by kernel stack")
    for pid, binary in sorted(collector.allocators.items()):
        who = "every process (filtered to targets)" if pid == -1 else f"pid {pid}"
        notes.append(f"allocator: {binary} ({who})")
    if collector.config.targets.pids:
        notes.append("attached to a running process: only allocations made after attach count")
    if collector.multi_refused:
        notes.append("multi-uprobe links refused by the kernel: one uprobe per function")
    if collector.missing_functions:
        notes.append("not in the allocator: " + ", ".join(sorted(collector.missing_functions)))
    if collector.config.min_age_ms:
        notes.append(f"allocations younger than {collector.config.min_age_ms} ms ignored")
    if collector.python is not None:
        notes += collector.python.frames.notes()
    return tuple(notes)


def collect(config: MemConfig) -> MemSnapshot:
    """Run the mem collector to its end and return the snapshot."""
    base.require_privileges("mem")
    collector = MemCollector(config)
    budgeted: BudgetedRun | None = None
    steady = 0.0
    with base.session(collector.targets, collector.start) as run:
        try:
            if config.budget_pct:
                budgeted = budgeted_run(collector, config.budget_pct, run.clock.cpu0)
            ended = base.run_loop(
                collector.targets,
                budgeted.poll if budgeted is not None else collector.poll,
                duration_s=config.duration_s,
                clock=run.clock,
                stop=run.stop,
                # under a budget every wake-up is counted: events wake the poll anyway
                poll_s=0.05 if budgeted is None else BUDGET_POLL_S,
            )
            duration = run.clock.elapsed()
            steady = budgeted.end_loop() if budgeted is not None else 0.0
            collector.end_per_call()
            collector.resume_all()
            if not collector.kernel_mode:
                collector.remember_targets()
            assert collector.obj is not None
            bpf_ns, runs = base.program_cost(collector.obj, collector.obj.program_names())
            raw = read_result(collector)
        finally:
            # Detach first: afterwards no target can be stopped at exit any more, so the
            # resume below is the last word. Stopped targets must run again before the held
            # command is reaped.
            collector.detach()
            collector.resume_all()
            if collector.guard is not None:
                collector.guard.close()
    try:
        snapshot = build_snapshot(collector, run.clock, duration, ended, raw, (bpf_ns, runs))
    finally:
        collector.close()
    if budgeted is None:
        return snapshot
    return dataclasses.replace(
        snapshot,
        self_cost=budgeted.self_cost(snapshot.self_cost, steady),
        notes=(*snapshot.notes, *collector.not_held_notes(steady)),
    )


def budgeted_run(collector: MemCollector, budget_pct: float, cpu0: float) -> BudgetedRun:
    """The run's budget: the tool's CPU and the programs' run time against byte sampling."""
    obj = collector.obj
    assert obj is not None
    held = collector.targets.held
    return start_budgeted_run(
        budget_pct,
        cpu0,
        lambda: base.program_cost(obj, obj.program_names())[0],
        held.pid if held is not None else None,
        collector.sampling_knob(budget_pct),
        collector.poll,
    )


def build_snapshot(
    collector: MemCollector,
    clock: base.RunClock,
    duration: float,
    ended: str,
    raw: RawResult,
    bpf: tuple[int, int],
) -> MemSnapshot:
    """Symbolize what `read_result` read (the slow part, after the detach) into a snapshot."""
    config = collector.config
    allocations = build_allocations(collector, raw)
    faults = build_faults(collector, raw)
    pids = sorted({a.pid for a in allocations if a.pid} | {f.pid for f in faults})
    processes = tuple(p for pid in pids if (p := base.read_process_info(pid)))
    return MemSnapshot(
        started_at=clock.started_at,
        duration_s=round(duration, 3),
        host=base.hostname(),
        targets=config.targets.describe(),
        lost_events=raw.drops,
        processes=processes,
        self_cost=base.self_cost(clock, *bpf),
        notes=(
            *notes_for(collector, ended),
            *collector.sampling_notes(),
            *collector.targets.command_notes(),
        ),
        command_exit=collector.targets.command_exit(),
        outstanding=tuple(allocations),
        outstanding_bytes=sum(a.bytes for a in allocations),
        allocations_total=raw.allocations,
        frees_total=raw.frees,
        page_faults=tuple(faults),
        mode="kernel" if collector.kernel_mode else "user",
        min_age_ms=config.min_age_ms,
    )
