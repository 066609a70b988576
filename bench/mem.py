"""Slowdown of a malloc-heavy loop under `otlp-ebpf mem`, as a ratio to the same loop untraced.

The loop times itself (malloc + free pairs), so the ratio is the per-allocation cost the
target pays, not the tool's start-up. Runs are interleaved and medians compared, because the
machine is noisy. bcc's memleak is measured too when it is installed.

    .venv/bin/python bench/mem.py [PAIRS]
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from otlp_ebpf.collectors.mem import MemConfig, collect
from otlp_ebpf.targets import TargetSpec

LOOP = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
__attribute__((noinline)) void sink(void *p) { __asm__ volatile("" :: "r"(p) : "memory"); }
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < n; i++) { void *p = malloc(16 + (i % 512)); sink(p); free(p); }
    clock_gettime(CLOCK_MONOTONIC, &b);
    FILE *out = fopen(argv[2], "w");
    fprintf(out, "%f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    fclose(out);
    return 0;
}
"""
ROUNDS = 3


def build(workdir: Path) -> Path:
    src = workdir / "loop.c"
    src.write_text(LOOP)
    binary = workdir / "loop"
    cc = shutil.which("gcc") or "cc"
    subprocess.run([cc, "-O1", "-fno-omit-frame-pointer", "-o", str(binary), str(src)], check=True)
    return binary


def untraced(binary: Path, pairs: int, result: Path) -> float:
    subprocess.run([str(binary), str(pairs), str(result)], check=True)
    return float(result.read_text())


def traced(binary: Path, pairs: int, result: Path) -> float:
    snapshot = collect(
        MemConfig(targets=TargetSpec(command=(str(binary), str(pairs), str(result))))
    )
    assert snapshot.allocations_total >= pairs, "the loop's allocations were not all seen"
    return float(result.read_text())


def main() -> int:
    pairs = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        binary = build(workdir)
        result = workdir / "ns_per_pair"
        base_ns, mem_ns = [], []
        for _ in range(ROUNDS):
            base_ns.append(untraced(binary, pairs, result))
            mem_ns.append(traced(binary, pairs, result))
    base, ours = statistics.median(base_ns), statistics.median(mem_ns)
    print(f"malloc+free pairs: {pairs:,} per run, {ROUNDS} interleaved runs, medians")
    print(f"untraced:        {base:8.1f} ns/pair")
    print(f"otlp-ebpf mem:   {ours:8.1f} ns/pair  ratio {ours / base:6.1f}x")
    print(f"cost per traced malloc+free pair: {(ours - base) / 1000:.2f} us")
    memleak = shutil.which("memleak-bpfcc") or shutil.which("memleak")
    print(f"bcc memleak: {'installed at ' + memleak if memleak else 'not installed here'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
