"""`analyze -o report.md`: the ranked findings as Markdown, evidence tables included."""

from __future__ import annotations

from typing import TextIO

from otlp_ebpf.analysis.analyze import Analysis
from otlp_ebpf.analysis.inspections import Evidence
from otlp_ebpf.formatters.analyze_table import format_cell
from otlp_ebpf.formatters.diff_markdown import md_cell


def render_markdown(analysis: Analysis, stream: TextIO, *, source: str = "") -> None:
    stream.write(f"## Analysis of {md_cell(source or analysis.snapshot.kind)}\n\n")
    if not analysis.findings:
        stream.write(f"No findings ({len(analysis.anomalies)} anomalies).\n\n")
    for finding in analysis.findings:
        stream.write(f"### {finding.rank}. {md_cell(finding.summary)}\n\n")
        stream.write(
            f"kind {md_cell(finding.kind)}, window {finding.start_s:.1f}\\-{finding.end_s:.1f} s, "
            f"confidence {finding.confidence:.2f}"
        )
        if finding.cause is not None and finding.effects:
            stream.write(f"; cause: {md_cell(finding.cause.phrase)}")
        stream.write("\n\n")
        _table(finding.evidence, stream)
    for note in analysis.notes:
        stream.write(f"> note: {md_cell(note)}\n\n")


def _table(evidence: Evidence, stream: TextIO) -> None:
    stream.write("| t_s | " + " | ".join(md_cell(c) for c in evidence.columns) + " |\n")
    stream.write("|---:" * (len(evidence.columns) + 1) + "|\n")
    units = ("s", *evidence.units)
    for row in evidence.rows:
        cells = [md_cell(format_cell(v, u)) for v, u in zip(row, units, strict=True)]
        stream.write("| " + " | ".join(cells) + " |\n")
    stream.write("\n")
