"""`otlp-ebpf doctor`: green as root, exit 3 with fixes and no traceback when unprivileged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from otlp_ebpf.cli.app import run

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


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed")
def test_doctor_exits_3_for_an_unprivileged_user():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COV_", "COVERAGE"))}
    proc = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "otlp_ebpf",
            "doctor",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd="/",
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "privileges" in proc.stdout and "FAIL" in proc.stdout
    assert "CAP_BPF" in proc.stdout  # the fix is named
