"""A Markdown summary of a diff, to paste into a pull request or a CI job summary."""

from __future__ import annotations

import re
from typing import TextIO

from otlp_ebpf.analysis.diff_model import DiffReport, DiffRow, DiffSection
from otlp_ebpf.analysis.gate import Verdict
from otlp_ebpf.formatters.diff_table import (
    DEFAULT_TOP,
    format_confidence,
    format_delta,
    format_interval,
    format_value,
)
from otlp_ebpf.hosttext import escape_controls

_ICONS = {"fail": "❌", "pass": "✅", "no-gate": "ℹ️"}


# Every ASCII punctuation character may be backslash-escaped in CommonMark, and then means only
# itself: no emphasis, link, HTML comment or tag, entity, heading or table pipe can start.
_MD_PUNCTUATION = re.compile(r"""([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~])""")


def md_cell(text: str) -> str:
    """Text made inert in a Markdown table cell or paragraph: function names in it come from
    the profiled programs (`**d**<!--x` must not hide the rest of a pull request comment)."""
    return _MD_PUNCTUATION.sub(r"\\\1", _one_line(text))


def md_code(text: str) -> str:
    """A frame name as a code span in a table cell: no emphasis from `__x__`, pipes escaped
    (GFM splits cells on them even inside code), backticks swapped (they would end the span)."""
    return "`" + _one_line(text).replace("`", "'").replace("|", "\\|") + "`"


def _one_line(text: str) -> str:
    return escape_controls(text.replace("\r\n", " ").replace("\n", " "))


def render_markdown(
    report: DiffReport, verdict: Verdict, stream: TextIO, *, top: int = DEFAULT_TOP
) -> None:
    """Write the summary: verdict line, what was compared, then one table per section."""
    word = "no-gate" if verdict.threshold is None else ("fail" if verdict.failed else "pass")
    stream.write(f"## {_ICONS[word]} Profile diff ({report.kind}): {word.upper()}\n\n")
    stream.write(f"{md_cell(verdict.reason)}\n\n")
    stream.write(
        f"Compared {len(report.base)} base run(s) with {len(report.new)} new run(s); "
        f"shares are normalised per run; confidence level {report.confidence:.0%}.\n\n"
    )
    for section in report.sections:
        _section(section, stream, top)
    for note in report.notes:
        stream.write(f"> note: {md_cell(note)}\n\n")


def _section(section: DiffSection, stream: TextIO, top: int) -> None:
    gate = "" if section.gated else " (not gated)"
    stream.write(f"### {md_cell(section.title)}{gate}\n\n")
    rows = [(r, True) for r in section.regressions()[:top]]
    rows += [(r, False) for r in section.improvements()[:top]]
    if not rows:
        stream.write("No change.\n\n")
        return
    other = f" | {section.other_label} share" if section.other_label else ""
    stream.write(
        f"| | {section.key_label} | before | after | change ({section.delta_unit}) "
        f"| interval | confidence{other} |\n"
    )
    stream.write("|---|---|--:|--:|--:|--:|--:" + ("|--:" if other else "") + "|\n")
    for row, grew in rows:
        stream.write(_line(row, section, grew) + "\n")
    stream.write(f"\nNoise model: {section.method}.\n\n")


def _line(row: DiffRow, section: DiffSection, grew: bool) -> str:
    marker = "🔺 **regression**" if row.regression else ("🔺" if grew else "🔻")
    cells = [
        marker,
        md_code(row.key),
        format_value(row.before, section),
        format_value(row.after, section),
        format_delta(row.delta, section),
        md_cell(format_interval(row, section)),
        format_confidence(row),
    ]
    if section.other_label and row.other is not None:
        cells.append(f"{row.other[0]:.2f}% → {row.other[1]:.2f}%")
    return "| " + " | ".join(cells) + " |"
