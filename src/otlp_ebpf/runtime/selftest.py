"""Drive bpf/selftest.bpf.o: attach, make known syscalls, read them back (doctor uses it)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform

from otlp_ebpf.runtime import probes
from otlp_ebpf.runtime.events import RingBuffer
from otlp_ebpf.runtime.loader import BpfObject

CLOSE_NR = {"x86_64": 3, "aarch64": 57}
PROBE_FD = 987_654  # closing it fails with EBADF and touches nothing


class SelftestEvent(ctypes.Structure):
    """Mirror of struct selftest_event (bpf/selftest.h)."""

    _fields_ = [
        ("pid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("nr", ctypes.c_uint64),
        ("arg0", ctypes.c_uint64),
        ("seq", ctypes.c_uint64),
    ]


def close_nr() -> int:
    return CLOSE_NR.get(platform.machine(), 3)


def open_selftest(**rodata: int) -> BpfObject:
    obj = BpfObject.open("selftest")
    obj.set_rodata(probe_tgid=os.getpid(), probe_nr=close_nr(), **rodata)
    obj.load()
    return obj


def make_calls(calls: int, fd: int = PROBE_FD) -> None:
    for _ in range(calls):
        with contextlib.suppress(OSError):
            os.close(fd)


def round_trip(calls: int) -> int:
    """Events that made it through the ring buffer and agree with the in-kernel counter."""
    with open_selftest(wakeup_bytes=1) as obj:
        probes.attach_auto(obj, "selftest_enter")
        received: list[SelftestEvent] = []
        ring = RingBuffer(
            obj.map("events"), lambda raw: received.append(SelftestEvent.from_buffer_copy(raw))
        )
        try:
            make_calls(calls)
            for _ in range(20):
                if len(received) >= calls:
                    break
                ring.poll(50)
        finally:
            ring.close()
        counted = obj.map("counters").lookup_u64(0)
    good = [e for e in received if e.arg0 == PROBE_FD and e.pid == os.getpid()]
    return min(len(good), counted)
