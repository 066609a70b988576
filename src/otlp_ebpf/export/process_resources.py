"""Per-process resource attributes (container, pod, the process's own service name) added to
encoded OTLP requests, on the resource whose `process.pid` they belong to.

The attributes come from the process itself (collectors/containers.py), so they describe it
better than the agent's own OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES: they win.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from otlp_ebpf.formatters.otlp_request import EncodedRequest

REQUEST_TYPES: dict[str, Any] = {
    "profiles": profiles_service_pb2.ExportProfilesServiceRequest,
    "metrics": metrics_service_pb2.ExportMetricsServiceRequest,
}


def _resources(signal: str, request: Any) -> list[Any]:
    if signal == "profiles":
        return [rp.resource for rp in request.resource_profiles]
    return [rm.resource for rm in request.resource_metrics]


def _pid_of(resource: Any) -> int | None:
    for kv in resource.attributes:
        if kv.key == "process.pid":
            return int(kv.value.int_value)
    return None


def add_process_attributes(
    request: EncodedRequest, per_pid: Mapping[int, Mapping[str, str]]
) -> EncodedRequest:
    """`request` with each process resource given its attributes (replacing same-named ones)."""
    if not per_pid:
        return request
    decoded = REQUEST_TYPES[request.signal].FromString(request.payload)
    changed = False
    for resource in _resources(request.signal, decoded):
        pid = _pid_of(resource)
        attrs = per_pid.get(pid) if pid is not None else None
        if not attrs:
            continue
        kept = [kv for kv in resource.attributes if kv.key not in attrs]
        del resource.attributes[:]
        resource.attributes.extend(kept)
        for key, value in attrs.items():
            kv = KeyValue(key=key)
            kv.value.string_value = value
            resource.attributes.append(kv)
        changed = True
    if not changed:
        return request
    return EncodedRequest(request.signal, decoded.SerializeToString())
