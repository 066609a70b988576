"""`ask` over a real `syscalls` run of a program whose failures we know exactly."""

from __future__ import annotations

import json

import pytest

from otlp_ebpf.cli.app import run
from tests.conftest import build_c

pytestmark = pytest.mark.bpf

WORKLOAD = r"""
#include <fcntl.h>
#include <unistd.h>
int main(void) {
    for (int i = 0; i < 3000; i++) getppid();
    for (int i = 0; i < 41; i++) open("/nonexistent/otlp-ebpf-ask", O_RDONLY);  /* ENOENT x41 */
    for (int i = 0; i < 13; i++) close(2000 + i);                              /* EBADF x13 */
    return 0;
}
"""


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory, cc) -> str:
    folder = tmp_path_factory.mktemp("ask")
    program = build_c(cc, WORKLOAD, folder / "workload", "-O1")
    path = folder / "run.json"
    assert run(["syscalls", "-q", "-o", str(path), "--", str(program)]) == 0
    return str(path)


def ask_json(capsys, question: str, path: str) -> dict:
    assert run(["ask", question, path, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_errno_count_of_a_real_run(capsys, snapshot):
    doc = ask_json(capsys, "how many ENOENT errors?", snapshot)
    rows = {(r["errno"], r["syscall"]): r["errors"] for r in doc["result"]["rows"]}
    assert rows[("ENOENT", "openat")] == 41
    assert "openat 41" in doc["answer"]


def test_most_called_syscall_of_a_real_run(capsys, snapshot):
    doc = ask_json(capsys, "Which syscal was called the most?", snapshot)
    assert doc["answer"] == "`getppid` was called the most: 3,000 calls, 0 failed."


def test_close_failures_of_a_real_run(capsys, snapshot):
    doc = ask_json(capsys, "how often did close fail?", snapshot)
    assert doc["result"]["rows"] == [{"errno": "EBADF", "syscall": "close", "errors": 13}]
    assert doc["answer"] == "`close` failed 13 times: EBADF 13."


# Quiet for 2 s, then exactly 300 failing mkdir calls (ENOENT), then quiet for 1.5 s more.
PHASES = r"""
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
static double now(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}
int main(void) {
    double start = now();
    while (now() - start < 2.0) { getppid(); usleep(1000); }
    for (int i = 0; i < 300; i++) { mkdir("/nonexistent/otlp-ebpf-ask/d", 0700); usleep(1000); }
    double after = now();
    while (now() - after < 1.5) { getppid(); usleep(1000); }
    return 0;
}
"""


@pytest.fixture(scope="module")
def recording(tmp_path_factory, cc) -> str:
    folder = tmp_path_factory.mktemp("ask-rec")
    program = build_c(cc, PHASES, folder / "phases", "-O1")
    path = folder / "rec.json"
    code = run(["-q", "record", "--signals", "syscalls", "-o", str(path), "--", str(program)])
    assert code == 0
    return str(path)


def test_what_failed_in_a_window_of_a_real_recording(capsys, recording):
    doc = ask_json(capsys, "what failed between 1 and 5 s?", recording)
    assert doc["tool"] == "timeline_window"
    top = doc["result"]["rows"][0]
    assert top["series"] == "syscalls.errors{syscall=mkdir}"
    assert top["window_total"] == 300
    assert top["rest"] == 0


def test_which_syscall_failed_the_most_in_a_real_recording(capsys, recording):
    doc = ask_json(capsys, "which syscall failed the most?", recording)
    assert doc["answer"] == "`mkdir` failed the most: 300 of 300 calls (100%)."
