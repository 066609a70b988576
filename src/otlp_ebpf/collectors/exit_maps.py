"""The code mappings the kernel records as a sampled process exits (bpf/exit_maps.h).

A process living a few milliseconds is often gone before its samples are read, and its
/proc/PID/maps with it. The cpu objects record, at sched_process_exit of a process they
sampled, its executable mappings (with each file's device, inode and path), its stack and its
vDSO; a sampler that finds a process gone builds its maps from that record
(`ProcessMaps.from_recorded`) and unwinds and names its samples as if it had read them live.

Records wait here by pid, as the kernel wrote them (at most MAX_RECORDS, the oldest dropped
first), until a sampler asks for them or the process is retired: most belong to processes whose
maps were read while they lived, and are dropped undecoded.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

from otlp_ebpf.runtime import btf
from otlp_ebpf.runtime.events import RingBuffer
from otlp_ebpf.runtime.loader import BpfObject
from otlp_ebpf.symbolize.lru import Lru
from otlp_ebpf.symbolize.procmaps import (
    OpenFiles,
    ProcessMaps,
    RecordedMapping,
    kernel_dev,
    own_vdso_image,
)

RING = "exit_maps"
DROPS = "exit_maps_drops"
# The kfunc the kernel side walks the mappings with (6.7+).
ITERATOR_KFUNC = "bpf_iter_task_vma_new"
MAX_MAPPINGS = 32
PATH_BYTES = 256
MAP_EXEC = 1
MAP_STACK = 2
MAP_VDSO = 4
MAP_PATH_CUT = 8
# Records kept for processes no sampler has asked about yet.
MAX_RECORDS = 1024
NS_PER_S = 1_000_000_000


class ExitMapping(ctypes.Structure):
    """Mirror of struct exit_mapping (bpf/exit_maps.h)."""

    _fields_ = [
        ("start", ctypes.c_uint64),
        ("end", ctypes.c_uint64),
        ("offset", ctypes.c_uint64),
        ("inode", ctypes.c_uint64),
        ("dev", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("path", ctypes.c_char * PATH_BYTES),
    ]


class ExitMapsHeader(ctypes.Structure):
    """Mirror of struct exit_maps (bpf/exit_maps.h) without its mappings."""

    _fields_ = [
        ("pid", ctypes.c_uint32),
        ("count", ctypes.c_uint32),
        ("start_boottime", ctypes.c_uint64),
        ("more", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


HEADER_BYTES = ctypes.sizeof(ExitMapsHeader)
MAPPING_BYTES = ctypes.sizeof(ExitMapping)
PATH_OFFSET = ExitMapping.path.offset


@dataclass(frozen=True)
class ExitRecord:
    """What the kernel recorded of one process at its exit."""

    pid: int
    start_time: int  # clock ticks after boot, as /proc/PID/stat field 22
    mappings: tuple[RecordedMapping, ...]
    left_out: int  # mappings that did not fit in the record


def path_from_components(raw: bytes) -> str:
    """The path the kernel side wrote leaf first (`libc.so.6\\0lib\\0usr\\0\\0`), root first;
    undecodable bytes kept as surrogates so that the path still opens."""
    components = raw.split(b"\0\0", 1)[0].split(b"\0")
    names = [c for c in reversed(components) if c]
    return "/" + "/".join(os.fsdecode(c) for c in names) if names else ""


def decode(data: bytes) -> ExitRecord:
    """One ring buffer record (the header and as many mappings as it says)."""
    head = ExitMapsHeader.from_buffer_copy(data[:HEADER_BYTES].ljust(HEADER_BYTES, b"\0"))
    count = min(head.count, MAX_MAPPINGS, (len(data) - HEADER_BYTES) // MAPPING_BYTES)
    mappings = []
    for i in range(count):
        at = HEADER_BYTES + i * MAPPING_BYTES
        m = ExitMapping.from_buffer_copy(data[at : at + MAPPING_BYTES])
        cut = bool(m.flags & MAP_PATH_CUT)
        # The raw bytes: ctypes would stop the path at its first NUL, the end of the leaf.
        path = data[at + PATH_OFFSET : at + PATH_OFFSET + PATH_BYTES]
        mappings.append(
            RecordedMapping(
                start=m.start,
                end=m.end,
                offset=m.offset,
                inode=m.inode,
                dev=kernel_dev(m.dev) if m.dev else 0,
                path="" if cut else path_from_components(path),
                executable=bool(m.flags & MAP_EXEC),
                stack=bool(m.flags & MAP_STACK),
                vdso=bool(m.flags & MAP_VDSO),
            )
        )
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    return ExitRecord(
        pid=head.pid,
        start_time=head.start_boottime * ticks_per_s // NS_PER_S,
        mappings=tuple(mappings),
        left_out=head.more,
    )


def supported() -> bool:
    """Whether this kernel lets the exit program walk a process's mappings."""
    return btf.kernel_has_function(ITERATOR_KFUNC)


class ExitMaps:
    """The exit records of one loaded object, by pid: made after the load, before the exit
    program is attached; `maps_of(pid, files)` gives a gone process's recorded maps."""

    def __init__(self, obj: BpfObject) -> None:
        self.obj = obj
        self.received = 0
        self.used = 0  # records a sampler built maps from
        # pid -> the record's bytes: decoded only for a process whose maps are asked for.
        self._records: Lru[int, bytes] = Lru(MAX_RECORDS)
        self._ring: RingBuffer | None = RingBuffer(obj.map(RING), self._on_record)

    def _on_record(self, data: bytes) -> None:
        self.received += 1
        self._records[int.from_bytes(data[:4], "little")] = data

    def drain(self) -> int:
        """Take the records the kernel has written (they are not announced by a wakeup)."""
        return self._ring.drain() if self._ring is not None else 0

    def has(self, pid: int) -> bool:
        return pid in self._records

    def maps_of(self, pid: int, files: OpenFiles) -> ProcessMaps | None:
        """The maps of `pid` as recorded at its exit (the record is used up), or None when
        the kernel recorded none (yet)."""
        if pid not in self._records:
            self.drain()
        data = self._records.pop(pid)
        if data is None:
            return None
        record = decode(data)
        self.used += 1
        return ProcessMaps.from_recorded(
            pid, list(record.mappings), files, record.start_time, own_vdso_image()
        )

    def forget(self, pid: int) -> None:
        self._records.pop(pid)

    def held(self) -> int:
        return len(self._records)

    def lost(self) -> int:
        """Records the kernel could not write (ring buffer full)."""
        if not self.obj.loaded:
            return 0
        return self.obj.map(DROPS).lookup_u64(0)

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None
