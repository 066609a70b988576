"""JIT symbol maps in the perf format: `/tmp/perf-PID.map`.

Runtimes that generate code (V8/Node with `--perf-basic-prof`, the JVM with perf-map-agent,
CPython 3.12 with `-X perf`, LuaJIT, .NET) write one line per generated function:

    START SIZE name

with START and SIZE in hexadecimal (with or without `0x`) and a name that may contain spaces.
A later line for the same start wins, since runtimes reuse code space after collecting it.
"""

from __future__ import annotations

import bisect
import functools
import os
import stat
from dataclasses import dataclass

from otlp_ebpf import hosttext

# A JIT's map grows with the code it generates; this bounds what one file may cost us.
MAX_PERF_MAP_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class PerfMapEntry:
    """One generated function: [start, start + size)."""

    start: int
    size: int
    name: str


class PerfMap:
    """Sorted JIT entries with lookup by address."""

    def __init__(self, entries: list[PerfMapEntry]) -> None:
        newest_by_start = {entry.start: entry for entry in entries}
        self._entries = sorted(newest_by_start.values(), key=lambda e: e.start)
        self._starts = [entry.start for entry in self._entries]

    @classmethod
    def parse(cls, text: str) -> PerfMap:
        """Parse perf map text; lines that do not follow the format are skipped."""
        return cls([entry for line in text.splitlines() if (entry := _parse_line(line))])

    @classmethod
    def load(cls, path: str) -> PerfMap | None:
        """Read a perf map file; None when it does not exist, cannot be read, or is not a
        plain file of sane size. The file sits in a world-writable directory and we may run
        as root: a FIFO, a device or a symlink planted there must not hang or flood us."""
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_PERF_MAP_BYTES:
                return None
            try:
                data = fh.read(MAX_PERF_MAP_BYTES)
            except OSError:
                return None
        return cls.parse(hosttext.decode(data))

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, addr: int) -> str | None:
        """The name of the generated function holding `addr`, or None."""
        index = bisect.bisect_right(self._starts, addr) - 1
        if index < 0:
            return None
        entry = self._entries[index]
        return entry.name if addr < entry.start + max(entry.size, 1) else None


def perf_map_path(pid: int, proc_root: str = "/proc") -> str:
    """Where the perf map of `pid` is, seen from this host.

    A process in a container writes /tmp/perf-<its own pid>.map inside its own root, so the
    file is looked up through /proc/PID/root with the innermost namespace pid.
    """
    ns_pid = _namespace_pid(pid, proc_root)
    return os.path.join(proc_root, str(pid), "root", "tmp", f"perf-{ns_pid}.map")


def _namespace_pid(pid: int, proc_root: str) -> int:
    if _in_our_pid_namespace(pid, proc_root):
        return pid  # the same pid inside: no need for /proc/PID/status, formatted in full
    try:
        with open(os.path.join(proc_root, str(pid), "status"), "rb") as fh:
            for line in fh:
                if line.startswith(b"NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError, IndexError):
        pass
    return pid


@functools.cache
def _own_pid_namespace() -> str:
    """This process's pid namespace link (it never changes; an error is not kept)."""
    return os.readlink("/proc/self/ns/pid")


def _in_our_pid_namespace(pid: int, proc_root: str) -> bool:
    """Whether `pid` lives in this process's pid namespace (one link read, where the status
    file costs the kernel every field of it); False when either cannot be read."""
    try:
        return os.readlink(os.path.join(proc_root, str(pid), "ns", "pid")) == _own_pid_namespace()
    except OSError:
        return False


def _parse_line(line: str) -> PerfMapEntry | None:
    parts = line.strip().split(maxsplit=2)
    if len(parts) < 3:
        return None
    try:
        start = int(parts[0], 16)
        size = int(parts[1], 16)
    except ValueError:
        return None
    return PerfMapEntry(start, size, parts[2])
