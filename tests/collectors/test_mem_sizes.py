"""`mem` reads each allocator's request size from the right arguments, on every path: the
entry-and-return probes of an exact run, and under a budget (uprobe sessions) both the short
path of an unsampled call (it only moves the byte countdown) and a sampled call's tracking."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from otlp_ebpf.collectors import base, mem
from otlp_ebpf.collectors.mem import AllocInfo, AllocKey, MemConfig
from otlp_ebpf.runtime import uprobe_multi
from otlp_ebpf.targets import TargetSpec
from tests.conftest import build_c

pytestmark = pytest.mark.bpf

FLAGS = ("-O1", "-g", "-fno-omit-frame-pointer", "-fno-optimize-sibling-calls", "-fno-inline")

# One allocator call per step (a C statement setting `p`) and the bytes it asks for. Below
# 4096 bytes an unsampled call other than a realloc takes the short path; the others always
# take the general one.
CALLS = (
    ("p = malloc(1000);", 1000),
    ("p = malloc(6000);", 6000),
    ("p = calloc(7, 33);", 7 * 33),
    ("p = calloc(3, 2000);", 3 * 2000),
    ("p = memalign(64, 700);", 700),
    ("p = memalign(64, 4500);", 4500),
    ("p = aligned_alloc(128, 640);", 640),
    ("if (posix_memalign(&p, 32, 300)) p = 0;", 300),
    ("if (posix_memalign(&p, 4096, 5000)) p = 0;", 5000),
    ("p = valloc(123);", 123),
    ("p = realloc(old[n_old++], 2000);", 2000),
    ("p = reallocarray(old[n_old++], 5, 300);", 5 * 300),
)
EXPECTED = {call: size for call, size in CALLS}
# glibc's reallocarray calls realloc, whose probe runs too: each draws for the bytes (the call
# in flight then decides for the block, counted once).
COUNTED = EXPECTED | {CALLS[-1][0]: 2 * CALLS[-1][1]}

# Runs step i on byte i read from fd argv[1] and writes the block's address to fd argv[2].
# It says when it is ready; between steps it only waits in read(): from then on the steps are
# its only allocator calls.
WORKLOAD = r"""
#define _GNU_SOURCE
#include <malloc.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int in = atoi(argv[1]), out = atoi(argv[2]), n_old = 0;
    void *old[64];
    unsigned char step;
    for (int i = 0; i < 64; i++) old[i] = malloc(24); /* blocks to resize */
    if (write(out, &old[0], sizeof(old[0])) != sizeof(old[0])) return 1; /* ready */
    while (read(in, &step, 1) == 1) {
        void *p = 0;
        switch (step) {
%s
        }
        if (write(out, &p, sizeof(p)) != sizeof(p)) return 1;
    }
    return 0;
}
"""

BIG = 1 << 50  # a countdown no step reaches: every call is unsampled


def workload_source() -> str:
    cases = "\n".join(f"        case {i}: {call} break;" for i, (call, _) in enumerate(CALLS))
    return WORKLOAD % cases


class Workload:
    """The launched workload, one step at a time, under a started collector."""

    def __init__(self, collector: mem.MemCollector, steps: int, done: int) -> None:
        assert collector.obj is not None and collector.targets.held is not None
        self.collector = collector
        self.obj = collector.obj
        self.tgid = collector.targets.held.pid
        self.steps, self.done = steps, done
        self.countdown = self.obj.map("bytes_to_sample")

    def run(self, step: int) -> int:
        """The address the step's call returned."""
        os.write(self.steps, bytes([step]))
        reply = os.read(self.done, 8)
        assert len(reply) == 8, "the workload ended before its step"
        return int.from_bytes(reply, "little")

    def set_countdown(self, left: int) -> None:
        """Bytes to the next sample point, on every CPU."""
        self.countdown.update(bytes(4), struct.pack("<q", left) * self.countdown.ncpus)

    def countdown_total(self) -> int:
        raw = self.countdown.lookup(bytes(4))
        assert raw is not None
        return sum(struct.unpack("<q", v)[0] for v in self.countdown.per_cpu(raw))

    def tracked_size(self, addr: int) -> int | None:
        """The size the tracked block at `addr` was recorded with (None: not tracked)."""
        raw = self.obj.map("allocs").lookup(bytes(AllocKey(addr=addr, tgid=self.tgid, pad=0)))
        return None if raw is None else int(AllocInfo.from_buffer_copy(raw).size)


@contextmanager
def launched(tmp_path: Path, cc: str, budget_pct: float | None) -> Iterator[Workload]:
    binary = build_c(cc, workload_source(), tmp_path / "sizes", *FLAGS)
    steps_r, steps_w = os.pipe()
    done_r, done_w = os.pipe()
    for fd in (steps_r, done_w):
        os.set_inheritable(fd, True)
    argv = (str(binary), str(steps_r), str(done_w))
    config = MemConfig(
        targets=TargetSpec(command=argv), budget_pct=budget_pct, python=False, track_mmap=False
    )
    collector = mem.MemCollector(config)  # forks the held command: it has its ends now
    os.close(steps_r)
    os.close(done_w)
    try:
        with base.session(collector.targets, collector.start) as run:
            try:
                assert len(os.read(done_r, 8)) == 8, "the workload ended before it was ready"
                yield Workload(collector, steps_w, done_r)
            finally:
                os.close(steps_w)  # the workload reads the end, exits, and is stopped there
                steps_w = -1
                base.run_loop(
                    collector.targets,
                    collector.poll,
                    duration_s=None,
                    clock=run.clock,
                    stop=run.stop,
                )
                collector.detach()
                collector.resume_all()
                if collector.guard is not None:
                    collector.guard.close()
    finally:
        if steps_w >= 0:
            os.close(steps_w)
        os.close(done_r)
        collector.close()


def each_step(round_: Callable[[int], int | None]) -> dict[str, int | None]:
    return {call: round_(i) for i, (call, _) in enumerate(CALLS)}


def test_exact_run_records_each_call_with_the_bytes_it_asked_for(tmp_path: Path, cc: str) -> None:
    with launched(tmp_path, cc, budget_pct=None) as work:
        recorded = each_step(lambda i: work.tracked_size(work.run(i)))
    assert recorded == EXPECTED


@pytest.mark.skipif(not uprobe_multi.sessions_supported(), reason="no uprobe sessions (6.13+)")
def test_under_a_budget_both_paths_take_the_bytes_each_call_asked_for(
    tmp_path: Path, cc: str
) -> None:
    """Unsampled, a call moves the countdown by its bytes (small ones on the short path, where
    nothing else is read); sampled, its block is recorded with them."""
    with launched(tmp_path, cc, budget_pct=1.0) as work:
        assert work.collector.session, "alloc_session runs under a budget on this kernel"
        work.collector.set_sampling(1 << 30)  # and left so: no budget loop runs here

        def unsampled(step: int) -> int:
            work.set_countdown(BIG)
            before = work.countdown_total()
            addr = work.run(step)
            assert work.tracked_size(addr) is None, CALLS[step][0]
            return before - work.countdown_total()

        def sampled(step: int) -> int | None:
            work.set_countdown(1)  # the next call holds a sample point
            return work.tracked_size(work.run(step))

        counted = each_step(unsampled)
        recorded = each_step(sampled)
    assert counted == COUNTED
    assert recorded == EXPECTED
