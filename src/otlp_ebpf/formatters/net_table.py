"""Terminal views of a net snapshot: tcplife-style connections, then resets and drops."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from otlp_ebpf.model import Connection, NetSnapshot

FAMILY_NAMES = {2: "4", 10: "6"}


def format_bytes(n: int) -> str:
    """Human units for summaries (tables show exact byte counts: exactness is the point)."""
    if n < 1024:
        return f"{n} B"
    unit, scale = next(u for u in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)) if n >= u[1])
    return f"{n / scale:.1f} {unit}"


def format_ms(ms: float) -> str:
    return f"{ms / 1000:.2f} s" if ms >= 10_000 else f"{ms:.2f}"


def _us(value: float) -> str:
    return f"{value:.0f}" if value else "-"


def _state(conn: Connection) -> str:
    if conn.open:
        return f"{conn.state} (open)"
    return conn.state


def connections_table(
    conns: Sequence[Connection], *, top: int | None = None, title: str = ""
) -> Table:
    """One row per connection: tcplife's columns plus connect latency, retransmits, RTT and
    resets."""
    table = Table(title=title or None, title_justify="left")
    for name in ("pid", "comm", "ip", "laddr", "lport", "raddr", "rport"):
        table.add_column(name, justify="right" if name in ("pid", "lport", "rport") else "left")
    for name in ("tx", "rx", "ms", "conn us", "retrans", "rtt us", "rst s/r"):
        table.add_column(name, justify="right")
    table.add_column("state")
    shown = conns[:top] if top else conns
    for c in shown:
        table.add_row(
            str(c.pid) if c.pid else "?",
            escape(c.comm) if c.comm else "?",
            FAMILY_NAMES.get(c.family, str(c.family)),
            c.laddr,
            str(c.lport),
            c.raddr,
            str(c.rport),
            f"{c.tx_bytes:,}",
            f"{c.rx_bytes:,}",
            ">" + format_ms(c.duration_ms) if c.started_before_run else format_ms(c.duration_ms),
            _us(c.connect_latency_us),
            f"{c.retransmits:,}",
            _us(c.srtt_us),
            f"{c.resets_sent}/{c.resets_received}",
            _state(c),
        )
    if top and len(conns) > top:
        table.caption = f"{len(conns) - top:,} more connections not shown"
    return table


def drops_table(drops: Mapping[str, int], *, top: int | None = 10) -> Table:
    """Packet drops by kernel drop reason, most first."""
    table = Table(title="packet drops by reason (host-wide)", title_justify="left")
    table.add_column("reason")
    table.add_column("packets", justify="right")
    items = sorted(drops.items(), key=lambda kv: (-kv[1], kv[0]))
    for reason, n in items[:top] if top else items:
        table.add_row(escape(reason), f"{n:,}")
    return table


def summary_text(snapshot: NetSnapshot) -> str:
    """One line: connections, bytes, retransmits, resets."""
    conns = snapshot.connections
    still_open = sum(1 for c in conns if c.open)
    tx = sum(c.tx_bytes for c in conns)
    rx = sum(c.rx_bytes for c in conns)
    return (
        f"{len(conns):,} connections ({still_open:,} open), "
        f"tx {format_bytes(tx)}, rx {format_bytes(rx)}, "
        f"{snapshot.retransmits:,} segments retransmitted, "
        f"resets sent {snapshot.resets.get('sent', 0):,} / "
        f"received {snapshot.resets.get('received', 0):,}"
    )


def render_table(snapshot: NetSnapshot, console: Console, *, top: int | None = None) -> None:
    """The full terminal report: connections, a summary line, then drops by reason."""
    console.print(connections_table(snapshot.connections, top=top))
    console.print(escape(summary_text(snapshot)))
    if snapshot.drops:
        console.print(drops_table(snapshot.drops))
