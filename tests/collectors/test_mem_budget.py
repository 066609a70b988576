"""`mem --budget` on real processes: what byte sampling at the allocator's entry estimates, and
what it must never get wrong (a freed block outstanding, a large block missed, a child unseen,
other processes' allocations paid for)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from otlp_ebpf.cli.app import run
from tests.conftest import build_c

pytestmark = pytest.mark.bpf

FLAGS = ("-O1", "-g", "-fno-omit-frame-pointer", "-fno-optimize-sibling-calls", "-fno-inline")
WORK_S = "1.5"

# Two processes (with "fork": the launched one forks) spin for a time, or until SIGTERM:
# malloc/free pairs, a 1000-byte leak every LEAK_EVERY pairs, and a 2000-byte block kept for
# 64 rounds then freed. The child leaks one large block at the end. Each writes what it leaked
# and how many pairs it made.
WORKLOAD = r"""
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>
#define LEAK_EVERY 10
static double now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9;
}
__attribute__((noinline)) void sink(void *p) { __asm__ volatile("" :: "r"(p) : "memory"); }
__attribute__((noinline)) void leak(void) { sink(malloc(1000)); }
__attribute__((noinline)) void *kept_then_freed(void) { return malloc(2000); }
__attribute__((noinline)) void big_leak(void) { sink(malloc(8 << 20)); }
static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }
int main(int argc, char **argv) {
    double secs = atof(argv[1]);
    int fork_child = argc > 3 && !strcmp(argv[3], "fork");
    int idle = argc > 3 && !strcmp(argv[3], "idle");  /* spins without allocating */
    signal(SIGTERM, on_term);
    usleep(1000 * 1000);  /* the budget finds its rate first */
    pid_t child = fork_child ? fork() : 1;
    long leaked = 0, pairs = 0;
    void *kept[64] = {0};
    int k = 0;
    double end = now() + secs;
    while (now() < end && !stop) {
        if (idle) continue;
        for (int i = 0; i < LEAK_EVERY; i++, pairs++) {
            void *p = malloc(16 + pairs % 1024); sink(p); free(p);
        }
        leak();
        leaked += 1000;
        free(kept[k]);
        kept[k] = kept_then_freed();
        k = (k + 1) % 64;
    }
    for (int i = 0; i < 64; i++) free(kept[i]);
    if (!child) big_leak();
    char path[512];
    snprintf(path, sizeof path, "%s.%d", argv[2], getpid());
    FILE *f = fopen(path, "w"); fprintf(f, "%ld %ld %d\n", leaked, pairs, !child); fclose(f);
    if (child > 1) waitpid(child, 0, 0);
    return 0;
}
"""


def truths(out: Path) -> dict[int, tuple[int, int, int]]:
    """pid -> (bytes leaked, malloc/free pairs, 1 if the forked child), as each process of the
    workload wrote them."""
    found = {}
    for path in out.parent.glob(out.name + ".*"):
        leaked, pairs, forked = path.read_text().split()
        found[int(path.suffix[1:])] = (int(leaked), int(pairs), int(forked))
    return found


def sparsest_gap(doc: dict) -> int:
    note = next(n for n in doc["notes"] if "blocks sampled by bytes" in n)
    return int(re.search(r"one sample point per ([\d,]+) bytes", note)[1].replace(",", ""))


@pytest.fixture(scope="module")
def sampled_run(tmp_path_factory: pytest.TempPathFactory, cc: str) -> tuple[dict, dict]:
    """One run of the forking workload under a budget of 1% of a core (the exact run costs
    several: blocks are sampled)."""
    tmp = tmp_path_factory.mktemp("membudget")
    binary = build_c(cc, WORKLOAD, tmp / "workload", *FLAGS)
    path, truth = tmp / "mem.json", tmp / "truth"
    args = ["mem", "--budget", "1", "-o", str(path), "--", str(binary), WORK_S, str(truth)]
    assert run([*args, "fork"]) == 0
    return json.loads(path.read_text()), truths(truth)


def test_leaked_bytes_are_estimated_within_their_standard_error(sampled_run) -> None:
    doc, truth = sampled_run
    assert len(truth) == 2  # the launched process and its child, each probed
    gap = sparsest_gap(doc)
    for pid, (leaked, _pairs, _forked) in truth.items():
        estimate = sum(
            a["bytes"] for a in doc["outstanding"] if a["pid"] == pid and "leak" in a["frames"]
        )
        # A block of s << R bytes holds Poisson(s / R) points weighing R each: the estimate of
        # `leaked` bytes has a variance of about leaked x R (R: the mean gap, at most the
        # sparsest of the run). Allowed: 4 standard errors (a false alarm in 1 run in 15,000).
        bound = 4 * (leaked * gap) ** 0.5
        assert abs(estimate - leaked) < bound, (pid, estimate, leaked, gap)
        # The bound says something: a leak estimated at zero would fail it (under load the
        # budget may sample as sparsely as its 512 KiB ceiling, where 4 standard errors of
        # this leak are about 60% of it).
        assert bound < leaked


def test_a_block_freed_later_is_not_outstanding(sampled_run) -> None:
    doc, _truth = sampled_run
    rows = doc["outstanding"]
    assert not [a for a in rows if "kept_then_freed" in a["frames"]]
    assert doc["frees_total"] > 0  # sampled blocks were freed, and their frees matched


def test_a_large_allocation_is_always_found_exactly_in_the_child(sampled_run) -> None:
    doc, truth = sampled_run
    (child,) = [pid for pid, (_, _, forked) in truth.items() if forked]
    big = [a for a in doc["outstanding"] if "big_leak" in a["frames"]]
    # 8 MiB is longer than the longest gap (6.2 x a mean of <= 512 KiB): it holds a point
    # whatever the draw, so it is tracked for sure and weighs its own size
    assert big and {a["pid"] for a in big} == {child}
    assert sum(a["bytes"] for a in big) == 8 << 20
    assert sum(a["count"] for a in big) == 1


def test_other_processes_allocating_run_no_program(tmp_path: Path, cc: str) -> None:
    """Under a budget the probes go per process: a process that is not a target, allocating
    at full speed all along, adds nothing to the programs' runs (probed for every process,
    each of its calls ran a program: at least two runs a pair)."""
    binary = build_c(cc, WORKLOAD, tmp_path / "workload", *FLAGS)
    peer_truth = tmp_path / "peer"
    peer = subprocess.Popen([str(binary), "600", str(peer_truth)])
    try:
        path = tmp_path / "mem.json"
        args = ["mem", "--budget", "1", "--no-mmap", "-o", str(path), "--", str(binary)]
        assert run([*args, WORK_S, str(tmp_path / "truth"), "idle"]) == 0
        assert peer.poll() is None  # it allocated all along
    finally:
        peer.terminate()
        peer.wait()
    runs = json.loads(path.read_text())["self_cost"]["bpf_runs"]
    ((_, peer_pairs, _),) = truths(peer_truth).values()
    assert runs < peer_pairs / 20, (runs, peer_pairs)


def test_every_block_tracked_under_sessions_frees_all_match(
    tmp_path: Path, cc: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sessions with every block tracked (period 1): thousands of blocks live at once share
    the slots of the filter free consults before the table, and each free of one of them must
    still find it. The leaks come out exact, and no freed block is outstanding."""
    from otlp_ebpf.collectors import budget

    def every_block(self: budget.PeriodController, cost_pct: float) -> int:
        return 1

    monkeypatch.setattr(budget.PeriodController, "next_period", every_block)
    binary = build_c(cc, WORKLOAD, tmp_path / "workload", *FLAGS)
    path, truth_path = tmp_path / "mem.json", tmp_path / "truth"
    args = ["mem", "--budget", "1", "-o", str(path), "--", str(binary), "1", str(truth_path)]
    assert run(args) == 0
    doc = json.loads(path.read_text())
    ((leaked, pairs, _),) = truths(truth_path).values()
    rows = doc["outstanding"]
    assert sum(a["bytes"] for a in rows if "leak" in a["frames"]) == leaked
    assert sum(a["count"] for a in rows if "leak" in a["frames"]) == leaked // 1000
    assert not [a for a in rows if "kept_then_freed" in a["frames"]]
    # every pair's block and every kept block was tracked and its free matched
    assert doc["frees_total"] >= pairs


def test_a_budget_out_of_reach_says_it_was_not_held_and_why(
    tmp_path: Path, cc: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A budget below what the programs on every allocator call and free cost whatever the
    sampling (0.001% of a core: a few hundred calls a second would cost it): the summary and a
    note say it was not held, and how much went where no sampling period reaches."""
    binary = build_c(cc, WORKLOAD, tmp_path / "workload", *FLAGS)
    path = tmp_path / "mem.json"
    args = ["mem", "--budget", "0.001", "-o", str(path), "--", str(binary)]
    assert run([*args, WORK_S, str(tmp_path / "truth")]) == 0
    err = capsys.readouterr().err
    doc = json.loads(path.read_text())
    (note,) = [n for n in doc["notes"] if n.startswith("budget 0.001% not held (steady ")]
    share = re.search(r": ([\d.]+)% of a core went to the programs on every allocator call", note)
    assert share and float(share[1]) > 0.001
    floor = re.search(r"on every allocator call and free of the targets, ([\d.]+)% of it", note)
    assert floor and 0 < float(floor[1]) <= float(share[1])
    runs = re.search(r"\(([\d,]+) runs a second at (\d+) ns, the cheapest run\)", note)
    assert runs and int(runs[1].replace(",", "")) > 0 and int(runs[2]) > 0
    short = note.split(": ", 1)[1].split(" (", 1)[0]  # up to the runs
    assert short.endswith("whatever the sampling")
    assert "over budget: " + short in err  # the summary line says why, in short
