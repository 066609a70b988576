"""Processes that come and go: descendants that outlive the command, churning shells that
start thousands of short processes, a tool killed in the middle of a run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from otlp_ebpf.cli.app import run
from otlp_ebpf.collectors.syscalls import syscall_table
from tests.conftest import SPIN_CPU_C, build_c

pytestmark = pytest.mark.bpf

CLI = [sys.executable, "-m", "otlp_ebpf"]
OPENAT = next(nr for nr, name in syscall_table().items() if name == "openat")

# Waits to be released through a FIFO, then makes N getppid() calls: it outlives the
# command's first process for as long as the test wants.
ORPHAN = r"""
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char go;
    int fd = open(argv[2], O_RDONLY);
    if (fd < 0 || read(fd, &go, 1) != 1) return 2;
    for (int i = 0; i < atoi(argv[1]); i++) getppid();
    return 0;
}
"""


@pytest.fixture(scope="module")
def orphan(tmp_path_factory, cc) -> Path:
    return build_c(cc, ORPHAN, tmp_path_factory.mktemp("orphan") / "orphan", "-O1")


def cli_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))


def release(fifo: Path) -> bool:
    """Let a workload that opened `fifo` go; False while no one has it open for reading."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return False
    os.write(fd, b"g")
    os.close(fd)
    return True


def test_descendants_that_outlive_the_command_are_followed(tmp_path, orphan):
    """`-- sh -c 'child & exit 0'`: the run goes on until the child has exited, and every
    call the child makes after its parent left is counted."""
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    out = tmp_path / "run.json"
    script = f"{orphan} 4321 {fifo} >/dev/null 2>&1 & exit 0"
    proc = subprocess.Popen(
        [*CLI, "syscalls", "-s", "getppid", "-o", str(out), "--", "sh", "-c", script],
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "following 1 descendant(s) still running" in line:
                break
        else:
            pytest.fail("the run ended with the command's first process: " + "".join(seen))
        with open(fifo, "w") as go:
            go.write("g")
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        release(fifo)
    doc = json.loads(out.read_text())
    by_pid: dict[int, int] = {}
    for s in doc["syscalls"]:
        by_pid[s["pid"]] = by_pid.get(s["pid"], 0) + s["count"]
    assert max(by_pid.values()) == 4321  # the orphan's (sh may call getppid once too)
    assert "ended: target exited" in doc["notes"]
    assert any(n.startswith("followed 1 descendant(s) that outlived sh") for n in doc["notes"])


CHURN = """
i=0
while [ $i -lt {n} ]; do
  ls / >/dev/null; cat /etc/hostname >/dev/null; id >/dev/null; uname >/dev/null
  i=$((i+1))
done
"""


def test_processes_that_come_and_go_never_fill_the_syscall_table(capsys, tmp_path):
    """1,200 short processes of ~25 syscalls each create 30,000 (process, syscall) rows,
    twice what the kernel table holds: exited processes' rows leave it, nothing is lost,
    and every exec is counted."""
    script = tmp_path / "churn.sh"
    script.write_text(CHURN.format(n=300))
    out = tmp_path / "churn.json"
    assert run(["syscalls", "-o", str(out), "--", "sh", str(script)]) == 0
    doc = json.loads(out.read_text())
    # Rows of exited processes left the table: it never filled. (A burst of new rows can
    # still meet an empty kernel element cache for an instant: counted apart, not asserted.)
    assert "syscall table full" not in doc["lost_events"]
    assert "exit event lost" not in doc["lost_events"]
    execs = sum(s["count"] for s in doc["syscalls"] if s["name"] == "execve")
    assert execs == 1 + 4 * 300  # the shell itself, then four commands per round
    # The newest exited processes keep their pid; older ones are folded by name (pid 0).
    pids = {s["pid"] for s in doc["syscalls"]}
    assert 0 in pids
    assert {s["comm"] for s in doc["syscalls"] if s["pid"] == 0} >= {"ls", "cat", "id", "uname"}


def state_of(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[0]


def blocked_in_openat(pid: int) -> bool:
    """The process sleeps in openat(2) (/proc/PID/syscall starts with the call's number)."""
    try:
        call = Path(f"/proc/{pid}/syscall").read_text().split()[0]
    except (OSError, IndexError):
        return False
    return call == str(OPENAT) and state_of(pid) == "S"


def wait_for(condition, what: str, timeout_s: float = 60.0) -> None:
    """Poll `condition` (a generous bound for a shared machine; not a speed check)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_a_sigkilled_mem_run_leaves_no_workload_stopped(tmp_path):
    """`mem -- CMD` stops a target at exit() for an instant; a tool killed meanwhile (a CI
    timeout's SIGKILL) must not leave it stopped forever. The tool is frozen first so that
    the target is certainly stopped, waiting for it, when the kill comes."""
    fifo, pidfile = tmp_path / "go", tmp_path / "pid"
    os.mkfifo(fifo)
    # cat returns from main: libc exit(), where the target is stopped.
    script = f"echo $$ > {pidfile}; exec cat {fifo}"
    proc = subprocess.Popen(
        [*CLI, "mem", "--", "sh", "-c", script],
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    target = 0
    try:
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), "the workload")
        target = int(pidfile.read_text())
        # Frozen only once cat waits in open(): a new image is held at its first allocation
        # until the tool has looked at it, which a frozen tool never would.
        wait_for(lambda: blocked_in_openat(target), "the workload to open its FIFO")
        os.kill(proc.pid, signal.SIGSTOP)  # the tool can no longer resume anything
        assert release(fifo)
        wait_for(lambda: state_of(target) == "T", "the workload to stop at exit()")
        proc.kill()
        proc.wait(timeout=60)
        wait_for(lambda: state_of(target) != "T", "the workload to run again")
        assert state_of(target) in ("", "Z")  # it finished its exit
    finally:
        proc.kill()
        if target and state_of(target) == "T":
            os.kill(target, signal.SIGKILL)
            os.kill(target, signal.SIGCONT)


# Twenty children, one after another, each spinning on the CPU for 50 ms and exiting.
SPINNERS = r"""
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}
__attribute__((noinline)) void spin(double seconds) {
    double end = now() + seconds;
    while (now() < end) {}
}
int main(void) {
    for (int i = 0; i < 20; i++) {
        if (fork() == 0) { spin(0.05); exit(0); }
        wait(NULL);
    }
    return 0;
}
"""


def test_samples_of_short_lived_processes_are_unwound(tmp_path, cc):
    """A process living 50 ms is gone long before a batch of samples is read: its maps are
    read at its first sample (the kernel side wakes us for it), so its samples unwind."""
    spinners = build_c(cc, SPINNERS, tmp_path / "spinners", "-O1", "-fno-omit-frame-pointer")
    out = tmp_path / "cpu.json"
    assert run(["cpu", "-F", "499", "-o", str(out), "--", str(spinners)]) == 0
    doc = json.loads(out.read_text())
    gone = doc["lost_events"].get("unwind: process_gone", 0)
    in_spin = sum(s["count"] for s in doc["stacks"] if "spin" in s["frames"])
    assert in_spin >= 20  # 20 x 50 ms at 499 Hz: ~500 samples on an idle machine
    # A process gone before the reader ran is unwound with the maps the kernel recorded at
    # its exit: however loaded the machine, no sample is lost to the process's end.
    assert gone == 0, (gone, in_spin)


# Children that live a few milliseconds of CPU each: most are gone before a reader woken by
# their first sample has run, let alone read their maps.
BRIEF = (
    SPIN_CPU_C
    + r"""
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
__attribute__((noinline)) void brief_work(void) { SPIN_CPU_MS(4); }
int main(int argc, char **argv) {
    for (int i = 0; i < atoi(argv[1]); i++) {
        if (fork() == 0) { brief_work(); exit(0); }
        wait(NULL);
    }
    return 0;
}
"""
)
BRIEF_CHILDREN = 60


@pytest.fixture(scope="module")
def brief(tmp_path_factory, cc) -> Path:
    # Built for the test: a file no earlier process mapped, found again by the path the
    # kernel recorded.
    out = tmp_path_factory.mktemp("brief") / "brief"
    return build_c(cc, BRIEF, out, "-O1", "-fno-omit-frame-pointer")


@pytest.mark.parametrize("unwind", ["dwarf", "fp"])
def test_samples_of_processes_gone_before_their_maps_were_read_count(tmp_path, brief, unwind):
    """Sixty children living 4 ms each: every sample of theirs is unwound (DWARF) or named
    (frame pointers) with the mappings the kernel recorded as each exited."""
    out = tmp_path / "cpu.json"
    argv = ["cpu", "--unwind", unwind, "-F", "499", "-o", str(out)]
    assert run([*argv, "--", str(brief), str(BRIEF_CHILDREN)]) == 0
    doc = json.loads(out.read_text())
    in_brief = sum(s["count"] for s in doc["stacks"] if "brief_work" in s["frames"])
    assert in_brief >= BRIEF_CHILDREN // 3  # 60 x 4 ms of CPU at 499 Hz: ~120 samples
    assert doc["lost_events"].get("unwind: process_gone", 0) == 0, doc["lost_events"]
    symbols = next(n for n in doc["notes"] if n.startswith("symbols:"))
    assert "process_unknown" not in symbols, symbols


GETPPID_N = r"""
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    for (int i = 0; i < atoi(argv[1]); i++) getppid();
    return 0;
}
"""


def test_a_call_that_finds_no_row_is_still_counted(tmp_path, cc):
    """With a (process, syscall) table of 8 rows, the process's first syscalls take them all:
    its getppid calls find no row of their own and are counted without their process, in the
    `[unattributed]` rows, not lost."""
    from otlp_ebpf.collectors.syscalls import SyscallsConfig, collect
    from otlp_ebpf.targets import TargetSpec

    binary = build_c(cc, GETPPID_N, tmp_path / "getppid_n", "-O1")
    snapshot = collect(
        SyscallsConfig(targets=TargetSpec(command=(str(binary), "4321")), table_size=8)
    )
    getppid = [s for s in snapshot.syscalls if s.name == "getppid"]
    assert sum(s.count for s in getppid) == 4321
    assert {(s.pid, s.comm) for s in getppid} == {(0, "[unattributed]")}
    assert "syscall table full" not in snapshot.lost_events
    assert any(
        "calls counted without their process (syscall table full: " in n for n in snapshot.notes
    )
