"""`otlp-ebpf analyze`: anomalies and ranked findings, with their evidence, from a recording."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from otlp_ebpf import console
from otlp_ebpf.cli import common
from otlp_ebpf.cli.diff import write_text
from otlp_ebpf.errors import OtlpEbpfError, UsageError

if TYPE_CHECKING:
    from otlp_ebpf.analysis.analyze import Analysis

OUTPUT_EXTENSIONS = (".md", ".html", ".json")

HELP = """Find what went wrong in a recording, when, and why: every series of the timeline
(calls, errors and p99 latency per syscall, CPU per process and function, bytes,
retransmits and resets per connection, drops, memory) is compared with its own baseline,
and deterministic inspections turn the anomalies into ranked findings, each with the rows
it rests on.

REC is a snapshot from `record` (or syscalls/net with --interval); one without a timeline
gets the whole-run inspections only. The ranked list goes to stdout; --json prints
{anomalies, findings}.
"""


@dataclass(frozen=True)
class AnalyzeConfig:
    path: str
    outputs: tuple[str, ...]
    json: bool
    since: float | None
    until: float | None
    alerts_out: str | None = None


def register(app: typer.Typer) -> None:
    """Add the `analyze` command to the app."""
    app.command("analyze", help=HELP)(analyze_command)


def _seconds_rule(value: float | None) -> float | None:
    common.check_number(value, "--since/--until", minimum=0.0, what="0 or more seconds")
    return value


def analyze_command(
    path: Annotated[str, typer.Argument(metavar="REC", help="A recording (snapshot JSON).")],
    output: Annotated[
        list[str] | None,
        typer.Option(
            "-o",
            "--output",
            metavar="PATH",
            help="Write PATH (.md report, .html report with the findings on a time strip, "
            ".json document). Repeatable.",
        ),
    ] = None,
    as_json: common.JsonOpt = False,
    alerts_out: Annotated[
        str | None,
        typer.Option(
            "--alerts-out",
            metavar="PATH",
            help="Write Prometheus alerting rules (YAML) with thresholds from this recording's "
            "baseline and `for:` from its anomalies.",
        ),
    ] = None,
    since: Annotated[
        float | None,
        typer.Option(
            "--since", metavar="S", callback=_seconds_rule, help="Only rows ending after S s."
        ),
    ] = None,
    until: Annotated[
        float | None,
        typer.Option(
            "--until", metavar="S", callback=_seconds_rule, help="Only rows starting before S s."
        ),
    ] = None,
) -> None:
    config = AnalyzeConfig(path, tuple(output or ()), as_json, since, until, alerts_out)
    check_config(config)
    run_analyze(config)


def check_config(config: AnalyzeConfig) -> None:
    _seconds_rule(config.since)
    _seconds_rule(config.until)
    if config.since is not None and config.until is not None and config.until <= config.since:
        raise UsageError(f"--until ({config.until:g}) must be after --since ({config.since:g})")
    for out in config.outputs:
        if not out.lower().endswith(OUTPUT_EXTENSIONS):
            raise UsageError(
                f"{out}: analyze writes {', '.join(OUTPUT_EXTENSIONS)}; cannot tell the format"
            )
        common.check_output_path(out)
    if config.alerts_out is not None:
        if not config.alerts_out.lower().endswith((".yaml", ".yml")):
            raise UsageError(f"{config.alerts_out}: --alerts-out writes a .yaml rule file")
        common.check_output_path(config.alerts_out)


def run_analyze(config: AnalyzeConfig) -> Analysis:
    from otlp_ebpf.analysis.analyze import analyze
    from otlp_ebpf.formatters.analyze_table import render_findings
    from otlp_ebpf.model import read_snapshot

    snapshot = read_snapshot(config.path)
    analysis = analyze(snapshot, config.since, config.until)
    failures: list[OtlpEbpfError] = []
    for out in config.outputs:
        try:
            write_output(out, analysis, config.path)
        except OtlpEbpfError as exc:
            console.error(exc.message)
            failures.append(exc)
    if config.alerts_out is not None:
        try:
            write_alerts(config.alerts_out, analysis, config.path)
        except OtlpEbpfError as exc:
            console.error(exc.message)
            failures.append(exc)
    if config.json:
        console.out.file.write(json.dumps(analysis.to_document(), indent=1) + "\n")
    else:
        render_findings(analysis, console.out)
    common.raise_failures(failures)
    return analysis


def write_alerts(path: str, analysis: Analysis, source: str) -> None:
    from otlp_ebpf.analysis.alerts import alert_rules
    from otlp_ebpf.formatters.analyze_alerts import render_rules

    if analysis.timeline is None:
        raise UsageError(f"{path}: alert thresholds come from a timeline; {source} has none")
    rules = alert_rules(analysis)
    write_text(path, lambda s: render_rules(rules, s, source=source))
    console.status(f"wrote {path} ({len(rules)} alerting rules)")


def _dump(document: dict[str, object], stream: TextIO) -> None:
    json.dump(document, stream, indent=1)
    stream.write("\n")


def write_output(path: str, analysis: Analysis, source: str) -> None:
    lowered = path.lower()
    if lowered.endswith(".json"):
        document = analysis.to_document()
        write_text(path, lambda s: _dump(document, s))
    elif lowered.endswith(".md"):
        from otlp_ebpf.formatters.analyze_markdown import render_markdown

        write_text(path, lambda s: render_markdown(analysis, s, source=source))
    else:
        from otlp_ebpf.formatters.analyze_html import render_html

        write_text(path, lambda s: render_html(analysis, s, source=source))
    console.status(f"wrote {path}")
