"""SIGINT and SIGTERM at chosen moments of a real run: during start-up (inherited ignored or
not), while an output is being written, twice in a row. The moments are made observable
without clocks: the handlers showing in /proc/PID/status, the tool blocked opening a FIFO."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.formatters.formatter_fixtures import syscalls_snapshot

CLI = [sys.executable, "-m", "otlp_ebpf"]
# A launched command that never ends on its own: only a signal ends these runs.
FOREVER = ["sleep", "100000"]
# Only a hang would reach it; a failing assertion, never a slow machine.
HANG = 120


def caught_signals(pid: int) -> int:
    """The SigCgt mask of `pid` (bit n-1 set when signal n has a handler)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return int(line.split()[1], 16)
    return 0


def wait_until(proc: Run, condition: Callable[[], bool]) -> None:
    while not condition():
        assert proc.poll() is None, proc.err()
        time.sleep(0.001)


def blocked_opening_a_fifo(pid: int) -> bool:
    return Path(f"/proc/{pid}/wchan").read_text() == "wait_for_partner"


class Run(subprocess.Popen[str]):
    """The CLI in a child process, its stderr in a file the test can look at meanwhile."""

    stderr_path: Path

    def err(self) -> str:
        return self.stderr_path.read_text()

    def finish(self) -> tuple[str, str]:
        out, _ = self.communicate(timeout=HANG)
        return out, self.err()


@pytest.fixture
def spawn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Run]]:
    started: list[Run] = []

    def start(*args: str, ignore_sigint: bool = False) -> Run:
        stderr_path = tmp_path_factory.mktemp("stderr") / "stderr"
        proc = Run(
            [*CLI, *args],
            stdout=subprocess.PIPE,
            stderr=stderr_path.open("w"),
            text=True,
            # A script's background job starts with SIGINT ignored.
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
            if ignore_sigint
            else None,
        )
        proc.stderr_path = stderr_path
        started.append(proc)
        return proc

    yield start
    for proc in started:  # never leave a tracer behind, whatever failed
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start_up(proc: Run) -> None:
    """Until the tool's own handlers are in (SIGTERM is caught by nobody else), which is while
    the CLI's modules are being imported; or, should they come later, until it says it is
    starting to trace (then loading its BPF programs)."""
    sigterm = 1 << (signal.SIGTERM - 1)
    wait_until(
        proc, lambda: bool(caught_signals(proc.pid) & sigterm) or "Ctrl-C to stop" in proc.err()
    )


@pytest.mark.bpf
@pytest.mark.parametrize("ignored", [True, False], ids=["inherited-ignored", "default"])
def test_sigint_during_start_up_ends_the_run_cleanly(
    spawn: Callable[..., Run], tmp_path: Path, ignored: bool
) -> None:
    out = tmp_path / "run.json"
    proc = spawn("syscalls", "-o", str(out), "--", *FOREVER, ignore_sigint=ignored)
    start_up(proc)

    proc.send_signal(signal.SIGINT)
    _, err = proc.finish()

    assert proc.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    snap = json.loads(out.read_text())
    assert snap["kind"] == "syscalls" and "ended: interrupted" in snap["notes"]
    assert "stopped sleep" not in err  # stopped before it was started: it never ran


@pytest.mark.bpf
def test_signals_while_writing_wait_for_every_output(
    spawn: Callable[..., Run], tmp_path: Path
) -> None:
    fifo, later = tmp_path / "first.json", tmp_path / "later.json"
    os.mkfifo(fifo)
    proc = spawn("syscalls", "-o", str(fifo), "-o", str(later), "--", "true")
    wait_until(proc, lambda: blocked_opening_a_fifo(proc.pid))  # writing the first output

    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)  # a second one: still waits
    first = json.loads(fifo.read_text())  # let the writing go on
    out, err = proc.finish()

    assert proc.returncode == 0, err
    assert first["kind"] == "syscalls"
    assert json.loads(later.read_text())["kind"] == "syscalls"
    assert "execve" in out  # the table too
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.json", "later.json"]


@pytest.mark.bpf
def test_two_quick_sigints_still_write_the_outputs(
    spawn: Callable[..., Run], tmp_path: Path
) -> None:
    out = tmp_path / "run.json"
    proc = spawn("syscalls", "-o", str(out), "--", *FOREVER)
    start_up(proc)

    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.finish()

    assert proc.returncode == 0, err
    assert json.loads(out.read_text())["kind"] == "syscalls"
    assert "Traceback" not in err


def test_a_command_that_collects_nothing_stops_after_the_file_being_written(
    spawn: Callable[..., Run], tmp_path: Path
) -> None:
    snap = tmp_path / "snap.json"
    snap.write_text(json.dumps(syscalls_snapshot().to_dict()))
    fifo, later = tmp_path / "first.json", tmp_path / "later.json"
    os.mkfifo(fifo)
    proc = spawn("report", str(snap), "-o", str(fifo), "-o", str(later))
    wait_until(proc, lambda: blocked_opening_a_fifo(proc.pid))

    proc.send_signal(signal.SIGTERM)
    first = json.loads(fifo.read_text())
    _, err = proc.finish()

    assert proc.returncode == 128 + signal.SIGTERM
    assert first["kind"] == "syscalls"  # the file being written was finished
    assert not later.exists()
    assert "interrupted by SIGTERM" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.json", "snap.json"]
