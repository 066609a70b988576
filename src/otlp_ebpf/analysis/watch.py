"""Findings over a sliding window, told once: which of `analyze`'s findings are new.

The agent runs analyze's inspections every interval over its last intervals. A fault that
lasts is found again at every interval, and its rows stay in the window for as long as the
window is long after it stopped: the same finding, seen again within that time (or flapping
in and out of it), belongs to the same episode and is told once. An episode is known by the
finding's kind and the series its main effect is on (`syscall_errors` on
`syscalls.errors{syscall=openat}`); it closes once the finding has not been seen for a
whole window, and a later sighting is a new episode.

A finding about the same subject (the same syscall, process or connection) as an open episode
belongs to it too: when an errno storm of `openat` stops, the window holds the storm as its
longest regime and the inspections see `openat` calls falling back to nothing; that is the
end of the episode already told, not news.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from otlp_ebpf.analysis.inspections import Finding

# A symptom (what users of the target feel: errors, latency, fewer calls, a stall) is
# critical; a cause found alone (a cpu hog, a leak, retransmits) is a warning.
SEVERITIES = ("critical", "warning")


def severity_of(finding: Finding) -> str:
    return "critical" if finding.symptom else "warning"


def subject_of(finding: Finding) -> frozenset[tuple[str, str]]:
    """What the finding is about: the labels of its main effect's series (none: the whole
    target)."""
    if not finding.effects:
        return frozenset()
    return frozenset(finding.effects[0].series.labels.items())


def finding_key(finding: Finding) -> str:
    """What makes two sightings the same finding: its kind and its main effect's series."""
    if finding.effects:
        return f"{finding.kind} {finding.effects[0].series.key}"
    return f"{finding.kind} {finding.summary}"


@dataclass(frozen=True)
class FindingEvent:
    """A finding told for the first time: times in seconds from the agent's start, the
    interval it was found at, and the recording that will hold its window ("" for none)."""

    finding: Finding
    key: str
    severity: str
    seq: int
    start_s: float
    end_s: float
    started_unix_ns: int  # the agent's start, to turn the times into timestamps
    recording: str = ""

    @property
    def kind(self) -> str:
        return self.finding.kind

    def unix_ns(self, t_s: float) -> int:
        return self.started_unix_ns + int(t_s * 1e9)


@dataclass
class Episode:
    key: str
    first_seq: int
    last_seq: int
    subject: frozenset[tuple[str, str]] = frozenset()
    sightings: int = 1

    def seen(self, seq: int) -> bool:
        """Seen again at `seq`; False when it was already seen then (one sighting a seq)."""
        if self.last_seq == seq:
            return False
        self.last_seq = seq
        self.sightings += 1
        return True


class Episodes:
    """Open episodes by key; `see` returns the findings that open a new one."""

    def __init__(self, quiet_intervals: int) -> None:
        self.quiet = max(1, quiet_intervals)
        self.open: dict[str, Episode] = {}
        self.repeats = 0  # sightings of an open episode, not told again

    def see(self, findings: Iterable[Finding], seq: int) -> list[Finding]:
        self._close_quiet(seq)
        new = []
        for finding in findings:
            key = finding_key(finding)
            subject = subject_of(finding)
            episode = self.open.get(key) or self._about(subject, seq)
            if episode is not None:
                self.repeats += episode.seen(seq)
                continue
            self.open[key] = Episode(key, seq, seq, subject)
            new.append(finding)
        return new

    def _about(self, subject: frozenset[tuple[str, str]], seq: int) -> Episode | None:
        """An episode opened before this interval about the same subject."""
        if not subject:
            return None
        for episode in self.open.values():
            if episode.subject == subject and episode.first_seq < seq:
                return episode
        return None

    def _close_quiet(self, seq: int) -> None:
        for key in [k for k, e in self.open.items() if seq - e.last_seq > self.quiet]:
            del self.open[key]


@dataclass
class WatchCounts:
    """What the watch did so far (read by the self-metrics)."""

    findings: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, severity)
    repeats: int = 0  # sightings of a finding already told
    bursts: int = 0
    recordings: int = 0
    recording_errors: int = 0
    analysis_errors: int = 0  # intervals the inspections failed on (warned about once)
    sampling_artifacts: int = 0  # findings left out: the window's syscalls were estimates
    analysis_s: float = 0.0  # CPU seconds spent in the inspections
    last_analysis_s: float = 0.0
