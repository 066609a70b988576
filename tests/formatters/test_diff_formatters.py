"""Outputs of `diff`: the table, the Markdown summary, difffolded lines, differential trees."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from otlp_ebpf.analysis.diff import DiffOptions, DiffReport, RunSet, diff_runs
from otlp_ebpf.analysis.gate import evaluate
from otlp_ebpf.formatters.diff_flamegraph import (
    differential_tree,
    differential_trees,
    inclusive_shares,
    render_html,
    render_svg,
)
from otlp_ebpf.formatters.diff_folded import diff_folded_lines
from otlp_ebpf.formatters.diff_markdown import md_cell, md_code, render_markdown
from otlp_ebpf.formatters.diff_table import format_ns, render_table
from otlp_ebpf.model import CpuSnapshot, StackCount, SyscallsSnapshot, SyscallStat


def cpu(counts: dict[tuple[str, ...], int]) -> CpuSnapshot:
    stacks = tuple(StackCount(1, 1, "app", path, n) for path, n in counts.items())
    return CpuSnapshot(started_at="t", duration_s=1, host="h", stacks=stacks)


BASE = {("main", "work", "hot"): 400, ("main", "work", "cold"): 400, ("main", "[unknown]"): 200}
NEW = {("main", "work", "hot"): 1200, ("main", "work", "cold"): 400, ("main", "[unknown]"): 200}


def sides(base: CpuSnapshot, new: CpuSnapshot) -> tuple[RunSet, RunSet]:
    return RunSet("BASE", ("b.json",), (base,)), RunSet("NEW", ("n.json",), (new,))


@pytest.fixture
def report() -> DiffReport:
    return diff_runs(*sides(cpu(BASE), cpu(NEW)), DiffOptions(threshold=5.0))


def test_table_lists_regressions_then_improvements(report: DiffReport) -> None:
    console = Console(record=True, width=160, color_system=None)
    render_table(report, console)
    text = console.export_text()
    assert "cpu (count): self share per function" in text
    lines = [line for line in text.splitlines() if re.search(r"\b(hot|cold)\b", line)]
    assert "REGRESSION" in lines[0] and "hot" in lines[0]
    assert "40.00%" in lines[0] and "66.67%" in lines[0] and "+26.67" in lines[0]
    assert "cold" in lines[1] and "-17.78" in lines[1]
    # A frame name in brackets is text, not console markup.
    assert "[unknown]" in text


def test_table_of_identical_runs_says_no_change() -> None:
    same = diff_runs(*sides(cpu(BASE), cpu(BASE)), DiffOptions())
    console = Console(record=True, width=120, color_system=None)
    render_table(same, console)
    assert "no change" in console.export_text()


def test_markdown_summary_has_verdict_and_table(report: DiffReport) -> None:
    stream = io.StringIO()
    render_markdown(report, evaluate(report), stream)
    text = stream.getvalue()
    assert text.startswith("## ❌ Profile diff (cpu): FAIL")
    assert "| 🔺 **regression** | `hot` | 40.00% | 66.67% | +26.67 |" in text
    assert "| 🔻 | `cold` |" in text
    lenient = diff_runs(*sides(cpu(BASE), cpu(NEW)), DiffOptions(threshold=50.0))
    passing = io.StringIO()
    render_markdown(lenient, evaluate(lenient), passing)
    assert passing.getvalue().startswith("## ✅ Profile diff (cpu): PASS")


def test_markdown_cells_cannot_break_the_table() -> None:
    assert md_cell("a|b\nc") == "a\\|b c"
    assert md_code("operator|`x`") == "`operator\\|'x'`"


def test_folded_diff_scales_base_to_new_total() -> None:
    before = {("app", "main", "hot"): 10.0, ("app", "main", "gone"): 10.0}
    after = {("app", "main", "hot"): 30.0, ("app", "main", "new;frame"): 10.0}
    assert diff_folded_lines(before, after) == [
        "app;main;gone 20 0",
        "app;main;hot 20 30",
        "app;main;new:frame 0 10",
    ]


def test_differential_tree_has_new_widths_and_share_deltas() -> None:
    widths = {("app", "main", "hot"): 30.0, ("app", "main", "cold"): 10.0}
    before = {("app", "main", "hot"): 0.5, ("app", "main", "cold"): 0.5}
    after = {("app", "main", "hot"): 0.75, ("app", "main", "cold"): 0.25}
    tree = differential_tree(widths, before, after)
    main = tree.children["app"].children["main"]
    assert (tree.value, main.value) == (40, 40)
    assert main.children["hot"].value == 30
    assert main.children["hot"].self_value == 30
    assert main.children["hot"].delta == pytest.approx(25.0)
    assert main.children["cold"].delta == pytest.approx(-25.0)
    assert main.delta == pytest.approx(0.0)
    assert tree.children["app"].kind == "comm"
    assert inclusive_shares(after)[("app",)] == pytest.approx(1.0)


def test_reverse_view_draws_base_widths_and_keeps_colour_meaning() -> None:
    base, new = sides(cpu(BASE), cpu({("main", "work", "hot"): 100}))
    ((_, forward, _),) = differential_trees(base, new, [("cpu", "count")])
    ((_, reverse, unit),) = differential_trees(base, new, [("cpu", "count")], reverse=True)
    work_fwd = forward.children["app"].children["main"].children["work"]
    work_rev = reverse.children["app"].children["main"].children["work"]
    assert "cold" not in work_fwd.children
    assert work_rev.children["cold"].value == 400
    assert work_rev.children["cold"].delta == pytest.approx(-40.0)
    assert work_fwd.children["hot"].delta == pytest.approx(60.0)
    assert unit == "count"


def test_renderers_receive_differential_trees(report: DiffReport) -> None:
    base, new = sides(cpu(BASE), cpu(NEW))
    trees = differential_trees(base, new, [("cpu", "count")])
    page, svg = io.BytesIO(), io.BytesIO()
    render_html(trees, page, title="diff")
    render_svg(trees[0][1], svg, title="diff", unit="count")
    assert b'"differential":true' in page.getvalue()
    # hot grew: drawn red; cold shrank: drawn blue.
    text = svg.getvalue().decode()
    hot = re.search(r"<title>hot [^<]*</title><rect [^>]*fill=\"rgb\((\d+),(\d+),(\d+)\)", text)
    cold = re.search(r"<title>cold [^<]*</title><rect [^>]*fill=\"rgb\((\d+),(\d+),(\d+)\)", text)
    assert hot and int(hot.group(1)) > int(hot.group(3))
    assert cold and int(cold.group(3)) > int(cold.group(1))


def test_latency_values_read_in_natural_units() -> None:
    assert format_ns(850) == "850ns"
    assert format_ns(12_300) == "12.3us"
    assert format_ns(4_500_000) == "4.5ms"
    base = SyscallsSnapshot(
        started_at="t",
        duration_s=1,
        host="h",
        syscalls=(SyscallStat(1, "a", "read", 10, 0, {}, 0, 1000, 2_000_000, 0),),
    )
    new = SyscallsSnapshot(
        started_at="t",
        duration_s=1,
        host="h",
        syscalls=(SyscallStat(1, "a", "read", 10, 0, {}, 0, 1000, 3_000_000, 0),),
    )
    report = diff_runs(
        RunSet("B", ("b",), (base,)), RunSet("N", ("n",), (new,)), DiffOptions(metric="p99")
    )
    console = Console(record=True, width=160, color_system=None)
    render_table(report, console)
    text = console.export_text()
    assert "2ms" in text and "3ms" in text and "+50.0%" in text and "single run" in text
    assert "(not gated)" in text


def test_markdown_summary_cannot_be_taken_over_by_a_function_name() -> None:
    from markdown_it import MarkdownIt

    hostile = "**d**<!--x"
    base = {("main", "work", "hot"): 400, ("main", "cold"): 400}
    new = {("main", "work", hostile): 1200, ("main", "work", "hot"): 400, ("main", "cold"): 400}
    report = diff_runs(*sides(cpu(base), cpu(new)), DiffOptions(threshold=5.0))
    stream = io.StringIO()

    render_markdown(report, evaluate(report), stream)
    stream.write("\nThe rest of the pull request comment.\n")

    html = MarkdownIt("commonmark").enable("table").render(stream.getvalue())
    assert "<!--" not in html and "<strong>d</strong>" not in html
    assert "REGRESSION: **d**&lt;!--x" in html  # the verdict line names it, as text
    assert "<code>**d**&lt;!--x</code>" in html  # and so does its table row
    assert "The rest of the pull request comment." in html
