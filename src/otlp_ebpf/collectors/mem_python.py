"""Python frames in mem stacks: allocations and page faults of CPython targets carry the
frames of the Python code that made them (bpf/mem.bpf.c appends them to the native user
stack, after a PY_NATIVE_END word), named like cpu's (symbolize/python.py).

A stack with Python frames is announced when it is first stored and named then, while its
process lives (a code object's address means nothing once the process is gone); what was
not named so (events lost, a process that ended without exit()) is named at the end if its
process still runs.
"""

from __future__ import annotations

from collections.abc import Sequence

from otlp_ebpf.collectors.python_frames import PythonFrames
from otlp_ebpf.collectors.stack_store import read_stored_stacks
from otlp_ebpf.runtime.loader import BpfObject
from otlp_ebpf.symbolize.procmaps import OpenFiles
from otlp_ebpf.symbolize.python import UNKNOWN_CODE, PyFrame, merge_python_frames

NATIVE_END = 2  # PY_NATIVE_END in bpf/python.h
# Named stacks kept for the end of the run (each a few hundred bytes).
MAX_NAMED = 65536


def split_stack(words: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(native addresses, Python frame words) of a stored user stack, both leaf first."""
    words = tuple(words)
    if NATIVE_END not in words:
        return words, ()
    at = words.index(NATIVE_END)
    return words[:at], words[at + 1 :]


class MemPython:
    """The Python registry of a mem run and the names of its stored Python stacks."""

    def __init__(self) -> None:
        self.frames = PythonFrames()
        self.files = OpenFiles()
        self.named: dict[tuple[int, int], tuple[PyFrame, ...]] = {}
        # The first complete naming of each stack, for another process storing it later.
        self.by_stack: dict[int, tuple[PyFrame, ...]] = {}

    def decide(self, tgid: int) -> None:
        """A target held at its new image's first allocator call: register its interpreter."""
        self.frames.decide(tgid, self.files)

    def name_stack(self, obj: BpfObject, tgid: int, stack_id: int) -> None:
        """Name the Python frames of a newly stored stack now, while the process lives."""
        if (tgid, stack_id) in self.named or len(self.named) >= MAX_NAMED:
            return
        words = read_stored_stacks(obj.map("stacks"), (stack_id,)).get(stack_id, ())
        python = split_stack(words)[1]
        if python:
            named = self.frames.resolve_words(tgid, python)
            self.named[(tgid, stack_id)] = named
            if named and not any(f.name == UNKNOWN_CODE for f in named):
                self.by_stack.setdefault(stack_id, named)

    def frames_for(
        self, tgid: int, stack_id: int, words: Sequence[int]
    ) -> tuple[tuple[int, ...], tuple[PyFrame, ...]]:
        """(native addresses, named Python frames) of a stored stack, at the end of the run."""
        native, python = split_stack(words)
        if not python:
            return native, ()
        named = self.named.get((tgid, stack_id))
        if named is None or any(f.name == UNKNOWN_CODE for f in named):
            # Not announced for this process (a forked child storing its parent's stack
            # after it): its words name the same code as its parent's.
            again = self.frames.resolve_words(tgid, python)
            if again and not any(f.name == UNKNOWN_CODE for f in again):
                named = again
            else:
                named = self.by_stack.get(stack_id, named or again)
        return native, named

    def close(self) -> None:
        self.frames.close()
        self.files.close()


def merged_frames(
    native: list[tuple[str, str]], python: Sequence[PyFrame]
) -> list[tuple[str, str]]:
    """Leaf-first (name, module) frames, Python frames in place of the evaluation loop's."""
    return merge_python_frames(native, python) if python else native
