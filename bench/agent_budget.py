"""The agent's cost on a syscall-heavy target, with and without its budget.

A C program calls getppid() in a tight loop (about a million calls a second untraced) and the
agent follows it (`-p PID --signals syscalls`), once with `--budget 0` (every call traced)
and once with the default `--budget 1` (the per-call programs duty-cycled, see
collectors/budget.py). Each run scrapes the agent's /metrics and prints its steady cost (its
CPU + BPF run time, % of one core, after warm-up), the ratio to the budget, and the target's
own call rate in the same run (the calls the agent's programs slowed down).

    python bench/agent_budget.py [--seconds 60] [--warmup 15]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import tempfile
import time

from _util import CLI, build, env_with_src
from agent_soak import Counting, free_port, scrape, start_receiver

# Counts its calls in a shared file every 100 ms: the call rate of the target itself.
LOOP = r"""
#include <stdio.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    unsigned long n = 0;
    struct timespec last, now;
    clock_gettime(CLOCK_MONOTONIC, &last);
    for (;;) {
        for (int i = 0; i < 10000; i++) getppid();
        n += 10000;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - last.tv_sec) * 1000000000L + now.tv_nsec - last.tv_nsec > 100000000L) {
            FILE *f = fopen(argv[1], "w");
            if (f) { fprintf(f, "%lu\n", n); fclose(f); }
            last = now;
        }
    }
}
"""


def own_seconds(m: dict[str, float]) -> float:
    return m.get("otlp_ebpf_cpu_seconds_total", 0) + m.get("otlp_ebpf_bpf_run_seconds_total", 0)


def calls(path: str) -> int:
    try:
        with open(path) as fh:
            return int(fh.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def run_once(binary: str, budget: str, seconds: float, warmup: float) -> tuple[float, float]:
    """(steady cost % of one core, target calls per second) of one agent run."""
    counts = Counting()
    server, url = start_receiver(counts)
    work = tempfile.mkdtemp(prefix="otlp-ebpf-agent-budget-")
    counter = os.path.join(work, "calls")
    target = subprocess.Popen([binary, counter])
    port = free_port()
    env = env_with_src()
    env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
    agent = subprocess.Popen(
        [*CLI, "agent", "-p", str(target.pid), "--signals", "syscalls", "--interval", "5",
         "--budget", budget, "--otlp", url, "--serve", f"127.0.0.1:{port}",
         "--spill-dir", os.path.join(work, "spill")],
        env=env, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    metrics = f"http://127.0.0.1:{port}/metrics"
    try:
        time.sleep(warmup)
        m0, t0, c0 = scrape(metrics), time.monotonic(), calls(counter)
        time.sleep(seconds)
        m1, t1, c1 = scrape(metrics), time.monotonic(), calls(counter)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=60)
        target.kill()
        target.wait()
        server.shutdown()
    return 100 * (own_seconds(m1) - own_seconds(m0)) / (t1 - t0), (c1 - c0) / (t1 - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=15.0)
    args = parser.parse_args()
    binary = str(build(LOOP, "getppid_loop", "-O2"))
    free = run_untraced(binary)
    print(f"target untraced: {free / 1e6:.2f} M calls/s")
    for budget in ("0", "1"):
        cost, rate = run_once(binary, budget, args.seconds, args.warmup)
        ratio = f"ratio to the budget {cost / float(budget):.2f}" if float(budget) else "no budget"
        print(
            f"--budget {budget}: agent {cost:.2f}% of one core ({ratio}); target "
            f"{rate / 1e6:.2f} M calls/s ({rate / free:.2f} of untraced)"
        )


def run_untraced(binary: str, seconds: float = 5.0) -> float:
    work = tempfile.mkdtemp(prefix="otlp-ebpf-agent-budget-")
    counter = os.path.join(work, "calls")
    target = subprocess.Popen([binary, counter])
    try:
        time.sleep(1.0)
        c0, t0 = calls(counter), time.monotonic()
        time.sleep(seconds)
        c1, t1 = calls(counter), time.monotonic()
    finally:
        target.kill()
        target.wait()
    return (c1 - c0) / (t1 - t0)


if __name__ == "__main__":
    main()
