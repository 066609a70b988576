"""`otlp-ebpf report`: render a saved snapshot again, as a table and as any output file."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from otlp_ebpf import console
from otlp_ebpf.cli import common
from otlp_ebpf.collectors.signals import signal_of
from otlp_ebpf.model import read_snapshot


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
        signal = signal_of(snapshot)
        outputs = common.plan_outputs(output, fmt, snapshot.kind)
        failures = common.write_outputs(snapshot, outputs)
        if as_json:
            console.out.print_json(json.dumps(snapshot.to_dict()))
        else:
            signal.render_table(snapshot, console.out, top or None)
        events = signal.count_events(snapshot)
        console.status(common.summary_line(snapshot, events, signal.event_name))
        common.raise_failures(failures)
