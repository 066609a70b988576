"""`otlp-ebpf cpu` and `report` against real workloads whose time split is known."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest

from otlp_ebpf.cli.app import run
from otlp_ebpf.model import CpuSnapshot, StackCount, read_snapshot
from otlp_ebpf.targets import TargetSpec
from tests.conftest import SPIN_CPU_C, assert_ratio, build_c
from tests.formatters.test_pprof import profile_pb2  # noqa: F401 (fixture)
from tests.formatters.test_speedscope import (
    check_indices,
    schema,  # noqa: F401 (fixture)
)
from tests.workloads import TWO_BUSY

pytestmark = pytest.mark.bpf

WORKLOAD_FLAGS = ("-O1", "-fno-omit-frame-pointer", "-fno-optimize-sibling-calls", "-fno-inline")
OTLP_EBPF = Path(sys.executable).with_name("otlp-ebpf")

# a() spins A_MS (argv[2], default 2) ms of its own CPU time for each 1 ms b() spins, until
# argv[1] seconds of CPU time have passed: a known on-CPU split, on any CPU, with call chains
# main;a and main;b.
SPIN_C = (
    SPIN_CPU_C
    + r"""
#include <stdlib.h>
__attribute__((noinline)) void a(double ms) { SPIN_CPU_MS(ms); }
__attribute__((noinline)) void b(double ms) { SPIN_CPU_MS(ms); }
int main(int argc, char **argv) {
    double secs = argc > 1 ? atof(argv[1]) : 1.0;
    double a_ms = argc > 2 ? atof(argv[2]) : 2.0;
    double end = thread_cpu_s() + secs;
    while (thread_cpu_s() < end) { a(a_ms); b(1.0); }
    return 0;
}
"""
)

# slow() blocks 200 ms and fast() 100 ms per round, through a raw syscall so the frame
# pointer chain (libc has none) still names the caller. With a path as argv[2] it writes there
# the nanoseconds its calls of slow() and of fast() lasted: any blocked time the profiler
# gives a function lies within that function's calls, however late a busy machine wakes it.
SLEEP_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static inline __attribute__((always_inline)) void nap(long ms) {
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
#if defined(__x86_64__)
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(35), "D"(&ts), "S"(0) : "rcx", "r11", "memory");
#elif defined(__aarch64__)
    register long x8 __asm__("x8") = 101; /* nanosleep */
    register long x0 __asm__("x0") = (long)&ts;
    register long x1 __asm__("x1") = 0;
    __asm__ volatile("svc #0" : "+r"(x0) : "r"(x8), "r"(x1) : "memory");
#else
#error "raw nanosleep for this architecture"
#endif
}
__attribute__((noinline)) void slow(void) { nap(200); }
__attribute__((noinline)) void fast(void) { nap(100); }
static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}
int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 3;
    long long slow_ns = 0, fast_ns = 0, t;
    for (int i = 0; i < rounds; i++) {
        t = now_ns(); slow(); slow_ns += now_ns() - t;
        t = now_ns(); fast(); fast_ns += now_ns() - t;
    }
    if (argc > 2) {
        FILE *f = fopen(argv[2], "w");
        if (!f) return 1;
        fprintf(f, "%lld %lld\n", slow_ns, fast_ns);
        fclose(f);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def spin_bin(tmp_path_factory: pytest.TempPathFactory, cc: str) -> Path:
    return build_c(cc, SPIN_C, tmp_path_factory.mktemp("cpu") / "spin", *WORKLOAD_FLAGS)


@pytest.fixture(scope="module")
def sleep_bin(tmp_path_factory: pytest.TempPathFactory, cc: str) -> Path:
    return build_c(cc, SLEEP_C, tmp_path_factory.mktemp("cpu") / "sleeper", *WORKLOAD_FLAGS)


def weight_under(stacks: Iterable[StackCount], chain: tuple[str, ...], *, ns: bool = False) -> int:
    """Weight of stacks whose frames contain `chain` as consecutive frames."""
    total = 0
    for s in stacks:
        frames = s.frames
        if any(frames[i : i + len(chain)] == chain for i in range(len(frames))):
            total += s.total_ns if ns else s.count
    return total


def assert_two_to_one(first: int, second: int) -> None:
    assert_ratio(first, second, 2.0)


def load_cpu(path: Path) -> CpuSnapshot:
    snapshot = read_snapshot(str(path))
    assert isinstance(snapshot, CpuSnapshot)
    return snapshot


def top_functions(table: str) -> list[str]:
    """Function names of the top-functions table, in its order."""
    rows = [line for line in table.splitlines() if "%" in line]
    return [row.split()[-2] for row in rows[1:]]


def folded_lines(path: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        counts[stack] += int(count)
    return counts


@dataclass(frozen=True)
class LaunchedRun:
    outs: dict[str, Path]  # by extension
    out: str
    err: str


@pytest.fixture(scope="module")
def launched_run(tmp_path_factory: pytest.TempPathFactory, spin_bin: Path) -> LaunchedRun:
    """`cpu -F 499 -- spin 1.5` (a() twice as long as b()) writing every format, and what it
    printed: read by the format checks."""
    folder = tmp_path_factory.mktemp("cpu-launched")
    outs = {
        ext: folder / f"prof{ext}"
        for ext in (".json", ".folded", ".speedscope.json", ".pb.gz", ".html", ".svg")
    }
    args = [a for p in outs.values() for a in ("-o", str(p))]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(["cpu", "-F", "499", *args, "--", str(spin_bin), "1.5"])
    assert code == 0, err.getvalue()
    return LaunchedRun(outs, out.getvalue(), err.getvalue())


def test_launched_command_split_chains_and_every_format(
    tmp_path: Path,
    spin_bin: Path,
    launched_run: LaunchedRun,
    schema: dict[str, Any],  # noqa: F811
    profile_pb2: ModuleType,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    outs = launched_run.outs
    assert top_functions(launched_run.out)[:2] == ["a", "b"]
    assert "samples" in launched_run.err and "lost" in launched_run.err

    snap = load_cpu(outs[".json"])
    assert snap.frequency_hz == 499 and snap.samples_total > 300
    # Everything but the few samples of the held child before its exec is the workload.
    spin_samples = sum(s.count for s in snap.stacks if s.comm == "spin")
    assert spin_samples / snap.samples_total > 0.95
    a = weight_under(snap.stacks, ("main", "a"))
    b = weight_under(snap.stacks, ("main", "b"))
    assert_two_to_one(a, b)
    assert (a + b) / snap.samples_total > 0.9
    assert any(p.exe == str(spin_bin) for p in snap.processes)

    folded = folded_lines(outs[".folded"])
    assert sum(folded.values()) == snap.samples_total
    assert sum(n for line, n in folded.items() if line.startswith("spin;")) == spin_samples
    a_folded = sum(n for line, n in folded.items() if ";main;a" in line)
    assert a_folded == a

    doc = json.loads(outs[".speedscope.json"].read_text())
    jsonschema.validate(doc, schema)
    check_indices(doc)
    names = [f["name"] for f in doc["shared"]["frames"]]
    assert {"main", "a", "b"} <= set(names)
    assert sum(doc["profiles"][0]["weights"]) == snap.samples_total

    profile = profile_pb2.Profile()
    profile.ParseFromString(gzip.decompress(outs[".pb.gz"].read_bytes()))
    strings = list(profile.string_table)
    assert {"main", "a", "b"} <= set(strings)
    assert sum(s.value[0] for s in profile.sample) == snap.samples_total

    html = outs[".html"].read_text()
    assert all(name in html for name in ("__libc_start_call_main", "main"))
    assert outs[".svg"].read_text().lstrip().startswith(("<?xml", "<svg"))

    # The saved snapshot renders again, to the table and to new files.
    again = tmp_path / "again.folded"
    assert run(["report", str(outs[".json"]), "-o", str(again), "--top", "2"]) == 0
    assert folded_lines(again) == folded
    assert top_functions(capsys.readouterr().out) == ["a", "b"]


@pytest.fixture
def running_spin(spin_bin: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([str(spin_bin), "30"])
    time.sleep(0.2)
    yield proc
    proc.kill()
    proc.wait()


def test_pid_mode_split_and_chains(tmp_path: Path, running_spin: subprocess.Popen[bytes]) -> None:
    out = tmp_path / "pid.json"
    assert run(["cpu", "-p", str(running_spin.pid), "-d", "1.5", "-F", "499", "-o", str(out)]) == 0
    snap = load_cpu(out)
    assert {s.pid for s in snap.stacks} == {running_spin.pid}
    assert_two_to_one(
        weight_under(snap.stacks, ("main", "a")),
        weight_under(snap.stacks, ("main", "b")),
    )


@pytest.mark.skipif(
    platform.machine() not in ("x86_64", "aarch64"),
    reason="the sleep workload makes a raw syscall for x86_64 and aarch64 only",
)
def test_off_cpu_blocked_time_split(tmp_path: Path, sleep_bin: Path) -> None:
    out, lasted = tmp_path / "off.json", tmp_path / "lasted"
    argv = ["cpu", "--off-cpu-only", "-o", str(out), "--", str(sleep_bin), "3", str(lasted)]
    assert run(argv) == 0
    snap = load_cpu(out)
    assert not snap.stacks and snap.off_cpu
    slow_lasted, fast_lasted = map(int, lasted.read_text().split())
    # On a machine loaded far past its cores, a switch of the thread's may run without the
    # program about once in 30 runs (the kernel's doing): the block it hides is counted in
    # lost_events, never silently missing. Each block counted lost may be one sleep, 200 ms.
    counted = sum(n for reason, n in snap.lost_events.items() if "off-cpu blocks lost" in reason)
    # Each function's blocked time: never less than it asked to sleep (3 x 200 ms, 3 x 100 ms,
    # less a margin for the moments it ran), never more than its calls lasted by the
    # workload's own clock (the same monotonic clock the kernel stamps; 1 ms for the readings).
    for function, asked_ns, lasted_ns in (
        ("slow", 0.6e9, slow_lasted),
        ("fast", 0.3e9, fast_lasted),
    ):
        blocked = weight_under(snap.off_cpu, ("main", function), ns=True)
        blocks = [(s.total_ns, s.count, ";".join(s.frames)) for s in snap.off_cpu]
        assert 0.9 * asked_ns - counted * 0.2e9 <= blocked <= lasted_ns + 1e6, (
            function,
            blocked,
            lasted_ns,
            blocks,
            snap.lost_events,
        )


def test_on_and_off_cpu_in_one_run(tmp_path: Path, spin_bin: Path) -> None:
    out = tmp_path / "both.folded"
    assert run(["cpu", "--off-cpu", "-o", str(out), "--", str(spin_bin), "0.5"]) == 0
    assert sum(folded_lines(out).values()) > 0
    off = tmp_path / "both.off_cpu.folded"
    assert off.exists() and folded_lines(off)


def test_bad_input_exits_2_before_collecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    free_pid = 4_000_000
    assert run(["cpu", "-p", str(free_pid), "-d", "1"]) == 2
    assert f"no such process: {free_pid}" in capsys.readouterr().err

    limit = Path("/proc/sys/kernel/perf_event_max_sample_rate").read_text().strip()
    assert run(["cpu", "-F", str(int(limit) + 1), "-d", "1"]) == 2
    assert limit in capsys.readouterr().err

    assert run(["cpu", "-d", "5", "-o", str(tmp_path / "missing" / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err
    assert "Ctrl-C to stop" not in err  # refused before the run began

    assert run(["cpu", "--repeat", "2", "-d", "1"]) == 2
    assert run(["cpu", "--user-only", "--kernel-only", "-d", "1"]) == 2


def test_repeat_writes_one_snapshot_per_run(tmp_path: Path, spin_bin: Path) -> None:
    base = tmp_path / "base.json"
    assert run(["cpu", "--repeat", "2", "-o", str(base), "--", str(spin_bin), "0.3"]) == 0
    for index in (1, 2):
        assert load_cpu(tmp_path / f"base.{index}.json").samples_total > 0
    assert not base.exists()


def test_sigint_ends_an_open_run_and_still_writes(tmp_path: Path) -> None:
    out = tmp_path / "sigint.json"
    proc = subprocess.Popen(
        [str(OTLP_EBPF), "cpu", "-o", str(out)], stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    assert "Ctrl-C to stop" in proc.stderr.readline()
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    snap = load_cpu(out)
    assert "ended: interrupted" in snap.notes


def bpf_handles_of_this_process() -> Counter[str]:
    """The BPF programs, links, maps and perf events this process holds a descriptor of: what
    keeps a program attached (other runs on the machine load programs of the same names)."""
    kinds: Counter[str] = Counter()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(("anon_inode:bpf", "anon_inode:[perf_event]")):
                kinds[target] += 1
    return kinds


def test_no_program_left_after_a_run(tmp_path: Path, spin_bin: Path) -> None:
    before = bpf_handles_of_this_process()
    assert run(["cpu", "--off-cpu", "-d", "0.3", "-o", str(tmp_path / "x.json")]) == 0
    assert bpf_handles_of_this_process() == before


def test_ctypes_mirrors_match_the_object() -> None:
    from otlp_ebpf.collectors import cpu
    from otlp_ebpf.collectors.stack_store import StoredStack
    from otlp_ebpf.runtime import btf
    from otlp_ebpf.runtime.loader import BpfObject

    mirrors = {
        "cpu_key": cpu.CpuKey,
        "offcpu_value": cpu.OffCpuValue,
        "offcpu_start": cpu.OffCpuStart,
        "stored_stack": StoredStack,
    }
    with BpfObject.open("cpu") as obj:
        for struct, mirror in mirrors.items():
            size, members = btf.struct_layout(obj, struct)
            assert size == ctypes_size(mirror), struct
            for name, _ in mirror._fields_:
                assert members[name] == getattr(mirror, name).offset, (struct, name)


def ctypes_size(mirror: type) -> int:
    import ctypes

    return ctypes.sizeof(mirror)


def test_diff_gate_finds_the_doubled_function(
    tmp_path: Path, cc: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # 0.6 s of CPU at 1999 Hz: ~1,200 samples a run, where 499 Hz over 1 s gave ~500, in less
    # CPU time. a()'s share goes from 1/2 (1 ms for each 1 ms of b()) to 2/3 (2 ms for each):
    # +16.7 points, where the standard error of a change of share is about 2 points (binomial
    # over both sides). The gate fails a change beyond 5 points at 95 %: beyond about 8.3.
    # The doubled side is 4 standard errors above that, the repeat of the base (0) 4 below:
    # either outcome by chance is a 1 in 30,000 event. User stacks only: on a
    # loaded host a run can spend a quarter of its samples in the hypervisor's interrupts
    # (asm_sysvec_kvm_asyncpf_interrupt), a real change of kernel share that is not the
    # workload's; without kernel frames that time goes to the function it interrupted. The
    # clock is read 10 times less often than by default: its share, up to 30 % and varying
    # by 13 points between runs on a loaded machine, would otherwise be the change found.
    spin = build_c(cc, SPIN_C, tmp_path / "spin", *WORKLOAD_FLAGS, "-DSPIN_CHECK_EVERY=200000")

    def snapshot(name: str, a_ms: str) -> str:
        path = tmp_path / f"{name}.json"
        argv = ["cpu", "-F", "1999", "--user-only", "-o", str(path)]
        assert run([*argv, "--", str(spin), "0.6", a_ms]) == 0
        return str(path)

    base, base_again, doubled = snapshot("base", "1"), snapshot("again", "1"), snapshot("new", "2")
    capsys.readouterr()
    assert run(["diff", base, doubled, "--fail-on-regression", "5"]) == 1
    verdict = capsys.readouterr().err
    # a's own time and its time with callees (the clock it reads) both doubled: the gate
    # names a, by whichever of the two grew more beyond the noise.
    assert re.match(r"REGRESSION: a (self|total) ", verdict), verdict
    assert run(["diff", base, base_again, "--fail-on-regression", "5"]) == 0, capsys.readouterr()


# hot_a calls the shared helper spin() once per round, hot_b argv[2] times; spin() spins 1 ms of
# CPU time. From 1 to 3 calls hot_b's time triples while its own (self) time stays nil, and
# spin's self share stays the whole profile: only hot_b's inclusive share shows the change.
SHARED_HELPER_C = (
    SPIN_CPU_C
    + r"""
#include <stdlib.h>
__attribute__((noinline)) void spin(void) { SPIN_CPU_MS(1.0); }
__attribute__((noinline)) void hot_a(void) { spin(); }
__attribute__((noinline)) void hot_b(int calls) { for (int i = 0; i < calls; i++) spin(); }
int main(int argc, char **argv) {
    int b_calls = atoi(argv[2]);
    double end = thread_cpu_s() + atof(argv[1]);
    while (thread_cpu_s() < end) { hot_a(); hot_b(b_calls); }
    return 0;
}
"""
)


def test_default_gate_names_the_caller_that_grew_through_a_shared_helper(
    tmp_path: Path, cc: str, capsys: pytest.CaptureFixture[str]
) -> None:
    workload = build_c(cc, SHARED_HELPER_C, tmp_path / "shared", *WORKLOAD_FLAGS)

    # 0.75 s of CPU at 499 Hz: ~375 samples a run. hot_b's total share goes from 1/2 to 3/4,
    # 20 points beyond the gate's 5: about six standard errors of the change.
    def snapshot(name: str, b_calls: str) -> str:
        path = tmp_path / f"{name}.json"
        argv = ["cpu", "-F", "499", "-o", str(path), "--", str(workload), "0.75", b_calls]
        assert run(argv) == 0
        return str(path)

    base, base_again, tripled = snapshot("base", "1"), snapshot("again", "1"), snapshot("new", "3")
    capsys.readouterr()
    assert run(["diff", base, tripled, "--fail-on-regression", "5"]) == 1
    verdict = capsys.readouterr().err
    assert re.match(
        r"REGRESSION: hot_b total \d+\.\d\d% -> \d+\.\d\d% \(\+\d+\.\d\d pts; self unchanged\) "
        r"via spin in cpu",
        verdict,
    ), verdict
    # Narrowed to self shares, nothing moved: the caller's growth is invisible there.
    assert run(["diff", base, tripled, "--fail-on-regression", "5", "--metric", "self"]) == 0
    assert run(["diff", base, tripled, "--fail-on-regression", "5", "--metric", "total"]) == 1
    assert "REGRESSION: hot_b total" in capsys.readouterr().err
    # Gating both shares does not make unchanged code fail.
    assert run(["diff", base, base_again, "--fail-on-regression", "5"]) == 0


@pytest.fixture(autouse=True)
def _clean_env() -> Iterator[None]:
    saved = os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    yield
    if saved is not None:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = saved


STUCK_C = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
static int fds[2];
__attribute__((noinline)) void *wait_for_data(void *arg) {
    char c;
    printf("%ld\n", (long)syscall(SYS_gettid));
    fflush(stdout);
    read(fds[0], &c, 1); /* nothing is ever written */
    return arg;
}
/* Asleep nearly all the time too, but in short naps: it is seen switching. */
__attribute__((noinline)) void *nap(void *arg) {
    printf("%ld\n", (long)syscall(SYS_gettid));
    fflush(stdout);
    for (;;) usleep(200);
    return arg;
}
int main(void) {
    pthread_t t, n;
    if (pipe(fds)) return 1;
    pthread_create(&t, 0, wait_for_data, 0);
    usleep(50000);
    pthread_create(&n, 0, nap, 0);
    pthread_join(t, 0);
    return 0;
}
"""


@pytest.fixture
def stuck_process(tmp_path: Path, cc: str) -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    """Two threads asleep from the start (a reader on an empty pipe, main joining it) and one
    napping 200 us at a time."""
    binary = build_c(cc, STUCK_C, tmp_path / "stuck", "-O1", "-pthread")
    proc = subprocess.Popen([str(binary)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    reader_tid, napper_tid = int(proc.stdout.readline()), int(proc.stdout.readline())
    time.sleep(0.2)  # all asleep
    yield proc, reader_tid, napper_tid
    proc.kill()
    proc.wait()


def test_threads_blocked_for_the_whole_run_are_reported(
    stuck_process: tuple[subprocess.Popen[str], int, int],
) -> None:
    from otlp_ebpf.collectors import cpu

    proc, reader_tid, napper_tid = stuck_process
    config = cpu.CpuConfig(
        targets=TargetSpec(pids=(proc.pid,)), off_cpu=True, duration_s=1.0, min_block_us=10_000
    )
    called_ns = time.monotonic_ns()
    snapshot = cpu.collect(config)
    returned_ns = time.monotonic_ns()

    by_tid = {s.tid: s for s in snapshot.off_cpu}
    reader, main = by_tid[reader_tid], by_tid[proc.pid]
    for thread in (reader, main):
        assert thread.frames[0] == cpu.BLOCKED_WHOLE_RUN_FRAME, thread.frames
        # the whole run: at least the second asked, at most the call (a loaded machine
        # stretches both alike)
        assert 0.9e9 <= thread.total_ns <= returned_ns - called_ns
    assert "read" in reader.frames[1], reader.frames  # libc's read wrapper, where it waits
    assert any(f.endswith("pipe_read_[k]") for f in reader.frames), reader.frames
    assert any(f.startswith("futex") for f in main.frames), main.frames
    assert any("2 threads blocked for the whole run" in n for n in snapshot.notes)
    # The napper is not taken for a thread that slept throughout. Its 200 us naps are under
    # --min-block-us, though a busy machine may wake it late enough to record a few.
    napper = [s for s in snapshot.off_cpu if s.tid == napper_tid]
    assert not any(s.frames[0] == cpu.BLOCKED_WHOLE_RUN_FRAME for s in napper), napper
    assert sum(s.total_ns for s in napper) < 0.5e9


def test_cpu_under_a_budget_lowers_its_rate_and_keeps_the_shares(tmp_path, cc, capsys):
    busy = build_c(cc, TWO_BUSY, tmp_path / "busy", "-O1", "-g")
    path = tmp_path / "cpu.json"
    assert run(["cpu", "-F", "999", "--budget", "2", "-o", str(path), "--", str(busy), "6"]) == 0
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    doc = json.loads(path.read_text())
    cost = doc["self_cost"]
    rates = [t["rates"]["cpu_hz"] for t in cost["ticks"]]
    # 999 Hz on two busy CPUs is ~2000 samples/s to unwind: far more than 2% of a core (2%,
    # not 1%: on a loaded machine each sample costs more and 1% leaves too few to judge)
    assert cost["budget_pct"] == 2.0 and min(rates) < 999
    assert f"cpu sampling lowered to {min(rates):.0f} Hz (asked 999)" in summary
    assert any(n.startswith("budget 2%: cpu sampling lowered from 999 Hz") for n in doc["notes"])
    stacks = doc["stacks"]
    alpha = sum(s["count"] for s in stacks if "alpha" in s["frames"])
    beta = sum(s["count"] for s in stacks if "beta" in s["frames"])
    samples = alpha + beta
    assert samples >= 50
    # 2/3 of the CPU time is alpha's by construction; four standard errors of a binomial share
    assert abs(alpha / samples - 2 / 3) < 4 * (2 / 9 / samples) ** 0.5


# Two processes spinning in a leaf function (no call inside: every sample's leaf is it),
# built with frame pointers so that a frame-pointer stack reaches main. They stop after
# argv[1] seconds or, given argv[2], once that file exists (argv[1] then only caps the run).
HOT_LEAF_C = r"""
#include <time.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static double now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9;
}
__attribute__((noinline)) void hot_leaf(void) {
    static volatile unsigned long sink;
    for (unsigned long i = 0; i < 2000000; i++) sink += i;
}
int main(int argc, char **argv) {
    pid_t child = fork();
    double end = now() + atof(argv[1]);
    const char *stop = argc > 2 ? argv[2] : 0;
    while (now() < end && !(stop && access(stop, F_OK) == 0)) hot_leaf();
    if (child) waitpid(child, 0, 0);
    return 0;
}
"""
# A budgeted run's workload ends once the budget has done what a test looks at: on a loaded
# machine its decisions come late (behind the samples of the first rate), so a run of fixed
# length may end before them.
HOT_LEAF_CAP_S = "60"


def stop_after_decision(
    monkeypatch: pytest.MonkeyPatch, stop: Path, done: Callable[[Any], bool]
) -> None:
    """Create `stop` (HOT_LEAF_C's second argument) after the budget decision for which
    `done(controller)` first holds."""
    from otlp_ebpf.collectors import budget

    decide = budget.BudgetController.next_hz

    def next_hz(self: Any, cost_pct: float) -> int:
        hz = decide(self, cost_pct)
        if done(self):
            stop.touch()
        return hz

    monkeypatch.setattr(budget.BudgetController, "next_hz", next_hz)


def stop_after_frame_pointer_decisions(
    monkeypatch: pytest.MonkeyPatch, stop: Path, decisions: int = 4
) -> None:
    """Stop the workload once the run has fallen back to frame pointers and sampled with
    them for `decisions` more decisions (a second at four a second)."""
    after = Counter[str]()

    def done(controller: Any) -> bool:
        after["fp"] += controller.unwind == "fp"
        return after["fp"] > decisions

    stop_after_decision(monkeypatch, stop, done)


def test_a_budget_dwarf_cannot_hold_falls_back_to_frame_pointers(tmp_path, cc, capsys, monkeypatch):
    from otlp_ebpf.collectors import budget

    # 0.01% of a core: no DWARF rate holds it (the unwinding helper alone costs more). A high
    # floor and a short wait there make the switch come early; frame pointers are kept at
    # that rate after it (a 1 Hz floor would leave too few samples to name the hot function
    # for sure), and the workload runs until they have sampled for a second. -F 199: a higher
    # rate floods the unwinder before the first decision, which then comes late.
    monkeypatch.setattr(budget, "FALLBACK_FLOOR_HZ", 99)
    monkeypatch.setattr(budget, "FALLBACK_AFTER", 2)
    monkeypatch.setattr(budget, "MIN_HZ", 99)
    stop = tmp_path / "stop"
    stop_after_frame_pointer_decisions(monkeypatch, stop)
    busy = build_c(cc, HOT_LEAF_C, tmp_path / "busy", "-O1", "-g", "-fno-omit-frame-pointer")
    path = tmp_path / "cpu.json"
    args = ["cpu", "-F", "199", "--budget", "0.01", "-o", str(path)]
    assert run([*args, "--", str(busy), HOT_LEAF_CAP_S, str(stop)]) == 0
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    doc = json.loads(path.read_text())
    unwind = [t["unwind"] for t in doc["self_cost"]["ticks"]]
    # DWARF (the first tick may end after the switch already), then frame pointers to the end
    assert unwind[-1] == "fp" and unwind == sorted(unwind), unwind
    assert "fell back from DWARF to frame pointers" in summary, summary
    fell = [n for n in doc["notes"] if n.startswith("budget: fell back from DWARF")]
    assert len(fell) == 1, doc["notes"]
    assert "over the 0.01% budget at 99 Hz with DWARF unwinding" in fell[0]
    # what frame pointers sampled after the switch: the workload's hot function
    assert "unwound with frame pointers (hottest: hot_leaf)" in fell[0], fell[0]
    assert any(n.startswith("unwind: auto") and "then fp" in n for n in doc["notes"])
    assert "ended: target exited" in doc["notes"] and doc["command_exit"] == 0
    assert any(s["frames"][-1:] == ["hot_leaf"] for s in doc["stacks"])


def test_dwarf_asked_for_is_kept_under_a_budget_it_cannot_hold_and_warned_about(
    tmp_path, cc, capsys, monkeypatch
):
    from otlp_ebpf.collectors import budget

    # One decision over the budget at the floor makes the fallback due (waiting for more is
    # the test above's): on a loaded machine the first decisions come late, behind the
    # samples taken at 199 Hz, and a 4 s run did not always get two in a row at the floor.
    monkeypatch.setattr(budget, "FALLBACK_FLOOR_HZ", 99)
    monkeypatch.setattr(budget, "FALLBACK_AFTER", 1)
    stop = tmp_path / "stop"
    # On an idle machine the fallback is due at the second decision, half a second in: the
    # run goes on until a tick has closed too (its unwind is what the test reads).
    first: list[float] = []

    def held_over_after_a_tick(controller: Any) -> bool:
        first.append(first[0] if first else time.monotonic())
        ticked = time.monotonic() - first[0] > budget.TICK_S + budget.CONTROL_S
        return bool(controller.fallback.held_over_pct) and ticked

    stop_after_decision(monkeypatch, stop, held_over_after_a_tick)
    busy = build_c(cc, HOT_LEAF_C, tmp_path / "busy", "-O1", "-g", "-fno-omit-frame-pointer")
    path = tmp_path / "cpu.json"
    args = ["cpu", "-F", "199", "--unwind", "dwarf", "--budget", "0.01", "-o", str(path)]
    assert run([*args, "--", str(busy), HOT_LEAF_CAP_S, str(stop)]) == 0
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    doc = json.loads(path.read_text())
    assert {t["unwind"] for t in doc["self_cost"]["ticks"]} == {"dwarf"}
    assert "fell back" not in summary and "over budget" in summary, summary
    assert not any(n.startswith("budget: fell back") for n in doc["notes"])
    note = next(n for n in doc["notes"] if n.startswith("budget 0.01%: cpu sampling"))
    assert "DWARF unwinding kept as --unwind dwarf asked" in note, note
    assert "unwind: dwarf" in doc["notes"]
