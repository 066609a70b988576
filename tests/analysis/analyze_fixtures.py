"""Synthetic recordings for the analyze tests: four signals at a fixed interval, with an
optional fault injected in a known window."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from otlp_ebpf.model import (
    ConnTick,
    CpuSnapshot,
    CpuTick,
    MemSnapshot,
    MemTick,
    NetSnapshot,
    NetTick,
    ProcessInfo,
    RecordSnapshot,
    SyscallsSnapshot,
    SyscallStat,
    SyscallTick,
    TimelineRow,
)

CONN = "41 server 10.0.0.1:8080 > 10.0.0.2:51000"


@dataclass(frozen=True)
class Fault:
    kind: str  # errors | cpu_hog | leak | busy_leak | retransmits | latency | stall | lock
    start_row: int
    end_row: int  # exclusive


def latency_histogram(calls: int, p50: int, p99: int) -> dict[str, int]:
    """A row's sparse log2 histogram with those percentiles: 2% of the calls (at least one)
    in the p99 slot, the rest in the median's."""
    if not calls:
        return {}
    tail = max(1, round(0.02 * calls)) if p99 != p50 else 0
    slots = {str(p50.bit_length() - 1): calls - tail}
    if tail:
        slots[str(p99.bit_length() - 1)] = tail
    return {k: n for k, n in slots.items() if n}


def recording(
    rows: int = 60,
    interval: float = 1.0,
    fault: Fault | None = None,
    seed: int = 1,
    extra_syscalls: int = 0,
) -> RecordSnapshot:
    rng = np.random.default_rng(seed)
    timeline = []
    outstanding = 2_000_000
    errors_total = 0
    hz = 99
    for i in range(rows):
        on = fault is not None and fault.start_row <= i < fault.end_row
        kind = fault.kind if on and fault else ""
        read = int(rng.poisson(200 * interval))
        openat = int(rng.poisson(20 * interval))
        errors = int(rng.poisson(300 * interval)) if kind == "errors" else 0
        errors_total += errors
        p99 = int(2 ** rng.integers(12, 14))
        if kind == "latency":
            p99 = 2**23
        if kind == "stall":
            read = 0
        if kind == "lock":  # eight threads serialised on one mutex: a request at a time
            read //= 8
        syscalls = [
            SyscallTick("read", read, 0, 4096, p99, latency_histogram(read, 4096, p99)),
            SyscallTick("openat", openat + errors, errors, 8192, 16384),
        ]
        syscalls += [
            SyscallTick(f"sys{k}", int(rng.poisson(30 * interval)), 0, 1000, 2000)
            for k in range(extra_syscalls)
        ]
        server = int(rng.poisson(0.3 * hz * interval))
        hog = int(rng.poisson(0.95 * hz * interval)) if kind == "cpu_hog" else 0
        if kind == "busy_leak":  # the leaking process faults its new pages in, zeroing them
            hog = int(rng.poisson(0.15 * hz * interval))
        if kind == "stall":
            server = 0
        samples = {"41": server}
        functions = {"handle": server}
        if hog:
            samples["77"] = hog
            functions["spin"] = hog
        retrans = int(rng.poisson(40 * interval)) if kind == "retransmits" else 0
        tx = int(rng.normal(1_000_000, 50_000) * interval)
        if kind == "retransmits":
            tx //= 10
        if kind in ("leak", "busy_leak"):
            outstanding += int(3_000_000 * interval)
        else:
            outstanding += int(rng.integers(-20_000, 20_000))
        # Off-CPU (record --off-cpu): the server's eight threads sleep between requests;
        # under the lock, seven of them wait for it instead.
        waiting = 7.0 if kind == "lock" else 0.0
        sleeping = (8.0 - waiting) * rng.uniform(0.9, 1.0)
        blocked = {
            "clock_nanosleep (clock_nanosleep)": int(sleeping * 1e9 * interval),
            "__lll_lock_wait (futex)": int(waiting * rng.uniform(0.95, 1.0) * 1e9 * interval),
        }
        off_cpu = {"41": sum(blocked.values())}
        timeline.append(
            TimelineRow(
                t_s=round((i + 1) * interval, 6),
                cpu=CpuTick(samples, functions, off_cpu, blocked),
                syscalls=tuple(syscalls),
                net=NetTick((ConnTick(CONN, tx, tx // 2, retrans, 0, 200.0),), {}),
                mem=MemTick(
                    outstanding,
                    int(rng.poisson(500 * interval)),
                    int(rng.poisson(500 * interval)),
                    int(rng.poisson((750 if kind == "busy_leak" else 10) * interval)),
                ),
            )
        )
    duration = rows * interval
    common = dict(started_at="2026-01-01T00:00:00Z", duration_s=duration, host="h")
    errno = {"ENOENT": errors_total} if errors_total else {}
    sections = {
        "cpu": CpuSnapshot(**common, frequency_hz=hz),
        "syscalls": SyscallsSnapshot(
            **common,
            syscalls=(SyscallStat(41, "server", "openat", 100, errors_total, errno, 1, 1, 1, 1),),
        ),
        "net": NetSnapshot(**common),
        "mem": MemSnapshot(**common),
    }
    processes = (ProcessInfo(41, "server", "/srv/server"), ProcessInfo(77, "hog", "/bin/hog"))
    return RecordSnapshot(
        **common,
        processes=processes,
        signals=sections,
        interval_s=interval,
        timeline=tuple(timeline),
    )
