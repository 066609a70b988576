"""SDK MetricsData from snapshot aggregates, checked after the official OTLP encoder."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics

from otlp_ebpf.formatters.otlp_metrics import build_metrics_data, has_metrics, log2_bounds
from otlp_ebpf.model import SyscallsSnapshot, SyscallStat
from tests.otlp_conformance import check_metrics_request
from tests.otlp_samples import (
    STARTED_NS,
    cpu_snapshot,
    mem_snapshot,
    net_snapshot,
    syscalls_snapshot,
)


def encoded(snapshot: Any, attrs: dict[str, str] | None = None) -> Any:
    request = encode_metrics(build_metrics_data(snapshot, attrs))
    assert check_metrics_request(request) == []
    return request


def metrics_of(request: Any, service: str) -> dict[str, Any]:
    for rm in request.resource_metrics:
        attrs = {kv.key: kv.value for kv in rm.resource.attributes}
        if attrs["service.name"].string_value == service:
            return {m.name: m for m in rm.scope_metrics[0].metrics}
    raise AssertionError(f"no resource {service}")


def points(metric: Any) -> dict[tuple[tuple[str, Any], ...], Any]:
    data = getattr(metric, metric.WhichOneof("data"))
    return {
        tuple(sorted((kv.key, _scalar(kv.value)) for kv in p.attributes)): p
        for p in data.data_points
    }


def _scalar(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value"))


def test_syscall_latency_keeps_the_kernel_log2_slots() -> None:
    metrics = metrics_of(encoded(syscalls_snapshot()), "app")
    read = points(metrics["otlp_ebpf.syscall.duration"])[(("otlp_ebpf.syscall.name", "read"),)]
    assert list(read.explicit_bounds) == [1, 3, 7, 15, 31]
    assert list(read.bucket_counts) == [0, 1, 4, 2, 3, 0]
    assert (read.count, read.sum, read.min, read.max) == (10, 500, 2, 31)
    assert read.start_time_unix_nano == STARTED_NS
    assert read.time_unix_nano == STARTED_NS + 3_000_000_000
    write = points(metrics["otlp_ebpf.syscall.duration"])[(("otlp_ebpf.syscall.name", "write"),)]
    # a shorter kernel histogram is padded so every point of the metric shares its bounds
    assert list(write.explicit_bounds) == [1, 3, 7, 15, 31]
    assert list(write.bucket_counts) == [0, 0, 0, 4, 0, 0]
    assert metrics["otlp_ebpf.syscall.duration"].unit == "ns"


def test_syscall_counts_and_errors_by_errno() -> None:
    metrics = metrics_of(encoded(syscalls_snapshot()), "app")
    calls = points(metrics["otlp_ebpf.syscall.calls"])
    assert calls[(("otlp_ebpf.syscall.name", "read"),)].as_int == 10
    assert metrics["otlp_ebpf.syscall.calls"].sum.is_monotonic
    errors = {key: p.as_int for key, p in points(metrics["otlp_ebpf.syscall.errors"]).items()}
    assert errors == {
        (("error.type", "EAGAIN"), ("otlp_ebpf.syscall.name", "read")): 2,
        (("error.type", "_OTHER"), ("otlp_ebpf.syscall.name", "read")): 1,
    }


def test_syscall_without_histogram_gets_a_single_bucket() -> None:
    snapshot = SyscallsSnapshot(
        started_at="2026-01-01T00:00:00",
        duration_s=1,
        host="h",
        syscalls=(SyscallStat(5, "x", "openat", 3, 0, {}, 90, 30, 30, 30),),
    )
    metrics = metrics_of(encoded(snapshot), "x")
    (point,) = points(metrics["otlp_ebpf.syscall.duration"]).values()
    assert list(point.bucket_counts) == [3]
    assert list(point.explicit_bounds) == []


def test_net_metrics_use_semantic_convention_names() -> None:
    request = encoded(net_snapshot(), {"deployment.environment.name": "ci"})
    app = metrics_of(request, "app")
    io = {k: p.as_int for k, p in points(app["process.network.io"]).items()}
    assert io == {
        (("network.io.direction", "transmit"),): 1507,
        (("network.io.direction", "receive"),): 5009,
    }
    assert app["process.network.io"].unit == "By"
    peer = (
        ("network.peer.address", "10.0.0.9"),
        ("network.peer.port", 443),
        ("network.transport", "tcp"),
        ("network.type", "ipv4"),
    )
    assert points(app["otlp_ebpf.tcp.retransmits"])[peer].as_int == 2
    assert points(app["otlp_ebpf.tcp.rtt"])[peer].as_double == 200.0
    tx = points(app["otlp_ebpf.tcp.io"])[
        tuple(sorted((*peer, ("network.io.direction", "transmit"))))
    ]
    assert tx.as_int == 1500
    states = {k: p.as_int for k, p in points(app["otlp_ebpf.tcp.connections"]).items()}
    assert states[(("network.connection.state", "close"), ("network.transport", "tcp"))] == 2
    host = metrics_of(request, "otlp-ebpf")
    resets = {k: p.as_int for k, p in points(host["otlp_ebpf.tcp.resets"]).items()}
    assert resets == {
        (("otlp_ebpf.tcp.reset.direction", "sent"),): 1,
        (("otlp_ebpf.tcp.reset.direction", "received"),): 2,
    }
    assert (
        points(host["otlp_ebpf.network.drops"])[(("otlp_ebpf.drop.reason", "TCP_CSUM"),)].as_int
        == 3
    )
    # Retransmits are per connection group only: a host copy would be summed twice.
    assert "otlp_ebpf.tcp.retransmits" not in host
    host_attrs = {kv.key for kv in request.resource_metrics[-1].resource.attributes}
    assert {"host.name", "deployment.environment.name"} <= host_attrs


def test_mem_outstanding_is_an_up_down_sum() -> None:
    request = encoded(mem_snapshot())
    app = metrics_of(request, "app")
    outstanding = app["otlp_ebpf.memory.outstanding"]
    assert not outstanding.sum.is_monotonic
    assert points(outstanding)[()].as_int == 66560
    assert points(app["otlp_ebpf.memory.outstanding_allocations"])[()].as_int == 20
    host = metrics_of(request, "otlp-ebpf")
    assert points(host["otlp_ebpf.memory.allocations"])[()].as_int == 120


def test_cpu_time_per_process_and_leaf_function_from_the_samples() -> None:
    snapshot = cpu_snapshot()
    assert has_metrics(snapshot)
    request = encoded(snapshot)
    period = 1.0 / snapshot.frequency_hz
    by_pid: dict[int, list] = {}
    for stack in snapshot.stacks:
        by_pid.setdefault(stack.pid, []).append(stack)
    for rm in request.resource_metrics:
        attrs = {a.key: a.value for a in rm.resource.attributes}
        stacks = by_pid[attrs["process.pid"].int_value]
        metrics = {m.name: m for m in rm.scope_metrics[0].metrics}
        total = metrics["otlp_ebpf.cpu.time"].sum
        assert total.is_monotonic and metrics["otlp_ebpf.cpu.time"].unit == "s"
        assert total.data_points[0].as_double == pytest.approx(
            sum(s.count for s in stacks) * period
        )
        leaves: dict[str, int] = {}
        for s in stacks:
            leaves[s.frames[-1]] = leaves.get(s.frames[-1], 0) + s.count
        functions = {
            p.attributes[0].value.string_value: p.as_double
            for p in metrics["otlp_ebpf.cpu.function.time"].sum.data_points
        }
        assert functions == {name: pytest.approx(n * period) for name, n in leaves.items()}


def test_a_cpu_snapshot_of_blocked_time_only_has_no_metrics() -> None:
    snapshot = dataclasses.replace(cpu_snapshot(), stacks=())
    assert not has_metrics(snapshot)
    assert list(build_metrics_data(snapshot).resource_metrics) == []


def test_log2_bounds_are_the_slot_edges() -> None:
    assert log2_bounds(4) == [1.0, 3.0, 7.0, 15.0]
