"""Syscall tracing cost: a tight getppid loop untraced, traced by `otlp-ebpf syscalls`, by
`strace -c`, and by bpftrace (a syscount-style map count) where installed. The workload times
its own loop, so start-up and attach costs are left out. Prints rates and ratios measured in
this one run (the machine is shared: only ratios mean anything)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from _util import CLI, build, env_with_src, median_of, run_quiet

LOOP = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) getppid();
    clock_gettime(CLOCK_MONOTONIC, &b);
    FILE *f = fopen(argv[2], "w");
    fprintf(f, "%f\n", n / ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9));
    fclose(f);
    return 0;
}
"""
N = 2_000_000
RUNS = 3


def rate(prefix: list[str], n: int = N) -> float:
    with tempfile.NamedTemporaryFile(suffix=".rate") as out:
        run_quiet([*prefix, str(WORKLOAD), str(n), out.name], env=env_with_src())
        return float(Path(out.name).read_text())


WORKLOAD = build(LOOP, "getppid_loop")


def main() -> None:
    results = {"untraced": median_of(RUNS, lambda: rate([]))}
    results["otlp-ebpf syscalls"] = median_of(RUNS, lambda: rate([*CLI, "syscalls", "--"]))
    if shutil.which("strace"):
        results["strace -c -f"] = median_of(
            RUNS, lambda: rate(["strace", "-c", "-f", "-o", "/dev/null"], N // 20)
        )
    if shutil.which("bpftrace"):
        script = "tracepoint:raw_syscalls:sys_enter /pid == cpid/ { @[args->id] = count(); }"
        results["bpftrace count"] = median_of(RUNS, lambda: _bpftrace_rate(script))
    base = results["untraced"]
    ours = results["otlp-ebpf syscalls"]
    print(f"{'tool':<22}{'calls/s':>14}{'x untraced':>12}{'ours / it':>11}")
    for name, value in results.items():
        print(f"{name:<22}{value:>14,.0f}{value / base:>12.3f}{ours / value:>11.1f}")
    print(f"goal: ours >= 0.35x untraced -> {ours / base:.2f}x; ", end="")
    if "strace -c -f" in results:
        print(f">= 100x strace -> {ours / results['strace -c -f']:.0f}x")


def _bpftrace_rate(script: str) -> float:
    with tempfile.NamedTemporaryFile(suffix=".rate") as out:
        subprocess.run(
            ["bpftrace", "-q", "-e", script, "-c", f"{WORKLOAD} {N} {out.name}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
        )
        return float(Path(out.name).read_text())


if __name__ == "__main__":
    main()
