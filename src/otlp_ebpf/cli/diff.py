"""`otlp-ebpf diff`: compare two sets of snapshots and, in CI, fail on a regression."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, BinaryIO, TextIO

import typer

from otlp_ebpf import console
from otlp_ebpf.cli import common
from otlp_ebpf.errors import EXIT_RUNTIME, OtlpEbpfError, UsageError
from otlp_ebpf.formatters.registry import write_atomically

if TYPE_CHECKING:
    from otlp_ebpf.analysis.diff import DiffReport, RunSet
    from otlp_ebpf.analysis.gate import Verdict

OUTPUT_EXTENSIONS = (".html", ".svg", ".folded", ".json", ".md")
STACK_OUTPUTS = (".html", ".svg", ".folded")
ALL_ROWS = sys.maxsize  # --top 0

HELP = """Compare BASE with NEW snapshots: which functions (stacks, syscalls, connection groups)
took a larger or smaller share, and whether that is beyond run-to-run noise.

BASE and NEW are each one snapshot file, a directory (every *.json in it), a quoted glob
("runs/base-*.json"), or a comma-separated list of those. Several runs per side give a
noise estimate from their spread (Mann-Whitney U, bootstrap interval); a single run per side
is judged by the sampling error of each share.

With --fail-on-regression PCT the exit code is 1 when a share grew by more than PCT points
beyond noise (or, for latencies and rates, by more than PCT percent), 0 otherwise. The
verdict goes to stderr, the table to stdout.
"""


class DiffByChoice(StrEnum):
    function = "function"
    stack = "stack"


@dataclass(frozen=True)
class DiffConfig:
    """Everything the command was asked to do, checked."""

    base: str
    new: str
    outputs: tuple[str, ...]
    threshold: float | None
    min_share: float
    by: str
    metric: str
    profiles: tuple[str, ...]
    reverse: bool
    json: bool
    confidence: float
    top: int
    signal: str | None = None


def register(app: typer.Typer) -> None:
    """Add the `diff` command to the app."""
    app.command("diff", help=HELP)(diff_command)


def diff_command(
    base: Annotated[
        str,
        typer.Argument(metavar="BASE", help="BASE snapshot(s): file, directory, glob or a,b,c."),
    ],
    new: Annotated[
        str, typer.Argument(metavar="NEW", help="NEW snapshot(s): file, directory, glob or a,b,c.")
    ],
    output: Annotated[
        list[str] | None,
        typer.Option(
            "-o",
            "--output",
            metavar="PATH",
            help="Write PATH (.html/.svg differential flamegraph, .folded as difffolded.pl, "
            ".json diff document, .md pull-request summary). Repeatable.",
        ),
    ] = None,
    fail_on_regression: Annotated[
        float | None,
        typer.Option(
            "--fail-on-regression",
            metavar="PCT",
            callback=_threshold_rule,
            help="Exit 1 when a share grew by more than PCT points beyond noise.",
        ),
    ] = None,
    min_share: Annotated[
        float,
        typer.Option(
            "--min-share",
            metavar="PCT",
            callback=_min_share_rule,
            help="Hide rows under PCT % in both runs.",
        ),
    ] = 0.0,
    by: Annotated[
        DiffByChoice, typer.Option("--by", help="Compare self time per function, or whole stacks.")
    ] = DiffByChoice.function,
    metric: Annotated[
        str,
        typer.Option(
            "--metric",
            metavar="NAME",
            help="What the gate judges: self|total (cpu, mem), calls|errors|p50|p99 "
            "(syscalls), bytes|retransmits (net). Default: self and total shares for cpu "
            "and mem (a caller that grows through a shared helper shows in total only), "
            "calls for syscalls, bytes for net.",
        ),
    ] = "",
    profile: Annotated[
        list[str] | None,
        typer.Option(
            "--profile", metavar="NAME", help="Only this profile (cpu, off_cpu, ...). Repeatable."
        ),
    ] = None,
    reverse: Annotated[
        bool, typer.Option("--reverse", help="Flamegraph widths from BASE instead of NEW.")
    ] = False,
    as_json: common.JsonOpt = False,
    confidence: common.ConfidenceOpt = 0.95,
    top: common.TopOpt = 10,
    signal: Annotated[
        str | None,
        typer.Option(
            "--signal", metavar="NAME", help="Recordings: compare only this signal's sections."
        ),
    ] = None,
) -> None:
    config = DiffConfig(
        base=base,
        new=new,
        outputs=tuple(output or ()),
        threshold=fail_on_regression,
        min_share=min_share,
        by=by.value,
        metric=metric,
        profiles=tuple(profile or ()),
        reverse=reverse,
        json=as_json,
        confidence=confidence,
        top=top,
        signal=signal,
    )
    check_config(config)
    verdict = run_diff(config)
    if verdict.failed:
        console.err.print(console.escape(verdict.reason), style="red")
        raise typer.Exit(EXIT_RUNTIME)
    console.err.print(
        console.escape(verdict.reason), style="green" if verdict.threshold is not None else None
    )


def _threshold_rule(value: float | None) -> float | None:
    # Percent of BASE for latencies and rates: above 100 is meaningful, below 0 or NaN is not.
    common.check_number(
        value, "--fail-on-regression", minimum=0.0, what="0 or more (points or percent)"
    )
    return value


def _min_share_rule(value: float) -> float:
    common.check_percent(value, "--min-share")
    return value


def check_config(config: DiffConfig) -> None:
    """Reject bad values before reading any file (the numbers were checked while parsing;
    checked again here for callers that build a DiffConfig themselves)."""
    _threshold_rule(config.threshold)
    _min_share_rule(config.min_share)
    common.check_confidence(config.confidence)
    common.check_top(config.top)
    for path in config.outputs:
        if not path.lower().endswith(OUTPUT_EXTENSIONS):
            raise UsageError(
                f"{path}: diff writes {', '.join(OUTPUT_EXTENSIONS)}; cannot tell the format"
            )
        common.check_output_path(path)


def run_diff(config: DiffConfig) -> Verdict:
    """Compare, print the results, write the outputs; the gate's verdict."""
    from otlp_ebpf.analysis.diff import check_same_kind, load_runs

    base = load_runs(config.base, "BASE")
    new = load_runs(config.new, "NEW")
    check_same_kind(base, new)
    if base.kind == "record":
        return diff_recordings(config, base, new)
    if config.signal is not None:
        raise UsageError(f"--signal compares recordings; these are {base.kind} snapshots")
    return compare(config, base, new)[1]


def diff_recordings(config: DiffConfig, base: RunSet, new: RunSet) -> Verdict:
    """Each signal both sides recorded, compared as its own snapshots would be."""
    from otlp_ebpf.analysis.diff import recorded_signals, sections_of
    from otlp_ebpf.analysis.gate import Verdict, to_document

    signals = recorded_signals(base, new, config.signal)
    if len(signals) == 1:
        return compare(config, sections_of(base, signals[0]), sections_of(new, signals[0]))[1]
    if config.outputs:
        raise UsageError(
            f"diff of recordings writes one signal's files: add --signal ({', '.join(signals)})"
        )
    verdicts = []
    documents = {}
    for name in signals:
        if not config.json:
            console.out.rule(name)
        report, verdict = compare(
            config, sections_of(base, name), sections_of(new, name), show_json=False
        )
        verdicts.append((name, verdict))
        documents[name] = to_document(report, verdict)
    if config.json:
        console.out.file.write(json.dumps({"signals": documents}, indent=1) + "\n")
    return Verdict(
        failed=any(v.failed for _, v in verdicts),
        threshold=config.threshold,
        reason="; ".join(f"{name}: {v.reason}" for name, v in verdicts),
        regressions=tuple(r for _, v in verdicts for r in v.regressions),
    )


def compare(
    config: DiffConfig, base: RunSet, new: RunSet, *, show_json: bool = True
) -> tuple[DiffReport, Verdict]:
    """Compare two run sets of one single-signal kind; print and write the results (the
    JSON document only with `show_json`: a recording's diff gathers one per signal)."""
    from otlp_ebpf.analysis.diff import DiffOptions, diff_runs
    from otlp_ebpf.analysis.gate import evaluate

    for path in config.outputs:  # refuse a format the kind cannot fill before writing any
        if path.lower().endswith(STACK_OUTPUTS) and base.kind not in ("cpu", "mem"):
            raise UsageError(f"{path}: {base.kind} snapshots have no stacks; use .json or .md")
    options = DiffOptions(
        by="stack" if config.by == "stack" else "function",
        metric=config.metric,
        threshold=config.threshold,
        confidence=config.confidence,
        min_share=config.min_share,
        profiles=config.profiles,
    )
    report = diff_runs(base, new, options)
    verdict = evaluate(report)
    failures: list[OtlpEbpfError] = []
    for path in config.outputs:  # every file that can be written is, whatever fails
        try:
            write_output(path, report, verdict, base, new, config)
        except OtlpEbpfError as exc:
            console.error(exc.message)
            failures.append(exc)
    if show_json or not config.json:
        print_results(report, verdict, config)
    common.raise_failures(failures)
    return report, verdict


def print_results(report: DiffReport, verdict: Verdict, config: DiffConfig) -> None:
    """Table or JSON on stdout (the verdict line goes to stderr from the command)."""
    from otlp_ebpf.analysis.gate import to_document
    from otlp_ebpf.formatters.diff_table import render_table

    if config.json:
        console.out.file.write(json.dumps(to_document(report, verdict), indent=1) + "\n")
    else:
        render_table(report, console.out, top=config.top or ALL_ROWS)


def write_output(
    path: str,
    report: DiffReport,
    verdict: Verdict,
    base: RunSet,
    new: RunSet,
    config: DiffConfig,
) -> None:
    """Write one requested file, its format chosen by extension."""
    lowered = path.lower()
    if lowered.endswith(".json"):
        from otlp_ebpf.analysis.gate import to_document

        document = to_document(report, verdict)
        write_text(path, lambda s: _dump_json(document, s))
    elif lowered.endswith(".md"):
        from otlp_ebpf.formatters.diff_markdown import render_markdown

        write_text(path, lambda s: render_markdown(report, verdict, s, top=config.top or ALL_ROWS))
    elif lowered.endswith(".folded"):
        _write_folded(path, report, base, new)
    else:
        _write_flamegraph(path, report, base, new, config)
    console.status(f"wrote {path}")


def _dump_json(document: dict[str, object], stream: TextIO) -> None:
    json.dump(document, stream, indent=1)
    stream.write("\n")


def _write_folded(path: str, report: DiffReport, base: RunSet, new: RunSet) -> None:
    from otlp_ebpf.analysis.diff import summed_stacks
    from otlp_ebpf.formatters.diff_folded import render_diff_folded

    names = profiles_of(report)
    name = names[0]
    if len(names) > 1:
        console.status(f"{path}: folded holds one profile; writing {name} (choose with --profile)")
    before, after = summed_stacks(base, name), summed_stacks(new, name)
    write_text(path, lambda s: render_diff_folded(before, after, s))


def profiles_of(report: DiffReport) -> list[str]:
    """Each profile once, in report order (self and total sections share a profile)."""
    return list(dict.fromkeys(s.name for s in report.sections))


def _write_flamegraph(
    path: str, report: DiffReport, base: RunSet, new: RunSet, config: DiffConfig
) -> None:
    from otlp_ebpf.analysis.diff import profile_units
    from otlp_ebpf.formatters import diff_flamegraph

    units = profile_units(new) | profile_units(base)
    wanted = [(name, units[name]) for name in profiles_of(report)]
    trees = diff_flamegraph.differential_trees(base, new, wanted, reverse=config.reverse)
    widths = "BASE" if config.reverse else "NEW"
    title = f"{report.kind} diff: {_side(report.base)} -> {_side(report.new)} (widths: {widths})"
    if path.lower().endswith(".svg"):
        label, tree, unit = trees[0]
        if len(trees) > 1:
            console.status(
                f"{path}: svg holds one profile; writing {label} (choose with --profile)"
            )
        write_atomically(
            path,
            lambda s: diff_flamegraph.render_svg(tree, s, title=f"{title}: {label}", unit=unit),
        )
    else:
        write_atomically(path, lambda s: diff_flamegraph.render_html(trees, s, title=title))


def _side(paths: tuple[str, ...]) -> str:
    """How a title names one side: the file, or the directory and how many runs it held."""
    if len(paths) == 1:
        return paths[0]
    folder = os.path.dirname(paths[0])
    if all(os.path.dirname(p) == folder for p in paths):
        return f"{folder or '.'}/ ({len(paths)} runs)"
    return f"{paths[0]} (+{len(paths) - 1} runs)"


def write_text(path: str, write: Callable[[TextIO], None]) -> None:
    """Like `write_atomically` for a writer of UTF-8 text."""

    def encode(stream: BinaryIO) -> None:
        text = io.TextIOWrapper(stream, encoding="utf-8", newline="\n")
        write(text)
        text.flush()
        text.detach()

    write_atomically(path, encode)
