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
