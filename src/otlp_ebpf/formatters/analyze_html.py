"""`analyze -o report.html`: one offline page, the findings marked on a timeline strip and
each with its evidence table. Every text from the host is HTML-escaped."""

from __future__ import annotations

import html
from typing import TextIO

from otlp_ebpf.analysis.analyze import Analysis
from otlp_ebpf.analysis.inspections import Evidence, Finding
from otlp_ebpf.formatters.analyze_table import format_cell

STRIP_WIDTH = 900
_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:2px 8px;text-align:right;
border-bottom:1px solid #eee}th{background:#f4f4f4}.strip{position:relative;height:%dpx;
width:%dpx;background:#f7f7f7;border:1px solid #ccc}.mark{position:absolute;height:14px;
background:#d9534f;opacity:.75;color:#fff;font-size:11px;overflow:hidden}
.note{color:#666}
"""


def findings_strip(findings: list[Finding], duration: float) -> str:
    """An SVG-free strip: one bar per finding over the run's time axis (seconds)."""
    height = 18 * max(len(findings), 1) + 4
    span = max(duration, 1e-9)
    bars = []
    for i, f in enumerate(findings):
        left = STRIP_WIDTH * f.start_s / span
        width = max(STRIP_WIDTH * (f.end_s - f.start_s) / span, 2.0)
        bars.append(
            f'<div class="mark" style="left:{left:.1f}px;width:{width:.1f}px;top:{2 + 18 * i}px"'
            f' title="{html.escape(f.summary)}">{f.rank}</div>'
        )
    return f'<div class="strip" style="height:{height}px">{"".join(bars)}</div>'


def render_html(analysis: Analysis, stream: TextIO, *, source: str = "") -> None:
    title = html.escape(f"otlp-ebpf analyze: {source or analysis.snapshot.kind}")
    duration = analysis.snapshot.duration_s
    stream.write(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>")
    stream.write(f"<style>{_STYLE % (40, STRIP_WIDTH)}</style></head><body><h1>{title}</h1>")
    if analysis.findings:
        stream.write(f"<p>run of {duration:.1f} s; findings by rank:</p>")
        stream.write(findings_strip(analysis.findings, duration))
    else:
        stream.write(f"<p>No findings ({len(analysis.anomalies)} anomalies).</p>")
    for finding in analysis.findings:
        stream.write(f"<h2>{finding.rank}. {html.escape(finding.summary)}</h2>")
        stream.write(
            f"<p>{html.escape(finding.kind)}, {finding.start_s:.1f}-{finding.end_s:.1f} s, "
            f"confidence {finding.confidence:.2f}</p>"
        )
        stream.write(evidence_html(finding.evidence))
    for note in analysis.notes:
        stream.write(f'<p class="note">note: {html.escape(note)}</p>')
    stream.write("</body></html>\n")


def evidence_html(evidence: Evidence) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ("t_s", *evidence.columns))
    units = ("s", *evidence.units)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(format_cell(v, u))}</td>" for v, u in zip(row, units, strict=True)
        )
        + "</tr>"
        for row in evidence.rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"
