"""Where and how OTLP data is sent, resolved once from command-line flags and the environment.

Flags win over signal-specific variables (OTEL_EXPORTER_OTLP_PROFILES_*, _METRICS_*), which win
over the general ones (OTEL_EXPORTER_OTLP_*), which win over defaults. Header values may hold
credentials: they are never part of a repr, a message or a log line.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, cast
from urllib.parse import urlsplit

from otlp_ebpf.errors import UsageError
from otlp_ebpf.otlp_settings import (
    SIGNALS,
    Signal,
    parse_key_values,
    resource_attributes_from_env,
)
from otlp_ebpf.redact import mask_userinfo

Protocol = Literal["grpc", "http/protobuf"]
Compression = Literal["gzip", "none"]

PROTOCOLS: tuple[Protocol, ...] = ("grpc", "http/protobuf")
HTTP_PATHS: dict[Signal, str] = {
    "profiles": "v1development/profiles",
    "metrics": "v1/metrics",
    "logs": "v1/logs",
}
DEFAULT_PORTS: dict[Protocol, int] = {"grpc": 4317, "http/protobuf": 4318}
DEFAULT_TIMEOUT_S = 10.0
# Profiles are large and compress 5-10x; every OTLP receiver accepts gzip.
DEFAULT_COMPRESSION: Compression = "gzip"

_HEADER_KEY = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


@dataclass(frozen=True)
class SignalTarget:
    """Everything needed to send one signal (profiles or metrics) to one receiver.

    `url` is `scheme://host:port` for gRPC and the full signal URL for HTTP.
    """

    signal: Signal
    url: str
    protocol: Protocol
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    compression: Compression = DEFAULT_COMPRESSION
    timeout_s: float = DEFAULT_TIMEOUT_S
    insecure: bool = False
    certificate: str | None = None

    @property
    def authority(self) -> str:
        """`host:port` as gRPC channels want it."""
        return urlsplit(self.url).netloc

    def describe(self) -> str:
        """Where this goes, for messages: protocol and URL, never headers."""
        return f"{self.url} ({self.protocol})"

    def header_names(self) -> list[str]:
        return [name for name, _ in self.headers]


@dataclass(frozen=True)
class OtlpConfig:
    """The resolved OTLP settings for every signal plus the resource attributes to attach."""

    profiles: SignalTarget
    metrics: SignalTarget
    logs: SignalTarget
    resource_attributes: Mapping[str, str] = field(default_factory=dict)

    def target(self, signal: Signal) -> SignalTarget:
        return {"profiles": self.profiles, "metrics": self.metrics, "logs": self.logs}[signal]

    @classmethod
    def from_cli(
        cls,
        url: str | None = None,
        protocol: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        compression: str | None = None,
        insecure: bool | None = None,
        certificate: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> OtlpConfig:
        """Resolve flags (None = not given) over the OTEL_* environment; UsageError on bad values.

        `url` is the receiver's base URL (`http://collector:4317`); HTTP signal paths are added.
        """
        env = os.environ if environ is None else environ
        flags = _Flags(url, protocol, headers, timeout_s, compression, insecure, certificate)
        profiles, metrics, logs = (_resolve_target(signal, flags, env) for signal in SIGNALS)
        return cls(profiles, metrics, logs, resource_attributes_from_env(env))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OtlpConfig:
        return cls.from_cli(None, None, environ=environ)


@dataclass(frozen=True)
class _Flags:
    url: str | None
    protocol: str | None
    headers: Mapping[str, str] | None
    timeout_s: float | None
    compression: str | None
    insecure: bool | None
    certificate: str | None


def _lookup(env: Mapping[str, str], signal: Signal, name: str) -> tuple[str, str] | None:
    """(variable name, value) of the signal-specific variable, else the general one."""
    for var in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_{name}", f"OTEL_EXPORTER_OTLP_{name}"):
        value = env.get(var, "").strip()
        if value:
            return var, value
    return None


def _resolve_target(signal: Signal, flags: _Flags, env: Mapping[str, str]) -> SignalTarget:
    insecure = _resolve_insecure(signal, flags, env)
    raw_url, is_signal_url = _raw_url(signal, flags, env)
    protocol = _resolve_protocol(signal, flags, env, raw_url)
    if raw_url is None:
        raw_url = f"http://localhost:{DEFAULT_PORTS[protocol]}"
    base = _normalize_url(
        raw_url, insecure=insecure, keep_path=is_signal_url, default_port=DEFAULT_PORTS[protocol]
    )
    url = base
    if protocol == "http/protobuf" and not is_signal_url:
        url = f"{base.rstrip('/')}/{HTTP_PATHS[signal]}"
    if protocol == "grpc":
        url = _origin(base)
    return SignalTarget(
        signal=signal,
        url=url,
        protocol=protocol,
        headers=_resolve_headers(signal, flags, env),
        compression=_resolve_compression(signal, flags, env),
        timeout_s=_resolve_timeout(signal, flags, env),
        insecure=urlsplit(url).scheme == "http",
        certificate=_resolve_certificate(signal, flags, env),
    )


def _raw_url(signal: Signal, flags: _Flags, env: Mapping[str, str]) -> tuple[str | None, bool]:
    """The endpoint as given and whether it already names the signal (per-signal variable)."""
    if flags.url:
        return flags.url.strip(), False
    specific = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "").strip()
    if specific:
        return specific, True
    general = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    return (general or None), False


def _resolve_protocol(
    signal: Signal, flags: _Flags, env: Mapping[str, str], raw_url: str | None
) -> Protocol:
    source, value = "--protocol", flags.protocol
    if value is None and (found := _lookup(env, signal, "PROTOCOL")):
        source, value = found
    if value is None:
        # A receiver on the standard HTTP port speaks HTTP; anything else is taken for gRPC.
        port = _port_of(raw_url) if raw_url else None
        return "http/protobuf" if port == DEFAULT_PORTS["http/protobuf"] else "grpc"
    normalized = value.strip().lower()
    if normalized == "http":
        normalized = "http/protobuf"
    if normalized not in PROTOCOLS:
        raise UsageError(
            f"{source}: unsupported OTLP protocol {value!r}; use grpc or http/protobuf"
        )
    return cast(Protocol, normalized)


def _port_of(raw_url: str) -> int | None:
    text = raw_url if "://" in raw_url else f"//{raw_url}"
    try:
        return urlsplit(text).port
    except ValueError:
        return None


def _normalize_url(raw: str, *, insecure: bool, keep_path: bool, default_port: int) -> str:
    """An absolute http(s) URL, checked whole before anything is collected.

    A bare `host` or `host:port` (no scheme) gets https unless insecure is asked for, and a
    bare host without a port gets the protocol's own port (4317 gRPC, 4318 HTTP), not https's
    443: `--otlp collector` reaches a Collector with its default receivers. A URL with a
    scheme is taken as written (`http://collector` is port 80)."""
    bare = "://" not in raw
    text = f"{'http' if insecure else 'https'}://{raw}" if bare else raw
    try:
        parts = urlsplit(text)
        port = parts.port  # a malformed port is refused now rather than at connect time
    except ValueError as exc:
        raise UsageError(f"OTLP endpoint {_shown(raw)!r} is not a valid URL ({exc})") from exc
    if parts.username is not None or parts.password is not None:
        raise UsageError(
            f"OTLP endpoint {_shown(raw)!r}: credentials go in headers, not in the URL"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"OTLP endpoint {_shown(raw)!r} is not a URL like http://collector:4317 or https://host:4318"
        )
    _check_host(raw, parts.hostname)
    if port == 0 or any(c.isspace() for c in text):
        raise UsageError(f"OTLP endpoint {_shown(raw)!r} is not a valid URL")
    netloc = parts.netloc
    if bare and port is None:
        netloc = f"{netloc}:{default_port}"
    path = parts.path if keep_path else parts.path.rstrip("/")
    return f"{parts.scheme}://{netloc}{path}"


# A host name: dot-separated labels of letters, digits, '-' and '_' (compose and Kubernetes
# service names), each 1-63 characters; or an IP address.
_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _check_host(raw: str, host: str) -> None:
    """Refuse a host that name resolution would refuse later, after a whole run."""
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if not host.isascii():
        raise UsageError(
            f"OTLP endpoint {_shown(raw)!r}: host {host!r} is not ASCII",
            hint="give an international domain name in its xn-- (punycode) form",
        )
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise UsageError(f"OTLP endpoint {_shown(raw)!r}: {host!r} is not a valid host name")


def _shown(raw: str) -> str:
    """An endpoint as a message may show it: credentials in it masked (`http://***@host`)."""
    if "://" in raw:
        return mask_userinfo(raw)
    return mask_userinfo("//" + raw).removeprefix("//")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _resolve_headers(
    signal: Signal, flags: _Flags, env: Mapping[str, str]
) -> tuple[tuple[str, str], ...]:
    headers: dict[str, str] = {}
    if found := _lookup(env, signal, "HEADERS"):
        headers.update(parse_key_values(found[1], found[0]))
    if flags.headers:
        headers.update({k.strip().lower(): v for k, v in flags.headers.items()})
    for position, (key, value) in enumerate(headers.items(), start=1):
        if not _HEADER_KEY.match(key):
            raise UsageError(f"OTLP header name {key!r} is not a valid header name")
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
            # Named by key and position, never by value: headers carry credentials.
            raise UsageError(
                f"OTLP header {key!r} (entry {position}) has a control character in its value"
            )
    return tuple(headers.items())


def _resolve_compression(signal: Signal, flags: _Flags, env: Mapping[str, str]) -> Compression:
    source, value = "--compression", flags.compression
    if value is None and (found := _lookup(env, signal, "COMPRESSION")):
        source, value = found
    if value is None:
        return DEFAULT_COMPRESSION
    normalized = value.strip().lower()
    if normalized not in ("gzip", "none"):
        raise UsageError(f"{source}: unsupported compression {value!r}; use gzip or none")
    return cast(Compression, normalized)


def _resolve_timeout(signal: Signal, flags: _Flags, env: Mapping[str, str]) -> float:
    if flags.timeout_s is not None:
        if not (flags.timeout_s > 0 and math.isfinite(flags.timeout_s)):
            raise UsageError("--timeout must be a positive number of seconds")
        return float(flags.timeout_s)
    found = _lookup(env, signal, "TIMEOUT")
    if found is None:
        return DEFAULT_TIMEOUT_S
    var, value = found
    try:
        millis = float(value)
    except ValueError:
        millis = -1.0
    if not (millis > 0 and math.isfinite(millis)):
        raise UsageError(f"{var}: {value!r} is not a positive number of milliseconds")
    return millis / 1000.0


def _resolve_insecure(signal: Signal, flags: _Flags, env: Mapping[str, str]) -> bool:
    if flags.insecure is not None:
        return flags.insecure
    found = _lookup(env, signal, "INSECURE")
    if found is None:
        return False
    var, value = found
    if value.lower() not in ("true", "false"):
        raise UsageError(f"{var}: {value!r} is not true or false")
    return value.lower() == "true"


def _resolve_certificate(signal: Signal, flags: _Flags, env: Mapping[str, str]) -> str | None:
    source, path = "--certificate", flags.certificate
    if path is None and (found := _lookup(env, signal, "CERTIFICATE")):
        source, path = found
    if path is None:
        return None
    if not os.access(path, os.R_OK) or not os.path.isfile(path):
        raise UsageError(f"{source}: cannot read certificate file {path}")
    return path
