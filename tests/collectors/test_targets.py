"""Targets that come and go: a --pid that exits mid-run keeps what was collected."""

from __future__ import annotations

import json
import subprocess

import pytest

from otlp_ebpf.cli.app import run
from tests.conftest import build_c

pytestmark = pytest.mark.bpf

SPIN_THEN_EXIT = r"""
#include <time.h>
#include <unistd.h>
volatile unsigned long sink;
/* `seconds` of this thread's CPU time (not of the clock): as many samples on a busy machine. */
__attribute__((noinline)) void spin_for_a_while(double seconds) {
    struct timespec a, b;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
    do {
        for (int i = 0; i < 100000; i++) sink += i;
        getppid();
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
    } while ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9 < seconds);
}
int main(void) { usleep(200000); spin_for_a_while(0.8); return 0; }
"""


@pytest.fixture(scope="module")
def spinner(tmp_path_factory, cc):
    out = tmp_path_factory.mktemp("targets") / "spinner"
    return build_c(cc, SPIN_THEN_EXIT, out, "-O1", "-fno-omit-frame-pointer")


@pytest.mark.parametrize("command", ["cpu", "syscalls"])
def test_pid_that_exits_mid_run_keeps_what_was_collected(capsys, spinner, command):
    proc = subprocess.Popen([str(spinner)])
    try:
        assert run([command, "-p", str(proc.pid), "-d", "20", "--json"]) == 0
    finally:
        proc.wait(timeout=10)
    doc = json.loads(capsys.readouterr().out)
    assert "ended: target exited" in doc["notes"]
    if command == "cpu":
        frames = [f for s in doc["stacks"] for f in s["frames"]]
        assert doc["samples_total"] > 20 and "spin_for_a_while" in frames
    else:
        getppid = sum(s["count"] for s in doc["syscalls"] if s["name"] == "getppid")
        assert getppid > 10
