"""The DWARF cpu sampler against process churn: what it keeps per process stays bounded.

A shell starts short processes one after another, each spinning a few milliseconds of its own
CPU time (so each is sampled); by the end the sampler holds the maps of the few processes
still alive, and every exited one was retired: its stacks named, its state dropped.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from otlp_ebpf.collectors import base, cpu_dwarf
from otlp_ebpf.collectors.cpu_dwarf import DwarfSampler
from otlp_ebpf.runtime.stats import StatsSession
from otlp_ebpf.targets import TargetSpec
from tests.conftest import SPIN_CPU_C, build_c, sample_held_targets

pytestmark = pytest.mark.bpf

CHILDREN = 100
# The tool retires a process 3 s after it finds it gone, checking every second; here 1 s,
# checked every 0.25 s. The ring buffer is drained before each check, so no sample of a gone
# process waits there for a second. The run of 100 children (30 ms of CPU each) stays several
# times longer than the ~1.5 s a process may be held after it exited (the bound below holds
# 75; ~45 are held at most on an idle machine, ~15 under load), as 200 did against ~4 s.
RETIRE_GRACE_S = 1.0
EXIT_CHECK_S = 0.25
# The grace period and two checks for exited processes after the last one ended.
SETTLE_S = RETIRE_GRACE_S + 2.5 * EXIT_CHECK_S
SHORT = (
    SPIN_CPU_C
    + r"""
__attribute__((noinline)) void short_lived_work(void) { SPIN_CPU_MS(30); }
int main(void) { short_lived_work(); return 0; }
"""
)


@pytest.fixture
def quick_retirement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_dwarf, "RETIRE_GRACE_S", RETIRE_GRACE_S)
    monkeypatch.setattr(cpu_dwarf, "EXIT_CHECK_S", EXIT_CHECK_S)


@pytest.fixture(scope="module")
def short_bin(cc: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cpu-churn") / "short"
    return build_c(cc, SHORT, out, "-O2", "-fomit-frame-pointer")


def run_to_the_end(
    sampler: DwarfSampler, targets: base.Targets, watch: str, settle_s: float = 0.0
) -> tuple[dict[str, int], int]:
    """Sample the targets until they end, then `settle_s` more; what the sampler holds then,
    and the most of its `watch` holding seen while the targets ran."""
    most = 0

    def note_most() -> None:
        nonlocal most
        most = max(most, sampler.held()[watch])

    try:
        with StatsSession():  # the settling polls too
            sample_held_targets(sampler, targets, note_most)
            settle = time.monotonic() + settle_s
            while time.monotonic() < settle:
                sampler.poll(100)
            held = sampler.held()
            sampler.drain()
    finally:
        targets.abandon()
        base.cleanup()
        sampler.close()
    return held, most


def test_exited_processes_are_retired_and_their_stacks_keep_their_names(
    short_bin: Path, quick_retirement: None
) -> None:
    script = f"i=0; while [ $i -lt {CHILDREN} ]; do {short_bin}; i=$((i+1)); done"
    targets = base.Targets(TargetSpec(command=("sh", "-c", script)))
    sampler = DwarfSampler(frequency_hz=499)
    held, most = run_to_the_end(sampler, targets, "unwinding_processes", SETTLE_S)
    stacks = sampler.stacks()
    children = {s.pid for s in stacks if s.comm == "short"}
    named = {s.pid for s in stacks if s.comm == "short" and "short_lived_work" in s.frames}
    # Most children were sampled, and the stacks of retired ones were named before their maps
    # were dropped.
    assert len(children) > CHILDREN // 2
    assert len(named) > len(children) * 0.9
    # While it ran, only the processes that exited within the grace period were held; at the
    # end, none: every child and the shell were retired.
    assert most < CHILDREN * 3 // 4
    assert held["unwinding_processes"] == 0
    assert held["processes_with_unnamed_stacks"] == 0
    assert held["symbolizer_processes"] == 0
    assert held["retired_processes"] >= len(children)
    # Their stacks are kept by name and count only, one tuple per distinct stack.
    assert held["raw_stacks"] == 0
    assert held["named_stacks"] == len({(s.pid, s.tid, s.frames) for s in stacks})


def test_rows_of_the_oldest_exited_processes_fold_by_name(
    short_bin: Path, quick_retirement: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond the most recent exited processes, rows fold into one per command name and
    stack (pid 0): a system-wide profile of endless short processes stays bounded, and no
    sample is dropped on the way."""
    monkeypatch.setattr(cpu_dwarf, "EXITED_KEPT", 5)
    script = f"i=0; while [ $i -lt 40 ]; do {short_bin}; i=$((i+1)); done"
    targets = base.Targets(TargetSpec(command=("sh", "-c", script)))
    sampler = DwarfSampler(frequency_hz=499)
    held, _ = run_to_the_end(sampler, targets, "processes_with_rows", SETTLE_S)
    stacks = sampler.stacks()
    assert held["processes_with_rows"] <= 5
    assert held["process_infos"] <= 5 + 1  # the kept ones, and the shell if still held
    assert held["processes_folded"] >= 20
    folded = [s for s in stacks if s.pid == 0 and s.comm == "short"]
    assert any("short_lived_work" in s.frames for s in folded)
    assert len({s.pid for s in stacks if s.comm == "short"}) <= 5 + 1
    assert sum(s.count for s in stacks) == sampler.samples_total


THREADS = 120
THREAD_CHURN = (
    SPIN_CPU_C
    + r"""
#include <pthread.h>
__attribute__((noinline)) void *thread_work(void *arg) { SPIN_CPU_MS(25); return arg; }
int main(void) {
    for (int i = 0; i < THREADS; i++) {
        pthread_t t;
        pthread_create(&t, 0, thread_work, 0);
        pthread_join(t, 0);
    }
    return 0;
}
""".replace("THREADS", str(THREADS))
)


def test_rows_of_exited_threads_of_a_live_process_fold_into_the_process(
    cc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live process that starts a thread per task: past a number of rows, the rows of its
    threads that have exited fold into one per stack (tid 0), and no sample is dropped."""
    monkeypatch.setattr(cpu_dwarf, "THREAD_ROWS_KEPT", 10)
    program = build_c(cc, THREAD_CHURN, tmp_path / "threads", "-O2", "-pthread")
    targets = base.Targets(TargetSpec(command=(str(program),)))
    sampler = DwarfSampler(frequency_hz=499)
    held, most = run_to_the_end(sampler, targets, "named_stacks")
    stacks = sampler.stacks()
    tids = {s.tid for s in stacks if "thread_work" in s.frames}
    assert held["threads_folded"] > THREADS // 2
    assert 0 in tids
    # Bounded while it ran: after a fold the limit is twice what is left, the rows of the
    # process (tid 0 and its main thread's, all still there at the end) and those of the one
    # worker then alive (it takes ~12 samples). How many distinct stacks there are is the
    # kernel's doing (interrupts, softirqs: more on a loaded machine), not the threads'; kept
    # apart, the rows of the 120 threads would number hundreds.
    pid = next(s.pid for s in stacks if "thread_work" in s.frames)
    process_rows = sum(1 for s in stacks if s.pid == pid and s.tid in (0, pid))
    assert most <= 2 * (process_rows + 10), (most, process_rows)
    assert sum(s.count for s in stacks) == sampler.samples_total
