"""Soak: system-wide `cpu` and `syscalls` side by side for a few minutes against a shell that
starts short processes without pause (/bin/true, ls, id, uname, mv). Prints each tool's RSS over
time, its growth after warm-up (the RSS at the end over the RSS after warm-up, and MB per
minute), the events each counted and every event lost, by reason. Goals: RSS flat after
warm-up (growth ratio close to 1.00), nothing lost to a full table.

    python bench/soak.py [--seconds 150] [--every 10] [--warmup 30]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from _util import CLI, env_with_src

CHURN = """
n=0
while :; do
  /bin/true; ls / >/dev/null; id >/dev/null; uname >/dev/null
  n=$((n+1)); echo $n > "$1.new" && mv "$1.new" "$1"
done
"""
FULL_TABLE_REASONS = ("table full",)


def memory_kb(pid: int) -> dict[str, int]:
    """The tool's anonymous memory (its heap: what a leak grows), its file-backed resident
    pages (symbol and debug files it maps, shared and reclaimable) and the anonymous memory of
    its children (the cpu collector's table-decoding child, busy while new binaries appear)."""
    out = {"anon": _status_kb(pid, "RssAnon"), "file": _status_kb(pid, "RssFile"), "child": 0}
    for child in children_of(pid):
        out["child"] += _status_kb(child, "RssAnon")
    return out


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children_of(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--every", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=30.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="otlp-ebpf-soak-"))
    (work / "churn.sh").write_text(CHURN)
    counter = work / "rounds"
    churn = subprocess.Popen(["sh", str(work / "churn.sh"), str(counter)], start_new_session=True)
    tools = {
        name: subprocess.Popen(
            [*CLI, name, "-d", str(args.seconds), "-o", str(work / f"{name}.json")],
            env=env_with_src(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("cpu", "syscalls")
    }
    started = time.monotonic()
    series: list[tuple[float, dict[str, dict[str, int]]]] = []
    try:
        while any(p.poll() is None for p in tools.values()):
            series.append(
                (time.monotonic() - started, {n: memory_kb(p.pid) for n, p in tools.items()})
            )
            time.sleep(args.every)
        errors = {n: p.stderr.read() if p.stderr else "" for n, p in tools.items()}
    finally:
        os.killpg(churn.pid, signal.SIGKILL)
        churn.wait()
        for p in tools.values():
            if p.poll() is None:
                p.kill()
    rounds = int(counter.read_text() or 0) if counter.exists() else 0
    report(args, series, work, rounds, errors)


def report(
    args: argparse.Namespace,
    series: list[tuple[float, dict[str, dict[str, int]]]],
    work: Path,
    rounds: int,
    errors: dict[str, str],
) -> None:
    print(f"churn: {rounds:,} rounds, {5 * rounds:,} processes in {args.seconds:.0f} s")
    print("memory in MB: anon = the tool's heap, file = mapped files, child = decoding child")
    print(f"{'t (s)':>7}{'cpu anon':>10}{'file':>7}{'child':>7}{'syscalls anon':>15}{'file':>7}")
    for t, mem in series:
        cpu, sc = mem.get("cpu", {}), mem.get("syscalls", {})
        print(
            f"{t:>7.0f}{cpu.get('anon', 0) / 1024:>10.1f}{cpu.get('file', 0) / 1024:>7.1f}"
            f"{cpu.get('child', 0) / 1024:>7.1f}{sc.get('anon', 0) / 1024:>15.1f}"
            f"{sc.get('file', 0) / 1024:>7.1f}"
        )
    for name in ("cpu", "syscalls"):
        # The last sample may fall in the end-of-run work (symbolizing, writing): left out.
        live = [(t, m[name]["anon"]) for t, m in series[:-1] if m.get(name, {}).get("anon")]
        after = [(t, kb) for t, kb in live if t >= args.warmup]
        if len(after) >= 2:
            (t0, warm), (t1, end) = after[0], after[-1]
            per_min = (end - warm) / 1024 / max(t1 - t0, 1e-9) * 60
            print(
                f"{name}: heap (RssAnon) {warm / 1024:.1f} MB after warm-up ({t0:.0f} s), "
                f"{end / 1024:.1f} MB at {t1:.0f} s: ratio {end / warm:.2f}, "
                f"{per_min:+.2f} MB/min"
            )
        path = work / f"{name}.json"
        if not path.exists():
            print(f"{name}: no snapshot; stderr: {errors.get(name, '')[-500:]}")
            continue
        doc = json.loads(path.read_text())
        lost = doc["lost_events"]
        events = (
            doc.get("samples_total", 0)
            if name == "cpu"
            else sum(s["count"] for s in doc["syscalls"])
        )
        full = {k: v for k, v in lost.items() if any(r in k for r in FULL_TABLE_REASONS)}
        print(
            f"{name}: {events:,} events, lost {sum(lost.values()):,} "
            f"({', '.join(f'{k}: {v:,}' for k, v in lost.items()) or 'none'}); "
            f"lost to full tables: {sum(full.values()):,}; "
            f"tool CPU {doc['self_cost']['cpu_s']:.1f} s, peak RSS "
            f"{doc['self_cost']['peak_rss_kb'] / 1024:.1f} MB"
        )
        for note in doc["notes"]:
            if "without their process" in note:
                print(f"{name}: {note}")


if __name__ == "__main__":
    main()
