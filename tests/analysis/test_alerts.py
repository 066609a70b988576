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
from otlp_ebpf.model import RecordSnapshot, write_snapshot
from tests.analysis.analyze_fixtures import Fault, recording

INTERVAL = 15.0  # one row per scrape at the common 15 s interval

pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool missing (Debian package prometheus)"
)


def input_series(rec: RecordSnapshot) -> list[dict[str, str]]:
    """What a Prometheus fed by the Collector would hold: cumulative counters and the level
    of outstanding memory, one sample per row (the first, at 0 s, before any row)."""
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
    return out


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
    assert check.returncode == 0 and "SUCCESS: 4 rules found" in check.stdout, check.stdout
