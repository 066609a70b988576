"""Real OTLP receivers on 127.0.0.1 for tests: a grpcio server built on the official generated
`*_pb2_grpc` services and an OTLP/HTTP server. Both decode what they receive, can fail on
purpose a given number of times, and keep every request with its headers."""

from __future__ import annotations

import gzip
import http.server
import ssl
import subprocess
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.profiles.v1development import (
    profiles_service_pb2,
    profiles_service_pb2_grpc,
)

from tests.otlp_conformance import check_metrics_request, check_profiles_request

REQUESTS = {
    "profiles": profiles_service_pb2.ExportProfilesServiceRequest,
    "metrics": metrics_service_pb2.ExportMetricsServiceRequest,
    "logs": logs_service_pb2.ExportLogsServiceRequest,
}
RESPONSES = {
    "profiles": profiles_service_pb2.ExportProfilesServiceResponse,
    "metrics": metrics_service_pb2.ExportMetricsServiceResponse,
    "logs": logs_service_pb2.ExportLogsServiceResponse,
}
HTTP_PATHS = {"/v1development/profiles": "profiles", "/v1/metrics": "metrics", "/v1/logs": "logs"}


@dataclass
class Received:
    signal: str
    request: Any
    headers: dict[str, str]

    def violations(self) -> list[str]:
        if self.signal == "profiles":
            return check_profiles_request(self.request)
        if self.signal == "logs":
            return []
        return check_metrics_request(self.request)


@dataclass
class Failure:
    """One planned failure: a gRPC status code or an HTTP status, with an optional delay hint."""

    code: Any
    retry_after_s: float | None = None


@dataclass
class Receiver:
    failures: list[Failure] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    attempts: int = 0
    rejected: int = 0
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def next_failure(self) -> Failure | None:
        with self._lock:
            self.attempts += 1
            return self.failures.pop(0) if self.failures else None

    def accept(self, signal: str, request: Any, headers: dict[str, str]) -> bytes:
        with self._lock:
            self.received.append(Received(signal, request, headers))
        response = RESPONSES[signal]()
        if self.rejected:
            field_name = "rejected_profiles" if signal == "profiles" else "rejected_data_points"
            setattr(response.partial_success, field_name, self.rejected)
            response.partial_success.error_message = "too old"
        return response.SerializeToString()  # type: ignore[no-any-return]

    def of(self, signal: str) -> list[Received]:
        return [r for r in self.received if r.signal == signal]


def _retry_status(code: grpc.StatusCode, delay_s: float) -> bytes:
    info = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(
            seconds=int(delay_s), nanos=int((delay_s % 1) * 1_000_000_000)
        )
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=code.value[0], message="try later", details=[detail])
    return status.SerializeToString()


class _Service:
    def __init__(self, receiver: Receiver, signal: str) -> None:
        self.receiver = receiver
        self.signal = signal

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        failure = self.receiver.next_failure()
        if failure is not None:
            if failure.retry_after_s is not None:
                status = _retry_status(failure.code, failure.retry_after_s)
                info = status_pb2.Status.FromString(status).details[0].value
                context.set_trailing_metadata(
                    (("grpc-status-details-bin", status), ("google.rpc.retryinfo-bin", info))
                )
            context.abort(failure.code, "planned failure")
        headers = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        raw = self.receiver.accept(self.signal, request, headers)
        return RESPONSES[self.signal].FromString(raw)


class _ProfilesService(_Service, profiles_service_pb2_grpc.ProfilesServiceServicer):
    pass


class _MetricsService(_Service, metrics_service_pb2_grpc.MetricsServiceServicer):
    pass


class _LogsService(_Service, logs_service_pb2_grpc.LogsServiceServicer):
    pass


class GrpcReceiver(Receiver):
    """An OTLP/gRPC receiver for profiles and metrics; `url` is set once started."""

    def start(self, tls: tuple[Path, Path] | None = None) -> GrpcReceiver:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        profiles_service_pb2_grpc.add_ProfilesServiceServicer_to_server(
            _ProfilesService(self, "profiles"), self._server
        )
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            _MetricsService(self, "metrics"), self._server
        )
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(
            _LogsService(self, "logs"), self._server
        )
        if tls:
            cert, key = tls
            creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
            port = self._server.add_secure_port("127.0.0.1:0", creds)
            self.url = f"https://127.0.0.1:{port}"
        else:
            port = self._server.add_insecure_port("127.0.0.1:0")
            self.url = f"http://127.0.0.1:{port}"
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)


class HttpReceiver(Receiver):
    """An OTLP/HTTP receiver (protobuf bodies, gzip accepted); `url` is the base URL."""

    def start(self, tls: tuple[Path, Path] | None = None, port: int = 0) -> HttpReceiver:
        """Listen on `port` (0: any free one; a given port restarts a stopped receiver)."""
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                signal = HTTP_PATHS.get(self.path)
                if signal is None:
                    self._reply(404, b"")
                    return
                failure = receiver.next_failure()
                if failure is not None:
                    extra = {}
                    if failure.retry_after_s is not None:
                        extra["Retry-After"] = str(int(failure.retry_after_s))
                    status = status_pb2.Status(code=14, message=f"planned {failure.code}")
                    self._reply(failure.code, status.SerializeToString(), extra)
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = REQUESTS[signal].FromString(body)
                headers = {k.lower(): v for k, v in self.headers.items()}
                self._reply(200, receiver.accept(signal, request, headers))

            def _reply(self, code: int, body: bytes, extra: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (extra or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        scheme = "http"
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost / 127.0.0.1 and its key, made with the openssl CLI."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key
