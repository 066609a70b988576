#!/usr/bin/env python3
"""Python frames against py-spy (PyPI), on every installed CPython, in one session.

Accuracy: a workload spends thread CPU time in three Python functions per round, `a` 2 ms,
`b` 1 ms and `c` 1 ms inside a C extension (zlib), until it has spent `--cpu-s` seconds. One
process is profiled by both at once, `otlp-ebpf cpu -p` and `py-spy record -p` at the same
rate, attached before it starts its work: both see the same execution. For each function the
share of samples whose stack holds it is printed for both, with the relative difference
(goal: within 10%), and whether the caller -> callee chains agree.

The two do not count the same thing: otlp-ebpf samples CPU time (a CPU-clock perf event),
py-spy wall time (every sample of a thread that is not idle, including the time a runnable
thread waits for a CPU). On a loaded machine that wait goes, in py-spy's profile, to whatever
the thread runs next. So the workload runs under a real-time policy (`chrt -f 1`, root) on
a machine whose other load is normal-priority: it is never waiting for a CPU (but for the
kernel's reserve for normal tasks, 5% of each second), its wall time is its CPU time, and
both count the same (`--no-rt` runs it as a normal process, as the first figures were taken).

Overhead: a fixed amount of pure-Python work (so a slower run shows as a longer one) timed by
the workload itself, unprofiled, under otlp-ebpf and under py-spy at 99 Hz, in interleaved
rounds, each run under the same real-time policy (so the machine's other load does not time
it); the medians are printed as ratios against the unprofiled median.

Run as root: `.venv/bin/python bench/python.py [--versions 3.11,3.12] [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

PYENV = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
SYSTEM_PYTHON = "/usr/bin/python3.11"
PY_SPY = str(Path(sys.executable).with_name("py-spy"))
CLI = [sys.executable, "-m", "otlp_ebpf", "-q"]
FUNCTIONS = ("a", "b", "c", "spin")
# The workload's scheduling (see the module doc); empty with --no-rt.
RT: list[str] = ["chrt", "-f", "1"] if shutil.which("chrt") else []

ACCURACY_APP = """\
import os
import sys
import time
import zlib

DATA = bytes(range(256)) * 512


def spin(ms):
    end = time.thread_time() + ms / 1000.0
    while time.thread_time() < end:
        pass


def a():
    spin(2)


def b():
    spin(1)


def c():
    end = time.thread_time() + 0.001
    while time.thread_time() < end:
        zlib.compress(DATA, 9)


def main(cpu_s):
    stop = time.thread_time() + cpu_s
    while time.thread_time() < stop:
        a()
        b()
        c()


# Both profilers attach first: the work starts once the file argv[2] exists.
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
main(float(sys.argv[1]))
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


def both_shares(
    python: str, app: Path, cpu_s: str, tmp: Path
) -> tuple[tuple[Counter[str], int], tuple[Counter[str], int]]:
    """Run the workload once, profiled by otlp-ebpf and py-spy at the same time."""
    go = tmp / "go"
    go.unlink(missing_ok=True)
    ours_out, spy_out = tmp / "ours.json", tmp / "spy.txt"
    target = subprocess.Popen([*RT, python, str(app), cpu_s, str(go)])
    try:
        ours = subprocess.Popen(
            [*CLI[:-1], "cpu", "-F", "99", "-p", str(target.pid), "-o", str(ours_out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        spy_argv = [PY_SPY, "record", "-r", "99", "-f", "raw", "-p", str(target.pid)]
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
        for proc in (ours, spy):
            proc.communicate(timeout=120)
    finally:
        target.kill()
        target.wait()
    snap = json.loads(ours_out.read_text())
    ours_stacks = [(s["frames"], s["count"]) for s in snap["stacks"]]
    spy_stacks = []
    for line in spy_out.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        spy_stacks.append((frames.split(";"), int(count)))
    return (
        _shares(ours_stacks, re.compile(r"^app\.(\w+) \(")),
        _shares(spy_stacks, re.compile(r"^(\w+) \(app\.py:")),
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


def _shares(
    stacks: list[tuple[list[str], int]], pattern: re.Pattern[str]
) -> tuple[Counter[str], int]:
    """Samples per workload function (stacks holding it) and per chain, over the samples
    that hold any workload function."""
    per_function: Counter[str] = Counter()
    total = 0
    for frames, count in stacks:
        names = [m.group(1) for f in frames if (m := pattern.match(f))]
        if not any(n in FUNCTIONS for n in names):
            continue
        total += count
        per_function["chain " + " > ".join(names)] += count
        for name in set(names) & set(FUNCTIONS):
            per_function[name] += count
    return per_function, total


def accuracy(name: str, python: str, app: Path, cpu_s: str, tmp: Path) -> bool:
    (ours, ours_total), (spy, spy_total) = both_shares(python, app, cpu_s, tmp)
    ok = bool(ours_total and spy_total)
    print(f"\n{name}: {ours_total} samples (otlp-ebpf), {spy_total} (py-spy)")
    for function in FUNCTIONS:
        a = ours[function] / ours_total if ours_total else 0.0
        b = spy[function] / spy_total if spy_total else 0.0
        rel = abs(a - b) / b if b else float("inf")
        ok &= rel <= 0.10
        verdict = "ok" if rel <= 0.10 else "MISSED"
        print(f"  {function:<5} otlp-ebpf {a:6.1%}  py-spy {b:6.1%}  diff {rel:6.1%}  {verdict}")
    # The known truth: a spins twice b's CPU time per round.
    ratios = [
        f"{c[name_a] / c[name_b]:.2f}" if c[name_b] else "-"
        for c in (ours, spy)
        for name_a, name_b in (("a", "b"),)
    ]
    print(f"  a / b (2.00 in CPU time): otlp-ebpf {ratios[0]}, py-spy {ratios[1]}")
    chains_ours = {k for k, v in ours.items() if k.startswith("chain ") and v >= 0.05 * ours_total}
    chains_spy = {k for k, v in spy.items() if k.startswith("chain ") and v >= 0.05 * spy_total}
    same = chains_ours == chains_spy
    ok &= same
    print(f"  chains holding >= 5% of samples: {'same' if same else 'DIFFERENT'}")
    for chain in sorted(chains_ours | chains_spy):
        print(f"    {chain[6:]}: {ours[chain]} / {spy[chain]}")
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
        "py-spy record 99 Hz": [PY_SPY, "record", "-r", "99", "-o", str(tmp / "s.svg"), "--"],
        "py-spy --nonblocking 99 Hz": [
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
    parser.add_argument("--cpu-s", default="15", help="CPU seconds of the accuracy workload")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--overhead-only", action="store_true")
    parser.add_argument("--no-rt", action="store_true", help="run the workload as a normal task")
    args = parser.parse_args()
    if args.no_rt:
        RT.clear()
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
        results = {}
        if not args.overhead_only:
            results = {name: accuracy(name, p, app, args.cpu_s, tmp) for name, p in found.items()}
        overhead(
            found.get("3.11 (system, static)", next(iter(found.values()))), busy, args.rounds, tmp
        )
    print(
        "\naccuracy within 10% of py-spy:",
        ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in results.items()),
    )
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
