#!/usr/bin/env python3
"""Symbol tables and the flamegraph page: how long they take against a plain baseline doing
the least possible with the same input, measured in the same run (the machine is shared and
noisy, so only the ratios mean something).

1. /proc/kallsyms into KernelSymbols against reading it and splitting every line.
   Goal: <= 4x (measured 2.9x: 244 vs 84 ms with other work running).
2. libc with its libc6-dbg debug file into an ElfSymbolizer table against `nm` (C) reading
   the same debug file. Goal: <= 5x (measured 3.1x: 64 vs 21 ms).
3. A flamegraph page of 100,000 stacks against `json.dumps` of the same stacks.
   Goal: <= 5x (measured 1.4x).

Run: `.venv/bin/python bench/symbolize.py` (kallsyms needs root for real addresses).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

from otlp_ebpf.formatters.flamegraph_html import render_trees
from otlp_ebpf.formatters.flametree import build_tree
from otlp_ebpf.model import StackCount, StackProfile
from otlp_ebpf.symbolize.elf import ElfSymbolizer
from otlp_ebpf.symbolize.kernel import KernelSymbols

ROUNDS = 5
GOALS = {"kallsyms": 4.0, "libc symbols": 5.0, "flamegraph 100k stacks": 5.0}


def median_seconds(work: Callable[[], object]) -> float:
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def split_kallsyms() -> int:
    with open("/proc/kallsyms", "rb") as fh:
        return sum(len(line.split()) for line in fh)


def mapped_libc() -> str:
    """The libc this interpreter runs on, whatever the architecture's library directory."""
    with open("/proc/self/maps") as maps:
        return next((line.split()[-1] for line in maps if "/libc.so" in line), "")


LIBC = mapped_libc()


def libc_debug_file() -> str:
    return ElfSymbolizer().load_path(LIBC).debug_file


def nm_debug_file(path: str) -> None:
    subprocess.run(["nm", "--defined-only", path], stdout=subprocess.DEVNULL, check=True)


def wide_profile(stacks: int) -> StackProfile:
    return StackProfile(
        "cpu",
        "samples",
        "count",
        tuple(
            StackCount(1, 1, "big", ("main", f"mid{i % 300}", f"leaf{i}"), 1 + i % 7)
            for i in range(stacks)
        ),
    )


def render_page(profile: StackProfile) -> None:
    render_trees([("cpu", build_tree(profile), "count")], io.BytesIO(), title="big")


def dump_json(profile: StackProfile) -> None:
    json.dumps([[s.frames, s.count] for s in profile.stacks])


def main() -> int:
    figures: dict[str, tuple[float, float]] = {
        "kallsyms": (median_seconds(KernelSymbols.load), median_seconds(split_kallsyms))
    }
    debug = libc_debug_file() if LIBC and os.path.exists(LIBC) else ""
    if debug:
        figures["libc symbols"] = (
            median_seconds(lambda: ElfSymbolizer().load_path(LIBC)),
            median_seconds(lambda: nm_debug_file(debug)),
        )
    else:
        print("libc symbols: skipped (no libc6-dbg debug file for the system libc)")
    profile = wide_profile(100_000)
    figures["flamegraph 100k stacks"] = (
        median_seconds(lambda: render_page(profile)),
        median_seconds(lambda: dump_json(profile)),
    )
    failed = False
    for name, (ours, baseline) in figures.items():
        ratio = ours / baseline
        goal = GOALS[name]
        verdict = "ok" if ratio <= goal else "OVER GOAL"
        failed |= ratio > goal
        print(
            f"{name:24} {ours * 1000:8.1f} ms, baseline {baseline * 1000:8.1f} ms: "
            f"{ratio:5.2f}x (goal <= {goal:g}x) {verdict}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
