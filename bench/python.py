#!/usr/bin/env python3
"""Python frames against py-spy (PyPI), on every installed CPython, in one session.

Accuracy: a workload spends thread CPU time in three Python functions per round, `a` 2 ms,
`b` 1 ms and `c` 1 ms inside a C extension (zlib), on average (each call lasts a random time,
so that no period of the workload can alias with a sampler's), until it has spent `--cpu-s`
seconds, and measures the truth itself: the thread CPU time spent in each function. One
process is profiled by both at once, `otlp-ebpf cpu -p` and `py-spy record -p` at the same
rate (`--rate`, 499 Hz: ~10,000 samples in 20 s, so that a 23% share holds ~2,300 and its
standard error is ~2% relative), attached before it starts its work: both see the same
execution. For each function, the share of samples whose stack holds it is printed for the
truth and both profilers, each profiler's relative difference from the truth, and ours from
py-spy's (goal: within 10%), each with its standard error (binomial: an upper bound for
evenly spaced samples), and whether the caller -> callee chains agree.

The two do not count the same thing: otlp-ebpf samples CPU time (a CPU-clock perf event),
py-spy wall time (every sample of a thread that is not idle, including the time a runnable
thread waits for a CPU). On a loaded machine that wait goes, in py-spy's profile, to whatever
the thread runs next. So the workload runs under a real-time policy (`chrt -f 1`, root) on
a machine whose other load is normal-priority: it is never waiting for a CPU (but for the
kernel's reserve for normal tasks, 5% of each second), its wall time is its CPU time, and
both count the same (`--no-rt` runs it as a normal process, as the first figures were taken).
py-spy samples on its own clock from user space, so it runs above the workload's priority
(`chrt -f 2`): delayed by the machine's other load, its samples came in bursts of reads of
one moment of the target and, in its default mode, which stops the target at each sample
and counts the stopped time too, 8-34% more of them fell in `c` than its CPU time.
`--py-spy-nonblocking` compares with its mode that reads the target without stopping it.

Overhead: a fixed amount of pure-Python work (so a slower run shows as a longer one) timed by
the workload itself, unprofiled, under otlp-ebpf and under py-spy at 99 Hz, in interleaved
rounds, each run under the same real-time policy (so the machine's other load does not time
it; py-spy above it, as in the accuracy runs); the medians are printed as ratios against the
unprofiled median.

Run as root: `.venv/bin/python bench/python.py [--versions 3.11,3.12] [--runs 2] [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

PYENV = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
SYSTEM_PYTHON = "/usr/bin/python3.11"
PY_SPY = str(Path(sys.executable).with_name("py-spy"))
CLI = [sys.executable, "-m", "otlp_ebpf", "-q"]
FUNCTIONS = ("a", "b", "c", "spin")
# The workload's scheduling (see the module doc); empty with --no-rt.
RT: list[str] = ["chrt", "-f", "1"] if shutil.which("chrt") else []
# py-spy samples on its own clock, so it runs above the workload's priority: otherwise the
# machine's other load delays its samples, which then come in bursts of reads of one moment
# of the target, and keeps the target stopped longer (empty with --no-rt).
SPY_RT: list[str] = ["chrt", "-f", "2"] if RT else []
# py-spy's options in the accuracy runs: its default mode, which stops the target at each
# sample; --py-spy-nonblocking reads it without stopping it.
SPY_OPTIONS: list[str] = []

ACCURACY_APP = """\
import json
import os
import random
import sys
import time
import zlib

DATA = bytes(range(256)) * 512
# Thread CPU time spent in each function (the truth the profiles are compared with).
SPENT = {"a": 0.0, "b": 0.0, "c": 0.0, "spin": 0.0}


def spin(s):
    start = now = time.thread_time()
    end = start + s
    while now < end:
        now = time.thread_time()
    SPENT["spin"] += now - start


def a(s):
    spin(s)


def b(s):
    spin(s)


def c(s):
    end = time.thread_time() + s
    while time.thread_time() < end:
        zlib.compress(DATA, 9)


def main(cpu_s):
    # Each call lasts a random time (mean: a 2 ms, b and c 1 ms), so that a round is no
    # period a sampler's own period could alias with.
    rng = random.Random(17)
    clock = time.thread_time
    stop = clock() + cpu_s
    t0 = clock()
    while t0 < stop:
        a(rng.uniform(0.001, 0.003))
        t1 = clock()
        b(rng.uniform(0.0005, 0.0015))
        t2 = clock()
        c(rng.uniform(0.0005, 0.0015))
        t3 = clock()
        SPENT["a"] += t1 - t0
        SPENT["b"] += t2 - t1
        SPENT["c"] += t3 - t2
        t0 = clock()


# Both profilers attach first: the work starts once the file argv[2] exists.
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
main(float(sys.argv[1]))
with open(sys.argv[3], "w") as out:
    json.dump(SPENT, out)
"""

OVERHEAD_APP = """\
import sys
import time


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


t0 = time.perf_counter()
for _ in range(int(sys.argv[1])):
    fib(22)
print(f"{time.perf_counter() - t0:.6f}")
"""


def interpreters(wanted: list[str] | None) -> dict[str, str]:
    found = {"3.11 (system, static)": SYSTEM_PYTHON} if os.path.exists(SYSTEM_PYTHON) else {}
    for path in sorted(glob.glob(str(PYENV / "3.*" / "bin" / "python3.*"))):
        match = re.search(r"python(3\.\d+)$", path)
        if match and tuple(int(x) for x in match.group(1).split(".")) >= (3, 8):
            found[match.group(1)] = path
    if wanted:
        found = {k: v for k, v in found.items() if k.split()[0] in wanted}
    return found


@dataclass
class Profile:
    """Samples per workload function (stacks holding it) and per caller -> callee chain, over
    the `total` samples that hold any workload function; for the truth, CPU seconds."""

    counts: Counter[str] = field(default_factory=Counter)
    total: float = 0
    exact: bool = False  # a measured time, not a count of samples

    def share(self, function: str) -> float:
        return self.counts[function] / self.total if self.total else 0.0

    def add(self, other: Profile) -> None:
        self.counts.update(other.counts)
        self.total += other.total


@dataclass
class Run:
    ours: Profile
    spy: Profile
    truth: Profile
    notes: str


def one_run(python: str, app: Path, cpu_s: str, rate: int, tmp: Path) -> Run:
    """Run the workload once, profiled by otlp-ebpf and py-spy at the same time."""
    go = tmp / "go"
    go.unlink(missing_ok=True)
    ours_out, spy_out, truth_out = tmp / "ours.json", tmp / "spy.txt", tmp / "truth.json"
    target = subprocess.Popen([*RT, python, str(app), cpu_s, str(go), str(truth_out)])
    try:
        ours = subprocess.Popen(
            [*CLI[:-1], "cpu", "-F", str(rate), "-p", str(target.pid), "-o", str(ours_out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        spy_argv = [*SPY_RT, PY_SPY, "record", *SPY_OPTIONS, "-r", str(rate), "-f", "raw"]
        spy_argv += ["-p", str(target.pid)]
        spy = subprocess.Popen(
            [*spy_argv, "-o", str(spy_out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_for_line(ours, "profiling")
        # py-spy says it samples only once it has read the interpreter, which can come late
        # on a loaded machine: it is given a moment (it attached already when it said so).
        time.sleep(2.0)
        if spy.poll() is not None:
            raise RuntimeError("py-spy ended before the work began")
        go.touch()
        target.wait()
        assert ours.stderr is not None
        ours_err = ours.stderr.read()  # its last lines: the run's account
        ours.wait(timeout=120)
        spy.communicate(timeout=120)
    finally:
        target.kill()
        target.wait()
    snap = json.loads(ours_out.read_text())
    ours_stacks = [(s["frames"], s["count"]) for s in snap["stacks"]]
    spy_stacks = []
    for line in spy_out.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        spy_stacks.append((frames.split(";"), int(count)))
    spent = json.loads(truth_out.read_text())
    truth = Profile(Counter(spent), spent["a"] + spent["b"] + spent["c"], exact=True)
    # The run's account (samples, losses) and its Python note (walks that failed, if any).
    account = [line.strip() for line in ours_err.splitlines() if "lost" in line][-1:]
    account += [note for note in snap.get("notes", []) if note.startswith("python:")]
    return Run(
        _shares(ours_stacks, re.compile(r"^app\.(\w+) \(")),
        _shares(spy_stacks, re.compile(r"^(\w+) \(app\.py:")),
        truth,
        "; ".join(account),
    )


def _wait_for_line(proc: subprocess.Popen[str], text: str) -> None:
    """Until the profiler says it is attached (its status line on stderr)."""
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError(f"profiler ended before saying {text!r}")
        if text in line:
            return
    raise RuntimeError(f"profiler did not say {text!r}")


def _shares(stacks: list[tuple[list[str], int]], pattern: re.Pattern[str]) -> Profile:
    profile = Profile()
    for frames, count in stacks:
        names = [m.group(1) for f in frames if (m := pattern.match(f))]
        if not any(n in FUNCTIONS for n in names):
            continue
        profile.total += count
        profile.counts["chain " + " > ".join(names)] += count
        for name in set(names) & set(FUNCTIONS):
            profile.counts[name] += count
    return profile


def relative(p: Profile, q: Profile, function: str) -> tuple[float, float]:
    """p's share of `function` relative to q's, minus one, and its standard error (shares
    of samples are binomial; the truth, a measured time, has none)."""
    x, y = p.share(function), q.share(function)
    if not x or not y:
        return float("inf"), 0.0
    var = sum((1 - s) / (s * prof.total) for s, prof in ((x, p), (y, q)) if not prof.exact)
    return x / y - 1, x / y * math.sqrt(var)


def report(name: str, runs: list[Run]) -> bool:
    """Print one version's comparison (over all its runs, pooled); true when every share of
    ours is within 10% of py-spy's and the chains agree."""
    ours, spy, truth = Profile(), Profile(), Profile(exact=True)
    for run in runs:
        ours.add(run.ours)
        spy.add(run.spy)
        truth.add(run.truth)
    ok = bool(ours.total and spy.total)
    print(
        f"\n{name}: {ours.total} samples (otlp-ebpf), {spy.total} (py-spy), "
        f"{truth.total:.1f} s of CPU in the functions, {len(runs)} run(s)"
        + "".join(f"\n  otlp-ebpf: {run.notes}" for run in runs if run.notes)
    )
    print(
        "  function  truth   otlp-ebpf (vs truth)      py-spy (vs truth)         "
        "otlp-ebpf vs py-spy"
    )
    for function in FUNCTIONS:
        vs_spy, se = relative(ours, spy, function)
        cells = [f"  {function:<8}{truth.share(function):6.1%}"]
        for prof in (ours, spy):
            rel, rel_se = relative(prof, truth, function)
            cells.append(f"  {prof.share(function):6.1%} ({rel:+6.1%} ± {rel_se:4.1%})")
        within = abs(vs_spy) <= 0.10
        ok &= within
        cells.append(f"    {vs_spy:+6.1%} ± {se:4.1%}  {'ok' if within else 'MISSED'}")
        print("".join(cells))
    chains_ours = {
        k for k, v in ours.counts.items() if k.startswith("chain ") and v >= 0.05 * ours.total
    }
    chains_spy = {
        k for k, v in spy.counts.items() if k.startswith("chain ") and v >= 0.05 * spy.total
    }
    same = chains_ours == chains_spy
    ok &= same
    print(f"  chains holding >= 5% of samples: {'same' if same else 'DIFFERENT'}")
    for chain in sorted(chains_ours | chains_spy):
        print(f"    {chain[6:]}: {ours.counts[chain]} / {spy.counts[chain]}")
    return ok


def timed(prefix: list[str], python: str, app: Path, n: int) -> float:
    done = subprocess.run(
        [*prefix, *RT, python, str(app), str(n)], capture_output=True, text=True, check=True
    )
    return float(re.findall(r"^\d+\.\d{6}$", done.stdout, re.M)[-1])


def overhead(python: str, app: Path, rounds: int, tmp: Path) -> None:
    probe = timed([], python, app, 20)
    n = max(20, int(20 * 3.0 / probe))  # about 3 s unprofiled
    runners = {
        "unprofiled": [],
        "otlp-ebpf cpu 99 Hz": [*CLI, "cpu", "-F", "99", "-o", str(tmp / "o.json"), "--"],
        "py-spy record 99 Hz": [
            *SPY_RT,
            PY_SPY,
            "record",
            "-r",
            "99",
            "-o",
            str(tmp / "s.svg"),
            "--",
        ],
        "py-spy --nonblocking 99 Hz": [
            *SPY_RT,
            PY_SPY,
            "record",
            "--nonblocking",
            "-r",
            "99",
            "-o",
            str(tmp / "n.svg"),
            "--",
        ],
    }
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for key, prefix in runners.items():
            times[key].append(timed(prefix, python, app, n))
    base = statistics.median(times["unprofiled"])
    fastest = min(times["unprofiled"])
    print(
        f"\noverhead on the target ({python}, {rounds} rounds; unprofiled: median {base:.2f} s, "
        f"fastest {fastest:.2f} s)\n  (ratios of medians, and of the fastest runs: the least "
        "disturbed by the machine's other load)"
    )
    for key, values in times.items():
        ratio_median = statistics.median(values) / base
        ratio_fastest = min(values) / fastest
        print(f"  {key:<28} {ratio_median:7.3f}x  {ratio_fastest:7.3f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--versions", help="comma-separated 3.X list (default: all installed)")
    parser.add_argument("--cpu-s", default="20", help="CPU seconds of the accuracy workload")
    parser.add_argument(
        "--rate", type=int, default=499, help="samples per second of both, for accuracy"
    )
    parser.add_argument(
        "--py-spy-nonblocking",
        action="store_true",
        help="accuracy against py-spy --nonblocking (reads the target without stopping it)",
    )
    parser.add_argument("--runs", type=int, default=1, help="accuracy runs per version, pooled")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the overhead runs")
    parser.add_argument("--overhead-only", action="store_true")
    parser.add_argument("--accuracy-only", action="store_true")
    parser.add_argument("--no-rt", action="store_true", help="run the workload as a normal task")
    args = parser.parse_args()
    if args.no_rt:
        RT.clear()
        SPY_RT.clear()
    if args.py_spy_nonblocking:
        SPY_OPTIONS.append("--nonblocking")
    if os.geteuid() != 0:
        print("bench/python.py needs root (BPF, ptrace)", file=sys.stderr)
        return 3
    if not os.path.exists(PY_SPY):
        print(f"py-spy not found at {PY_SPY} (pip install py-spy)", file=sys.stderr)
        return 3
    found = interpreters(args.versions.split(",") if args.versions else None)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        app = tmp / "app.py"
        app.write_text(ACCURACY_APP)
        busy = tmp / "busy.py"
        busy.write_text(OVERHEAD_APP)
        print(f"load average at the start: {os.getloadavg()[0]:.2f}")
        results = {}
        if not args.overhead_only:
            for name, python in found.items():
                runs = [one_run(python, app, args.cpu_s, args.rate, tmp) for _ in range(args.runs)]
                results[name] = report(name, runs)
        if not args.accuracy_only:
            overhead(
                found.get("3.11 (system, static)", next(iter(found.values()))),
                busy,
                args.rounds,
                tmp,
            )
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print(
        "\naccuracy within 10% of py-spy:",
        ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in results.items()),
    )
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
