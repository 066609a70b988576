"""`.otlp.pb` files: the binary OTLP export requests of a snapshot, ready to be sent later.

A snapshot can give two requests (a mem snapshot has profiles and metrics), so the file wraps
them in a small envelope (docs/otlp.md):

    b"OTLPEBPF" + version (1 byte, = 1)
    then per request: signal (1 byte: 1 = profiles, 2 = metrics, 3 = logs: the agent's
                      findings)
                      + payload length (4 bytes, big-endian) + payload

Each payload is exactly the protobuf body of an OTLP Export*ServiceRequest, as sent over
OTLP/HTTP. `otlp-ebpf push` reads these files back with `read_request_file`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
)

from otlp_ebpf.bounded import read_bounded
from otlp_ebpf.errors import UsageError
from otlp_ebpf.formatters.otlp_metrics import build_metrics_request, has_metrics
from otlp_ebpf.formatters.otlp_profiles import build_profiles_request
from otlp_ebpf.model import RecordSnapshot, Snapshot
from otlp_ebpf.otlp_settings import Signal, resource_attributes_from_env

MAGIC = b"OTLPEBPF"
VERSION = 1
SIGNAL_CODES: dict[Signal, int] = {"profiles": 1, "metrics": 2, "logs": 3}
_SIGNALS_BY_CODE: dict[int, Signal] = {code: signal for signal, code in SIGNAL_CODES.items()}
_RECORD_HEADER = struct.Struct(">BI")
_REQUEST_TYPES: dict[Signal, Any] = {
    "profiles": ExportProfilesServiceRequest,
    "metrics": ExportMetricsServiceRequest,
    "logs": ExportLogsServiceRequest,
}


@dataclass(frozen=True)
class EncodedRequest:
    """One serialized OTLP export request and the signal it belongs to."""

    signal: Signal
    payload: bytes


@dataclass(frozen=True)
class SnapshotRequests:
    """The OTLP content of one snapshot; a signal with nothing to report is None.

    `encoded()` gives the bytes of both requests (for files, spills and the transport)."""

    profiles: ExportProfilesServiceRequest | None
    metrics: ExportMetricsServiceRequest | None

    def encoded(self) -> list[EncodedRequest]:
        requests = []
        if self.profiles is not None:
            requests.append(EncodedRequest("profiles", self.profiles.SerializeToString()))
        if self.metrics is not None:
            requests.append(EncodedRequest("metrics", self.metrics.SerializeToString()))
        return requests


def snapshot_requests(
    snapshot: Snapshot, resource_attrs: Mapping[str, str] | None = None
) -> SnapshotRequests:
    """The OTLP requests of `snapshot`: profiles for stack kinds, metrics for metric kinds."""
    profiles = build_profiles_request(snapshot, resource_attrs)
    metrics = build_metrics_request(snapshot, resource_attrs) if has_metrics(snapshot) else None
    return SnapshotRequests(
        profiles if profiles.resource_profiles else None,
        metrics if metrics is not None and metrics.resource_metrics else None,
    )


def encode_requests(
    snapshot: Snapshot, resource_attrs: Mapping[str, str] | None = None
) -> list[EncodedRequest]:
    """The serialized OTLP requests of `snapshot`: profiles for stack kinds, metrics for metric
    kinds. A signal with nothing to report is left out; a recording gives each section's
    requests."""
    if isinstance(snapshot, RecordSnapshot):
        return [r for s in snapshot.signals.values() for r in encode_requests(s, resource_attrs)]
    return snapshot_requests(snapshot, resource_attrs).encoded()


def render(
    snapshot: Snapshot, stream: BinaryIO, resource_attrs: Mapping[str, str] | None = None
) -> None:
    """Write the `.otlp.pb` file of `snapshot` to `stream`. Without explicit attributes, the
    standard OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME apply, as they would to a push."""
    if resource_attrs is None:
        resource_attrs = resource_attributes_from_env(os.environ)
    write_requests(encode_requests(snapshot, resource_attrs), stream)


def write_requests(requests: Iterable[EncodedRequest], stream: BinaryIO) -> None:
    stream.write(MAGIC + bytes([VERSION]))
    for request in requests:
        stream.write(_RECORD_HEADER.pack(SIGNAL_CODES[request.signal], len(request.payload)))
        stream.write(request.payload)


def read_request_file(path: str) -> list[EncodedRequest]:
    """The requests stored in an `.otlp.pb` file; UsageError when unreadable or corrupt."""
    data = read_bounded(path, "an .otlp.pb file")
    try:
        return parse_requests(data)
    except UsageError as exc:
        raise UsageError(f"{path}: {exc.message}") from exc


def parse_requests(data: bytes) -> list[EncodedRequest]:
    """Decode an envelope, checking that each payload is the request its signal says."""
    if not data.startswith(MAGIC):
        raise UsageError("not an otlp-ebpf .otlp.pb file (no OTLPEBPF header)")
    if len(data) <= len(MAGIC) or data[len(MAGIC)] != VERSION:
        raise UsageError(f"unsupported .otlp.pb version (this build reads {VERSION})")
    offset = len(MAGIC) + 1
    requests = []
    while offset < len(data):
        if offset + _RECORD_HEADER.size > len(data):
            raise UsageError("corrupt .otlp.pb file: truncated record header")
        code, length = _RECORD_HEADER.unpack_from(data, offset)
        offset += _RECORD_HEADER.size
        signal = _SIGNALS_BY_CODE.get(code)
        if signal is None:
            raise UsageError(f"corrupt .otlp.pb file: unknown signal code {code}")
        payload = data[offset : offset + length]
        if len(payload) != length:
            raise UsageError("corrupt .otlp.pb file: truncated request")
        _check_payload(signal, payload)
        requests.append(EncodedRequest(signal, payload))
        offset += length
    return requests


def _check_payload(signal: Signal, payload: bytes) -> None:
    try:
        _REQUEST_TYPES[signal].FromString(payload)
    except DecodeError as exc:
        raise UsageError(f"corrupt .otlp.pb file: the {signal} request does not decode") from exc
