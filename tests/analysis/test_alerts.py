"""Alert rules from a recording, checked by promtool: each fires on the faulty window of the
recording it came from and stays silent before it and on a healthy run of the same workload."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from otlp_ebpf.analysis.alerts import PROMETHEUS_NAMES, AlertRule, alert_rules
from otlp_ebpf.analysis.analyze import analyze
from otlp_ebpf.cli.app import run
from otlp_ebpf.formatters.analyze_alerts import render_rules
from otlp_ebpf.latency import slot_bounds
from otlp_ebpf.model import OTHER_KEY, CpuSnapshot, RecordSnapshot, write_snapshot
from tests.analysis.analyze_fixtures import Fault, recording

INTERVAL = 15.0  # one row per scrape at the common 15 s interval

pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool missing (Debian package prometheus)"
)


def cumulative(per_row: list[dict[str, float]], start: float = 0.0) -> dict[str, list[float]]:
    """Per key, the running total of the rows' values (0 before the key's first row)."""
    keys = {k for row in per_row for k in row}
    out: dict[str, list[float]] = {k: [start] for k in keys}
    for row in per_row:
        for k in keys:
            out[k].append(out[k][-1] + row.get(k, 0.0))
    return out


def latency_buckets(rec: RecordSnapshot) -> list[dict[str, str]]:
    """The syscall latency histogram as the Collector hands it to Prometheus: cumulative
    `_bucket` series per upper bound (`le`, the kernel's log2 slot edges as in the OTLP
    export) and `+Inf`, each row adding that row's histogram."""
    rows: dict[str, list[dict[str, float]]] = {}
    for index, row in enumerate(rec.timeline):
        for tick in row.syscalls or ():
            rows.setdefault(tick.name, [{} for _ in rec.timeline])[index] = {
                k: float(n) for k, n in tick.hist.items()
            }
    out = []
    bucket = PROMETHEUS_NAMES["otlp_ebpf.syscall.duration"] + "_bucket"
    for name, per_row in rows.items():
        top = max((int(k) for r in per_row for k in r), default=0)
        bounds = slot_bounds(top + 1)
        at_or_below = [
            {str(slot): sum(v for k, v in r.items() if int(k) <= slot) for slot in range(top + 1)}
            for r in per_row
        ]
        totals = cumulative(at_or_below)
        everything = cumulative([{"inf": sum(r.values())} for r in per_row])["inf"]
        for slot in range(top + 1):
            out.append(
                {
                    "series": f'{bucket}{{otlp_ebpf_syscall_name="{name}",le="{bounds[slot]}"}}',
                    "values": " ".join(f"{v:g}" for v in totals[str(slot)]),
                }
            )
        out.append(
            {
                "series": f'{bucket}{{otlp_ebpf_syscall_name="{name}",le="+Inf"}}',
                "values": " ".join(f"{v:g}" for v in everything),
            }
        )
    return out


def cpu_seconds(rec: RecordSnapshot) -> list[dict[str, str]]:
    """On-CPU time as our export sends it (samples / frequency): per executable name (a
    resource label) and per leaf function."""
    cpu = rec.signals["cpu"]
    assert isinstance(cpu, CpuSnapshot)
    names = {str(p.pid): p.exe.rsplit("/", 1)[-1] or p.comm for p in rec.processes}
    per_exe, per_function = [], []
    for row in rec.timeline:
        exe: dict[str, float] = {}
        for pid, n in row.cpu.samples.items() if row.cpu else ():
            exe[names[pid]] = exe.get(names[pid], 0.0) + n / cpu.frequency_hz
        per_exe.append(exe)
        functions = row.cpu.functions.items() if row.cpu else ()
        per_function.append({f: n / cpu.frequency_hz for f, n in functions if f != OTHER_KEY})
    time_metric = PROMETHEUS_NAMES["otlp_ebpf.cpu.time"]
    function_metric = PROMETHEUS_NAMES["otlp_ebpf.cpu.function.time"]
    return [
        {
            "series": f'{time_metric}{{process_executable_name="{name}"}}',
            "values": " ".join(f"{v:.4f}" for v in values),
        }
        for name, values in cumulative(per_exe).items()
    ] + [
        {
            "series": f'{function_metric}{{code_function_name="{name}"}}',
            "values": " ".join(f"{v:.4f}" for v in values),
        }
        for name, values in cumulative(per_function).items()
    ]


def input_series(rec: RecordSnapshot) -> list[dict[str, str]]:
    """What a Prometheus fed by the Collector would hold: cumulative counters, histogram
    buckets and the level of outstanding memory, one sample per row (the first, at 0 s,
    before any row)."""
    errors: dict[str, list[int]] = {}
    retrans: dict[tuple[str, str], list[int]] = {}
    memory = [0]
    for index, row in enumerate(rec.timeline):
        for tick in row.syscalls or ():
            series = errors.setdefault(tick.name, [0] * (index + 1))
            series.append(series[-1] + tick.errors)
        for conn in row.net.connections if row.net else ():
            peer = conn.label.rsplit(" > ", 1)[1].rsplit(":", 1)
            series = retrans.setdefault((peer[0], peer[1]), [0] * (index + 1))
            series.append(series[-1] + conn.retransmits)
        memory.append(row.mem.outstanding_bytes if row.mem else memory[-1])
    memory[0] = memory[1]
    out = [
        {
            "series": f"{PROMETHEUS_NAMES['otlp_ebpf.syscall.errors']}"
            f'{{otlp_ebpf_syscall_name="{name}"}}',
            "values": " ".join(map(str, values)),
        }
        for name, values in errors.items()
    ]
    out += [
        {
            "series": f"{PROMETHEUS_NAMES['otlp_ebpf.tcp.retransmits']}"
            f'{{network_peer_address="{addr}",network_peer_port="{port}"}}',
            "values": " ".join(map(str, values)),
        }
        for (addr, port), values in retrans.items()
    ]
    out.append(
        {
            "series": PROMETHEUS_NAMES["otlp_ebpf.memory.outstanding"],
            "values": " ".join(map(str, memory)),
        }
    )
    return out + latency_buckets(rec) + cpu_seconds(rec)


def expected(rule: AlertRule, series_labels: dict[str, str]) -> dict[str, object]:
    return {
        "exp_labels": {"severity": rule.severity, **rule.labels, **series_labels},
        "exp_annotations": {"summary": rule.summary, "description": rule.description},
    }


def promtool_test(tmp_path: Path, rules: list[AlertRule], tests: list[dict[str, object]]) -> None:
    rules_file = tmp_path / "rules.yaml"
    with rules_file.open("w") as fh:
        render_rules(rules, fh, source="rec.json")
    check = subprocess.run(
        ["promtool", "check", "rules", str(rules_file)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    spec = tmp_path / "test.yaml"
    spec.write_text(
        json.dumps({"rule_files": [str(rules_file)], "evaluation_interval": "15s", "tests": tests})
    )
    result = subprocess.run(
        ["promtool", "test", "rules", str(spec)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def by_name(rules: list[AlertRule]) -> dict[str, AlertRule]:
    return {r.name: r for r in rules}


@pytest.mark.parametrize(
    "fault, alert, labels",
    [
        (
            Fault("errors", 30, 45),
            "OtlpEbpfSyscallErrors_openat",
            {"otlp_ebpf_syscall_name": "openat"},
        ),
        (Fault("errors", 30, 45), "OtlpEbpfSyscallErrorRate", {}),
        (Fault("leak", 30, 45), "OtlpEbpfMemoryGrowth", {}),
        (
            Fault("retransmits", 30, 45),
            "OtlpEbpfTcpRetransmits",
            {"network_peer_address": "10.0.0.2", "network_peer_port": "51000"},
        ),
        # p99 from the histogram's buckets, as Prometheus computes it
        (
            Fault("latency", 30, 45),
            "OtlpEbpfSyscallLatency_read",
            {"otlp_ebpf_syscall_name": "read"},
        ),
        (Fault("cpu_hog", 30, 45), "OtlpEbpfCpuHog_hog", {"process_executable_name": "hog"}),
        (Fault("cpu_hog", 30, 45), "OtlpEbpfHotFunction_spin", {"code_function_name": "spin"}),
        (Fault("cpu_hog", 30, 45), "OtlpEbpfCpuSaturation", {}),
    ],
)
def test_each_alert_fires_in_the_faulty_window_and_not_before_nor_on_a_healthy_run(
    tmp_path, fault, alert, labels
):
    faulty = recording(rows=60, interval=INTERVAL, fault=fault, seed=5)
    healthy = recording(rows=60, interval=INTERVAL, seed=6)
    rules = alert_rules(analyze(faulty))
    rule = by_name(rules)[alert]
    start, end = fault.start_row * INTERVAL, fault.end_row * INTERVAL
    firing_at = start + rule.for_s + 90  # the rate window filled, then `for:` elapsed
    assert firing_at < end
    silent = [
        {"eval_time": f"{t:.0f}s", "alertname": alert, "exp_alerts": []}
        for t in (start - 60, end + 300)
    ]
    fires = {
        "eval_time": f"{firing_at:.0f}s",
        "alertname": alert,
        "exp_alerts": [expected(rule, labels)],
    }
    healthy_silent = [
        {"eval_time": f"{t}s", "alertname": alert, "exp_alerts": []} for t in range(60, 900, 60)
    ]
    promtool_test(
        tmp_path,
        rules,
        [
            {
                "interval": "15s",
                "input_series": input_series(faulty),
                "alert_rule_test": [*silent, fires],
            },
            {
                "interval": "15s",
                "input_series": input_series(healthy),
                "alert_rule_test": healthy_silent,
            },
        ],
    )


def test_for_comes_from_the_anomaly_and_the_threshold_from_the_baseline():
    rules = by_name(
        alert_rules(
            analyze(recording(rows=60, interval=INTERVAL, fault=Fault("errors", 30, 45), seed=5))
        )
    )
    rule = rules["OtlpEbpfSyscallErrors_openat"]
    assert rule.for_s == pytest.approx(15 * INTERVAL / 2)  # half the 225 s anomaly
    threshold = float(rule.expr.rsplit(">", 1)[1])
    assert 140 < threshold < 160  # between the baseline (0/s) and the storm (~300/s)


def test_cli_writes_a_rule_file_promtool_accepts(tmp_path):
    path = tmp_path / "rec.json"
    with path.open("w") as fh:
        write_snapshot(recording(rows=60, interval=INTERVAL, fault=Fault("latency", 30, 45)), fh)
    out = tmp_path / "rules.yaml"
    assert run(["analyze", str(path), "--alerts-out", str(out)]) == 0
    text = out.read_text()
    assert "histogram_quantile(0.99, sum by (le, otlp_ebpf_syscall_name)" in text
    check = subprocess.run(["promtool", "check", "rules", str(out)], capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS: 5 rules found" in check.stdout, check.stdout
