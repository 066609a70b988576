"""The launched command's exit status is the tool's exit status, as with strace and time: a CI
step that wraps its tests in a collector fails when the tests fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from otlp_ebpf.cli.app import run

pytestmark = pytest.mark.bpf

CASES = [
    (["sh", "-c", "exit 42"], 42, "command: exited with status 42"),
    (["/bin/false"], 1, "command: exited with status 1"),
    (["/bin/true"], 0, "command: exited with status 0"),
    (["sh", "-c", "kill -KILL $$"], 128 + 9, "command: killed by SIGKILL"),
]


# Every case with syscalls. The other collectors hand on the same account of the command
# (base.Targets.command_exit): a status and a signal are enough to show they do.
RUNS = [("syscalls", *case) for case in CASES] + [
    (collector, *case) for collector in ("cpu", "net") for case in (CASES[0], CASES[3])
]


@pytest.mark.parametrize(("collector", "argv", "code", "note"), RUNS)
def test_exit_code_is_the_commands(capsys, collector, argv, code, note):
    assert run([collector, "--json", "--", *argv]) == code
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert note in doc["notes"]
    assert doc["command_exit"] == (code if code < 128 else 128 - code)
    assert note in captured.err  # the summary line says it too


def test_mem_exit_code_is_the_commands(capsys):
    assert run(["mem", "--json", "--", "sh", "-c", "exit 42"]) == 42
    assert "command: exited with status 42" in json.loads(capsys.readouterr().out)["notes"]


def test_process_exit_status_from_the_shell(tmp_path):
    """The real process: `otlp-ebpf syscalls -- sh -c 'exit 42'; echo $?` prints 42."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(
        [sys.executable, "-m", "otlp_ebpf", "-q", "syscalls", "--", "sh", "-c", "exit 42"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 42, proc.stderr


def test_a_command_the_run_stopped_does_not_decide_the_exit_code(capsys):
    """--duration ended the run and stopped the command: the tool succeeded, exit 0."""
    assert run(["syscalls", "--json", "-d", "0.5", "--", "sleep", "30"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["command_exit"] is None
    assert "command: still running when the run ended (stopped)" in doc["notes"]


def test_tool_failures_keep_their_codes(capsys):
    assert run(["syscalls", "--", "/nonexistent/otlp-ebpf-command"]) == 2
