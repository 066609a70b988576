"""`analyze` on a console: the ranked findings, each with the rows it rests on."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table
from rich.text import Text

from otlp_ebpf.analysis.analyze import Analysis
from otlp_ebpf.analysis.inspections import Evidence, Finding

MAX_ANOMALIES_LISTED = 10


def format_cell(value: float, unit: str) -> str:
    """One evidence value as the rows hold it, with its unit."""
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if unit == "s":
        return f"{value:.2f}"
    if unit == "ns":
        for name, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
            if value >= scale:
                return f"{value / scale:.3g} {name}"
        return f"{value:.0f} ns"
    text = f"{value:,.0f}" if abs(value) >= 100 or float(value).is_integer() else f"{value:.3g}"
    if unit == "1/s":
        return f"{text}/s"
    return f"{text} {unit}" if unit not in ("1", "") else text


def evidence_table(evidence: Evidence) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False)
    table.add_column("t_s", justify="right")
    for column in evidence.columns:
        table.add_column(Text(column), justify="right", overflow="fold")
    units = ("s", *evidence.units)
    for row in evidence.rows:
        table.add_row(*(Text(format_cell(v, u)) for v, u in zip(row, units, strict=True)))
    return table


def render_findings(analysis: Analysis, console: Console) -> None:
    """The ranked list, the evidence under each finding, then the notes."""
    findings = analysis.findings
    if not findings:
        series = len(analysis.timeline.series) if analysis.timeline else 0
        console.print(
            Text(
                f"no findings: {len(analysis.anomalies)} anomalies in {series} series"
                if analysis.timeline
                else "no findings in the run's totals"
            )
        )
    for finding in findings:
        _finding(finding, console)
    if analysis.anomalies and not findings:
        _anomaly_list(analysis, console)
    for note in analysis.notes:
        console.print(Text(f"note: {note}"), style="dim")


def _finding(finding: Finding, console: Console) -> None:
    head = Text(f"{finding.rank}. ", style="bold")
    head.append(Text(finding.summary))
    head.append(Text(f"  [{finding.kind}, confidence {finding.confidence:.2f}]", style="dim"))
    console.print(head)
    if finding.cause is not None and finding.effects:
        console.print(Text(f"   cause: {finding.cause.kind}: {finding.cause.phrase}"))
    console.print(evidence_table(finding.evidence))
    console.print()


def _anomaly_list(analysis: Analysis, console: Console) -> None:
    table = Table(title="anomalies", box=None)
    for name in ("series", "window", "baseline", "observed", "q"):
        table.add_column(name)
    for a in analysis.anomalies[:MAX_ANOMALIES_LISTED]:
        table.add_row(
            Text(a.series.key),
            f"{a.start_s:.1f}-{a.end_s:.1f} s",
            format_cell(a.baseline, a.series.unit),
            format_cell(a.observed, a.series.unit),
            f"{a.q_value:.2g}",
        )
    console.print(table)
