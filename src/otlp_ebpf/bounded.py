"""Reading input files with a bound: `report`, `diff` and `push` read files a user names, and
`report /dev/zero` must end with a message, not with the machine out of memory.

The limit is 256 MiB per file (far above what a run writes: a minute of system-wide cpu
profiling makes a few MiB), or OTLP_EBPF_MAX_INPUT_MB. See docs/security.md.
"""

from __future__ import annotations

import os
import stat

from otlp_ebpf.errors import UsageError

MIB = 1 << 20
DEFAULT_LIMIT_MB = 256
LIMIT_ENV = "OTLP_EBPF_MAX_INPUT_MB"


def input_limit() -> int:
    """The size limit in bytes for one input file."""
    text = os.environ.get(LIMIT_ENV, "").strip()
    if not text:
        return DEFAULT_LIMIT_MB * MIB
    try:
        mb = int(text)
    except ValueError:
        mb = 0
    if mb <= 0:
        raise UsageError(f"{LIMIT_ENV} must be a positive number of MiB, got {text!r}")
    return mb * MIB


def read_bounded(path: str, what: str) -> bytes:
    """The whole content of `path`; UsageError (exit 2) when it cannot be read or holds more
    than the input limit (a regular file is refused from its size, without reading it)."""
    limit = input_limit()
    try:
        with open(path, "rb") as fh:
            info = os.fstat(fh.fileno())
            if stat.S_ISDIR(info.st_mode):
                raise UsageError(f"{path}: is a directory")
            if stat.S_ISREG(info.st_mode) and info.st_size > limit:
                raise _too_big(path, what, limit)
            data = fh.read(limit + 1)
    except FileNotFoundError as exc:
        raise UsageError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise UsageError(f"{path}: is a directory") from exc
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise _too_big(path, what, limit)
    return data


def _too_big(path: str, what: str, limit: int) -> UsageError:
    return UsageError(
        f"{path}: more than {limit // MIB} MiB, the size limit for {what}",
        hint=f"set {LIMIT_ENV} to read larger files",
    )
