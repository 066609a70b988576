"""The `diff` results table: largest regressions and improvements per section, on a console."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table
from rich.text import Text

from otlp_ebpf.analysis.diff_model import DiffReport, DiffRow, DiffSection

DEFAULT_TOP = 10


def format_value(value: float, section: DiffSection) -> str:
    """A before/after value: a share in percent, or a latency/rate in its own unit."""
    if not section.relative:
        return f"{value:.2f}%"
    if section.value_unit == "ns":
        return format_ns(value)
    return f"{value:.3g}{section.value_unit}"


def format_ns(value: float) -> str:
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.0f}ns"


def format_delta(value: float, section: DiffSection) -> str:
    if math.isinf(value):
        return "new"
    return f"{value:+.2f}" if not section.relative else f"{value:+.1f}%"


def format_interval(row: DiffRow, section: DiffSection) -> str:
    """The confidence interval of the change, or why there is none."""
    if row.p_change is None:
        return "single run"
    if math.isinf(row.ci_high) or math.isinf(row.ci_low):
        return "unbounded"
    return f"[{format_delta(row.ci_low, section)}, {format_delta(row.ci_high, section)}]"


def format_confidence(row: DiffRow) -> str:
    confidence = row.confidence
    if confidence is None:
        return "-"
    return ">99.9%" if confidence > 0.999 else f"{confidence:.0%}"


def render_table(report: DiffReport, console: Console, *, top: int = DEFAULT_TOP) -> None:
    """One table per section: the `top` largest regressions, then the `top` largest drops."""
    for section in report.sections:
        console.print(section_table(section, report, top=top))
    for note in report.notes:
        console.print(Text(f"note: {note}", style="dim"))


def section_table(section: DiffSection, report: DiffReport, *, top: int) -> Table:
    """The rich table of one section (testable without a console)."""
    gate = "" if section.gated else " (not gated)"
    table = Table(
        title=f"{section.title}{gate}",
        caption=f"noise model: {section.method}; delta in {section.delta_unit}",
        title_justify="left",
        expand=False,
    )
    table.add_column("", no_wrap=True)
    table.add_column(section.key_label, overflow="fold")
    table.add_column("before", justify="right", no_wrap=True)
    table.add_column("after", justify="right", no_wrap=True)
    table.add_column("change", justify="right", no_wrap=True)
    table.add_column(f"{report.confidence:.0%} interval", justify="right", no_wrap=True)
    table.add_column("confidence", justify="right", no_wrap=True)
    if section.other_label:
        table.add_column(f"{section.other_label} share", justify="right", no_wrap=True)
    regressions = section.regressions()[:top]
    improvements = section.improvements()[:top]
    for row in regressions:
        table.add_row(*_cells(row, section, grew=True))
    if regressions and improvements:
        table.add_section()
    for row in improvements:
        table.add_row(*_cells(row, section, grew=False))
    if not regressions and not improvements:
        table.add_row("", Text("no change", style="dim"), *[""] * (len(table.columns) - 2))
    return table


def _cells(row: DiffRow, section: DiffSection, *, grew: bool) -> list[Text]:
    if row.regression:
        marker = Text("REGRESSION", style="bold red")
    else:
        marker = Text("▲" if grew else "▼", style="red" if grew else "blue")
    cells = [
        marker,
        Text(row.key),
        Text(format_value(row.before, section)),
        Text(format_value(row.after, section)),
        Text(format_delta(row.delta, section), style="red" if grew else "blue"),
        Text(format_interval(row, section)),
        Text(format_confidence(row)),
    ]
    if section.other_label and row.other is not None:
        before, after = row.other
        cells.append(Text(f"{before:.2f}% -> {after:.2f}%"))
    return cells
