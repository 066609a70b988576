"""The cpu collector with DWARF unwinding, end to end: cpu.collect() and the CLI.

Threads with different names, a live --pid target with off-CPU time in the same run, a first
run on an empty unwind-table cache, kernel-only stacks, blocks still in progress at the end,
Ctrl-C during --repeat, and no program left behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from otlp_ebpf.collectors import cpu
from otlp_ebpf.collectors.cpu_dwarf import DwarfSampler
from otlp_ebpf.model import CpuSnapshot, StackCount, snapshot_from_dict
from otlp_ebpf.runtime.stats import StatsSession
from otlp_ebpf.targets import TargetSpec
from tests.conftest import SPIN_CPU_C, build_c
from tests.runtime.test_cleanup import all_programs, programs_held_by, wait_for_programs

pytestmark = pytest.mark.bpf

OTLP_EBPF = Path(sys.executable).with_name("otlp-ebpf")

# Two busy threads named alpha and beta, each spinning argv[1] seconds of its own CPU time
# (samples per thread do not depend on the machine's load), while the main thread sleeps in
# 50 ms steps; built without frame pointers.
THREADS = (
    SPIN_CPU_C
    + r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
static double secs;
__attribute__((noinline)) void hot(void) { for (int i = 0; i < 100000; i++) spin_sink += i * i; }
__attribute__((noinline)) void work(void) { hot(); spin_sink++; }
void *run(void *name) {
    pthread_setname_np(pthread_self(), (char *)name);
    double end = thread_cpu_s() + secs;
    while (thread_cpu_s() < end) work();
    return 0;
}
int main(int argc, char **argv) {
    pthread_t a, b;
    struct timespec t;
    secs = atof(argv[1]);
    pthread_create(&a, 0, run, "alpha");
    pthread_create(&b, 0, run, "beta");
    clock_gettime(CLOCK_MONOTONIC, &t);
    double end = t.tv_sec + secs;
    do {
        usleep(50000);
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while (t.tv_sec + t.tv_nsec / 1e9 < end);
    pthread_join(a, 0);
    pthread_join(b, 0);
    return 0;
}
"""
)
THREAD_CHAIN = ("start_thread", "run", "work", "hot")


@pytest.fixture(scope="module")
def threads_bin(cc: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cpu-dwarf") / "threads"
    return build_c(cc, THREADS, out, "-O2", "-fomit-frame-pointer", "-pthread")


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with an empty unwind-table cache of its own (a first run)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def has_chain(frames: tuple[str, ...], chain: tuple[str, ...]) -> bool:
    at = 0
    for frame in frames:
        if at < len(chain) and frame == chain[at]:
            at += 1
    return at == len(chain)


def samples_of(stacks: tuple[StackCount, ...], comm: str, *, full: bool = False) -> int:
    return sum(
        s.count
        for s in stacks
        if s.comm == comm and (not full or has_chain(s.frames, THREAD_CHAIN))
    )


def note(snapshot: CpuSnapshot, pattern: str) -> re.Match[str]:
    for text in snapshot.notes:
        if found := re.search(pattern, text):
            return found
    raise AssertionError(f"no note matches {pattern!r}: {snapshot.notes}")


def assert_both_threads_full(snapshot: CpuSnapshot, *, least: int) -> None:
    for comm in ("alpha", "beta"):
        total = samples_of(snapshot.stacks, comm)
        assert total >= least, (comm, total)
        assert samples_of(snapshot.stacks, comm, full=True) / total >= 0.9, comm


def test_differently_named_threads_do_not_reread_the_maps(threads_bin: Path) -> None:
    config = cpu.CpuConfig(targets=TargetSpec(command=(str(threads_bin), "1.5")), unwind="dwarf")
    snapshot = cpu.collect(config)
    # Two threads, 1.5 s of CPU each at 99 Hz: ~150 samples each, their names alternating.
    assert_both_threads_full(snapshot, least=50)
    # The maps are read when the process is first seen (and after its exec), not per name
    # (what this costs in CPU: bench/unwind.py). A pc in no known mapping (a walk that ran
    # into a stale or partly written frame, more often on a loaded machine) reads them again.
    reads = note(snapshot, r"maps read (\d+) times \((\d+) for a pc in no known mapping\)")
    assert int(reads.group(1)) - int(reads.group(2)) <= 3
    assert "ring buffer full" not in snapshot.lost_events


@pytest.fixture
def live_threads(threads_bin: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([str(threads_bin), "4"])
    time.sleep(0.2)  # both threads named and spinning
    yield proc
    proc.kill()
    proc.wait()


def test_live_pid_with_off_cpu_keeps_dwarf_stacks_on_cpu(
    live_threads: subprocess.Popen[bytes],
) -> None:
    config = cpu.CpuConfig(
        targets=TargetSpec(pids=(live_threads.pid,)),
        unwind="dwarf",
        off_cpu=True,
        duration_s=3.0,
        frequency_hz=299,
    )
    cpu.check_config(config)
    called_ns = time.monotonic_ns()
    snapshot = cpu.collect(config)
    returned_ns = time.monotonic_ns()
    assert "unwind: dwarf on-CPU, fp off-CPU" in snapshot.notes
    assert_both_threads_full(snapshot, least=30)
    # The main thread sleeps for the whole run, in frame-pointer off-CPU stacks: most of the
    # 3 s asked, never more than the call took.
    main_blocked = sum(s.total_ns for s in snapshot.off_cpu if s.tid == live_threads.pid)
    assert 2.0e9 <= main_blocked <= returned_ns - called_ns
    assert note(snapshot, r"threads still blocked at the end")


def test_first_run_on_an_empty_cache_ends_on_time_with_full_stacks(
    threads_bin: Path, tmp_path: Path
) -> None:
    out = subprocess.run(
        [str(OTLP_EBPF), "cpu", "--json", "-F", "299", "-d", "3", "--", str(threads_bin), "10"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cold")},
    )
    assert out.returncode == 0, out.stderr
    snapshot = snapshot_from_dict(json.loads(out.stdout))
    assert isinstance(snapshot, CpuSnapshot)
    # Ended by -d 3, not by the command (10 s of CPU per thread): the decode never holds up
    # the sampling loop (a scheduling delay on a busy machine is far below double).
    assert "ended: duration" in snapshot.notes
    assert snapshot.duration_s < 6
    assert int(note(snapshot, r"(\d+) decoded").group(1)) >= 1
    assert "ring buffer full" not in snapshot.lost_events
    # 3 s at 299 Hz: ~900 samples per thread idle; a machine loaded ten times over its cores
    # still gives each thread dozens.
    assert_both_threads_full(snapshot, least=30)
    # Decoding happened in a child, whose CPU time is part of the tool's reported cost.
    worker_cpu = float(note(snapshot, r"decoding process: ([\d.]+) s CPU").group(1))
    assert 0 < worker_cpu <= snapshot.self_cost.cpu_s


def test_kernel_only_marks_user_mode_samples_instead_of_losing_them(threads_bin: Path) -> None:
    config = cpu.CpuConfig(
        targets=TargetSpec(command=(str(threads_bin), "1.5")),
        kernel_stacks=True,
        user_stacks=False,
        duration_s=1.0,
    )
    snapshot = cpu.collect(config)
    in_user = sum(s.count for s in snapshot.stacks if s.frames == (cpu.USER_MODE_FRAME,))
    assert in_user >= 0.8 * snapshot.samples_total > 0
    assert "samples without stack" not in snapshot.lost_events


def test_off_cpu_only_counts_a_block_still_in_progress() -> None:
    config = cpu.CpuConfig(
        targets=TargetSpec(command=("sleep", "5")), on_cpu=False, off_cpu=True, duration_s=1.0
    )
    called_ns = time.monotonic_ns()
    snapshot = cpu.collect(config)
    returned_ns = time.monotonic_ns()
    slept = sum(s.total_ns for s in snapshot.off_cpu if "do_nanosleep_[k]" in s.frames)
    assert 0.8e9 <= slept <= returned_ns - called_ns
    assert "ended: duration" in snapshot.notes


def test_sampling_stops_before_the_drain_and_drops_are_read_once(threads_bin: Path) -> None:
    from otlp_ebpf.collectors import base

    targets = base.Targets(TargetSpec(command=(str(threads_bin), "2")))
    sampler = DwarfSampler(frequency_hz=499)
    try:
        with StatsSession():
            sampler.start(targets)
            targets.release()
            # Until 50 samples are in, however long a busy machine makes that take.
            deadline = time.monotonic() + 30
            while sampler.samples_total <= 50 and time.monotonic() < deadline:
                sampler.poll(100)
            sampler.drain()
            assert sampler.obj is not None and not sampler.obj.links
            taken, drops = sampler.samples_total, sampler.drops()
            time.sleep(0.3)
            sampler.poll(100)
            assert (sampler.samples_total, sampler.drops()) == (taken, drops)
    finally:
        targets.abandon()
        sampler.close()
        base.cleanup()
    assert taken > 50


def test_dwarf_run_leaves_no_program_and_no_decoding_process(
    threads_bin: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache-of-this-run"
    proc = subprocess.Popen(
        [str(OTLP_EBPF), "cpu", "--unwind", "dwarf", "-d", "1.5", "--", str(threads_bin), "3"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "XDG_CACHE_HOME": str(cache)},
    )
    held = wait_for_programs(proc.pid)
    assert proc.wait(timeout=30) == 0
    assert not held & all_programs()
    assert not programs_held_by(os.getpid()) & held
    # The table-decoding child is started with the cache path: none of them is left.
    leftovers = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if str(cache).encode() in cmdline:
                leftovers.append(entry)
    assert not leftovers


def test_ctrl_c_during_repeat_ends_every_remaining_run(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = subprocess.Popen(
        [str(OTLP_EBPF), "cpu", "--repeat", "3", "-o", str(out), "--", "sleep", "20"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    while "Ctrl-C to stop" not in proc.stderr.readline():
        pass
    wait_for_programs(proc.pid)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert (tmp_path / "r.1.json").exists()
    assert not (tmp_path / "r.2.json").exists()
    assert "run 2 of 3" not in err
