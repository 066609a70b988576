#!/usr/bin/env python3
"""What naming Python frames mid-batch costs the tool: `cpu` with DWARF unwinding (the default)
on a Python target, with the ring buffer read again every CATCH_UP_EVERY samples while a batch
is unwound (collectors/cpu_dwarf.py, the default) and with that catch-up turned off (arrivals
named at the next poll only), in interleaved rounds.

Each catch-up that finds new samples starts a new naming generation, and a cached code object
is checked again (one small read of its head) once per generation it is named in: more reads
than one generation per poll. The workload: two threads calling through a chain of Python
functions for `--seconds` of wall time each run. For each mode the tool's CPU time (its own and
its helper processes', from wait4) is printed per 1,000 samples, as medians, and the ratio of
the two.

Run as root: `.venv/bin/python bench/python_catch_up.py [--rounds 3] [--seconds 5] [--hz 999]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import env_with_src

WORKLOAD = """
import sys, threading, time

def leaf(n):
    return sum(i * i for i in range(n))

def middle(n):
    return leaf(n) + leaf(n // 2)

def top(until):
    while time.monotonic() < until:
        middle(200)

until = time.monotonic() + float(sys.argv[1])
threads = [threading.Thread(target=top, args=(until,)) for _ in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""

# Runs the CLI in this interpreter with the catch-up's period set first (never: 10**9).
RUNNER = """
import sys
from otlp_ebpf.collectors import cpu_dwarf
cpu_dwarf.CATCH_UP_EVERY = int(sys.argv[1])
from otlp_ebpf.cli.app import run
sys.exit(run(sys.argv[2:]))
"""


def measure(every: int, hz: int, seconds: float, work: Path) -> tuple[float, int]:
    """The tool's CPU seconds and the samples it counted, for one run."""
    out = work / f"cpu-{every}.json"
    argv = [sys.executable, "-c", RUNNER, str(every), "-q", "cpu", "-F", str(hz)]
    argv += ["-o", str(out), "--", sys.executable, str(work / "app.py"), str(seconds)]
    quiet = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_WRONLY, 0) for fd in (1, 2)]
    pid = os.posix_spawn(sys.executable, argv, env_with_src(), file_actions=quiet)
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"otlp-ebpf cpu exited with {os.waitstatus_to_exitcode(status)}")
    snapshot = json.loads(out.read_text())
    samples = sum(int(s["count"]) for s in snapshot["stacks"])
    return usage.ru_utime + usage.ru_stime, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--hz", type=int, default=999)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="otlp-ebpf-bench-"))
    (work / "app.py").write_text(WORKLOAD)
    modes = {"catch-up every 16 samples": 16, "no catch-up": 10**9}
    per_k: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(args.rounds):
        for name, every in modes.items():
            cpu_s, samples = measure(every, args.hz, args.seconds, work)
            per_k[name].append(1000.0 * cpu_s / max(samples, 1))
            print(f"{name:28s} {cpu_s:6.2f} s CPU for {samples:6d} samples", flush=True)
    medians = {name: statistics.median(v) for name, v in per_k.items()}
    for name, value in medians.items():
        print(f"{name:28s} median {value * 1000:7.1f} ms of tool CPU per 1,000 samples")
    ratio = medians["catch-up every 16 samples"] / medians["no catch-up"]
    print(f"catch-up / none: {ratio:.3f}x")


if __name__ == "__main__":
    main()
