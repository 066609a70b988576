"""Small snapshots with known figures for the `ask` tests, one per kind, and a recording
whose trouble sits in known seconds."""

from __future__ import annotations

import json
from pathlib import Path

from otlp_ebpf.model import (
    Allocation,
    Connection,
    CpuSnapshot,
    CpuTick,
    MemSnapshot,
    NetSnapshot,
    ProcessInfo,
    RecordSnapshot,
    Snapshot,
    StackCount,
    SyscallsSnapshot,
    SyscallStat,
    SyscallTick,
    TimelineRow,
)

COMMON = {"started_at": "2026-12-05T00:00:00Z", "duration_s": 10.0, "host": "testhost"}
PROCESSES = (ProcessInfo(100, "server"), ProcessInfo(200, "worker"))


def stat(
    pid: int, comm: str, name: str, count: int, errno: dict[str, int], p99: int
) -> SyscallStat:
    errors = sum(errno.values())
    return SyscallStat(pid, comm, name, count, errors, errno, count * 1000, p99 // 4, p99, p99 * 2)


def syscalls_snapshot() -> SyscallsSnapshot:
    """read: 1,234 calls (1,000 + 234); openat fails 30 of 40 (ENOENT 25, EACCES 5);
    futex is the slowest (p99 2,000,000 ns); close fails 3 of 3 (EBADF)."""
    return SyscallsSnapshot(
        **COMMON,
        processes=PROCESSES,
        syscalls=(
            stat(100, "server", "openat", 40, {"ENOENT": 25, "EACCES": 5}, 8_000),
            stat(100, "server", "read", 1_000, {}, 4_000),
            stat(200, "worker", "read", 234, {"EAGAIN": 2}, 4_000),
            stat(200, "worker", "futex", 50, {}, 2_000_000),
            stat(200, "worker", "close", 3, {"EBADF": 3}, 1_000),
        ),
    )


def cpu_snapshot(parse_json: int = 600) -> CpuSnapshot:
    """Self: parse_json 600 of 1,000 samples (60%), compress 300, idle_loop 100.
    Off-CPU: wait_io 5,000,000 ns blocked, nanosleep 1,000,000 ns."""
    stacks = (
        StackCount(100, 100, "server", ("main", "handle", "parse_json"), parse_json),
        StackCount(100, 100, "server", ("main", "handle", "compress"), 300),
        StackCount(200, 200, "worker", ("main", "idle_loop"), 100),
    )
    off = (
        StackCount(100, 100, "server", ("main", "wait_io"), 3, total_ns=5_000_000),
        StackCount(200, 200, "worker", ("main", "nanosleep"), 1, total_ns=1_000_000),
    )
    return CpuSnapshot(
        **COMMON,
        processes=PROCESSES,
        samples_total=sum(s.count for s in stacks),
        stacks=stacks,
        off_cpu=off,
    )


def net_snapshot() -> NetSnapshot:
    """10.0.0.2 moved 1,020,000 bytes and retransmitted 12; 10.0.0.3 got 2 resets;
    drops: NO_SOCKET 9, TCP_CSUM 3."""
    conns = (
        Connection(
            100,
            "server",
            2,
            "10.0.0.1",
            8080,
            "10.0.0.2",
            51000,
            1_000_000,
            20_000,
            900.0,
            12,
            srtt_us=350.0,
        ),
        Connection(
            100,
            "server",
            2,
            "10.0.0.1",
            8080,
            "10.0.0.3",
            52000,
            5_000,
            500,
            20.0,
            1,
            srtt_us=90.0,
            resets_sent=2,
        ),
        Connection(
            200, "worker", 2, "10.0.0.1", 40000, "10.0.0.9", 5432, 700, 9_000, 5.0, 0, srtt_us=120.0
        ),
    )
    return NetSnapshot(
        **COMMON,
        processes=PROCESSES,
        connections=conns,
        retransmits=13,
        resets={"sent": 2, "received": 0},
        drops={"TCP_CSUM": 3, "NO_SOCKET": 9},
    )


def mem_snapshot() -> MemSnapshot:
    """load_cache holds 4,194,304 bytes in 64 allocations; handle 1,024 bytes in 2."""
    allocs = (
        Allocation(100, ("main", "load_cache", "malloc"), 4_194_304, 64, "server"),
        Allocation(100, ("main", "handle", "malloc"), 1_024, 2, "server"),
    )
    return MemSnapshot(
        **COMMON,
        processes=PROCESSES,
        outstanding=allocs,
        outstanding_bytes=4_195_328,
        allocations_total=500,
        frees_total=434,
    )


def recording() -> RecordSnapshot:
    """20 one-second rows: read 100 calls per row with p99 4,096 ns, except the row ending at
    4 s (p99 1,048,576 ns); openat 10 calls per row, and from 11 s to 15 s (rows ending 12..15)
    it fails 50 times per row (ENOENT)."""
    rows = []
    for i in range(20):
        t = float(i + 1)
        failing = 12 <= t <= 15
        read_p99 = 1_048_576 if t == 4 else 4_096
        rows.append(
            TimelineRow(
                t,
                cpu=CpuTick({"100": 50}, {"parse_json": 30, "compress": 20}),
                syscalls=(
                    SyscallTick("read", 100, 0, 1_024, read_p99),
                    SyscallTick(
                        "openat", 60 if failing else 10, 50 if failing else 0, 2_048, 8_192
                    ),
                ),
            )
        )
    sc = SyscallsSnapshot(
        **(COMMON | {"duration_s": 20.0}),
        syscalls=(
            stat(100, "server", "read", 2_000, {}, 4_096),
            stat(100, "server", "openat", 400, {"ENOENT": 200}, 8_192),
        ),
    )
    cpu = cpu_snapshot()
    return RecordSnapshot(
        **(COMMON | {"duration_s": 20.0}),
        processes=PROCESSES,
        signals={"syscalls": sc, "cpu": cpu},
        interval_s=1.0,
        timeline=tuple(rows),
    )


def write(path: Path, snapshot: Snapshot) -> str:
    path.write_text(json.dumps(snapshot.to_dict()))
    return str(path)
