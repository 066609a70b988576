"""Pure parts of `net`: record decoding, filters, interval deltas, and the terminal report."""

from __future__ import annotations

import io
import socket

import pytest
from rich.console import Console

from otlp_ebpf.collectors.net import (
    AF_INET,
    AF_INET6,
    CONN_OWNER_KNOWN,
    CONN_PASSIVE,
    CONN_SEEN_START,
    ConnRecord,
    IntervalTracker,
    MonotonicClock,
    NetConfig,
    address_version,
    check_port,
    connection_label,
    connection_wanted,
    drop_reason_name,
    parse_address,
    record_to_connection,
    resets_summary,
)
from otlp_ebpf.errors import UsageError
from otlp_ebpf.formatters import net_table
from otlp_ebpf.model import Connection, NetSnapshot, snapshot_from_dict
from otlp_ebpf.targets import TargetSpec


def _record(**fields: object) -> ConnRecord:
    rec = ConnRecord()
    rec.family = AF_INET
    rec.laddr[:4] = list(socket.inet_aton("10.0.0.1"))
    rec.raddr[:4] = list(socket.inet_aton("10.0.0.2"))
    rec.lport, rec.rport = 40000, 80
    rec.comm = b"curl"
    rec.pid = 42
    rec.flags = CONN_OWNER_KNOWN | CONN_SEEN_START
    for name, value in fields.items():
        setattr(rec, name, value)
    return rec


def _conn(**fields: object) -> Connection:
    base: dict[str, object] = dict(
        pid=7,
        comm="srv",
        family=AF_INET,
        laddr="10.0.0.1",
        lport=80,
        raddr="10.0.0.2",
        rport=5555,
        tx_bytes=100,
        rx_bytes=50,
        duration_ms=1.5,
        retransmits=0,
    )
    base.update(fields)
    return Connection(**base)  # type: ignore[arg-type]


class _Clock(MonotonicClock):
    def __init__(self) -> None:
        self.offset_ns = 1_000


def test_closed_active_record_becomes_connection_with_latency_and_duration() -> None:
    rec = _record(
        start_ns=1_000_000,
        established_ns=1_250_000,
        end_ns=4_000_000,
        state=7,
        tx_bytes=123,
        rx_bytes=456,
        retrans=3,
        srtt_us=88,
        resets_sent=1,
    )
    conn = record_to_connection(rec, now_ns=9_999_999_999, clock=_Clock())
    assert (conn.pid, conn.comm, conn.laddr, conn.raddr) == (42, "curl", "10.0.0.1", "10.0.0.2")
    assert (conn.tx_bytes, conn.rx_bytes, conn.retransmits, conn.srtt_us) == (123, 456, 3, 88.0)
    assert conn.duration_ms == 3.0
    assert conn.connect_latency_us == 250.0
    assert conn.state == "CLOSE" and not conn.open
    assert conn.started_at_ns == 1_001_000
    assert conn.resets_sent == 1
    assert not conn.started_before_run


def test_a_connection_older_than_the_run_says_so() -> None:
    rec = _record(start_ns=1_000_000, state=1, flags=CONN_OWNER_KNOWN)  # handshake not seen
    conn = record_to_connection(rec, now_ns=3_000_000, clock=_Clock())
    assert conn.started_before_run and conn.connect_latency_us == 0.0
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(net_table.connections_table([conn]))
    assert ">2.00" in console.export_text()


def test_open_passive_record_without_owner_and_ipv6() -> None:
    rec = _record(
        start_ns=1_000, established_ns=1_000, state=1, flags=CONN_PASSIVE | CONN_SEEN_START
    )
    rec.family = AF_INET6
    rec.laddr[:] = list(socket.inet_pton(socket.AF_INET6, "fd00::1"))
    rec.raddr[:] = list(socket.inet_pton(socket.AF_INET6, "::ffff:10.1.2.3"))
    conn = record_to_connection(rec, now_ns=2_001_000, clock=_Clock())
    assert conn.open and conn.state == "ESTABLISHED"
    assert conn.duration_ms == 2.0
    assert (conn.pid, conn.comm) == (0, "")
    assert conn.connect_latency_us == 0.0  # accepted: no connect() to time
    assert (conn.laddr, conn.raddr) == ("fd00::1", "::ffff:a01:203")
    assert address_version(conn.raddr) == 4


def test_address_parsing_normalizes_and_refuses_garbage() -> None:
    assert parse_address(" [fd00::0001] ", "laddr") == "fd00::1"
    assert parse_address("::ffff:10.0.0.1", "raddr") == "10.0.0.1"
    with pytest.raises(UsageError, match="--raddr: 'nope'"):
        parse_address("nope", "raddr")
    with pytest.raises(UsageError, match="--port"):
        check_port(70000)


@pytest.mark.parametrize(
    ("config", "wanted"),
    [
        (NetConfig(), True),
        (NetConfig(port=80), True),
        (NetConfig(port=5555), True),
        (NetConfig(port=443), False),
        (NetConfig(family=AF_INET), True),
        (NetConfig(family=AF_INET6), False),
        (NetConfig(laddr="10.0.0.1"), True),
        (NetConfig(laddr="10.0.0.2"), False),
        (NetConfig(raddr="10.0.0.2"), True),
        (NetConfig(raddr="10.0.0.9"), False),
    ],
)
def test_user_space_filters(config: NetConfig, wanted: bool) -> None:
    assert connection_wanted(_conn(), config) is wanted


def test_mapped_ipv4_counts_as_ipv4() -> None:
    conn = _conn(family=AF_INET6, laddr="::ffff:10.0.0.1", raddr="::ffff:10.0.0.2")
    assert connection_wanted(conn, NetConfig(family=AF_INET, raddr="10.0.0.2"))
    assert not connection_wanted(conn, NetConfig(family=AF_INET6))


def test_drop_reason_names_come_from_the_enum_given() -> None:
    names = {3: "SKB_DROP_REASON_NO_SOCKET", 0x10002: "SKB_DROP_REASON_SUBSYS_X"}
    assert drop_reason_name(3, names) == "NO_SOCKET"
    assert drop_reason_name(0x10002, names) == "SUBSYS_X"
    assert drop_reason_name(99, names) == "reason_99"


def test_resets_are_per_connection_when_filtered_else_host_wide() -> None:
    conns = [_conn(resets_sent=1), _conn(resets_received=2)]
    assert resets_summary(NetConfig(port=80), conns, 10, 20) == {"sent": 1, "received": 2}
    assert resets_summary(NetConfig(), conns, 10, 20) == {"sent": 10, "received": 20}
    assert NetConfig(targets=TargetSpec(pids=(1,))).filtered
    assert not NetConfig(duration_s=3).filtered


def test_interval_tracker_reports_bytes_moved_per_tick() -> None:
    tracker = IntervalTracker()
    a1 = _conn(started_at_ns=1, tx_bytes=100, rx_bytes=0, open=True, state="ESTABLISHED")
    b1 = _conn(started_at_ns=2, lport=81, tx_bytes=5, rx_bytes=5, open=True, state="ESTABLISHED")
    first = tracker.tick(1.0, [], [a1, b1])
    assert [(c.lport, c.tx_bytes + c.rx_bytes) for c in first] == [(80, 100), (81, 10)]

    a2 = _conn(started_at_ns=1, tx_bytes=100, rx_bytes=0, open=True, state="ESTABLISHED")
    b_closed = _conn(started_at_ns=2, lport=81, tx_bytes=5, rx_bytes=1005, state="CLOSE")
    second = tracker.tick(2.0, [b_closed], [a2])
    assert [(c.lport, c.rx_bytes) for c in second] == [(81, 1000)]  # idle `a` is left out
    assert tracker.series[1].t_s == 2.0
    assert tracker.series[1].values == {connection_label(b_closed): 1000}
    assert connection_label(_conn(laddr="fd00::1", raddr="fd00::2")).endswith(
        "[fd00::1]:80 > [fd00::2]:5555"
    )


def test_a_reset_socket_still_held_is_not_counted_again_each_tick() -> None:
    # Reset by the peer but not yet closed by the application: still in the kernel's table,
    # no longer `open` (ESTABLISHED/CLOSE_WAIT), and its bytes must count once.
    tracker = IntervalTracker()
    held = _conn(started_at_ns=3, tx_bytes=600, rx_bytes=400, open=False, state="CLOSE")
    totals = [sum(c.tx_bytes + c.rx_bytes for c in tracker.tick(t, [], [held])) for t in (1, 2, 3)]
    destroyed = tracker.tick(4.0, [held], [])
    assert totals == [1000, 0, 0]
    assert sum(c.tx_bytes + c.rx_bytes for c in destroyed) == 0


def _snapshot() -> NetSnapshot:
    return NetSnapshot(
        started_at="2025-01-01T00:00:00+00:00",
        duration_s=2.0,
        host="h",
        connections=(
            _conn(tx_bytes=123_456, retransmits=4, srtt_us=250.0, connect_latency_us=31.0),
            _conn(pid=0, comm="", lport=81, open=True, state="ESTABLISHED", resets_received=1),
        ),
        retransmits=4,
        resets={"sent": 0, "received": 1},
        drops={"NO_SOCKET": 3, "NETFILTER_DROP": 9},
    )


def test_render_table_shows_exact_bytes_owner_resets_and_drops() -> None:
    stream = io.StringIO()
    console = Console(file=stream, width=200, no_color=True)
    net_table.render_table(_snapshot(), console)
    text = stream.getvalue()
    assert "123,456" in text and "ESTABLISHED (open)" in text
    assert "0/1" in text  # resets sent/received of the second connection
    assert "? " in text  # unknown owner shown as such, not as pid 0
    assert "2 connections (1 open)" in text and "4 segments retransmitted" in text
    assert text.index("NETFILTER_DROP") < text.index("NO_SOCKET")  # most drops first


def test_top_limits_rows_and_says_how_many_are_hidden() -> None:
    stream = io.StringIO()
    Console(file=stream, width=200, no_color=True).print(
        net_table.connections_table(_snapshot().connections, top=1)
    )
    assert "1 more connections not shown" in stream.getvalue()


def test_human_units_in_summary() -> None:
    assert net_table.format_bytes(512) == "512 B"
    assert net_table.format_bytes(1536) == "1.5 KB"
    assert net_table.format_bytes(3 << 30) == "3.0 GB"
    assert net_table.format_ms(12_345.0) == "12.35 s"


def test_net_snapshot_round_trips_through_json() -> None:
    snap = _snapshot()
    again = snapshot_from_dict(snap.to_dict())
    assert again == snap
