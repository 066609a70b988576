"""The OTLP metrics request built from snapshot aggregates, checked for conformance."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from otlp_ebpf.formatters.otlp_metrics import build_metrics_request, has_metrics, log2_bounds
from otlp_ebpf.model import ProcessInfo, SyscallsSnapshot, SyscallStat
from tests.otlp_conformance import check_metrics_request
from tests.otlp_samples import (
    STARTED_NS,
    cpu_snapshot,
    mem_snapshot,
    net_snapshot,
    syscalls_snapshot,
)


def encoded(snapshot: Any, attrs: dict[str, str] | None = None) -> Any:
    request = build_metrics_request(snapshot, attrs)
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
    assert list(build_metrics_request(snapshot).resource_metrics) == []


def test_log2_bounds_are_the_slot_edges() -> None:
    assert log2_bounds(4) == [1.0, 3.0, 7.0, 15.0]


def test_rows_of_one_syscall_in_many_processes_keep_their_own_values() -> None:
    """Points of one syscall name start from a shared template: each keeps its own figures."""
    rows = [
        SyscallStat(pid, f"p{pid}", "read", pid, pid % 2, {}, 10 * pid, 1, 2, pid, 1, (pid, 1))
        for pid in (1, 2, 3)
    ]
    rows.append(SyscallStat(3, "p3", "poll", 4, 0, {}, 40, 8, 12, 12, 8))  # no kernel histogram
    snapshot = SyscallsSnapshot(started_at="", duration_s=1, host="", syscalls=tuple(rows))
    request = encoded(snapshot)
    assert len(request.resource_metrics) == 3
    for pid, rm in zip((1, 2, 3), request.resource_metrics, strict=True):
        metrics = {m.name: m for m in rm.scope_metrics[0].metrics}
        read = points(metrics["otlp_ebpf.syscall.duration"])[(("otlp_ebpf.syscall.name", "read"),)]
        assert list(read.bucket_counts) == [pid, 1, 0]
        assert list(read.explicit_bounds) == [1.0, 3.0]
        assert (read.count, read.sum, read.max) == (pid + 1, 10 * pid, pid)
        assert metrics["otlp_ebpf.syscall.calls"].sum.data_points[0].as_int == pid
        assert ("otlp_ebpf.syscall.errors" in metrics) == (pid % 2 == 1)
    poll = points(metrics["otlp_ebpf.syscall.duration"])[(("otlp_ebpf.syscall.name", "poll"),)]
    assert (list(poll.bucket_counts), list(poll.explicit_bounds)) == ([4], [])
    assert poll.start_time_unix_nano == 0  # no readable start: 0, as for profiles


def test_resource_attributes_keep_their_types_and_the_environment_wins() -> None:
    info = ProcessInfo(7, "srv", "/usr/bin/srv", ("/usr/bin/srv", "--port", "80"))
    snapshot = SyscallsSnapshot(
        started_at="2026-01-01T00:00:00+00:00",
        duration_s=1,
        host="box",
        processes=(info,),
        syscalls=(SyscallStat(7, "srv", "read", 1, 0, {}, 5, 5, 5, 5, 5, (1,)),),
    )
    request = encoded(snapshot, {"service.name": "checkout", "team": "payments"})
    attrs = [(kv.key, _scalar(kv.value)) for kv in request.resource_metrics[0].resource.attributes]
    args = request.resource_metrics[0].resource.attributes[3].value.array_value.values
    assert [v.string_value for v in args] == ["/usr/bin/srv", "--port", "80"]
    assert [(k, v) for k, v in attrs if k != "process.command_args"] == [
        ("process.pid", 7),
        ("process.executable.name", "srv"),
        ("process.executable.path", "/usr/bin/srv"),
        ("host.name", "box"),
        ("service.name", "checkout"),  # replaced in place, not appended
        ("team", "payments"),
    ]
    scope = request.resource_metrics[0].scope_metrics[0].scope
    assert scope.name == "otlp-ebpf" and scope.version


def test_a_gauge_point_is_an_instant() -> None:
    app = metrics_of(encoded(net_snapshot()), "app")
    for point in app["otlp_ebpf.tcp.rtt"].gauge.data_points:
        assert (point.start_time_unix_nano, point.time_unix_nano) == (0, STARTED_NS + 3 * 10**9)
    for point in app["process.network.io"].sum.data_points:
        assert point.start_time_unix_nano == STARTED_NS
