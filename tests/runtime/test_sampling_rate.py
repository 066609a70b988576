"""The budget changes the on-CPU sampling rate while running: the events take the new rate
in place, and the samples follow it."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from otlp_ebpf.collectors import base
from otlp_ebpf.collectors.cpu import FramePointerSampler
from otlp_ebpf.collectors.cpu_sampling import CpuConfig
from otlp_ebpf.runtime import probes
from otlp_ebpf.runtime.stats import StatsSession
from otlp_ebpf.symbolize.resolver import Symbolizer
from otlp_ebpf.targets import TargetSpec

pytestmark = pytest.mark.bpf

PHASE_CPU_S = 1.0  # of the spinner's CPU time at each rate


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def samples_of(sampler: FramePointerSampler, pid: int) -> int:
    return sum(n for (p, _), n in sampler.raw_counts().items() if p == pid)


def samples_per_cpu_s(sampler: FramePointerSampler, pid: int) -> float:
    """Samples of `pid` per second of its CPU time, over PHASE_CPU_S of it."""
    n0, c0 = samples_of(sampler, pid), cpu_s(pid)
    while cpu_s(pid) - c0 < PHASE_CPU_S:
        sampler.poll(0.05)
    return (samples_of(sampler, pid) - n0) / (cpu_s(pid) - c0)


def test_a_new_rate_is_taken_in_place_and_the_samples_follow_it() -> None:
    spin = subprocess.Popen(["sh", "-c", "while :; do :; done"])
    targets = base.Targets(TargetSpec(pids=(spin.pid,)))
    config = CpuConfig(targets=targets.spec, frequency_hz=400, kernel_stacks=False, python=False)
    sampler = FramePointerSampler(config, Symbolizer())
    try:
        with StatsSession():
            sampler.start(targets)
            time.sleep(0.2)  # the kernel's frequency mode settles its period
            fast = samples_per_cpu_s(sampler, spin.pid)
            links = list(sampler.sample_links)
            sampler.set_frequency(40)
            assert sampler.sample_links == links  # the same events, not opened again
            time.sleep(0.2)
            slow = samples_per_cpu_s(sampler, spin.pid)
    finally:
        spin.kill()
        spin.wait()
        targets.abandon()
        base.cleanup()
    assert 5 < fast / slow < 20, (fast, slow)  # 10x fewer, give or take the kernel's settling


def test_a_rate_the_kernel_refuses_leaves_the_events_to_be_opened_again() -> None:
    assert not probes.set_cpu_clock_frequency([], 99)  # nothing to change in place
    assert not probes.set_cpu_clock_frequency([], probes.max_sample_rate() + 1)
