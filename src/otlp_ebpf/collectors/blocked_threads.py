"""Threads blocked for the whole of an off-CPU run.

Off-CPU time is recorded at context switches, so a thread that went to sleep before the
probes were attached and is still asleep at the end (a deadlocked worker, a thread stuck on a
lock: the very case off-CPU profiling is for) never switches while we watch. At the end of a
run such threads are found in /proc: asleep (`S`/`D`), and seen by no switch or sample. What
is known of them without stopping the process: the user instruction they wait at
(`/proc/PID/task/TID/syscall`, its last field) and, as root, their kernel stack
(`/proc/PID/task/TID/stack`). Their blocked time is at least the run's length.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

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


def blocked_threads(
    tgids: Iterable[int], *, seen: Collection[int], proc: str = "/proc"
) -> list[BlockedThread]:
    """Threads of `tgids` asleep now whose thread ids are not in `seen`."""
    out = []
    for tgid in tgids:
        try:
            tids = sorted(int(t) for t in os.listdir(f"{proc}/{tgid}/task") if t.isdigit())
        except OSError:
            continue  # gone
        for tid in tids:
            if tid in seen:
                continue
            task = f"{proc}/{tgid}/task/{tid}"
            if _state(task) not in BLOCKED_STATES:
                continue
            out.append(
                BlockedThread(tgid, tid, _read(task, "comm").strip(), _user_pc(task), _kernel(task))
            )
    return out


def _read(task: str, name: str) -> str:
    try:
        with open(f"{task}/{name}", encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def _state(task: str) -> str:
    fields = _read(task, "stat").rpartition(")")[2].split()
    return fields[0] if fields else ""


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
