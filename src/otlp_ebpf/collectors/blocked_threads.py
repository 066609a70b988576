"""Threads blocked for the whole of an off-CPU run.

Off-CPU time is recorded at context switches, so a thread that went to sleep before the
probes were attached and is still asleep at the end (a deadlocked worker, a thread stuck on a
lock: the very case off-CPU profiling is for) never switches while we watch. Such threads are
found in /proc: each target thread's context-switch counts are read when the run starts, and
a thread asleep (`S`/`D`) at the end whose counts did not move slept throughout. What is known
of it without stopping the process: the user instruction it waits at
(`/proc/PID/task/TID/syscall`, its last field) and, as root, its kernel stack
(`/proc/PID/task/TID/stack`). Its blocked time is at least the run's length.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from otlp_ebpf import hosttext

BLOCKED_STATES = frozenset("SD")
# "[<0>] futex_wait_queue+0x60/0x90": the function name of one kernel frame.
_KERNEL_FRAME = re.compile(r"^\[<[0-9a-fx]+>\] ([^+\s]+)")


@dataclass(frozen=True)
class BlockedThread:
    pid: int
    tid: int
    comm: str
    user_pc: int | None  # the instruction it waits at; None when not known
    kernel: tuple[str, ...]  # kernel function names, leaf first; () when unreadable


@dataclass(frozen=True)
class ThreadMark:
    """A thread as seen when the run started."""

    pid: int
    switches: int  # voluntary + involuntary context switches so far


def mark_threads(tgids: Iterable[int], proc: str = "/proc") -> dict[int, ThreadMark]:
    """Context-switch counts of every thread of `tgids` now, by thread id."""
    marks = {}
    for tgid in tgids:
        try:
            tids = [int(t) for t in os.listdir(f"{proc}/{tgid}/task") if t.isdigit()]
        except OSError:
            continue  # gone
        for tid in tids:
            status = _status(f"{proc}/{tgid}/task/{tid}")
            if status is not None:
                marks[tid] = ThreadMark(tgid, status[1])
    return marks


def blocked_threads(marks: Mapping[int, ThreadMark], proc: str = "/proc") -> list[BlockedThread]:
    """The marked threads asleep now that have not switched since they were marked."""
    out = []
    for tid, mark in sorted(marks.items()):
        task = f"{proc}/{mark.pid}/task/{tid}"
        status = _status(task)
        if status is None or status[0] not in BLOCKED_STATES or status[1] != mark.switches:
            continue
        out.append(
            BlockedThread(mark.pid, tid, _read(task, "comm").strip(), _user_pc(task), _kernel(task))
        )
    return out


def _read(task: str, name: str) -> str:
    try:
        return hosttext.read(f"{task}/{name}")
    except OSError:
        return ""


def _status(task: str) -> tuple[str, int] | None:
    """(state letter, context switches) from /proc/.../status; None when the thread is gone."""
    fields: dict[str, str] = {}
    for line in _read(task, "status").splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    try:
        switches = int(fields["voluntary_ctxt_switches"]) + int(
            fields["nonvoluntary_ctxt_switches"]
        )
        return fields["State"][:1], switches
    except (KeyError, ValueError):
        return None


def _user_pc(task: str) -> int | None:
    """The last field of /proc/.../syscall: "NR ARGS... SP PC", or "-1 SP PC" when asleep
    outside a system call; "running" (or nothing, unprivileged) tells nothing."""
    fields = _read(task, "syscall").split()
    if len(fields) < 3:
        return None
    try:
        pc = int(fields[-1], 16)
    except ValueError:
        return None
    return pc or None


def _kernel(task: str) -> tuple[str, ...]:
    names = []
    for line in _read(task, "stack").splitlines():
        match = _KERNEL_FRAME.match(line.strip())
        if match:
            names.append(match.group(1))
    return tuple(names)
