"""Processes that come and go: descendants that outlive the command, churning shells that
start thousands of short processes, a tool killed in the middle of a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from otlp_ebpf.cli.app import run
from tests.conftest import build_c

pytestmark = pytest.mark.bpf

CLI = [sys.executable, "-m", "otlp_ebpf"]

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


def release(fifo: Path) -> None:
    """Let a workload blocked on `fifo` go, if it still waits (never leave it behind)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    os.write(fd, b"g")
    os.close(fd)


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
    assert doc["lost_events"] == {}
    execs = sum(s["count"] for s in doc["syscalls"] if s["name"] == "execve")
    assert execs == 1 + 4 * 300  # the shell itself, then four commands per round
    # The newest exited processes keep their pid; older ones are folded by name (pid 0).
    pids = {s["pid"] for s in doc["syscalls"]}
    assert 0 in pids
    assert {s["comm"] for s in doc["syscalls"] if s["pid"] == 0} >= {"ls", "cat", "id", "uname"}
