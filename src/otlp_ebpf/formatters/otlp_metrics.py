"""OpenTelemetry SDK `MetricsData` built straight from a snapshot's in-kernel aggregates.

No SDK instruments or readers are involved: the kernel already aggregated, so each figure
becomes one data point. Latency histograms keep the kernel's log2 slots as explicit bounds
(2, 4, 8, ... ns), so nothing is re-bucketed. Per-process figures sit on a resource per
process (the same attributes as the profiles signal); host-wide counters (resets, drops,
allocation totals) sit on a host resource. Metric names are listed in docs/otlp.md.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from otlp_ebpf import __version__
from otlp_ebpf.formatters.otlp_profiles import (
    SCOPE_NAME,
    AttributeValue,
    process_resource_attributes,
    snapshot_time_unix_nano,
)
from otlp_ebpf.latency import slot_bounds
from otlp_ebpf.model import (
    Connection,
    CpuSnapshot,
    MemSnapshot,
    NetSnapshot,
    Snapshot,
    StackCount,
    SyscallsSnapshot,
    SyscallStat,
)

SYSCALL_NAME = "otlp_ebpf.syscall.name"
CUMULATIVE = AggregationTemporality.CUMULATIVE
_FAMILY_TYPES = {2: "ipv4", 10: "ipv6"}

# pid -> metrics of that process
_PerProcess = dict[int, list[Metric]]


class _Clock:
    """Start and end of the snapshot's window, stamped on every data point."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.start = snapshot_time_unix_nano(snapshot)
        self.end = self.start + int(snapshot.duration_s * 1_000_000_000)

    def point(self, value: int | float, attributes: Mapping[str, Any] | None = None) -> Any:
        return NumberDataPoint(dict(attributes or {}), self.start, self.end, value)


def has_metrics(snapshot: Snapshot) -> bool:
    """True when `snapshot` kind carries metric material (syscalls, net, mem, and cpu with
    on-CPU samples)."""
    if isinstance(snapshot, CpuSnapshot):
        return bool(snapshot.stacks) and snapshot.frequency_hz > 0
    return isinstance(snapshot, SyscallsSnapshot | NetSnapshot | MemSnapshot)


def build_metrics_data(
    snapshot: Snapshot, resource_attrs: Mapping[str, str] | None = None
) -> MetricsData:
    """The metrics of `snapshot` as SDK MetricsData, ready for an OTLP metric exporter."""
    attrs = dict(resource_attrs or {})
    clock = _Clock(snapshot)
    per_process: _PerProcess = defaultdict(list)
    host_metrics: list[Metric] = []
    comms: dict[int, str] = {}
    if isinstance(snapshot, SyscallsSnapshot):
        comms.update({s.pid: s.comm for s in snapshot.syscalls})
        _syscall_metrics(snapshot.syscalls, clock, per_process)
    elif isinstance(snapshot, NetSnapshot):
        comms.update({c.pid: c.comm for c in snapshot.connections})
        _connection_metrics(snapshot.connections, clock, per_process)
        host_metrics += _net_host_metrics(snapshot, clock)
    elif isinstance(snapshot, MemSnapshot):
        comms.update({a.pid: a.comm for a in snapshot.outstanding})
        _mem_metrics(snapshot, clock, per_process)
        host_metrics += _mem_host_metrics(snapshot, clock)
    elif isinstance(snapshot, CpuSnapshot) and has_metrics(snapshot):
        comms.update({s.pid: s.comm for s in snapshot.stacks})
        _cpu_metrics(snapshot, clock, per_process)
    resources = [
        _resource_metrics(
            process_resource_attributes(snapshot, pid, comms.get(pid, ""), attrs), metrics
        )
        for pid, metrics in per_process.items()
    ]
    if host_metrics:
        resources.append(_resource_metrics(_host_attributes(snapshot, attrs), host_metrics))
    return MetricsData(resource_metrics=resources)


def _host_attributes(snapshot: Snapshot, attrs: Mapping[str, str]) -> dict[str, AttributeValue]:
    host: dict[str, AttributeValue] = {"service.name": SCOPE_NAME}
    if snapshot.host:
        host["host.name"] = snapshot.host
    host.update(attrs)
    return host


def _resource_metrics(
    attributes: Mapping[str, AttributeValue], metrics: list[Metric]
) -> ResourceMetrics:
    plain = {k: tuple(v) if isinstance(v, list) else v for k, v in attributes.items()}
    scope = InstrumentationScope(SCOPE_NAME, __version__)
    return ResourceMetrics(
        resource=Resource(plain),
        scope_metrics=[ScopeMetrics(scope=scope, metrics=metrics, schema_url="")],
        schema_url="",
    )


def _counter(name: str, unit: str, description: str, points: list[Any]) -> Metric:
    data = Sum(points, CUMULATIVE, is_monotonic=True)
    return Metric(name=name, description=description, unit=unit, data=data)


def _updown(name: str, unit: str, description: str, points: list[Any]) -> Metric:
    data = Sum(points, CUMULATIVE, is_monotonic=False)
    return Metric(name=name, description=description, unit=unit, data=data)


def _by_pid(items: Iterable[Any]) -> dict[int, list[Any]]:
    grouped: dict[int, list[Any]] = defaultdict(list)
    for item in items:
        grouped[item.pid].append(item)
    return grouped


def _each_process(
    items: Iterable[Any],
    per_process: _PerProcess,
    build: Callable[[list[Any]], list[Metric]],
) -> None:
    for pid, group in _by_pid(items).items():
        per_process[pid].extend(m for m in build(group) if _points(m))


def _points(metric: Metric) -> int:
    return len(metric.data.data_points)


# --- syscalls ---------------------------------------------------------------------------------


def log2_bounds(slots: int) -> list[float]:
    """The kernel's log2 slots as explicit bounds (see latency.slot_bounds)."""
    return [float(b) for b in slot_bounds(slots)]


def _syscall_metrics(stats: Iterable[SyscallStat], clock: _Clock, out: _PerProcess) -> None:
    stats = list(stats)
    slots = max((len(s.hist) for s in stats), default=0)

    def build(group: list[SyscallStat]) -> list[Metric]:
        calls = [clock.point(s.count, {SYSCALL_NAME: s.name}) for s in group]
        errors = [
            clock.point(n, {SYSCALL_NAME: s.name, "error.type": errno})
            for s in group
            for errno, n in _errno_counts(s).items()
        ]
        latency = [_latency_point(s, slots, clock) for s in group if s.count]
        return [
            _counter("otlp_ebpf.syscall.calls", "{call}", "System calls completed", calls),
            _counter("otlp_ebpf.syscall.errors", "{call}", "System calls that failed", errors),
            Metric(
                name="otlp_ebpf.syscall.duration",
                description="Time from syscall entry to exit (kernel log2 buckets)",
                unit="ns",
                data=Histogram(latency, CUMULATIVE),
            ),
        ]

    _each_process(stats, out, build)


def _errno_counts(stat: SyscallStat) -> dict[str, int]:
    counts = {name: n for name, n in stat.errno.items() if n}
    unnamed = stat.errors - sum(counts.values())
    if unnamed > 0:
        counts["_OTHER"] = unnamed
    return counts


def _latency_point(stat: SyscallStat, slots: int, clock: _Clock) -> HistogramDataPoint:
    attributes = {SYSCALL_NAME: stat.name}
    if stat.hist:
        buckets = [*stat.hist, *([0] * (slots - len(stat.hist))), 0]
        bounds = log2_bounds(slots)
    else:
        # Without a kernel histogram only the total is known: one bucket with no bounds.
        buckets, bounds = [stat.count], []
    return HistogramDataPoint(
        attributes=attributes,
        start_time_unix_nano=clock.start,
        time_unix_nano=clock.end,
        count=sum(buckets),
        sum=stat.total_ns,
        bucket_counts=buckets,
        explicit_bounds=bounds,
        min=float(stat.min_ns),
        max=float(stat.max_ns),
    )


# --- net --------------------------------------------------------------------------------------


def _peer(conn: Connection) -> dict[str, Any]:
    peer: dict[str, Any] = {
        "network.peer.address": conn.raddr,
        "network.peer.port": conn.rport,
        "network.transport": "tcp",
    }
    if conn.family in _FAMILY_TYPES:
        peer["network.type"] = _FAMILY_TYPES[conn.family]
    return peer


def _connection_metrics(conns: Iterable[Connection], clock: _Clock, out: _PerProcess) -> None:
    def build(group: list[Connection]) -> list[Metric]:
        io = [
            clock.point(sum(c.tx_bytes for c in group), {"network.io.direction": "transmit"}),
            clock.point(sum(c.rx_bytes for c in group), {"network.io.direction": "receive"}),
        ]
        peers = _group_by_peer(group)
        peer_io = [
            clock.point(sum(getattr(c, field) for c in cs), {**key, "network.io.direction": d})
            for key, cs in peers
            for field, d in (("tx_bytes", "transmit"), ("rx_bytes", "receive"))
        ]
        retransmits = [clock.point(sum(c.retransmits for c in cs), key) for key, cs in peers]
        rtt = [
            clock.point(sum(c.srtt_us for c in timed) / len(timed), key)
            for key, cs in peers
            if (timed := [c for c in cs if c.srtt_us > 0])
        ]
        states: dict[str, int] = defaultdict(int)
        for c in group:
            if c.state:  # "" is the agent's fold of closed connections, not one connection
                states[c.state.lower()] += 1
        connections = [
            clock.point(n, {"network.connection.state": s, "network.transport": "tcp"})
            for s, n in states.items()
        ]
        return [
            _counter("process.network.io", "By", "Bytes sent and received over TCP", io),
            _counter("otlp_ebpf.tcp.io", "By", "TCP bytes per peer", peer_io),
            _counter(
                "otlp_ebpf.tcp.retransmits", "{segment}", "TCP segments retransmitted", retransmits
            ),
            Metric(
                name="otlp_ebpf.tcp.rtt",
                description="Smoothed round-trip time, mean over the peer's connections",
                unit="us",
                data=Gauge(rtt),
            ),
            # Per state, so a connection moves between points: not a monotonic counter.
            _updown(
                "otlp_ebpf.tcp.connections", "{connection}", "TCP connections by state", connections
            ),
        ]

    _each_process(conns, out, build)


def _group_by_peer(conns: Iterable[Connection]) -> list[tuple[dict[str, Any], list[Connection]]]:
    groups: dict[tuple[Any, ...], list[Connection]] = defaultdict(list)
    for conn in conns:
        groups[tuple(sorted(_peer(conn).items()))].append(conn)
    return [(dict(key), cs) for key, cs in groups.items()]


def _net_host_metrics(snapshot: NetSnapshot, clock: _Clock) -> list[Metric]:
    resets = [
        clock.point(n, {"otlp_ebpf.tcp.reset.direction": direction})
        for direction, n in snapshot.resets.items()
    ]
    drops = [clock.point(n, {"otlp_ebpf.drop.reason": r}) for r, n in snapshot.drops.items()]
    metrics = [
        _counter("otlp_ebpf.tcp.resets", "{segment}", "TCP resets sent and received", resets),
        _counter("otlp_ebpf.network.drops", "{packet}", "Packets dropped by the kernel", drops),
    ]
    return [m for m in metrics if _points(m)]


# --- cpu --------------------------------------------------------------------------------------

# Leaf functions per process given their own series: the busiest, as in a recording's
# timeline (the rest are in the process's total).
CPU_TOP_FUNCTIONS = 10
FUNCTION_NAME = "code.function.name"


def _cpu_metrics(snapshot: CpuSnapshot, clock: _Clock, out: _PerProcess) -> None:
    """On-CPU time per process and per leaf function, estimated from the samples (a sample
    stands for 1 / frequency seconds), so alerts can watch CPU as rates of seconds."""
    period_s = 1.0 / snapshot.frequency_hz

    def build(group: list[StackCount]) -> list[Metric]:
        leaves: Counter[str] = Counter()
        for stack in group:
            leaves[stack.frames[-1] if stack.frames else "[unknown]"] += stack.count
        functions = [
            clock.point(n * period_s, {FUNCTION_NAME: name})
            for name, n in leaves.most_common(CPU_TOP_FUNCTIONS)
        ]
        total = sum(s.count for s in group)
        return [
            _counter(
                "otlp_ebpf.cpu.time",
                "s",
                "On-CPU time, estimated from samples (samples / frequency)",
                [clock.point(total * period_s)],
            ),
            _counter(
                "otlp_ebpf.cpu.function.time",
                "s",
                "On-CPU time by leaf function (the busiest per process), from samples",
                functions,
            ),
        ]

    _each_process(snapshot.stacks, out, build)


# --- mem --------------------------------------------------------------------------------------


def _mem_metrics(snapshot: MemSnapshot, clock: _Clock, out: _PerProcess) -> None:
    def build(group: list[Any]) -> list[Metric]:
        return [
            _updown(
                "otlp_ebpf.memory.outstanding",
                "By",
                "Bytes allocated and not yet freed",
                [clock.point(sum(a.bytes for a in group))],
            ),
            _updown(
                "otlp_ebpf.memory.outstanding_allocations",
                "{allocation}",
                "Allocations not yet freed",
                [clock.point(sum(a.count for a in group))],
            ),
        ]

    _each_process(snapshot.outstanding, out, build)


def _mem_host_metrics(snapshot: MemSnapshot, clock: _Clock) -> list[Metric]:
    return [
        _counter(
            "otlp_ebpf.memory.allocations",
            "{allocation}",
            "Allocations made by the traced processes",
            [clock.point(snapshot.allocations_total)],
        ),
        _counter(
            "otlp_ebpf.memory.frees",
            "{allocation}",
            "Frees made by the traced processes",
            [clock.point(snapshot.frees_total)],
        ),
    ]
