"""Hand-built snapshots for the OTLP tests, made from the model dataclasses."""

from __future__ import annotations

from otlp_ebpf.model import (
    Allocation,
    Connection,
    CpuSnapshot,
    MemSnapshot,
    NetSnapshot,
    ProcessInfo,
    StackCount,
    SyscallsSnapshot,
    SyscallStat,
)

STARTED = "2026-03-01T12:00:00+00:00"
STARTED_NS = 1_772_366_400_000_000_000
APP = ProcessInfo(4242, "app", "/usr/local/bin/app", ("/usr/local/bin/app", "--serve"))
EXE = "/usr/local/bin/app"


def cpu_snapshot() -> CpuSnapshot:
    """Two processes; one stack seen twice for the same thread (must merge); kernel frames;
    an unresolved libc frame; an off-CPU stack."""
    read_stack = ("main", "handle", "read", "vfs_read_[k]")
    modules = (EXE, EXE, "/usr/lib/libc.so.6", "")
    return CpuSnapshot(
        started_at=STARTED,
        duration_s=2.5,
        host="box",
        processes=(APP,),
        frequency_hz=99,
        samples_total=18,
        stacks=(
            StackCount(4242, 4243, "app-worker", read_stack, 7, modules=modules),
            StackCount(4242, 4243, "app-worker", read_stack, 3, modules=modules),
            StackCount(4242, 4244, "app-io", ("main", "libc.so.6+0x1a2b"), 5),
            StackCount(77, 77, "sleeper", ("_start", "main"), 3),
        ),
        off_cpu=(
            StackCount(4242, 4243, "app-worker", ("main", "wait", "schedule_[k]"), 4, 9_000_000),
        ),
    )


def mem_snapshot() -> MemSnapshot:
    return MemSnapshot(
        started_at=STARTED,
        duration_s=1.0,
        host="box",
        processes=(APP,),
        outstanding=(
            Allocation(4242, ("main", "load", "malloc"), 65536, 4, "app"),
            Allocation(4242, ("main", "cache", "malloc"), 1024, 16, "app"),
        ),
        outstanding_bytes=66560,
        allocations_total=120,
        frees_total=100,
    )


def syscalls_snapshot() -> SyscallsSnapshot:
    return SyscallsSnapshot(
        started_at=STARTED,
        duration_s=3.0,
        host="box",
        processes=(APP,),
        syscalls=(
            # latencies: 1 call in [2,4) ns ... 3 calls in [16,32) ns
            SyscallStat(
                4242, "app", "read", 10, 3, {"EAGAIN": 2}, 500, 16, 31, 31, 2, (0, 1, 4, 2, 3)
            ),
            SyscallStat(4242, "app", "write", 4, 0, {}, 40, 8, 12, 12, 8, (0, 0, 0, 4)),
        ),
    )


def net_snapshot() -> NetSnapshot:
    return NetSnapshot(
        started_at=STARTED,
        duration_s=3.0,
        host="box",
        processes=(APP,),
        connections=(
            Connection(4242, "app", 2, "10.0.0.5", 40000, "10.0.0.9", 443, 1000, 5000, 12.0, 2,
                       srtt_us=100.0),
            Connection(4242, "app", 2, "10.0.0.5", 40001, "10.0.0.9", 443, 500, 0, 3.0, 0,
                       srtt_us=300.0),
            Connection(4242, "app", 10, "::1", 40002, "::1", 8080, 7, 9, 1.0, 0,
                       state="ESTABLISHED", open=True),
        ),
        retransmits=5,
        resets={"sent": 1, "received": 2},
        drops={"TCP_CSUM": 3},
    )  # fmt: skip
