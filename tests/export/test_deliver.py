"""OTLP export against real receivers on 127.0.0.1 (gRPC and HTTP, plain and TLS)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from otlp_ebpf.cli.app import run
from otlp_ebpf.errors import RuntimeFailure
from otlp_ebpf.export.config import OtlpConfig
from otlp_ebpf.export.deliver import deliver
from otlp_ebpf.export.profiles_transport import Backoff, ExportFailed, SendResult, send_request
from otlp_ebpf.formatters.otlp_profiles import build_profiles_request
from otlp_ebpf.formatters.otlp_request import read_request_file
from tests.export.otlp_servers import (
    Failure,
    GrpcReceiver,
    HttpReceiver,
    Receiver,
    self_signed_certificate,
)
from tests.otlp_samples import cpu_snapshot, mem_snapshot, net_snapshot, syscalls_snapshot

SECRET = "Bearer s3cr3t-token"
PROTOCOLS = {"grpc": GrpcReceiver, "http/protobuf": HttpReceiver}


def send_profiles(request: Any, target: Any, **kwargs: Any) -> SendResult:
    return send_request(request.SerializeToString(), target, **kwargs)


@pytest.fixture(autouse=True)
def clean_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.fixture(params=list(PROTOCOLS))
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    server = PROTOCOLS[request.param]().start()
    server.protocol = request.param  # type: ignore[attr-defined]
    yield server
    server.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


def config_for(server: Receiver, protocol: str, **kwargs: object) -> OtlpConfig:
    return OtlpConfig.from_cli(server.url, protocol, **kwargs)  # type: ignore[arg-type]


def test_every_snapshot_kind_arrives_conformant_with_headers(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"Authorization={SECRET.replace(' ', '%20')}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "checkout")
    config = config_for(receiver, receiver.protocol)  # type: ignore[attr-defined]

    for snapshot in (cpu_snapshot(), mem_snapshot(), syscalls_snapshot(), net_snapshot()):
        deliver(snapshot, config)

    # cpu, mem -> profiles + metrics; syscalls, net -> metrics
    assert [r.signal for r in receiver.received] == [
        "profiles", "metrics", "profiles", "metrics", "metrics", "metrics",
    ]  # fmt: skip
    for received in receiver.received:
        assert received.violations() == []
        assert received.headers["authorization"] == SECRET
    cpu = receiver.of("profiles")[0].request
    pids = {
        kv.value.int_value
        for rp in cpu.resource_profiles
        for kv in rp.resource.attributes
        if kv.key == "process.pid"
    }
    assert pids == {4242, 77}
    services = {
        kv.value.string_value
        for rp in cpu.resource_profiles
        for kv in rp.resource.attributes
        if kv.key == "service.name"
    }
    assert services == {"checkout"}
    on_cpu = cpu.resource_profiles[0].scope_profiles[0].profiles[0]
    assert sum(s.values[0] for s in on_cpu.samples) == 15
    metric_names = {
        m.name
        for r in receiver.of("metrics")
        for rm in r.request.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    assert {"otlp_ebpf.syscall.duration", "process.network.io", "otlp_ebpf.memory.outstanding"} <= (
        metric_names
    )
    captured = capsys.readouterr()
    assert "s3cr3t" not in captured.out + captured.err


def test_grpc_unavailable_is_retried_after_the_servers_retry_info() -> None:
    server = GrpcReceiver(failures=[Failure(grpc.StatusCode.UNAVAILABLE, 0.05)]).start()
    try:
        result = send_profiles(
            build_profiles_request(cpu_snapshot()), config_for(server, "grpc").profiles
        )
    finally:
        server.stop()
    assert result.attempts == 2
    assert server.attempts == 2
    assert len(server.received) == 1


def test_grpc_backoff_retries_then_delivers_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    server = GrpcReceiver(failures=[Failure(grpc.StatusCode.UNAVAILABLE, 0.05)]).start()
    try:
        deliver(syscalls_snapshot(), config_for(server, "grpc"))
    finally:
        server.stop()
    assert server.attempts == 2
    assert server.of("metrics")[0].violations() == []
    err = capsys.readouterr().err
    assert "OTLP metrics: gRPC UNAVAILABLE: planned failure; retrying in 0.1 s" in err
    assert f"OTLP: sent metrics to {server.url}" in err


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_metrics_over_http_carry_the_configured_compression_and_headers(
    compression: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", compression)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-tenant=t1")
    server = HttpReceiver().start()
    try:
        deliver(net_snapshot(), config_for(server, "http/protobuf"))
    finally:
        server.stop()
    (received,) = server.of("metrics")
    assert received.violations() == []
    assert received.headers.get("content-encoding") == ("gzip" if compression == "gzip" else None)
    assert received.headers["x-tenant"] == "t1"
    assert received.headers["user-agent"].startswith("otlp-ebpf/")


def test_refused_metrics_are_not_retried_and_the_failure_names_the_signal(
    tmp_path: Path,
) -> None:
    server = HttpReceiver(failures=[Failure(400)]).start()
    try:
        with pytest.raises(RuntimeFailure) as excinfo:
            deliver(
                syscalls_snapshot(), config_for(server, "http/protobuf"), spill_dir=str(tmp_path)
            )
    finally:
        server.stop()
    assert server.attempts == 1
    assert excinfo.value.message == (
        f"OTLP metrics export to {server.url}/v1/metrics (http/protobuf) failed: "
        "HTTP 400: planned 400"
    )
    (spilled,) = tmp_path.glob("syscalls-*.otlp.pb")
    assert [r.signal for r in read_request_file(str(spilled))] == ["metrics"]


def test_metrics_to_a_dead_grpc_endpoint_give_up_within_the_timeout(tmp_path: Path) -> None:
    dead = OtlpConfig.from_cli("http://127.0.0.1:9", "grpc", timeout_s=0.5)
    with pytest.raises(
        RuntimeFailure, match=r"OTLP metrics export .* failed: gRPC UNAVAILABLE"
    ) as e:
        deliver(syscalls_snapshot(), dead, spill_dir=str(tmp_path))
    assert "within 0.5 s" in e.value.message


def test_grpc_resource_exhausted_without_retry_info_is_not_retried() -> None:
    server = GrpcReceiver(failures=[Failure(grpc.StatusCode.RESOURCE_EXHAUSTED)]).start()
    try:
        with pytest.raises(ExportFailed, match="RESOURCE_EXHAUSTED"):
            send_profiles(
                build_profiles_request(cpu_snapshot()), config_for(server, "grpc").profiles
            )
    finally:
        server.stop()
    assert server.attempts == 1


def test_grpc_backoff_without_hint_grows_exponentially() -> None:
    failures = [Failure(grpc.StatusCode.UNAVAILABLE), Failure(grpc.StatusCode.ABORTED)]
    server = GrpcReceiver(failures=failures).start()
    backoff = Backoff(initial_s=0.1, jitter=0.0)
    started = time.monotonic()
    try:
        result = send_profiles(
            build_profiles_request(cpu_snapshot()),
            config_for(server, "grpc").profiles,
            backoff=backoff,
        )
    finally:
        server.stop()
    assert result.attempts == 3
    assert time.monotonic() - started >= 0.3  # 0.1 s then 0.2 s


def test_http_503_waits_for_retry_after() -> None:
    server = HttpReceiver(failures=[Failure(503, retry_after_s=1)]).start()
    started = time.monotonic()
    try:
        result = send_profiles(
            build_profiles_request(cpu_snapshot()), config_for(server, "http/protobuf").profiles
        )
    finally:
        server.stop()
    assert result.attempts == 2
    assert time.monotonic() - started >= 0.95
    assert server.received[0].violations() == []


def test_http_400_is_not_retried_and_is_spilled(tmp_path: Path) -> None:
    server = HttpReceiver(failures=[Failure(400)]).start()
    try:
        with pytest.raises(RuntimeFailure, match="HTTP 400") as excinfo:
            deliver(cpu_snapshot(), config_for(server, "http/protobuf"), spill_dir=str(tmp_path))
    finally:
        server.stop()
    assert server.attempts == 2  # the profiles request once, not retried; then the metrics
    assert excinfo.value.exit_code == 1
    assert [p.name.startswith("cpu-") for p in tmp_path.iterdir()] == [True]


def test_partial_success_is_reported(
    receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    receiver.rejected = 2
    deliver(cpu_snapshot(), config_for(receiver, receiver.protocol))  # type: ignore[attr-defined]
    assert "2 rejected (too old)" in capsys.readouterr().err


def test_dead_endpoint_spills_then_push_delivers_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], receiver: Receiver
) -> None:
    protocol = receiver.protocol  # type: ignore[attr-defined]
    dead = OtlpConfig.from_cli("http://127.0.0.1:9", protocol, timeout_s=1.0)
    # Giving up is bounded by the retry policy, not by this machine's speed: no clock here.
    with pytest.raises(RuntimeFailure) as excinfo:
        deliver(mem_snapshot(), dead, spill_dir=str(tmp_path))
    assert excinfo.value.exit_code == 1
    (spilled,) = tmp_path.glob("mem-*.otlp.pb")
    assert str(spilled) in capsys.readouterr().err
    assert [r.signal for r in read_request_file(str(spilled))] == ["profiles", "metrics"]

    code = run(["push", str(spilled), "--otlp", receiver.url, "--protocol", protocol])

    assert code == 0
    assert [r.signal for r in receiver.received] == ["profiles", "metrics"]
    assert all(r.violations() == [] for r in receiver.received)
    assert spilled.exists()


def test_push_keeps_undeliverable_files_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = OtlpConfig.from_cli("http://127.0.0.1:9", "http/protobuf", timeout_s=0.5)
    with pytest.raises(RuntimeFailure):
        deliver(cpu_snapshot(), dead, spill_dir=str(tmp_path))
    (spilled,) = tmp_path.glob("cpu-*.otlp.pb")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "500")
    code = run(
        ["push", str(spilled), "--otlp", "http://127.0.0.1:9", "--protocol", "http/protobuf"]
    )
    assert code == 1
    assert spilled.exists()


def test_a_partly_delivered_file_keeps_only_the_rest(tmp_path: Path) -> None:
    dead = OtlpConfig.from_cli("http://127.0.0.1:9", "http/protobuf", timeout_s=0.2)
    with pytest.raises(RuntimeFailure):
        deliver(mem_snapshot(), dead, spill_dir=str(tmp_path))  # profiles + metrics
    (spilled,) = tmp_path.glob("mem-*.otlp.pb")
    server = HttpReceiver().start()
    server.failures = [None, Failure(400)]  # type: ignore[list-item]  # profiles pass, metrics fail
    try:
        first = run(["push", str(spilled), "--otlp", server.url, "--protocol", "http/protobuf"])
        assert [r.signal for r in read_request_file(str(spilled))] == ["metrics"]
        second = run(["push", str(spilled), "--otlp", server.url, "--protocol", "http/protobuf"])
    finally:
        server.stop()
    assert (first, second) == (1, 0)
    # Pushing again never sent the delivered profiles twice.
    assert [r.signal for r in server.received] == ["profiles", "metrics"]


def test_push_rejects_a_corrupt_file_before_sending(tmp_path: Path) -> None:
    server = HttpReceiver().start()
    good = tmp_path / "good.otlp.pb"
    bad = tmp_path / "bad.otlp.pb"
    dead = OtlpConfig.from_cli("http://127.0.0.1:9", "http/protobuf", timeout_s=0.2)
    with pytest.raises(RuntimeFailure):
        deliver(cpu_snapshot(), dead, spill_dir=str(tmp_path))
    next(tmp_path.glob("cpu-*.otlp.pb")).rename(good)
    bad.write_bytes(b"OTLPEBPF\x01\x01\x00\x00\x10\x00garbage")
    try:
        code = run(["push", str(good), str(bad), "--otlp", server.url])
    finally:
        server.stop()
    assert code == 2
    assert server.attempts == 0


def test_push_removes_sent_files_when_asked(tmp_path: Path) -> None:
    server = GrpcReceiver().start()
    dead = OtlpConfig.from_cli("http://127.0.0.1:9", "grpc", timeout_s=0.2)
    with pytest.raises(RuntimeFailure):
        deliver(net_snapshot(), dead, spill_dir=str(tmp_path))
    (spilled,) = tmp_path.glob("net-*.otlp.pb")
    try:
        code = run(["push", str(spilled), "--otlp", server.url, "--remove-sent"])
    finally:
        server.stop()
    assert code == 0
    assert not spilled.exists()
    assert server.of("metrics")[0].violations() == []


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_tls_with_a_self_signed_certificate(
    protocol: str, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server = PROTOCOLS[protocol]().start(tls=certificate)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(certificate[0]))
    try:
        assert server.url.startswith("https://")
        deliver(mem_snapshot(), config_for(server, protocol), spill_dir=str(tmp_path))
    finally:
        server.stop()
    assert [r.signal for r in server.received] == ["profiles", "metrics"]


def test_tls_without_the_certificate_fails(certificate: tuple[Path, Path], tmp_path: Path) -> None:
    server = HttpReceiver().start(tls=certificate)
    try:
        with pytest.raises(RuntimeFailure, match=r"TLS|CERTIFICATE"):
            deliver(cpu_snapshot(), config_for(server, "http/protobuf"), spill_dir=str(tmp_path))
    finally:
        server.stop()
    assert server.received == []


def test_unwritable_spill_directory_is_reported(tmp_path: Path) -> None:
    dead = OtlpConfig.from_cli("http://127.0.0.1:9", "http/protobuf", timeout_s=0.2)
    with pytest.raises(RuntimeFailure, match="could not be saved"):
        deliver(cpu_snapshot(), dead, spill_dir=str(tmp_path / "missing"))
