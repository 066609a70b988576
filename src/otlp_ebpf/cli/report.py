"""`otlp-ebpf report`: render a saved snapshot again, as a table and as any output file."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from otlp_ebpf import console
from otlp_ebpf.cli import common
from otlp_ebpf.model import (
    CpuSnapshot,
    MemSnapshot,
    NetSnapshot,
    Snapshot,
    SyscallsSnapshot,
    read_snapshot,
)


def register(app: typer.Typer) -> None:
    @app.command()
    def report(
        snapshot_path: Annotated[
            str, typer.Argument(metavar="SNAPSHOT", help="A snapshot written with -o x.json.")
        ],
        output: common.OutputOpt = None,
        fmt: common.FormatOpt = None,
        top: Annotated[int, typer.Option("--top", help="Rows to show (0: all).")] = 20,
        as_json: common.JsonOpt = False,
    ) -> None:
        """Show a saved snapshot of any kind again and write it in other formats.

        Example: `otlp-ebpf report base.json -o flame.html -o base.pb.gz`.
        """
        snapshot = read_snapshot(snapshot_path)
        outputs = common.plan_outputs(output, fmt, snapshot.kind)
        failures = common.write_outputs(snapshot, outputs)
        if as_json:
            console.out.print_json(json.dumps(snapshot.to_dict()))
        else:
            show_table(snapshot, top or None)
        console.status(common.summary_line(snapshot, *events_of(snapshot)))
        common.raise_failures(failures)


def show_table(snapshot: Snapshot, top: int | None) -> None:
    """The terminal table of `snapshot`'s kind; formatters are imported only when needed."""
    if isinstance(snapshot, CpuSnapshot):
        from otlp_ebpf.formatters import cpu_table

        cpu_table.render_table(snapshot, console.out, top=top)
    elif isinstance(snapshot, SyscallsSnapshot):
        from otlp_ebpf.formatters import syscalls_table

        syscalls_table.render_table(snapshot, console.out, by_process=False, top=top)
    elif isinstance(snapshot, NetSnapshot):
        from otlp_ebpf.formatters import net_table

        net_table.render_table(snapshot, console.out, top=top)
    elif isinstance(snapshot, MemSnapshot):
        from otlp_ebpf.formatters import mem_table

        mem_table.render_table(snapshot, console.out, top=top)


def events_of(snapshot: Snapshot) -> tuple[int, str]:
    """The event count and its name for the summary line of each kind."""
    if isinstance(snapshot, CpuSnapshot):
        return snapshot.samples_total + sum(s.count for s in snapshot.off_cpu), "samples"
    if isinstance(snapshot, SyscallsSnapshot):
        return sum(s.count for s in snapshot.syscalls), "syscalls"
    if isinstance(snapshot, NetSnapshot):
        return len(snapshot.connections), "connections"
    if isinstance(snapshot, MemSnapshot):
        return snapshot.allocations_total + snapshot.frees_total, "allocations and frees"
    return 0, "events"
