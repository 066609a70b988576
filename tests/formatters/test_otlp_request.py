"""`.otlp.pb` files: envelope round trip and the errors a user sees for bad files."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
)

from otlp_ebpf.errors import UsageError
from otlp_ebpf.formatters import registry
from otlp_ebpf.formatters.otlp_request import MAGIC, read_request_file, render
from tests.otlp_conformance import check_metrics_request, check_profiles_request
from tests.otlp_samples import cpu_snapshot, mem_snapshot, net_snapshot, syscalls_snapshot


def write(tmp_path: Path, snapshot: object, name: str = "out.otlp.pb") -> Path:
    path = tmp_path / name
    with path.open("wb") as stream:
        render(snapshot, stream)  # type: ignore[arg-type]
    return path


@pytest.mark.parametrize(
    ("snapshot", "signals"),
    [
        (cpu_snapshot(), ["profiles", "metrics"]),
        (mem_snapshot(), ["profiles", "metrics"]),
        (syscalls_snapshot(), ["metrics"]),
        (net_snapshot(), ["metrics"]),
    ],
)
def test_files_round_trip_with_decodable_requests(
    tmp_path: Path, snapshot: object, signals: list[str]
) -> None:
    path = write(tmp_path, snapshot)
    assert path.read_bytes().startswith(MAGIC + b"\x01")
    requests = read_request_file(str(path))
    assert [r.signal for r in requests] == signals
    for r in requests:
        if r.signal == "profiles":
            assert check_profiles_request(ExportProfilesServiceRequest.FromString(r.payload)) == []
        else:
            assert check_metrics_request(ExportMetricsServiceRequest.FromString(r.payload)) == []


def test_the_registry_writes_otlp_files_for_every_kind(tmp_path: Path) -> None:
    fmt = registry.format_for_path("x.otlp.pb")
    target = tmp_path / "syscalls.otlp.pb"
    assert registry.write_output(syscalls_snapshot(), str(target), fmt) == [str(target)]
    assert [r.signal for r in read_request_file(str(target))] == ["metrics"]


def test_resource_attributes_reach_the_file() -> None:
    stream = io.BytesIO()
    render(cpu_snapshot(), stream, {"service.name": "billing"})
    assert b"billing" in stream.getvalue()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "no OTLPEBPF header"),
        (b"\x0a\x00 plain protobuf", "no OTLPEBPF header"),
        (MAGIC + b"\x07", "unsupported .otlp.pb version"),
        (MAGIC + b"\x01\x01\x00", "truncated record header"),
        (MAGIC + b"\x01\x09\x00\x00\x00\x00", "unknown signal code 9"),
        (MAGIC + b"\x01\x01\x00\x00\x00\x10abc", "truncated request"),
        (MAGIC + b"\x01\x02\x00\x00\x00\x03\xff\xff\xff", "metrics request does not decode"),
    ],
)
def test_corrupt_files_are_usage_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.otlp.pb"
    path.write_bytes(content)
    with pytest.raises(UsageError, match=message) as excinfo:
        read_request_file(str(path))
    assert excinfo.value.exit_code == 2
    assert str(path) in excinfo.value.message


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        read_request_file(str(tmp_path / "absent.otlp.pb"))
    with pytest.raises(UsageError, match="is a directory"):
        read_request_file(str(tmp_path))


def test_files_written_by_extension_carry_the_environment_resource(tmp_path, monkeypatch):
    from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
        ExportProfilesServiceRequest,
    )

    from otlp_ebpf.formatters import registry
    from otlp_ebpf.formatters.otlp_request import read_request_file
    from tests.otlp_samples import cpu_snapshot

    monkeypatch.setenv("OTEL_SERVICE_NAME", "checkout")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=ci")
    path = tmp_path / "x.otlp.pb"
    registry.write_output(cpu_snapshot(), str(path), registry.format_for_path(str(path)))
    request = read_request_file(str(path))[0]  # profiles first, then the cpu time metrics
    decoded = ExportProfilesServiceRequest.FromString(request.payload)
    attrs = {a.key: a.value.string_value for a in decoded.resource_profiles[0].resource.attributes}
    assert attrs["service.name"] == "checkout"
    assert attrs["deployment.environment"] == "ci"
