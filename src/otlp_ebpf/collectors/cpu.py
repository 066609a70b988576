"""On-CPU sampling and off-CPU blocked time by stack (bpf/cpu.bpf.c), symbolized at the end.

The kernel side counts samples per (pid, tid, user stack id, kernel stack id, comm) and sums
blocked nanoseconds per the same key; only those aggregates and the stack map cross to user
space, once, when the run ends. While it runs, a small ring buffer of pid events (first sample
of a process, exec, exit) lets the symbolizer capture /proc/PID/maps while short-lived
processes still exist.

Stack unwinding is chosen by `pick_sampler`: this module provides frame-pointer unwinding
(`bpf_get_stack`, each stack stored once); collectors/cpu_dwarf.py unwinds with DWARF CFI.
`CompositeSampler` runs two in one run (DWARF for on-CPU samples, frame pointers for off-CPU
blocks). What both share is in collectors/cpu_sampling.py.

Off-CPU blocks still in progress when the run ends count up to that moment: their start time
and stacks were recorded when the thread left the CPU.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from otlp_ebpf import console, hosttext
from otlp_ebpf.collectors import base, exit_maps
from otlp_ebpf.collectors.blocked_threads import (
    BlockedThread,
    ThreadMark,
    blocked_threads,
    mark_threads,
)
from otlp_ebpf.collectors.budget import (
    BudgetController,
    BudgetedRun,
    CostMeter,
    Governor,
    UnwindFallback,
    cpu_budget_note,
    cpu_knob,
)
from otlp_ebpf.collectors.cpu_sampling import (
    KERNEL_MODULE,
    CompositeSampler,
    CpuConfig,
    RawStack,
    SampledStacks,
    Sampler,
    merge_stacks,
    without_tracing_frames,
)
from otlp_ebpf.collectors.exit_maps import ExitMaps
from otlp_ebpf.collectors.python_frames import Holds, PythonFrames
from otlp_ebpf.collectors.stack_store import read_stored_stacks
from otlp_ebpf.errors import UsageError
from otlp_ebpf.model import KERNEL_SUFFIX, CpuSnapshot, ProcessInfo, StackCount
from otlp_ebpf.runtime import features, probes, stats
from otlp_ebpf.runtime.events import RingBuffer
from otlp_ebpf.runtime.loader import BpfObject, Link
from otlp_ebpf.symbolize.procmaps import OpenFiles
from otlp_ebpf.symbolize.python import UNKNOWN_CODE, PyFrame, merge_python_frames
from otlp_ebpf.symbolize.resolver import UNKNOWN_FRAME, Symbolizer

COMM_LEN = 16
LOST_STACK_FRAME = "[lost stack]"
BLOCKED_WHOLE_RUN_FRAME = "[blocked since before the run]"
# --kernel-only: a sample taken while the thread ran user code (it has no kernel stack).
USER_MODE_FRAME = "[user]"
STACK_USER_MODE = -4096  # CPU_STACK_USER_MODE in bpf/cpu.h: outside the errno range
UNWIND_MODES = ("fp", "dwarf", "auto")
# A process's libraries are mapped after exec, while it already runs: capture its maps again
# this long after it was first seen (while it lives), so short runs still symbolize.
RECAPTURE_AFTER_S = (0.02, 0.2)
# Index in the kernel's drops array -> the name shown in lost_events.
DROP_REASONS = (
    "count table full",
    "stack table full",
    "samples without stack",
    "off-cpu table full",
    "off-cpu start table full",
    "pid events lost",
    "off-cpu blocks lost: switch-in unseen",
    "off-cpu blocks lost: switch-out unseen",
)
PID_EXIT = 3  # CPU_PID_EXIT in bpf/cpu.h
PID_PY_STACK = 4  # CPU_PID_PY_STACK in bpf/cpu.h: a new stored Python stack
EXIT_MAPS_PROGRAM = "record_exit_maps"
EXIT_MAPS_LOST = "exit maps: ring buffer full"
SWITCHES_SKIPPED = "off-cpu: context switches the kernel skipped the program for"
PID_PY_HELD = 5  # CPU_PID_PY_HELD: a new image stopped at its first sample (bpf/python.h)
SAMPLE_PROGRAM = "on_cpu_sample"
SWITCH_BTF, SWITCH_TP = "btf_sched_switch", "tp_sched_switch"
PID_PROGRAMS = ("on_exec", "on_exit")


class CpuKey(ctypes.Structure):
    """Mirror of struct cpu_key (bpf/cpu.h)."""

    _fields_ = [
        ("pid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("user_stack_id", ctypes.c_int64),
        ("kernel_stack_id", ctypes.c_int64),
        ("comm", ctypes.c_char * COMM_LEN),
        ("py_stack_id", ctypes.c_int64),
    ]


class OffCpuValue(ctypes.Structure):
    """Mirror of struct offcpu_value (bpf/cpu.h)."""

    _fields_ = [("count", ctypes.c_uint64), ("total_ns", ctypes.c_uint64)]


class OffCpuStart(ctypes.Structure):
    """Mirror of struct offcpu_start (bpf/cpu.h)."""

    _fields_ = [
        ("ts", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("user_stack_id", ctypes.c_int64),
        ("kernel_stack_id", ctypes.c_int64),
        ("comm", ctypes.c_char * COMM_LEN),
        ("py_stack_id", ctypes.c_int64),
    ]


class PidEvent(ctypes.Structure):
    """Mirror of struct pid_event (bpf/cpu.h)."""

    _fields_ = [("pid", ctypes.c_uint32), ("kind", ctypes.c_uint32)]


class PyStackEvent(ctypes.Structure):
    """Mirror of struct py_stack_event (bpf/cpu.h)."""

    _fields_ = [("pid", ctypes.c_uint32), ("kind", ctypes.c_uint32), ("stack_id", ctypes.c_int64)]


def check_config(config: CpuConfig) -> None:
    """UsageError for settings that cannot work, before anything is loaded or launched."""
    limit = probes.max_sample_rate()
    if config.on_cpu and not 1 <= config.frequency_hz <= limit:
        raise UsageError(
            f"frequency {config.frequency_hz} Hz is outside 1..{limit} "
            f"(the kernel's limit, {probes.MAX_SAMPLE_RATE_PATH})"
        )
    if not config.user_stacks and not config.kernel_stacks:
        raise UsageError("--user-only and --kernel-only exclude each other")
    if not config.on_cpu and not config.off_cpu:
        raise UsageError("nothing to record: enable on-CPU sampling or --off-cpu")
    if config.min_block_us < 0:
        raise UsageError(f"--min-block-us must be >= 0, got {config.min_block_us}")
    if config.unwind not in UNWIND_MODES:
        raise UsageError(
            f"--unwind must be one of {', '.join(UNWIND_MODES)}, got {config.unwind!r}"
        )
    if config.unwind == "dwarf" and not config.on_cpu:
        raise UsageError(
            "--unwind dwarf unwinds on-CPU samples; --off-cpu-only takes none "
            "(off-CPU stacks use frame pointers): use --unwind fp or auto"
        )
    if config.unwind == "dwarf" and not config.user_stacks:
        raise UsageError("--unwind dwarf unwinds user stacks; --kernel-only records none")


def pick_sampler(config: CpuConfig, symbolizer: Symbolizer) -> Sampler:
    """The sampler for `config.unwind`: frame pointers here; DWARF (and `auto`, which picks
    per frame) in collectors/cpu_dwarf.py.

    DWARF unwinding covers on-CPU user stacks. Off-CPU stacks are taken with frame pointers in
    the same run (a copy of 16 KB of stack at every context switch would cost far more than the
    sampling itself); without on-CPU user stacks to unwind, `auto` is frame-pointer sampling
    (check_config refuses `dwarf` there).
    """
    if config.unwind == "fp" or not config.on_cpu or not config.user_stacks:
        return FramePointerSampler(config, symbolizer)
    from otlp_ebpf.collectors.cpu_dwarf import CpuDwarfSampler

    falls_back = may_fall_back(config)
    if not config.off_cpu and not falls_back:
        return CpuDwarfSampler(config, symbolizer)
    # One Python registry for all: a process the on-CPU sampler sees first (it reads its
    # samples as they come) has its off-CPU blocks walked too, and the other way round.
    python = PythonFrames() if config.python else None
    dwarf = CpuDwarfSampler(config, symbolizer, python)
    on_cpu: Sampler = dwarf
    if falls_back:
        from otlp_ebpf.collectors.cpu_fallback import FallbackSampler

        fp_on_cpu = dataclasses.replace(config, off_cpu=False)
        fp = FramePointerSampler(fp_on_cpu, symbolizer, python, paused=True)
        on_cpu = FallbackSampler(dwarf, fp)
    if not config.off_cpu:
        return on_cpu
    off_cpu_only = dataclasses.replace(config, on_cpu=False)
    off_cpu = FramePointerSampler(off_cpu_only, symbolizer, python)
    return CompositeSampler(on_cpu=on_cpu, off_cpu=off_cpu)


def may_fall_back(config: CpuConfig) -> bool:
    """DWARF sampling under a budget with `--unwind auto` falls back to frame pointers when
    the budget cannot be held at its floor rate (collectors/budget.py, UnwindFallback)."""
    return bool(config.budget_pct) and config.unwind == "auto" and config.on_cpu


def unwind_fallback(sampler: Sampler, config: CpuConfig) -> UnwindFallback | None:
    """The budget's way from DWARF to frame pointers in this run (None: it has one way only;
    with --unwind dwarf, none taken, only a warning when the budget is not held)."""
    from otlp_ebpf.collectors.cpu_fallback import fallback_part

    part = fallback_part(sampler)
    if part is not None:
        return UnwindFallback(part.fall_back)
    if config.unwind == "dwarf" and config.user_stacks and config.on_cpu:
        return UnwindFallback(lambda hz, why: None, allowed=False)
    return None


@dataclass
class _RawCounts:
    on_cpu: list[tuple[CpuKey, int]]
    off_cpu: list[tuple[CpuKey, int, int]]
    stacks: dict[int, tuple[int, ...]]
    still_blocked: int = 0  # blocks in progress at the end, included in off_cpu
    still_blocked_ns: int = 0


class ProcessWatch:
    """Captures /proc/PID/maps (and identity) of processes as they appear, while they live.

    Each process is captured when first seen and again at RECAPTURE_AFTER_S, because the
    first capture may come before the dynamic loader has mapped the libraries.
    """

    def __init__(
        self, symbolizer: Symbolizer, on_capture: Callable[[int], None] | None = None
    ) -> None:
        self.symbolizer = symbolizer
        self.on_capture = on_capture  # told of every capture (Python interpreters are found so)
        self.processes: dict[int, ProcessInfo] = {}
        self._due: list[tuple[float, int]] = []

    def remember(self, pid: int) -> None:
        self._capture(pid)
        now = time.monotonic()
        self._due.extend((now + delay, pid) for delay in RECAPTURE_AFTER_S)
        self._due.sort()

    def _capture(self, pid: int) -> None:
        self.symbolizer.remember_process(pid)
        info = base.read_process_info(pid)
        # An exiting process has no exe left: keep what was read while it ran.
        if info is not None and (info.exe or pid not in self.processes):
            self.processes[pid] = info
        if self.on_capture is not None:
            self.on_capture(pid)

    def next_due_in(self) -> float | None:
        """Seconds until the next recapture is due, or None when none is pending."""
        return max(0.0, self._due[0][0] - time.monotonic()) if self._due else None

    def recapture_due(self) -> None:
        now = time.monotonic()
        while self._due and self._due[0][0] <= now:
            _, pid = self._due.pop(0)
            self._capture(pid)


class FramePointerSampler:
    """cpu.bpf.o with bpf_get_stack: frame-pointer user stacks and kernel stacks."""

    def __init__(
        self,
        config: CpuConfig,
        symbolizer: Symbolizer,
        python: PythonFrames | None = None,
        *,
        paused: bool = False,
    ) -> None:
        self.config = config
        self.symbolizer = symbolizer
        # paused: loaded and following processes, on-CPU sampling started later by
        # `start_sampling` (a budget's fallback from DWARF)
        self.paused = paused
        self.obj: BpfObject | None = None
        self.use_btf = features.tp_btf_supported()
        self.events: RingBuffer | None = None
        self.exits: ExitMaps | None = None  # mappings recorded at the exit of sampled processes
        # Python frames: processes registered as seen, stacks named as they are first stored.
        self.python = python
        if python is None and config.python and config.user_stacks:
            self.python = PythonFrames()
        self._python_notes = python is None  # a shared registry's notes come from its owner
        self._files = OpenFiles()
        self._py_named: dict[tuple[int, int], tuple[PyFrame, ...]] = {}
        self.watch = ProcessWatch(symbolizer, self._register_python if self.python else None)
        self.stopped_ns = 0  # CLOCK_MONOTONIC (bpf_ktime_get_ns) when sampling stopped
        self.attached_ns = 0  # CLOCK_MONOTONIC once every program was attached
        self.marks: dict[int, ThreadMark] = {}  # target threads at the start (off-CPU, -p)
        self.asleep_throughout: list[BlockedThread] = []
        self.sample_links: list[Link] = []
        self.holds: Holds | None = None

    # -- set-up -----------------------------------------------------------------------------

    def _rodata(self, targets: base.Targets) -> dict[str, int | bytes]:
        values: dict[str, int | bytes] = dict(targets.rodata())
        values.update(
            user_stacks=int(self.config.user_stacks),
            kernel_stacks=int(self.config.kernel_stacks),
            min_block_ns=self.config.min_block_us * 1000,
            python_frames=int(self.python is not None),
            python_hold=int(self._holds_new_images(targets)),
        )
        return values

    def _holds_new_images(self, targets: base.Targets) -> bool:
        """A targeted run holds each new image at its first on-CPU sample until its
        interpreter is known (bpf/python.h), so a launched `python app.py` has Python frames
        from the start."""
        # A paused sampler's first samples come mid-run, of processes the other sampler has
        # registered already: nothing to hold them for.
        return (
            self.python is not None and targets.filtered and self.config.on_cpu and not self.paused
        )

    def _unused_programs(self, targets: base.Targets) -> list[str]:
        unused = [SWITCH_TP if self.use_btf else SWITCH_BTF]
        if not self.config.off_cpu:
            unused = [SWITCH_BTF, SWITCH_TP]
        if not self.config.on_cpu:
            unused.append(SAMPLE_PROGRAM)
        return unused + targets.unused_programs(self.use_btf)

    def programs(self) -> list[str]:
        """The programs this run loaded (for the tool's own cost)."""
        assert self.obj is not None
        return [p for p in self.obj.program_names() if self.obj.enabled(p)]

    def start(self, targets: base.Targets) -> None:
        obj = BpfObject.open("cpu")
        self.obj = obj
        obj.set_rodata(**self._rodata(targets))
        obj.resize_map("stacks", self.config.stack_entries)
        for prog in self._unused_programs(targets):
            obj.disable(prog)
        if not exit_maps.supported():
            obj.disable(EXIT_MAPS_PROGRAM)
        obj.load()
        if self.python is not None:
            self.python.attach(obj)
        targets.attach(obj)
        if self.python is not None and self._holds_new_images(targets):
            self.holds = Holds(self.python, obj.map("targets").fd)
        self.events = RingBuffer(obj.map("pid_events"), self._on_pid_event)
        if obj.enabled(EXIT_MAPS_PROGRAM):
            # Attached first: a tracepoint runs its programs in attach order, and the record
            # must be written before on_exit forgets the process and tells us of its exit.
            self.exits = ExitMaps(obj)
            probes.attach_auto(obj, EXIT_MAPS_PROGRAM)
        for prog in PID_PROGRAMS:
            probes.attach_auto(obj, prog)
        if self.config.off_cpu:
            probes.attach_auto(obj, SWITCH_BTF if self.use_btf else SWITCH_TP)
        if self.config.on_cpu and not self.paused:
            self.sample_links = probes.attach_cpu_clock(
                obj, SAMPLE_PROGRAM, self.config.frequency_hz
            )
        for tgid in targets.tgids:
            self.watch.remember(tgid)
        self.attached_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        if self.config.off_cpu and (targets.spec.pids or targets.spec.tid):
            self.marks = self._mark_threads(targets)

    @staticmethod
    def _mark_threads(targets: base.Targets) -> dict[int, ThreadMark]:
        """Target threads and their switch counts now: one that has not switched by the end
        slept through the run, unseen by sched_switch."""
        tgids = [*targets.tgids, *(c for t in targets.tgids for c in base.descendants_of(t))]
        marks = mark_threads(dict.fromkeys(tgids))
        if targets.spec.tid:
            marks = {tid: m for tid, m in marks.items() if tid == targets.spec.tid}
        return marks

    # -- while running --------------------------------------------------------------------------

    def _on_pid_event(self, data: bytes) -> None:
        event = PidEvent.from_buffer_copy(data[: ctypes.sizeof(PidEvent)])
        if event.kind == PID_PY_STACK:
            self._name_python_stack(
                PyStackEvent.from_buffer_copy(data[: ctypes.sizeof(PyStackEvent)])
            )
            return
        if event.kind == PID_EXIT and self._remember_recorded(event.pid):
            return
        self.watch.remember(event.pid)
        if event.kind == PID_PY_HELD and self.holds is not None:
            self.holds.release(event.pid)

    def _remember_recorded(self, pid: int) -> bool:
        """Give the symbolizer the maps recorded at the exit of `pid`: the process is gone, and
        it may have been before its maps could be read (or after an exec since)."""
        if self.exits is None:
            return False
        maps = self.exits.maps_of(pid, self.symbolizer.files)
        return maps is not None and self.symbolizer.remember_maps(pid, maps)

    def _register_python(self, pid: int) -> None:
        assert self.python is not None
        self.python.register_if_python(pid, self._files)

    def _name_python_stack(self, event: PyStackEvent) -> None:
        """A Python stack stored for the first time: name its code objects now, while the
        process lives (the aggregates are read only at the end)."""
        key = (int(event.pid), int(event.stack_id))
        if self.python is None or key in self._py_named:
            return
        words = self._read_stacks({key[1]}).get(key[1])
        if words:
            self._py_named[key] = self.python.resolve_words(key[0], words)

    def _python_frames(
        self, key: CpuKey, stacks: dict[int, tuple[int, ...]]
    ) -> tuple[PyFrame, ...]:
        if self.python is None or key.py_stack_id < 0:
            return ()
        named = self._py_named.get((key.pid, key.py_stack_id))
        if named is None:
            named = self.python.resolve_words(key.pid, stacks.get(key.py_stack_id, ()))
            if not named or any(f.name == UNKNOWN_CODE for f in named):
                # A stack is announced once, for the process that stored it first; the same
                # words in another (a forked worker, gone by now) name the same code.
                named = next(
                    (v for (_, sid), v in self._py_named.items() if sid == key.py_stack_id),
                    named,
                )
            self._py_named[(key.pid, key.py_stack_id)] = named
        return named

    def poll(self, timeout_s: float) -> None:
        due = self.watch.next_due_in()
        wait = timeout_s if due is None else min(timeout_s, due)
        if self.events is None:
            base.sleep_poll(wait)
        else:
            self.events.poll(int(wait * 1000))
        self.watch.recapture_due()

    def processes(self) -> dict[int, ProcessInfo]:
        return dict(self.watch.processes)

    def set_frequency(self, hz: int) -> None:
        """Sample at `hz` from now on (an overhead budget lowers it): the sampling events take
        the new rate in place (or are opened again at it); the counts so far stay."""
        if self.obj is None or not self.sample_links:
            return
        self.sample_links = probes.retune_cpu_clock(self.obj, self.sample_links, SAMPLE_PROGRAM, hz)

    def start_sampling(self, hz: int) -> None:
        """A paused sampler starts on-CPU sampling at `hz` (before the end of the run)."""
        if self.obj is not None and not self.sample_links and not self.stopped_ns:
            self.sample_links = probes.attach_cpu_clock(self.obj, SAMPLE_PROGRAM, hz)

    def raw_counts(self) -> dict[RawStack, int]:
        """On-CPU samples so far per stack key, unsymbolized (read while running, for a
        timeline: the kernel's counts, nothing symbolized). A key is (pid, the key's bytes)."""
        assert self.obj is not None
        out: dict[RawStack, int] = {}
        for k, v in self.obj.map("counts").items():
            out[(CpuKey.from_buffer_copy(k).pid, bytes(k))] = int.from_bytes(v[:8], "little")
        return out

    def raw_blocked(self) -> dict[RawStack, int]:
        """Blocked nanoseconds so far per stack key, unsymbolized (read while running, for a
        timeline): finished blocks from the kernel's table, plus blocks still in progress
        counted up to now (up to the stop once stopped), so a thread stuck on a lock shows in
        every interval it waits, not all at once when it wakes. Keys as in `raw_counts`."""
        if self.obj is None or not self.config.off_cpu:
            return {}
        out: dict[RawStack, int] = {}
        for k, v in self.obj.map("offcpu").items():
            value = OffCpuValue.from_buffer_copy(v[: ctypes.sizeof(OffCpuValue)])
            out[(CpuKey.from_buffer_copy(k).pid, bytes(k))] = int(value.total_ns)
        until = self.stopped_ns or time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        for key, _, blocked in self._blocks_in_progress(until):
            raw = (int(key.pid), bytes(key))
            out[raw] = out.get(raw, 0) + blocked
        return out

    def raw_frames(self, keys: Iterable[RawStack]) -> dict[RawStack, tuple[str, ...]]:
        """Root-first frames of keys from `raw_counts` or `raw_blocked` (while the object is
        still open)."""
        cpu_keys = {raw: CpuKey.from_buffer_copy(raw[1]) for raw in keys}
        ids = {
            i
            for k in cpu_keys.values()
            for i in (k.user_stack_id, k.kernel_stack_id, k.py_stack_id)
            if i >= 0
        }
        stacks = self._read_stacks(ids)
        # Frames only: no events are counted here (the caller holds the counts).
        return {raw: self._frames(key, stacks, 0)[0] for raw, key in cpu_keys.items()}

    def raw_blocked_frames(self, keys: Iterable[RawStack]) -> dict[RawStack, tuple[str, ...]]:
        """Root-first frames of keys from `raw_blocked` (same keys, same stack table)."""
        return self.raw_frames(keys)

    # -- at the end -----------------------------------------------------------------------------

    def cost(self) -> tuple[int, int]:
        assert self.obj is not None
        return base.program_cost(self.obj, self.programs())

    def helper_cpu_s(self) -> float:
        return 0.0

    def stop(self) -> None:
        """Detach every program: the aggregates stay readable and stop changing."""
        if self.obj is not None and not self.stopped_ns:
            # Blocks end when the run ends, not after the detach (which waits for the kernel).
            self.stopped_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            self.asleep_throughout = blocked_threads(self.marks)
            self.obj.detach_all()
            if self.holds is not None:
                self.holds.close()

    def finish(self) -> SampledStacks:
        """Stop sampling, read the aggregates, then symbolize (the slow part) detached."""
        assert self.obj is not None
        self.stop()
        if self.events is not None:
            self.events.drain()
            self.events.close()
            self.events = None
        if self.exits is not None:
            self.exits.close()
        raw = self._read_raw()
        lost = self._read_drops()
        whole_run = self._blocked_whole_run()
        sampled = SampledStacks(
            on_cpu=self._symbolize_counts(raw.on_cpu, raw.stacks),
            off_cpu=merge_stacks(self._symbolize_blocked(raw.off_cpu, raw.stacks) + whole_run),
            lost=lost,
            notes=self._still_blocked_note(raw) + self._whole_run_note(whole_run),
        )
        if self.python is not None:
            if self._python_notes:  # a shared registry's owner reports its notes and losses
                sampled.notes += self.python.notes()
                sampled.lost = {**sampled.lost, **self.python.lost()}
            self.python.close()
        self._files.close()
        return sampled

    def _still_blocked_note(self, raw: _RawCounts) -> tuple[str, ...]:
        if not self.config.off_cpu:
            return ()
        ms = raw.still_blocked_ns / 1e6
        return (f"off-CPU: {raw.still_blocked} threads still blocked at the end ({ms:.1f} ms)",)

    def _blocked_whole_run(self) -> list[StackCount]:
        """Target threads asleep from before the attach to the end: no switch showed them."""
        whole_ns = self.stopped_ns - self.attached_ns
        if whole_ns < self.config.min_block_us * 1000:
            return []
        out = []
        for thread in self.asleep_throughout:
            frames, modules = self._whole_run_frames(thread)
            out.append(
                StackCount(
                    thread.pid, thread.tid, thread.comm, frames, 1, whole_ns, modules=modules
                )
            )
        return out

    def _whole_run_frames(self, thread: BlockedThread) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Root first: a marker (the callers are not known), the user instruction the thread
        waits at, then its kernel stack."""
        frames, modules = [BLOCKED_WHOLE_RUN_FRAME], [""]
        if thread.user_pc is not None and self.config.user_stacks:
            [(name, module)] = self.symbolizer.user_frames(thread.pid, [thread.user_pc])
            frames.append(name)
            modules.append(module)
        if self.config.kernel_stacks:
            kernel = without_tracing_frames([name + KERNEL_SUFFIX for name in thread.kernel])
            frames += reversed(kernel)
            modules += [KERNEL_MODULE] * (len(frames) - len(modules))
        return tuple(frames), tuple(modules)

    def _whole_run_note(self, whole_run: list[StackCount]) -> tuple[str, ...]:
        if not whole_run:
            return ()
        return (
            f"off-CPU: {len(whole_run)} threads blocked for the whole run (asleep before it "
            f"began; shown under {BLOCKED_WHOLE_RUN_FRAME} with the instruction they wait at "
            "and their kernel stack)",
        )

    def _read_raw(self) -> _RawCounts:
        assert self.obj is not None
        on_cpu = [
            (CpuKey.from_buffer_copy(k), int.from_bytes(v[:8], "little"))
            for k, v in self.obj.map("counts").items()
        ]
        off_cpu = []
        for k, v in self.obj.map("offcpu").items():
            value = OffCpuValue.from_buffer_copy(v[: ctypes.sizeof(OffCpuValue)])
            off_cpu.append((CpuKey.from_buffer_copy(k), int(value.count), int(value.total_ns)))
        pending = self._blocks_in_progress() if self.config.off_cpu else []
        off_cpu.extend(pending)
        keys = [key for key, _ in on_cpu] + [key for key, _, _ in off_cpu]
        ids = {
            i
            for key in keys
            for i in (key.user_stack_id, key.kernel_stack_id, key.py_stack_id)
            if i >= 0
        }
        return _RawCounts(
            on_cpu,
            off_cpu,
            self._read_stacks(ids),
            still_blocked=len(pending),
            still_blocked_ns=sum(ns for _, _, ns in pending),
        )

    def _blocks_in_progress(self, until_ns: int = 0) -> list[tuple[CpuKey, int, int]]:
        """Threads that left the CPU and had not come back when sampling stopped (or at
        `until_ns`): blocked from their switch-out to then, under the stacks recorded at
        switch-out."""
        assert self.obj is not None
        min_ns = self.config.min_block_us * 1000
        until_ns = until_ns or self.stopped_ns
        out = []
        for k, v in self.obj.map("offcpu_start").items():
            start = OffCpuStart.from_buffer_copy(v[: ctypes.sizeof(OffCpuStart)])
            if not start.ts:
                continue  # on the CPU (the entry stays while the thread runs)
            blocked = until_ns - int(start.ts)
            if blocked <= 0 or blocked < min_ns:
                continue
            key = CpuKey(
                pid=start.pid,
                tid=int.from_bytes(k[:4], "little"),
                user_stack_id=start.user_stack_id,
                kernel_stack_id=start.kernel_stack_id,
                comm=bytes(start.comm),
                py_stack_id=start.py_stack_id,
            )
            out.append((key, 1, blocked))
        return out

    def _read_stacks(self, ids: set[int]) -> dict[int, tuple[int, ...]]:
        assert self.obj is not None
        return read_stored_stacks(self.obj.map("stacks"), ids)

    def _read_drops(self) -> dict[str, int]:
        assert self.obj is not None
        drops = self.obj.map("drops")
        found = {reason: n for i, reason in enumerate(DROP_REASONS) if (n := drops.lookup_u64(i))}
        if self.exits is not None and (lost := self.exits.lost()):
            found[EXIT_MAPS_LOST] = lost
        if skipped := self._switches_skipped():
            found[SWITCHES_SKIPPED] = skipped
        return found

    def _switches_skipped(self) -> int:
        """Context switches the kernel ran without the off-CPU program (its recursion guard):
        each may hide or cut short a block."""
        assert self.obj is not None
        if not self.config.off_cpu:
            return 0
        prog = SWITCH_BTF if self.use_btf else SWITCH_TP
        return stats.program_stats(self.obj.program_fd(prog)).recursion_misses

    def _frames(
        self, key: CpuKey, stacks: dict[int, tuple[int, ...]], count: int
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """A row's frames and modules; its `count` events are counted lost when its Python
        code could not be named before the process exited."""
        if key.user_stack_id == STACK_USER_MODE:
            return (USER_MODE_FRAME,), ("",)
        python = self._python_frames(key, stacks)
        if self.python is not None:
            self.python.count_unnamed(key.pid, python, count)
        return stack_frames(
            self.symbolizer,
            key.pid,
            user=_stack_part(key.user_stack_id, stacks),
            kernel=_stack_part(key.kernel_stack_id, stacks),
            python=python,
        )

    def _symbolize_counts(
        self, rows: Sequence[tuple[CpuKey, int]], stacks: dict[int, tuple[int, ...]]
    ) -> list[StackCount]:
        out = []
        for key, count in rows:
            frames, modules = self._frames(key, stacks, count)
            out.append(StackCount(key.pid, key.tid, _comm(key), frames, count, modules=modules))
        return merge_stacks(out)

    def _symbolize_blocked(
        self, rows: Sequence[tuple[CpuKey, int, int]], stacks: dict[int, tuple[int, ...]]
    ) -> list[StackCount]:
        out = []
        for key, count, total_ns in rows:
            frames, modules = self._frames(key, stacks, count)
            out.append(
                StackCount(key.pid, key.tid, _comm(key), frames, count, total_ns, modules=modules)
            )
        return merge_stacks(out)


def _stack_part(stack_id: int, stacks: dict[int, tuple[int, ...]]) -> tuple[int, ...] | None:
    """Addresses for a stack id; None when the stack was lost (not stored), () when absent."""
    if stack_id == -errno.EEXIST:
        return None
    if stack_id < 0:
        return ()
    return stacks.get(stack_id, ())


def stack_frames(
    symbolizer: Symbolizer,
    pid: int,
    *,
    user: tuple[int, ...] | None,
    kernel: tuple[int, ...] | None,
    python: Sequence[PyFrame] = (),
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Root-first frame names and their modules: user frames (Python frames in place of the
    interpreter's evaluation loop), then kernel frames.

    A stack that could not be stored becomes one `[lost stack]` frame, so its samples still count.
    """
    frames: list[str] = []
    modules: list[str] = []
    if user is None:
        frames.append(LOST_STACK_FRAME)
        modules.append("")
    elif user or python:
        native = symbolizer.user_frames(pid, user) if user else []
        for name, module in reversed(merge_python_frames(native, python)):
            frames.append(name)
            modules.append(module)
    if kernel is None:
        if user is not None:
            frames.append(LOST_STACK_FRAME)
            modules.append("")
    elif kernel:
        for name in reversed(without_tracing_frames(symbolizer.kernel_frames(kernel))):
            frames.append(name)
            modules.append(KERNEL_MODULE)
    if not frames:
        frames.append(UNKNOWN_FRAME)
        modules.append("")
    return tuple(frames), tuple(modules)


def _comm(key: CpuKey) -> str:
    return hosttext.decode(bytes(key.comm).split(b"\0", 1)[0])


def collect(config: CpuConfig) -> CpuSnapshot:
    """Run the cpu collector to its end (duration, Ctrl-C/SIGTERM, or target exit)."""
    check_config(config)
    base.require_privileges("cpu")
    symbolizer = Symbolizer()
    targets = base.Targets(config.targets)
    sampler = pick_sampler(config, symbolizer)
    try:
        with base.session(targets, lambda: sampler.start(targets)) as run:
            budgeted = cpu_budget(config, targets, sampler, run.clock.cpu0)
            poll = budgeted.poll if budgeted is not None else sampler.poll
            ended = base.run_loop(
                targets, poll, duration_s=config.duration_s, clock=run.clock, stop=run.stop
            )
            duration = run.clock.elapsed()
            steady = budgeted.end_loop() if budgeted is not None else 0.0
            sampler.stop()
            bpf_ns, runs = sampler.cost()
            sampled = sampler.finish()
            lost = {**sampled.lost, **targets.losses()}
    finally:
        symbolizer.close()
    snapshot = build_snapshot(
        config, targets, run, duration, ended, sampler, sampled, lost, (bpf_ns, runs), symbolizer
    )
    if budgeted is None:
        return snapshot
    controller = budgeted.governor.knobs[0]
    assert isinstance(controller.owner, BudgetController)
    return dataclasses.replace(
        snapshot,
        self_cost=budgeted.self_cost(snapshot.self_cost, steady),
        notes=(*snapshot.notes, cpu_budget_note(controller.owner)),
    )


def cpu_budget(
    config: CpuConfig, targets: base.Targets, sampler: Sampler, cpu0: float
) -> BudgetedRun | None:
    """Under --budget, on-CPU sampling's rate follows the tool's cost (off-CPU blocks are
    recorded as they come: nothing to lower there)."""
    if not config.budget_pct or not config.on_cpu:
        return None
    held = targets.held
    meter = CostMeter(lambda: sampler.cost()[0], lambda: [held.pid] if held is not None else [])
    controller = BudgetController(
        config.budget_pct, config.frequency_hz, fallback=unwind_fallback(sampler, config)
    )
    budgeted = BudgetedRun(
        Governor(config.budget_pct, meter, [cpu_knob(controller, sampler.set_frequency)]),
        sampler.poll,
    )
    budgeted.begin(cpu0)
    return budgeted


def build_snapshot(
    config: CpuConfig,
    targets: base.Targets,
    run: base.Session,
    duration: float,
    ended: str,
    sampler: Sampler,
    sampled: SampledStacks,
    lost: dict[str, int],
    bpf: tuple[int, int],
    symbolizer: Symbolizer,
) -> CpuSnapshot:
    """The snapshot of a finished run (its sampler stopped and read)."""
    clock, attach_ms = run.clock, run.attach_ms
    console.debug(f"cpu: {symbolizer.stats.summary()}")
    cost = base.self_cost(clock, *bpf)
    # The unwind-table decoding child works for this run: its CPU is part of the tool's cost.
    cost = dataclasses.replace(cost, cpu_s=round(cost.cpu_s + sampler.helper_cpu_s(), 4))
    return CpuSnapshot(
        started_at=clock.started_at,
        duration_s=round(duration, 3),
        host=base.hostname(),
        targets=config.targets.describe(),
        lost_events=lost,
        processes=_processes_seen(sampler.processes(), sampled),
        self_cost=cost,
        notes=(
            f"ended: {ended}",
            f"unwind: {unwind_note(config)}{fallback_note(sampler)}",
            f"attach: {attach_ms:.1f} ms",
            f"symbols: {symbolizer.stats.summary()}",
            *sampled.notes,
            *targets.command_notes(),
        ),
        command_exit=targets.command_exit(),
        frequency_hz=config.frequency_hz if config.on_cpu else 0,
        samples_total=sum(s.count for s in sampled.on_cpu),
        stacks=tuple(sampled.on_cpu),
        off_cpu=tuple(sampled.off_cpu),
        off_cpu_min_block_us=config.min_block_us if config.off_cpu else 0,
    )


def unwind_note(config: CpuConfig) -> str:
    """How stacks were unwound in this run (off-CPU stacks always use frame pointers)."""
    if not config.on_cpu or not config.user_stacks or config.unwind == "fp":
        return "fp"
    if config.off_cpu:
        return f"{config.unwind} on-CPU, fp off-CPU"
    return config.unwind


def fallback_note(sampler: Sampler) -> str:
    """`, then fp from 3.6 s (budget)` when the budget made the run fall back."""
    from otlp_ebpf.collectors.cpu_fallback import fallback_part

    part = fallback_part(sampler)
    if part is None or not part.fell_back:
        return ""
    return f", then fp from {part.fell_back_at_s:.1f} s (budget)"


def _processes_seen(
    known: dict[int, ProcessInfo], sampled: SampledStacks
) -> tuple[ProcessInfo, ...]:
    """Identity of every process in the profile: captured while it lived, else read now."""
    pids = sorted({s.pid for s in [*sampled.on_cpu, *sampled.off_cpu]})
    out = []
    for pid in pids:
        info = known.get(pid) or base.read_process_info(pid)
        if info is not None:
            out.append(info)
    return tuple(out)
