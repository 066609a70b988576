"""Findings: deterministic inspections over a recording's anomalies, one rule per symptom.

A symptom is what a user of the target feels: syscall errors up, syscall latency up, fewer
calls, fewer bytes on a connection, a process that stopped running for a while. For each
one the rules look for causes in the same window: retransmits, drops and resets, a process
or a function taking more CPU, memory growing and page faults, an errno surge elsewhere.
Causes are ranked by temporal overlap with the symptom, lead (a cause starts before or with
its effect, never clearly after), and magnitude. An anomaly that can be a cause and explains
no symptom is a finding of its own (a CPU hog, a leak, a retransmit storm).

Every number in a finding comes from the rows: `evidence` holds the rows of the window and
the baseline they are compared with.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats as sps

from otlp_ebpf.analysis.anomalies import Anomaly
from otlp_ebpf.analysis.series import Timeline
from otlp_ebpf.model import (
    MemSnapshot,
    NetSnapshot,
    RecordSnapshot,
    Snapshot,
    SyscallsSnapshot,
)

EVIDENCE_ROWS_BEFORE = 3
EVIDENCE_ROWS_MAX = 14
# Findings judged from the whole run (a snapshot without a timeline): a floor well above
# what a healthy program does (an interpreter's start-up fails a few hundred stat calls).
AGGREGATE_MIN_ERRORS = 1000
AGGREGATE_MIN_ERROR_SHARE = 0.5
AGGREGATE_MIN_RETRANSMITS = 10
# Syscalls whose duration and rate the program chooses (it sleeps, polls or waits for a
# child): slower or fewer of them is no symptom. A host busy with other work slows them the
# most, and they would otherwise top every list.
WAITING_SYSCALLS = frozenset(
    {
        "nanosleep",
        "clock_nanosleep",
        "poll",
        "ppoll",
        "select",
        "pselect6",
        "epoll_wait",
        "epoll_pwait",
        "epoll_pwait2",
        "futex",
        "futex_waitv",
        "wait4",
        "waitid",
        "pause",
        "rt_sigsuspend",
        "rt_sigtimedwait",
        "sched_yield",
        "io_getevents",
        "io_uring_enter",
    }
)
# Lock words: their calls, errors (EAGAIN when the word changed before the wait, ETIMEDOUT)
# and durations are the lock protocol's normal answers, which contention multiplies; a lock
# shows as off-CPU time at its waiting site instead (`record --off-cpu`).
LOCK_SYSCALLS = frozenset({"futex", "futex_waitv"})
# A blocking site (docs/snapshot.md, `cpu.blocked_ns`) that waits for a lock: a futex wait,
# or a mutex, rwlock or spinlock function by name ("clock" is no lock).
_LOCK_SITE = re.compile(
    r"\((?:futex|futex_waitv|flock)\)$|mutex|rwsem|rwlock|spin_?lock|(?<!c)lock_wait"
)
# Off-CPU causes that never make a finding alone: blocked time of a process, or at a site
# other than a lock, moves with what the program waits for (its clients, its timers).
CAUSE_ONLY = frozenset({"off_cpu", "blocked"})
# "Fewer calls" means a quarter or less of the baseline: a loop slowed by a busy host for a
# second (a third of its rate, measured) is not yet a symptom worth a finding.
FEWER_CALLS_SHARE = 0.25


@dataclass(frozen=True)
class Cause:
    """An anomaly offered as the reason for a symptom, with how well it fits."""

    kind: str
    anomaly: Anomaly
    overlap: float  # share of the symptom's window the cause covers
    lead_s: float  # how long before the symptom it started (negative: after)
    total: float  # events (or bytes) in the symptom's window; the peak for levels
    phrase: str  # "while port 8080 retransmitted 41 segments"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "phrase": self.phrase,
            "overlap": round(self.overlap, 3),
            "lead_s": round(self.lead_s, 3),
            "total": _number(self.total),
            "anomaly": self.anomaly.to_dict(),
        }


@dataclass(frozen=True)
class Evidence:
    """The rows a finding rests on: one column per series, values as in the rows."""

    columns: tuple[str, ...]
    units: tuple[str, ...]
    rows: tuple[tuple[float, ...], ...]  # t_s first, then one value per column
    numbers: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": ["t_s", *self.columns],
            "units": ["s", *self.units],
            "rows": [[_number(v) for v in row] for row in self.rows],
            "numbers": dict(self.numbers),
        }


@dataclass(frozen=True)
class Finding:
    kind: str
    summary: str
    start_s: float
    end_s: float
    effects: tuple[Anomaly, ...]
    causes: tuple[Cause, ...]
    evidence: Evidence
    confidence: float
    symptom: bool  # a symptom with its causes ranks above a cause found alone
    strength: float
    rank: int = 0

    @property
    def cause(self) -> Cause | None:
        return self.causes[0] if self.causes else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "kind": self.kind,
            "summary": self.summary,
            "start_s": round(self.start_s, 6),
            "end_s": round(self.end_s, 6),
            "cause": self.cause.to_dict() if self.cause else None,
            "other_causes": [c.to_dict() for c in self.causes[1:]],
            "effects": [a.to_dict() for a in self.effects],
            "evidence": self.evidence.to_dict(),
            "confidence": round(self.confidence, 3),
        }


def _number(value: float) -> float | int:
    if isinstance(value, float) and math.isnan(value):
        return float("nan")
    if float(value).is_integer() and abs(value) < 2**53:
        return int(value)
    return float(f"{value:.6g}")


# ---------------------------------------------------------------- what an anomaly means


def cause_kind(anomaly: Anomaly) -> str | None:
    """The kind of cause an anomaly can be, or None."""
    s = anomaly.series
    if anomaly.direction != "up":
        return None
    if s.labels.get("syscall") in LOCK_SYSCALLS:
        return None
    if (s.signal, s.name) == ("cpu", "blocked"):
        return "lock_wait" if is_lock_site(s.labels.get("site", "")) else "blocked"
    table = {
        ("net", "retransmits"): "retransmits",
        ("net", "drops"): "drops",
        ("net", "resets"): "resets",
        ("cpu", "function"): "hot_function",
        ("cpu", "off_cpu"): "off_cpu",
        ("syscalls", "errors"): "errno_surge",
        ("mem", "outstanding_bytes"): "memory_growth",
        ("mem", "page_faults"): "page_faults",
    }
    if (s.signal, s.name) == ("cpu", "samples"):
        return "cpu_hog" if "pid" in s.labels else "cpu_saturation"
    return table.get((s.signal, s.name))


def symptom_kind(anomaly: Anomaly, timeline: Timeline) -> str | None:
    """The symptom an anomaly shows, or None."""
    s = anomaly.series
    key = (s.signal, s.name, anomaly.direction)
    if s.labels.get("syscall") in LOCK_SYSCALLS:
        return None
    if s.labels.get("syscall") in WAITING_SYSCALLS and key != ("syscalls", "errors", "up"):
        return None  # how long (and how often) a program waits is its own choice
    if (
        key == ("syscalls", "calls", "down")
        and anomaly.observed > FEWER_CALLS_SHARE * anomaly.baseline
    ):
        return None
    if key == ("syscalls", "errors", "up"):
        return "syscall_errors"
    if key == ("syscalls", "p99_ns", "up"):
        return "syscall_latency"
    if key == ("syscalls", "calls", "down"):
        return "fewer_calls"
    if key == ("net", "bytes", "down"):
        return "throughput_down"
    if key == ("cpu", "samples", "down") and "pid" in s.labels:
        # Stalled, not gone: it ran again before the end (a process that exits stops too).
        resumed = anomaly.last_row < len(timeline.ends) - 1
        if resumed and anomaly.observed <= 0.1 * anomaly.baseline:
            return "process_stalled"
    return None


def is_lock_site(site: str) -> bool:
    """Whether a blocking site waits for a lock."""
    return _LOCK_SITE.search(site) is not None


# ---------------------------------------------------------------- the inspections


@dataclass(frozen=True)
class Context:
    timeline: Timeline
    snapshot: Snapshot
    comms: Mapping[str, str]

    def process(self, pid: str) -> str:
        comm = self.comms.get(pid)
        return f"pid {pid} ({comm})" if comm else f"pid {pid}"


def inspect(snapshot: Snapshot, timeline: Timeline, anomalies: Sequence[Anomaly]) -> list[Finding]:
    """Findings from a timeline's anomalies, ranked (rank 1 first)."""
    context = Context(timeline, snapshot, {str(p.pid): p.comm for p in snapshot.processes})
    used: set[int] = set()
    findings: list[Finding] = []
    symptoms = [a for a in anomalies if symptom_kind(a, timeline) is not None]
    for symptom in symptoms:
        kind = symptom_kind(symptom, timeline)
        assert kind is not None
        causes = _causes_of(symptom, anomalies, context)
        used.add(id(symptom))
        used.update(id(c.anomaly) for c in causes)
        findings.append(_symptom_finding(kind, symptom, _shown(causes), context))
    for lone in sorted(anomalies, key=_lone_priority):
        kind = cause_kind(lone)
        if kind is None or kind in CAUSE_ONLY or id(lone) in used:
            continue
        related = [
            c
            for c in _causes_of(lone, anomalies, context)
            if id(c.anomaly) not in used and c.anomaly is not lone
        ]
        used.add(id(lone))
        used.update(id(c.anomaly) for c in related)
        findings.append(_cause_finding(kind, lone, _shown(related), context))
    findings.sort(key=lambda f: (not f.symptom, -f.strength, f.start_s, f.summary))
    return [_ranked(f, i + 1) for i, f in enumerate(findings)]


# A cause found alone claims its related anomalies in this order: the process before the
# function it spends its time in, before the targets' total. Growing memory comes before a
# busy process: new pages are faulted in and zeroed on the process's own CPU time, so a leak
# makes its process busy, while a busy process does not make memory grow.
_LONE_ORDER = (
    "memory_growth",
    "cpu_hog",
    "lock_wait",
    "retransmits",
    "drops",
    "resets",
    "errno_surge",
    "page_faults",
    "hot_function",
    "cpu_saturation",
)


def _lone_priority(anomaly: Anomaly) -> tuple[int, float]:
    kind = cause_kind(anomaly)
    order = _LONE_ORDER.index(kind) if kind in _LONE_ORDER else len(_LONE_ORDER)
    # A total (no labels) after the labelled series it sums.
    return order * 2 + (0 if anomaly.series.labels else 1), -anomaly.score


def _ranked(finding: Finding, rank: int) -> Finding:
    return Finding(**{**finding.__dict__, "rank": rank})


def _causes_of(effect: Anomaly, anomalies: Sequence[Anomaly], context: Context) -> list[Cause]:
    """Anomalies that can be causes, overlap the effect and do not start clearly after it."""
    tolerance = max(context.timeline.interval_s, 0.5)
    causes = []
    for candidate in anomalies:
        kind = cause_kind(candidate)
        if kind is None or candidate is effect:
            continue
        overlap = _overlap(effect, candidate)
        lead = effect.start_s - candidate.start_s
        if overlap <= 0.0 or lead < -tolerance:
            continue
        total = _window_total(candidate, effect.start_s, effect.end_s, context.timeline)
        phrase = _cause_phrase(kind, candidate, total, context)
        causes.append(Cause(kind, candidate, overlap, lead, total, phrase))
    if effect.series.signal in ("net", "syscalls"):
        taken = {c.anomaly.series.key for c in causes}
        causes.extend(c for c in _rare_events(effect, context) if c.anomaly.series.key not in taken)
    causes.sort(key=lambda c: (-_fit(c), c.anomaly.series.key))
    return causes


# Retransmits, drops and resets are rare on a healthy connection, and under loss TCP backs
# off (200 ms, 400 ms, 800 ms ...), so a connection stalled by dropped packets shows one or
# two per row: too few for an anomaly of their own, yet their appearing with the symptom is
# the cause. Counted around the symptom's window against the rows outside it, before and
# after (an exact conditional binomial test of two Poisson counts).
RARE_EVENT_SERIES = {
    ("net", "retransmits"): "retransmits",
    ("net", "drops"): "drops",
    ("net", "resets"): "resets",
}
RARE_EVENT_MIN = 3
# The symptom's own connection is one hypothesis per kind, asked because of the symptom; the
# host's drop reasons are searched, several at a time, for one that fits: a stricter bar.
RARE_EVENT_P_SAME_CONNECTION = 0.01
RARE_EVENT_P = 0.001


def _rare_events(effect: Anomaly, context: Context) -> list[Cause]:
    timeline = context.timeline
    slack = max(timeline.interval_s, 0.5)
    lo, hi = effect.start_s - slack, effect.end_s + slack
    connection = effect.series.labels.get("connection")
    out = []
    for series in timeline.series:
        kind = RARE_EVENT_SERIES.get((series.signal, series.name))
        if kind is None or not series.labels:
            continue
        if "connection" in series.labels and series.labels["connection"] != connection:
            continue
        lengths = series.ends - series.starts
        counts = np.round(series.values * lengths)
        inside = (series.ends > lo) & (series.starts < hi)
        outside = ~inside
        k_in, k_out = int(counts[inside].sum()), int(counts[outside].sum())
        t_in, t_out = float(lengths[inside].sum()), float(lengths[outside].sum())
        if k_in < RARE_EVENT_MIN or t_out <= 0:
            continue
        share = t_in / (t_in + t_out)
        p_value = float(sps.binomtest(k_in, k_in + k_out, share, alternative="greater").pvalue)
        same_connection = connection is not None and series.labels.get("connection") == connection
        if p_value > (RARE_EVENT_P_SAME_CONNECTION if same_connection else RARE_EVENT_P):
            continue
        rows = np.flatnonzero(inside & (counts > 0))
        anomaly = Anomaly(
            series=series,
            start_s=float(series.starts[rows[0]]),
            end_s=float(series.ends[rows[-1]]),
            first_row=int(rows[0]),
            last_row=int(rows[-1]),
            baseline=k_out / t_out,
            baseline_mad=0.0,
            observed=k_in / t_in,
            peak=float(series.values[rows].max()),
            direction="up",
            p_value=p_value,
            q_value=p_value,
            score=min((k_in / t_in) / max(k_out / t_out, 1.0 / t_out), 1000.0),
        )
        phrase = _cause_phrase(kind, anomaly, float(k_in), context)
        overlap = _overlap(effect, anomaly)
        out.append(
            Cause(
                kind,
                anomaly,
                max(overlap, 0.01),
                effect.start_s - anomaly.start_s,
                float(k_in),
                phrase,
            )
        )
    return out


def _shown(causes: list[Cause]) -> list[Cause]:
    """A total (all connections, all processes) repeats the labelled series it sums: the
    labelled one is shown."""
    labelled = {
        (c.anomaly.signal, c.anomaly.series.name) for c in causes if c.anomaly.series.labels
    }
    return [
        c
        for c in causes
        if c.anomaly.series.labels or (c.anomaly.signal, c.anomaly.series.name) not in labelled
    ]


# How much a kind of cause says on its own: the targets' total CPU rising is less specific
# than the process or the function that made it rise.
_PLAUSIBILITY = {"cpu_saturation": 0.5, "off_cpu": 0.5, "blocked": 0.7}


def _fit(cause: Cause) -> float:
    # Overlap first, a cause that leads a little better than one that lags, then size.
    lead_factor = 1.0 if cause.lead_s >= 0 else 0.7
    plausible = _PLAUSIBILITY.get(cause.kind, 1.0)
    return cause.overlap * lead_factor * plausible * math.log1p(cause.anomaly.score)


def _overlap(effect: Anomaly, cause: Anomaly) -> float:
    start = max(effect.start_s, cause.start_s)
    end = min(effect.end_s, cause.end_s)
    span = max(effect.end_s - effect.start_s, 1e-9)
    return max(0.0, end - start) / span


def _window_total(anomaly: Anomaly, start_s: float, end_s: float, timeline: Timeline) -> float:
    """Events in [start_s, end_s] of a rate series (rate x row length); the peak of a level."""
    s = anomaly.series
    rows = [i for i in range(len(s.ends)) if s.ends[i] > start_s and s.starts[i] < end_s]
    values = s.values[rows]
    if s.nature != "rate":
        return float(np.nanmax(values)) if len(values) else 0.0
    lengths = s.ends[rows] - s.starts[rows]
    return float(np.round(np.nansum(values * lengths)))


# ---------------------------------------------------------------- sentences


def _window(a: float, b: float) -> str:
    return f"{a:.1f}-{b:.1f} s"


def _rate(value: float, unit: str) -> str:
    if unit == "B/s":
        return f"{_bytes(value)}/s"
    if unit == "B":
        return _bytes(value)
    if unit == "ns":
        return _duration(value)
    if unit == "s/s":
        return _blocked(value)
    return f"{_count(value)}/s"


def _blocked(seconds_per_s: float) -> str:
    """Blocked seconds per second: how many threads were blocked, on average."""
    return f"{seconds_per_s:.2g} s/s"


def _count(value: float) -> str:
    if abs(value) >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:.2g}" if abs(value) < 1 else f"{value:.1f}"


def _bytes(value: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def _duration(ns: float) -> str:
    for unit, size in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if ns >= size:
            return f"{ns / size:.3g} {unit}"
    return f"{ns:.0f} ns"


def _share_of_cpu(samples_per_s: float, context: Context) -> str:
    hz = context.timeline.cpu_hz
    return f"{100.0 * samples_per_s / hz:.0f}% of a CPU" if hz else f"{samples_per_s:.0f} samples/s"


def _subject(anomaly: Anomaly, context: Context) -> str:
    labels = anomaly.series.labels
    if "syscall" in labels:
        return labels["syscall"]
    if "connection" in labels:
        return f"connection {labels['connection']}"
    if "pid" in labels:
        return context.process(labels["pid"])
    if "function" in labels:
        return f"function {labels['function']}"
    if "reason" in labels:
        return labels["reason"]
    if "site" in labels:
        return f"blocking site {labels['site']}"
    return "all targets"


def _cause_phrase(kind: str, a: Anomaly, total: float, context: Context) -> str:
    labels = a.series.labels
    where = f" on {labels['connection']}" if "connection" in labels else ""
    if kind == "retransmits":
        return f"{_count(total)} segments were retransmitted{where}"
    if kind == "resets":
        return f"{_count(total)} resets were sent or received{where}"
    if kind == "drops":
        return f"the kernel dropped {_count(total)} packets ({labels.get('reason', '?')})"
    if kind == "cpu_hog":
        return f"{context.process(labels['pid'])} used {_share_of_cpu(a.observed, context)}"
    if kind == "cpu_saturation":
        before, now = _share_of_cpu(a.baseline, context), _share_of_cpu(a.observed, context)
        return f"the targets used {now} (from {before})"
    if kind == "hot_function":
        return (
            f"{labels['function']} grew from {_share_of_cpu(a.baseline, context)} to "
            f"{_share_of_cpu(a.observed, context)}"
        )
    if kind in ("lock_wait", "blocked"):
        what = "on a lock in" if kind == "lock_wait" else "in"
        return (
            f"threads blocked {what} {labels['site']} for {_blocked(a.observed)} "
            f"(from {_blocked(a.baseline)})"
        )
    if kind == "off_cpu":
        return (
            f"threads of {context.process(labels['pid'])} were blocked for "
            f"{_blocked(a.observed)} (from {_blocked(a.baseline)})"
        )
    if kind == "errno_surge":
        return f"{labels.get('syscall', '?')} failed {_count(total)} times"
    if kind == "memory_growth":
        return f"outstanding memory grew from {_bytes(a.baseline)} to {_bytes(a.peak)}"
    if kind == "page_faults":
        return f"page faults rose from {_count(a.baseline)}/s to {_count(a.observed)}/s"
    return a.series.key


def _change(a: Anomaly) -> str:
    unit = a.series.unit
    verb = "rose" if a.direction == "up" else "fell"
    return f"{verb} from {_rate(a.baseline, unit)} to {_rate(a.observed, unit)}"


def _symptom_sentence(kind: str, a: Anomaly, context: Context) -> str:
    subject = _subject(a, context)
    window = _window(a.start_s, a.end_s)
    if kind == "syscall_errors":
        return f"{subject} errors {_change(a)} during {window}{_errno_text(a, context)}"
    if kind == "syscall_latency":
        ratio = max(a.observed, 1.0) / max(a.baseline, 1.0)
        return (
            f"{subject} p99 latency rose {ratio:.0f}x ({_duration(a.baseline)} -> "
            f"{_duration(a.observed)}) during {window}"
        )
    if kind == "fewer_calls":
        return f"{subject} calls {_change(a)} during {window}"
    if kind == "throughput_down":
        return f"{subject} throughput {_change(a)} during {window}"
    return (
        f"{subject} stopped running during {window} (from {_share_of_cpu(a.baseline, context)} "
        f"to {_share_of_cpu(a.observed, context)})"
    )


def _errno_text(a: Anomaly, context: Context) -> str:
    errnos = _errno_counts(a, context.snapshot)
    total = sum(errnos.values())
    if not total:
        return ""
    name, n = max(errnos.items(), key=lambda kv: (kv[1], kv[0]))
    return f" ({name}: {100.0 * n / total:.0f}% of the run's {_count(total)} errors)"


def _errno_counts(a: Anomaly, snapshot: Snapshot) -> dict[str, int]:
    """The run's errno breakdown for the anomaly's syscall (the timeline counts errors per
    interval, the section names them for the whole run)."""
    section = snapshot.signals.get("syscalls") if isinstance(snapshot, RecordSnapshot) else snapshot
    if not isinstance(section, SyscallsSnapshot):
        return {}
    out: dict[str, int] = {}
    for stat in section.syscalls:
        if stat.name == a.series.labels.get("syscall"):
            for errno, n in stat.errno.items():
                out[errno] = out.get(errno, 0) + n
    return out


def _cause_sentence(kind: str, a: Anomaly, context: Context) -> str:
    window = _window(a.start_s, a.end_s)
    total = _window_total(a, a.start_s, a.end_s, context.timeline)
    if kind == "cpu_hog":
        return (
            f"{context.process(a.series.labels['pid'])} rose from "
            f"{_share_of_cpu(a.baseline, context)} to {_share_of_cpu(a.observed, context)} "
            f"during {window}"
        )
    if kind == "memory_growth":
        seconds = max(a.end_s - a.start_s, 1e-9)
        speed = (a.peak - a.baseline) / seconds
        return (
            f"outstanding memory grew from {_bytes(a.baseline)} to {_bytes(a.peak)} "
            f"during {window} ({_bytes(speed)}/s)"
        )
    return f"{_cause_phrase(kind, a, total, context)} during {window}"


# ---------------------------------------------------------------- building findings


def _symptom_finding(kind: str, symptom: Anomaly, causes: list[Cause], context: Context) -> Finding:
    summary = _symptom_sentence(kind, symptom, context)
    if causes:
        summary += f" while {causes[0].phrase}"
    evidence = _evidence([symptom, *(c.anomaly for c in causes[:2])], symptom, context)
    if kind == "syscall_errors":
        evidence = Evidence(
            evidence.columns,
            evidence.units,
            evidence.rows,
            {**evidence.numbers, "errno": _errno_counts(symptom, context.snapshot)},
        )
    best_fit = causes[0].overlap if causes else 0.0
    confidence = (1.0 - symptom.q_value) * (0.6 + 0.4 * best_fit)
    return Finding(
        kind=kind,
        summary=summary + ".",
        start_s=symptom.start_s,
        end_s=symptom.end_s,
        effects=(symptom,),
        causes=tuple(causes),
        evidence=evidence,
        confidence=confidence,
        symptom=True,
        strength=_strength(symptom),
    )


def _cause_finding(kind: str, anomaly: Anomaly, related: list[Cause], context: Context) -> Finding:
    summary = _cause_sentence(kind, anomaly, context)
    if related:
        summary += f" while {related[0].phrase}"
    alone = Cause(
        kind,
        anomaly,
        1.0,
        0.0,
        _window_total(anomaly, anomaly.start_s, anomaly.end_s, context.timeline),
        _cause_phrase(kind, anomaly, 0.0, context),
    )
    return Finding(
        kind=kind,
        summary=summary + ".",
        start_s=anomaly.start_s,
        end_s=anomaly.end_s,
        effects=(),
        causes=(alone, *related),
        evidence=_evidence([anomaly, *(c.anomaly for c in related[:2])], anomaly, context),
        confidence=(1.0 - anomaly.q_value) * 0.8,
        symptom=False,
        strength=_strength(anomaly),
    )


def _strength(anomaly: Anomaly) -> float:
    """Magnitude times duration: a fault that lasted outranks a brief excursion of the
    same size (a second of host contention against three of an errno storm)."""
    return anomaly.score * max(anomaly.end_s - anomaly.start_s, 1e-9)


def _evidence(columns: Iterable[Anomaly], main: Anomaly, context: Context) -> Evidence:
    """The rows around the main anomaly: a few before it (the baseline) and its first rows;
    the last row of the window closes the table when the window is longer."""
    chosen = list(dict.fromkeys(columns))
    n = len(context.timeline.ends)
    first = max(0, main.first_row - EVIDENCE_ROWS_BEFORE)
    indices = list(range(first, min(main.last_row, first + EVIDENCE_ROWS_MAX - 1) + 1))
    if indices[-1] < main.last_row:
        indices.append(main.last_row)
    indices = [i for i in indices if i < n]
    rows = tuple(
        (float(context.timeline.ends[i]), *(float(a.series.values[i]) for a in chosen))
        for i in indices
    )
    numbers = {
        a.series.key: {
            "baseline": _number(a.baseline),
            "observed": _number(a.observed),
            "peak": _number(a.peak),
            "unit": a.series.unit,
            "window_total": _number(_window_total(a, main.start_s, main.end_s, context.timeline)),
            "q_value": float(f"{a.q_value:.3g}"),
        }
        for a in chosen
    }
    return Evidence(
        tuple(a.series.key for a in chosen), tuple(a.series.unit for a in chosen), rows, numbers
    )


# ---------------------------------------------------------------- without a timeline


def aggregate_findings(snapshot: Snapshot) -> list[Finding]:
    """What the run's totals show on their own (no window: the whole run)."""
    sections: list[Snapshot] = (
        list(snapshot.signals.values()) if isinstance(snapshot, RecordSnapshot) else [snapshot]
    )
    findings: list[Finding] = []
    rules: dict[type, Callable[[Any, float], list[Finding]]] = {
        SyscallsSnapshot: _aggregate_errors,
        NetSnapshot: _aggregate_retransmits,
        MemSnapshot: lambda _s, _d: [],
    }
    for section in sections:
        rule = rules.get(type(section))
        if rule is not None:
            findings.extend(rule(section, snapshot.duration_s))
    findings.sort(key=lambda f: (-f.strength, f.summary))
    return [_ranked(f, i + 1) for i, f in enumerate(findings)]


def _aggregate_errors(section: SyscallsSnapshot, duration: float) -> list[Finding]:
    totals: dict[str, list[int]] = {}
    errnos: dict[str, dict[str, int]] = {}
    for stat in section.syscalls:
        pair = totals.setdefault(stat.name, [0, 0])
        pair[0] += stat.count
        pair[1] += stat.errors
        for errno, n in stat.errno.items():
            errnos.setdefault(stat.name, {})[errno] = errnos.get(stat.name, {}).get(errno, 0) + n
    out = []
    for name, (calls, errors) in sorted(totals.items()):
        if errors < AGGREGATE_MIN_ERRORS or errors < AGGREGATE_MIN_ERROR_SHARE * calls:
            continue
        share = errors / calls
        top = max(errnos.get(name, {"?": errors}).items(), key=lambda kv: (kv[1], kv[0]))
        summary = (
            f"{name} failed {errors:,} of {calls:,} times ({100 * share:.0f}%) over the run, "
            f"mostly {top[0]} ({top[1]:,})."
        )
        evidence = Evidence(
            ("calls", "errors"),
            ("1", "1"),
            ((duration, float(calls), float(errors)),),
            {"syscall": name, "errno": errnos.get(name, {})},
        )
        out.append(
            Finding(
                "syscall_errors",
                summary,
                0.0,
                duration,
                (),
                (),
                evidence,
                share,
                True,
                float(errors),
            )
        )
    return out


def _aggregate_retransmits(section: NetSnapshot, duration: float) -> list[Finding]:
    out = []
    for conn in section.connections:
        if conn.retransmits < AGGREGATE_MIN_RETRANSMITS:
            continue
        label = f"{conn.comm} {conn.laddr}:{conn.lport} > {conn.raddr}:{conn.rport}"
        summary = (
            f"{label} retransmitted {conn.retransmits:,} segments while moving "
            f"{_bytes(conn.tx_bytes + conn.rx_bytes)} over the run."
        )
        evidence = Evidence(
            ("tx_bytes", "rx_bytes", "retransmits"),
            ("B", "B", "1"),
            ((duration, float(conn.tx_bytes), float(conn.rx_bytes), float(conn.retransmits)),),
            {"connection": label, "pid": conn.pid},
        )
        out.append(
            Finding(
                "retransmits",
                summary,
                0.0,
                duration,
                (),
                (),
                evidence,
                0.5,
                True,
                float(conn.retransmits),
            )
        )
    return out
