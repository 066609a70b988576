"""`otlp-ebpf net`: TCP connections with exact bytes, retransmits, resets, drops and RTT."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from otlp_ebpf import console
from otlp_ebpf.cli import common
from otlp_ebpf.errors import UsageError
from otlp_ebpf.model import Connection, NetSnapshot, Snapshot


def register(app: typer.Typer) -> None:
    @app.command(context_settings={"allow_interspersed_args": False})
    def net(
        command: common.CommandArg = None,
        pid: common.PidOpt = None,
        duration: common.DurationOpt = None,
        interval: common.IntervalOpt = None,
        port: Annotated[
            int, typer.Option("--port", help="Only connections with this local or remote port.")
        ] = 0,
        laddr: Annotated[
            str, typer.Option("--laddr", help="Only connections with this local address.")
        ] = "",
        raddr: Annotated[
            str, typer.Option("--raddr", help="Only connections with this remote address.")
        ] = "",
        ipv4: Annotated[bool, typer.Option("--ipv4", "-4", help="Only IPv4 connections.")] = False,
        ipv6: Annotated[bool, typer.Option("--ipv6", "-6", help="Only IPv6 connections.")] = False,
        top: common.TopOpt = 0,
        output: common.OutputOpt = None,
        fmt: common.FormatOpt = None,
        otlp: common.OtlpOpt = None,
        otlp_file: common.OtlpFileOpt = None,
        as_json: common.JsonOpt = False,
        cmdline: common.CmdlineOpt = common.CmdlinePolicy.REDACT,
    ) -> int:
        """Trace TCP connections: owner, addresses, exact payload bytes, connect latency,
        retransmitted segments, resets and RTT per connection, plus packet drops by reason.

        Examples: `otlp-ebpf net -d 10`, `otlp-ebpf net --port 443 --interval 1`,
        `otlp-ebpf net -- curl -s https://example.com`.
        """
        from otlp_ebpf.collectors.net import (
            AF_INET,
            AF_INET6,
            NetConfig,
            check_port,
            collect,
            parse_address,
        )

        check_port(port)
        if ipv4 and ipv6:
            raise UsageError("give --ipv4 or --ipv6, not both")
        outputs = common.plan_outputs(output, fmt, "net")
        common.validate_otlp(otlp, otlp_file)
        config = NetConfig(
            targets=common.target_spec(pid, 0, command),
            duration_s=duration,
            interval_s=interval,
            port=port,
            laddr=parse_address(laddr, "laddr") if laddr else "",
            raddr=parse_address(raddr, "raddr") if raddr else "",
            family=AF_INET if ipv4 else AF_INET6 if ipv6 else 0,
        )

        def show(snap: Snapshot) -> None:
            from otlp_ebpf.formatters import net_table

            assert isinstance(snap, NetSnapshot)
            net_table.render_table(snap, console.out, top=top or None)

        results = common.Results(outputs, as_json, otlp, otlp_file, cmdline)
        return common.collect_by_interval(
            "TCP", collect, config, lambda: _live_view(top or 20), show, results
        )


def _live_view(top: int) -> Callable[[list[Connection], float], None]:
    """Busiest connections of each interval on stderr, like `tcptop`."""
    from otlp_ebpf.formatters import net_table

    def tick(rows: list[Connection], elapsed: float) -> None:
        title = f"bytes in the interval ending at {elapsed:.1f} s"
        console.err.print(net_table.connections_table(rows, top=top, title=title))

    return tick
