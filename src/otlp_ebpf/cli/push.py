"""`otlp-ebpf push`: send `.otlp.pb` files (spilled or written with -o) to an OTLP receiver."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from otlp_ebpf import console

HELP = (
    "Send .otlp.pb files to an OTLP receiver (OpenTelemetry Collector).\n\n"
    "Resends what a run could not deliver (it saved <kind>-<time>.otlp.pb) or files written "
    "with -o out.otlp.pb. Every file is checked before anything is sent. A file that cannot be "
    "delivered is kept and the command exits 1; an unreadable or corrupt file exits 2.\n\n"
    "Endpoint, headers, TLS and timeout also come from the OTEL_EXPORTER_OTLP_* variables "
    "(see docs/otlp.md)."
)


def register(app: typer.Typer) -> None:
    """Add the `push` command to the app."""
    app.command("push", help=HELP)(push_command)


def push_command(
    files: Annotated[list[str], typer.Argument(help=".otlp.pb files to send.")],
    otlp: Annotated[
        str | None,
        typer.Option(
            "--otlp",
            metavar="URL",
            help="Receiver base URL, e.g. http://collector:4317. "
            "\\[env: OTEL_EXPORTER_OTLP_ENDPOINT]",
        ),
    ] = None,
    protocol: Annotated[
        str | None,
        typer.Option(
            "--protocol",
            metavar="grpc|http/protobuf",
            help="OTLP protocol (default: from the port, 4318 = http/protobuf, else grpc). "
            "\\[env: OTEL_EXPORTER_OTLP_PROTOCOL]",
        ),
    ] = None,
    remove_sent: Annotated[
        bool, typer.Option("--remove-sent", help="Delete each file once it has been delivered.")
    ] = False,
) -> None:
    from otlp_ebpf.cli.common import OTLP_DEFAULT
    from otlp_ebpf.errors import RuntimeFailure
    from otlp_ebpf.export.config import OtlpConfig
    from otlp_ebpf.export.deliver import deliver_file
    from otlp_ebpf.formatters.otlp_request import read_request_file

    # A bare --otlp means "the endpoint from the environment", as for the collectors.
    config = OtlpConfig.from_cli(None if otlp == OTLP_DEFAULT else otlp, protocol)
    empty = {path for path in files if not read_request_file(path)}  # corrupt: stop now
    failed = []
    for path in files:
        if path in empty:
            console.status(f"{path}: nothing to send")
            continue
        try:
            deliver_file(path, config)
        except RuntimeFailure as exc:
            console.warn(f"{exc.message} (file kept)")
            failed.append(path)
            continue
        console.status(f"delivered {path}")
        if remove_sent:
            os.remove(path)
    if failed:
        raise RuntimeFailure(f"{len(failed)} of {len(files)} files could not be delivered")
