"""Python frames in cpu samples: CPython processes registered with the BPF frame walk
(bpf/python.h) as they are seen, and the frames each sample brought named and put in place
of the interpreter's evaluation-loop frames (symbolize/python.py).

A process is registered when its maps are captured (first sample, exec); a CPython whose
version has no known layout is said once per version and keeps its native frames.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections import Counter
from collections.abc import Sequence

from otlp_ebpf import console
from otlp_ebpf.collectors.resume_guard import ResumeGuard, resume_stopped
from otlp_ebpf.errors import UsageError
from otlp_ebpf.runtime.loader import BpfObject
from otlp_ebpf.symbolize.procmaps import OpenFiles, ProcessMaps
from otlp_ebpf.symbolize.python import (
    TRUNCATED_PYTHON_FRAME,
    UNKNOWN_CODE,
    CodeReader,
    Interpreter,
    PyFrame,
    find_interpreter,
    needs_libpython,
    with_published_layout,
)

MAX_FRAMES = 64  # PY_MAX_FRAMES in bpf/python.h
NO_FIELD = 0xFFFF
STACK_TRUNCATED, STACK_NO_THREAD, STACK_READ_FAILED = 1, 2, 4
PROCS_MAP = "py_procs"
UNDECIDED_MAP = "py_undecided"
# Holds of one image before it is taken for what its maps say (a libpython it needs that is
# never mapped: a broken install).
MAX_HOLDS = 8
TRUNCATED_FRAME = TRUNCATED_PYTHON_FRAME
TRUNCATED_MARK = 1  # PY_FRAME_TRUNCATED_MARK: ends a stored stack cut at MAX_FRAMES
# lost_events: samples with a code object left unnamed because the process had exited before
# the tool read it (its memory is gone with it: a tool lagging behind a short target).
GONE_BEFORE_NAMED = "python: process exited before its code objects were read"
# Fields of struct py_proc after `runtime` and `version`, in order (all u16).
_OFFSET_FIELDS = (
    "runtime_interpreters_head",
    "interp_tstate_head",
    "tstate_next",
    "tstate_thread_id",
    "tstate_frame",
    "cframe_current_frame",
    "frame_back",
    "frame_code",
    "frame_lasti",
    "frame_is_entry",
    "frame_owner",
    "code_adaptive",
)


class PyProc(ctypes.Structure):
    """Mirror of struct py_proc (bpf/python.h)."""

    _fields_ = [
        ("runtime", ctypes.c_uint64),
        ("version", ctypes.c_uint32),
        *((name, ctypes.c_uint16) for name in _OFFSET_FIELDS),
        ("pad", ctypes.c_uint16),
    ]


class PyStack(ctypes.Structure):
    """Mirror of struct py_stack (bpf/python.h)."""

    _fields_ = [
        ("nr", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("frames", ctypes.c_uint64 * MAX_FRAMES),
    ]


def proc_entry(interp: Interpreter) -> PyProc:
    """The BPF map value describing a supported interpreter."""
    layout = interp.layout
    entry = PyProc(runtime=interp.runtime, version=interp.version[0] << 8 | interp.version[1])
    for name in _OFFSET_FIELDS:
        value = layout[name]
        setattr(entry, name, NO_FIELD if value < 0 else value)
    return entry


class PythonFrames:
    """Registers CPython processes with a loaded BPF object and names their samples' frames."""

    def __init__(self) -> None:
        # One registry may serve several BPF objects in one run (DWARF on-CPU samples and
        # frame-pointer off-CPU blocks): a process seen by either is registered with both.
        self.objs: list[BpfObject] = []
        self.reader = CodeReader()
        self.interpreters: dict[int, Interpreter] = {}
        self.unsupported: set[tuple[int, int]] = set()
        self.flags: Counter[str] = Counter()
        self.samples = 0
        self.holds = 0  # targets stopped until their interpreter was known
        self._undecided_holds: dict[int, int] = {}
        self._users = 0
        self.unnamed_gone = 0  # samples (GONE_BEFORE_NAMED)
        self._exited: set[int] = set()

    def attach(self, obj: BpfObject) -> None:
        """Register every known interpreter with a newly loaded object, and the next ones."""
        self.objs.append(obj)
        self._users += 1
        for pid, interp in self.interpreters.items():
            obj.map(PROCS_MAP).update(pid.to_bytes(4, "little"), bytes(proc_entry(interp)))

    def detach(self, obj: BpfObject) -> None:
        """An object closed before the run began (loaded again another way)."""
        if obj in self.objs:
            self.objs.remove(obj)
            self._users -= 1

    def register(self, pid: int, maps: ProcessMaps, files: OpenFiles) -> None:
        """Called on every capture of a process's maps (first sight, exec): registers it if it
        runs a supported CPython, unregisters it otherwise (an exec to another program)."""
        previous = self.interpreters.pop(pid, None)
        interp = find_interpreter(maps, files)
        if interp is not None and interp.version >= (3, 13):
            interp = with_published_layout(interp, self.reader.runtime_bytes(pid, interp))
        if interp is not None and not interp.supported:
            self._say_unsupported(interp)
            interp = None
        if interp is not None and interp == previous:
            self.interpreters[pid] = interp  # the same image: addresses keep their meaning
            return
        if previous is not None:
            self.reader.forget(pid)
        key = pid.to_bytes(4, "little")
        if interp is None:
            if previous is not None:
                for obj in self.objs:
                    obj.map(PROCS_MAP).delete(key)
            return
        for obj in self.objs:
            obj.map(PROCS_MAP).update(key, bytes(proc_entry(interp)))
        self.interpreters[pid] = interp
        console.debug(
            f"python: pid {pid} runs CPython {interp.version[0]}.{interp.version[1]} "
            f"(layout from {interp.layout_source})"
        )

    def forget(self, pid: int) -> None:
        """The process exited and its stacks are named: drop its entry here and in the BPF
        objects (their table of processes would fill up over a long run otherwise)."""
        self._exited.discard(pid)
        interp = self.interpreters.pop(pid, None)
        if interp is None:
            return
        self.reader.forget(pid)
        if all(other.runtime != interp.runtime for other in self.interpreters.values()):
            self.reader.forget_image(interp.runtime)
        key = pid.to_bytes(4, "little")
        for obj in self.objs:
            if obj.loaded:
                obj.map(PROCS_MAP).delete(key)

    def _say_unsupported(self, interp: Interpreter) -> None:
        if interp.version in self.unsupported:
            return
        self.unsupported.add(interp.version)
        major, minor = interp.version
        console.warn(
            f"python: CPython {major}.{minor} ({interp.path}) is not supported yet: "
            "its stacks keep their native frames"
        )

    def new_batch(self) -> None:
        """The samples `resolve`d from now on are named together (code objects cached
        before are checked again once)."""
        self.reader.generation += 1

    def resolve(self, pid: int, stack: PyStack) -> tuple[PyFrame, ...]:
        """The named frames of one sample (leaf first), read while the process lives."""
        interp = self.interpreters.get(pid)
        if interp is None:
            return ()
        self.samples += 1
        for bit, reason in (
            (STACK_TRUNCATED, "truncated"),
            (STACK_NO_THREAD, "no thread state"),
            (STACK_READ_FAILED, "read failed"),
        ):
            if stack.flags & bit:
                self.flags[reason] += 1
        nr = min(int(stack.nr), MAX_FRAMES)
        words = list(stack.frames[:nr])
        if stack.flags & STACK_TRUNCATED:
            words.append(TRUNCATED_MARK)
        frames = self._named(pid, words)
        self.count_unnamed(pid, frames, 1)
        return frames

    def count_unnamed(self, pid: int, frames: Sequence[PyFrame], samples: int) -> None:
        """Count `samples` as lost when their frames have code left unknown because the
        process exited before it was read (not when the code was unknown while it lived)."""
        if any(f.name == UNKNOWN_CODE for f in frames) and self._has_exited(pid):
            self.unnamed_gone += samples

    def _has_exited(self, pid: int) -> bool:
        """Whether `pid` is gone or a zombie (its memory released), remembered until the
        process is forgotten."""
        if pid not in self._exited:
            try:
                with open(f"/proc/{pid}/stat", "rb") as fh:
                    state = fh.read().rsplit(b")", 1)[1].split()[0]
            except (OSError, IndexError):
                state = b"X"
            if state not in (b"Z", b"X"):
                return False
            self._exited.add(pid)
        return True

    def lost(self) -> dict[str, int]:
        """Samples whose Python frames could not all be named, for lost_events."""
        return {GONE_BEFORE_NAMED: self.unnamed_gone} if self.unnamed_gone else {}

    def resolve_words(self, pid: int, words: Sequence[int]) -> tuple[PyFrame, ...]:
        """Named frames for a stored Python stack's words (leaf first; a last word
        TRUNCATED_MARK says the root side is missing), named on their own."""
        self.new_batch()
        return self._named(pid, words)

    def _named(self, pid: int, words: Sequence[int]) -> tuple[PyFrame, ...]:
        interp = self.interpreters.get(pid)
        if interp is None:
            return ()
        truncated = bool(words) and words[-1] == TRUNCATED_MARK
        if truncated:
            words = words[:-1]
        frames = self.reader.frames(pid, interp, words)
        if truncated:
            frames += (PyFrame(TRUNCATED_FRAME, "", True),)
        return frames

    def register_if_python(self, pid: int, files: OpenFiles) -> None:
        """Register `pid` when its maps name a Python interpreter (a cheap look at the text of
        /proc/PID/maps first: most processes are not Python)."""
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as fh:
                text = fh.read()
        except OSError:
            return
        if "python" not in text and pid not in self.interpreters:
            return
        try:
            maps = ProcessMaps.capture(pid, files)
        except UsageError:
            return
        if maps.mappings:
            self.register(pid, maps, files)

    def decide(self, pid: int, files: OpenFiles) -> bool:
        """A target held at its new image's first sample or allocation (bpf/python.h): its
        interpreter registered if it runs CPython, then `settle`d. The caller continues the
        process."""
        self.register_if_python(pid, files)
        return self.settle(pid)

    def settle(self, pid: int) -> bool:
        """After a held target's maps were read: the image is decided (its `py_undecided`
        entry deleted, so it is not held again) unless the loader has still to map the
        libpython it needs, for a few holds at most."""
        self.holds += 1
        tries = self._undecided_holds.pop(pid, 0) + 1
        if pid not in self.interpreters and tries < MAX_HOLDS:
            exe = f"/proc/{pid}/exe"
            if needs_libpython(exe):
                self._undecided_holds[pid] = tries
                return False
        key = pid.to_bytes(4, "little")
        for obj in self.objs:
            if obj.loaded:
                obj.map(UNDECIDED_MAP).delete(key)
        return True

    def notes(self) -> tuple[str, ...]:
        if not self.interpreters and not self.unsupported:
            return ()
        versions = sorted(
            {
                f"{i.version[0]}.{i.version[1]}" + (" via _Py_DebugOffsets" if i.published else "")
                for i in self.interpreters.values()
            }
        )
        text = (
            f"python: {len(self.interpreters)} CPython processes "
            f"({', '.join(versions) or 'none supported'}), "
            + (f"{self.samples} samples, " if self.samples else "")
            + (f"{self.holds} holds at start, " if self.holds else "")
            + f"{self.reader.reads} code objects read "
            f"({self.reader.failed} unreadable)"
        )
        if self.flags:
            text += "; " + ", ".join(f"{n} {reason}" for reason, n in sorted(self.flags.items()))
        if self.unsupported:
            names = ", ".join(f"{a}.{b}" for a, b in sorted(self.unsupported))
            text += f"; not supported: {names}"
        return (text,)

    def close(self) -> None:
        """Release the process memory handles once every object using them is done."""
        self._users -= 1
        if self._users <= 0:
            self.reader.close()


class Holds:
    """New images of the targets, stopped by a BPF object at their first sample until their
    interpreter is known (bpf/python.h), and continued here. A guard process continues any
    target left stopped if the tool dies (collectors/resume_guard.py)."""

    def __init__(self, python: PythonFrames, targets_map_fd: int) -> None:
        self.python = python
        self.targets_map_fd = targets_map_fd
        self.guard: ResumeGuard | None = ResumeGuard(targets_map_fd)

    def release(self, pid: int) -> None:
        """The held process's maps were read (and its interpreter registered): continue it."""
        self.python.settle(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    def close(self) -> None:
        """Once the programs are detached (no new hold): continue any target still stopped
        (its event lost), and let the guard go."""
        if self.guard is None:
            return
        resume_stopped(self.targets_map_fd)
        self.guard.close()
        self.guard = None
