"""Launch a command held before its first instruction until the probes are attached.

The child is forked and blocks reading a pipe; once the collector has attached and added the
child's pid to its targets, `release()` lets it exec the command. Nothing runs between the
release and the exec but the end of that read, so the traced program is seen from its very
first instruction.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Sequence

from otlp_ebpf.errors import UsageError


class HeldCommand:
    """A forked child waiting to exec `argv` until `release()`."""

    def __init__(self, argv: Sequence[str]) -> None:
        if not argv:
            raise UsageError("no command given after --")
        path = argv[0] if "/" in argv[0] else shutil.which(argv[0])
        if path is None or not os.path.exists(path):
            raise UsageError(f"command not found: {argv[0]}")
        if not os.access(path, os.X_OK):
            raise UsageError(f"command is not executable: {path}")
        self.argv = list(argv)
        self.path = path
        self.returncode: int | None = None
        # Set by release() alone: closing the pipe in abandon() also makes _go negative,
        # and a command given up on before it ran has no status of its own to report.
        self._released = False
        # CLOEXEC: the exec itself closes the child's end, so no syscall of ours runs after
        # the release but the end of the read.
        read_fd, self._go = os.pipe2(os.O_CLOEXEC)
        status_read, status_write = os.pipe2(os.O_CLOEXEC)
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - runs in the child, which execs or exits
            self._child(read_fd, status_write)
        os.close(read_fd)
        os.close(status_write)
        self._exec_status = status_read

    def _child(self, read_fd: int, status_write: int) -> None:  # pragma: no cover
        try:
            os.close(self._go)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            if os.read(read_fd, 1) != b"g":
                os._exit(127)  # the collector gave up before releasing us
            os.execv(self.path, self.argv)
        except OSError as exc:
            os.write(status_write, str(exc.errno).encode())
        os._exit(127)

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        """Let the child exec; raises UsageError if exec failed."""
        os.write(self._go, b"g")
        os.close(self._go)
        self._go = -1
        self._released = True
        data = os.read(self._exec_status, 16)  # EOF on successful exec (CLOEXEC)
        os.close(self._exec_status)
        if data:
            self.wait()
            raise UsageError(f"cannot run {self.path}: {os.strerror(int(data))}")

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def abandon(self) -> None:
        """Close the pipe without releasing: the child exits without running anything."""
        if self._go >= 0:
            os.close(self._go)
            self._go = -1
        if self.returncode is None:
            self.wait()

    def stop(self, grace_s: float = 2.0) -> bool:
        """End a command that outlived the run: SIGTERM, then SIGKILL after `grace_s`.
        Returns True when it had to be stopped (it was still running)."""
        if self.poll() is not None:
            return False
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.wait()
        return True
