"""The tool's own cost: BPF program run time (bpf_enable_stats) and process CPU/RSS."""

from __future__ import annotations

import ctypes
import os
import resource
from dataclasses import dataclass
from pathlib import Path

from otlp_ebpf.runtime import libbpf
from otlp_ebpf.runtime.libbpf import BpfProgInfo

BPF_STATS_RUN_TIME = 0


@dataclass(frozen=True)
class ProgramStats:
    run_time_ns: int
    run_cnt: int
    # runs the kernel skipped because the program was already running on that CPU (counted
    # whether or not stats are enabled)
    recursion_misses: int = 0


class StatsSession:
    """While open, the kernel accounts run time per BPF program (a small cost per run)."""

    def __init__(self) -> None:
        self.fd = -1

    def __enter__(self) -> StatsSession:
        if libbpf.has("bpf_enable_stats"):
            self.fd = libbpf.lib().bpf_enable_stats(BPF_STATS_RUN_TIME)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @property
    def active(self) -> bool:
        return self.fd >= 0


def program_stats(prog_fd: int) -> ProgramStats:
    info = BpfProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    ret = libbpf.lib().bpf_obj_get_info_by_fd(prog_fd, ctypes.byref(info), ctypes.byref(size))
    if ret < 0:
        return ProgramStats(0, 0)
    return ProgramStats(int(info.run_time_ns), int(info.run_cnt), int(info.recursion_misses))


def process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_kb() -> int:
    """Peak resident memory of this process image. VmHWM, not ru_maxrss: the latter survives
    exec and would report the peak of whatever process launched us (a test runner, a shell)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
