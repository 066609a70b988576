"""`mem` on real processes: C programs leaking known blocks from known functions."""

from __future__ import annotations

import errno
import json
import mmap
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from otlp_ebpf.cli.app import run
from otlp_ebpf.collectors import base, mem
from otlp_ebpf.collectors.mem import (
    AllocInfo,
    AllocKey,
    MemConfig,
    StackKey,
    StackTotal,
    collect,
)
from otlp_ebpf.collectors.stack_store import StoredStack
from otlp_ebpf.model import Allocation, MemSnapshot
from otlp_ebpf.runtime import btf, stats, uprobe_multi
from otlp_ebpf.runtime.loader import BpfObject
from otlp_ebpf.targets import TargetSpec
from tests.conftest import build_c

pytestmark = pytest.mark.bpf

FLAGS = ("-O1", "-g", "-fno-omit-frame-pointer", "-fno-optimize-sibling-calls", "-fno-inline")

COMMON = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

/* Keeps the compiler from dropping allocations whose result looks unused. */
__attribute__((noinline)) void sink(void *p) { __asm__ volatile("" :: "r"(p) : "memory"); }

__attribute__((noinline)) void churn(int n) {
    for (int i = 0; i < n; i++) {
        void *p = malloc(16 + (i % 700));
        sink(p);
        free(p);
    }
    for (int i = 0; i < n / 10; i++) {
        char *p = calloc(3, 40);
        p = realloc(p, 900);
        sink(p);
        free(p);
    }
}

/* Pointers left on the stack would make valgrind call a block reachable. */
__attribute__((noinline)) void scrub_stack(void) {
    volatile char buf[8192];
    memset((char *)buf, 0, sizeof(buf));
}
"""

LEAKER = (
    COMMON
    + r"""
__attribute__((noinline)) void leak_here(int n, size_t size) {
    for (int i = 0; i < n; i++) {
        char *p = malloc(size);
        memset(p, 1, size);
        sink(p);
    }
}

int main(void) {
    churn(100000);
    leak_here(17, 4096);
    churn(1000);
    scrub_stack();
    return 0;
}
"""
)

VARIANTS = (
    COMMON
    + r"""
__attribute__((noinline)) void leak_calloc(void) {
    for (int i = 0; i < 3; i++) sink(calloc(5, 100));
}

__attribute__((noinline)) void leak_realloc(void) {
    char *p = malloc(10);
    p = realloc(p, 1000);
    p = realloc(p, 5000);
    sink(p);
}

__attribute__((noinline)) void leak_reallocarray(void) {
    sink(reallocarray(NULL, 7, 300));
}

__attribute__((noinline)) void leak_memalign(void) {
    for (int i = 0; i < 2; i++) {
        void *p = NULL;
        if (posix_memalign(&p, 64, 3000) == 0) sink(p);
    }
    sink(aligned_alloc(256, 1024));
}

__attribute__((noinline)) void freed_variants(void) {
    for (int i = 0; i < 500; i++) {
        void *p = NULL;
        posix_memalign(&p, 128, 777);
        free(p);
        p = reallocarray(NULL, 4, 64);
        p = realloc(p, 0);
        free(aligned_alloc(64, 640));
    }
}

int main(void) {
    churn(2000);
    leak_calloc();
    leak_realloc();
    leak_reallocarray();
    leak_memalign();
    freed_variants();
    scrub_stack();
    return 0;
}
"""
)

AGED = (
    COMMON
    + r"""
__attribute__((noinline)) void old_leak(void) { for (int i = 0; i < 3; i++) sink(malloc(111)); }
__attribute__((noinline)) void young_leak(void) { for (int i = 0; i < 4; i++) sink(malloc(222)); }

int main(void) {
    old_leak();
    usleep(1500000); /* old_leak's blocks are 1.5 s old at the end, young_leak's a moment */
    young_leak();
    return 0;
}
"""
)

LIVE = (
    COMMON
    + r"""
#include <signal.h>
static volatile sig_atomic_t go;
static void on_usr1(int sig) { (void)sig; go = 1; }

__attribute__((noinline)) void early_leak(void) { for (int i = 0; i < 5; i++) sink(malloc(1000)); }
__attribute__((noinline)) void late_leak(void) { for (int i = 0; i < 7; i++) sink(malloc(2048)); }

/* With an argument it waits allocating, so the probes go live in the middle of its calls. */
int main(int argc, char **argv) {
    (void)argv;
    signal(SIGUSR1, on_usr1);
    early_leak();
    printf("ready\n");
    fflush(stdout);
    while (!go) {
        if (argc > 1) {
            void *p = malloc(64);
            sink(p);
            free(p);
        } else {
            usleep(1000);
        }
    }
    churn(5000);
    late_leak();
    printf("leaked\n");
    fflush(stdout);
    for (;;) pause();
}
"""
)

MANY = (
    COMMON
    + r"""
__attribute__((noinline)) void leak_many(void) { for (int i = 0; i < 1500; i++) sink(malloc(32)); }

int main(void) {
    leak_many();
    return 0;
}
"""
)

MAPPER = (
    COMMON
    + r"""
/* Direct mmap calls: the wrapper keeps no frame, its caller must still be shown. */
__attribute__((noinline)) void map_leak(void) {
    for (int i = 0; i < 3; i++) {
        char *p = mmap(NULL, 8 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        sink(p);
    }
}

__attribute__((noinline)) void map_churn(void) {
    for (int i = 0; i < 50; i++) {
        char *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        sink(p);
        munmap(p, 4096);
    }
}

int main(void) {
    map_churn();
    map_leak();
    return 0;
}
"""
)

FAULTS = r"""
#include <sys/mman.h>
#include <string.h>
#define PAGES 1000

__attribute__((noinline)) void sink(void *p) { __asm__ volatile("" :: "r"(p) : "memory"); }

/* Not a leaf (gcc drops the frame pointer of leaf functions, hiding the caller). */
__attribute__((noinline)) void touch_pages(char *region) {
    for (int i = 0; i < PAGES; i++) region[i * 4096] = 1;
    sink(region);
}

int main(void) {
    char *region = mmap(NULL, PAGES * 4096, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    madvise(region, PAGES * 4096, MADV_NOHUGEPAGE);
    touch_pages(region);
    return 0;
}
"""


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory, cc: str) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("mem")
    sources = {
        "leaker": LEAKER,
        "variants": VARIANTS,
        "aged": AGED,
        "live": LIVE,
        "many": MANY,
        "mapper": MAPPER,
    }
    built = {name: build_c(cc, src, out / name, *FLAGS) for name, src in sources.items()}
    built["faults"] = build_c(cc, FAULTS, out / "faults", *FLAGS)
    return built


def launch(program: Path, **options: object) -> MemSnapshot:
    return collect(MemConfig(targets=TargetSpec(command=(str(program),)), **options))  # type: ignore[arg-type]


def from_function(snapshot: MemSnapshot, function: str) -> list[Allocation]:
    return [a for a in snapshot.outstanding if a.frames and a.frames[-1] == function]


def totals(allocations: list[Allocation]) -> tuple[int, int]:
    return sum(a.bytes for a in allocations), sum(a.count for a in allocations)


def describe(snapshot: MemSnapshot) -> str:
    """What a failed assertion shows: the run's counters and its largest stacks."""
    lines = [
        f"allocations {snapshot.allocations_total} frees {snapshot.frees_total}",
        f"lost {dict(snapshot.lost_events)} notes {list(snapshot.notes)}",
    ]
    lines += [f"  {a.bytes} B x{a.count} {';'.join(a.frames[-4:])}" for a in snapshot.outstanding]
    return "\n".join(lines[:40])


def test_launch_reports_exact_leak_and_nothing_from_churn(programs: dict[str, Path]) -> None:
    snapshot = launch(programs["leaker"])

    assert totals(from_function(snapshot, "leak_here")) == (17 * 4096, 17)
    leak = from_function(snapshot, "leak_here")[0]
    assert leak.frames[-2:] == ("main", "leak_here")
    assert leak.comm == "leaker"
    assert not [a for a in snapshot.outstanding if "churn" in a.frames]
    assert snapshot.allocations_total >= 100000 + 17
    assert snapshot.frees_total >= 100000
    assert snapshot.lost_total == 0
    assert snapshot.mode == "user"


def test_agrees_with_valgrind_definitely_lost(programs: dict[str, Path]) -> None:
    valgrind = shutil.which("valgrind")
    assert valgrind, "valgrind is part of the machine set-up (Makefile APT_PACKAGES)"
    for name, leakers in (
        ("leaker", ("leak_here",)),
        ("variants", ("leak_calloc", "leak_realloc", "leak_reallocarray", "leak_memalign")),
    ):
        report = subprocess.run(
            [valgrind, "--leak-check=full", str(programs[name])],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
        match = re.search(r"definitely lost: ([\d,]+) bytes in ([\d,]+) blocks", report)
        assert match, report
        expected = (int(match[1].replace(",", "")), int(match[2].replace(",", "")))
        snapshot = launch(programs[name])
        ours = totals([a for f in leakers for a in from_function(snapshot, f)])
        assert ours == expected, (name, describe(snapshot))


def test_calloc_realloc_memalign_paths(programs: dict[str, Path]) -> None:
    snapshot = launch(programs["variants"])

    assert totals(from_function(snapshot, "leak_calloc")) == (3 * 500, 3), describe(snapshot)
    assert totals(from_function(snapshot, "leak_realloc")) == (5000, 1)
    assert totals(from_function(snapshot, "leak_reallocarray")) == (7 * 300, 1)
    assert totals(from_function(snapshot, "leak_memalign")) == (2 * 3000 + 1024, 3)
    for quiet in ("freed_variants", "churn"):
        assert not [a for a in snapshot.outstanding if quiet in a.frames]


def test_direct_mmap_leaks_are_attributed_to_their_caller(programs: dict[str, Path]) -> None:
    snapshot = launch(programs["mapper"])

    mapped = [a for a in snapshot.outstanding if "map_leak" in a.frames]
    assert totals(mapped) == (3 * 8 * 4096, 3), describe(snapshot)
    stacks = "\n".join(";".join(a.frames) for a in mapped)
    for block in mapped:
        assert block.frames[-3:-1] == ("main", "map_leak"), stacks
        assert "mmap" in block.frames[-1], stacks  # the libc wrapper, where the system call is
    assert not [a for a in snapshot.outstanding if "map_churn" in a.frames]


def test_mmap_tracking_runs_on_mmap_calls_only(programs: dict[str, Path]) -> None:
    """The programs that see direct mmaps run on mmap and munmap, not on every system call
    of every process (which made them most of mem's cost on a busy machine).

    Their run counts are the whole machine's, so only what this test makes is counted: the
    fallback pair on every system call must not run at all while it makes 20,000 of them,
    and the per-syscall programs must run at least on its own mmaps and munmaps (other
    processes' add to that, never take from it)."""
    # The target says "ready" once started: attached any earlier, it may not have mapped libc.
    target = subprocess.Popen([str(programs["live"])], stdout=subprocess.PIPE, text=True)
    assert target.stdout is not None and target.stdout.readline() == "ready\n"
    collector = mem.MemCollector(MemConfig(targets=TargetSpec(pids=(target.pid,))))
    try:
        with stats.StatsSession():
            collector.start()
            assert collector.obj is not None
            obj = collector.obj

            def runs() -> tuple[int, int]:
                return (
                    base.program_cost(obj, mem.RAW_MMAP_PROGRAMS)[1],
                    base.program_cost(obj, mem.SYSCALL_MMAP_PROGRAMS)[1],
                )

            raw_before, per_call_before = runs()
            for _ in range(20000):  # system calls of a process that is not a target
                os.getppid()
            for _ in range(100):  # an mmap (enter and exit) and a munmap each
                mmap.mmap(-1, 4096).close()
            raw_after, per_call_after = runs()
    finally:
        collector.detach()
        base.cleanup()
        target.kill()
        target.communicate()
    assert raw_after - raw_before == 0, "the every-syscall pair ran"
    assert per_call_after - per_call_before >= 3 * 100, "the mmap and munmap programs missed calls"


def test_classic_uprobes_give_the_same_answer(programs: dict[str, Path]) -> None:
    snapshot = launch(programs["leaker"], multi_uprobes=False)

    assert totals(from_function(snapshot, "leak_here")) == (17 * 4096, 17)
    assert not [a for a in snapshot.outstanding if "churn" in a.frames]


@pytest.mark.skipif(not uprobe_multi.kernel_supports(), reason="classic uprobes already")
def test_kernel_refusing_multi_uprobes_falls_back_to_classic(
    programs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel that reports 6.6+ but answers BPF_LINK_CREATE for uprobe_multi with EINVAL
    (this one has the links, so the refusal is simulated at that one syscall)."""

    def refuse(*_: object, **__: object) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(mem.uprobe_multi, "attach_multi", refuse)
    snapshot = launch(programs["leaker"])

    assert totals(from_function(snapshot, "leak_here")) == (17 * 4096, 17)
    assert "multi-uprobe links refused by the kernel: one uprobe per function" in snapshot.notes


def test_full_table_is_counted_never_silent(programs: dict[str, Path]) -> None:
    snapshot = launch(programs["many"], table_size=1024)

    tracked = totals(from_function(snapshot, "leak_many"))[1]
    dropped = snapshot.lost_events["allocation table full"]
    assert 1000 < tracked <= 1024
    assert tracked + dropped >= 1500


def test_min_age_ignores_young_allocations(programs: dict[str, Path]) -> None:
    # 700 ms on each side: a busy machine's late end of the run cannot age young_leak's blocks
    # past the limit.
    snapshot = launch(programs["aged"], min_age_ms=700)

    assert totals(from_function(snapshot, "old_leak")) == (333, 3)
    assert from_function(snapshot, "young_leak") == []
    assert snapshot.min_age_ms == 700


@pytest.fixture(params=["sleeping", "allocating"])
def live_process(
    programs: dict[str, Path], request: pytest.FixtureRequest
) -> Iterator[subprocess.Popen[str]]:
    """A process that leaks once before and once after SIGUSR1; while it waits it sleeps, or
    allocates and frees at full speed (the attach then lands inside malloc calls: a call
    entered before its return probe was live must not swallow the calls after it)."""
    argv = [str(programs["live"])] + (["busy"] if request.param == "allocating" else [])
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    yield proc
    proc.kill()
    proc.wait()


def test_pid_mode_counts_only_allocations_after_attach(
    live_process: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    attached = threading.Event()
    original_start = mem.MemCollector.start

    def start_then_signal(self: mem.MemCollector) -> None:
        original_start(self)
        attached.set()

    monkeypatch.setattr(mem.MemCollector, "start", start_then_signal)
    lines: list[str] = []

    def leak_once_attached() -> None:
        if attached.wait(20):
            live_process.send_signal(signal.SIGUSR1)
            assert live_process.stdout is not None
            lines.append(live_process.stdout.readline().strip())

    trigger = threading.Thread(target=leak_once_attached)
    trigger.start()
    config = MemConfig(targets=TargetSpec(pids=(live_process.pid,)), duration_s=1.5)
    snapshot = collect(config)
    trigger.join(10)

    assert lines == ["leaked"]
    assert totals(from_function(snapshot, "late_leak")) == (7 * 2048, 7), describe(snapshot)
    assert from_function(snapshot, "early_leak") == []
    assert not [a for a in snapshot.outstanding if "churn" in a.frames]
    assert any("only allocations made after attach" in n for n in snapshot.notes)


def test_page_faults_by_stack(programs: dict[str, Path]) -> None:
    snapshot = launch(programs["faults"], page_faults=True)

    touched = [f for f in snapshot.page_faults if f.frames and f.frames[-1] == "touch_pages"]
    assert sum(f.count for f in touched) == 1000, snapshot.page_faults[:3]
    assert touched[0].frames[-2:] == ("main", "touch_pages")
    assert touched[0].comm == "faults"


def test_kernel_mode_reports_kernel_stacks(tmp_path: Path) -> None:
    def make_files() -> None:
        time.sleep(0.3)
        for i in range(200):
            (tmp_path / f"f{i}").write_text("x")

    writer = threading.Thread(target=make_files)
    writer.start()
    snapshot = collect(MemConfig(duration_s=1.0))
    writer.join()

    assert snapshot.mode == "kernel"
    assert snapshot.allocations_total > 200
    assert snapshot.frees_total > 0
    assert snapshot.outstanding
    assert all(f.endswith("_[k]") for a in snapshot.outstanding[:20] for f in a.frames)


def test_cli_json_and_table(programs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["mem", "--json", "--", str(programs["leaker"])]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "mem"
    leak = [o for o in data["outstanding"] if o["frames"][-1] == "leak_here"]
    assert [(o["bytes"], o["count"]) for o in leak] == [(69632, 17)]

    assert run(["mem", "--top", "1", "--", str(programs["leaker"])]) == 0
    out = capsys.readouterr().out
    assert out.startswith("69,632 bytes in 17 allocations from leaker (")
    assert "    leak_here\n    main\n" in out


def test_cli_rejects_unknown_pid(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["mem", "-p", "999999999"]) == 2
    assert "no such process" in capsys.readouterr().err


def test_ctypes_mirrors_match_object_btf() -> None:
    import ctypes

    obj = BpfObject.open("mem")
    try:
        for name, mirror in (
            ("alloc_key", AllocKey),
            ("alloc_info", AllocInfo),
            ("stack_key", StackKey),
            ("stack_total", StackTotal),
            ("stored_stack", StoredStack),
        ):
            size, members = btf.struct_layout(obj, name)
            assert size == ctypes.sizeof(mirror), name
            for field_name, *_ in mirror._fields_:
                assert members[field_name] == getattr(mirror, field_name).offset, name
    finally:
        obj.close()


BUDGET_LEAKER = (
    COMMON
    + r"""
__attribute__((noinline)) void big_leak(void) { char *p = malloc(10 << 20); sink(p); }

__attribute__((noinline)) void small_leaks(int n) {
    for (int i = 0; i < n; i++) sink(malloc(1000));
}

int main(void) {
    usleep(1000 * 1000);  /* the budget finds its rate first */
    churn(20000);
    big_leak();
    small_leaks(200000);
    churn(20000);
    scrub_stack();
    return 0;
}
"""
)


def test_a_small_budget_samples_by_bytes_and_never_misses_a_large_leak(tmp_path, cc, capsys):
    binary = build_c(cc, BUDGET_LEAKER, tmp_path / "leaker", *FLAGS)
    path = tmp_path / "mem.json"
    assert run(["mem", "--budget", "0.001", "-o", str(path), "--", str(binary)]) == 0
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    doc = json.loads(path.read_text())
    gaps = [t["rates"]["mem_sample_bytes"] for t in doc["self_cost"]["ticks"]]
    note = next(n for n in doc["notes"] if "blocks sampled by bytes" in n)
    # the sparsest mean gap of the run (the ticks hold the gap at each tick's end)
    sparsest = int(re.search(r"one sample point per ([\d,]+) bytes", note)[1].replace(",", ""))
    assert sparsest >= max(gaps) and sparsest > 0
    if max(gaps) > 0:
        assert "allocations sampled every" in summary
    rows = doc["outstanding"]
    big = [a for a in rows if "big_leak" in a["frames"]]
    # 10 MB holds sample points whatever the gap (the longest is 6.2 x a mean of <= 512 KiB)
    assert big and sum(a["bytes"] for a in big) > 0
    # frees of sampled blocks match: what churn() allocated and freed is not outstanding
    assert not [a for a in rows if "churn" in a["frames"]]
    small = sum(a["bytes"] for a in rows if "small_leaks" in a["frames"])
    truth = 200000 * 1000
    # each block of 1000 bytes holds Poisson(100 / R) points weighing R each (R: the mean gap,
    # changing as the budget decides): the estimate's variance is about truth * R. Allowed: 5
    # standard errors at the largest R of the run.
    bound = 5 * (truth * sparsest) ** 0.5
    assert abs(small - truth) < bound
    assert bound < truth / 2  # the bound says something


def test_without_a_budget_every_block_is_tracked(tmp_path, cc, capsys):
    binary = build_c(cc, BUDGET_LEAKER, tmp_path / "leaker", *FLAGS)
    path = tmp_path / "mem.json"
    assert run(["mem", "-o", str(path), "--", str(binary)]) == 0
    doc = json.loads(path.read_text())
    rows = doc["outstanding"]
    assert sum(a["bytes"] for a in rows if "big_leak" in a["frames"]) == 10 << 20
    small = [a for a in rows if "small_leaks" in a["frames"]]
    assert sum(a["bytes"] for a in small) == 200000 * 1000
    assert sum(a["count"] for a in small) == 200000
    assert doc["self_cost"]["ticks"] == []
