"""Finding threads asleep for a whole run in a /proc tree."""

from __future__ import annotations

from pathlib import Path

from otlp_ebpf.collectors.blocked_threads import (
    BlockedThread,
    ThreadMark,
    blocked_threads,
    mark_threads,
)


def set_task(proc: Path, tgid: int, tid: int, state: str, switches: int, **files: str) -> None:
    task = proc / str(tgid) / "task" / str(tid)
    task.mkdir(parents=True, exist_ok=True)
    (task / "status").write_text(
        f"Name:\tx\nState:\t{state} (whatever)\nvoluntary_ctxt_switches:\t{switches}\n"
        "nonvoluntary_ctxt_switches:\t1\n"
    )
    for name, text in files.items():
        (task / name).write_text(text)


def test_only_threads_asleep_without_a_switch_since_the_mark(tmp_path: Path) -> None:
    set_task(
        tmp_path,
        10,
        10,
        "S",
        5,
        comm="main\n",
        syscall="202 0x1 0x2 0x3 0x4 0x5 0x6 0x7ffc0 0x7f0010\n",
        stack="[<0>] futex_wait_queue+0x60/0x90\n[<0>] do_syscall_64+0x71/0x280\n",
    )
    set_task(tmp_path, 10, 11, "D", 7, comm="io\n", syscall="-1 0x7ffc0 0x401000\n")
    set_task(tmp_path, 10, 12, "R", 3, comm="busy\n", syscall="running\n")
    set_task(tmp_path, 10, 13, "S", 2, comm="woke\n")
    (tmp_path / "10" / "task" / "not-a-tid").mkdir()

    marks = mark_threads([10, 99], proc=str(tmp_path))
    assert marks == {t: ThreadMark(10, n + 1) for t, n in ((10, 5), (11, 7), (12, 3), (13, 2))}
    set_task(tmp_path, 10, 13, "S", 3)  # it ran, and fell asleep again
    set_task(tmp_path, 10, 14, "S", 0)  # started during the run: never marked

    assert blocked_threads(marks, proc=str(tmp_path)) == [
        BlockedThread(10, 10, "main", 0x7F0010, ("futex_wait_queue", "do_syscall_64")),
        BlockedThread(10, 11, "io", 0x401000, ()),
    ]


def test_gone_threads_and_unreadable_wait_points(tmp_path: Path) -> None:
    set_task(tmp_path, 5, 5, "S", 0, syscall="")
    set_task(tmp_path, 5, 6, "S", 0, syscall="1 2 zz\n")
    marks = mark_threads([5], proc=str(tmp_path))
    marks[7] = ThreadMark(5, 0)  # exited since

    assert [t.user_pc for t in blocked_threads(marks, proc=str(tmp_path))] == [None, None]
