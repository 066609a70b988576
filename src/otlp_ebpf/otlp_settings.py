"""OTLP settings that both the files we write (formatters) and the requests we send (export)
need: the signal names, and the resource attributes the standard environment gives
(OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME) in its `k1=v1,k2=v2` format."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal
from urllib.parse import unquote

from otlp_ebpf.errors import UsageError

Signal = Literal["profiles", "metrics", "logs"]
# Logs carry the agent's findings (docs/agent.md); snapshots give profiles and metrics only.
SIGNALS: tuple[Signal, ...] = ("profiles", "metrics", "logs")


def parse_key_values(text: str, source: str) -> dict[str, str]:
    """`k1=v1,k2=v2` with percent-encoded values (the OTEL_*_HEADERS / _ATTRIBUTES format).

    Keys come back lower-cased when they are header names (gRPC metadata keys must be).
    Error messages name the entry's position, never its value.
    """
    result: dict[str, str] = {}
    for position, entry in enumerate(text.split(","), start=1):
        if not entry.strip():
            continue
        key, sep, value = entry.partition("=")
        key = unquote(key).strip()
        if not sep or not key:
            raise UsageError(f"{source}: entry {position} is not key=value")
        if source.endswith("HEADERS"):
            key = key.lower()
        result[key] = unquote(value).strip()
    return result


def resource_attributes_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """OTEL_RESOURCE_ATTRIBUTES, with OTEL_SERVICE_NAME taking precedence for service.name."""
    attrs = parse_key_values(env.get("OTEL_RESOURCE_ATTRIBUTES", ""), "OTEL_RESOURCE_ATTRIBUTES")
    service = env.get("OTEL_SERVICE_NAME", "").strip()
    if service:
        attrs["service.name"] = service
    return attrs
