"""Memory maps of a process, captured while it lives.

A stack sampled from a process that exits before the end of the run must still be symbolized,
and once it has exited /proc/PID is gone. So `ProcessMaps.capture(pid)` records the mappings and,
for each executable file mapping, opens the file and keeps it open in an `OpenFiles` registry
(one descriptor per distinct file, shared by every process mapping it). An open descriptor keeps
the file readable after the process exits, after the file is deleted or replaced, and whatever
mount namespace the process lives in; it is read back through /proc/self/fd/N. A file held
already is found again by the device and inode its maps line gives (every process of a program
maps the same files), and the rest of the line, past the address range, is parsed once.

Files are opened through /proc/PID/root/<path>, which reaches into a container's root, when the
inode there is the one mapped; otherwise (deleted or replaced binaries) through
/proc/PID/map_files/<start>-<end>, which always names the mapped inode.

The vDSO has no file: its image (two pages) is read from /proc/PID/mem at capture time.
Anonymous executable regions (JIT code) are kept as mappings without a file; their names come
from the process's perf map, also read at capture time.

A process may be gone before its maps could be read: the kernel then records its code
mappings as it exits (bpf/exit_maps.h), and `ProcessMaps.from_recorded` builds its maps from
them, finding each file among those already held by (device, inode), or opening it by path.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import os
import stat
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

from otlp_ebpf.errors import UsageError
from otlp_ebpf.symbolize.perfmap import PerfMap, perf_map_path

PROC_ROOT = "/proc"
_DELETED = " (deleted)"
_VDSO = "[vdso]"


class FileId(NamedTuple):
    """The identity of an opened file: same identity, same bytes."""

    dev: int
    ino: int
    size: int
    mtime_ns: int


class Mapping(NamedTuple):
    """One line of /proc/PID/maps. (A named tuple: a capture builds one per line, for every
    new process, and a frozen dataclass takes several times longer to build.)"""

    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str  # as the process saw it, without the " (deleted)" mark; "" when anonymous
    deleted: bool = False
    dev: int = 0  # device of the mapped file (st_dev encoding), 0 when anonymous
    file_id: FileId | None = None  # set for executable file mappings we could open

    @property
    def executable(self) -> bool:
        return "x" in self.perms

    @property
    def is_file(self) -> bool:
        return self.inode != 0 and self.path.startswith("/")

    @property
    def basename(self) -> str:
        return os.path.basename(self.path) if self.is_file else self.path

    def file_offset(self, addr: int) -> int:
        """Offset in the mapped file of the byte at run-time address `addr`."""
        return addr - self.start + self.offset


_Tail = tuple[str, int, int, str, bool, int]  # perms, offset, inode, path, deleted, dev
# Distinct maps-line tails whose parse is remembered (see `_parse_tail`).
MAX_TAILS = 4096


def parse_maps_line(line: str) -> Mapping | None:
    """Parse one /proc/PID/maps line; None when it is not one."""
    addresses, _, tail = line.partition(" ")
    start_hex, _, end_hex = addresses.partition("-")
    try:
        start, end = int(start_hex, 16), int(end_hex, 16)
    except ValueError:
        return None
    fields = _parse_tail(tail)
    return Mapping(start, end, *fields) if fields is not None else None


@functools.lru_cache(maxsize=MAX_TAILS)
def _parse_tail(tail: str) -> _Tail | None:
    """What follows the address range, `r-xp 00028000 fe:01 1835 /usr/lib/libc.so.6` (the
    path may hold spaces). Remembered: the processes of one program map the same files at
    other addresses, so their lines differ only in the range."""
    parts = tail.rstrip("\n").split(maxsplit=4)
    if len(parts) < 4:
        return None
    try:
        offset = int(parts[1], 16)
        inode = int(parts[3])
    except ValueError:
        return None
    path = parts[4] if len(parts) > 4 else ""
    deleted = path.endswith(_DELETED)
    if deleted:
        path = path[: -len(_DELETED)]
    return parts[0], offset, inode, path, deleted, _parse_dev(parts[2])


def _parse_dev(text: str) -> int:
    """`fd:01` (major:minor in hex) as an st_dev; 0 when malformed."""
    major, _, minor = text.partition(":")
    try:
        return os.makedev(int(major, 16), int(minor, 16))
    except ValueError:
        return 0


def kernel_dev(dev: int) -> int:
    """A device number as the kernel keeps it (major << 20 | minor) in st_dev encoding."""
    return os.makedev(dev >> 20, dev & 0xFFFFF)


@dataclass(frozen=True)
class RecordedMapping:
    """A mapping the kernel recorded as its process exited (bpf/exit_maps.h)."""

    start: int
    end: int
    offset: int
    inode: int
    dev: int  # st_dev encoding
    path: str  # "" when unknown (anonymous, not code, or the path was cut short)
    executable: bool
    stack: bool = False
    vdso: bool = False


# Descriptors held at most: the least recently used beyond it is closed (a host that runs new
# binaries all day would otherwise run out of descriptors, and keep deleted files on disk).
MAX_OPEN_FILES = 512


class OpenFiles:
    """Executable files held open by identity, so they stay readable after their processes
    exit; at most `cap` of them, the least recently used closed first (`closed` counts them)."""

    def __init__(self, cap: int = MAX_OPEN_FILES) -> None:
        self.cap = cap
        self.closed = 0
        self._fds: OrderedDict[FileId, int] = OrderedDict()
        # (device, inode) as a process's maps name the file -> the file held, and its path.
        self._by_inode: dict[tuple[int, int], tuple[FileId, str]] = {}

    def __len__(self) -> int:
        return len(self._fds)

    def known(self, dev: int, inode: int) -> tuple[FileId, str] | None:
        """The file held for the mapping of (`dev`, `inode`), and the path it was mapped at."""
        return self._by_inode.get((dev, inode))

    def held(self, dev: int, inode: int) -> FileId | None:
        """The file held for the mapping of (`dev`, `inode`) when it is still as it was opened:
        every process of a program maps the same files, and the check costs one fstat where
        opening it again by path costs a walk of the path and a descriptor. A file rewritten in
        place keeps its inode but not its size or time: it is opened again (a new identity)."""
        found = self._by_inode.get((dev, inode))
        if found is None:
            return None
        file_id = found[0]
        try:
            st = os.fstat(self._fds[file_id])
        except OSError:
            return None
        if (st.st_size, st.st_mtime_ns) != (file_id.size, file_id.mtime_ns):
            return None
        self._fds.move_to_end(file_id)
        return file_id

    def keep(
        self, candidates: list[tuple[str, bool]], inode: int, *, dev: int = 0, path: str = ""
    ) -> FileId | None:
        """Open the first candidate path that works; its identity, or None.

        A candidate is (path, must the inode be `inode`): a path in the process's root may name
        a newer file than the one mapped, while map_files always names the mapped one (overlay
        file systems may show it with another inode number). With `dev`, the file is found
        again by (`dev`, `inode`) through `known`; `path` is what a process mapped it as.
        """
        file_id = self._open_first(candidates, inode)
        if file_id is not None and dev:
            self._by_inode[(dev, inode)] = (file_id, path)
        return file_id

    def keep_recorded(self, path: str, dev: int, inode: int) -> tuple[FileId, str] | None:
        """The file at `path` when it is inode `inode` of device `dev` (as the kernel recorded
        a mapping of it): opened, held, and found again by (`dev`, `inode`) from then on."""
        file_id = self._open_first([(path, True)], inode, dev=dev)
        if file_id is None:
            return None
        self._by_inode[(dev, inode)] = (file_id, path)
        return file_id, path

    def _open_first(
        self, candidates: list[tuple[str, bool]], inode: int, *, dev: int | None = None
    ) -> FileId | None:
        for candidate, check_inode in candidates:
            try:
                # Non-blocking: a path in another process's root may name a FIFO.
                fd = os.open(candidate, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:
                continue
            st = os.fstat(fd)
            wrong_file = (check_inode and st.st_ino != inode) or dev not in (None, st.st_dev)
            if not stat.S_ISREG(st.st_mode) or wrong_file:
                os.close(fd)
                continue
            file_id = FileId(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if file_id in self._fds:
                os.close(fd)
                self._fds.move_to_end(file_id)
            else:
                self._fds[file_id] = fd
                self._close_beyond_cap()
            return file_id
        return None

    def is_open(self, file_id: FileId) -> bool:
        """Whether the file is still held (it may have been closed for room)."""
        return file_id in self._fds

    def path_of(self, file_id: FileId) -> str:
        """A path that opens the kept file while it is held (see `is_open`)."""
        self._fds.move_to_end(file_id)
        return f"/proc/self/fd/{self._fds[file_id]}"

    def _close_beyond_cap(self) -> None:
        while len(self._fds) > self.cap:
            file_id, fd = self._fds.popitem(last=False)
            with contextlib.suppress(OSError):
                os.close(fd)
            self.closed += 1
            for key in [k for k, (held, _) in self._by_inode.items() if held == file_id]:
                del self._by_inode[key]

    def close(self) -> None:
        """Close every kept descriptor."""
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        self._by_inode.clear()


@dataclass
class ProcessMaps:
    """The mappings of one process at one moment, with what is needed to symbolize them."""

    pid: int
    mappings: list[Mapping]
    start_time: int = 0  # clock ticks after boot: tells a pid reused by another process apart
    vdso_image: bytes = b""
    perf_map: PerfMap | None = None
    perf_map_path: str = ""
    perf_map_stamp: tuple[int, int] = (0, 0)  # (mtime_ns, size) of the perf map when read
    _proc_root: str = field(default=PROC_ROOT, repr=False)
    _starts: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.mappings.sort(key=lambda m: m.start)
        self._starts = [m.start for m in self.mappings]

    @classmethod
    def capture(
        cls, pid: int, files: OpenFiles | None = None, proc_root: str = PROC_ROOT
    ) -> ProcessMaps:
        """Read /proc/PID/maps now, keeping executable files open in `files`.

        Raises UsageError when the process does not exist (or is not ours to read).
        """
        proc = os.path.join(proc_root, str(pid))
        try:
            # Paths stay openable (undecodable bytes held as surrogates); they are made text only
            # where they enter a snapshot (hosttext.from_fs).
            with open(os.path.join(proc, "maps"), encoding="utf-8", errors="surrogateescape") as fh:
                lines = fh.readlines()
        except FileNotFoundError as exc:
            raise UsageError(f"process {pid} not found") from exc
        except OSError as exc:
            message = f"cannot read the memory maps of process {pid}: {exc.strerror}"
            raise UsageError(message) from exc
        files = files if files is not None else OpenFiles()
        mappings = [m for line in lines if (m := parse_maps_line(line))]
        mappings = [_with_file(m, proc, files) for m in mappings]
        vdso = next((m for m in mappings if m.path == _VDSO), None)
        maps = cls(
            pid=pid,
            mappings=mappings,
            start_time=process_start_time(pid, proc_root),
            vdso_image=_read_memory(proc, vdso) if vdso else b"",
            perf_map_path=perf_map_path(pid, proc_root),
            _proc_root=proc_root,
        )
        maps.refresh_perf_map()
        return maps

    @classmethod
    def from_recorded(
        cls,
        pid: int,
        recorded: list[RecordedMapping],
        files: OpenFiles,
        start_time: int = 0,
        vdso_image: bytes = b"",
    ) -> ProcessMaps:
        """The maps of a process that is gone, from what the kernel recorded at its exit.

        Code mappings get their files from `files` (or by path); the stack mapping bounds
        the stack; `vdso_image` stands for the process's vDSO (the kernel maps the same image
        into every process)."""
        mappings = []
        for rec in recorded:
            if rec.vdso:
                mappings.append(Mapping(rec.start, rec.end, "r-xp", 0, 0, _VDSO))
            elif rec.executable and rec.inode:
                mappings.append(_recorded_file(rec, files))
            elif rec.executable:
                mappings.append(Mapping(rec.start, rec.end, "r-xp", rec.offset, 0, ""))
            elif rec.stack:
                mappings.append(Mapping(rec.start, rec.end, "rw-p", 0, 0, "[stack]"))
        return cls(
            pid=pid,
            mappings=mappings,
            start_time=start_time,
            vdso_image=vdso_image if any(m.path == _VDSO for m in mappings) else b"",
        )

    def refresh_perf_map(self) -> bool:
        """Reread the perf map if it changed since last read (JIT runtimes append to it);
        True when new content was read."""
        try:
            st = os.stat(self.perf_map_path)
        except OSError:
            return False
        if self.start_time and process_start_time(self.pid, self._proc_root) != self.start_time:
            return False  # the pid now belongs to another process
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self.perf_map_stamp:
            return False
        fresh = PerfMap.load(self.perf_map_path)
        if fresh is None:
            return False
        self.perf_map, self.perf_map_stamp = fresh, stamp
        return True

    def find(self, addr: int) -> Mapping | None:
        """The mapping holding run-time address `addr`, or None."""
        index = bisect.bisect_right(self._starts, addr) - 1
        if index < 0:
            return None
        mapping = self.mappings[index]
        return mapping if addr < mapping.end else None


_own_vdso: list[bytes] = []


def own_vdso_image() -> bytes:
    """This process's vDSO image (read once): the kernel maps the same one into every
    process of this architecture, so it stands for a gone process's."""
    if not _own_vdso:
        try:
            with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
                lines = fh.readlines()
        except OSError:
            lines = []
        vdso = next((m for line in lines if (m := parse_maps_line(line)) and m.path == _VDSO), None)
        _own_vdso.append(_read_memory("/proc/self", vdso) if vdso else b"")
    return _own_vdso[0]


def process_start_time(pid: int, proc_root: str = PROC_ROOT) -> int:
    """Start time of `pid` in clock ticks after boot (field 22 of stat); 0 when gone."""
    try:
        with open(
            os.path.join(proc_root, str(pid), "stat"), encoding="utf-8", errors="replace"
        ) as fh:
            stat = fh.read()
    except OSError:
        return 0
    # comm (field 2) may hold spaces and parentheses: count fields after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return 0


def _with_file(mapping: Mapping, proc: str, files: OpenFiles) -> Mapping:
    if not (mapping.executable and mapping.is_file):
        return mapping
    held = files.held(mapping.dev, mapping.inode) if mapping.dev else None
    if held is not None:
        return mapping._replace(file_id=held)
    candidates = [(f"{proc}/map_files/{mapping.start:x}-{mapping.end:x}", False)]
    if not mapping.deleted:
        candidates.insert(0, (f"{proc}/root{mapping.path}", True))
    file_id = files.keep(candidates, mapping.inode, dev=mapping.dev, path=mapping.path)
    return mapping._replace(file_id=file_id) if file_id else mapping


def _recorded_file(recorded: RecordedMapping, files: OpenFiles) -> Mapping:
    """A recorded code mapping with its file: one held already by (device, inode), else
    the file at the recorded path if it is that inode on that device."""
    mapping = Mapping(
        recorded.start,
        recorded.end,
        "r-xp",
        recorded.offset,
        recorded.inode,
        recorded.path,
        dev=recorded.dev,
    )
    held = files.known(recorded.dev, recorded.inode)
    if held is None and recorded.path.startswith("/"):
        held = files.keep_recorded(recorded.path, recorded.dev, recorded.inode)
    if held is None:
        return mapping
    file_id, path = held
    return mapping._replace(file_id=file_id, path=recorded.path or path)


def _read_memory(proc: str, mapping: Mapping) -> bytes:
    try:
        fd = os.open(os.path.join(proc, "mem"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.pread(fd, mapping.end - mapping.start, mapping.start)
    except OSError:
        return b""
    finally:
        os.close(fd)
