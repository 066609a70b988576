"""DWARF unwinding end to end: real samples of programs built without frame pointers."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

from otlp_ebpf.collectors import base
from otlp_ebpf.collectors.cpu_dwarf import TRUNCATED_FRAME, DwarfSampler
from otlp_ebpf.model import StackCount
from otlp_ebpf.targets import TargetSpec
from tests.conftest import SPIN_CPU_C, assert_ratio, build_c, sample_held_targets

pytestmark = pytest.mark.bpf

NO_FP = ("-O2", "-fomit-frame-pointer")

# main -> a -> hot1 and main -> b -> hot2 for argv[1] s of CPU time, hot1 spinning twice as long as
# hot2 (time, not iterations: the ratio holds on any CPU and on a busy machine).
TWO_TO_ONE = (
    SPIN_CPU_C
    + r"""
#include <stdlib.h>
__attribute__((noinline)) void hot1(double ms) { SPIN_CPU_MS(ms); }
__attribute__((noinline)) void hot2(double ms) { SPIN_CPU_MS(ms); }
__attribute__((noinline)) void a(void) { hot1(2.0); spin_sink++; }
__attribute__((noinline)) void b(void) { hot2(1.0); spin_sink++; }
int main(int argc, char **argv) {
    double end = thread_cpu_s() + atof(argv[1]);
    while (thread_cpu_s() < end) { a(); b(); }
    return 0;
}
"""
)

# The system libc's qsort calls back into the program's comparator, which spins; sorting goes
# on until argv[1] seconds of the program's CPU time have passed.
QSORT = (
    SPIN_CPU_C
    + r"""
#include <stdlib.h>
__attribute__((noinline)) int cmp(const void *x, const void *y) {
    for (int k = 0; k < 20000; k++) spin_sink += k;
    return *(const int *)x - *(const int *)y;
}
__attribute__((noinline)) void sort_all(double seconds) {
    int v[64];
    double end = thread_cpu_s() + seconds;
    for (int r = 0; thread_cpu_s() < end; r++) {
        for (int i = 0; i < 64; i++) v[i] = (i * 7919 + r) % 64;
        qsort(v, 64, sizeof v[0], cmp);
    }
    spin_sink += v[0];
}
int main(int argc, char **argv) { sort_all(atof(argv[1])); return 0; }
"""
)

# A SIGALRM handler that spins 4 ms of CPU time, interrupting a loop: frames above and below
# the signal frame.
SIGNAL = (
    SPIN_CPU_C
    + r"""
#include <signal.h>
#include <stdlib.h>
#include <sys/time.h>
volatile int ticks;
__attribute__((noinline)) void handler_spin(void) { SPIN_CPU_MS(4.0); }
__attribute__((noinline)) void on_alarm(int sig) { handler_spin(); ticks++; }
__attribute__((noinline)) void outer_loop(int limit) {
    while (ticks < limit) for (int k = 0; k < 1000; k++) spin_sink += k;
}
int main(int argc, char **argv) {
    struct itimerval it = {{0, 10000}, {0, 10000}};
    signal(SIGALRM, on_alarm);
    setitimer(ITIMER_REAL, &it, NULL);
    outer_loop(atoi(argv[1]));
    return 0;
}
"""
)

# Deep recursion (argv[2] levels, 200 by default) argv[1] times, the leaf spinning 3 ms of CPU
# time each time: a stack far larger than an 8 KB window.
DEEP = (
    SPIN_CPU_C
    + r"""
#include <stdlib.h>
__attribute__((noinline)) void leaf(double ms) { SPIN_CPU_MS(ms); }
__attribute__((noinline)) void down(int depth, double ms) {
    volatile char pad[256];
    pad[0] = (char)depth;
    if (depth) down(depth - 1, ms); else leaf(ms);
    spin_sink += pad[0];
}
int main(int argc, char **argv) {
    int depth = argc > 2 ? atoi(argv[2]) : 200;
    for (int i = 0; i < atoi(argv[1]); i++) down(depth, 3.0);
    return 0;
}
"""
)


@pytest.fixture(scope="module")
def workloads(cc: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("unwind")
    sources = {"two_to_one": TWO_TO_ONE, "qsort": QSORT, "signal": SIGNAL, "deep": DEEP}
    return {name: build_c(cc, src, out / name, *NO_FP) for name, src in sources.items()}


@pytest.fixture(scope="module", autouse=True)
def _cfi_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Unwind tables cached for this module's runs, never in the user's home."""
    CACHE_DIR.append(str(tmp_path_factory.mktemp("cfi-cache")))


CACHE_DIR: list[str] = []


def profile(argv: Sequence[str], **options: int) -> DwarfSampler:
    """Run `argv` held until attached, sampling it until it exits."""
    targets = base.Targets(TargetSpec(command=tuple(argv)))
    sampler = DwarfSampler(
        frequency_hz=options.pop("frequency_hz", 199), cache_dir=CACHE_DIR[-1], **options
    )
    try:
        sample_held_targets(sampler, targets)
        sampler.drain()
    finally:
        targets.abandon()
        base.cleanup()
    return sampler


def has_chain(frames: Sequence[str], chain: Sequence[str]) -> bool:
    """`chain` appears in `frames` in order (other frames may sit between its members)."""
    at = 0
    for frame in frames:
        if at < len(chain) and frame == chain[at]:
            at += 1
    return at == len(chain)


def ratio_error(first: int, second: int) -> float:
    """Standard error of first / second for two sampled (binomial-like) counts."""
    return float(first / second * (1 / first + 1 / second) ** 0.5)


def own_stacks(stacks: list[StackCount], comm: str) -> list[StackCount]:
    return [s for s in stacks if s.comm == comm]


def test_full_chains_and_ratio_without_frame_pointers(workloads: dict[str, Path]) -> None:
    sampler = profile([str(workloads["two_to_one"]), "2.5"])
    stacks = own_stacks(sampler.stacks(), "two_to_one")
    total = sum(s.count for s in stacks)
    hot1 = sum(s.count for s in stacks if has_chain(s.frames, ["_start", "main", "a", "hot1"]))
    hot2 = sum(s.count for s in stacks if has_chain(s.frames, ["_start", "main", "b", "hot2"]))
    assert total >= 300
    assert (hot1 + hot2) / total >= 0.90, Counter(";".join(s.frames) for s in stacks)
    assert_ratio(hot1, hot2, 2.0)
    assert sampler.cfi.stats.decoded + sampler.cfi.stats.from_disk >= 2  # program and libc


def test_frames_above_and_below_libc_qsort(workloads: dict[str, Path]) -> None:
    sampler = profile([str(workloads["qsort"]), "1.0"])
    stacks = own_stacks(sampler.stacks(), "qsort")
    total = sum(s.count for s in stacks)
    through_libc = sum(
        s.count
        for s in stacks
        if has_chain(s.frames, ["main", "sort_all", "qsort", "cmp"])
        or has_chain(s.frames, ["main", "sort_all", "qsort_r", "cmp"])
    )
    assert total >= 50
    assert through_libc / total >= 0.90, Counter(";".join(s.frames) for s in stacks)
    libc_frames = {
        f for s in stacks for f, m in zip(s.frames, s.modules, strict=True) if "libc" in m
    }
    assert libc_frames & {"qsort", "qsort_r"}


def test_signal_handler_frames_continue_into_the_interrupted_code(
    workloads: dict[str, Path],
) -> None:
    sampler = profile([str(workloads["signal"]), "150"])
    stacks = own_stacks(sampler.stacks(), "signal")
    in_handler = [s for s in stacks if "handler_spin" in s.frames]
    handler_samples = sum(s.count for s in in_handler)
    through_signal = sum(
        s.count
        for s in in_handler
        if has_chain(s.frames, ["main", "outer_loop", "on_alarm", "handler_spin"])
    )
    assert handler_samples >= 30
    assert through_signal / handler_samples >= 0.90, [";".join(s.frames) for s in in_handler]


def test_stack_deeper_than_the_window_is_marked_truncated(workloads: dict[str, Path]) -> None:
    sampler = profile([str(workloads["deep"]), "300"], window_bytes=8192)
    stacks = own_stacks(sampler.stacks(), "deep")
    in_leaf = [s for s in stacks if s.frames[-1] == "leaf"]
    leaf_samples = sum(s.count for s in in_leaf)
    truncated = sum(s.count for s in in_leaf if s.frames[0] == TRUNCATED_FRAME)
    assert leaf_samples >= 30
    assert truncated / leaf_samples >= 0.90
    assert sampler.unwind_failures().get("unwind: stack_window_exhausted", 0) >= truncated
    deep_one = max(in_leaf, key=lambda s: len(s.frames))
    assert deep_one.frames.count("down") >= 20  # 8 KB holds dozens of 256-byte frames


def test_a_full_window_reaches_main_from_deep_recursion(workloads: dict[str, Path]) -> None:
    # 80 frames of ~300 bytes (~24 KB) fit in a 32 KB window but not in the default 16 KB.
    sampler = profile([str(workloads["deep"]), "150", "80"], window_bytes=32768, frequency_hz=99)
    recursing = [s for s in own_stacks(sampler.stacks(), "deep") if "down" in s.frames]
    total = sum(s.count for s in recursing)
    whole = sum(
        s.count
        for s in recursing
        if s.frames[0] != TRUNCATED_FRAME and has_chain(s.frames, ["_start", "main", "down"])
    )
    assert total >= 20
    assert whole / total >= 0.90, (whole, total)
    deepest = max(recursing, key=lambda s: s.frames.count("down"))
    assert deepest.frames.count("down") == 81  # down(80) ... down(0): every level


@pytest.mark.skipif(shutil.which("perf") is None, reason="perf (linux-perf) is not installed")
def test_ratio_matches_perf_dwarf_call_graphs(workloads: dict[str, Path], tmp_path: Path) -> None:
    binary = str(workloads["two_to_one"])
    data = tmp_path / "perf.data"
    subprocess.run(
        [
            "perf",
            "record",
            "-q",
            "-F",
            "199",
            "--call-graph",
            "dwarf",
            "-o",
            str(data),
            binary,
            "2",
        ],
        check=True,
        capture_output=True,
    )
    script = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "ip,sym"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    perf_counts = Counter(
        "hot1" if "hot1" in block else "hot2" if "hot2" in block else "other"
        for block in script.split("\n\n")
        if block.strip()
    )
    perf_pair = (perf_counts["hot1"], perf_counts["hot2"])
    perf_ratio = perf_pair[0] / perf_pair[1]

    stacks = own_stacks(profile([binary, "2"]).stacks(), "two_to_one")
    ours = {
        hot: sum(s.count for s in stacks if has_chain(s.frames, ["main", hot]))
        for hot in ("hot1", "hot2")
    }
    # Two independent sampled ratios: they agree within the sampling error of both.
    difference = abs(ours["hot1"] / ours["hot2"] - perf_ratio)
    error = (ratio_error(ours["hot1"], ours["hot2"]) ** 2 + ratio_error(*perf_pair) ** 2) ** 0.5
    assert difference <= max(0.15 * perf_ratio, 3 * error), (ours, perf_counts)


def test_sample_header_mirror_matches_the_object_btf() -> None:
    from otlp_ebpf.collectors.cpu_dwarf import HEADER_BYTES, MAX_WINDOW, DwarfSampleHeader
    from otlp_ebpf.runtime.btf import struct_layout
    from otlp_ebpf.runtime.loader import BpfObject

    with BpfObject.open("cpu_dwarf") as obj:
        size, offsets = struct_layout(obj, "dwarf_sample")
    assert size == HEADER_BYTES + MAX_WINDOW
    for name, *_ in DwarfSampleHeader._fields_:
        assert offsets[name] == getattr(DwarfSampleHeader, name).offset, name
    assert offsets["stack"] == HEADER_BYTES
