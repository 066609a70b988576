"""`analyze`: a snapshot in, anomalies and ranked findings out (no I/O here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from otlp_ebpf.analysis.anomalies import Anomaly, DetectorSettings, detect
from otlp_ebpf.analysis.inspections import Finding, aggregate_findings, inspect
from otlp_ebpf.analysis.series import Timeline, timeline_of
from otlp_ebpf.errors import UsageError
from otlp_ebpf.model import Snapshot

NO_TIMELINE_NOTE = (
    "this snapshot has no timeline: only the whole-run inspections ran; the timeline ones "
    "(anomalies, windows, causes) need a recording (`otlp-ebpf record`) or --interval"
)


@dataclass(frozen=True)
class Analysis:
    snapshot: Snapshot
    timeline: Timeline | None
    anomalies: list[Anomaly]
    findings: list[Finding]
    since: float | None = None
    until: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_document(self) -> dict[str, Any]:
        return {
            "kind": self.snapshot.kind,
            "window": {"since_s": self.since, "until_s": self.until},
            "series": len(self.timeline.series) if self.timeline else 0,
            "rows": len(self.timeline.ends) if self.timeline else 0,
            "anomalies": [a.to_dict() for a in self.anomalies],
            "findings": [f.to_dict() for f in self.findings],
            "notes": list(self.notes),
        }


def analyze(
    snapshot: Snapshot,
    since: float | None = None,
    until: float | None = None,
    settings: DetectorSettings | None = None,
) -> Analysis:
    """Anomalies of every series in the window and the findings they add up to."""
    if since is not None and until is not None and until <= since:
        raise UsageError(f"--until ({until:g}) must be after --since ({since:g})")
    timeline = timeline_of(snapshot, since, until)
    if timeline is None:
        return Analysis(
            snapshot, None, [], aggregate_findings(snapshot), since, until, [NO_TIMELINE_NOTE]
        )
    notes = list(timeline.notes)
    if len(timeline.ends) == 0:
        notes.append("no timeline rows in the window")
    anomalies = detect(timeline, settings)
    findings = inspect(snapshot, timeline, anomalies)
    return Analysis(snapshot, timeline, anomalies, findings, since, until, notes)
