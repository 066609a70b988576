"""Soak: `otlp-ebpf agent` (system-wide cpu and syscalls, default 1% budget) for minutes
against a busy, process-churning workload (a shell starting short processes without pause and
a CPU spinner), exporting to a local OTLP/HTTP receiver that counts what it gets.

Every interval it scrapes the agent's /metrics. It prints RSS over time and its growth after
warm-up (RSS at the end over RSS after warm-up: flat is ~1.00), the agent's steady cost
against its budget (CPU and BPF run time in % of one core, from the end of warm-up), the
effective cpu sampling rate, and what a node sends: batches per second and bytes per interval.

    python bench/agent_soak.py [--minutes 10] [--interval 10] [--warmup-minutes 1]
                               [--signals cpu,syscalls] [--agent-args '--burst-intervals 0']
                               [--sleepers N] [--fresh-cache] [--new-binary-at SEC]

`--sleepers N` adds N long-lived processes that each make a few syscalls a second: every
interval then exports the rows of N more processes (a host running many services), which
is what the export's per-row cost and the stop's last interval scale with.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import itertools
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field

from _util import CLI, env_with_src

from otlp_ebpf.collectors.budget import child_cpu_seconds, children_of

CHURN = """
while :; do /bin/true; ls / >/dev/null; id >/dev/null; uname >/dev/null; done
"""
SPIN = "while :; do :; done"
# N forked children (sharing the parent's pages), each calling twice a second until killed
SLEEPERS = """
import os, sys, time
for _ in range(int(sys.argv[1])):
    if os.fork() == 0:
        while True:
            time.sleep(0.5)
            os.getppid()
time.sleep(1e9)
"""
NEW_BINARY = "$t = time; while (time - $t < 60) { $x++ }"  # perl, for a minute
CPU_RATE = 'otlp_ebpf_sampling_rate_hertz{signal="cpu"}'
SYSCALLS = 'otlp_ebpf_events_total{signal="syscalls"}'
TRACED = 'otlp_ebpf_traced_ratio{signal="syscalls"}'
HELPERS_RSS = "otlp_ebpf_helpers_resident_memory_bytes"
RING_INTERVALS = 30 + 3 + 1  # the watch's ring at its defaults: window + record-after + 1


@dataclass
class Counting:
    requests: int = 0
    bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def start_receiver(counts: Counting) -> tuple[http.server.ThreadingHTTPServer, str]:
    """An OTLP/HTTP receiver that accepts everything (an empty response is a valid one)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with counts.lock:
                counts.requests += 1
                counts.bytes += len(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(url: str) -> dict[str, float]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return {}
    out = {}
    for match in re.finditer(r"^(otlp_ebpf_\w+(?:\{[^}]*\})?) (\S+)$", text, re.M):
        out[match.group(1)] = float(match.group(2))
    return out


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def helpers_rss_kb(pid: int) -> int:
    """RSS of the agent's helper processes (the unwind-table decoder), counted apart."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                total += sum(rss_kb(int(c)) for c in fh.read().split())
    except OSError:
        pass
    return total


def helpers_cpu_s(pid: int, seen: dict[int, float]) -> float:
    """CPU seconds of the agent's helpers so far: each one's last reading while it lived."""
    for child in children_of(pid):
        seen[child] = max(seen.get(child, 0.0), child_cpu_seconds(child))
    return sum(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--warmup-minutes", type=float, default=1.0)
    parser.add_argument("--signals", default="cpu,syscalls")
    parser.add_argument(
        "--agent-args", default="", help="more options for the agent, e.g. '--burst-intervals 0'"
    )
    parser.add_argument("--sleepers", type=int, default=0, help="long-lived processes to add")
    parser.add_argument(
        "--new-binary-at",
        type=float,
        default=0.0,
        help="seconds into the run: a program not run before (perl) spins for a minute, "
        "its unwind table decoded in the steady state (with --fresh-cache)",
    )
    parser.add_argument(
        "--fresh-cache",
        action="store_true",
        help="start with no unwind table cached: the decoder works into the steady state",
    )
    args = parser.parse_args()

    counts = Counting()
    server, url = start_receiver(counts)
    port = free_port()
    work = tempfile.mkdtemp(prefix="otlp-ebpf-agent-soak-")
    load = [subprocess.Popen(["sh", "-c", CHURN])]
    load.append(subprocess.Popen(["sh", "-c", SPIN]))  # one core: the machine is shared
    sleepers = None
    if args.sleepers:  # in a process group of their own, killed with it at the end
        sleepers = subprocess.Popen(
            [sys.executable, "-c", SLEEPERS, str(args.sleepers)], start_new_session=True
        )
        load.append(sleepers)
    env = env_with_src()
    env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
    if args.fresh_cache:
        env["XDG_CACHE_HOME"] = os.path.join(work, "cache")
    agent = subprocess.Popen(
        [*CLI, "agent", "--interval", str(args.interval), "--otlp", url, "--signals", args.signals,
         "--serve", f"127.0.0.1:{port}", "--spill-dir", os.path.join(work, "spill"),
         *args.agent_args.split()],
        env=env, stderr=open(os.path.join(work, "agent.log"), "w"),  # noqa: SIM115
    )  # fmt: skip
    rows: list[tuple[float, int, dict[str, float]]] = []
    helpers: list[int] = []
    decoder_cpu: list[float] = []  # the helpers' CPU so far, at each scrape
    decoder_seen: dict[int, float] = {}
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < args.minutes * 60:
            time.sleep(args.interval)
            if args.new_binary_at and time.monotonic() - t0 >= args.new_binary_at:
                args.new_binary_at = 0.0
                load.append(subprocess.Popen(["perl", "-e", NEW_BINARY]))
            rows.append(
                (
                    time.monotonic() - t0,
                    rss_kb(agent.pid),
                    scrape(f"http://127.0.0.1:{port}/metrics"),
                )
            )
            helpers.append(helpers_rss_kb(agent.pid))
            decoder_cpu.append(helpers_cpu_s(agent.pid, decoder_seen))
            t, rss, m = rows[-1]
            print(
                f"{t:7.0f} s  RSS {rss / 1024:6.1f} MB (helpers {helpers[-1] / 1024:5.1f} MB, "
                f"metric {m.get(HELPERS_RSS, 0) / 2**20:5.1f} MB)  "
                f"intervals {m.get('otlp_ebpf_intervals_total', 0):4.0f}  "
                f"cost {m.get('otlp_ebpf_cost_percent', 0):5.2f}%  "
                f"cpu rate {m.get(CPU_RATE, 0):5.0f} Hz  "
                f"syscalls {m.get(SYSCALLS, 0):12,.0f} (traced {m.get(TRACED, 1):.4f})  "
                f"bursts {m.get('otlp_ebpf_bursts_total', 0):3.0f}",
                flush=True,
            )
    finally:
        agent.send_signal(signal.SIGTERM)
        t_stop = time.monotonic()
        code = agent.wait(timeout=60)
        stop_s = time.monotonic() - t_stop
        for proc in load:
            with contextlib.suppress(ProcessLookupError):  # sleepers: their whole group
                if proc is sleepers:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
            proc.wait()
        server.shutdown()
    report(args, rows, counts, code, stop_s)
    if code:
        with open(os.path.join(work, "agent.log")) as log:
            print("agent's last lines:", *log.readlines()[-5:], sep="\n  ")
    peak_helpers = max(helpers or [0]) / 1024
    print(f"helpers' RSS (unwind-table decoder, apart): at most {peak_helpers:.1f} MB")
    warm = [i for i, r in enumerate(rows) if r[0] >= args.warmup_minutes * 60]
    if len(warm) >= 2 and len(decoder_cpu) == len(rows):
        first, last = warm[0], warm[-1]
        spent = decoder_cpu[last] - decoder_cpu[first]
        wall = rows[last][0] - rows[first][0]
        print(
            f"decoder's CPU (in the cost above): {decoder_cpu[first]:.2f} s in warm-up, "
            f"{spent:.2f} s after it ({100 * spent / wall:.3f}% of one core)"
        )


def report(args: argparse.Namespace, rows, counts: Counting, code: int, stop_s: float) -> None:
    warm = [r for r in rows if r[0] >= args.warmup_minutes * 60]
    if len(warm) < 2:
        print("too short to compare after warm-up")
        return
    (t_w, rss_w, m_w), (t_e, rss_e, m_e) = warm[0], warm[-1]

    def own(m: dict[str, float]) -> float:
        return m.get("otlp_ebpf_cpu_seconds_total", 0) + m.get("otlp_ebpf_bpf_run_seconds_total", 0)

    steady_pct = 100 * (own(m_e) - own(m_w)) / (t_e - t_w)
    # A scrape shows the agent's last interval's cost: one figure per interval that ended
    # since the scrape before (an interval running late is not counted twice). Their median is
    # the typical interval; the mean above also counts the bursts and new binaries.
    per_interval = [
        m.get("otlp_ebpf_cost_percent", 0)
        for (_, _, before), (_, _, m) in itertools.pairwise(warm)
        if m.get("otlp_ebpf_intervals_total", 0) > before.get("otlp_ebpf_intervals_total", 0)
    ] or [0.0]
    intervals = m_e.get("otlp_ebpf_intervals_total", 0)
    rates = [r[2].get(CPU_RATE, 0) for r in warm]
    budget = m_e.get("otlp_ebpf_budget_percent", 0)
    last_t = rows[-1][0]
    print()
    print(f"ran {last_t / 60:.1f} min, interval {args.interval:g} s; stop took {stop_s:.2f} s")
    print(f"exit code {code}")
    growth = (rss_e - rss_w) / 1024 / ((t_e - t_w) / 60)
    print(
        f"RSS after warm-up {rss_w / 1024:.1f} MB, at the end {rss_e / 1024:.1f} MB: "
        f"growth ratio {rss_e / rss_w:.3f} ({growth:+.2f} MB/min)"
    )
    after = [r[1] for r in warm]
    slope = statistics.linear_regression([r[0] / 60 for r in warm], [a / 1024 for a in after])
    print(f"RSS trend after warm-up (least squares): {slope.slope:+.2f} MB/min")
    half = len(after) // 2
    print(
        f"RSS after warm-up: min {min(after) / 1024:.1f} MB, max {max(after) / 1024:.1f} MB; "
        f"median of the first half {statistics.median(after[:half] or after) / 1024:.1f} MB, "
        f"of the second half {statistics.median(after[half:]) / 1024:.1f} MB"
    )
    print(
        f"steady cost {steady_pct:.2f}% of one core (agent CPU + BPF run time) vs budget "
        f"{budget:g}%: ratio {steady_pct / budget if budget else float('nan'):.2f}"
    )
    print(
        f"cost per interval after warm-up: median {statistics.median(per_interval):.2f}%, "
        f"mean {statistics.fmean(per_interval):.2f}% ({len(per_interval)} intervals)"
    )
    print(f"cpu sampling rate after warm-up: {min(rates):.0f}-{max(rates):.0f} Hz (asked 99)")
    traced = sorted(r[2].get(TRACED, 1.0) for r in warm)
    print(
        f"syscalls traced after warm-up: {traced[0]:.4f}-{traced[-1]:.4f} of the time "
        f"(median {statistics.median(traced):.4f})"
    )
    print(
        f"export: {counts.requests} requests, "
        f"{counts.bytes / max(intervals, 1) / 1024:.1f} KiB per interval, "
        f"{intervals / last_t:.3f} batches/s; "
        f"failures {m_e.get('otlp_ebpf_export_failures_total', 0):.0f}, "
        f"spilled {m_e.get('otlp_ebpf_spilled_batches_total', 0):.0f}"
    )
    lost = {k: v for k, v in m_e.items() if k.startswith("otlp_ebpf_lost_events_total") and v}
    print(f"events lost: {lost or 'none'}")
    kinds = {
        k.removeprefix("otlp_ebpf_findings_total"): v
        for k, v in m_e.items()
        if k.startswith("otlp_ebpf_findings_total") and v
    }
    print(
        f"watch: {sum(kinds.values()):.0f} findings {kinds or ''}, "
        f"{m_e.get('otlp_ebpf_bursts_total', 0):.0f} bursts, "
        f"{m_e.get('otlp_ebpf_watch_seconds_total', 0):.1f} s of CPU in the inspections"
    )
    ring_full = [r for r in rows if r[2].get("otlp_ebpf_intervals_total", 0) >= RING_INTERVALS]
    if len(ring_full) >= 2 and ring_full[0][0] > t_w:
        (t_r, rss_r, _), (t_end, rss_end, _) = ring_full[0], ring_full[-1]
        print(
            f"RSS once the watch's ring is full ({RING_INTERVALS} intervals, {t_r:.0f} s): "
            f"{rss_r / 1024:.1f} MB -> {rss_end / 1024:.1f} MB at the end "
            f"({(rss_end - rss_r) / 1024 / ((t_end - t_r) / 60):+.2f} MB/min)"
        )


if __name__ == "__main__":
    main()
