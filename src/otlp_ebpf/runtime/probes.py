"""Attach programs: tracepoints, tp_btf/raw_tp, perf events per CPU, uprobes.

Every attach returns a `Link` (runtime/loader.py) owned by its BpfObject, so
`BpfObject.close()` (the one cleanup path) detaches it; a Link is also a context manager for
callers that attach briefly.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
import struct
from ctypes import c_uint32, c_uint64
from pathlib import Path

from otlp_ebpf.errors import EnvironmentLacks, UsageError
from otlp_ebpf.runtime import libbpf
from otlp_ebpf.runtime.loader import BpfObject, Link

PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_CPU_CLOCK = 0
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_OPEN_NR = {"x86_64": 298, "aarch64": 241}
MAX_SAMPLE_RATE_PATH = "/proc/sys/kernel/perf_event_max_sample_rate"


class PerfEventAttr(ctypes.Structure):
    """The leading, stable part of struct perf_event_attr (size set to what we pass)."""

    _fields_ = [
        ("type", c_uint32),
        ("size", c_uint32),
        ("config", c_uint64),
        ("sample_period_or_freq", c_uint64),
        ("sample_type", c_uint64),
        ("read_format", c_uint64),
        ("flags", c_uint64),
        ("wakeup_events", c_uint32),
        ("bp_type", c_uint32),
        ("config1", c_uint64),
        ("config2", c_uint64),
    ]


ATTR_FLAG_FREQ = 1 << 10


def _attach(obj: BpfObject, ptr: int | None, what: str) -> Link:
    if not ptr:
        err = ctypes.get_errno()
        if err in (errno.EPERM, errno.EACCES):
            raise EnvironmentLacks(
                f"not allowed to attach {what}",
                hint="run as root or grant CAP_BPF and CAP_PERFMON",
            )
        raise libbpf.os_error(err, f"attach {what}")
    return obj.own(Link(ptr, what))


def attach_auto(obj: BpfObject, program: str) -> Link:
    """Attach by the program's SEC() (tp/, tp_btf/, raw_tp/ ...)."""
    ptr = libbpf.lib().bpf_program__attach(obj.program_ptr(program))
    return _attach(obj, ptr, f"{program} ({obj.section_of(program)})")


def max_sample_rate() -> int:
    try:
        return int(Path(MAX_SAMPLE_RATE_PATH).read_text().strip())
    except (OSError, ValueError):
        return 100_000


def online_cpus() -> list[int]:
    """CPUs to open perf events on, from /sys/devices/system/cpu/online ("0-3,5")."""
    try:
        text = Path("/sys/devices/system/cpu/online").read_text().strip()
    except OSError:
        return list(range(os.cpu_count() or 1))
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def perf_event_open(attr: PerfEventAttr, pid: int, cpu: int, group_fd: int = -1) -> int:
    nr = PERF_EVENT_OPEN_NR.get(platform.machine(), 298)
    libc = libbpf.libc()
    fd = int(
        libc.syscall(
            ctypes.c_long(nr),
            ctypes.byref(attr),
            ctypes.c_int(pid),
            ctypes.c_int(cpu),
            ctypes.c_int(group_fd),
            ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC),
        )
    )
    if fd < 0:
        raise libbpf.os_error(ctypes.get_errno(), f"perf_event_open on cpu {cpu}")
    return fd


def attach_cpu_clock(obj: BpfObject, program: str, frequency_hz: int) -> list[Link]:
    """One software CPU-clock sampling event per online CPU, each running `program`."""
    limit = max_sample_rate()
    if frequency_hz <= 0 or frequency_hz > limit:
        raise UsageError(
            f"frequency {frequency_hz} Hz is outside 1..{limit} "
            f"(the kernel's limit, {MAX_SAMPLE_RATE_PATH})"
        )
    links = []
    for cpu in online_cpus():
        attr = PerfEventAttr(
            type=PERF_TYPE_SOFTWARE,
            size=ctypes.sizeof(PerfEventAttr),
            config=PERF_COUNT_SW_CPU_CLOCK,
            sample_period_or_freq=frequency_hz,
            flags=ATTR_FLAG_FREQ,
        )
        fd = perf_event_open(attr, -1, cpu)
        ptr = libbpf.lib().bpf_program__attach_perf_event(obj.program_ptr(program), fd)
        if not ptr:
            err = ctypes.get_errno()
            os.close(fd)
            raise libbpf.os_error(err, f"attach perf event on cpu {cpu}")
        # The link owns the fd: bpf_link__destroy closes it (the link keeps its number for
        # `set_cpu_clock_frequency` while it lives).
        link = Link(ptr, f"perf cpu-clock cpu{cpu}")
        link.perf_fd = fd
        links.append(obj.own(link))
    return links


PERF_EVENT_IOC_PERIOD = 0x40082404  # _IOW('$', 4, __u64)


def set_cpu_clock_frequency(links: list[Link], frequency_hz: int) -> bool:
    """Sample at `frequency_hz` from now on through the events `attach_cpu_clock` opened, in
    place: no event is closed and opened again (that costs a perf_event_open and a program
    attach per CPU, and the budget changes the rate every few seconds). False when an event
    would not take it (its caller then opens them again)."""
    if not links or frequency_hz <= 0 or frequency_hz > max_sample_rate():
        return False
    # The kernel turns a cpu-clock event's frequency into a fixed period of 1e9 / frequency
    # ns when it opens it (perf_swevent_init_hrtimer clears attr.freq): a new rate is a new
    # period in nanoseconds.
    period = struct.pack("=Q", 1_000_000_000 // frequency_hz)
    for link in links:
        if link.perf_fd is None or not link.attached:
            return False
        try:
            fcntl.ioctl(link.perf_fd, PERF_EVENT_IOC_PERIOD, period)
        except OSError:
            return False
    return True


def retune_cpu_clock(
    obj: BpfObject, links: list[Link], program: str, frequency_hz: int
) -> list[Link]:
    """The sampling links of `program` at `frequency_hz` from now on: `links` themselves when
    their events took the new rate in place, else new links opened at it (the old ones
    closed)."""
    if set_cpu_clock_frequency(links, frequency_hz):
        return links
    for link in links:
        link.destroy()
        obj.links.remove(link)
    return attach_cpu_clock(obj, program, frequency_hz)
