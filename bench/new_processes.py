#!/usr/bin/env python3
"""What each new process costs the DWARF cpu sampler, on the agent's soak churn.

A shell starts `/bin/true`, `ls /`, `id` and `uname` without pause (the churn of
bench/agent_soak.py); the sampler follows it at `-F` Hz, polling like the agent (every 250 ms,
woken by a new process's first sample), so almost every sample is of a process it has not seen
yet: its maps read (or taken from what the kernel recorded at its exit), its sample unwound, its
stack named, the process retired. Printed per tree: the sampler thread's CPU per new process
(median of the runs), the BPF run time per exec on the host, and what was unwound and named (the
share of samples whose walk stopped early, for whatever reason, and of frames named); and,
apart, the CPU that reading the maps and details of a live process of a program already seen
takes (60 `sleep`s, one after the other).

As the agent runs (system-wide), a new image is not held at its first sample for its Python
interpreter to be known: that hold, which a targeted run uses, is turned off here.

    python bench/new_processes.py [--seconds 20] [--hz 49] [--runs 3] [--src DIR ...]

`--src` names the src/ directory of each tree to compare (the runs alternate between them, in
one session on this machine); by default this tree's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _util import ROOT

CHURN = "while :; do /bin/true; ls / >/dev/null; id >/dev/null; uname >/dev/null; done"

# One run in a child interpreter of the tree under test; prints one JSON line.
RUN = r"""
import json, sys, time
from otlp_ebpf.collectors import base
from otlp_ebpf.collectors.cpu_dwarf import DwarfSampler
from otlp_ebpf.runtime import stats
from otlp_ebpf.runtime.loader import BpfObject
from otlp_ebpf.runtime.stats import StatsSession
from otlp_ebpf.targets import TargetSpec

seconds, hz, churn = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
set_rodata = BpfObject.set_rodata

def no_hold(self, **values):  # as the agent runs: no hold at a new image's first sample
    if "python_hold" in values:
        values["python_hold"] = 0
    return set_rodata(self, **values)

BpfObject.set_rodata = no_hold
targets = base.Targets(TargetSpec(command=("sh", "-c", churn)))
sampler = DwarfSampler(frequency_hz=hz)

def execs():
    return stats.program_stats(sampler.obj.program_fd("dwarf_exec"))

try:
    with StatsSession():
        sampler.start(targets)
        targets.release()
        sampler.prefetch = False  # system-wide: no table is asked for ahead of a sample
        warm = time.monotonic() + 3  # tables decoded, symbols loaded
        while time.monotonic() < warm:
            sampler.poll(250)
        cpu0, seen0 = time.thread_time(), sampler.captures + sampler.recorded
        exec0, bpf0 = execs(), sampler.cost()[0]
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            sampler.poll(250)
        cpu = time.thread_time() - cpu0
        seen = sampler.captures + sampler.recorded - seen0
        exec1, bpf = execs(), sampler.cost()[0] - bpf0
        sampler.drain()
        stopped = sum(sampler.unwind_failures().values())
        named = sampler.symbolizer.stats
finally:
    targets.abandon()
    base.cleanup()
    sampler.close()
runs = exec1.run_cnt - exec0.run_cnt
print(json.dumps({
    "new_processes": seen,
    "cpu_ms_per_process": 1000 * cpu / max(seen, 1),
    "exec_ns": (exec1.run_time_ns - exec0.run_time_ns) / max(runs, 1),
    "bpf_pct": 100 * bpf / 1e9 / seconds,
    "stopped": stopped / max(sampler.samples_total, 1),
    "named": named.resolved / max(named.resolved + named.unresolved, 1),
}))
"""


# The maps of new processes of one program (60 `sleep`s), read with a shared registry of held
# files as the sampler reads them: median CPU per process, the first few left out.
CAPTURES = r"""
import statistics, subprocess, time
from otlp_ebpf.collectors import base
from otlp_ebpf.symbolize.procmaps import OpenFiles, ProcessMaps

files, spent = OpenFiles(), []
sleepers = [subprocess.Popen(["/bin/sleep", "30"]) for _ in range(60)]
time.sleep(0.5)  # all exec'd
for sleeper in sleepers:
    started = time.thread_time()
    ProcessMaps.capture(sleeper.pid, files)
    base.read_process_info(sleeper.pid)
    spent.append(time.thread_time() - started)
for sleeper in sleepers:
    sleeper.kill()
    sleeper.wait()
print(1e6 * statistics.median(spent[5:]))
"""


def capture_us(src: str) -> float:
    env = dict(os.environ, PYTHONPATH=src)
    out = subprocess.run(
        [sys.executable, "-c", CAPTURES], env=env, capture_output=True, text=True, check=True
    ).stdout
    return float(out.strip().splitlines()[-1])


def run(src: str, seconds: float, hz: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=src)
    out = subprocess.run(
        [sys.executable, "-c", RUN, str(seconds), str(hz), CHURN],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--hz", type=int, default=49)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--src", action="append", help="a tree's src/ directory (repeatable)")
    args = parser.parse_args()
    trees = [os.path.abspath(s) for s in args.src or [str(ROOT / "src")]]
    results: dict[str, list[dict[str, float]]] = {t: [] for t in trees}
    for _ in range(args.runs):
        for tree in trees:
            results[tree].append({**run(tree, args.seconds, args.hz), "capture": capture_us(tree)})
    print(f"the soak's churn, -F {args.hz}, {args.seconds:.0f} s, median (range) of {args.runs}")
    for tree, runs in results.items():
        per = sorted(r["cpu_ms_per_process"] for r in runs)
        print(
            f"{Path(tree).parent.name or tree:24}  {statistics.median(per):.3f} ms per new process "
            f"({per[0]:.3f}-{per[-1]:.3f}), "
            f"{statistics.median(r['new_processes'] for r in runs):.0f} processes, "
            f"exec program {statistics.median(r['exec_ns'] for r in runs):.0f} ns, "
            f"BPF {statistics.median(r['bpf_pct'] for r in runs):.3f}% of a core, "
            f"walks stopped early {statistics.median(r['stopped'] for r in runs):.1%}, "
            f"frames named {statistics.median(r['named'] for r in runs):.1%}; "
            f"a live process's maps and details read in "
            f"{statistics.median(r['capture'] for r in runs):.0f} us"
        )


if __name__ == "__main__":
    main()
