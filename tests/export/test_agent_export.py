"""The agent's export pieces without BPF: the capped spool, the health state, the --serve
address, and the self-metrics in both forms."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from prometheus_client import generate_latest

from otlp_ebpf.errors import UsageError
from otlp_ebpf.export.config import OtlpConfig
from otlp_ebpf.export.self_metrics import AgentFigures, otlp_request, registry_of
from otlp_ebpf.export.serve import Health, parse_address
from otlp_ebpf.export.spool import Spool, resend_all
from otlp_ebpf.export.stream import BatchStream
from otlp_ebpf.formatters.otlp_request import EncodedRequest
from tests.export.otlp_servers import Failure, HttpReceiver


def batch(n: int, size: int = 1000) -> list[EncodedRequest]:
    """A real metrics request whose resource says which batch it is, about `size` bytes."""
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    attr = request.resource_metrics.add().resource.attributes.add()
    attr.key = f"batch.{n}"
    attr.value.string_value = "x" * size
    return [EncodedRequest("metrics", request.SerializeToString())]


def number(b: list[EncodedRequest]) -> int:
    request = metrics_service_pb2.ExportMetricsServiceRequest.FromString(b[0].payload)
    return int(request.resource_metrics[0].resource.attributes[0].key.split(".")[1])


def test_spool_keeps_the_newest_batches_under_its_cap_and_counts_the_dropped(tmp_path: Path):
    spool = Spool(str(tmp_path), cap_bytes=3500)  # room for 3 batches of ~1 KB
    for n in range(1, 6):
        spool.add(batch(n))
    assert len(spool) == 3
    assert spool.dropped == 2
    assert spool.bytes() <= 3500
    sent: list[int] = []
    assert resend_all(spool, lambda b: sent.append(number(b)) is None) == 3
    assert sent == [3, 4, 5]  # oldest first, the two oldest given up
    assert not list(tmp_path.iterdir())


def test_spool_resend_stops_at_the_first_failure_and_keeps_the_rest(tmp_path: Path):
    spool = Spool(str(tmp_path))
    for n in range(1, 4):
        spool.add(batch(n))
    calls: list[int] = []

    def send(b: list[EncodedRequest]) -> bool:
        calls.append(number(b))
        return len(calls) < 2

    assert resend_all(spool, send) == 1
    assert calls == [1, 2]
    assert len(spool) == 2


def test_spool_picks_up_batches_of_an_earlier_run_in_order(tmp_path: Path):
    first = Spool(str(tmp_path))
    first.add(batch(7))
    first.add(batch(8))
    again = Spool(str(tmp_path))
    again.add(batch(9))
    sent: list[int] = []
    resend_all(again, lambda b: sent.append(number(b)) is None)
    assert sent == [7, 8, 9]


def test_spool_files_are_private(tmp_path: Path):
    path = Spool(str(tmp_path / "new")).add(batch(1))
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "new").st_mode & 0o777 == 0o700


def test_spool_drops_a_corrupt_file_and_counts_it(tmp_path: Path):
    spool = Spool(str(tmp_path))
    path = spool.add(batch(1))
    spool.add(batch(2))
    Path(path).write_bytes(b"garbage")
    sent: list[int] = []
    resend_all(spool, lambda b: sent.append(number(b)) is None)
    assert sent == [2]
    assert spool.dropped == 1


def test_unwritable_spill_dir_is_a_usage_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="--spill-dir"):
        Spool(str(blocker / "sub"))


def test_health_turns_unhealthy_when_the_loop_stops_coming_round():
    health = Health(stuck_after_s=30)
    health.progress()
    now = health.last_progress
    assert health.live(now + 29)
    assert not health.live(now + 31)
    assert not health.ready()
    health.attached = True
    assert health.ready()
    health.exports_ok = False
    assert not health.ready()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        (":9464", ("0.0.0.0", 9464)),
        ("[::1]:80", ("::1", 80)),
    ],
)
def test_serve_addresses(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["9464", "host:0", "host:70000", "a b:1", "h:\x1b[2J"])
def test_bad_serve_addresses(text):
    with pytest.raises(UsageError, match="--serve"):
        parse_address(text)


def figures() -> AgentFigures:
    f = AgentFigures(budget_pct=1.0)
    for _ in range(2):
        f.update_interval(
            events={"cpu": 10, "syscalls": 500},
            lost={"cpu": 1, "syscalls": 0},
            bpf_ns=2_500_000_000,
            cpu_s=0.75,
            rss_kb=50_000,
            duration_s=1.0,
            cost_pct=0.4,
            rates={"cpu_hz": 49.0, "syscalls_duty": 0.125},
            helpers_rss_kb=30_000,
        )
    f.stream.attempts = 6
    return f


def test_prometheus_text_names_and_values():
    text = generate_latest(registry_of(figures())).decode()
    assert 'otlp_ebpf_events_total{signal="syscalls"} 1000.0' in text
    assert 'otlp_ebpf_lost_events_total{signal="cpu"} 1.0' in text
    assert "otlp_ebpf_bpf_run_seconds_total 2.5" in text
    assert "otlp_ebpf_resident_memory_bytes 5.12e+07" in text
    assert "otlp_ebpf_helpers_resident_memory_bytes 3.072e+07" in text
    assert 'otlp_ebpf_sampling_rate_hertz{signal="cpu"} 49.0' in text
    assert 'otlp_ebpf_traced_ratio{signal="syscalls"} 0.125' in text
    assert 'sampling_rate_hertz{signal="syscalls' not in text  # a share, not a rate
    assert "otlp_ebpf_export_attempts_total 6.0" in text
    assert "otlp_ebpf_intervals_total 2.0" in text
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: apt-get install prometheus (make setup does)"
    done = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True)
    assert done.returncode == 0, done.stdout


def test_self_metrics_over_otlp_carry_the_same_values():
    request = otlp_request(figures(), {"service.name": "otlp-ebpf", "host.name": "h"})
    decoded = metrics_service_pb2.ExportMetricsServiceRequest.FromString(request.payload)
    metrics = {m.name: m for m in decoded.resource_metrics[0].scope_metrics[0].metrics}
    events = metrics["otlp_ebpf.agent.events"]
    assert events.sum.is_monotonic
    by_signal = {p.attributes[0].value.string_value: p.as_int for p in events.sum.data_points}
    assert by_signal == {"cpu": 20, "syscalls": 1000}
    assert metrics["otlp_ebpf.agent.memory.rss"].gauge.data_points[0].as_int == 51_200_000
    assert metrics["otlp_ebpf.agent.memory.rss"].unit == "By"
    helpers = metrics["otlp_ebpf.agent.helpers.memory.rss"]
    assert helpers.gauge.data_points[0].as_int == 30_720_000
    assert metrics["otlp_ebpf.agent.intervals"].sum.data_points[0].as_int == 2


def stream_to(receiver, tmp_path: Path, monkeypatch) -> tuple[BatchStream, Spool]:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "300")  # ms: failures show fast
    config = OtlpConfig.from_cli(receiver.url, "http/protobuf")
    spool = Spool(str(tmp_path / "spill"))
    return BatchStream(config, spool), spool


def received_numbers(receiver) -> list[int]:
    return [int(r.request.resource_metrics[0].resource.attributes[0].key.split(".")[1])
            for r in receiver.of("metrics")]  # fmt: skip


def test_a_batch_refused_for_good_is_dropped_not_resent_forever(tmp_path: Path, monkeypatch):
    receiver = HttpReceiver(failures=[Failure(400)]).start()
    try:
        stream, spool = stream_to(receiver, tmp_path, monkeypatch)
        stream.submit(batch(1))
        stream.submit(batch(2))
        stream.close(10)
    finally:
        receiver.stop()
    assert received_numbers(receiver) == [2]
    assert (stream.counts.refused, stream.counts.failures, len(spool)) == (1, 1, 0)


def test_a_retryable_failure_is_spilled_then_resent_first(tmp_path: Path, monkeypatch):
    receiver = HttpReceiver(failures=[Failure(503)]).start()
    try:
        stream, spool = stream_to(receiver, tmp_path, monkeypatch)
        stream.submit(batch(1))
        stream.close(10)  # 1 failed: spilled
        assert len(spool) == 1
        again = BatchStream(stream.config, spool)  # e.g. the next start of the agent
        again.submit(batch(2))
        again.close(10)
    finally:
        receiver.stop()
    assert received_numbers(receiver) == [1, 2]
    assert (stream.counts.spilled_batches, again.counts.resent_batches) == (1, 1)
    assert len(spool) == 0
