"""Our own OTLP sender: gRPC (grpcio) and HTTP (urllib) for already-encoded request bytes.

Every signal goes through here: profiles (the OpenTelemetry Python SDK has no profiles
exporter), metrics and logs, built as protobuf requests by the formatters, whether sent live
or read back from spill files.

Retries follow the OTLP specification: exponential backoff with jitter on retryable gRPC codes
(RESOURCE_EXHAUSTED only when the server sent RetryInfo) and on HTTP 429/502/503/504 and
connection failures, honouring RetryInfo / Retry-After; no retry on any other error. The whole
exchange, retries included, stays within the target's timeout.
"""

from __future__ import annotations

import gzip
import random
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceResponse,
)

from otlp_ebpf import __version__, console
from otlp_ebpf.export.config import Signal, SignalTarget

GRPC_METHODS: dict[Signal, str] = {
    "profiles": "/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
}
_RESPONSES: dict[Signal, Any] = {
    "profiles": ExportProfilesServiceResponse,
    "metrics": ExportMetricsServiceResponse,
    "logs": ExportLogsServiceResponse,
}
_REJECTED_FIELD: dict[Signal, str] = {
    "profiles": "rejected_profiles",
    "metrics": "rejected_data_points",
    "logs": "rejected_log_records",
}
RETRYABLE_GRPC_CODES = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
RETRYABLE_HTTP_STATUSES = frozenset({429, 502, 503, 504})

# zlib's default level, not gzip.compress's 9: on an interval's OTLP request 5x less CPU for
# ~12% more bytes (measured: 181 KB of profile-like protobuf, 2.2 ms and 30.7 KB at 6,
# 11.1 ms and 27.1 KB at 9). The agent pays this at every interval, under its budget.
GZIP_LEVEL = 6


class ExportFailed(Exception):
    """Delivery failed for good: a permanent error, or retries ran out of attempts or time."""

    def __init__(self, reason: str, attempts: int, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts
        self.permanent = permanent  # refused for good (HTTP 400, INVALID_ARGUMENT): never resend


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with +/- `jitter` (a fraction) around initial_s * 2**attempt."""

    initial_s: float = 1.0
    max_s: float = 30.0
    jitter: float = 0.2
    max_attempts: int = 6

    def delay(self, retry: int) -> float:
        base = min(self.initial_s * 2**retry, self.max_s)
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


DEFAULT_BACKOFF = Backoff()


@dataclass(frozen=True)
class SendResult:
    """A delivered request: how many attempts it took and what the receiver rejected."""

    attempts: int
    rejected: int = 0
    error_message: str = ""


@dataclass(frozen=True)
class _Attempt:
    ok: bool
    retryable: bool = False
    retry_after_s: float | None = None
    reason: str = ""
    response: bytes = b""


def send_request(
    payload: bytes, target: SignalTarget, *, backoff: Backoff = DEFAULT_BACKOFF
) -> SendResult:
    """Send an encoded Export*ServiceRequest of `target.signal`, retrying as OTLP prescribes."""
    if target.protocol == "grpc":
        with _grpc_channel(target) as channel:
            call = channel.unary_unary(GRPC_METHODS[target.signal])
            last, attempts = _run_with_retries(
                lambda remaining: _grpc_attempt(call, payload, target, remaining), target, backoff
            )
    else:
        body = gzip.compress(payload, GZIP_LEVEL) if target.compression == "gzip" else payload
        last, attempts = _run_with_retries(
            lambda remaining: _http_attempt(body, target, remaining), target, backoff
        )
    return _partial_success(last.response, target, attempts)


def _run_with_retries(
    attempt: Callable[[float], _Attempt], target: SignalTarget, backoff: Backoff
) -> tuple[_Attempt, int]:
    deadline = time.monotonic() + target.timeout_s
    retry = 0
    while True:
        result = attempt(max(deadline - time.monotonic(), 0.001))
        attempts = retry + 1
        if result.ok:
            return result, attempts
        if not result.retryable:
            raise ExportFailed(result.reason, attempts, permanent=True)
        delay = result.retry_after_s if result.retry_after_s is not None else backoff.delay(retry)
        if attempts >= backoff.max_attempts or delay >= deadline - time.monotonic():
            raise ExportFailed(
                f"{result.reason} (gave up after {attempts} attempt"
                f"{'s' if attempts > 1 else ''} within {target.timeout_s:g} s)",
                attempts,
            )
        console.status(
            f"OTLP {target.signal}: {result.reason}; retrying in {delay:.1f} s "
            f"(attempt {attempts + 1} of {backoff.max_attempts})"
        )
        time.sleep(delay)
        retry += 1


def _grpc_channel(target: SignalTarget) -> grpc.Channel:
    compression = grpc.Compression.Gzip if target.compression == "gzip" else None
    options = [("grpc.primary_user_agent", f"otlp-ebpf/{__version__}")]
    if target.insecure:
        return grpc.insecure_channel(target.authority, options=options, compression=compression)
    root = _read_certificate(target.certificate) if target.certificate else None
    credentials = grpc.ssl_channel_credentials(root_certificates=root)
    return grpc.secure_channel(
        target.authority, credentials, options=options, compression=compression
    )


def _read_certificate(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _grpc_attempt(
    call: grpc.UnaryUnaryMultiCallable, payload: bytes, target: SignalTarget, timeout: float
) -> _Attempt:
    try:
        response = call(payload, timeout=timeout, metadata=target.headers)
    except grpc.RpcError as error:
        return _grpc_failure(error)
    return _Attempt(ok=True, response=response)


def _grpc_failure(error: Any) -> _Attempt:
    code = error.code()
    retry_after = _grpc_retry_delay(error.trailing_metadata() or ())
    retryable = code in RETRYABLE_GRPC_CODES or (
        code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after is not None
    )
    details = error.details() or ""
    reason = f"gRPC {code.name}" + (f": {details}" if details else "")
    return _Attempt(ok=False, retryable=retryable, retry_after_s=retry_after, reason=reason)


def _grpc_retry_delay(trailing_metadata: Any) -> float | None:
    """The RetryInfo delay a server attached to its status, if any."""
    for key, value in trailing_metadata:
        info = error_details_pb2.RetryInfo()
        try:
            if key == "grpc-status-details-bin":
                status = status_pb2.Status.FromString(value)
                detail = next((d for d in status.details if d.Is(info.DESCRIPTOR)), None)
                if detail is None:
                    continue
                detail.Unpack(info)
            elif key == "google.rpc.retryinfo-bin":
                info.ParseFromString(value)
            else:
                continue
        except DecodeError:
            continue
        return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def _http_attempt(body: bytes, target: SignalTarget, timeout: float) -> _Attempt:
    headers = {
        "Content-Type": "application/x-protobuf",
        "User-Agent": f"otlp-ebpf/{__version__}",
        **dict(target.headers),
    }
    if target.compression == "gzip":
        headers["Content-Encoding"] = "gzip"
    request = urllib.request.Request(target.url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=_ssl_context(target)) as r:
            return _Attempt(ok=True, response=r.read())
    except urllib.error.HTTPError as error:
        return _http_failure(error)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, ssl.SSLError):
            return _Attempt(ok=False, reason=f"TLS failure: {reason}")
        return _Attempt(ok=False, retryable=True, reason=f"cannot connect: {reason}")


def _ssl_context(target: SignalTarget) -> ssl.SSLContext | None:
    if not target.url.startswith("https://"):
        return None
    return ssl.create_default_context(cafile=target.certificate)


def _http_failure(error: urllib.error.HTTPError) -> _Attempt:
    body = error.read() if error.fp is not None else b""
    message = _status_message(body)
    reason = f"HTTP {error.code}" + (f": {message}" if message else f" {error.reason}")
    retryable = error.code in RETRYABLE_HTTP_STATUSES
    retry_after = parse_retry_after(error.headers.get("Retry-After")) if retryable else None
    return _Attempt(ok=False, retryable=retryable, retry_after_s=retry_after, reason=reason)


def _status_message(body: bytes) -> str:
    """The message of a google.rpc.Status body (OTLP/HTTP error responses), if it is one."""
    try:
        return status_pb2.Status.FromString(body).message if body else ""
    except DecodeError:
        return ""


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _partial_success(response: bytes, target: SignalTarget, attempts: int) -> SendResult:
    """Read the response's partial_success and warn about what the receiver dropped."""
    try:
        parsed = _RESPONSES[target.signal].FromString(response)
    except DecodeError:
        return SendResult(attempts)
    partial = parsed.partial_success
    rejected = int(getattr(partial, _REJECTED_FIELD[target.signal]))
    if rejected or partial.error_message:
        console.warn(
            f"OTLP receiver at {target.describe()} accepted the {target.signal} partially: "
            f"{rejected} rejected"
            + (f" ({partial.error_message})" if partial.error_message else "")
        )
    return SendResult(attempts, rejected, partial.error_message)
