"""A size-capped directory of undelivered OTLP batches, re-sent oldest first.

Each batch (the requests of one interval) is one `.otlp.pb` file (the envelope of
formatters/otlp_request.py, so `otlp-ebpf push` reads them too) named by a sequence number
that keeps the order across restarts of the agent. When the files together would exceed the
cap, the oldest are removed first and counted: during an outage the newest intervals are the
ones kept, and how much was given up is known.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from otlp_ebpf.errors import UsageError
from otlp_ebpf.formatters.otlp_request import EncodedRequest, read_request_file, write_requests

BATCH_NAME = re.compile(r"^batch-(\d{12})\.otlp\.pb$")
DEFAULT_CAP_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Spilled:
    path: str
    size: int


class Spool:
    """The spill directory: `add` a batch, `oldest`/`remove` to re-send in order."""

    def __init__(self, directory: str, cap_bytes: int = DEFAULT_CAP_BYTES) -> None:
        if cap_bytes <= 0:
            raise UsageError(f"the spill cap must be a positive number of bytes, got {cap_bytes}")
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"--spill-dir {directory}: cannot create it: {exc.strerror or exc}"
            ) from exc
        if not os.access(directory, os.W_OK | os.X_OK):
            raise UsageError(f"--spill-dir {directory}: not writable")
        self.directory = directory
        self.cap_bytes = cap_bytes
        self.dropped = 0  # batches removed unsent to stay under the cap
        self._lock = threading.Lock()
        self._files = list(self._scan())
        self._next = self._number(self._files[-1].path) + 1 if self._files else 1

    def _scan(self) -> Iterator[Spilled]:
        """Batches left by an earlier run, oldest first (they are re-sent before new ones)."""
        for name in sorted(os.listdir(self.directory)):
            if BATCH_NAME.match(name):
                path = os.path.join(self.directory, name)
                with contextlib.suppress(OSError):
                    yield Spilled(path, os.lstat(path).st_size)

    @staticmethod
    def _number(path: str) -> int:
        match = BATCH_NAME.match(os.path.basename(path))
        return int(match.group(1)) if match else 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)

    def bytes(self) -> int:
        with self._lock:
            return sum(f.size for f in self._files)

    def add(self, requests: list[EncodedRequest]) -> str:
        """Keep a batch as the newest file; drop the oldest ones beyond the cap."""
        with self._lock:
            path = os.path.join(self.directory, f"batch-{self._next:012d}.otlp.pb")
            self._next += 1
            _write_new(path, requests)
            self._files.append(Spilled(path, os.lstat(path).st_size))
            while sum(f.size for f in self._files) > self.cap_bytes and len(self._files) > 1:
                self._unlink(self._files.pop(0).path)
                self.dropped += 1
            return path

    def oldest(self) -> tuple[str, list[EncodedRequest]] | None:
        """The oldest batch and its requests; a file that cannot be read is dropped, counted."""
        while True:
            with self._lock:
                if not self._files:
                    return None
                path = self._files[0].path
            try:
                return path, read_request_file(path)
            except (UsageError, OSError):
                self.remove(path)
                with self._lock:
                    self.dropped += 1

    def replace(self, path: str, requests: list[EncodedRequest]) -> None:
        """Keep only `requests` of the batch at `path` (the rest was delivered)."""
        with self._lock:
            _write_new(path, requests)
            size = os.lstat(path).st_size
            self._files = [Spilled(f.path, size) if f.path == path else f for f in self._files]

    def remove(self, path: str) -> None:
        with self._lock:
            self._files = [f for f in self._files if f.path != path]
        self._unlink(path)

    @staticmethod
    def _unlink(path: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _write_new(path: str, requests: list[EncodedRequest]) -> None:
    """Written beside its final name, then renamed: a batch file is whole or absent. (Not
    registry.write_atomically: that one defers signals, which only the main thread takes,
    and batches are written by the export thread.)"""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as stream:
            write_requests(requests, stream)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def resend_all(spool: Spool, send: Callable[[list[EncodedRequest]], bool]) -> int:
    """Send spilled batches oldest first until one fails; how many were sent."""
    sent = 0
    while (entry := spool.oldest()) is not None:
        path, requests = entry
        if not send(requests):
            break
        spool.remove(path)
        sent += 1
    return sent
