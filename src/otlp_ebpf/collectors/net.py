"""TCP connections, exact payload bytes, retransmits, resets, drops and RTT (bpf/net.bpf.c).

Each connection is tracked in a kernel map from its handshake (or first activity, when it was
open before the run) and sent whole through a ring buffer when it reaches CLOSE; those still
open at the end are read from the map. Resets and packet drops are also counted host-wide in
the kernel; drop reasons are named from the running kernel's `enum skb_drop_reason` (BTF).
"""

from __future__ import annotations

import ctypes
import dataclasses
import ipaddress
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from otlp_ebpf import console, hosttext
from otlp_ebpf.collectors import base
from otlp_ebpf.errors import EnvironmentLacks, UsageError
from otlp_ebpf.model import Connection, IntervalPoint, NetSnapshot, connection_label
from otlp_ebpf.runtime import btf, features, probes
from otlp_ebpf.runtime.events import RingBuffer
from otlp_ebpf.runtime.loader import BpfObject
from otlp_ebpf.targets import TargetSpec

AF_INET = 2
AF_INET6 = 10
TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}
TCP_CLOSE = 7

# enum conn_flag / conn_event_kind / net_lost / net_counter in bpf/net.h
CONN_PASSIVE = 1
CONN_OWNER_KNOWN = 2
CONN_SEEN_START = 4
LOST_REASONS = ("ring buffer full", "connection table full", "drop reason table full")
COUNTER_RESETS_SENT = 0
COUNTER_RESETS_RECEIVED = 1
COUNTER_RETRANSMIT_SKBS = 2

# Programs and the tracepoint each needs: the first three are the tool; the rest degrade.
PROGRAMS: dict[str, tuple[str, str]] = {
    "handle_set_state": ("sock", "inet_sock_set_state"),
    "handle_destroy": ("tcp", "tcp_destroy_sock"),
    "handle_send_length": ("sock", "sock_send_length"),
    "handle_recv_length": ("sock", "sock_recv_length"),
    "handle_retransmit": ("tcp", "tcp_retransmit_skb"),
    "handle_send_reset": ("tcp", "tcp_send_reset"),
    "handle_receive_reset": ("tcp", "tcp_receive_reset"),
    "handle_kfree_skb": ("skb", "kfree_skb"),
}
REQUIRED = ("handle_set_state", "handle_destroy", "handle_send_length", "handle_recv_length")
SERIES_TOP = 20


class ConnRecord(ctypes.Structure):
    """Mirror of struct conn (bpf/net.h): a map value and a ring buffer record."""

    _fields_ = [
        ("sk", ctypes.c_uint64),
        ("start_ns", ctypes.c_uint64),
        ("established_ns", ctypes.c_uint64),
        ("end_ns", ctypes.c_uint64),
        ("tx_bytes", ctypes.c_uint64),
        ("rx_bytes", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("retrans", ctypes.c_uint32),
        ("retrans_base", ctypes.c_uint32),
        ("retrans_skbs", ctypes.c_uint32),
        ("srtt_us", ctypes.c_uint32),
        ("resets_sent", ctypes.c_uint16),
        ("resets_received", ctypes.c_uint16),
        ("family", ctypes.c_uint16),
        ("lport", ctypes.c_uint16),
        ("rport", ctypes.c_uint16),
        ("state", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("kind", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 7),
        ("laddr", ctypes.c_uint8 * 16),
        ("raddr", ctypes.c_uint8 * 16),
        ("comm", ctypes.c_char * 16),
    ]


@dataclass(frozen=True)
class NetConfig:
    """What to record. Empty filters match everything; `family` is 0, AF_INET or AF_INET6."""

    targets: TargetSpec = field(default_factory=TargetSpec)
    duration_s: float | None = None
    interval_s: float | None = None
    port: int = 0
    laddr: str = ""
    raddr: str = ""
    family: int = 0

    @property
    def filtered(self) -> bool:
        """True when only some connections are wanted (host-wide totals would mislead)."""
        return bool(
            self.targets.pids
            or self.targets.command
            or self.targets.tid
            or self.port
            or self.laddr
            or self.raddr
            or self.family
        )


def parse_address(text: str, option: str) -> str:
    """A user-given address in the form connections are reported in; UsageError otherwise."""
    try:
        return str(_unmapped(ipaddress.ip_address(text.strip().strip("[]"))))
    except ValueError as exc:
        raise UsageError(f"--{option}: {text!r} is not an IPv4 or IPv6 address") from exc


def check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0-65535 (0 = any), got {port}")


def _unmapped(
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def format_address(family: int, raw: bytes) -> str:
    """Address bytes as the kernel holds them (network order) to text."""
    if family == AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    return str(ipaddress.IPv6Address(raw[:16]))


def address_version(addr: str) -> int:
    """4 or 6, treating an IPv4-mapped IPv6 address as the IPv4 address it carries."""
    return _unmapped(ipaddress.ip_address(addr)).version


def connection_wanted(conn: Connection, config: NetConfig) -> bool:
    """The user-space filters (the kernel already applied pid and port)."""
    if config.port and config.port not in (conn.lport, conn.rport):
        return False
    if config.family:
        want = 4 if config.family == AF_INET else 6
        if address_version(conn.laddr or conn.raddr) != want:
            return False
    if config.laddr and parse_address(conn.laddr, "laddr") != config.laddr:
        return False
    return not config.raddr or parse_address(conn.raddr, "raddr") == config.raddr


def drop_reason_name(value: int, names: dict[int, str]) -> str:
    """`SKB_DROP_REASON_NETFILTER_DROP` -> `NETFILTER_DROP`, as the kernel's trace output shows."""
    name = names.get(value)
    if name is None:
        return f"reason_{value}"
    return name.removeprefix("SKB_DROP_REASON_")


class MonotonicClock:
    """Kernel CLOCK_MONOTONIC timestamps to Unix time (the offset is taken once)."""

    def __init__(self) -> None:
        self.offset_ns = time.time_ns() - time.monotonic_ns()

    def epoch_ns(self, mono_ns: int) -> int:
        return mono_ns + self.offset_ns if mono_ns else 0


def record_to_connection(rec: ConnRecord, now_ns: int, clock: MonotonicClock) -> Connection:
    """One kernel record (closed) or map entry (still open at `now_ns`) to a Connection."""
    closed = rec.state == TCP_CLOSE
    end = rec.end_ns if closed and rec.end_ns else now_ns
    active = rec.flags & CONN_SEEN_START and not rec.flags & CONN_PASSIVE
    connect_us = (rec.established_ns - rec.start_ns) / 1e3 if active and rec.established_ns else 0.0
    owner_known = bool(rec.flags & CONN_OWNER_KNOWN)
    return Connection(
        pid=rec.pid if owner_known else 0,
        comm=hosttext.decode(rec.comm) if owner_known else "",
        family=rec.family,
        laddr=format_address(rec.family, bytes(rec.laddr)),
        lport=rec.lport,
        raddr=format_address(rec.family, bytes(rec.raddr)),
        rport=rec.rport,
        tx_bytes=rec.tx_bytes,
        rx_bytes=rec.rx_bytes,
        duration_ms=round(max(0, end - rec.start_ns) / 1e6, 3),
        retransmits=rec.retrans,
        connect_latency_us=round(connect_us, 1),
        srtt_us=float(rec.srtt_us),
        resets_sent=rec.resets_sent,
        resets_received=rec.resets_received,
        state=TCP_STATES.get(rec.state, str(rec.state)),
        open=not closed,
        started_at_ns=clock.epoch_ns(rec.start_ns),
        started_before_run=not rec.flags & CONN_SEEN_START,
    )


def _key(conn: Connection) -> tuple[int, int, int, str, str]:
    return (conn.started_at_ns, conn.lport, conn.rport, conn.laddr, conn.raddr)


class IntervalTracker:
    """tcptop-style deltas: bytes each connection moved since the previous tick."""

    def __init__(self) -> None:
        self.series: list[IntervalPoint] = []
        self._last: dict[tuple[int, int, int, str, str], tuple[int, int]] = {}

    def tick(
        self, elapsed: float, closed: Iterable[Connection], still_open: Iterable[Connection]
    ) -> list[Connection]:
        """Per-connection bytes this interval, busiest first; remembered in `series`."""
        rows: list[Connection] = []
        seen: dict[tuple[int, int, int, str, str], tuple[int, int]] = {}
        # Everything still in the kernel's table is remembered, whatever its TCP state (a
        # socket closed by a reset stays there until the application closes it): only a
        # destroyed socket, reported through the ring buffer, is forgotten.
        for conn in still_open:
            seen[_key(conn)] = (conn.tx_bytes, conn.rx_bytes)
        for conn in [*closed, *still_open]:
            key = _key(conn)
            tx0, rx0 = self._last.get(key, (0, 0))
            delta = dataclasses.replace(
                conn, tx_bytes=conn.tx_bytes - tx0, rx_bytes=conn.rx_bytes - rx0
            )
            if delta.tx_bytes or delta.rx_bytes:
                rows.append(delta)
        self._last = seen
        rows.sort(key=lambda c: -(c.tx_bytes + c.rx_bytes))
        values = {connection_label(c): c.tx_bytes + c.rx_bytes for c in rows[:SERIES_TOP]}
        self.series.append(IntervalPoint(round(elapsed, 3), values))
        return rows


class NetCollector:
    """Open, configure, load and attach net.bpf.o; turn its records and maps into a snapshot."""

    def __init__(self, config: NetConfig, targets: base.Targets | None = None) -> None:
        """`targets`: shared with other collectors of the same run (`record`)."""
        check_port(config.port)
        self.config = config
        self.targets = targets if targets is not None else base.Targets(config.targets)
        self.obj: BpfObject | None = None
        self.ring: RingBuffer | None = None
        self.clock = MonotonicClock()
        self.closed: list[Connection] = []
        self.missing: list[str] = []
        self.intervals = IntervalTracker()
        self._reported_upto = 0

    # -- set-up ----------------------------------------------------------------------------------

    def start(self) -> None:
        obj = BpfObject.open("net")
        self.obj = obj
        rodata: dict[str, int | bytes] = dict(self.targets.rodata())
        rodata["targ_port"] = self.config.port
        obj.set_rodata(**rodata)
        self._disable_missing(obj)
        for prog in self.targets.unused_programs():
            obj.disable(prog)
        obj.load()
        self.targets.attach(obj)
        for prog in self.programs():
            probes.attach_auto(obj, prog)
        self.ring = RingBuffer(obj.map("events"), self._on_record)
        console.debug(f"net: attached {', '.join(self.programs())}")

    def _disable_missing(self, obj: BpfObject) -> None:
        for prog, (category, name) in PROGRAMS.items():
            if features.tracepoint_exists(category, name):
                continue
            if prog in REQUIRED:
                raise EnvironmentLacks(
                    f"this kernel has no {category}/{name} tracepoint, which net needs",
                    hint="net needs Linux 6.3 or later (sock_send_length/sock_recv_length)",
                )
            obj.disable(prog)
            self.missing.append(f"{category}/{name}")
        if self.missing:
            console.warn(f"net: no {', '.join(self.missing)} tracepoint here; not counted")

    def programs(self) -> list[str]:
        return [p for p in PROGRAMS if self.obj is None or self.obj.enabled(p)]

    # -- records ---------------------------------------------------------------------------------

    def _on_record(self, raw: bytes) -> None:
        rec = ConnRecord.from_buffer_copy(raw.ljust(ctypes.sizeof(ConnRecord), b"\0"))
        conn = record_to_connection(rec, rec.end_ns, self.clock)
        if connection_wanted(conn, self.config):
            self.closed.append(conn)

    def poll(self, timeout_s: float) -> None:
        assert self.ring is not None
        self.ring.poll(max(0, int(timeout_s * 1000)))

    def drain(self) -> None:
        if self.ring is not None:
            self.ring.drain()

    # -- maps ------------------------------------------------------------------------------------

    def open_connections(self) -> list[Connection]:
        """Connections not closed yet, with their bytes so far."""
        assert self.obj is not None
        now = time.monotonic_ns()
        found = []
        for _key_raw, raw in self.obj.map("conns").items():
            rec = ConnRecord.from_buffer_copy(raw[: ctypes.sizeof(ConnRecord)])
            if self.targets.filtered and not rec.flags & CONN_OWNER_KNOWN:
                continue  # an accepted connection nobody has used yet: owner unknown
            conn = record_to_connection(rec, now, self.clock)
            if connection_wanted(conn, self.config):
                found.append(conn)
        return found

    def lost(self) -> dict[str, int]:
        assert self.obj is not None
        lost = self.obj.map("lost")
        found = {name: n for i, name in enumerate(LOST_REASONS) if (n := lost.lookup_u64(i))}
        return {**found, **self.targets.losses()}

    def counter(self, slot: int) -> int:
        assert self.obj is not None
        return self.obj.map("counters").lookup_u64(slot)

    def drops(self) -> dict[str, int]:
        """Packet drops by reason name, busiest first."""
        assert self.obj is not None
        reasons = self.obj.map("drop_reasons")
        names = btf.kernel_enum("skb_drop_reason")
        counts: dict[str, int] = {}
        for raw_key, raw_value in reasons.items():
            value = int.from_bytes(raw_key, "little")
            n = sum(int.from_bytes(v[:8], "little") for v in reasons.per_cpu(raw_value))
            name = drop_reason_name(value, names)
            counts[name] = counts.get(name, 0) + n
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def tick(self, elapsed: float) -> list[Connection]:
        """One --interval step: bytes per connection since the previous one."""
        self.drain()
        new_closed = self.closed[self._reported_upto :]
        self._reported_upto = len(self.closed)
        return self.intervals.tick(elapsed, new_closed, self.open_connections())


def resets_summary(
    config: NetConfig, connections: Iterable[Connection], host_sent: int, host_received: int
) -> dict[str, int]:
    """Resets of the connections shown when filtered, else host-wide (including resets for
    segments no socket wanted, such as connections to a closed port)."""
    if config.filtered:
        conns = list(connections)
        return {
            "sent": sum(c.resets_sent for c in conns),
            "received": sum(c.resets_received for c in conns),
        }
    return {"sent": host_sent, "received": host_received}


def collect(
    config: NetConfig,
    on_interval: Callable[[list[Connection], float], None] | None = None,
    on_partial: Callable[[NetSnapshot], None] | None = None,
) -> NetSnapshot:
    """Run the net collector to its end and return the snapshot. With --interval,
    `on_interval` gets each interval's busiest connections and `on_partial` the cumulative
    snapshot so far (for periodic export)."""
    base.require_privileges("net")
    collector = NetCollector(config)
    try:
        with base.session(collector.targets, collector.start) as run:

            def interval(elapsed: float) -> None:
                rows = collector.tick(elapsed)
                if on_interval is not None:
                    on_interval(rows, elapsed)
                if on_partial is not None:
                    on_partial(build_snapshot(collector, config, run.clock, "interval"))

            ended = base.run_loop(
                collector.targets,
                collector.poll,
                duration_s=config.duration_s,
                interval_s=config.interval_s,
                on_interval=interval if config.interval_s else None,
                clock=run.clock,
                stop=run.stop,
            )
            return build_snapshot(collector, config, run.clock, ended)
    finally:
        if collector.ring is not None:
            collector.ring.close()


def build_snapshot(
    collector: NetCollector, config: NetConfig, clock: base.RunClock, ended: str
) -> NetSnapshot:
    """Everything recorded so far: closed connections, open ones with their bytes so far."""
    duration = clock.elapsed()
    assert collector.obj is not None
    bpf_ns, runs = base.program_cost(collector.obj, collector.programs())
    collector.drain()
    still_open = collector.open_connections()
    host_resets = (
        collector.counter(COUNTER_RESETS_SENT),
        collector.counter(COUNTER_RESETS_RECEIVED),
    )
    retransmit_skbs = collector.counter(COUNTER_RETRANSMIT_SKBS)
    connections = sorted(
        [*collector.closed, *still_open], key=lambda c: (c.started_at_ns, c.lport, c.rport)
    )
    pids = sorted({c.pid for c in connections if c.pid})
    processes = tuple(p for pid in pids if (p := base.read_process_info(pid)))
    notes = [
        f"ended: {ended}",
        "drops: host-wide, every protocol",
        f"retransmitted skbs (host-wide): {retransmit_skbs}",
    ]
    notes += [f"missing tracepoint: {m}" for m in collector.missing]
    return NetSnapshot(
        started_at=clock.started_at,
        duration_s=round(duration, 3),
        host=base.hostname(),
        targets=_describe(config),
        lost_events=collector.lost(),
        processes=processes,
        self_cost=base.self_cost(clock, bpf_ns, runs),
        notes=(*notes, *collector.targets.command_notes()),
        command_exit=collector.targets.command_exit(),
        connections=tuple(connections),
        retransmits=sum(c.retransmits for c in connections),
        resets=resets_summary(config, connections, *host_resets),
        drops=collector.drops(),
        series=tuple(collector.intervals.series),
        interval_s=config.interval_s or 0.0,
    )


def _describe(config: NetConfig) -> tuple[str, ...]:
    parts = list(config.targets.describe())
    if config.port:
        parts.append(f"port {config.port}")
    if config.laddr:
        parts.append(f"laddr {config.laddr}")
    if config.raddr:
        parts.append(f"raddr {config.raddr}")
    if config.family:
        parts.append("ipv4" if config.family == AF_INET else "ipv6")
    return tuple(parts)
