"""What folding an exited process's syscall rows costs: the syscalls collector, in process,
watches a shell start `ls /` 600 times (each `ls` owns ~28 rows) and drains the exits ring
four times a second, as the agent does. It prints, per exited process, the thread CPU user
space spent on its records and the BPF run time of the exit program (which sums the rows'
CPUs and deletes them: most of it is the kernel freeing the rows' per-CPU memory).

    python bench/exit_fold.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

from otlp_ebpf.collectors.syscalls import EXIT_PROGRAM, SyscallsCollector, SyscallsConfig
from otlp_ebpf.runtime.stats import StatsSession, program_stats

CHURN = "for i in $(seq 600); do ls / >/dev/null; done"
DRAIN_EVERY_S = 0.25


def one_run() -> tuple[float, float, int]:
    """(user space ms, BPF ms) per exited process, and how many exited."""
    collector = SyscallsCollector(SyscallsConfig(comm="ls"))
    with StatsSession():
        collector.start()
        assert collector.obj is not None and collector.exits is not None
        try:
            churn = subprocess.Popen(["sh", "-c", CHURN])
            cpu = 0.0
            while True:
                done = churn.poll() is not None
                time.sleep(DRAIN_EVERY_S)
                t0 = time.thread_time()
                collector.exits.drain()
                cpu += time.thread_time() - t0
                if done:
                    break
            bpf = program_stats(collector.obj.program_fd(EXIT_PROGRAM)).run_time_ns / 1e9
            exited = collector.exited.processes
        finally:
            collector.close()
            collector.obj.close()
    per = max(exited, 1)
    return cpu * 1000 / per, bpf * 1000 / per, exited


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = [one_run() for _ in range(args.runs)]
    for user, bpf, exited in runs:
        print(f"{exited} exited: {user:.3f} ms user space, {bpf:.3f} ms BPF per process")
    user = statistics.median(r[0] for r in runs)
    bpf = statistics.median(r[1] for r in runs)
    print(f"median per exited process: {user:.3f} ms user space + {bpf:.3f} ms BPF")


if __name__ == "__main__":
    main()
