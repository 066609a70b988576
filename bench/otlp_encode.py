"""CPU cost of turning a syscalls snapshot into the bytes of its OTLP metrics request, the work
the agent does every interval for every (process, syscall) row it holds.

The snapshot is synthetic and shaped like a busy host's: PROCESSES processes x SYSCALLS
syscalls, each row with a 40-slot latency histogram (the kernel's full range), one row in four
with errno counts, every process with an executable and a command line. Prints CPU seconds
(process time, so a loaded machine changes little) per 10,000 rows for building the request and
for serializing it, the median of RUNS runs, and their ratio (serializing is protobuf's own C
code over the same content, so the ratio says how close building comes to it on any machine).

    PYTHONPATH=src python bench/otlp_encode.py
"""

from __future__ import annotations

import statistics
import time

from otlp_ebpf.formatters.otlp_metrics import build_metrics_request
from otlp_ebpf.model import ProcessInfo, SyscallsSnapshot, SyscallStat

PROCESSES = 2_000
SYSCALLS = 20
SLOTS = 40
RUNS = 5
NAMES = [f"syscall_{i}" for i in range(SYSCALLS)]


def snapshot() -> SyscallsSnapshot:
    hist = tuple((slot * 7) % 13 for slot in range(SLOTS))
    rows = []
    for pid in range(1000, 1000 + PROCESSES):
        comm = f"worker-{pid}"
        for i, name in enumerate(NAMES):
            errno = {"ENOENT": 3, "EAGAIN": 1} if i % 4 == 0 else {}
            count = sum(hist)
            errors = sum(errno.values()) + (i % 8 == 0)  # some without an errno name
            total, p50, p99, top, low = count * 900, 512, 4096, 65536, 64
            row = SyscallStat(
                pid, comm, name, count, errors, errno, total, p50, p99, top, low, hist
            )
            rows.append(row)
    processes = tuple(
        ProcessInfo(pid, f"worker-{pid}", "/usr/bin/worker", ("/usr/bin/worker", "--id", str(pid)))
        for pid in range(1000, 1000 + PROCESSES)
    )
    return SyscallsSnapshot(
        started_at="2026-03-01T12:00:00+00:00",
        duration_s=10.0,
        host="bench",
        processes=processes,
        syscalls=tuple(rows),
    )


def measure(snap: SyscallsSnapshot) -> tuple[float, float, int]:
    """CPU seconds to build the request, to serialize it, and its size in bytes."""
    started = time.process_time()
    request = build_metrics_request(snap, {"deployment.environment": "bench"})
    built = time.process_time()
    payload = request.SerializeToString()
    done = time.process_time()
    return built - started, done - built, len(payload)


def main() -> None:
    snap = snapshot()
    rows = len(snap.syscalls)
    runs = [measure(snap) for _ in range(RUNS)]
    build_s = statistics.median(r[0] for r in runs)
    serialize_s = statistics.median(r[1] for r in runs)
    per = 10_000 / rows
    print(
        f"{rows:,} syscall rows ({PROCESSES:,} processes x {SYSCALLS} syscalls), {runs[0][2]:,} B"
    )
    print(f"build:     {build_s * per:.3f} CPU s per 10,000 rows")
    print(f"serialize: {serialize_s * per:.3f} CPU s per 10,000 rows")
    print(f"total:     {(build_s + serialize_s) * per:.3f} CPU s per 10,000 rows")
    # Serializing is protobuf's C code over the same content: a peer from this very run.
    print(f"build / serialize: {build_s / serialize_s:.1f}x")


if __name__ == "__main__":
    main()
