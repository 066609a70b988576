#!/usr/bin/env python3
"""Cost of `otlp-ebpf cpu`: attach latency, the tool's own wall/CPU/peak RSS for a 3 s
profile at 499 Hz, and the slowdown of a CPU-bound target at 99 and 999 Hz as a ratio against
an unprofiled run in the same session (and against `perf record` / bpftrace where installed).

The machine is shared and noisy: every figure is a median of interleaved rounds, and
slowdowns are ratios against a baseline measured alongside. Goals: attach <= 100 ms,
slowdown <= 0.5% at 99 Hz, peak RSS <= 70 MB. Run as root: `.venv/bin/python bench/cpu.py`.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

OTLP_EBPF = str(Path(sys.executable).with_name("otlp-ebpf"))
ROUNDS = 5

# Fixed work (not fixed time), so a slower run shows as a longer one; prints its own wall time.
WORKLOAD_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static volatile unsigned long sink;
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}
__attribute__((noinline)) void work(long n) { for (long i = 0; i < n; i++) sink += i; }
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 400000000L;
    double t0 = now();
    work(n);
    printf("%.6f\n", now() - t0);
    return 0;
}
"""


def build_workload(directory: Path) -> Path:
    src = directory / "work.c"
    src.write_text(WORKLOAD_C)
    out = directory / "work"
    subprocess.run(["gcc", "-O1", "-fno-omit-frame-pointer", "-o", str(out), str(src)], check=True)
    return out


def calibrate(workload: Path, seconds: float) -> int:
    """Iterations that take about `seconds` unprofiled."""
    probe = 100_000_000
    took = float(
        subprocess.run(
            [str(workload), str(probe)], capture_output=True, text=True, check=True
        ).stdout
    )
    return int(probe * seconds / took)


def timed_target(argv_prefix: list[str], workload: Path, n: int) -> float:
    """The workload's own wall time when started under `argv_prefix` (empty: unprofiled)."""
    done = subprocess.run(
        [*argv_prefix, str(workload), str(n)], capture_output=True, text=True, check=True
    )
    # The workload's line is the only bare number (a profiler may print its table too).
    return next(float(x) for x in done.stdout.split() if _is_number(x))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return "." in text


def attach_latency_ms() -> float:
    """Open + load + attach of the cpu object with perf events on every CPU, in process."""
    from otlp_ebpf.collectors import base
    from otlp_ebpf.collectors.cpu import CpuConfig, FramePointerSampler
    from otlp_ebpf.symbolize.resolver import Symbolizer
    from otlp_ebpf.targets import TargetSpec

    samples = []
    for _ in range(ROUNDS):
        with Symbolizer() as symbolizer:
            sampler = FramePointerSampler(CpuConfig(frequency_hz=499), symbolizer)
            targets = base.Targets(TargetSpec())
            t0 = time.perf_counter()
            sampler.start(targets)
            samples.append((time.perf_counter() - t0) * 1000)
            base.cleanup()
    return statistics.median(samples)


def tool_cost(workload: Path, n: int, out_dir: Path) -> tuple[float, float, float]:
    """Wall s, CPU s and peak RSS MB of a 3 s system-wide profile at 499 Hz, busy CPUs."""
    busy = [
        subprocess.Popen([str(workload), str(n * 3)], stdout=subprocess.DEVNULL) for _ in range(2)
    ]
    try:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [OTLP_EBPF, "-q", "cpu", "-d", "3", "-F", "499", "-o", str(out_dir / "p.json")],
            stdout=subprocess.DEVNULL,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        for p in busy:
            p.kill()
            p.wait()
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def slowdowns(workload: Path, n: int, out_dir: Path) -> dict[str, float]:
    """Median target wall time per profiler over the unprofiled median, interleaved rounds."""
    runners: dict[str, list[str]] = {
        "unprofiled": [],
        "otlp-ebpf 99 Hz": [
            OTLP_EBPF,
            "-q",
            "cpu",
            "-F",
            "99",
            "-o",
            str(out_dir / "a.json"),
            "--",
        ],
        "otlp-ebpf 999 Hz": [
            OTLP_EBPF,
            "-q",
            "cpu",
            "-F",
            "999",
            "-o",
            str(out_dir / "b.json"),
            "--",
        ],
    }
    if shutil.which("perf"):
        runners["perf record -g 99 Hz"] = [
            "perf",
            "record",
            "-q",
            "-F",
            "99",
            "-g",
            "-o",
            str(out_dir / "perf.data"),
            "--",
        ]
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(ROUNDS):
        for name, prefix in runners.items():
            times[name].append(timed_target(prefix, workload, n))
    base = statistics.median(times["unprofiled"])
    ratios = {name: statistics.median(t) / base for name, t in times.items()}
    bpftrace = shutil.which("bpftrace")
    if bpftrace:
        ratios["bpftrace profile:hz:99"] = bpftrace_ratio(bpftrace, workload, n, base)
    return ratios


def bpftrace_ratio(bpftrace: str, workload: Path, n: int, base: float) -> float:
    program = "profile:hz:99 { @[ustack, kstack] = count(); }"
    runs = []
    for _ in range(3):
        done = subprocess.run(
            [bpftrace, "-e", program, "-c", f"{workload} {n}"],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(next(float(x) for x in done.stdout.split() if _is_number(x)))
    return statistics.median(runs) / base


def report(name: str, value: str, goal: str = "", ok: Callable[[], bool] | None = None) -> None:
    verdict = "" if ok is None else ("  ok" if ok() else "  MISSED")
    print(f"{name:<34} {value:>12}  {goal}{verdict}")


def main() -> int:
    if os.geteuid() != 0:
        print("bench/cpu.py needs root (BPF)", file=sys.stderr)
        return 3
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp)
        workload = build_workload(out_dir)
        n = calibrate(workload, 2.0)
        attach = attach_latency_ms()
        report(
            "attach latency (median)", f"{attach:.1f} ms", "goal <= 100 ms", lambda: attach <= 100
        )
        wall, cpu_s, rss = tool_cost(workload, n, out_dir)
        report("3 s profile at 499 Hz: wall", f"{wall:.2f} s")
        report("3 s profile at 499 Hz: CPU", f"{cpu_s:.2f} s")
        report(
            "3 s profile at 499 Hz: peak RSS", f"{rss:.1f} MB", "goal <= 70 MB", lambda: rss <= 70
        )
        for name, ratio in slowdowns(workload, n, out_dir).items():
            if name == "unprofiled":
                continue
            goal = "goal <= 1.005" if name == "otlp-ebpf 99 Hz" else ""
            check = (lambda r=ratio: r <= 1.005) if goal else None
            report(f"target slowdown, {name}", f"{ratio:.4f}x", goal, check)
    return 0


if __name__ == "__main__":
    sys.exit(main())
