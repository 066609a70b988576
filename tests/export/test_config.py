"""OtlpConfig: flags over signal-specific variables over general variables over defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from otlp_ebpf.errors import UsageError
from otlp_ebpf.export.config import OtlpConfig


def test_defaults_are_grpc_on_localhost() -> None:
    config = OtlpConfig.from_cli(None, None, environ={})
    assert config.profiles.url == "http://localhost:4317"
    assert config.profiles.protocol == "grpc"
    assert config.profiles.insecure
    assert config.profiles.timeout_s == 10.0
    assert config.profiles.compression == "gzip"
    assert config.resource_attributes == {}


def test_http_urls_get_the_signal_paths() -> None:
    config = OtlpConfig.from_cli("http://collector:4318/", None, environ={})
    assert config.profiles.protocol == "http/protobuf"
    assert config.profiles.url == "http://collector:4318/v1development/profiles"
    assert config.metrics.url == "http://collector:4318/v1/metrics"


def test_grpc_keeps_only_the_origin() -> None:
    config = OtlpConfig.from_cli("https://collector:4317/ignored", "grpc", environ={})
    assert config.profiles.url == "https://collector:4317"
    assert config.profiles.authority == "collector:4317"
    assert not config.profiles.insecure


def test_environment_is_read_and_flags_win() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://envhost:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "none",
        "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20abc,x-tenant=t1",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=prod,service.name=fromattrs",
        "OTEL_SERVICE_NAME": "checkout",
    }
    from_env = OtlpConfig.from_env(env)
    assert from_env.metrics.url == "http://envhost:4318/v1/metrics"
    assert from_env.metrics.timeout_s == 2.5
    assert from_env.metrics.compression == "none"
    assert dict(from_env.metrics.headers) == {"authorization": "Bearer abc", "x-tenant": "t1"}
    assert from_env.resource_attributes == {
        "deployment.environment.name": "prod",
        "service.name": "checkout",
    }
    flagged = OtlpConfig.from_cli(
        "http://flaghost:4317", "grpc", timeout_s=1.0, headers={"X-Tenant": "t2"}, environ=env
    )
    assert flagged.profiles.url == "http://flaghost:4317"
    assert flagged.profiles.protocol == "grpc"
    assert flagged.profiles.timeout_s == 1.0
    assert dict(flagged.profiles.headers)["x-tenant"] == "t2"


def test_signal_specific_variables_apply_to_their_signal_only() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4317",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://metrics:4318/custom/path",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_PROFILES_TIMEOUT": "500",
    }
    config = OtlpConfig.from_env(env)
    assert config.metrics.url == "http://metrics:4318/custom/path"
    assert config.metrics.timeout_s == 10.0
    assert config.profiles.url == "http://base:4317"
    assert config.profiles.protocol == "grpc"
    assert config.target("profiles").timeout_s == 0.5


def test_bare_host_port_uses_tls_unless_insecure() -> None:
    assert OtlpConfig.from_cli("collector:4317", None, environ={}).profiles.url.startswith(
        "https://"
    )
    insecure = OtlpConfig.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317", "OTEL_EXPORTER_OTLP_INSECURE": "true"}
    )
    assert insecure.profiles.url == "http://collector:4317"
    assert insecure.profiles.insecure


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, "OTEL_EXPORTER_OTLP_TIMEOUT"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "-5"}, "positive"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "unsupported OTLP protocol"),
        ({"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, "unsupported compression"),
        ({"OTEL_EXPORTER_OTLP_INSECURE": "maybe"}, "not true or false"),
        ({"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem"}, "cannot read certificate"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://x:1"}, "is not a URL"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:notaport"}, "not a valid URL"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "a=1,broken"}, "entry 2 is not key=value"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "inf"}, "positive number of milliseconds"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://[::1"}, "not a valid URL"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://user:pw@x:4317"}, "credentials go in headers"),
        ({"OTEL_EXPORTER_OTLP_HEADERS": "authorization=se%0Acret"}, "control character"),
    ],
)
def test_bad_values_are_usage_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        OtlpConfig.from_env(env)


def test_bad_flag_values_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="--protocol"):
        OtlpConfig.from_cli(None, "thrift", environ={})
    with pytest.raises(UsageError, match="--timeout"):
        OtlpConfig.from_cli(None, None, timeout_s=0, environ={})
    with pytest.raises(UsageError, match="not a valid header name"):
        OtlpConfig.from_cli(None, None, headers={"bad header": "x"}, environ={})


def test_a_control_character_in_a_header_is_reported_without_the_value() -> None:
    with pytest.raises(UsageError) as info:
        OtlpConfig.from_env({"OTEL_EXPORTER_OTLP_HEADERS": "authorization=top%0Asecret"})
    assert "top" not in info.value.message and "secret" not in info.value.message


def test_header_values_never_show() -> None:
    env = {"OTEL_EXPORTER_OTLP_HEADERS": "authorization=topsecret,broken-entry-topsecret2"}
    with pytest.raises(UsageError) as excinfo:
        OtlpConfig.from_env(env)
    assert "topsecret" not in str(excinfo.value)
    config = OtlpConfig.from_env({"OTEL_EXPORTER_OTLP_HEADERS": "authorization=topsecret"})
    assert "topsecret" not in repr(config)
    assert "topsecret" not in config.profiles.describe()
    assert config.profiles.header_names() == ["authorization"]


def test_certificate_file_is_kept(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    config = OtlpConfig.from_cli("https://c:4317", None, certificate=str(ca), environ={})
    assert config.metrics.certificate == str(ca)


def test_a_bare_host_gets_the_protocols_default_port_not_443() -> None:
    grpc = OtlpConfig.from_cli("localhost", None, environ={})
    assert grpc.profiles.url == "https://localhost:4317"
    http = OtlpConfig.from_cli("collector", "http/protobuf", environ={})
    assert http.metrics.url == "https://collector:4318/v1/metrics"
    insecure = OtlpConfig.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector", "OTEL_EXPORTER_OTLP_INSECURE": "true"}
    )
    assert insecure.profiles.url == "http://collector:4317"
    # A URL with a scheme is taken as written.
    assert OtlpConfig.from_cli("http://collector", None, environ={}).profiles.url == (
        "http://collector"
    )
    assert OtlpConfig.from_cli("[::1]", None, environ={}).profiles.url == "https://[::1]:4317"


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("http://exa mple.com:4318", "'exa mple.com' is not a valid host name"),
        ("http://bücher.example:4318", "is not ASCII"),
        ("http://exa\u00a0mple.com:4318", "is not ASCII"),
        ("http://-bad-.example:4318", "is not a valid host name"),
        ("http://a..b:4318", "is not a valid host name"),
        ("http://" + "x" * 64 + ".example:4318", "is not a valid host name"),
        ("http://collector:0", "not a valid URL"),
        ("http://collector:4318/v1 metrics", "not a valid URL"),
    ],
)
def test_endpoints_that_could_never_connect_are_refused_up_front(
    endpoint: str, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        OtlpConfig.from_cli(endpoint, None, environ={})


def test_a_bad_endpoint_is_refused_before_collecting(capsys: pytest.CaptureFixture[str]) -> None:
    from otlp_ebpf.cli.app import run

    assert run(["syscalls", "-d", "5", "--otlp", "http://exa mple.com:4318"]) == 2
    err = capsys.readouterr().err
    assert "is not a valid host name" in err
    assert "Ctrl-C to stop" not in err  # nothing was attached
