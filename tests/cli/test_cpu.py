"""The summary line of cpu runs that record blocked time only, and how runs are counted."""

from __future__ import annotations

from otlp_ebpf.cli.cpu import events_name, was_interrupted
from otlp_ebpf.collectors.cpu import CpuConfig
from otlp_ebpf.formatters.cpu_table import run_summary
from otlp_ebpf.model import CpuSnapshot, StackCount

COMMON = {"started_at": "2025-01-01T00:00:00+00:00", "duration_s": 2.0, "host": "h"}


def test_an_off_cpu_only_run_with_nothing_blocked_says_so() -> None:
    snap = CpuSnapshot(**COMMON, frequency_hz=0, off_cpu_min_block_us=1)  # type: ignore[arg-type]
    assert run_summary(snap) == "no blocked time recorded over 2.0 s (>= 1 us)"


def test_an_off_cpu_only_run_shows_blocked_time_and_no_sample_rate() -> None:
    blocked = (StackCount(1, 1, "app", ("main", "sleep"), 2, 1_500_000_000),)
    snap = CpuSnapshot(  # type: ignore[arg-type]
        **COMMON, frequency_hz=0, off_cpu=blocked, off_cpu_min_block_us=1
    )
    text = run_summary(snap)
    assert text == "off-CPU 1.50 s blocked in 2 blocks (>= 1 us)"
    assert "Hz" not in text


def test_the_summary_counts_what_the_run_recorded() -> None:
    assert events_name(CpuConfig()) == "samples"
    assert events_name(CpuConfig(off_cpu=True)) == "samples and blocks"
    assert events_name(CpuConfig(on_cpu=False, off_cpu=True)) == "blocks"


def test_only_an_interrupted_run_stops_the_repeats() -> None:
    ended = CpuSnapshot(**COMMON, notes=("ended: target exited",))  # type: ignore[arg-type]
    stopped = CpuSnapshot(**COMMON, notes=("ended: interrupted",))  # type: ignore[arg-type]
    assert not was_interrupted(ended)
    assert was_interrupted(stopped)
