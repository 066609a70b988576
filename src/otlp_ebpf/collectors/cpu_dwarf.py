"""On-CPU sampling with full user stacks on code built without frame pointers.

bpf/cpu_dwarf.bpf.c sends, per sample, the user registers, the kernel stack and a copy of the
top of the user stack; here each sample is unwound with the CFI of the mapping each frame's PC
is in (symbolize/unwind.py) while the process's maps are known, and counted per distinct stack.
Frames are named at the end, through the shared Symbolizer.

Unwind tables missing from the disk cache are decoded in a child process (symbolize/cfi.py
DecodeWorker), never while samples wait in the ring buffer: a sample that needs a table not
decoded yet waits in a bounded queue and is unwound when the table arrives, or at the end of
the run after a bounded wait. For a targeted run the tables of the targets' mappings are asked
for as soon as each process is seen.

Unwinding modes (`--unwind`):
- `dwarf`: CFI only; a frame whose code has no CFI ends the stack (counted as `no_cfi`).
- `auto`: CFI wherever the mapping has it, frame pointers for the frames whose code has none
  (JIT code and perf-map regions, assembly without CFI). Distribution binaries almost always
  carry `.eh_frame` (it is needed for C++ exceptions and pthread cancellation), so `auto` is
  exact on them whether or not they were built with frame pointers.
Kernel stacks come from bpf_get_stack, as with frame-pointer sampling.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

from otlp_ebpf import console, hosttext
from otlp_ebpf.collectors import base, exit_maps
from otlp_ebpf.collectors.cpu_sampling import (
    KERNEL_MODULE,
    CpuConfig,
    RawStack,
    SampledStacks,
    without_tracing_frames,
)
from otlp_ebpf.collectors.exit_maps import ExitMaps
from otlp_ebpf.collectors.python_frames import Holds, PyStack, PythonFrames
from otlp_ebpf.errors import UsageError
from otlp_ebpf.model import ProcessInfo, StackCount
from otlp_ebpf.runtime import libbpf, probes
from otlp_ebpf.runtime.events import RingBuffer
from otlp_ebpf.runtime.loader import BpfObject, Link
from otlp_ebpf.symbolize.cfi import CfiCache, default_cache_dir
from otlp_ebpf.symbolize.elf import DEFAULT_DEBUG_ROOT
from otlp_ebpf.symbolize.lru import Lru
from otlp_ebpf.symbolize.procmaps import ProcessMaps, process_start_time
from otlp_ebpf.symbolize.python import PyFrame, merge_python_frames
from otlp_ebpf.symbolize.resolver import UNKNOWN_FRAME, Symbolizer
from otlp_ebpf.symbolize.unwind import (
    REASON_NO_MAPPING,
    REASON_NO_USER_REGS,
    REASON_TABLE_PENDING,
    Regs,
    UnwindMaps,
    UnwindResult,
    unwind,
)

OBJECT = "cpu_dwarf"
PROGRAM = "dwarf_sample"
EXEC_PROGRAM = "dwarf_exec"
EXIT_PROGRAM = "dwarf_exit"
# Processes whose maps are kept for unwinding, least recently sampled evicted first: a
# process that is gone keeps its maps for the samples still on their way, and a host with
# endless short processes does not grow the tool's memory without bound.
MAX_PROCESSES = 1024
# Evicted processes whose stacks are named (and maps forgotten) in one pass over the counts.
RETIRE_BATCH = 128
# How often the processes whose maps are held are checked for having exited. A process found
# gone is retired RETIRE_GRACE_S later (samples it took just before its exit may still be in
# the ring buffer when the tool lags behind on a loaded machine): its stacks are named and
# everything kept for it is dropped.
EXIT_CHECK_S = 1.0
RETIRE_GRACE_S = 3.0
# Exited processes whose stacks keep their pid and thread; older ones are folded per command
# name (pid 0, tid 0), as the syscalls table does, so that a system-wide profile of endless
# short processes holds a bounded number of rows.
EXITED_KEPT = 512
# Rows (thread and named stack) of one live process past which the rows of its threads that
# have exited fold into the process's (tid 0): a server that starts a thread per task keeps
# a row per thread it ever ran otherwise.
THREAD_ROWS_KEPT = 2048
# Distinct named stacks whose frame tuples are shared: the samples of every process running
# the same code name the same frames, and keep one copy of them.
MAX_SHARED_STACKS = 65536
KSTACK_DEPTH = 64
MAX_WINDOW = 32768
DEFAULT_WINDOW = 16384
SAMPLE_IN_KERNEL = 1
SAMPLE_NO_USER_REGS = 4
SAMPLE_PY_HELD = 8
DROP_REASONS = ("ring buffer full", "no scratch buffer")
EXIT_MAPS_LOST = "exit maps: ring buffer full"
REASON_GONE = "process_gone"
TRUNCATED_FRAME = "[truncated]"
# A pc in no known mapping means the maps are stale (exec, dlopen): look again, at most this
# often per process.
RECAPTURE_MIN_INTERVAL_S = 0.05
# Samples waiting for an unwind table being decoded: at most this many bytes of copied stacks
# (about 500 samples with a 16 KB window; a libpython decode takes ~1.6 s, ~320 samples at
# 99 Hz on two busy CPUs). Beyond it a sample is counted with the frames walked so far.
MAX_WAITING_BYTES = 8 * 1024 * 1024
# At the end of a run, how long to wait for the tables that waiting samples need.
END_WAIT_S = 3.0
REASON_QUEUE_FULL = "waiting_queue_full"
# While a batch of samples is unwound (the slow part, on a loaded machine seconds behind the
# targets), the ring buffer is read again every CATCH_UP_EVERY samples and what arrived is
# Python-named at once: code objects are read from the target's memory, which is gone once
# it exits. At most MAX_PREPARED_BYTES of such samples wait for their unwind (beyond, the
# ring buffer fills and its drops are counted).
CATCH_UP_EVERY = 16
MAX_PREPARED_BYTES = 8 * 1024 * 1024


class DwarfSampleHeader(ctypes.Structure):
    """Mirror of struct dwarf_sample (bpf/cpu_dwarf.h) without the trailing stack bytes."""

    _fields_ = [
        ("pid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("comm", ctypes.c_char * 16),
        ("regs", ctypes.c_uint64 * 4),
        ("flags", ctypes.c_uint32),
        ("kstack_bytes", ctypes.c_uint32),
        ("stack_bytes", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("kstack", ctypes.c_uint64 * KSTACK_DEPTH),
        ("py", PyStack),
    ]


HEADER_BYTES = ctypes.sizeof(DwarfSampleHeader)
_FLAGS_AT = DwarfSampleHeader.flags.offset

# (pid, tid, comm, user pcs, kernel pcs, truncated, Python frames)
_StackKey = tuple[int, int, str, tuple[int, ...], tuple[int, ...], bool, tuple[PyFrame, ...]]
_NamedKey = tuple[int, int, str, tuple[str, ...], tuple[str, ...]]  # pid, tid, comm, names


@dataclass
class _Process:
    maps: UnwindMaps
    exe: tuple[int, int] | None  # (device, inode) of /proc/PID/exe when captured
    captured_at: float
    comms: set[str] = field(default_factory=set)  # thread names seen (threads differ)


@dataclass
class _Waiting:
    """A sample whose walk needs a table still being decoded."""

    pid: int
    tid: int
    comm: str
    kernel: tuple[int, ...]
    regs: Regs
    stack: bytes
    process: _Process
    python: tuple[PyFrame, ...] = ()


class DwarfSampler:
    """CPU samples of the targets, unwound with DWARF CFI in user space.

        sampler = DwarfSampler(symbolizer)
        sampler.start(targets)                 # after base.Targets(...), before release()
        while running: sampler.poll(100)
        stacks = sampler.stacks()

    `fp_fallback` is the `auto` mode: frame pointers for code without CFI. Decoded unwind
    tables are kept between runs in `cache_dir` (default ~/.cache/otlp-ebpf/cfi) unless
    `disk_cache` is False; `background` decodes them in a child process (see the module doc),
    and `end_wait_s` bounds the wait for them once sampling has stopped.
    """

    def __init__(
        self,
        symbolizer: Symbolizer | None = None,
        *,
        frequency_hz: int = 99,
        window_bytes: int = DEFAULT_WINDOW,
        fp_fallback: bool = True,
        kernel_stacks: bool = True,
        cache_dir: str | None = None,
        disk_cache: bool = True,
        debug_roots: tuple[str, ...] = (DEFAULT_DEBUG_ROOT,),
        background: bool = True,
        end_wait_s: float = END_WAIT_S,
        python: bool | PythonFrames = True,
    ) -> None:
        if not 0 < window_bytes <= MAX_WINDOW:
            raise UsageError(f"stack window must be 1..{MAX_WINDOW} bytes, got {window_bytes}")
        # A symbolizer of our own is closed with us; a given one belongs to the caller.
        self._own_symbolizer = symbolizer is None
        self.symbolizer = symbolizer if symbolizer is not None else Symbolizer()
        self.frequency_hz = frequency_hz
        self.window_bytes = window_bytes
        self.fp_fallback = fp_fallback
        self.kernel_stacks = kernel_stacks
        if disk_cache and cache_dir is None:
            cache_dir = default_cache_dir()
        self.cfi = CfiCache(cache_dir if disk_cache else None, debug_roots, background=background)
        self.end_wait_s = end_wait_s
        # Python frames; a registry shared with the off-CPU sampler of the same run when given.
        self.python = (
            python if isinstance(python, PythonFrames) else (PythonFrames() if python else None)
        )
        self.obj: BpfObject | None = None
        self.holds: Holds | None = None
        self.samples_total = 0
        self.truncated = 0
        self.captures = 0  # reads of /proc/PID/maps
        self.unknown_pc_captures = 0  # of which: a pc in no known mapping
        self.recorded = 0  # processes unwound with the maps the kernel recorded at their exit
        self._exits: ExitMaps | None = None
        self.prefetch = False
        self._waiting: list[_Waiting] = []
        self._waiting_bytes = 0
        self.max_waiting_bytes = MAX_WAITING_BYTES
        self._final_drops: dict[str, int] | None = None
        self._ring: RingBuffer | None = None
        # Shared with the symbolizer: one descriptor per mapped file, one read of the maps.
        self._files = self.symbolizer.files
        self._processes: OrderedDict[int, _Process] = OrderedDict()
        self._batch: list[bytes] = []  # consumed from the ring, not yet prepared
        # Prepared samples (maps read, Python frames named), waiting for their unwind.
        self._prepared: list[tuple[bytes, tuple[PyFrame, ...]]] = []
        self._prepared_bytes = 0
        self._infos: dict[int, ProcessInfo] = {}
        self._counts: Counter[_StackKey] = Counter()
        # Stacks not named yet, by process: a retired process's are named in one step.
        self._unnamed: dict[int, set[_StackKey]] = {}
        self._gone: dict[int, float] = {}  # exited processes -> when found gone
        self._next_exit_check = 0.0
        self.retired = 0  # processes whose stacks were named and whose state was dropped
        # Counts of retired processes' stacks by name: their addresses are not kept (until a
        # caller follows the raw counts, as record's timeline does: it keeps those keys).
        self._folded: Counter[_NamedKey] = Counter()
        self._rows_of: dict[int, set[_NamedKey]] = {}  # pid -> its rows in _folded
        self._exited_rows: OrderedDict[int, None] = OrderedDict()  # retired, oldest first
        self.folded_processes = 0  # exited processes whose rows were folded by name
        self.threads_folded = 0  # exited threads of live processes whose rows were folded
        self._thread_rows_limit: dict[int, int] = {}  # pid -> rows before the next check
        self._keep_raw = False
        self._shared: Lru[tuple[str, ...], tuple[str, ...]] = Lru(MAX_SHARED_STACKS)
        self._shared_python: Lru[tuple[PyFrame, ...], tuple[PyFrame, ...]] = Lru(MAX_SHARED_STACKS)
        # Stacks of processes whose maps were evicted, named while the maps were at hand.
        self._named: dict[_StackKey, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self._retiring: list[int] = []
        self._failures: Counter[str] = Counter()
        self.sample_links: list[Link] = []

    # -- set-up ---------------------------------------------------------------------------------

    def start(self, targets: base.Targets) -> None:
        """Load and attach; call `targets.release()` afterwards for a held command."""
        obj = BpfObject.open(OBJECT)
        self.obj = obj
        # A targeted run holds each new image at its first sample until its interpreter is
        # known (bpf/python.h): a launched `python app.py` has Python frames from the start.
        hold = self.python is not None and targets.filtered
        obj.set_rodata(
            **targets.rodata(),
            stack_window=self.window_bytes,
            python_frames=int(self.python is not None),
            python_hold=int(hold),
        )
        # One scratch slot per possible CPU: the program indexes it with its CPU number.
        obj.resize_map("scratch", libbpf.lib().libbpf_num_possible_cpus())
        for prog in targets.unused_programs():
            obj.disable(prog)
        if not exit_maps.supported():
            obj.disable(EXIT_PROGRAM)
        obj.load()
        if self.python is not None:
            self.python.attach(obj)
        targets.attach(obj)
        if hold:
            assert self.python is not None
            self.holds = Holds(self.python, obj.map("targets").fd)
        self._ring = RingBuffer(obj.map("samples"), self._on_sample)
        probes.attach_auto(obj, EXEC_PROGRAM)
        if obj.enabled(EXIT_PROGRAM):
            self._exits = ExitMaps(obj)
            probes.attach_auto(obj, EXIT_PROGRAM)
        self.sample_links = probes.attach_cpu_clock(obj, PROGRAM, self.frequency_hz)
        # Known targets: their tables are decoded while they run, before samples need them.
        self.prefetch = targets.filtered
        held = targets.held.pid if targets.held is not None else None
        for tgid in targets.tgids:
            # A held command has not exec'd yet: its maps are still ours. It is captured at
            # its first sample, after the exec, like any new process.
            if tgid != held:
                self._capture(tgid)
        console.debug(f"cpu (dwarf): attached, {self.window_bytes} B stack window")

    def programs(self) -> list[str]:
        """The loaded programs (for the tool's own cost)."""
        assert self.obj is not None
        return [p for p in self.obj.program_names() if self.obj.enabled(p)]

    # -- while running --------------------------------------------------------------------------

    def poll(self, timeout_ms: int = 100) -> int:
        """Wait up to `timeout_ms` for samples and unwind them; returns how many arrived.
        Samples waiting for a table are unwound once it has arrived."""
        arrived = self._ring.poll(timeout_ms) if self._ring is not None else 0
        if self._exits is not None:
            self._exits.drain()
        self._flush()
        if self.cfi.receive(0.0):
            self._retry_waiting(final=False)
        now = time.monotonic()
        if now >= self._next_exit_check:
            self._next_exit_check = now + EXIT_CHECK_S
            self._retire_exited()
        return arrived

    def _retire_exited(self) -> None:
        """Retire the processes found gone RETIRE_GRACE_S ago (unless samples of theirs still
        wait for a table), note the ones gone since, and name the stacks of processes whose
        maps are not held."""
        waiting = {w.pid for w in self._waiting}
        # Symbols of new binaries that waited for the load allowance, before naming.
        self.symbolizer.load_deferred()
        now = time.monotonic()
        for pid, since in list(self._gone.items()):
            process = self._processes.get(pid)
            if process is None or _same_process(pid, process):
                del self._gone[pid]  # evicted meanwhile, or the check raced a fork
            elif now - since >= RETIRE_GRACE_S and pid not in waiting:
                del self._gone[pid], self._processes[pid]
                self._retiring.append(pid)
        for pid, process in self._processes.items():
            if pid not in self._gone and not _same_process(pid, process):
                self._gone[pid] = now
        # Stacks of processes with no maps held (kernel threads, samples that came after the
        # process was retired or before it could be read) are named now too.
        self._retiring.extend(
            p for p in self._unnamed if p not in self._processes and p not in waiting
        )
        if self._retiring:
            self._retire()
        if not self._keep_raw:
            # Live processes too: a long-lived one would otherwise keep every distinct
            # (address-level) stack it was sampled in until the end.
            for pid in [p for p in self._unnamed if p not in waiting]:
                self._name_stacks(pid)

    def stop(self) -> None:
        """Detach the sampling program: no sample is taken after this (and no target is
        held any more)."""
        if self.obj is not None and self.obj.loaded:
            self.obj.detach_all()
            if self.holds is not None:
                self.holds.close()

    def drain(self) -> int:
        """At the end of a run: stop sampling, unwind every sample still in the ring buffer,
        read the kernel's drop counts (once, after the last sample), and give samples waiting
        for a table up to `end_wait_s` for it to arrive."""
        self.stop()
        drained = self._ring.drain() if self._ring is not None else 0
        while self._batch or self._prepared:  # a flush catches up with the ring as it goes
            self._flush()
        if self._final_drops is None:
            self._final_drops = self._read_drops()
        self._wait_for_tables()
        return drained

    def _on_sample(self, data: bytes) -> None:
        self._batch.append(data)

    def _flush(self) -> None:
        """Unwind the samples the last poll brought, catching up with the ring buffer as it
        goes (`_catch_up`): the samples that arrive meanwhile are prepared at once and
        unwound at the next flush."""
        self._prepare_arrivals()
        prepared, self._prepared = self._prepared, []
        self._prepared_bytes = 0
        for done, (data, python) in enumerate(prepared, 1):
            self._unwind_sample(data, python)
            if done % CATCH_UP_EVERY == 0:
                self._catch_up()

    def _catch_up(self) -> None:
        """Mid-flush: consume what the ring holds and prepare it, unless enough is waiting."""
        if self._ring is None or self._prepared_bytes >= MAX_PREPARED_BYTES:
            return
        self._ring.drain()
        self._prepare_arrivals()

    def _prepare_arrivals(self) -> None:
        """What must happen while the sampled processes live, for the samples just consumed:
        new processes' maps are read first, for every process in the batch, before any sample
        is unwound (a short-lived process may live only milliseconds past its first sample;
        the kernel side wakes us for it; one already gone is unwound with the maps the kernel
        recorded at its exit), and the Python frames are named, from the process's memory."""
        batch, self._batch = self._batch, []
        if not batch:
            return
        if self.python is not None:
            self.python.new_batch()
        seen: set[int] = set()
        for data in batch:
            if int.from_bytes(data[_FLAGS_AT : _FLAGS_AT + 4], "little") & SAMPLE_PY_HELD:
                self._release_held(int.from_bytes(data[:4], "little"))
        for data in batch:
            pid = int.from_bytes(data[:4], "little")
            if pid not in seen:
                seen.add(pid)
                if pid not in self._processes and pid not in self.own_pids():
                    self._take_new(pid, _comm_of(data))
        own = self.own_pids()
        for data in batch:
            head = _header(data)
            python = self._python_frames(head) if head.pid not in own else ()
            self._prepared.append((data, python))
            self._prepared_bytes += len(data)

    def _take_new(self, pid: int, comm: str) -> None:
        """Maps for a process sampled for the first time: the ones the kernel recorded at its
        exit when it is gone already (most short-lived ones: no /proc entry to look for),
        else read now, else recorded since. The sample's thread name is known with them:
        its first unwind does not look for an exec that the maps read now already follow."""
        if self._exits is not None and self._exits.has(pid):
            self._adopt_recorded(pid)
        else:
            self._capture(pid) or self._adopt_recorded(pid)
        process = self._processes.get(pid)
        if process is not None:
            process.comms.add(comm)

    def _release_held(self, pid: int) -> None:
        """A new image stopped at its first sample (bpf/python.h): its maps read now (its
        interpreter registered), then continued."""
        if self.holds is None:
            return
        if pid not in self.own_pids():
            self._capture(pid)
        self.holds.release(pid)

    def _unwind_sample(self, data: bytes, python: tuple[PyFrame, ...]) -> None:
        head = _header(data)
        if head.pid in self.own_pids():
            return  # the table-decoding child is part of this tool, not of the profile
        self.samples_total += 1
        comm = sys.intern(hosttext.decode(head.comm))
        kernel = tuple(head.kstack[: head.kstack_bytes // 8]) if self.kernel_stacks else ()
        key = (head.pid, head.tid, comm)
        if head.flags & SAMPLE_NO_USER_REGS:
            if not head.flags & SAMPLE_IN_KERNEL:
                self._failures[REASON_NO_USER_REGS] += 1
            self._add((*key, (), kernel, False, ()))
            return
        process = self._process_for(head.pid, comm)
        if process is None:
            self._failures[REASON_GONE] += 1
            self._add((*key, (head.regs[0],), kernel, False, python))
            return
        regs = Regs(head.regs[0], head.regs[1], head.regs[2], head.regs[3])
        stack = data[HEADER_BYTES : HEADER_BYTES + head.stack_bytes]
        result = self._walk(head.pid, process, regs, stack)
        if result.reason == REASON_TABLE_PENDING:
            if self._waiting_bytes + len(stack) <= self.max_waiting_bytes:
                self._waiting.append(_Waiting(*key, kernel, regs, stack, process, python))
                self._waiting_bytes += len(stack)
                return
            result = UnwindResult(result.pcs, result.truncated, REASON_QUEUE_FULL)
        self._count(key, kernel, result, python)

    def _python_frames(self, head: DwarfSampleHeader) -> tuple[PyFrame, ...]:
        """The sample's Python frames, named now (code objects die with the process)."""
        if self.python is None or not head.py.nr:
            return ()
        frames = self.python.resolve(head.pid, head.py)
        shared = self._shared_python.get(frames)
        if shared is None:
            shared = self._shared_python[frames] = frames
        return shared

    def _walk(self, pid: int, process: _Process, regs: Regs, stack: bytes) -> UnwindResult:
        result = unwind(regs, stack, regs.sp, process.maps, fp_fallback=self.fp_fallback)
        if result.reason == REASON_NO_MAPPING and self._recapture(pid, process):
            process = self._processes[pid]
            result = unwind(regs, stack, regs.sp, process.maps, fp_fallback=self.fp_fallback)
        return result

    def _count(
        self,
        key: tuple[int, int, str],
        kernel: tuple[int, ...],
        res: UnwindResult,
        python: tuple[PyFrame, ...] = (),
    ) -> None:
        if res.reason:
            self._failures[res.reason] += 1
        if res.truncated:
            self.truncated += 1
        self._add((*key, tuple(res.pcs), kernel, res.truncated, python))

    def _add(self, key: _StackKey) -> None:
        self._counts[key] += 1
        if key not in self._named:
            self._unnamed.setdefault(key[0], set()).add(key)

    def _retry_waiting(self, *, final: bool) -> None:
        """Walk the waiting samples again; those still missing a table wait on, unless this is
        the end (then they count with the frames walked so far)."""
        waiting, self._waiting, self._waiting_bytes = self._waiting, [], 0
        for w in waiting:
            result = self._walk(w.pid, w.process, w.regs, w.stack)
            if result.reason == REASON_TABLE_PENDING and not final:
                self._waiting.append(w)
                self._waiting_bytes += len(w.stack)
            else:
                self._count((w.pid, w.tid, w.comm), w.kernel, result, w.python)

    def _wait_for_tables(self) -> None:
        deadline = time.monotonic() + self.end_wait_s
        worker = self.cfi.worker
        while self._waiting and worker is not None and worker.pending_urgent():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if self.cfi.receive(left):
                self._retry_waiting(final=False)
        self._retry_waiting(final=True)
        self.cfi.close()

    def _process_for(self, pid: int, comm: str) -> _Process | None:
        """The process's maps; captured again only when an exec may have changed them.

        `comm` is the sampled thread's name, and threads of one process may differ: a new name
        only makes us check whether the executable changed, which is what an exec does."""
        process = self._processes.get(pid)
        if process is None:
            self._capture(pid) or self._adopt_recorded(pid)
            return self._processes.get(pid)
        self._processes.move_to_end(pid)
        if comm not in process.comms:
            process.comms.add(comm)
            if _exe_identity(pid) not in (process.exe, None):
                self._capture(pid)
                process = self._processes.get(pid, process)
                process.comms.add(comm)
        return process

    def _recapture(self, pid: int, process: _Process) -> bool:
        """Maps again for a pc in none of them: read while the process lives (at most every
        RECAPTURE_MIN_INTERVAL_S), else as recorded at its exit (after an exec, say)."""
        if time.monotonic() - process.captured_at >= RECAPTURE_MIN_INTERVAL_S and self._capture(
            pid
        ):
            self.unknown_pc_captures += 1
            return True
        return self._adopt_recorded(pid, process)

    def _capture(self, pid: int) -> bool:
        exe = _exe_identity(pid)
        try:
            maps = ProcessMaps.capture(pid, self._files)
        except UsageError:
            return False
        if not maps.mappings:
            return False  # already exiting: keep what we had
        self.captures += 1
        self.symbolizer.remember_maps(pid, maps)
        info = base.read_process_info(pid)
        if info is not None:
            self._infos[pid] = info
        if self.python is not None:
            self.python.register(pid, maps, self._files)
        self._hold(pid, maps, exe)
        return True

    def _adopt_recorded(self, pid: int, held: _Process | None = None) -> bool:
        """Take the maps the kernel recorded at the exit of `pid` (a process gone before its
        maps could be read), unless they belong to another process of that pid than `held`."""
        if self._exits is None:
            return False
        maps = self._exits.maps_of(pid, self._files)
        if maps is None or not maps.mappings:
            return False
        started = held.maps.maps.start_time if held is not None else 0
        if started and maps.start_time and started != maps.start_time:
            return False  # the pid was reused: these are another process's maps
        self.recorded += 1
        self.symbolizer.remember_maps(pid, maps)
        self._hold(pid, maps, None)
        self._gone.setdefault(pid, time.monotonic())
        return True

    def _hold(self, pid: int, maps: ProcessMaps, exe: tuple[int, int] | None) -> None:
        """Keep `maps` to unwind the samples of `pid` (the least recently sampled process
        beyond MAX_PROCESSES is retired)."""
        unwind_maps = UnwindMaps(maps, self.cfi, self._files)
        self._processes[pid] = _Process(unwind_maps, exe, time.monotonic())
        self._processes.move_to_end(pid)
        while len(self._processes) > MAX_PROCESSES:
            evicted, _ = self._processes.popitem(last=False)
            self._retiring.append(evicted)
        if len(self._retiring) >= RETIRE_BATCH:
            self._retire()
        if self.prefetch:
            unwind_maps.prefetch()

    def _retire(self) -> None:
        """Name the stacks of exited or evicted processes now and forget their maps and their
        Python interpreter: what a process costs in memory ends with it, not with the run."""
        retiring, self._retiring = set(self._retiring), []
        for pid in retiring:
            self._name_stacks(pid)
            if pid not in self._processes:
                self.retired += 1
                self.symbolizer.forget_process(pid)
                if self._exits is not None:
                    self._exits.forget(pid)
                if self.python is not None:
                    self.python.forget(pid)
                self._keep_exited_rows(pid)
                self._thread_rows_limit.pop(pid, None)

    def _keep_exited_rows(self, pid: int) -> None:
        """Rows of exited processes keep their pid for the EXITED_KEPT most recent ones;
        the oldest are folded by command name, and what was read of them dropped."""
        if self._keep_raw:
            return
        if pid not in self._rows_of:
            self._infos.pop(pid, None)  # nothing of it is in the profile
            return
        self._exited_rows[pid] = None
        self._exited_rows.move_to_end(pid)
        while len(self._exited_rows) > EXITED_KEPT:
            oldest, _ = self._exited_rows.popitem(last=False)
            if oldest in self._processes:
                continue  # the pid was reused by a live process: its rows go with it later
            self.folded_processes += 1
            self._infos.pop(oldest, None)
            for row in self._rows_of.pop(oldest, ()):
                count = self._folded.pop(row, 0)
                self._folded[(0, 0, *row[2:])] += count

    def _name_stacks(self, pid: int) -> None:
        """Name the stacks of `pid` sampled since the last time. Without a caller following
        the raw counts, each is folded into a count by name and its addresses dropped."""
        for key in self._unnamed.pop(pid, ()):
            if key in self._named:
                continue
            names = self._frames(key[0], key[3], key[4], key[5], key[6])
            if self._keep_raw:
                self._named[key] = names
            else:
                row = (key[0], key[1], key[2], *names)
                self._folded[row] += self._counts.pop(key)
                self._rows_of.setdefault(key[0], set()).add(row)
        rows = self._rows_of.get(pid, ())
        if len(rows) > self._thread_rows_limit.get(pid, THREAD_ROWS_KEPT):
            self._fold_exited_threads(pid)

    def _fold_exited_threads(self, pid: int) -> None:
        """Fold the rows of `pid`'s threads that have exited into its tid-0 rows; the limit
        for the next check doubles what is left, so live threads are not checked every time."""
        rows = self._rows_of[pid]
        gone = {
            row[1] for row in rows if row[1] and not os.path.exists(f"/proc/{pid}/task/{row[1]}")
        }
        for row in [r for r in rows if r[1] in gone]:
            rows.discard(row)
            folded = (pid, 0, *row[2:])
            self._folded[folded] += self._folded.pop(row, 0)
            rows.add(folded)
        self.threads_folded += len(gone)
        self._thread_rows_limit[pid] = max(THREAD_ROWS_KEPT, 2 * len(rows))

    def held(self) -> dict[str, int]:
        """What is kept per process and per file now, and what was dropped (bounds checks and
        the soak benchmark read it)."""
        return {
            "unwinding_processes": len(self._processes),
            "processes_with_unnamed_stacks": len(self._unnamed),
            "retired_processes": self.retired,
            "exit_records": self._exits.held() if self._exits is not None else 0,
            "python_processes": len(self.python.interpreters) if self.python else 0,
            "unwind_tables": len(self.cfi),
            "raw_stacks": len(self._counts),
            "named_stacks": len(self._named) + len(self._folded),
            "processes_with_rows": len(self._rows_of),
            "processes_folded": self.folded_processes,
            "threads_folded": self.threads_folded,
            "process_infos": len(self._infos),
            **{f"symbolizer_{k}": v for k, v in self.symbolizer.held().items()},
        }

    def cache_marks(self) -> dict[str, int]:
        """The sizes of the caches that grow with the binaries and stacks met: symbol and
        unwind tables, shared frame tuples (see `trim_caches`)."""
        return {
            **self.symbolizer.cache_marks(),
            "unwind_rows": self.cfi.rows_held,
            "shared_stacks": len(self._shared),
            "shared_python_stacks": len(self._shared_python),
        }

    def trim_caches(self, marks: dict[str, int]) -> int:
        """Shrink those caches back to `marks`, least recently used first (a burst fills them
        with what it met; their caps are far above a steady host's needs, so without this the
        memory a burst took stays). Returns the entries dropped."""
        return (
            self.symbolizer.trim(marks)
            + self.cfi.trim(marks.get("unwind_rows", self.cfi.rows_held))
            + self._shared.trim(marks.get("shared_stacks", len(self._shared)))
            + self._shared_python.trim(marks.get("shared_python_stacks", len(self._shared_python)))
        )

    def _named_frames(self, key: _StackKey) -> tuple[tuple[str, ...], tuple[str, ...]]:
        named = self._named.get(key)
        if named is None:
            named = self._frames(key[0], key[3], key[4], key[5], key[6])
        return named

    # -- results --------------------------------------------------------------------------------

    def stacks(self) -> list[StackCount]:
        """Every distinct stack seen, symbolized; frames root first, kernel frames last."""
        merged: Counter[_NamedKey] = Counter(self._folded)
        for key, count in self._counts.items():
            frames, modules = self._named_frames(key)
            merged[(key[0], key[1], key[2], frames, modules)] += count
        return [
            StackCount(pid, tid, comm, frames, count, modules=modules)
            for (pid, tid, comm, frames, modules), count in merged.most_common()
        ]

    def _frames(
        self,
        pid: int,
        user: tuple[int, ...],
        kernel: tuple[int, ...],
        truncated: bool,
        python: tuple[PyFrame, ...] = (),
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        frames: list[str] = []
        modules: list[str] = []
        if truncated:
            frames.append(TRUNCATED_FRAME)
            modules.append("")
        native = self.symbolizer.user_frames(pid, user)
        if python:
            native = merge_python_frames(native, python)
        for name, module in reversed(native):
            frames.append(name)
            modules.append(module)
        kernel_names = self.symbolizer.kernel_frames(kernel) if kernel else []
        for name in reversed(without_tracing_frames(kernel_names)):
            frames.append(name)
            modules.append(KERNEL_MODULE)
        if not frames:
            frames.append(UNKNOWN_FRAME)
            modules.append("")
        return self._share(frames), self._share(modules)

    def _share(self, names: list[str]) -> tuple[str, ...]:
        """One tuple (of interned strings) for every stack named the same."""
        shared = tuple(names)
        known = self._shared.get(shared)
        if known is None:
            known = self._shared[shared] = tuple(sys.intern(n) for n in names)
        return known

    def set_frequency(self, hz: int) -> None:
        """Sample at `hz` from now on: the sampling events take the new rate in place (or are
        opened again at it)."""
        if self.obj is None or not self.sample_links:
            return
        self.sample_links = probes.retune_cpu_clock(self.obj, self.sample_links, PROGRAM, hz)
        self.frequency_hz = hz

    def stop_sampling(self) -> None:
        """No more samples (a budget's fallback to frame pointers): the sampling events are
        closed; what was sampled stays, and the rest of the run goes on as before."""
        if self.obj is None:
            return
        for link in self.sample_links:
            link.destroy()
            self.obj.links.remove(link)
        self.sample_links = []

    def raw_counts(self) -> dict[_StackKey, int]:
        """Samples unwound so far per stack, unsymbolized (for a timeline). From the first
        call on, retired processes' stacks keep their keys (the caller follows them)."""
        self._keep_raw = True
        return dict(self._counts)

    def raw_frames(self, keys: Iterable[_StackKey]) -> dict[_StackKey, tuple[str, ...]]:
        """Root-first frames of keys from `raw_counts`."""
        return {key: self._named_frames(key)[0] for key in keys}

    def take_stacks(self) -> tuple[list[StackCount], dict[int, ProcessInfo]]:
        """The samples unwound since the last take, named, and the processes they belong to;
        then both are forgotten (a continuous run hands each interval over and keeps nothing
        of it, so its memory does not grow with the stacks and processes it has seen).
        Samples still waiting for a table count in the take after they are unwound."""
        merged: Counter[_NamedKey] = self._folded
        for key, count in self._counts.items():
            frames, modules = self._named_frames(key)
            merged[(key[0], key[1], key[2], frames, modules)] += count
        self._folded, self._counts, self._named, self._unnamed = Counter(), Counter(), {}, {}
        # The rows handed over are no one's now: nothing is left to fold by name later.
        self._rows_of, self._exited_rows = {}, OrderedDict()
        stacks = [
            StackCount(pid, tid, comm, frames, count, modules=modules)
            for (pid, tid, comm, frames, modules), count in merged.most_common()
        ]
        seen = {s.pid for s in stacks}
        infos = {pid: info for pid, info in self._infos.items() if pid in seen}
        # Processes whose maps are no longer held are known again if they are sampled again.
        self._infos = {pid: i for pid, i in self._infos.items() if pid in self._processes}
        return stacks, infos

    def unwind_failures(self) -> dict[str, int]:
        """Samples whose user stack stopped early, by reason (for lost_events)."""
        return {f"unwind: {reason}": n for reason, n in sorted(self._failures.items())}

    def drops(self) -> dict[str, int]:
        """Samples the kernel side could not deliver, by reason (as read after the last
        sample, once the run has been drained)."""
        if self._final_drops is not None:
            return dict(self._final_drops)
        return self._read_drops()

    def _read_drops(self) -> dict[str, int]:
        if self.obj is None or not self.obj.loaded:
            return {}
        drops = self.obj.map("drops")
        found = {reason: n for i, reason in enumerate(DROP_REASONS) if (n := drops.lookup_u64(i))}
        if self._exits is not None and (lost := self._exits.lost()):
            found[EXIT_MAPS_LOST] = lost
        return found

    def own_pids(self) -> frozenset[int]:
        """Processes of this tool besides its own (the table-decoding child)."""
        worker = self.cfi.worker
        return frozenset((worker.pid,)) if worker is not None and worker.pid else frozenset()

    def helper_cost(self) -> tuple[float, int]:
        """CPU seconds and peak RSS (KB) of the table-decoding child (known once it ended)."""
        worker = self.cfi.worker
        return (worker.cpu_s, worker.peak_rss_kb) if worker is not None else (0.0, 0)

    def notes(self) -> tuple[str, ...]:
        """How unwind tables were obtained and how often maps were read, for the snapshot."""
        st = self.cfi.stats
        text = (
            f"unwind tables: {st.from_disk} from the disk cache, {st.decoded} decoded"
            f"; /proc/PID/maps read {self.captures} times"
            f" ({self.unknown_pc_captures} for a pc in no known mapping)"
        )
        if self.recorded:
            text += (
                f"; {self.recorded} processes gone before their maps were read, unwound with"
                " the maps recorded at their exit"
            )
        worker = self.cfi.worker
        if worker is not None and worker.started:
            text += (
                f"; decoding process: {worker.cpu_s:.2f} s CPU (included in the cost), "
                f"peak RSS {worker.peak_rss_kb / 1024:.0f} MB"
            )
        python = self.python.notes() if self.python is not None else ()
        return (text, *python)

    def lost_events(self) -> dict[str, int]:
        """Drops, unwind failures and Python frames left unnamed, as a snapshot's
        lost_events."""
        python = self.python.lost() if self.python is not None else {}
        return {**self.drops(), **self.unwind_failures(), **python}

    def processes(self) -> dict[int, ProcessInfo]:
        return dict(self._infos)

    def cost(self) -> tuple[int, int]:
        """BPF run time (ns) and runs of this sampler's programs (needs a StatsSession)."""
        assert self.obj is not None
        return base.program_cost(self.obj, self.programs())

    def close(self) -> None:
        """Free the ring buffer, the decoding child and the descriptors kept on mapped files
        (the child reads files through them, so it goes first)."""
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._exits is not None:
            self._exits.close()
        self.cfi.close()
        if self._own_symbolizer:
            self.symbolizer.close()
        if self.python is not None:
            self.python.close()


def _header(data: bytes) -> DwarfSampleHeader:
    return DwarfSampleHeader.from_buffer_copy(data[:HEADER_BYTES].ljust(HEADER_BYTES, b"\0"))


def _comm_of(data: bytes) -> str:
    """The sampled thread's name, as `_unwind_sample` reads it from the header."""
    at = DwarfSampleHeader.comm.offset
    return sys.intern(hosttext.decode(data[at : at + 16].split(b"\0", 1)[0]))


def _same_process(pid: int, process: _Process) -> bool:
    """Whether `pid` is still the process whose maps were captured (not gone, not reused)."""
    started = process.maps.maps.start_time
    now = process_start_time(pid)
    return now != 0 and (not started or now == started)


def _exe_identity(pid: int) -> tuple[int, int] | None:
    """(device, inode) of the program a process runs; None once it is gone."""
    try:
        st = os.stat(f"/proc/{pid}/exe")
    except OSError:
        return None
    return st.st_dev, st.st_ino


class CpuDwarfSampler:
    """The cpu collector's Sampler interface (collectors/cpu.py) over DwarfSampler."""

    def __init__(
        self, config: CpuConfig, symbolizer: Symbolizer, python: PythonFrames | None = None
    ) -> None:
        self.config = config
        self.sampler = DwarfSampler(
            symbolizer,
            frequency_hz=config.frequency_hz,
            fp_fallback=config.unwind == "auto",
            kernel_stacks=config.kernel_stacks,
            python=python if python is not None else config.python,
        )

    def start(self, targets: base.Targets) -> None:
        self.sampler.start(targets)

    def poll(self, timeout_s: float) -> None:
        self.sampler.poll(max(0, int(timeout_s * 1000)))

    def stop(self) -> None:
        self.sampler.stop()

    def finish(self) -> SampledStacks:
        self.sampler.drain()
        stacks = self.sampler.stacks()
        lost = self.sampler.lost_events()
        self.sampler.close()
        return SampledStacks(
            on_cpu=stacks,
            lost=lost,
            notes=self.sampler.notes(),
            own_pids=self.sampler.own_pids(),
        )

    def cost(self) -> tuple[int, int]:
        return self.sampler.cost()

    def helper_cpu_s(self) -> float:
        return self.sampler.helper_cost()[0]

    def processes(self) -> dict[int, ProcessInfo]:
        return self.sampler.processes()

    def raw_counts(self) -> dict[RawStack, int]:
        return dict(self.sampler.raw_counts())

    def raw_frames(self, keys: Iterable[RawStack]) -> dict[RawStack, tuple[str, ...]]:
        return dict(self.sampler.raw_frames(cast(list[_StackKey], list(keys))))

    def raw_blocked(self) -> dict[RawStack, int]:
        return {}  # on-CPU only: off-CPU blocks come from a frame-pointer sampler beside it

    def raw_blocked_frames(self, keys: Iterable[RawStack]) -> dict[RawStack, tuple[str, ...]]:
        return {}

    def take_stacks(self) -> tuple[list[StackCount], dict[int, ProcessInfo]]:
        """The samples since the last take, named, and their processes; then forgotten."""
        return self.sampler.take_stacks()

    def set_frequency(self, hz: int) -> None:
        self.sampler.set_frequency(hz)

    def stop_sampling(self) -> None:
        self.sampler.stop_sampling()
