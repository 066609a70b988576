"""The held command: released only by `release()`, never by giving up on it."""

from __future__ import annotations

from otlp_ebpf.collectors.base import Targets
from otlp_ebpf.runtime.launch import HeldCommand
from otlp_ebpf.targets import TargetSpec


def test_an_abandoned_command_never_counts_as_released() -> None:
    held = HeldCommand(["/bin/true"])
    held.abandon()
    assert not held.released
    assert held.returncode == 127  # the child gave up without running anything


def test_a_run_stopped_before_release_reports_no_command_status() -> None:
    targets = Targets(TargetSpec(pids=(), tid=0, command=("/bin/true",)))
    targets.abandon()
    assert targets.command_exit() is None
    assert targets.command_notes() == ()


def test_a_released_command_reports_its_own_status() -> None:
    held = HeldCommand(["/bin/sh", "-c", "exit 7"])
    held.release()
    assert held.released
    assert held.wait() == 7
