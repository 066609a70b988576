"""Metrics delivery through the official `opentelemetry-exporter-otlp` exporters.

The exporters bring OTLP retries, TLS and compression; we hand them our SDK MetricsData and the
settings resolved in OtlpConfig, so both signals share one endpoint/header/TLS/timeout setup.
The exporters report progress through `logging`; while we export, those records are turned
into our status lines and the last error becomes the failure reason.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

from otlp_ebpf import console
from otlp_ebpf.export.config import SignalTarget
from otlp_ebpf.export.profiles_transport import ExportFailed

_EXPORTER_LOGGER = "opentelemetry.exporter.otlp"


def send_metrics(data: MetricsData, target: SignalTarget) -> None:
    """Export `data` to `target`; ExportFailed when the exporter gives up."""
    exporter = _exporter(target)
    try:
        with _exporter_messages() as errors:
            result = exporter.export(data, timeout_millis=target.timeout_s * 1000)
    finally:
        exporter.shutdown()
    if result is not MetricExportResult.SUCCESS:
        raise ExportFailed(errors[-1] if errors else "the metric exporter failed", attempts=0)


def _exporter(target: SignalTarget) -> MetricExporter:
    if target.protocol == "grpc":
        return _grpc_exporter(target)
    return _http_exporter(target)


def _grpc_exporter(target: SignalTarget) -> MetricExporter:
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    credentials = None
    if not target.insecure:
        root = None
        if target.certificate:
            with open(target.certificate, "rb") as fh:
                root = fh.read()
        credentials = grpc.ssl_channel_credentials(root_certificates=root)
    compression = grpc.Compression.Gzip if target.compression == "gzip" else None
    return OTLPMetricExporter(
        endpoint=target.url,
        insecure=target.insecure,
        credentials=credentials,
        headers=dict(target.headers),
        timeout=target.timeout_s,
        compression=compression or grpc.Compression.NoCompression,
    )


def _http_exporter(target: SignalTarget) -> MetricExporter:
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    compression = Compression.Gzip if target.compression == "gzip" else Compression.NoCompression
    return OTLPMetricExporter(
        endpoint=target.url,
        certificate_file=target.certificate,
        headers=dict(target.headers),
        timeout=target.timeout_s,
        compression=compression,
        session=_session_keeping_certificate() if target.certificate else None,
    )


def _session_keeping_certificate() -> Any:
    """A requests Session whose CA file is not replaced by REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE.

    requests lets those variables win over `Session.verify`, which would silently drop
    OTEL_EXPORTER_OTLP_CERTIFICATE on machines that set them.
    """
    import requests

    class PinnedVerifySession(requests.Session):
        def merge_environment_settings(
            self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
        ) -> Any:
            settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
            if isinstance(self.verify, str):
                settings["verify"] = self.verify
            return settings

    return PinnedVerifySession()


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            self.errors.append(message)
        elif record.levelno >= logging.WARNING:
            console.status(f"OTLP metrics: {message}")
        else:
            console.debug(message)


@contextmanager
def _exporter_messages() -> Iterator[list[str]]:
    logger = logging.getLogger(_EXPORTER_LOGGER)
    handler = _Collector()
    saved_propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.errors
    finally:
        logger.removeHandler(handler)
        logger.propagate = saved_propagate
