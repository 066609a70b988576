"""The OTLP `ExportMetricsServiceRequest` of a snapshot, filled straight from its in-kernel
aggregates.

No SDK instruments, readers or MetricsData are involved: the kernel already aggregated, so each
figure becomes one data point, written into the protobuf request in place (`add()` on its
repeated fields). Going through SDK objects and their encoder cost ~9x the CPU, which the agent
pays every interval for every process (bench/otlp_encode.py, docs/otlp.md).

Latency histograms keep the kernel's log2 slots as explicit bounds (2, 4, 8, ... ns), so
nothing is re-bucketed. Per-process figures sit on a resource per process (the same attributes
as the profiles signal); host-wide counters (resets, drops, allocation totals) sit on a host
resource. Metric names are listed in docs/otlp.md.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AGGREGATION_TEMPORALITY_CUMULATIVE,
    HistogramDataPoint,
    NumberDataPoint,
    ScopeMetrics,
)

from otlp_ebpf import __version__
from otlp_ebpf.formatters.otlp_profiles import (
    SCOPE_NAME,
    AttributeValue,
    process_resource_attributes,
    processes_by_pid,
    set_any_value,
    snapshot_time_unix_nano,
)
from otlp_ebpf.latency import slot_bounds
from otlp_ebpf.model import (
    Allocation,
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
CUMULATIVE = AGGREGATION_TEMPORALITY_CUMULATIVE
_FAMILY_TYPES = {2: "ipv4", 10: "ipv6"}

_Row = TypeVar("_Row", SyscallStat, Connection, StackCount, Allocation)
# Attribute values as the OTLP encoders map them: bool, int, float and str to their own
# AnyValue field, a sequence to an array of those.
_Value = bool | int | float | str | Sequence[Any]
# (key, value) pairs of a data point, in the order they are written.
_Attributes = Sequence[tuple[str, _Value]]
_Points = Any  # a repeated field of NumberDataPoint (protobuf has no public type for it)


class _Request:
    """The request under construction: its resources in the order they are added, and the
    snapshot's window, stamped on every data point."""

    def __init__(self, snapshot: Snapshot, resource_attrs: Mapping[str, str]) -> None:
        self.message = ExportMetricsServiceRequest()
        self.snapshot = snapshot
        self.resource_attrs = resource_attrs
        self.processes = processes_by_pid(snapshot)
        self.start = snapshot_time_unix_nano(snapshot)
        self.end = self.start + int(snapshot.duration_s * 1_000_000_000)

    def scope(self, attributes: Mapping[str, AttributeValue]) -> ScopeMetrics:
        return add_resource_scope(self.message, attributes)

    def process_scope(self, pid: int, comm: str) -> ScopeMetrics:
        attrs = process_resource_attributes(
            self.snapshot, pid, comm, self.resource_attrs, self.processes
        )
        return self.scope(attrs)

    def host_scope(self) -> ScopeMetrics:
        host: dict[str, AttributeValue] = {"service.name": SCOPE_NAME}
        if self.snapshot.host:
            host["host.name"] = self.snapshot.host
        host.update(self.resource_attrs)
        return self.scope(host)

    def point_of(self, points: _Points, attributes: _Attributes) -> Any:
        """A new data point of `points` over the snapshot's window, value still unset."""
        dp = points.add()
        dp.start_time_unix_nano = self.start
        dp.time_unix_nano = self.end
        fill_attributes(dp.attributes, attributes)
        return dp

    def point(self, points: _Points, value: int | float, attributes: _Attributes = ()) -> Any:
        """A new cumulative data point of `points` over the snapshot's window."""
        dp = self.point_of(points, attributes)
        set_number(dp, value)
        return dp


def has_metrics(snapshot: Snapshot) -> bool:
    """True when `snapshot` kind carries metric material (syscalls, net, mem, and cpu with
    on-CPU samples)."""
    if isinstance(snapshot, CpuSnapshot):
        return bool(snapshot.stacks) and snapshot.frequency_hz > 0
    return isinstance(snapshot, SyscallsSnapshot | NetSnapshot | MemSnapshot)


def build_metrics_request(
    snapshot: Snapshot, resource_attrs: Mapping[str, str] | None = None
) -> ExportMetricsServiceRequest:
    """The metrics of `snapshot` as one OTLP export request (no resource when it has none)."""
    request = _Request(snapshot, dict(resource_attrs or {}))
    if isinstance(snapshot, SyscallsSnapshot):
        _syscall_metrics(request, snapshot.syscalls)
    elif isinstance(snapshot, NetSnapshot):
        _connection_metrics(request, snapshot.connections)
        _net_host_metrics(request, snapshot)
    elif isinstance(snapshot, MemSnapshot):
        _mem_metrics(request, snapshot.outstanding)
        _mem_host_metrics(request, snapshot)
    elif isinstance(snapshot, CpuSnapshot) and has_metrics(snapshot):
        _cpu_metrics(request, snapshot)
    return request.message


# --- protobuf pieces --------------------------------------------------------------------------


def add_resource_scope(
    request: ExportMetricsServiceRequest, attributes: Mapping[str, _Value]
) -> ScopeMetrics:
    """A new resource of `request` with `attributes` and its one scope (ours), whose metrics
    follow."""
    rm = request.resource_metrics.add()
    rm.resource.SetInParent()  # present even with no attribute, as the SDK sends it
    fill_attributes(rm.resource.attributes, attributes.items())
    sm = rm.scope_metrics.add()
    sm.scope.name = SCOPE_NAME
    sm.scope.version = __version__
    return sm


def fill_attributes(key_values: Any, attributes: Iterable[tuple[str, _Value]]) -> None:
    """Append `attributes` to a repeated KeyValue field. An empty key is left out, as the
    OpenTelemetry SDK's attribute cleaning does."""
    for key, value in attributes:
        if not key:
            continue
        kv = key_values.add()
        kv.key = key
        set_any_value(kv.value, value)


def set_number(dp: NumberDataPoint, value: int | float) -> None:
    if isinstance(value, int):
        dp.as_int = value
    else:
        dp.as_double = value


def _metric(scope: ScopeMetrics, name: str, unit: str, description: str) -> Any:
    metric = scope.metrics.add()
    metric.name = name
    metric.description = description
    metric.unit = unit
    return metric


def _counter(scope: ScopeMetrics, name: str, unit: str, description: str) -> _Points:
    """A monotonic cumulative sum; its data points, to add to."""
    data = _metric(scope, name, unit, description).sum
    data.aggregation_temporality = CUMULATIVE
    data.is_monotonic = True
    return data.data_points


def _updown(scope: ScopeMetrics, name: str, unit: str, description: str) -> _Points:
    """A cumulative sum that may go down; its data points, to add to."""
    data = _metric(scope, name, unit, description).sum
    data.aggregation_temporality = CUMULATIVE
    data.is_monotonic = False
    return data.data_points


def _by_pid(rows: Iterable[_Row]) -> dict[int, list[_Row]]:
    """Rows per process, processes in the order they first appear."""
    grouped: dict[int, list[_Row]] = defaultdict(list)
    for row in rows:
        grouped[row.pid].append(row)
    return grouped


def _comms(rows: Iterable[SyscallStat | Connection | StackCount | Allocation]) -> dict[int, str]:
    """The command name of each process (its last row's)."""
    return {row.pid: row.comm for row in rows}


# --- syscalls ---------------------------------------------------------------------------------


def log2_bounds(slots: int) -> list[float]:
    """The kernel's log2 slots as explicit bounds (see latency.slot_bounds)."""
    return [float(b) for b in slot_bounds(slots)]


def _syscall_metrics(request: _Request, stats: Iterable[SyscallStat]) -> None:
    stats = list(stats)
    slots = max((len(s.hist) for s in stats), default=0)
    templates = _SyscallTemplates(request, slots)
    comms = _comms(stats)
    for pid, group in _by_pid(stats).items():
        scope = request.process_scope(pid, comms[pid])
        calls = _counter(scope, "otlp_ebpf.syscall.calls", "{call}", "System calls completed")
        for s in group:
            templates.number(calls, s.name, s.count)
        errors = [
            (s.name, errno, n)
            for s in group
            if s.errno or s.errors > 0
            for errno, n in _errno_counts(s).items()
        ]
        if errors:
            points = _counter(
                scope, "otlp_ebpf.syscall.errors", "{call}", "System calls that failed"
            )
            for name, errno, n in errors:
                kv = templates.number(points, name, n).attributes.add()
                kv.key = "error.type"
                kv.value.string_value = errno
        timed = [s for s in group if s.count]
        if timed:
            _latency_histogram(request, scope, timed, templates)


class _SyscallTemplates:
    """Per syscall name, data points that already hold the window and the name attribute (and
    for histograms the log2 bounds). There is one row per process and syscall: a copy of a
    template costs half of filling the same fields in one by one."""

    def __init__(self, request: _Request, slots: int) -> None:
        self.start, self.end = request.start, request.end
        self.slots = slots
        self.bounds = log2_bounds(slots)
        # Slots a row lacks are empty, and so is the overflow bucket past the last bound.
        self.padding = [[0] * (slots - n + 1) for n in range(slots + 1)]
        self._numbers: dict[str, NumberDataPoint] = {}
        self._histograms: dict[str, HistogramDataPoint] = {}

    def number(self, points: _Points, name: str, value: int) -> NumberDataPoint:
        """A new data point of `points` for syscall `name`."""
        template = self._numbers.get(name)
        if template is None:
            template = NumberDataPoint(start_time_unix_nano=self.start, time_unix_nano=self.end)
            fill_attributes(template.attributes, ((SYSCALL_NAME, name),))
            self._numbers[name] = template
        dp = points.add()
        dp.CopyFrom(template)
        set_number(dp, value)
        return dp

    def histogram(self, points: _Points, name: str) -> HistogramDataPoint:
        """A new histogram point of `points` for syscall `name`, with the kernel's bounds."""
        template = self._histograms.get(name)
        if template is None:
            template = HistogramDataPoint(
                start_time_unix_nano=self.start,
                time_unix_nano=self.end,
                explicit_bounds=self.bounds,
            )
            fill_attributes(template.attributes, ((SYSCALL_NAME, name),))
            self._histograms[name] = template
        hp = points.add()
        hp.CopyFrom(template)
        return hp


def _errno_counts(stat: SyscallStat) -> dict[str, int]:
    counts = {name: n for name, n in stat.errno.items() if n}
    unnamed = stat.errors - sum(counts.values())
    if unnamed > 0:
        counts["_OTHER"] = unnamed
    return counts


def _latency_histogram(
    request: _Request,
    scope: ScopeMetrics,
    stats: list[SyscallStat],
    templates: _SyscallTemplates,
) -> None:
    histogram = _metric(
        scope,
        "otlp_ebpf.syscall.duration",
        "ns",
        "Time from syscall entry to exit (kernel log2 buckets)",
    ).histogram
    histogram.aggregation_temporality = CUMULATIVE
    points = histogram.data_points
    padding = templates.padding
    for stat in stats:
        hist = stat.hist
        if hist:
            hp = templates.histogram(points, stat.name)
            counts = hp.bucket_counts
            counts.extend(hist)
            counts.extend(padding[len(hist)])
            hp.count = sum(hist)
        else:
            # Without a kernel histogram only the total is known: one bucket with no bounds.
            hp = request.point_of(points, ((SYSCALL_NAME, stat.name),))
            hp.bucket_counts.append(stat.count)
            hp.count = stat.count
        hp.sum = stat.total_ns
        hp.min = stat.min_ns
        hp.max = stat.max_ns


# --- net --------------------------------------------------------------------------------------


def _peer(conn: Connection) -> tuple[tuple[str, _Value], ...]:
    """The peer's attributes, sorted by key (the order they are sent in)."""
    family = _FAMILY_TYPES.get(conn.family)
    peer: tuple[tuple[str, _Value], ...] = (
        ("network.peer.address", conn.raddr),
        ("network.peer.port", conn.rport),
        ("network.transport", "tcp"),
    )
    return (*peer, ("network.type", family)) if family else peer


def _connection_metrics(request: _Request, conns: Iterable[Connection]) -> None:
    conns = list(conns)
    comms = _comms(conns)
    for pid, group in _by_pid(conns).items():
        _process_connections(request, request.process_scope(pid, comms[pid]), group)


def _process_connections(request: _Request, scope: ScopeMetrics, group: list[Connection]) -> None:
    io = _counter(scope, "process.network.io", "By", "Bytes sent and received over TCP")
    tx = sum(c.tx_bytes for c in group)
    rx = sum(c.rx_bytes for c in group)
    request.point(io, tx, (("network.io.direction", "transmit"),))
    request.point(io, rx, (("network.io.direction", "receive"),))
    peers = _group_by_peer(group)
    peer_io = _counter(scope, "otlp_ebpf.tcp.io", "By", "TCP bytes per peer")
    for key, cs in peers:
        for field, direction in (("tx_bytes", "transmit"), ("rx_bytes", "receive")):
            total = sum(getattr(c, field) for c in cs)
            request.point(peer_io, total, (*key, ("network.io.direction", direction)))
    retransmits = _counter(
        scope, "otlp_ebpf.tcp.retransmits", "{segment}", "TCP segments retransmitted"
    )
    for key, cs in peers:
        request.point(retransmits, sum(c.retransmits for c in cs), key)
    _rtt_gauge(request, scope, peers)
    _connection_states(request, scope, group)


def _rtt_gauge(
    request: _Request,
    scope: ScopeMetrics,
    peers: list[tuple[tuple[tuple[str, _Value], ...], list[Connection]]],
) -> None:
    means = [
        (key, sum(c.srtt_us for c in timed) / len(timed))
        for key, cs in peers
        if (timed := [c for c in cs if c.srtt_us > 0])
    ]
    if not means:
        return
    points = _metric(
        scope,
        "otlp_ebpf.tcp.rtt",
        "us",
        "Smoothed round-trip time, mean over the peer's connections",
    ).gauge.data_points
    for key, mean in means:
        dp = points.add()  # a gauge is a value at an instant: no start time
        dp.time_unix_nano = request.end
        set_number(dp, mean)
        fill_attributes(dp.attributes, key)


def _connection_states(request: _Request, scope: ScopeMetrics, group: list[Connection]) -> None:
    states: dict[str, int] = defaultdict(int)
    for c in group:
        if c.state:  # "" is the agent's fold of closed connections, not one connection
            states[c.state.lower()] += 1
    if not states:
        return
    # Per state, so a connection moves between points: not a monotonic counter.
    points = _updown(scope, "otlp_ebpf.tcp.connections", "{connection}", "TCP connections by state")
    for state, n in states.items():
        request.point(
            points, n, (("network.connection.state", state), ("network.transport", "tcp"))
        )


def _group_by_peer(
    conns: Iterable[Connection],
) -> list[tuple[tuple[tuple[str, _Value], ...], list[Connection]]]:
    groups: dict[tuple[tuple[str, _Value], ...], list[Connection]] = defaultdict(list)
    for conn in conns:
        groups[_peer(conn)].append(conn)
    return list(groups.items())


def _net_host_metrics(request: _Request, snapshot: NetSnapshot) -> None:
    if not (snapshot.resets or snapshot.drops):
        return
    scope = request.host_scope()
    if snapshot.resets:
        resets = _counter(
            scope, "otlp_ebpf.tcp.resets", "{segment}", "TCP resets sent and received"
        )
        for direction, n in snapshot.resets.items():
            request.point(resets, n, (("otlp_ebpf.tcp.reset.direction", direction),))
    if snapshot.drops:
        drops = _counter(
            scope, "otlp_ebpf.network.drops", "{packet}", "Packets dropped by the kernel"
        )
        for reason, n in snapshot.drops.items():
            request.point(drops, n, (("otlp_ebpf.drop.reason", reason),))


# --- cpu --------------------------------------------------------------------------------------

# Leaf functions per process given their own series: the busiest, as in a recording's
# timeline (the rest are in the process's total).
CPU_TOP_FUNCTIONS = 10
FUNCTION_NAME = "code.function.name"


def _cpu_metrics(request: _Request, snapshot: CpuSnapshot) -> None:
    """On-CPU time per process and per leaf function, estimated from the samples (a sample
    stands for 1 / frequency seconds), so alerts can watch CPU as rates of seconds."""
    period_s = 1.0 / snapshot.frequency_hz
    comms = _comms(snapshot.stacks)
    for pid, group in _by_pid(snapshot.stacks).items():
        scope = request.process_scope(pid, comms[pid])
        leaves: Counter[str] = Counter()
        for stack in group:
            leaves[stack.frames[-1] if stack.frames else "[unknown]"] += stack.count
        total = _counter(
            scope,
            "otlp_ebpf.cpu.time",
            "s",
            "On-CPU time, estimated from samples (samples / frequency)",
        )
        request.point(total, sum(s.count for s in group) * period_s)
        functions = _counter(
            scope,
            "otlp_ebpf.cpu.function.time",
            "s",
            "On-CPU time by leaf function (the busiest per process), from samples",
        )
        for name, n in leaves.most_common(CPU_TOP_FUNCTIONS):
            request.point(functions, n * period_s, ((FUNCTION_NAME, name),))


# --- mem --------------------------------------------------------------------------------------


def _mem_metrics(request: _Request, outstanding: Iterable[Allocation]) -> None:
    outstanding = list(outstanding)
    comms = _comms(outstanding)
    for pid, group in _by_pid(outstanding).items():
        scope = request.process_scope(pid, comms[pid])
        nbytes = _updown(
            scope, "otlp_ebpf.memory.outstanding", "By", "Bytes allocated and not yet freed"
        )
        request.point(nbytes, sum(a.bytes for a in group))
        count = _updown(
            scope,
            "otlp_ebpf.memory.outstanding_allocations",
            "{allocation}",
            "Allocations not yet freed",
        )
        request.point(count, sum(a.count for a in group))


def _mem_host_metrics(request: _Request, snapshot: MemSnapshot) -> None:
    scope = request.host_scope()
    allocations = _counter(
        scope,
        "otlp_ebpf.memory.allocations",
        "{allocation}",
        "Allocations made by the traced processes",
    )
    request.point(allocations, snapshot.allocations_total)
    frees = _counter(
        scope, "otlp_ebpf.memory.frees", "{allocation}", "Frees made by the traced processes"
    )
    request.point(frees, snapshot.frees_total)
