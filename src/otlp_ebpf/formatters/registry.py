"""The one place file extensions map to output formats, and where output files get written.

Each format lives in its own module, imported only when used, exposing
`render(snapshot, stream)`. A format that holds one profile per file (folded, svg) or one group
of profiles sharing stacks (pprof) also exposes `render_parts(snapshot)`: the main file first,
then one sibling per extra profile, named by inserting the profile name before the extension
(`out.folded` -> `out.off_cpu.folded`). See docs/formats.md.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import BinaryIO

from otlp_ebpf import stopping
from otlp_ebpf.errors import OtlpEbpfError, RuntimeFailure, UsageError
from otlp_ebpf.model import SNAPSHOT_TYPES, Snapshot, StackProfile

# (sibling name, writer); the main file has the name "".
Part = tuple[str, Callable[[BinaryIO], None]]


@dataclass(frozen=True)
class OutputFormat:
    """A file format we can write, and the extensions that select it."""

    name: str
    extensions: tuple[str, ...]
    module: str
    stack_only: bool


FORMATS: tuple[OutputFormat, ...] = (
    OutputFormat("html", (".html", ".htm"), "otlp_ebpf.formatters.flamegraph_html", True),
    OutputFormat("svg", (".svg",), "otlp_ebpf.formatters.flamegraph_svg", True),
    OutputFormat("folded", (".folded",), "otlp_ebpf.formatters.folded", True),
    OutputFormat("speedscope", (".speedscope.json",), "otlp_ebpf.formatters.speedscope", True),
    OutputFormat("json", (".json",), "otlp_ebpf.formatters.snapshot_json", False),
    OutputFormat("pprof", (".pb.gz",), "otlp_ebpf.formatters.pprof", True),
    OutputFormat("otlp", (".otlp.pb",), "otlp_ebpf.formatters.otlp_request", False),
)


def format_names() -> list[str]:
    """Names accepted by `--format`."""
    return [f.name for f in FORMATS]


def known_extensions() -> list[str]:
    return [ext for f in FORMATS for ext in f.extensions]


def format_for_path(path: str, forced: str | None = None) -> OutputFormat:
    """The format named by `forced`, else the one whose extension `path` ends with.

    The longest matching extension wins, so `.speedscope.json` is not taken for `.json`.
    """
    if forced is not None:
        for fmt in FORMATS:
            if fmt.name == forced.lower():
                return fmt
        raise UsageError(f"unknown format {forced!r}; known formats: {', '.join(format_names())}")
    lowered = path.lower()
    matches = [
        (len(ext), fmt) for fmt in FORMATS for ext in fmt.extensions if lowered.endswith(ext)
    ]
    if not matches:
        raise UsageError(
            f"{path}: cannot tell the format from the extension; use one of "
            f"{', '.join(known_extensions())} or --format"
        )
    return max(matches, key=lambda m: m[0])[1]


def has_stacks(kind: str) -> bool:
    """True when snapshots of `kind` provide stack profiles (cpu, mem)."""
    cls = SNAPSHOT_TYPES.get(kind)
    if cls is None:
        raise UsageError(f"unknown snapshot kind {kind!r}")
    return cls.stack_profiles is not Snapshot.stack_profiles


def check_supported(fmt: OutputFormat, kind: str) -> None:
    """UsageError when `fmt` cannot represent a `kind` snapshot (stack formats need stacks)."""
    if fmt.stack_only and not has_stacks(kind):
        alternatives = " or ".join(f.extensions[0] for f in FORMATS if not f.stack_only)
        raise UsageError(
            f"{fmt.name} needs stacks; {kind} snapshots have none (use {alternatives})"
        )


# A kind whose page is more than a flamegraph: (format, kind) -> the module writing it.
KIND_MODULES = {("html", "record"): "otlp_ebpf.formatters.record_html"}


def _module(fmt: OutputFormat, kind: str) -> ModuleType:
    return importlib.import_module(KIND_MODULES.get((fmt.name, kind), fmt.module))


def render(snapshot: Snapshot, fmt: OutputFormat, stream: BinaryIO) -> None:
    """Write the main file of `fmt` for `snapshot` to `stream`."""
    check_supported(fmt, snapshot.kind)
    _module(fmt, snapshot.kind).render(snapshot, stream)


def parts(snapshot: Snapshot, fmt: OutputFormat) -> list[Part]:
    """The files `fmt` needs for `snapshot`: the main one first, then named siblings."""
    check_supported(fmt, snapshot.kind)
    module = _module(fmt, snapshot.kind)
    render_parts = getattr(module, "render_parts", None)
    if render_parts is None:
        return [("", lambda stream: module.render(snapshot, stream))]
    result: list[Part] = render_parts(snapshot)
    return result


def sibling_path(path: str, fmt: OutputFormat, name: str) -> str:
    """`out.pb.gz` with name "off_cpu" -> `out.off_cpu.pb.gz` (name appended if no extension)."""
    if not name:
        return path
    lowered = path.lower()
    for ext in sorted(fmt.extensions, key=len, reverse=True):
        if lowered.endswith(ext):
            return f"{path[: -len(ext)]}.{name}{path[-len(ext) :]}"
    return f"{path}.{name}"


def write_output(snapshot: Snapshot, path: str, fmt: OutputFormat) -> list[str]:
    """Write `snapshot` as `fmt` to `path` (and siblings); returns every path written.

    Each file appears whole or not at all: it is written next to its target and renamed.
    """
    written = []
    for name, write in parts(snapshot, fmt):
        target = sibling_path(path, fmt, name)
        write_atomically(target, write)
        written.append(target)
    return written


def write_atomically(path: str, write: Callable[[BinaryIO], None]) -> None:
    """A regular file appears whole or not at all, created 0600 (outputs hold names, paths and
    command lines of other users' processes): it is written to a temporary file created beside
    it with O_EXCL|O_NOFOLLOW, then renamed over the final name, which is never resolved, so
    nothing another user swaps in during the run is written through.

    A symlink is followed only when it belongs to the caller or to root (`final_target`); one
    of another user's is refused (UsageError, exit 2), checked here at write time and not only
    before collecting. A device or FIFO (`-o /dev/stdout`) is written in place: renaming over
    it would replace the node itself."""
    with stopping.writing():  # a signal now waits until the file is whole
        _write_file(path, write)


def _write_file(path: str, write: Callable[[BinaryIO], None]) -> None:
    target = final_target(path)
    if _is_special(target) and _write_in_place(target, write):
        return
    directory, base = os.path.split(target)
    try:
        dir_fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        _write_beside(dir_fd, base, path, write)
    finally:
        os.close(dir_fd)


def _write_beside(dir_fd: int, base: str, path: str, write: Callable[[BinaryIO], None]) -> None:
    """Write `base` in the directory `dir_fd` through a temporary file and a rename."""
    tmp = f".{base}.{secrets.token_hex(4)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, OUTPUT_MODE, dir_fd=dir_fd)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as stream:
            write(stream)
        os.replace(tmp, base, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        _remove_quietly(tmp, dir_fd)
        raise _write_error(path, exc) from exc
    except BaseException:
        _remove_quietly(tmp, dir_fd)
        raise


# Outputs can hold command lines and paths of every user's processes: like spill files, they
# are readable by their owner only (docs/security.md).
OUTPUT_MODE = 0o600

# Enough for any sane chain of links; the kernel's own limit is 40.
_MAX_LINKS = 40


def final_target(path: str) -> str:
    """The path the output will be written at: `path` itself unless it is a symlink that
    belongs to the caller or to root, followed then one link at a time (each link is checked
    again). UsageError (exit 2) for a link of another user: following it would let that
    user choose which file of ours gets replaced."""
    for _ in range(_MAX_LINKS):
        try:
            info = os.lstat(path)
        except OSError:
            return path  # does not exist yet (or cannot be seen): created as a new file
        if not stat.S_ISLNK(info.st_mode):
            return path
        if info.st_uid not in (os.geteuid(), 0):
            raise UsageError(
                f"{path}: refusing to write through a symlink owned by another user "
                f"(uid {info.st_uid}); remove it or choose another path"
            )
        path = os.path.join(os.path.dirname(path), os.readlink(path))
    raise UsageError(f"{path}: too many levels of symbolic links")


def _is_special(path: str) -> bool:
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False  # does not exist yet: a new regular file


def _write_in_place(path: str, write: Callable[[BinaryIO], None]) -> bool:
    """Write a device or FIFO in place; False (nothing written) when `path` turned out to be a
    regular file after all, swapped in since the check."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    if stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return False
    try:
        with os.fdopen(fd, "wb") as stream:
            write(stream)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    return True


# The disk failing us is not the user's doing; a bad path or permission is.
_RUNTIME_ERRNOS = {errno.ENOSPC, errno.EIO, errno.EDQUOT}


def _write_error(path: str, exc: OSError) -> OtlpEbpfError:
    message = f"{path}: cannot write: {exc.strerror or exc}"
    if exc.errno in _RUNTIME_ERRNOS:
        return RuntimeFailure(message)
    return UsageError(message)


def _remove_quietly(name: str, dir_fd: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)


def one_file_per_profile(
    snapshot: Snapshot, write_profile: Callable[[StackProfile, BinaryIO], None]
) -> list[Part]:
    """Parts for a format that holds a single profile: the first profile is the main file,
    each further one a sibling named after it."""
    profiles = snapshot.stack_profiles()
    result: list[Part] = []
    for index, profile in enumerate(profiles):
        name = "" if index == 0 else profile.name
        result.append((name, functools.partial(write_profile, profile)))
    return result
