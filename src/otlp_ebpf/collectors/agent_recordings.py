"""`--recordings-dir`: the flight recorder's directory, one `record` snapshot per finding.

Each file is a `record`-kind snapshot (docs/snapshot.md) that `report`, `analyze` and `ask`
read like any other, named after the moment it was written so a listing sorts by time:
`recording-20261205T021502Z-000042.json` (42: the agent's interval). Files are written whole
or not at all (a temporary file and a rename, 0600, formatters/registry.py); the directory is
created 0700. When the recordings together exceed the cap the oldest are removed first and
counted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from datetime import datetime
from typing import BinaryIO

from otlp_ebpf.errors import UsageError
from otlp_ebpf.formatters.registry import write_atomically
from otlp_ebpf.model import RecordSnapshot

RECORDING_NAME = re.compile(r"^recording-\d{8}T\d{6}Z-\d{6,}\.json$")
DEFAULT_RECORDINGS_MAX_MB = 256.0


class RecordingsDir:
    def __init__(self, directory: str, cap_bytes: int) -> None:
        if cap_bytes <= 0:
            raise UsageError(f"--recordings-max-mb: must be positive, got {cap_bytes} bytes")
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"--recordings-dir {directory}: cannot create it: {exc.strerror or exc}"
            ) from exc
        if not os.path.isdir(directory) or not os.access(directory, os.W_OK | os.X_OK):
            raise UsageError(f"--recordings-dir {directory}: not a writable directory")
        self.directory = directory
        self.cap_bytes = cap_bytes
        self.written = 0
        self.removed = 0  # recordings removed to stay under the cap

    def path_for(self, when: datetime, seq: int) -> str:
        name = f"recording-{when.strftime('%Y%m%dT%H%M%SZ')}-{seq:06d}.json"
        return os.path.join(self.directory, name)

    def write(self, path: str, snapshot: RecordSnapshot) -> None:
        """Write the recording, then remove the oldest others beyond the cap. OSError and
        UsageError (a path swapped for another user's symlink) reach the caller."""
        data = (json.dumps(snapshot.to_dict(), indent=1) + "\n").encode()

        def write(stream: BinaryIO) -> None:
            stream.write(data)

        write_atomically(path, write)
        self.written += 1
        self._enforce_cap(keep=os.path.basename(path))

    def _enforce_cap(self, keep: str) -> None:
        files = []
        for name in sorted(os.listdir(self.directory)):
            if RECORDING_NAME.match(name):
                with contextlib.suppress(OSError):
                    files.append((name, os.lstat(os.path.join(self.directory, name)).st_size))
        total = sum(size for _, size in files)
        for name, size in files:
            if total <= self.cap_bytes:
                break
            if name == keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.directory, name))
                self.removed += 1
            total -= size
