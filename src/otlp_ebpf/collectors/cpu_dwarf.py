"""On-CPU sampling with full user stacks on code built without frame pointers.

bpf/cpu_dwarf.bpf.c sends, per sample, the user registers, the kernel stack and a copy of the
top of the user stack; here each sample is unwound with the CFI of the mapping each frame's PC
is in (symbolize/unwind.py) while the process's maps are known, and counted per distinct stack.
Frames are named at the end, through the shared Symbolizer.

Unwinding modes (`--unwind`):
- `dwarf`: CFI only; a frame whose code has no CFI ends the stack (counted as `no_cfi`).
- `auto`: CFI wherever the mapping has it, frame pointers for the frames whose code has none
  (JIT code and perf-map regions, assembly without CFI). Distribution binaries almost always
  carry `.eh_frame` (it is needed for C++ exceptions and pthread cancellation), so `auto` is
  exact on them whether or not they were built with frame pointers.
Kernel stacks come from bpf_get_stack, as with frame-pointer sampling.
"""

from __future__ import annotations

import contextlib
import ctypes
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from otlp_ebpf import console
from otlp_ebpf.collectors import base
from otlp_ebpf.errors import RuntimeFailure, UsageError
from otlp_ebpf.model import ProcessInfo, StackCount
from otlp_ebpf.runtime import libbpf, probes
from otlp_ebpf.runtime.events import RingBuffer
from otlp_ebpf.runtime.loader import BpfObject
from otlp_ebpf.symbolize.cfi import CfiCache, default_cache_dir
from otlp_ebpf.symbolize.elf import DEFAULT_DEBUG_ROOT
from otlp_ebpf.symbolize.procmaps import OpenFiles, ProcessMaps
from otlp_ebpf.symbolize.resolver import UNKNOWN_FRAME, Symbolizer
from otlp_ebpf.symbolize.unwind import (
    REASON_NO_MAPPING,
    REASON_NO_USER_REGS,
    Regs,
    UnwindMaps,
    unwind,
)

if TYPE_CHECKING:
    from otlp_ebpf.collectors.cpu import CpuConfig, SampledStacks

OBJECT = "cpu_dwarf"
PROGRAM = "dwarf_sample"
KSTACK_DEPTH = 64
MAX_WINDOW = 32768
DEFAULT_WINDOW = 16384
SAMPLE_IN_KERNEL = 1
SAMPLE_NO_USER_REGS = 4
DROP_REASONS = ("ring buffer full", "no scratch buffer")
KERNEL_MODULE = "[kernel.kallsyms]"
TRUNCATED_FRAME = "[truncated]"
# Kernel frames of the sampling machinery itself, dropped from the leaf end.
TRACING_FRAME_PREFIXES = ("bpf_prog_", "bpf_overflow_handler", "__perf_event_overflow")
# A pc in no known mapping means the maps are stale (exec, dlopen): look again, at most this
# often per process.
RECAPTURE_MIN_INTERVAL_S = 0.05


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
    ]


HEADER_BYTES = ctypes.sizeof(DwarfSampleHeader)

_StackKey = tuple[int, int, str, tuple[int, ...], tuple[int, ...], bool]


@dataclass
class _Process:
    maps: UnwindMaps
    comm: str
    captured_at: float


class DwarfSampler:
    """CPU samples of the targets, unwound with DWARF CFI in user space.

        sampler = DwarfSampler(symbolizer)
        sampler.start(targets)                 # after base.Targets(...), before release()
        while running: sampler.poll(100)
        stacks = sampler.stacks()

    `fp_fallback` is the `auto` mode: frame pointers for code without CFI. Decoded unwind
    tables are kept between runs in `cache_dir` (default ~/.cache/otlp-ebpf/cfi) unless
    `disk_cache` is False.
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
    ) -> None:
        if not 0 < window_bytes <= MAX_WINDOW:
            raise UsageError(f"stack window must be 1..{MAX_WINDOW} bytes, got {window_bytes}")
        self.symbolizer = symbolizer if symbolizer is not None else Symbolizer()
        self.frequency_hz = frequency_hz
        self.window_bytes = window_bytes
        self.fp_fallback = fp_fallback
        self.kernel_stacks = kernel_stacks
        if disk_cache and cache_dir is None:
            cache_dir = default_cache_dir()
        self.cfi = CfiCache(cache_dir if disk_cache else None, debug_roots)
        self.obj: BpfObject | None = None
        self.samples_total = 0
        self.truncated = 0
        self._ring: RingBuffer | None = None
        self._files = OpenFiles()
        self._processes: dict[int, _Process] = {}
        self._infos: dict[int, ProcessInfo] = {}
        self._counts: Counter[_StackKey] = Counter()
        self._failures: Counter[str] = Counter()
        self._drops: dict[str, int] = {}

    # -- set-up ---------------------------------------------------------------------------------

    def start(self, targets: base.Targets) -> None:
        """Load and attach; call `targets.release()` afterwards for a held command."""
        obj = BpfObject.open(OBJECT)
        self.obj = obj
        obj.set_rodata(**targets.rodata(), stack_window=self.window_bytes)
        # One scratch slot per possible CPU: the program indexes it with its CPU number.
        obj.resize_map("scratch", libbpf.lib().libbpf_num_possible_cpus())
        for prog in targets.unused_programs():
            obj.disable(prog)
        obj.load()
        targets.attach(obj)
        self._ring = RingBuffer(obj.map("samples"), self._on_sample)
        probes.attach_cpu_clock(obj, PROGRAM, self.frequency_hz)
        for tgid in targets.tgids:
            self._capture(tgid, "")
        console.debug(f"cpu (dwarf): attached, {self.window_bytes} B stack window")

    def programs(self) -> list[str]:
        """The loaded programs (for the tool's own cost)."""
        assert self.obj is not None
        return [p for p in self.obj.program_names() if self.obj.enabled(p)]

    # -- while running --------------------------------------------------------------------------

    def poll(self, timeout_ms: int = 100) -> int:
        """Wait up to `timeout_ms` for samples and unwind them; returns how many arrived."""
        return self._ring.poll(timeout_ms) if self._ring is not None else 0

    def drain(self) -> int:
        """Unwind every pending sample without waiting (at the end of a run)."""
        drained = self._ring.drain() if self._ring is not None else 0
        self.drops()  # remember them: the object may be closed before they are asked for
        return drained

    def _on_sample(self, data: bytes) -> None:
        head = DwarfSampleHeader.from_buffer_copy(data[:HEADER_BYTES].ljust(HEADER_BYTES, b"\0"))
        self.samples_total += 1
        comm = head.comm.decode(errors="replace")
        kernel = tuple(head.kstack[: head.kstack_bytes // 8]) if self.kernel_stacks else ()
        user, truncated = self._unwind(head, data[HEADER_BYTES : HEADER_BYTES + head.stack_bytes])
        self._counts[(head.pid, head.tid, comm, user, kernel, truncated)] += 1

    def _unwind(self, head: DwarfSampleHeader, stack: bytes) -> tuple[tuple[int, ...], bool]:
        if head.flags & SAMPLE_NO_USER_REGS:
            if not head.flags & SAMPLE_IN_KERNEL:
                self._failures[REASON_NO_USER_REGS] += 1
            return (), False
        comm = head.comm.decode(errors="replace")
        process = self._process_for(head.pid, comm)
        if process is None:
            self._failures["process_gone"] += 1
            return (head.regs[0],), False
        regs = Regs(head.regs[0], head.regs[1], head.regs[2], head.regs[3])
        result = unwind(regs, stack, regs.sp, process.maps, fp_fallback=self.fp_fallback)
        if result.reason == REASON_NO_MAPPING and self._recapture(head.pid, comm, process):
            process = self._processes[head.pid]
            result = unwind(regs, stack, regs.sp, process.maps, fp_fallback=self.fp_fallback)
        if result.reason:
            self._failures[result.reason] += 1
        if result.truncated:
            self.truncated += 1
        return tuple(result.pcs), result.truncated

    def _process_for(self, pid: int, comm: str) -> _Process | None:
        process = self._processes.get(pid)
        if process is None or (comm and process.comm and comm != process.comm):
            # First sight, or an exec changed the program (its name with it).
            self._capture(pid, comm)
            process = self._processes.get(pid)
        return process

    def _recapture(self, pid: int, comm: str, process: _Process) -> bool:
        if time.monotonic() - process.captured_at < RECAPTURE_MIN_INTERVAL_S:
            return False
        return self._capture(pid, comm)

    def _capture(self, pid: int, comm: str) -> bool:
        try:
            maps = ProcessMaps.capture(pid, self._files)
        except UsageError:
            return False
        if not maps.mappings:
            return False  # already exiting: keep what we had
        self.symbolizer.remember_process(pid)
        info = base.read_process_info(pid)
        if info is not None:
            self._infos[pid] = info
        self._processes[pid] = _Process(
            UnwindMaps(maps, self.cfi, self._files),
            comm or (info.comm if info else ""),
            time.monotonic(),
        )
        return True

    # -- results --------------------------------------------------------------------------------

    def stacks(self) -> list[StackCount]:
        """Every distinct stack seen, symbolized; frames root first, kernel frames last."""
        merged: Counter[tuple[int, int, str, tuple[str, ...], tuple[str, ...]]] = Counter()
        for (pid, tid, comm, user, kernel, truncated), count in self._counts.items():
            frames, modules = self._frames(pid, user, kernel, truncated)
            merged[(pid, tid, comm, frames, modules)] += count
        return [
            StackCount(pid, tid, comm, frames, count, modules=modules)
            for (pid, tid, comm, frames, modules), count in merged.most_common()
        ]

    def _frames(
        self, pid: int, user: tuple[int, ...], kernel: tuple[int, ...], truncated: bool
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        frames: list[str] = []
        modules: list[str] = []
        if truncated:
            frames.append(TRUNCATED_FRAME)
            modules.append("")
        for name, module in reversed(self.symbolizer.user_frames(pid, user)):
            frames.append(name)
            modules.append(module)
        kernel_names = self.symbolizer.kernel_frames(kernel) if kernel else []
        while kernel_names and kernel_names[0].startswith(TRACING_FRAME_PREFIXES):
            kernel_names.pop(0)
        for name in reversed(kernel_names):
            frames.append(name)
            modules.append(KERNEL_MODULE)
        if not frames:
            frames.append(UNKNOWN_FRAME)
            modules.append("")
        return tuple(frames), tuple(modules)

    def unwind_failures(self) -> dict[str, int]:
        """Samples whose user stack stopped early, by reason (for lost_events)."""
        return {f"unwind: {reason}": n for reason, n in sorted(self._failures.items())}

    def drops(self) -> dict[str, int]:
        """Samples the kernel side could not deliver, by reason."""
        if self.obj is not None and self.obj.loaded:
            with contextlib.suppress(RuntimeFailure):  # closed: keep the last reading
                _ = self.obj.handle
                drops = self.obj.map("drops")
                self._drops = {
                    reason: n for i, reason in enumerate(DROP_REASONS) if (n := drops.lookup_u64(i))
                }
        return dict(self._drops)

    def lost_events(self) -> dict[str, int]:
        """Drops and unwind failures together, as a snapshot's lost_events."""
        return {**self.drops(), **self.unwind_failures()}

    def processes(self) -> dict[int, ProcessInfo]:
        return dict(self._infos)

    def cost(self) -> tuple[int, int]:
        """BPF run time (ns) and runs of this sampler's programs (needs a StatsSession)."""
        assert self.obj is not None
        return base.program_cost(self.obj, self.programs())

    def close(self) -> None:
        """Free the ring buffer and the descriptors kept on mapped files."""
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        self._files.close()


class CpuDwarfSampler:
    """The cpu collector's Sampler interface (collectors/cpu.py) over DwarfSampler."""

    def __init__(self, config: CpuConfig, symbolizer: Symbolizer) -> None:
        self.config = config
        self.sampler = DwarfSampler(
            symbolizer,
            frequency_hz=config.frequency_hz,
            fp_fallback=config.unwind == "auto",
            kernel_stacks=config.kernel_stacks,
        )

    def start(self, targets: base.Targets) -> None:
        self.sampler.start(targets)

    def poll(self, timeout_s: float) -> None:
        self.sampler.poll(max(0, int(timeout_s * 1000)))

    def finish(self) -> SampledStacks:
        from otlp_ebpf.collectors.cpu import SampledStacks

        self.sampler.drain()
        stacks = self.sampler.stacks()
        lost = self.sampler.lost_events()
        self.sampler.close()
        return SampledStacks(on_cpu=stacks, lost=lost)

    def cost(self) -> tuple[int, int]:
        return self.sampler.cost()

    def processes(self) -> dict[int, ProcessInfo]:
        return self.sampler.processes()


def make_sampler(config: CpuConfig, symbolizer: Symbolizer) -> object:
    """The sampler for `--unwind dwarf|auto` (collectors/cpu.py's plug-in entry point).

    DWARF unwinding covers on-CPU user stacks. Where it cannot help (off-CPU time, kernel-only
    stacks) `auto` keeps frame-pointer sampling and `dwarf` is a usage error.
    """
    from otlp_ebpf.collectors.cpu import FramePointerSampler

    unsupported = config.off_cpu or not config.on_cpu or not config.user_stacks
    if unsupported and config.unwind == "auto":
        return FramePointerSampler(config, symbolizer)
    if unsupported:
        raise UsageError("--unwind dwarf supports on-CPU sampling of user stacks only")
    return CpuDwarfSampler(config, symbolizer)
