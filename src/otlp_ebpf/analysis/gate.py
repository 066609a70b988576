"""The CI regression gate: one verdict, with the reason in one line."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from otlp_ebpf.analysis.diff import DiffReport, DiffRow, DiffSection


@dataclass(frozen=True)
class Verdict:
    """`failed` is what the exit code reports; `reason` is the line printed on stderr."""

    failed: bool
    threshold: float | None
    reason: str
    regressions: tuple[tuple[DiffSection, DiffRow], ...] = ()


def flagged_rows(report: DiffReport) -> list[tuple[DiffSection, DiffRow]]:
    """Every row of a gated section that grew beyond the threshold and the noise, worst first
    (on a tie, a self share before an inclusive one: it is the more precise place)."""
    found = [(s, r) for s in report.sections if s.gated for r in s.rows if r.regression]
    return sorted(found, key=lambda pair: (-pair[1].delta, pair[0].metric == "total"))


def evaluate(report: DiffReport) -> Verdict:
    """Judge a diff against the threshold it was built with; without one nothing fails."""
    threshold = report.threshold
    if threshold is None:
        return Verdict(False, None, _summary_without_gate(report))
    flagged = flagged_rows(report)
    if flagged:
        section, worst = _origin(flagged[0], flagged)
        more = f" (+{len(flagged) - 1} more)" if len(flagged) > 1 else ""
        reason = (
            f"REGRESSION: {worst.key} {section.metric} {_fmt(worst.before, section)} -> "
            f"{_fmt(worst.after, section)} ({_signed(worst.delta, section)}"
            f"{_self_note(worst, section, report, threshold)}){_via(worst)} in {section.name}, "
            f"beyond the {threshold:g} {section.delta_unit} threshold"
            f"{_confidence_note(worst, report)}{more}"
        )
        return Verdict(True, threshold, reason, tuple(flagged))
    return Verdict(False, threshold, _pass_reason(report, threshold))


def _origin(
    worst: tuple[DiffSection, DiffRow], flagged: list[tuple[DiffSection, DiffRow]]
) -> tuple[DiffSection, DiffRow]:
    """Where a regression of inclusive share comes from. Growth below a function shows in
    every caller above it: walk down the growth path while the next callee regressed too,
    then prefer that function's self row when its own time is what grew. A path leading
    back to a function already passed (recursion, or a frame calling a namesake: the vDSO's
    clock_gettime) ends the walk there."""
    section, row = worst
    if section.metric != "total":
        return worst
    regressed = {(s.name, s.metric, r.key): (s, r) for s, r in flagged}
    passed = {row.key}
    while row.via and row.via[0] not in passed and (section.name, "total", row.via[0]) in regressed:
        section, row = regressed[(section.name, "total", row.via[0])]
        passed.add(row.key)
    if not row.via and (section.name, "self", row.key) in regressed:
        return regressed[(section.name, "self", row.key)]
    return section, row


def _self_note(row: DiffRow, section: DiffSection, report: DiffReport, threshold: float) -> str:
    """Beside a regression of inclusive share: what the function's own time did."""
    if section.metric != "total":
        return ""
    own = next(
        (
            r
            for s in report.sections
            if s.name == section.name and s.metric == "self"
            for r in s.rows
            if r.key == row.key
        ),
        None,
    )
    if own is None or (not own.regression and abs(own.delta) <= threshold):
        return "; self unchanged"
    return f"; self {_signed(own.delta, section)}"


def _via(row: DiffRow) -> str:
    """The callee the growth went through; the whole path down to where the time was spent
    (often deep in libc and the kernel) stays in the JSON and Markdown details."""
    return f" via {row.via[0]}" if row.via else ""


def _pass_reason(report: DiffReport, threshold: float) -> str:
    largest = _largest_growth(report)
    if largest is None:
        return f"OK: nothing grew (threshold {threshold:g})"
    section, row = largest
    why = (
        "within the threshold"
        if row.delta <= threshold
        else f"not beyond noise at {report.confidence:.0%} confidence"
    )
    return (
        f"OK: largest growth {row.key} {_signed(row.delta, section)} in {section.name} is "
        f"{why} ({threshold:g} {section.delta_unit})"
    )


def _summary_without_gate(report: DiffReport) -> str:
    largest = _largest_growth(report)
    if largest is None:
        return "no gate (--fail-on-regression not set): nothing grew"
    section, row = largest
    return (
        f"no gate (--fail-on-regression not set): largest growth {row.key} "
        f"{_signed(row.delta, section)} in {section.name}"
    )


def _largest_growth(report: DiffReport) -> tuple[DiffSection, DiffRow] | None:
    grown = [(s, r) for s in report.sections if s.gated for r in s.rows if r.delta > 0]
    return max(grown, key=lambda pair: pair[1].delta, default=None)


def _confidence_note(row: DiffRow, report: DiffReport) -> str:
    if row.p_beyond is None:
        return " (single runs: no noise estimate)"
    return f" at {report.confidence:.0%} confidence (p={row.p_beyond:.2g})"


def _fmt(value: float, section: DiffSection) -> str:
    if section.relative:
        return f"{value:,.4g}{section.value_unit}"
    return f"{value:.2f}%"


def _signed(delta: float, section: DiffSection) -> str:
    if math.isinf(delta):
        return "new, from zero"
    return f"{delta:+.2f} {section.delta_unit}"


def to_document(report: DiffReport, verdict: Verdict) -> dict[str, Any]:
    """The machine-readable diff (`--json`, `-o diff.json`): verdict first, then every row."""
    return {
        "verdict": _verdict_word(verdict),
        "failed": verdict.failed,
        "reason": verdict.reason,
        "threshold": verdict.threshold,
        "confidence": report.confidence,
        "kind": report.kind,
        "by": report.by,
        "metric": report.metric,
        "base": list(report.base),
        "new": list(report.new),
        "repeated": report.repeated,
        "notes": list(report.notes),
        "regressions": [
            {
                "section": s.name,
                "metric": s.metric,
                "key": r.key,
                "delta": _finite(r.delta),
                "via": list(r.via),
            }
            for s, r in verdict.regressions
        ],
        "sections": [_section_document(s) for s in report.sections],
    }


def _verdict_word(verdict: Verdict) -> str:
    if verdict.threshold is None:
        return "no-gate"
    return "fail" if verdict.failed else "pass"


def _section_document(section: DiffSection) -> dict[str, Any]:
    return {
        "name": section.name,
        "title": section.title,
        "metric": section.metric,
        "delta_unit": section.delta_unit,
        "value_unit": section.value_unit,
        "gated": section.gated,
        "noise_model": section.method,
        "rows": [_row_document(r, section) for r in section.rows],
    }


def _row_document(row: DiffRow, section: DiffSection) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "key": row.key,
        "before": row.before,
        "after": row.after,
        "delta": _finite(row.delta),
        "ci": [_finite(row.ci_low), _finite(row.ci_high)],
        "p_value": row.p_change,
        "p_beyond_threshold": row.p_beyond,
        "confidence": row.confidence,
        "regression": row.regression,
    }
    if row.via:
        doc["via"] = list(row.via)
    if row.events_before or row.events_after:
        doc["events"] = [row.events_before, row.events_after]
    if section.other_label and row.other is not None:
        doc[section.other_label] = {"before": row.other[0], "after": row.other[1]}
    return doc


def _finite(value: float) -> float | None:
    # JSON has no infinity; a value that appeared from nothing has no finite relative change.
    return value if math.isfinite(value) else None
