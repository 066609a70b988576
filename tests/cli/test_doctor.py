"""`otlp-ebpf doctor`: green as root, exit 3 with fixes and no traceback when unprivileged."""

from __future__ import annotations

import json

import pytest

from otlp_ebpf.cli.app import run
from tests.conftest import run_as_nobody

pytestmark = pytest.mark.bpf


def test_doctor_is_green_as_root(capsys):
    assert run(["doctor", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True
    names = {c["name"]: c for c in doc["checks"]}
    assert names["load + attach + read"]["ok"]
    assert "3/3 events" in names["load + attach + read"]["detail"]
    assert names["tracepoint raw_syscalls/sys_enter"]["ok"]
    assert all(c["ok"] for c in doc["checks"] if c["name"].startswith("object "))


def test_doctor_table(capsys):
    assert run(["doctor"]) == 0
    captured = capsys.readouterr()
    assert "privileges" in captured.out and "perf events" in captured.out
    assert "everything needed works" in captured.err


def test_doctor_exits_3_for_an_unprivileged_user():
    proc = run_as_nobody("doctor")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "privileges" in proc.stdout and "FAIL" in proc.stdout
    assert "CAP_BPF" in proc.stdout  # the fix is named
    # tracefs is there, only unreadable: the cause is privileges, not the kernel.
    assert "not mounted" not in proc.stdout
    assert "not readable without privileges" in proc.stdout


@pytest.mark.parametrize("command", ["cpu", "syscalls", "net", "mem", "record"])
def test_collectors_blame_missing_privileges_not_the_kernel(command):
    proc = run_as_nobody(command, "-d", "1")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"error: {command} needs root, or CAP_BPF and CAP_PERFMON" in proc.stderr
    assert "Linux 6.3" not in proc.stderr and "missing on this kernel" not in proc.stderr
    assert "Traceback" not in proc.stderr
