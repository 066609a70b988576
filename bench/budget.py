#!/usr/bin/env python3
"""`syscalls --budget 1` and `mem --budget 1`: the tool's steady-state cost measured from
outside, and how far the estimates made under sampling are from the truth and from an exact
run of the same workload.

Workloads (two processes, both cores busy for DURATION_S, each alternating a burst of events
with a slice of its own CPU time, so the event rate holds however often it is preempted):
- syscalls: bursts of getppid(); each process writes how many calls it made;
- mem: bursts of malloc/free of 16..1039 bytes, and one block of 1000 bytes in 5 leaked;
  each process writes how many bytes it leaked.
Two runs of each command: exact (no budget) and `--budget 1`. While each runs, this script
reads from outside the tool every 0.5 s the CPU of the tool and of its helper processes and the
run time of its BPF programs (bench/record_budget.py's `Outside`). The steady state is the
window from STEADY_FROM_S to the end minus one second. Printed: each run's steady cost in % of
one core, and each estimate against the workload's own count (the truth) and against the exact
run's estimate of the same rate (per second of workload).

Targets (issue 13): with --budget 1 the steady cost <= 1.5% of one core, the estimates within
10% of an exact run's. Run as root: `.venv/bin/python bench/budget.py [syscalls] [mem]
[record]` (record: `record --signals syscalls` on the syscalls workload).
Under --budget, syscalls are traced in duty-cycle windows (`syscalls_duty` per tick: the share
of the time the per-call programs were attached); mem samples blocks by bytes at the
allocator's entry (uprobe sessions), with probes on the workload's processes only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import CLI, build, env_with_src
from record_budget import Outside

DURATION_S = 15.0
MEM_RATE = "mem_sample_bytes"
STEADY_FROM_S = 3.0

COMMON = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static double clock_s(clockid_t id) {
    struct timespec t; clock_gettime(id, &t); return t.tv_sec + t.tv_nsec / 1e9;
}
static double now(void) { return clock_s(CLOCK_MONOTONIC); }
static void spin(double s) {   /* a slice of this process's CPU time */
    volatile double x = 0; double e = clock_s(CLOCK_PROCESS_CPUTIME_ID) + s;
    while (clock_s(CLOCK_PROCESS_CPUTIME_ID) < e) for (int i = 0; i < 100; i++) x += i;
}
__attribute__((noinline)) void sink(void *p) { __asm__ volatile("" :: "r"(p) : "memory"); }
"""

SYSCALLS = (
    COMMON
    + r"""
int main(int argc, char **argv) {
    double secs = atof(argv[1]);
    pid_t child = fork();
    long calls = 0;
    double end = now() + secs;
    while (now() < end) {
        for (int i = 0; i < 200; i++) syscall(SYS_getppid);
        calls += 200;
        spin(0.002);
    }
    char path[512]; snprintf(path, sizeof path, "%s.%d", argv[2], getpid());
    FILE *f = fopen(path, "w"); fprintf(f, "%ld\n", calls); fclose(f);
    if (child) waitpid(child, 0, 0);
    return 0;
}
"""
)

MEM = (
    COMMON
    + r"""
__attribute__((noinline)) void leak(void) { sink(malloc(1000)); }
int main(int argc, char **argv) {
    double secs = atof(argv[1]);
    pid_t child = fork();
    long leaked = 0, n = 0;
    double end = now() + secs;
    while (now() < end) {
        for (int i = 0; i < 200; i++, n++) {
            void *p = malloc(16 + (n % 1024)); sink(p); free(p);
            if (n % 5 == 0) { leak(); leaked += 1000; }
        }
        spin(0.002);
    }
    char path[512]; snprintf(path, sizeof path, "%s.%d", argv[2], getpid());
    FILE *f = fopen(path, "w"); fprintf(f, "%ld\n", leaked); fclose(f);
    sleep(1);  /* the leaks are outstanding at the end of the run */
    if (child) waitpid(child, 0, 0);
    return 0;
}
"""
)


def run(command: str, workload: Path, tmp: Path, name: str, *extra: str) -> tuple[float, dict, int]:
    """One run: steady cost from outside (% of one core), the snapshot, the workload's truth."""
    out, truth = tmp / f"{name}.json", tmp / f"{name}.truth"
    argv = [*CLI, command, *extra, "-o", str(out), "--", str(workload), str(DURATION_S), str(truth)]
    proc = subprocess.Popen(
        argv, env=env_with_src(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    outside = Outside(proc.pid)
    start = time.monotonic()
    released: float | None = None  # when the workload started (after the tool's attach)
    ended: float | None = None  # when it was seen gone (the tool then reads and symbolizes)
    marks: list[tuple[float, float]] = []
    while proc.poll() is None:
        marks.append((time.monotonic() - start, outside.cost_s()))
        if released is None and outside.workload:
            released = marks[-1][0]
        if released is not None and ended is None and not outside.workload_running():
            ended = marks[-1][0]
        time.sleep(0.5)
    # the steady state: from STEADY_FROM_S after the workload started to a second before it
    # ended (attaching mem's uprobes to every process mapping libc takes seconds: startup; the
    # final reading and symbolization are not steady state either)
    begin = (released or 0.0) + STEADY_FROM_S
    end = ended if ended is not None else marks[-1][0]
    steady = [m for m in marks if begin <= m[0] <= end - 1.0]
    (t0, c0), (t1, c1) = steady[0], steady[-1]
    told = sum(int(p.read_text()) for p in tmp.glob(f"{name}.truth.*"))
    return 100.0 * (c1 - c0) / (t1 - t0), json.loads(out.read_text()), told


def getppid_calls(doc: dict) -> int:
    return sum(s["count"] for s in doc["syscalls"] if s["name"] == "getppid")


def recorded_getppid_calls(doc: dict) -> int:
    return getppid_calls(doc["signals"]["syscalls"])


def leaked_bytes(doc: dict) -> int:
    return sum(a["bytes"] for a in doc["outstanding"] if "leak" in a["frames"])


def report(
    title: str,
    key: str,
    estimate: Callable[[dict], int],
    command: str,
    workload: Path,
    tmp: Path,
    *args: str,
) -> None:
    tmp.mkdir()
    exact_cost, exact, exact_truth = run(command, workload, tmp, "exact", *args)
    cost, budgeted, truth = run(command, workload, tmp, "budget", *args, "--budget", "1")
    rates = [t["rates"][key] for t in budgeted["self_cost"]["ticks"] if key in t["rates"]]
    print(f"{title}")
    print(f"  steady cost without a budget: {exact_cost:6.2f}% of one core")
    print(f"  steady cost with --budget 1:  {cost:6.2f}% of one core (target <= 1.5)")
    print(f"  cost ratio budget/exact: {cost / exact_cost:.3f}")
    print(f"  the tool's own account: steady {budgeted['self_cost']['steady_pct']:.2f}%")
    print(f"  {key} under the budget: {min(rates):g}..{max(rates):g}")
    exact_est, est = estimate(exact), estimate(budgeted)
    print(f"  exact run: {exact_est:,} counted, workload says {exact_truth:,}")
    print(f"  budget run: {est:,} estimated, workload says {truth:,}")
    if key == MEM_RATE:  # each 1000-byte leak comes with 5 malloc/free pairs
        rates = (f"{t / 1000 * 6 / DURATION_S:,.0f}" for t in (exact_truth, truth))
        print("  allocations a second by the workload, exact / budget run: " + " / ".join(rates))
    vs_truth = abs(est - truth) / truth
    # the two runs do different amounts of work (time-bound): compare per unit of truth
    vs_exact = abs(est / truth - exact_est / exact_truth) / (exact_est / exact_truth)
    print(f"  relative error: {100 * vs_truth:.1f}% vs the truth, {100 * vs_exact:.1f}% vs the")
    print("  exact run's rate (target <= 10%)")


def main() -> None:
    which = sys.argv[1:] or ["syscalls", "mem"]
    with tempfile.TemporaryDirectory() as tmp:
        if "syscalls" in which:
            syscalls = build(SYSCALLS, "workload_syscalls", "-O1")
            report(
                "syscalls", "syscalls_duty", getppid_calls, "syscalls", syscalls, Path(tmp) / "s"
            )
        if "record" in which:
            syscalls = build(SYSCALLS, "workload_syscalls", "-O1")
            report(
                "record --signals syscalls",
                "syscalls_duty",
                recorded_getppid_calls,
                "record",
                syscalls,
                Path(tmp) / "r",
                "--signals",
                "syscalls",
            )
        if "mem" in which:
            mem = build(MEM, "workload_mem", "-O1", "-g", "-fno-omit-frame-pointer")
            report("mem", MEM_RATE, leaked_bytes, "mem", mem, Path(tmp) / "m")


if __name__ == "__main__":
    main()
