"""A finding as an OTLP log record: body, severity, times and the attributes docs/agent.md
lists, decoded back from the request bytes."""

from __future__ import annotations

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1 import logs_pb2

from otlp_ebpf.analysis.analyze import analyze
from otlp_ebpf.analysis.watch import FindingEvent, finding_key, severity_of
from otlp_ebpf.formatters.otlp_findings import findings_request
from otlp_ebpf.formatters.otlp_request import SIGNAL_CODES, EncodedRequest, parse_requests
from otlp_ebpf.formatters.otlp_request import write_requests as write
from tests.analysis.analyze_fixtures import Fault, recording

STARTED_NS = 1_780_000_000 * 10**9


def errno_storm_event() -> FindingEvent:
    finding = next(
        f
        for f in analyze(recording(fault=Fault("errors", 30, 40))).findings
        if f.kind == "syscall_errors"
    )
    return FindingEvent(
        finding, finding_key(finding), severity_of(finding), 41, finding.start_s,
        finding.end_s, STARTED_NS, "/var/lib/rec/recording-1.json",
    )  # fmt: skip


def test_one_log_record_per_finding_with_its_window_cause_and_confidence() -> None:
    event = errno_storm_event()
    request = findings_request([event], {"service.name": "otlp-ebpf", "host.name": "h"})
    decoded = ExportLogsServiceRequest.FromString(request.SerializeToString())
    (resource_logs,) = decoded.resource_logs
    resource = {a.key: a.value.string_value for a in resource_logs.resource.attributes}
    assert resource["service.name"] == "otlp-ebpf"
    (record,) = resource_logs.scope_logs[0].log_records
    assert record.body.string_value == event.finding.summary
    assert record.severity_number == logs_pb2.SEVERITY_NUMBER_ERROR
    assert record.severity_text == "CRITICAL"
    assert record.event_name == "otlp_ebpf.finding"
    assert record.time_unix_nano == STARTED_NS + int(event.start_s * 1e9)
    attrs = {a.key: a.value for a in record.attributes}
    assert attrs["otlp_ebpf.finding.kind"].string_value == "syscall_errors"
    assert attrs["otlp_ebpf.finding.window.start_s"].double_value == round(event.start_s, 3)
    assert attrs["otlp_ebpf.finding.window.end_s"].double_value == round(event.end_s, 3)
    assert attrs["otlp_ebpf.finding.window.start"].string_value.startswith("2026-")
    assert 0 < attrs["otlp_ebpf.finding.confidence"].double_value <= 1
    assert attrs["otlp_ebpf.finding.series"].string_value == "syscalls.errors{syscall=openat}"
    assert attrs["otlp_ebpf.finding.interval"].int_value == 41
    assert attrs["otlp_ebpf.finding.recording"].string_value.endswith("recording-1.json")
    if event.finding.cause is not None:
        assert attrs["otlp_ebpf.finding.cause"].string_value == event.finding.cause.phrase


def test_a_logs_request_survives_the_spill_envelope() -> None:
    """Spilled batches hold the findings' logs too, and read back as logs."""
    import io

    payload = findings_request([errno_storm_event()], {}).SerializeToString()
    stream = io.BytesIO()
    write([EncodedRequest("logs", payload)], stream)
    (back,) = parse_requests(stream.getvalue())
    assert back.signal == "logs" and back.payload == payload
    assert SIGNAL_CODES["logs"] == 3
