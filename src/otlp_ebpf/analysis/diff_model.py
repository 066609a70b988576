"""What a diff reads and produces: the runs of each side, the options, rows, sections and the
report. analysis/diff.py (stacks) and analysis/summary_diff.py (syscalls, net) fill them in;
the gate and the diff formatters read only these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from otlp_ebpf.model import Snapshot

DiffBy = Literal["function", "stack"]


@dataclass(frozen=True)
class RunSet:
    """The snapshots of one side of a diff, all of the same kind."""

    label: str
    paths: tuple[str, ...]
    snapshots: tuple[Snapshot, ...]

    @property
    def kind(self) -> str:
        return self.snapshots[0].kind

    @property
    def repeated(self) -> bool:
        return len(self.snapshots) > 1


@dataclass(frozen=True)
class DiffRow:
    """One function, stack, syscall or connection group, before and after.

    Values are in the section's unit: share points for shares, percent of BASE for relative
    metrics (latency, rates). `other` is the companion value shown next to the gated one
    (inclusive share beside self share), or None. `via` is, for a function whose inclusive
    share regressed, the callee path below it through which most of the growth came (empty
    when the growth is its own self time)."""

    key: str
    before: float
    after: float
    delta: float
    ci_low: float
    ci_high: float
    p_change: float | None
    p_beyond: float | None
    regression: bool
    events_before: int = 0
    events_after: int = 0
    other: tuple[float, float] | None = None
    via: tuple[str, ...] = ()

    @property
    def confidence(self) -> float | None:
        """How sure we are that the value changed at all (1 - two-sided p)."""
        return None if self.p_change is None else 1.0 - self.p_change


@dataclass(frozen=True)
class DiffSection:
    """All rows of one metric of one profile, e.g. on-CPU self share per function."""

    name: str
    title: str
    metric: str
    relative: bool
    rows: tuple[DiffRow, ...]
    gated: bool = True
    method: str = "binomial"
    other_label: str = ""
    value_unit: str = "%"
    key_label: str = "function"

    @property
    def delta_unit(self) -> str:
        return "%" if self.relative else "pts"

    def regressions(self) -> list[DiffRow]:
        """Rows that grew, largest growth first."""
        return sorted((r for r in self.rows if r.delta > 0), key=lambda r: -r.delta)

    def improvements(self) -> list[DiffRow]:
        """Rows that shrank, largest drop first."""
        return sorted((r for r in self.rows if r.delta < 0), key=lambda r: r.delta)


@dataclass(frozen=True)
class DiffOptions:
    """What to compare and how strictly. `threshold` (the gate; None for no gate) is in each
    section's delta unit: points of share, or percent of BASE for relative metrics."""

    by: DiffBy = "function"
    metric: str = ""
    threshold: float | None = None
    confidence: float = 0.95
    min_share: float = 0.0
    profiles: tuple[str, ...] = ()

    @property
    def margin(self) -> float:
        """How much growth is tolerated before noise is even considered."""
        return self.threshold or 0.0


@dataclass(frozen=True)
class DiffReport:
    """Everything `diff` found; formatters and the gate read only this."""

    kind: str
    by: str
    metric: str
    base: tuple[str, ...]
    new: tuple[str, ...]
    confidence: float
    threshold: float | None
    sections: tuple[DiffSection, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)
    repeated: bool = False
