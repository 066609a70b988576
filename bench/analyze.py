"""`analyze` speed and memory on synthetic four-signal recordings at 1 s rows: a 1-minute and a
1-hour one (targets: under 1 s and under 10 s), each with a fault in its last third.

Time is reported against a baseline measured in the same run: json-loading the same file
(what any reader of the recording pays). Memory: tracemalloc's peak while analysing, for
1-hour recordings with more and more series (it should grow linearly with them).
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from _util import ROOT, median_of

sys.path.insert(0, str(ROOT / "src"))

from otlp_ebpf.analysis.analyze import analyze
from otlp_ebpf.model import read_snapshot

RUNS = 3


def section(kind: str, duration: float) -> dict[str, object]:
    return {
        "kind": kind,
        "version": 1,
        "started_at": "2026-01-01T00:00:00Z",
        "duration_s": duration,
        "host": "bench",
    }


def synthetic(rows: int, syscalls: int, connections: int = 20, seed: int = 1) -> dict:
    """A recording: `syscalls` syscalls, 10 functions, 5 processes, `connections`
    connections, memory; an errno storm on sys0 in the last third."""
    rng = random.Random(seed)
    fault = range(2 * rows // 3, rows)
    timeline = []
    outstanding = 50_000_000
    for i in range(rows):
        storm = i in fault
        ticks = []
        for k in range(syscalls):
            count = rng.randint(80, 120)
            tail = rng.randint(1, 3)
            p99_slot = rng.randint(13, 14)
            ticks.append(
                {
                    "name": f"sys{k}",
                    "count": count,
                    "errors": 300 if storm and k == 0 else 0,
                    "p50_ns": 2000,
                    "p99_ns": 2**p99_slot,
                    # the row's latency histogram, as record writes it (sparse log2 slots)
                    "hist": {"10": count - tail - 5, "11": 5, str(p99_slot): tail},
                }
            )
        conns = [
            {
                "label": f"{100 + c} svc 10.0.0.1:8080 > 10.0.1.{c}:5{c:04d}",
                "tx_bytes": rng.randint(90_000, 110_000),
                "rx_bytes": rng.randint(9_000, 11_000),
                "retransmits": 0,
                "resets": 0,
                "srtt_us": 200.0,
            }
            for c in range(connections)
        ]
        outstanding += rng.randint(-50_000, 50_000)
        timeline.append(
            {
                "t_s": float(i + 1),
                "cpu": {
                    "samples": {str(100 + p): rng.randint(20, 30) for p in range(5)},
                    "functions": {f"fn{f}": rng.randint(8, 14) for f in range(10)},
                },
                "syscalls": ticks,
                "net": {"connections": conns, "drops": {"NOT_SPECIFIED": rng.randint(0, 3)}},
                "mem": {
                    "outstanding_bytes": outstanding,
                    "allocations": rng.randint(900, 1100),
                    "frees": rng.randint(900, 1100),
                    "page_faults": rng.randint(5, 15),
                },
            }
        )
    duration = float(rows)
    record = section("record", duration)
    record.update(
        {
            "interval_s": 1.0,
            "signals": {k: section(k, duration) for k in ("cpu", "syscalls", "net", "mem")},
            "timeline": timeline,
        }
    )
    return record


def write(document: dict, directory: Path, name: str) -> Path:
    path = directory / name
    path.write_text(json.dumps(document))
    return path


def timed(action) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def speed(path: Path, label: str) -> None:
    def load() -> None:
        json.loads(path.read_text())

    def full() -> None:
        result = analyze(read_snapshot(str(path)))
        assert result.findings and result.findings[0].kind == "syscall_errors"

    baseline = median_of(RUNS, lambda: timed(load))
    analysis = median_of(RUNS, lambda: timed(full))
    reading = median_of(RUNS, lambda: timed(lambda: read_snapshot(str(path))))
    snapshot = read_snapshot(str(path))
    result = analyze(snapshot)
    series = len(result.timeline.series) if result.timeline else 0
    print(
        f"{label}: {path.stat().st_size / 1e6:.1f} MB, {series} series; json.loads "
        f"{baseline * 1000:.0f} ms, read + analyze {analysis * 1000:.0f} ms "
        f"(x{analysis / baseline:.1f} of json.loads; reading the snapshot alone "
        f"x{reading / baseline:.1f}); top finding: {result.findings[0].summary}"
    )


def memory(directory: Path) -> None:
    print("1-hour recordings, memory while analysing (snapshot already read):")
    per_series = []
    for syscalls in (25, 50, 100, 200):
        snapshot = read_snapshot(str(write(synthetic(3600, syscalls), directory, "m.json")))
        tracemalloc.start()
        result = analyze(snapshot)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        series = len(result.timeline.series) if result.timeline else 1
        per_series.append(peak / series)
        print(
            f"  {series:4d} series: peak {peak / 1e6:6.1f} MB, {peak / series / 1e3:.1f} kB "
            "per series"
        )
    print(
        f"  per-series cost, largest / smallest run: x{max(per_series) / min(per_series):.2f} "
        "(1.0 = linear)"
    )


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="otlp-ebpf-bench-") as tmp:
        directory = Path(tmp)
        speed(write(synthetic(60, 40), directory, "minute.json"), "1 minute at 1 s")
        speed(write(synthetic(3600, 40), directory, "hour.json"), "1 hour at 1 s")
        memory(directory)


if __name__ == "__main__":
    main()
