"""Finding threads asleep for a whole run in a /proc tree."""

from __future__ import annotations

from pathlib import Path

from otlp_ebpf.collectors.blocked_threads import BlockedThread, blocked_threads


def add_task(proc: Path, tgid: int, tid: int, state: str, **files: str) -> None:
    task = proc / str(tgid) / "task" / str(tid)
    task.mkdir(parents=True)
    (task / "stat").write_text(f"{tid} (a) b) {state} 1 2 3\n")  # a comm with ") " in it
    for name, text in files.items():
        (task / name).write_text(text)


def test_asleep_and_unseen_threads_with_their_wait_point(tmp_path: Path) -> None:
    add_task(
        tmp_path,
        10,
        10,
        "S",
        comm="main\n",
        syscall="202 0x1 0x2 0x3 0x4 0x5 0x6 0x7ffc0 0x7f0010\n",
        stack="[<0>] futex_wait_queue+0x60/0x90\n[<0>] do_syscall_64+0x71/0x280\n",
    )
    add_task(tmp_path, 10, 11, "D", comm="io\n", syscall="-1 0x7ffc0 0x401000\n")
    add_task(tmp_path, 10, 12, "R", comm="busy\n", syscall="running\n")
    add_task(tmp_path, 10, 13, "S", comm="seen\n")
    (tmp_path / "10" / "task" / "not-a-tid").mkdir()

    found = blocked_threads([10, 99], seen={13}, proc=str(tmp_path))

    assert found == [
        BlockedThread(10, 10, "main", 0x7F0010, ("futex_wait_queue", "do_syscall_64")),
        BlockedThread(10, 11, "io", 0x401000, ()),
    ]


def test_unreadable_wait_point_is_unknown(tmp_path: Path) -> None:
    add_task(tmp_path, 5, 5, "S", syscall="")
    add_task(tmp_path, 5, 6, "S", syscall="1 2 zz\n")
    assert [t.user_pc for t in blocked_threads([5], seen=(), proc=str(tmp_path))] == [None, None]
