"""Rows of exited processes: bounded however many processes come and go."""

from __future__ import annotations

from otlp_ebpf.collectors.syscalls import ExitedProcesses, _Process, _Row, set_bits


def proc(comm: str, count: int, errnos: dict[str, int] | None = None) -> _Process:
    row = _Row(count=count, errors=sum((errnos or {}).values()), hist=[count] + [0] * 39)
    return _Process(comm, {0: row}, {0: dict(errnos or {})})


def test_set_bits_reads_little_endian_words():
    assert set_bits([0b1011, 0, 1 << 63]) == [0, 1, 3, 191]
    assert set_bits([0] * 16) == []


def test_the_newest_processes_keep_their_pid_and_older_ones_fold_by_name():
    exited = ExitedProcesses(keep=2)
    exited.add(10, proc("ls", 5, {"ENOENT": 1}))
    exited.add(11, proc("ls", 7, {"ENOENT": 2}))
    exited.add(12, proc("cat", 1))
    exited.add(13, proc("id", 2))
    entries = list(exited.entries())
    assert [(pid, p.comm) for pid, p in entries] == [(12, "cat"), (13, "id"), (0, "ls")]
    folded = dict(entries)[0]
    assert folded.rows[0].count == 12
    assert folded.rows[0].hist is not None and folded.rows[0].hist[0] == 12
    assert folded.errnos[0] == {"ENOENT": 3}
    assert exited.processes == 4
    for n in range(100, 1100):
        exited.add(n, proc("sh", 1))
    assert len(exited.by_pid) == 2  # bounded
    folded_counts = {p.comm: p.rows[0].count for pid, p in exited.entries() if pid == 0}
    assert folded_counts == {"ls": 12, "cat": 1, "id": 2, "sh": 998}


def test_a_pid_used_again_adds_to_its_rows():
    exited = ExitedProcesses(keep=4)
    exited.add(10, proc("ls", 5))
    exited.add(10, proc("ls", 6))
    assert dict(exited.entries())[10].rows[0].count == 11


def test_processes_no_interval_showed_fold_by_name_at_once():
    """The agent's rule: only a process an interval already showed keeps its pid at exit."""
    shown = {10}
    exited = ExitedProcesses(keep=64, keep_pid=shown.__contains__)
    exited.add(10, proc("server", 5))
    for n in range(100, 400):
        exited.add(n, proc("ls", 1))
    assert [pid for pid, _ in exited.entries()] == [10, 0]
    assert {p.comm: p.rows[0].count for _, p in exited.entries()} == {"server": 5, "ls": 300}
