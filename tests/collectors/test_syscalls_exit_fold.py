"""An exited process's rows leave the kernel's tables at its exit, each summed over the CPUs
it ran on, and reach user space as records of the `exits` ring: no system call per row."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from otlp_ebpf.collectors.syscalls import (
    _STATS,
    _SYSCALL_KEY,
    BTF_PROGRAMS,
    EXIT_ROWS_PER_RECORD,
    SYSCALL_SLOTS,
    SyscallsCollector,
    SyscallsConfig,
)
from otlp_ebpf.runtime.loader import BpfObject
from tests.conftest import build_c

pytestmark = pytest.mark.bpf

# getppid on CPU 0 then on CPU 1 (each CPU's value of the row holds its part), and failing
# closes (EBADF) and opens (ENOENT) on both: the kernel must add up the CPUs of every row.
WORKLOAD = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>
static void on_cpu(int cpu) {
    cpu_set_t set; CPU_ZERO(&set); CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set)) _exit(3);
}
int main(int argc, char **argv) {
    int n0 = atoi(argv[1]), n1 = atoi(argv[2]);
    on_cpu(0);
    for (int i = 0; i < n0; i++) getppid();
    for (int i = 0; i < 2; i++) close(1000 + i);
    open("/nonexistent/otlp-ebpf", O_RDONLY);
    on_cpu(1);
    for (int i = 0; i < n1; i++) getppid();
    for (int i = 0; i < 5; i++) close(1000 + i);
    return 0;
}
"""


# One failing call (fd -1: EBADF, or EINVAL for some) of each of many syscalls: more rows than
# one exit record holds (EXIT_ROWS_PER_RECORD). It prints the names it called.
MANY = r"""
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
#define CALL(name) do { syscall(SYS_##name, -1L, 0L, 0L, 0L, 0L, 0L); puts(#name); } while (0)
int main(void) {
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    CALL(read); CALL(write); CALL(fstat); CALL(lseek); CALL(ioctl); CALL(pread64);
    CALL(pwrite64); CALL(readv); CALL(writev); CALL(dup); CALL(sendfile); CALL(connect);
    CALL(accept); CALL(sendto); CALL(recvfrom); CALL(sendmsg); CALL(recvmsg); CALL(shutdown);
    CALL(bind); CALL(listen); CALL(getsockname); CALL(getpeername); CALL(setsockopt);
    CALL(getsockopt); CALL(flock); CALL(fsync); CALL(fdatasync); CALL(ftruncate);
    CALL(getdents64); CALL(fchdir); CALL(fchmod); CALL(fchown); CALL(fstatfs);
    CALL(fgetxattr); CALL(flistxattr); CALL(fremovexattr); CALL(fsetxattr); CALL(readahead);
    CALL(fallocate); CALL(syncfs); CALL(epoll_ctl); CALL(inotify_add_watch); CALL(accept4);
    return 0;
}
"""


@pytest.fixture(scope="module")
def many_rows(tmp_path_factory, cc) -> Path:
    return build_c(cc, MANY, tmp_path_factory.mktemp("fold") / "many_rows", "-O1")


@pytest.fixture(scope="module")
def workload(tmp_path_factory, cc) -> Path:
    return build_c(cc, WORKLOAD, tmp_path_factory.mktemp("fold") / "two_cpus", "-O1")


@contextlib.contextmanager
def started(config: SyscallsConfig) -> Iterator[SyscallsCollector]:
    c = SyscallsCollector(config)
    try:
        c.start()
        yield c
    finally:
        c.close()
        if c.obj is not None:
            c.obj.close()  # programs, links and maps go with it


@pytest.fixture
def collector():
    with started(SyscallsConfig(syscalls=("getppid", "close", "open", "openat"))) as c:
        yield c


def tgids_in(collector: SyscallsCollector, table: str) -> set[int]:
    assert collector.obj is not None
    return {int.from_bytes(k[:4], "little") for k in collector.obj.map(table)}


def run_to_exit(workload: Path, *args: str) -> int:
    child = subprocess.Popen([str(workload), *args])
    assert child.wait(timeout=60) == 0
    return child.pid


def nr_of(collector: SyscallsCollector, name: str) -> int:
    return next(nr for nr, n in collector.table.items() if n == name)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two CPUs")
def test_an_exited_process_rows_leave_the_tables_summed_over_its_cpus(collector, workload):
    pid = run_to_exit(workload, "300", "200")
    # Gone from the kernel's tables before user space has read a single record.
    assert pid not in tgids_in(collector, "stats")
    assert pid not in tgids_in(collector, "errnos")
    collector.poll(0.5)
    proc = dict(collector.exited.entries())[pid]
    assert proc.comm == "two_cpus"
    rows = {collector.table[nr]: row for nr, row in proc.rows.items()}
    assert rows["getppid"].count == 500
    assert rows["close"].errors == 7  # (the loader closes files too, successfully)
    assert proc.errnos[nr_of(collector, "close")] == {"EBADF": 7}
    opened = rows.get("openat") or rows["open"]
    assert opened.errors == 1
    # Latencies come through the sum: every timed call is in the histogram once.
    assert rows["getppid"].hist is not None and sum(rows["getppid"].hist) == 500
    assert 0 < rows["getppid"].min_ns <= rows["getppid"].max_ns
    assert collector.read_drops() == {}


def test_more_rows_than_one_record_holds_arrive_in_several(many_rows):
    with started(SyscallsConfig(comm="many_rows")) as c:
        child = subprocess.run([str(many_rows)], capture_output=True, text=True, check=True)
        called = child.stdout.split()
        c.poll(0.5)
        proc = next(p for _, p in c.exited.entries() if p.comm == "many_rows")
        assert len(proc.rows) > EXIT_ROWS_PER_RECORD
        for name in called:
            nr = nr_of(c, name)
            assert proc.rows[nr].errors >= 1, name
            assert sum(proc.errnos[nr].values()) == proc.rows[nr].errors, name
        assert c.read_drops() == {}
        assert c._folding == {}  # every record its header announced arrived


def test_rows_read_while_their_process_exits_are_counted_once(collector, workload):
    """A process that exits while the table is read is in both the read and its exit's
    records: the read leaves it out. (Its row is put back into the table here, as a read
    racing the kernel's fold would have found it.)"""
    pid = run_to_exit(workload, "40", "0")
    assert collector.obj is not None
    stats = collector.obj.map("stats")
    raced = _STATS.pack(40, 0, 0, 0, 0, *[0] * SYSCALL_SLOTS)
    stats.update(_SYSCALL_KEY.pack(pid, nr_of(collector, "getppid")), raced * stats.ncpus)
    rows = collector.read_rows()
    assert [key for key in rows if key[0] == pid] == []
    getppid = dict(collector.exited.entries())[pid].rows[nr_of(collector, "getppid")]
    assert getppid.count == 40


class SmallRing(SyscallsCollector):
    """The exits ring at its smallest (one page): the rows of a second exited process do
    not fit while the first one's wait to be read."""

    def _load(self, use_btf: bool):  # type: ignore[no-untyped-def]
        obj = BpfObject.open("syscalls")
        obj.set_rodata(**self._rodata())
        obj.resize_map("exits", os.sysconf("SC_PAGE_SIZE"))
        for prog in ("tp_sys_enter", "tp_sys_exit") if use_btf else BTF_PROGRAMS:
            obj.disable(prog)
        for prog in self.targets.unused_programs(use_btf):
            obj.disable(prog)
        obj.load()
        return obj


def test_rows_without_room_in_the_ring_are_taken_from_the_table_and_counted(workload):
    c = SmallRing(SyscallsConfig(syscalls=("getppid",)))
    try:
        c.start()
        pids = [run_to_exit(workload, "30", "0") for _ in range(40)]
        assert tgids_in(c, "stranded"), "the ring was expected to overflow"
        stats = c.stats()
        by_pid = {s.pid: s.count for s in stats if s.name == "getppid"}
        # Every process's calls are there, as an exited process: from its records, or taken
        # from the table by the keys it noted; nothing of them is left in the tables.
        assert [by_pid.get(pid) for pid in pids] == [30] * len(pids)
        assert not set(pids) & (tgids_in(c, "stats") | tgids_in(c, "usage"))
        assert not tgids_in(c, "stranded")
        assert c.read_drops().get("exit event lost", 0) >= 1
        assert c.exited.processes == len(pids)
    finally:
        c.close()
        if c.obj is not None:
            c.obj.close()
