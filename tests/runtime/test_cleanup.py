"""No BPF program or link outlives a run: normal exit, exception, SIGINT and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from otlp_ebpf.runtime import probes
from otlp_ebpf.runtime.loader import close_all
from otlp_ebpf.runtime.selftest import open_selftest

pytestmark = pytest.mark.bpf
CLI = [sys.executable, "-m", "otlp_ebpf"]


def all_programs() -> set[int]:
    out = subprocess.run(
        ["bpftool", "-j", "prog", "list"], capture_output=True, text=True, check=True
    )
    return {p["id"] for p in json.loads(out.stdout)}


def programs_held_by(pid: int) -> set[int]:
    """Program ids behind the BPF fds (programs and links) a process holds, from fdinfo."""
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                held.add(int(line.split()[1]))
    return held


def wait_for_programs(pid: int) -> set[int]:
    deadline = time.time() + 20
    while time.time() < deadline:
        held = programs_held_by(pid)
        if len(held) >= 2:
            return held
        time.sleep(0.1)
    raise AssertionError("programs never attached")


def gone(held: set[int]) -> bool:
    """Program ids are never reused soon, so an id still listed has outlived its owner."""
    deadline = time.time() + 10
    while time.time() < deadline and held & all_programs():
        time.sleep(0.1)
    return not held & all_programs()


def test_in_process_close_all_after_exception():
    with pytest.raises(ZeroDivisionError):
        obj = open_selftest()
        probes.attach_auto(obj, "selftest_enter")
        held = programs_held_by(os.getpid())
        assert held
        1 / 0  # noqa: B018
    close_all()
    assert not programs_held_by(os.getpid())
    assert gone(held)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_ends_the_run_writes_output_and_detaches(tmp_path, sig, request):
    out = tmp_path / "run.json"
    proc = subprocess.Popen(
        [*CLI, "syscalls", "-d", "60", "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A script's background job inherits SIGINT ignored; the tool must still honour it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    request.addfinalizer(proc.kill)  # never leave a tracer behind, whatever fails below
    held = wait_for_programs(proc.pid)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert json.loads(out.read_text())["kind"] == "syscalls"
    assert "syscall" in stdout
    assert gone(held), "programs outlived the run"


def test_killed_process_leaves_nothing_behind():
    proc = subprocess.Popen(
        [*CLI, "syscalls"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    held = wait_for_programs(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    # Programs live only as long as their fds; the kernel reclaims them after SIGKILL.
    assert gone(held)
