"""Turning raw stack addresses into frame names: the one entry point collectors use.

    symbolizer = Symbolizer()
    symbolizer.remember_process(pid)          # at attach, and at each exec/exit event
    ...
    frames = symbolizer.user_frames(pid, user_stack)   # leaf first, as the kernel gives them
    kernel = symbolizer.kernel_frames(kernel_stack)
    symbolizer.close()

Return addresses: every frame of a stack except the leaf is a return address, which points to
the instruction after the call. When the call is the last instruction of a function (a call to
a `noreturn` function), that address already belongs to the next function. So by default every
frame but the first (the leaf) is looked up at `addr - 1`; pass
`adjust_return_addresses=False` when the stack holds no return addresses, and the caller must
not subtract anything itself. Unresolved frames show the looked-up address.

Names: a resolved user frame is the function name (C++ demangled). An unresolved one is
`<module basename>+0x<file offset>`; an address in an anonymous region is `0x<address>` unless
the process's perf map (JIT) names it; an address in no mapping is `[unknown]`. Kernel frames
carry the `_[k]` suffix (`vfs_read_[k]`, or `0xffffffff81234567_[k]`). No frame is ever dropped:
the output has one entry per input address, in the same order.
"""

from __future__ import annotations

import contextlib
import io
import struct
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import BinaryIO

from elftools.common.exceptions import ELFError

from otlp_ebpf import hosttext
from otlp_ebpf.errors import UsageError
from otlp_ebpf.model import KERNEL_SUFFIX
from otlp_ebpf.symbolize.allowance import CpuAllowance
from otlp_ebpf.symbolize.elf import DEFAULT_DEBUG_ROOT, ElfSymbolizer, LoadedElf, file_opener
from otlp_ebpf.symbolize.kernel import KALLSYMS_PATH, KernelSymbols
from otlp_ebpf.symbolize.lru import Lru
from otlp_ebpf.symbolize.procmaps import (
    PROC_ROOT,
    FileId,
    Mapping,
    OpenFiles,
    ProcessMaps,
    process_start_time,
)

UNKNOWN_FRAME = "[unknown]"
# Snapshots of one pid's maps kept at most (each exec or remember adds one).
_MAX_SNAPSHOTS_PER_PID = 8
# And at most this many mappings across them (the newest is always kept): a process that
# loads libraries all day is captured again with hundreds of mappings each time.
MAX_MAPPINGS_PER_PID = 2048
# Addresses resolved per process remembered (the newest snapshot's memo): a long-lived
# process sampled all day reaches every address of its code.
MAX_MEMO_PER_PID = 4096
# Processes whose maps are kept (callers forget a process once its stacks are named; this
# caps what a caller that names only at the end keeps: the oldest lose their names).
MAX_PROCESSES = 8192
# Mapped files (dev, inode, size, mtime) whose symbol table is looked up again without reading
# the file (every process of one binary maps the same file; a table is shared by build-id).
MAX_FILES = 2048
# Names of code addresses by (file, path it is mapped at, offset in it), shared by every
# process mapping that file: the processes of one program (a shell's `ls`, `id`, ...) run the
# same code at other addresses, and each would otherwise look every frame up again.
MAX_SHARED_FRAMES = 8192
# Tables of files without a build-id (not shared by build-id, held apart).
MAX_UNIDENTIFIED = 32
# Files whose symbols wait for the load allowance (beyond, the oldest leave the queue,
# counted: their frames stay module+offset until a sample needs them again).
MAX_DEFERRED_FILES = 256

# Reasons a frame stays unresolved, as counted in SymbolizeStats.by_reason.
REASON_PROCESS_UNKNOWN = "process_unknown"
REASON_NO_MAPPING = "no_mapping"
REASON_ANONYMOUS = "anonymous"
REASON_FILE_UNREADABLE = "file_unreadable"
REASON_NO_SYMBOL = "no_symbol"
REASON_KERNEL_NO_SYMBOL = "kernel_no_symbol"
REASON_KALLSYMS_UNAVAILABLE = "kallsyms_unavailable"
# The file's symbols were not loaded yet: the load allowance was spent (named module+offset).
REASON_DEFERRED = "symbols_deferred"

_Resolution = tuple[str, str, str]  # frame name, module path, reason ("" when resolved)
# Outcomes that stay true for a file's content (see Symbolizer._resolve_shared).
_LASTING = ("", REASON_NO_SYMBOL)


@dataclass
class SymbolizeStats:
    """Frames resolved and unresolved over a run, the unresolved ones counted by reason."""

    resolved: int = 0
    unresolved: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)

    def count(self, reason: str) -> None:
        if reason:
            self.unresolved += 1
            self.by_reason[reason] += 1
        else:
            self.resolved += 1

    def summary(self) -> str:
        """One line for the end-of-run account."""
        text = f"{self.resolved} frames resolved, {self.unresolved} unresolved"
        if self.by_reason:
            reasons = ", ".join(f"{r} {n}" for r, n in self.by_reason.most_common())
            text += f" ({reasons})"
        return text


class _Deferred:
    """What `_file_symbols` answers for a file whose load waits for the allowance."""


_DEFERRED = _Deferred()


@dataclass
class _Snapshot:
    maps: ProcessMaps
    memo: dict[int, _Resolution] = field(default_factory=dict)


class Symbolizer:
    """Names for user and kernel stack addresses, with every table loaded at most once.

    `debug_roots` are where separate debug files are searched (default /usr/lib/debug);
    `kallsyms_path` and `proc_root` exist so tests can point elsewhere.
    Holds open descriptors on the executables of remembered processes: call `close()` (or use
    it as a context manager) when done.
    """

    def __init__(
        self,
        *,
        debug_roots: Sequence[str] = (DEFAULT_DEBUG_ROOT,),
        kallsyms_path: str = KALLSYMS_PATH,
        proc_root: str = PROC_ROOT,
    ) -> None:
        self.stats = SymbolizeStats()
        self._elf = ElfSymbolizer(debug_roots)
        self._files = OpenFiles()
        self._kallsyms_path = kallsyms_path
        self._proc_root = proc_root
        self._kernel: KernelSymbols | None = None
        self._kernel_loaded = False
        self._snapshots: Lru[int, list[_Snapshot]] = Lru(MAX_PROCESSES)
        # Mapped file -> the build-id of its table (held, bounded, by the ELF symbolizer), ""
        # for a file without one (its table is in `_unidentified`), None when unreadable: a
        # table is never kept alive here past the symbolizer's bounds.
        self._by_file: Lru[FileId, str | None] = Lru(MAX_FILES)
        self._unidentified: Lru[FileId, LoadedElf] = Lru(MAX_UNIDENTIFIED)
        self._by_vdso_image: Lru[bytes, LoadedElf | None] = Lru(4)
        self._by_offset: Lru[tuple[FileId, str, int], _Resolution] = Lru(MAX_SHARED_FRAMES)
        self.shared_frames = 0  # frames named from another process's lookup
        # Loading a new binary's symbols is held to this share of CPU (none by default). Under
        # a limit a file is queued when first met (its frames named module+offset) and the
        # queue is loaded as the allowance comes back, the files most frames asked for first:
        # a binary sampled once (a short-lived tool) does not cost a table load, a busy one is
        # named from its next samples on.
        self.load_allowance = CpuAllowance()
        self._deferred: Lru[FileId, str] = Lru(MAX_DEFERRED_FILES, self._forget_asked)
        self._asked: Counter[FileId] = Counter()  # frames of each queued file met so far
        self.deferred_files = 0  # files queued
        self.deferred_loaded = 0  # of which loaded later, from the queue

    @property
    def deferred_dropped(self) -> int:
        """Queued files that left the queue for room before they were loaded."""
        return self._deferred.evicted

    def __enter__(self) -> Symbolizer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the descriptors held on remembered executables."""
        self._files.close()
        self._by_file.clear()
        self._unidentified.clear()

    @property
    def files(self) -> OpenFiles:
        """The registry of mapped files held open: a collector capturing maps itself shares
        it (one descriptor per file, and its captures need no second read)."""
        return self._files

    @property
    def files_parsed(self) -> int:
        """ELF and debug files parsed so far (a table cached by build-id is parsed once)."""
        return self._elf.files_parsed

    def remember_process(self, pid: int) -> bool:
        """Capture the maps of `pid` now; False when the process is gone or has no memory left.

        Call it at attach, when a new process is first seen and after each exec. By the time an
        exit event is handled the process has usually released its memory, so captures must be
        taken earlier; an empty capture never replaces a good one.
        """
        try:
            maps = ProcessMaps.capture(pid, self._files, self._proc_root)
        except UsageError:
            return False
        return self.remember_maps(pid, maps)

    def remember_maps(self, pid: int, maps: ProcessMaps) -> bool:
        """Keep maps of `pid` captured elsewhere (with `files`), or recorded at its exit;
        the newest is searched first. False when they are empty."""
        if not maps.mappings:
            return False  # an exiting process has already dropped its memory: keep what we had
        snapshots = self._snapshots.get(pid)
        if snapshots is None:
            snapshots = self._snapshots[pid] = []
        if snapshots and snapshots[0].maps.mappings == maps.mappings:
            snapshots[0] = _Snapshot(maps)
            return True
        snapshots.insert(0, _Snapshot(maps))
        del snapshots[_MAX_SNAPSHOTS_PER_PID:]
        held = len(maps.mappings)
        for index, older in enumerate(snapshots[1:], start=1):
            held += len(older.maps.mappings)
            if held > MAX_MAPPINGS_PER_PID:
                del snapshots[index:]
                break
        return True

    def forget_process(self, pid: int) -> None:
        """Drop what was captured of `pid` (its stacks were named already): a long run over
        endless short processes keeps memory for the processes it still needs only."""
        self._snapshots.pop(pid, None)

    def held(self) -> dict[str, int]:
        """What the symbolizer holds now and what it dropped for room (for bounds checks)."""
        return {
            "processes": len(self._snapshots),
            "processes_evicted": self._snapshots.evicted,
            "mappings": sum(len(s.maps.mappings) for v in self._snapshots.values() for s in v),
            "memo_entries": sum(len(s.memo) for v in self._snapshots.values() for s in v),
            "files": len(self._by_file),
            "files_evicted": self._by_file.evicted,
            "symbol_tables": self._elf.tables_held,
            "symbols_held": self._elf.symbols_held,
            "symbol_bytes_held": self._elf.bytes_held,
            "symbol_tables_evicted": self._elf.tables_evicted,
            "symbol_files_deferred": len(self._deferred),
        }

    def cache_marks(self) -> dict[str, int]:
        """The sizes of the caches that grow with the binaries met (see `trim`)."""
        return {
            "symbol_bytes": self._elf.bytes_held,
            "symbol_files": len(self._by_file),
            "unidentified_tables": len(self._unidentified),
            "shared_frames": len(self._by_offset),
        }

    def trim(self, marks: dict[str, int]) -> int:
        """Shrink those caches back to `marks` (from `cache_marks`), the least recently used
        entries first: what a burst of new binaries added goes, what is in steady use stays
        (an entry evicted and needed again is loaded again). Returns the entries dropped."""
        return (
            self._elf.trim(marks.get("symbol_bytes", self._elf.bytes_held))
            + self._by_file.trim(marks.get("symbol_files", len(self._by_file)))
            + self._unidentified.trim(marks.get("unidentified_tables", len(self._unidentified)))
            + self._by_offset.trim(marks.get("shared_frames", len(self._by_offset)))
        )

    def user_frames(
        self, pid: int, addrs: Sequence[int], *, adjust_return_addresses: bool = True
    ) -> list[tuple[str, str]]:
        """(frame name, module path) for each address of a user stack, leaf first, same order.

        With `adjust_return_addresses`, every address but the first is looked up at addr - 1.
        """
        if pid not in self._snapshots:
            self.remember_process(pid)
        frames = []
        recaptured = False
        for index, addr in enumerate(addrs):
            lookup = addr - 1 if adjust_return_addresses and index > 0 and addr > 0 else addr
            resolution = self._resolve_user(pid, lookup)
            if resolution[2] == REASON_NO_MAPPING and not recaptured:
                # Code mapped after the last capture (dlopen): look again while the process lives.
                recaptured = True
                if self._recapture_if_same_process(pid):
                    resolution = self._resolve_user(pid, lookup)
            self.stats.count(resolution[2])
            frames.append((hosttext.from_fs(resolution[0]), hosttext.from_fs(resolution[1])))
        return frames

    def kernel_frames(
        self, addrs: Sequence[int], *, adjust_return_addresses: bool = True
    ) -> list[str]:
        """Kernel frame names with the `_[k]` suffix, same order as `addrs` (leaf first)."""
        kernel = self._kernel_symbols()
        names = []
        for index, addr in enumerate(addrs):
            lookup = addr - 1 if adjust_return_addresses and index > 0 and addr > 0 else addr
            symbol = kernel.lookup(lookup) if kernel else None
            if symbol is None:
                reason = REASON_KERNEL_NO_SYMBOL if kernel else REASON_KALLSYMS_UNAVAILABLE
                self.stats.count(reason)
                names.append(f"0x{lookup:x}{KERNEL_SUFFIX}")
            else:
                self.stats.count("")
                names.append(symbol.name + KERNEL_SUFFIX)
        return names

    def _kernel_symbols(self) -> KernelSymbols | None:
        if not self._kernel_loaded:
            self._kernel_loaded = True
            with contextlib.suppress(OSError):
                loaded = KernelSymbols.load(self._kallsyms_path)
                self._kernel = None if loaded.restricted else loaded
        return self._kernel

    def _recapture_if_same_process(self, pid: int) -> bool:
        snapshots = self._snapshots.get(pid)
        if not snapshots:
            return False
        alive_since = process_start_time(pid, self._proc_root)
        if not alive_since or alive_since != snapshots[0].maps.start_time:
            return False
        newest = snapshots[0]
        return self.remember_process(pid) and self._snapshots[pid][0] is not newest

    def _resolve_user(self, pid: int, addr: int) -> _Resolution:
        snapshots = self._snapshots.get(pid)
        if not snapshots:
            return UNKNOWN_FRAME, "", REASON_PROCESS_UNKNOWN
        newest = snapshots[0]
        cached = newest.memo.get(addr)
        if cached is None:
            cached = self._resolve_in_snapshots(snapshots, addr)
            if cached[2] == REASON_DEFERRED:
                return cached  # named again once the file's symbols are loaded
            if len(newest.memo) >= MAX_MEMO_PER_PID:
                newest.memo.clear()
            newest.memo[addr] = cached
        return cached

    def _resolve_in_snapshots(self, snapshots: list[_Snapshot], addr: int) -> _Resolution:
        for snapshot in snapshots:
            mapping = snapshot.maps.find(addr)
            if mapping is not None:
                return self._resolve_in_mapping(snapshot.maps, mapping, addr)
        jit = _perf_map_name(snapshots[0].maps, addr)
        if jit is not None:
            return jit, snapshots[0].maps.perf_map_path, ""
        return UNKNOWN_FRAME, "", REASON_NO_MAPPING

    def _resolve_in_mapping(self, maps: ProcessMaps, mapping: Mapping, addr: int) -> _Resolution:
        loaded: LoadedElf | _Deferred | None
        if mapping.path == "[vdso]":
            loaded = self._vdso_symbols(maps.vdso_image)
        elif mapping.is_file:
            return self._resolve_shared(mapping, addr)
        else:
            jit = _perf_map_name(maps, addr)
            if jit is not None:
                return jit, maps.perf_map_path, ""
            return f"0x{addr:x}", mapping.path, REASON_ANONYMOUS
        return self._resolve_in_file(mapping, addr, loaded)

    def _resolve_shared(self, mapping: Mapping, addr: int) -> _Resolution:
        """A frame in a mapped file, named once for every process mapping the file: only
        names that will not change are kept (not those waiting for the file's symbols, nor
        those of a file not at hand)."""
        file_id = mapping.file_id
        key = (file_id, mapping.path, mapping.file_offset(addr)) if file_id is not None else None
        if key is not None and (known := self._by_offset.get(key)) is not None:
            self.shared_frames += 1
            return known
        resolution = self._resolve_in_file(mapping, addr, self._file_symbols(mapping))
        if key is not None and resolution[2] in _LASTING:
            self._by_offset[key] = resolution
        return resolution

    def _resolve_in_file(
        self, mapping: Mapping, addr: int, loaded: LoadedElf | _Deferred | None
    ) -> _Resolution:
        offset = mapping.file_offset(addr)
        fallback = f"{mapping.basename}+0x{offset:x}"
        if isinstance(loaded, _Deferred):
            return fallback, mapping.path, REASON_DEFERRED
        if loaded is None:
            return fallback, mapping.path, REASON_FILE_UNREADABLE
        vaddr = loaded.info.vaddr_for_offset(offset)
        name = loaded.symbols.lookup(vaddr) if vaddr is not None else None
        if name is None:
            return fallback, mapping.path, REASON_NO_SYMBOL
        return name, mapping.path, ""

    def _file_symbols(self, mapping: Mapping) -> LoadedElf | _Deferred | None:
        file_id = mapping.file_id
        if file_id is None:
            return None
        if file_id in self._by_file:
            build_id = self._by_file[file_id]
            if build_id is None:
                return None  # unreadable
            held = self._elf.cached(build_id) if build_id else self._unidentified.get(file_id)
            if held is not None:
                return held
        if not self._files.is_open(file_id):
            return None  # closed for room before its symbols were needed
        if self.load_allowance.pct or not self.load_allowance.available():
            if file_id not in self._deferred:
                self.deferred_files += 1
            self._deferred[file_id] = mapping.path
            self._asked[file_id] += 1
            return _DEFERRED
        return self._load_file(file_id, mapping.path)

    def _forget_asked(self, file_id: FileId, _path: str) -> None:
        self._asked.pop(file_id, None)

    def _load_file(self, file_id: FileId, path: str) -> LoadedElf | None:
        """Load (and remember) the symbols of a mapped file, charged to the allowance."""
        started = time.thread_time()
        loaded = self._load(file_opener(self._files.path_of(file_id)), path)
        self.load_allowance.spend(time.thread_time() - started)
        self._by_file[file_id] = loaded.info.build_id if loaded is not None else None
        if loaded is not None and not loaded.info.build_id:
            self._unidentified[file_id] = loaded
        return loaded

    def load_deferred(self) -> int:
        """Load queued files' symbols while the allowance lasts, the files most frames asked
        for first (the frames of their next samples get names); returns how many were
        loaded."""
        loaded = 0
        while self._asked and self.load_allowance.available():
            file_id, _ = self._asked.most_common(1)[0]
            del self._asked[file_id]
            path = self._deferred.pop(file_id)
            if path is None or file_id in self._by_file or not self._files.is_open(file_id):
                continue  # loaded meanwhile, or its descriptor closed for room
            self._load_file(file_id, path)
            loaded += 1
        self.deferred_loaded += loaded
        return loaded

    def _vdso_symbols(self, image: bytes) -> LoadedElf | None:
        if not image:
            return None
        if image not in self._by_vdso_image:
            self._by_vdso_image[image] = self._load(lambda: io.BytesIO(image), "[vdso]")
        return self._by_vdso_image[image]

    def _load(self, opener: Callable[[], BinaryIO], path: str) -> LoadedElf | None:
        try:
            return self._elf.load(opener, path)
        except (OSError, ELFError, struct.error, ValueError):
            return None


def _perf_map_name(maps: ProcessMaps, addr: int) -> str | None:
    name = maps.perf_map.lookup(addr) if maps.perf_map else None
    if name is None and maps.refresh_perf_map():
        name = maps.perf_map.lookup(addr) if maps.perf_map else None
    return name
