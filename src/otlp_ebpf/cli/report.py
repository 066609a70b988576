"""`otlp-ebpf report`: render a saved snapshot again, as a table and as any output file."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from otlp_ebpf import console
from otlp_ebpf.cli import common
from otlp_ebpf.collectors.signals import signal_of
from otlp_ebpf.errors import UsageError
from otlp_ebpf.model import SIGNALS, RecordSnapshot, Snapshot, read_snapshot


def register(app: typer.Typer) -> None:
    @app.command()
    def report(
        snapshot_path: Annotated[
            str, typer.Argument(metavar="SNAPSHOT", help="A snapshot written with -o x.json.")
        ],
        output: common.OutputOpt = None,
        fmt: common.FormatOpt = None,
        top: common.TopOpt = 20,
        signal_name: Annotated[
            str | None,
            typer.Option(
                "--signal", help="Of a recording: only this signal's section (cpu, syscalls ...)."
            ),
        ] = None,
        as_json: common.JsonOpt = False,
    ) -> None:
        """Show a saved snapshot of any kind again and write it in other formats.

        Example: `otlp-ebpf report base.json -o flame.html -o base.pb.gz`.
        """
        snapshot = read_snapshot(snapshot_path)
        if signal_name is not None:
            snapshot = section_of(snapshot, signal_name, snapshot_path)
        outputs = common.plan_outputs(output, fmt, snapshot.kind)
        failures = common.write_outputs(snapshot, outputs)
        if isinstance(snapshot, RecordSnapshot):
            from otlp_ebpf.cli.record import show_tables, summary_line

            if as_json:
                console.out.print_json(json.dumps(snapshot.to_dict()))
            else:
                show_tables(snapshot, top or None)
            console.status(summary_line(snapshot))
            common.raise_failures(failures)
            return
        signal = signal_of(snapshot)
        if as_json:
            console.out.print_json(json.dumps(snapshot.to_dict()))
        else:
            signal.render_table(snapshot, console.out, top or None)
        events = signal.count_events(snapshot)
        console.status(common.summary_line(snapshot, events, signal.event_name))
        common.raise_failures(failures)


def section_of(snapshot: Snapshot, signal: str, path: str) -> Snapshot:
    """One signal's section of a recording, as its own command would have written it."""
    if not isinstance(snapshot, RecordSnapshot):
        raise UsageError(f"{path}: --signal needs a recording; this is a {snapshot.kind} snapshot")
    if signal not in SIGNALS:
        raise UsageError(f"--signal: unknown signal {signal!r}; known: {', '.join(SIGNALS)}")
    section = snapshot.signals.get(signal)
    if section is None:
        recorded = ", ".join(snapshot.signals) or "none"
        raise UsageError(f"{path}: no {signal} section in this recording (it has {recorded})")
    return section
