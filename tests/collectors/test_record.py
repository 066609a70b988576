"""`otlp-ebpf record` on workloads written for it: every section equals what the signal's own
command reports for the same workload, the timeline adds up to the sections, and a change of
behaviour at a known second shows at that second on the right series."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import otlp_ebpf
from otlp_ebpf.cli.app import run
from tests.browser import chart_points, dump_dom, table_rows
from tests.collectors.test_syscalls import sparsest_period
from tests.conftest import build_c
from tests.workloads import TWO_BUSY

pytestmark = pytest.mark.bpf

# Deterministic counts spread over ~2.5 s (five rounds half a second apart): 5000 getppid,
# 7 failing opens, one loopback TCP connection moving exactly 123456 bytes up and 7890 down,
# ten 100000-byte blocks leaked from leaky(), 1.25 s of CPU time burnt in spin().
EXACT = r"""
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

__attribute__((noinline)) void *leaky(void) { return malloc(100000); }
/* Seconds of this thread's own CPU time: the share of the profile it takes holds however
   often a loaded machine preempts it. */
static double cpu_now(void) {
    struct timespec ts; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}
__attribute__((noinline)) double spin(double seconds) {
    volatile double x = 0; double end = cpu_now() + seconds;
    while (cpu_now() < end) for (int i = 0; i < 1000; i++) x += i * 0.5;
    return x;
}
static void full_write(int fd, const char *buf, size_t n) {
    while (n) { ssize_t w = write(fd, buf, n); if (w <= 0) exit(3); buf += w; n -= w; }
}
static void full_read(int fd, char *buf, size_t n) {
    while (n) { ssize_t r = read(fd, buf, n); if (r <= 0) exit(4); buf += r; n -= r; }
}
int main(void) {
    static char up[123456], down[7890];
    int srv = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    bind(srv, (struct sockaddr *)&a, sizeof a); listen(srv, 1);
    getsockname(srv, (struct sockaddr *)&a, &len);
    pid_t child = fork();
    if (child == 0) {
        int c = accept(srv, 0, 0);
        full_read(c, up, sizeof up); full_write(c, down, sizeof down);
        close(c); _exit(0);
    }
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(s, (struct sockaddr *)&a, sizeof a)) return 2;
    void *keep[10]; int kept = 0;
    for (int round = 0; round < 5; round++) {
        for (int i = 0; i < 1000; i++) getppid();
        if (round == 1) for (int i = 0; i < 7; i++) open("/nonexistent/otlp-ebpf", O_RDONLY);
        size_t part = sizeof up / 5, n = round == 4 ? sizeof up - 4 * part : part;
        full_write(s, up + round * part, n);
        keep[kept++] = leaky(); keep[kept++] = leaky();
        for (int i = 0; i < 50; i++) free(malloc(4096));
        spin(0.25);
        usleep(250000);
    }
    full_read(s, down, sizeof down);
    close(s);
    waitpid(child, 0, 0);
    return keep[0] == 0;
}
"""

# Behaviour that changes by time: getppid every millisecond for 3.5 s; from 1.5 s on, also
# mkdir() under a missing directory, which fails with ENOENT.
CHANGING = r"""
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
static double now(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}
int main(void) {
    double start = now();
    while (now() - start < 3.5) {
        getppid();
        if (now() - start >= 1.5) mkdir("/nonexistent/otlp-ebpf", 0700);
        usleep(1000);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def exact(tmp_path_factory, cc) -> Path:
    return build_c(cc, EXACT, tmp_path_factory.mktemp("record") / "exact", "-O1", "-g")


@pytest.fixture(scope="module")
def changing(tmp_path_factory, cc) -> Path:
    return build_c(cc, CHANGING, tmp_path_factory.mktemp("record") / "changing", "-O1")


def command_json(capsys, command: str, *args: str, target: list[str]) -> dict:
    code = run([command, "--json", *args, "--", *target])
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)


@pytest.fixture(scope="module")
def recording_files(tmp_path_factory, exact) -> Path:
    """rec.json and rec.html of one recording of the exact workload."""
    path = tmp_path_factory.mktemp("rec") / "rec.json"
    html = path.with_suffix(".html")
    assert run(["-q", "record", "-o", str(path), "-o", str(html), "--", str(exact)]) == 0
    return path


@pytest.fixture(scope="module")
def recording(recording_files) -> dict:
    return json.loads(recording_files.read_text())


def by_name(syscalls: list[dict]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for s in syscalls:
        count, errors = out.get(s["name"], (0, 0))
        out[s["name"]] = (count + s["count"], errors + s["errors"])
    return out


def without_trampolines(
    counts: dict[str, tuple[int, int]], also: frozenset[str] = frozenset()
) -> dict[str, tuple[int, int]]:
    trampolines = {"syscall_335", "syscall_336", "uretprobe", "uprobe", *also}
    return {k: v for k, v in counts.items() if k not in trampolines}


def test_record_has_every_section_in_its_own_schema(recording):
    assert recording["kind"] == "record"
    assert list(recording["signals"]) == ["cpu", "syscalls", "net", "mem"]
    for name, section in recording["signals"].items():
        assert section["kind"] == name
        assert section["duration_s"] == recording["duration_s"]
    assert "stacks" in recording["signals"]["cpu"]
    assert "connections" in recording["signals"]["net"]
    assert "outstanding" in recording["signals"]["mem"]
    # ~2.5 s of workload at 1 s per row: at least two full rows and the last partial one
    assert len(recording["timeline"]) >= 3
    times = [row["t_s"] for row in recording["timeline"]]
    assert times == sorted(times) and times[-1] == recording["duration_s"]


def test_syscalls_section_equals_the_syscalls_command(capsys, recording, exact):
    alone = command_json(capsys, "syscalls", target=[str(exact)])
    rec = by_name(recording["signals"]["syscalls"]["syscalls"])
    assert rec["getppid"] == (5000, 0)
    assert rec["openat"][1] >= 7
    # uprobe trampolines (any tool's, e.g. a mem run elsewhere on the machine) are not the
    # workload's calls; the recording leaves out its own, a concurrent tool's may show.
    # spin() reads its CPU-time clock (a real clock_gettime call, no vDSO) as often as the
    # machine lets it run: that count differs from run to run, the rest is exact.
    spin_clock = frozenset({"clock_gettime"})
    assert spin_clock <= rec.keys() and spin_clock <= by_name(alone["syscalls"]).keys()
    assert without_trampolines(rec, spin_clock) == without_trampolines(
        by_name(alone["syscalls"]), spin_clock
    )


def test_net_section_equals_the_net_command(capsys, recording, exact):
    alone = command_json(capsys, "net", target=[str(exact)])

    def moved(doc: dict) -> list[tuple[int, int]]:
        return sorted((c["tx_bytes"], c["rx_bytes"]) for c in doc["connections"])

    assert moved(recording["signals"]["net"]) == [(7890, 123456), (123456, 7890)]
    assert moved(recording["signals"]["net"]) == moved(alone)


def test_mem_section_has_the_same_leaks_as_the_mem_command(capsys, recording, exact):
    alone = command_json(capsys, "mem", "--page-faults", target=[str(exact)])

    def leaks(doc: dict) -> list[tuple[int, int]]:
        return sorted(
            (a["bytes"], a["count"]) for a in doc["outstanding"] if "leaky" in a["frames"]
        )

    leaked = leaks(recording["signals"]["mem"])
    assert (sum(b for b, _ in leaked), sum(n for _, n in leaked)) == (1_000_000, 10)
    assert leaks(recording["signals"]["mem"]) == leaks(alone)
    rec_mem = recording["signals"]["mem"]
    assert rec_mem["allocations_total"] == alone["allocations_total"]


def test_cpu_section_finds_the_same_hot_function_as_the_cpu_command(capsys, recording, exact):
    alone = command_json(capsys, "cpu", target=[str(exact)])

    def spin_share(doc: dict) -> float:
        total = sum(s["count"] for s in doc["stacks"])
        return sum(s["count"] for s in doc["stacks"] if "spin" in s["frames"]) / total

    # spin() burns 1.25 s of the ~1.3 s on-CPU: the bulk of both profiles
    assert spin_share(recording["signals"]["cpu"]) > 0.8
    assert spin_share(alone) > 0.8
    assert abs(spin_share(recording["signals"]["cpu"]) - spin_share(alone)) < 0.1


def test_timeline_rows_add_up_to_the_sections(recording):
    rows, sections = recording["timeline"], recording["signals"]
    cpu = sections["cpu"]
    assert sum(sum(r["cpu"]["samples"].values()) for r in rows) == cpu["samples_total"]
    assert sum(sum(r["cpu"]["functions"].values()) for r in rows) == cpu["samples_total"]
    syscall_rows: dict[str, tuple[int, int]] = {}
    for r in rows:
        for t in r["syscalls"]:
            count, errors = syscall_rows.get(t["name"], (0, 0))
            syscall_rows[t["name"]] = (count + t["count"], errors + t["errors"])
    assert syscall_rows == by_name(sections["syscalls"]["syscalls"])
    net = sections["net"]
    assert sum(c["tx_bytes"] for r in rows for c in r["net"]["connections"]) == sum(
        c["tx_bytes"] for c in net["connections"]
    )
    assert sum(c["rx_bytes"] for r in rows for c in r["net"]["connections"]) == 123456 + 7890
    mem = sections["mem"]
    assert sum(r["mem"]["allocations"] for r in rows) == mem["allocations_total"]
    assert sum(r["mem"]["frees"] for r in rows) == mem["frees_total"]
    assert rows[-1]["mem"]["outstanding_bytes"] == mem["outstanding_bytes"]
    faults = sum(f["count"] for f in mem["page_faults"])
    assert sum(r["mem"]["page_faults"] for r in rows) == faults


def test_timeline_spreads_the_work_over_the_rows(recording):
    """getppid runs in five rounds over ~2.5 s: more than one row carries them."""
    rows_with = [
        r for r in recording["timeline"] if any(t["name"] == "getppid" for t in r["syscalls"])
    ]
    assert len(rows_with) >= 2


def test_html_report_of_a_real_recording(recording_files, recording):
    page = recording_files.with_suffix(".html")
    rows = recording["timeline"]
    dom = dump_dom(page)
    lines = len({t["name"] for r in rows for t in r["syscalls"]})
    assert chart_points(dom, "syscalls-count") == len(rows) * min(lines, 6)
    assert chart_points(dom, "mem-outstanding") == len(rows)
    whole = {r[0]: r[1] for r in table_rows(dom, "table-syscalls")}
    assert whole["getppid"] == "5,000"
    first = dump_dom(page, f"#window=0,{rows[0]['t_s'] / 2}")
    shown = {r[0]: r[1] for r in table_rows(first, "table-syscalls")}
    assert shown == {t["name"]: f"{t['count']:,}" for t in rows[0]["syscalls"]}
    assert shown["getppid"] != "5,000"
    tx = [r[1] for r in table_rows(dom, "table-connections")]
    assert sorted(tx) == ["123,456", "7,890"]


def test_a_change_at_a_known_second_shows_in_that_row(tmp_path, changing):
    path = tmp_path / "rec.json"
    code = run(["-q", "record", "--signals", "syscalls", "-o", str(path), "--", str(changing)])
    assert code == 0
    recording = json.loads(path.read_text())
    rows = recording["timeline"]

    def of(row: dict, name: str) -> dict:
        return next((t for t in row["syscalls"] if t["name"] == name), {"count": 0, "errors": 0})

    first_failing = next(i for i, r in enumerate(rows) if of(r, "mkdir")["errors"])
    start = rows[first_failing - 1]["t_s"] if first_failing else 0.0
    # The change comes 1.5 s after the workload's start, which follows the recording's by the
    # time the released command takes to reach main(): on a loaded machine that can be more
    # than the half row to spare, but never more than the recording lasted beyond the 3.5 s.
    launch_s = max(0.0, recording["duration_s"] - 3.5)
    assert start <= 1.5 + launch_s, (start, launch_s)
    assert rows[first_failing]["t_s"] > 1.5
    for row in rows[:first_failing]:
        assert of(row, "mkdir")["count"] == 0
    for row in rows[first_failing:]:
        assert of(row, "mkdir")["errors"] == of(row, "mkdir")["count"] > 0
    # getppid is steady from the start: present in every row before the change too
    assert all(of(row, "getppid")["count"] > 0 for row in rows[:first_failing])


def running(binary: Path) -> bool:
    """True once some process runs `binary`."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.readlink(entry / "exe") == str(binary):
                return True
        except OSError:
            continue
    return False


def test_ctrl_c_writes_everything_recorded_so_far(tmp_path, changing):
    path = tmp_path / "rec.json"
    looping = tmp_path / "loop.sh"
    looping.write_text(f"#!/bin/sh\nwhile :; do {changing}; done\n")
    looping.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(Path(otlp_ebpf.__file__).parents[1])}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "otlp_ebpf",
            "record",
            "--signals",
            "syscalls,mem",
            "-o",
            str(path),
            "--",
            str(looping),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    while not running(changing) and proc.poll() is None:  # attached and released
        time.sleep(0.05)
    time.sleep(2.5)  # a few rows of the endless workload
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    doc = json.loads(path.read_text())
    assert "ended: interrupted" in doc["notes"]
    assert list(doc["signals"]) == ["syscalls", "mem"]
    getppid = sum(
        s["count"] for s in doc["signals"]["syscalls"]["syscalls"] if s["name"] == "getppid"
    )
    assert getppid > 0
    assert (
        sum(t["count"] for r in doc["timeline"] for t in r["syscalls"] if t["name"] == "getppid")
        == getppid
    )
    assert "timeline rows" in err.strip().splitlines()[-1]


def test_budget_lowers_the_sampling_rate_and_keeps_the_shares(tmp_path, cc, capsys):
    busy = build_c(cc, TWO_BUSY, tmp_path / "busy", "-O1", "-g")
    path = tmp_path / "rec.json"
    args = ["record", "--signals", "cpu", "-F", "999", "--budget", "2", "-o", str(path)]
    assert run([*args, "--", str(busy), "6"]) == 0
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    doc = json.loads(path.read_text())
    cost = doc["self_cost"]
    assert cost["budget_pct"] == 2.0
    rates = [t["rates"]["cpu_hz"] for t in cost["ticks"]]
    # 999 Hz on two busy CPUs is ~2000 samples/s to unwind: far more than 2% of a core (2%,
    # not 1%: on a loaded machine each sample costs more and 1% leaves too few to judge)
    assert min(rates) < 999
    assert "cpu sampling lowered to" in summary and "(asked 999)" in summary
    assert any(n.startswith("budget 2%: cpu sampling lowered from 999 Hz") for n in doc["notes"])
    assert cost["startup_cpu_s"] > 0 and cost["final_cpu_s"] > 0
    share, samples = alpha_share(doc)
    assert samples >= 50
    # sampling at a lower rate keeps the shares unbiased: 2/3 of the CPU time is alpha's (by
    # construction); allowed: four standard errors of a binomial share at this sample count
    assert abs(share - 2 / 3) < 4 * (2 / 9 / samples) ** 0.5


def alpha_share(doc: dict) -> tuple[float, int]:
    stacks = doc["signals"]["cpu"]["stacks"]
    alpha = sum(s["count"] for s in stacks if "alpha" in s["frames"])
    beta = sum(s["count"] for s in stacks if "beta" in s["frames"])
    return alpha / max(1, alpha + beta), alpha + beta


def test_record_of_a_running_pid_at_half_second_rows(tmp_path, changing):
    looping = tmp_path / "loop.sh"
    looping.write_text(f"#!/bin/sh\nwhile :; do {changing}; done\n")
    looping.chmod(0o755)
    proc = subprocess.Popen([str(looping)])
    try:
        path = tmp_path / "rec.json"
        args = ["-q", "record", "-p", str(proc.pid), "-d", "2.5", "--interval", "0.5"]
        assert run([*args, "--signals", "syscalls,mem", "-o", str(path)]) == 0
    finally:
        proc.kill()
        proc.wait()
    doc = json.loads(path.read_text())
    rows = doc["timeline"]
    assert doc["interval_s"] == 0.5 and doc["targets"] == [f"pid {proc.pid}"]
    # four full half-second rows and the last one at the end of the 2.5 s
    assert len(rows) in (5, 6) and rows[-1]["t_s"] == doc["duration_s"]
    with_getppid = [r for r in rows if any(t["name"] == "getppid" for t in r["syscalls"])]
    assert len(with_getppid) >= 4
    # the shell's children (each run of the workload) are followed: getppid is theirs
    calls = doc["signals"]["syscalls"]["syscalls"]
    getppid_pids = {s["pid"] for s in calls if s["name"] == "getppid"}
    assert getppid_pids and proc.pid not in getppid_pids
    mem = doc["signals"]["mem"]
    assert sum(r["mem"]["allocations"] for r in rows) == mem["allocations_total"]


SAMPLED = r"""
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>
__attribute__((noinline)) void sink(void *p) { __asm__ volatile("" :: "r"(p) : "memory"); }
__attribute__((noinline)) void big_leak(void) { sink(malloc(10 << 20)); }
int main(void) {
    usleep(1500 * 1000);  /* the budget finds its rates first */
    for (int i = 0; i < 200000; i++) syscall(SYS_getppid);
    big_leak();
    for (int i = 0; i < 20000; i++) { void *p = malloc(64); sink(p); free(p); }
    return 0;
}
"""


def test_record_under_a_small_budget_samples_syscalls_and_mem(tmp_path, cc, capsys):
    binary = build_c(cc, SAMPLED, tmp_path / "sampled", "-O1", "-g", "-fno-omit-frame-pointer")
    path = tmp_path / "rec.json"
    args = ["record", "--signals", "syscalls,mem", "--budget", "0.001", "-o", str(path)]
    assert run([*args, "--", str(binary)]) == 0
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    doc = json.loads(path.read_text())
    ticks = doc["self_cost"]["ticks"]
    assert all({"syscalls_duty", "mem_sample_bytes"} <= set(t["rates"]) for t in ticks)
    highest = sparsest_period(doc["notes"])  # rates in ticks are those at each tick's end
    assert highest > 1 and any("blocks sampled by bytes" in n for n in doc["notes"])
    duty = min(t["rates"]["syscalls_duty"] for t in ticks)
    if duty < 1:
        assert f"syscalls traced {100 * duty:.3g}% of the time (counts scaled)" in summary
    # (how close the scaled counts come: test_syscalls, on calls spread over the run)
    calls = sum(
        s["count"] for s in doc["signals"]["syscalls"]["syscalls"] if s["name"] == "getppid"
    )
    # the timeline's rows add up to the section's (weighted) counts
    ticks_of = [t for r in doc["timeline"] for t in (r.get("syscalls") or [])]
    assert sum(t["count"] for t in ticks_of if t["name"] == "getppid") == calls
    leaks = doc["signals"]["mem"]["outstanding"]
    assert any("big_leak" in a["frames"] for a in leaks)  # large blocks are never missed


# A thread that sleeps 1.5 s in one nanosleep from 0.5 s on, beside a main thread that
# spins, then joins it: one block spanning several timeline rows.
ONE_LONG_BLOCK = r"""
#include <pthread.h>
#include <time.h>
#include <unistd.h>
static double now(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}
static void *sleeper(void *arg) {
    (void)arg;
    struct timespec wait = {1, 500000000};
    nanosleep(&wait, 0);
    return 0;
}
int main(void) {
    double start = now();
    volatile double x = 0;
    while (now() - start < 0.5) x += 1;
    pthread_t t;
    pthread_create(&t, 0, sleeper, 0);
    while (now() - start < 2.5) x += 1;
    pthread_join(t, 0);
    return 0;
}
"""


def test_off_cpu_time_spreads_a_long_block_over_the_rows_it_spans(tmp_path, cc):
    binary = build_c(cc, ONE_LONG_BLOCK, tmp_path / "block", "-O1", "-g", "-pthread")
    out = tmp_path / "rec.json"
    args = ["-q", "record", "--off-cpu", "--signals", "cpu", "--interval", "0.25"]
    assert run([*args, "-o", str(out), "--", str(binary)]) == 0
    data = json.loads(out.read_text())
    rows = data["timeline"]
    sleep_site = [
        [n for site, n in row["cpu"]["blocked_ns"].items() if "nanosleep" in site] for row in rows
    ]
    per_row = [sum(ns) / 1e9 for ns in sleep_site]
    # the 1.5 s block shows in every row it covers (counted up to each tick while in
    # progress), not all at once in the row where it ended
    busy = [i for i, s in enumerate(per_row) if s > 0.15]
    assert len(busy) >= 4, per_row
    assert sum(per_row) == pytest.approx(1.5, abs=0.1), per_row
    # the rows add up to the section's blocked time per process
    section = data["signals"]["cpu"]["off_cpu"]
    pid = str(section[0]["pid"])
    total_rows = sum(row["cpu"]["off_cpu_ns"].get(pid, 0) for row in rows)
    total_section = sum(s["total_ns"] for s in section if str(s["pid"]) == pid)
    assert total_rows == pytest.approx(total_section, rel=0.02)


def test_record_under_a_budget_dwarf_cannot_hold_names_frame_pointer_samples_per_tick(
    tmp_path, cc, capsys, monkeypatch
):
    from otlp_ebpf.collectors import budget
    from tests.collectors.test_cpu import (
        HOT_LEAF_C,
        HOT_LEAF_CAP_S,
        stop_after_frame_pointer_decisions,
    )

    # as in test_cpu: a budget no DWARF rate holds, an early switch, and frame pointers kept
    # at 99 Hz after it, for 2.5 s before the workload ends (two 1 s intervals wholly after)
    monkeypatch.setattr(budget, "FALLBACK_FLOOR_HZ", 99)
    monkeypatch.setattr(budget, "FALLBACK_AFTER", 2)
    monkeypatch.setattr(budget, "MIN_HZ", 99)
    stop = tmp_path / "stop"
    stop_after_frame_pointer_decisions(monkeypatch, stop, decisions=10)
    busy = build_c(cc, HOT_LEAF_C, tmp_path / "busy", "-O1", "-g", "-fno-omit-frame-pointer")
    path = tmp_path / "rec.json"
    args = ["record", "--signals", "cpu", "-F", "199", "--budget", "0.01", "-o", str(path)]
    assert run([*args, "--", str(busy), HOT_LEAF_CAP_S, str(stop)]) == 0
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert "fell back from DWARF to frame pointers" in summary, summary
    doc = json.loads(path.read_text())
    ticks = doc["self_cost"]["ticks"]
    assert ticks[-1]["unwind"] == "fp", ticks
    notes = doc["signals"]["cpu"]["notes"]
    fell = [n for n in notes if n.startswith("budget: fell back from DWARF")]
    assert len(fell) == 1 and "(hottest: hot_leaf)" in fell[0], notes
    # The timeline's intervals wholly after the switch (the one before already ended on
    # frame pointers) hold frame-pointer samples only, and they name the hot function.
    rows = list(zip(doc["timeline"], ticks, strict=False))
    after = [
        row["cpu"]["functions"]
        for (_, before), (row, _) in itertools.pairwise(rows)
        if before["unwind"] == "fp"
    ]
    assert after and sum(f.get("hot_leaf", 0) for f in after) > 0, (after, ticks)
