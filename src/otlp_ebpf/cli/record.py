"""`otlp-ebpf record`: every signal of one target on one timeline."""

from __future__ import annotations

from typing import Annotated

import typer

from otlp_ebpf import console
from otlp_ebpf.cli import common
from otlp_ebpf.model import SIGNALS, RecordSnapshot

SignalsOpt = Annotated[
    str | None,
    typer.Option(
        "--signals",
        metavar="LIST",
        help=f"Signals to record, comma-separated (default: {','.join(SIGNALS)}).",
    ),
]
TimelineIntervalOpt = Annotated[
    float | None,
    typer.Option(
        "--interval",
        callback=common.interval_rule,
        help="Seconds per timeline row (default 1, or the duration if shorter).",
    ),
]


def register(app: typer.Typer) -> None:
    @app.command(context_settings={"allow_interspersed_args": False})
    def record(
        command: common.CommandArg = None,
        pid: common.PidOpt = None,
        duration: common.DurationOpt = None,
        interval: TimelineIntervalOpt = None,
        signals: SignalsOpt = None,
        frequency: Annotated[
            int, typer.Option("-F", "--frequency", help="cpu: samples per second on each CPU.")
        ] = 99,
        off_cpu: Annotated[
            bool,
            typer.Option(
                "--off-cpu",
                help="cpu: also record blocked time by stack (sched_switch), per process and "
                "blocking site on the timeline (analyze finds lock contention with it).",
            ),
        ] = False,
        budget: common.BudgetOpt = None,
        top: common.TopOpt = 10,
        output: common.OutputOpt = None,
        fmt: common.FormatOpt = None,
        otlp: common.OtlpOpt = None,
        as_json: common.JsonOpt = False,
        cmdline: common.CmdlineOpt = common.CmdlinePolicy.REDACT,
    ) -> int:
        """Record cpu, syscalls, net and mem of one target at once, on one timeline.

        One run attaches every chosen collector to the same target, holds a launched command
        until all of them are attached, and keeps one timeline row per --interval with what
        each signal did in it. `-o rec.json` keeps everything (`report rec.json --signal cpu`
        gives the single-signal outputs); `-o rec.html` is a self-contained report.

        Examples: `otlp-ebpf record -o rec.json -o rec.html -- ./service --once`,
        `otlp-ebpf record -p 1234 -d 60 --signals cpu,net -o rec.json`.
        """
        from otlp_ebpf.collectors.record import (
            DEFAULT_INTERVAL_S,
            RecordConfig,
            check_interval,
            collect,
            parse_signals,
        )

        common.check_duration(duration)
        if interval is None:
            interval = min(DEFAULT_INTERVAL_S, duration or DEFAULT_INTERVAL_S)
        check_interval(interval, duration)
        chosen = parse_signals(signals) if signals is not None else SIGNALS
        outputs = common.plan_outputs(output, fmt, "record")
        common.validate_otlp(otlp, None)
        config = RecordConfig(
            targets=common.target_spec(pid, 0, command),
            duration_s=duration,
            interval_s=interval,
            signals=chosen,
            signals_given=signals is not None,
            frequency_hz=frequency,
            budget_pct=budget,
            off_cpu=off_cpu,
        )
        targets = common.targets_text(config.targets.describe())
        console.status(f"recording {','.join(chosen)} ({targets}); Ctrl-C to stop")
        snapshot = common.with_cmdlines(collect(config), cmdline)
        failures = common.write_outputs(snapshot, outputs)
        if as_json:
            import json

            console.out.print_json(json.dumps(snapshot.to_dict()))
        else:
            show_tables(snapshot, top or None)
        if snapshot.lost_total:
            console.warn(
                f"{snapshot.lost_total:,} events lost: "
                + ", ".join(f"{k} {v:,}" for k, v in snapshot.lost_events.items() if v)
            )
        console.status(summary_line(snapshot))
        for section in snapshot.signals.values():
            failures.extend(common.deliver_otlp(section, otlp, None))
        common.raise_failures(failures)
        return common.command_exit_code(snapshot)


def show_tables(snapshot: RecordSnapshot, top: int | None) -> None:
    """Each section's own table, in signal order, under a heading."""
    from otlp_ebpf.collectors.signals import signal_of

    for name, section in snapshot.signals.items():
        console.out.rule(name)
        signal_of(section).render_table(section, console.out, top)


def summary_line(snapshot: RecordSnapshot) -> str:
    """The one-line account: what every signal saw, losses, the whole run's cost and what a
    budget did."""
    return common.summary_line(
        snapshot, len(snapshot.timeline), f"timeline rows ({events_summary(snapshot)})"
    )


def events_summary(snapshot: RecordSnapshot) -> str:
    """What each signal saw: `1,234 samples, 5,678 syscalls, 3 connections, ...`."""
    from otlp_ebpf.collectors.signals import signal_of

    parts = []
    for section in snapshot.signals.values():
        spec = signal_of(section)
        parts.append(f"{spec.count_events(section):,} {spec.event_name}")
    return ", ".join(parts)
