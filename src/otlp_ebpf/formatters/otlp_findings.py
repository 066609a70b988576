"""The agent's findings as OTLP logs: one log record per finding, the first time it fires.

The record's body is the finding's summary; its time is the start of the finding's window
(the observed time, when the agent found it). Attributes (docs/agent.md):

    otlp_ebpf.finding.kind, .severity, .summary, .confidence, .series (main effect),
    .window.start_s / .window.end_s (seconds from the agent's start),
    .window.start / .window.end (RFC 3339), .cause.kind / .cause (the top-ranked cause),
    .interval (the agent's interval it was found at), .recording (file of its window)

`event.name` is `otlp_ebpf.finding`; severity ERROR for a symptom, WARN for a cause found
alone.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from otlp_ebpf import __version__
from otlp_ebpf.analysis.watch import FindingEvent

EVENT_NAME = "otlp_ebpf.finding"
SEVERITY_NUMBERS = {
    "critical": logs_pb2.SEVERITY_NUMBER_ERROR,
    "warning": logs_pb2.SEVERITY_NUMBER_WARN,
}
Attribute = str | int | float


def finding_attributes(event: FindingEvent) -> dict[str, Attribute]:
    finding = event.finding
    attrs: dict[str, Attribute] = {
        "otlp_ebpf.finding.kind": finding.kind,
        "otlp_ebpf.finding.severity": event.severity,
        "otlp_ebpf.finding.summary": finding.summary,
        "otlp_ebpf.finding.confidence": round(finding.confidence, 3),
        "otlp_ebpf.finding.window.start_s": round(event.start_s, 3),
        "otlp_ebpf.finding.window.end_s": round(event.end_s, 3),
        "otlp_ebpf.finding.window.start": _rfc3339(event.unix_ns(event.start_s)),
        "otlp_ebpf.finding.window.end": _rfc3339(event.unix_ns(event.end_s)),
        "otlp_ebpf.finding.interval": event.seq,
    }
    if finding.effects:
        attrs["otlp_ebpf.finding.series"] = finding.effects[0].series.key
    cause = finding.cause
    if cause is not None:
        attrs["otlp_ebpf.finding.cause.kind"] = cause.kind
        attrs["otlp_ebpf.finding.cause"] = cause.phrase
    if event.recording:
        attrs["otlp_ebpf.finding.recording"] = event.recording
    return attrs


def _rfc3339(unix_ns: int) -> str:
    return datetime.fromtimestamp(unix_ns / 1e9, UTC).isoformat(timespec="milliseconds")


def _value(value: Attribute) -> AnyValue:
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=value)


def _key_values(attrs: Mapping[str, Attribute]) -> list[KeyValue]:
    return [KeyValue(key=k, value=_value(v)) for k, v in attrs.items()]


def log_record(event: FindingEvent, observed_ns: int) -> logs_pb2.LogRecord:
    return logs_pb2.LogRecord(
        time_unix_nano=event.unix_ns(event.start_s),
        observed_time_unix_nano=observed_ns,
        severity_number=SEVERITY_NUMBERS[event.severity],
        severity_text=event.severity.upper(),
        body=AnyValue(string_value=event.finding.summary),
        attributes=_key_values(finding_attributes(event)),
        event_name=EVENT_NAME,
    )


def findings_request(
    events: Sequence[FindingEvent], resource: Mapping[str, str]
) -> ExportLogsServiceRequest:
    """One OTLP logs request with a record per finding, under the agent's own resource."""
    now = time.time_ns()
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.CopyFrom(Resource(attributes=_key_values(dict(resource))))
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.CopyFrom(InstrumentationScope(name="otlp-ebpf", version=__version__))
    scope_logs.log_records.extend(log_record(e, now) for e in events)
    return request
