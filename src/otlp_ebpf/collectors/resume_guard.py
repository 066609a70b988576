"""Never leave a workload stopped, even when the tool itself is SIGKILLed.

`mem -- CMD` stops a target at exit() (bpf/mem.bpf.c sends it SIGSTOP) so that its memory maps
can be read before they vanish, and relies on user space to continue it. A tool killed with
SIGKILL (a CI harness's timeout) runs no cleanup, and a stopped process stays stopped unless
its process group happens to be orphaned. So a small child process, forked once the probes
are attached, keeps the read end of a pipe and a copy of the `targets` map's descriptor, and
nothing else. When the pipe reaches end-of-file without the tool having said "done" (the
tool is gone, however it died), it continues every target still stopped, a few times over
while the kernel tears the tool's probes down, and exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import time

from otlp_ebpf.runtime import libbpf

DONE = b"d"
# After the tool died: how often and how long to look for stopped targets. Its probes go
# with its last file descriptors, a moment after the pipe closed.
SCAN_EVERY_S = 0.05
SCANS = 40


def _tgids_in(map_fd: int) -> list[int]:
    """Keys of a hash map of u32 process ids, read by descriptor."""
    out: list[int] = []
    prev: ctypes.Array[ctypes.c_char] | None = None
    nxt = ctypes.create_string_buffer(4)
    while len(out) < 1 << 20:
        ret = libbpf.lib().bpf_map_get_next_key(map_fd, prev, nxt)
        if ret < 0:
            break
        out.append(int.from_bytes(nxt.raw, "little"))
        prev = ctypes.create_string_buffer(nxt.raw, 4)
    return out


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    fields = stat.rpartition(b")")[2].split()
    return bool(fields) and fields[0] == b"T"


def resume_stopped(map_fd: int) -> int:
    """Continue every process in the map that is stopped; returns how many."""
    resumed = 0
    for tgid in _tgids_in(map_fd):
        if tgid > 0 and _stopped(tgid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(tgid, signal.SIGCONT)
                resumed += 1
    return resumed


class ResumeGuard:
    """The watching child. `close()` at the end of a run that cleaned up by itself."""

    def __init__(self, targets_map_fd: int) -> None:
        read_fd, self._write_fd = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child; covered by the SIGKILL test
            self._watch(read_fd, targets_map_fd)
        os.close(read_fd)
        os.set_inheritable(self._write_fd, False)

    @staticmethod
    def _watch(read_fd: int, map_fd: int) -> None:  # pragma: no cover - runs in the child
        try:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
                signal.signal(sig, signal.SIG_IGN)
            # Hold nothing of the tool's but these two: its probes must go when it goes,
            # and whoever reads its output must see end-of-file when it ends.
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            for name in os.listdir("/proc/self/fd"):
                fd = int(name)
                if fd > 2 and fd not in (read_fd, map_fd):
                    with contextlib.suppress(OSError):
                        os.close(fd)
            while True:
                try:
                    said = os.read(read_fd, 1)
                    break
                except OSError as exc:
                    if exc.errno != errno.EINTR:
                        said = b""
                        break
            if said != DONE:
                for _ in range(SCANS):
                    resume_stopped(map_fd)
                    time.sleep(SCAN_EVERY_S)
        finally:
            os._exit(0)

    def close(self) -> None:
        """The tool resumed its targets itself: tell the child, and reap it."""
        if self._write_fd < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self._write_fd, DONE)
        os.close(self._write_fd)
        self._write_fd = -1
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
