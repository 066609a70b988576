"""Collectors pushing OTLP for real: at the end of a run, and every --interval without -d."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from otlp_ebpf.cli.app import run
from tests.export.otlp_servers import HttpReceiver

pytestmark = pytest.mark.bpf


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpReceiver]:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    server = HttpReceiver().start()
    yield server
    server.stop()


def syscall_counts(request: ExportMetricsServiceRequest, name: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name != name:
                    continue
                for point in metric.sum.data_points:
                    attrs = {a.key: a.value.string_value for a in point.attributes}
                    key = attrs.get("otlp_ebpf.syscall.name", "")
                    counts[key] = counts.get(key, 0) + point.as_int
    return counts


def test_syscalls_push_every_interval_and_at_the_end(
    receiver: HttpReceiver, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    script = tmp_path / "work.sh"
    script.write_text("#!/bin/sh\nsleep 1.3\n")
    script.chmod(0o755)
    code = run(["-q", "syscalls", "--interval", "0.4", "--otlp", receiver.url, "--", str(script)])
    assert code == 0
    batches = receiver.of("metrics")
    assert len(batches) >= 3  # two or three ticks, then the final batch
    assert all(b.violations() == [] for b in batches)
    names = {
        m.name
        for rm in batches[-1].request.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    count_metric = next(n for n in names if "count" in n or n.endswith("calls"))
    first, last = (syscall_counts(b.request, count_metric) for b in (batches[0], batches[-1]))
    # Cumulative: the final batch holds at least what the first one did.
    assert sum(last.values()) >= sum(first.values()) > 0
    assert "wait4" in last or "execve" in last


def test_dead_collector_spills_and_exits_1(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "500")
    code = run(
        ["-q", "syscalls", "--json", "-d", "0.3", "--otlp", "http://127.0.0.1:9", "--", "/bin/true"]
    )
    assert code == 1
    spilled = list(tmp_path.glob("*.otlp.pb"))
    assert len(spilled) == 1
