"""Compare two sets of snapshots: per-function (or per-stack) shares, before and after.

Each run is normalised to its own total, so a longer or busier run does not look like a
regression: the question is always "what fraction of the time (bytes, blocked time) went
where". A side may hold several runs of the same benchmark; their per-run shares then give
the run-to-run noise (see `stats`).

BASE and NEW are given as path specs (`expand_paths`): a file, a directory (every *.json in it),
a glob pattern, or a comma-separated list of any of those.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import fmean

from otlp_ebpf.analysis import stats, summary_diff
from otlp_ebpf.analysis.diff_model import (
    DiffBy,
    DiffOptions,
    DiffReport,
    DiffRow,
    DiffSection,
    RunSet,
)
from otlp_ebpf.errors import UsageError
from otlp_ebpf.model import (
    SIGNALS,
    MemSnapshot,
    RecordSnapshot,
    Snapshot,
    StackProfile,
    read_snapshot,
)

STACK_METRICS = ("self", "total")
DEFAULT_STACK_METRIC = "self+total"
UNKNOWN_FRAME = "[unknown]"


# ---------------------------------------------------------------- loading


def expand_paths(spec: str) -> list[str]:
    """Turn a BASE/NEW argument into snapshot paths, in a stable order."""
    paths: list[str] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if os.path.isdir(item):
            found = sorted(glob.glob(os.path.join(item, "*.json")))
            if not found:
                raise UsageError(f"{item}: directory holds no *.json snapshot")
            paths.extend(found)
        elif not os.path.exists(item) and glob.has_magic(item):
            found = sorted(glob.glob(item))
            if not found:
                raise UsageError(f"{item}: pattern matches no file")
            paths.extend(found)
        else:
            paths.append(item)
    if not paths:
        raise UsageError(f"{spec!r}: no snapshot given")
    return paths


def load_runs(spec: str, label: str) -> RunSet:
    """Read every snapshot of one side; they must all be of one kind."""
    paths = expand_paths(spec)
    snapshots = tuple(read_snapshot(p) for p in paths)
    kinds = sorted({s.kind for s in snapshots})
    if len(kinds) > 1:
        raise UsageError(f"{label} mixes snapshot kinds ({', '.join(kinds)}); compare one kind")
    return RunSet(label, tuple(paths), snapshots)


def recorded_signals(base: RunSet, new: RunSet, wanted: str | None) -> list[str]:
    """The signals every recording of both sides holds (or just `wanted`, checked)."""
    records = [s for s in (*base.snapshots, *new.snapshots) if isinstance(s, RecordSnapshot)]
    shared: list[str] = [name for name in SIGNALS if all(name in r.signals for r in records)]
    if wanted is not None:
        if wanted not in SIGNALS:
            raise UsageError(f"--signal: unknown signal {wanted!r}; known: {', '.join(SIGNALS)}")
        if wanted not in shared:
            raise UsageError(f"not every recording has a {wanted} section")
        return [wanted]
    if not shared:
        raise UsageError("BASE and NEW recordings share no signal to compare")
    return shared


def sections_of(runs: RunSet, signal: str) -> RunSet:
    """One signal's sections of a side's recordings, as a side of single-signal snapshots."""
    sections = tuple(s.signals[signal] for s in runs.snapshots if isinstance(s, RecordSnapshot))
    return RunSet(runs.label, runs.paths, sections)


def check_same_kind(base: RunSet, new: RunSet) -> None:
    if base.kind != new.kind:
        raise UsageError(
            f"cannot compare a {base.kind} snapshot with a {new.kind} snapshot",
            hint="BASE and NEW must come from the same collector",
        )


# ---------------------------------------------------------------- stack profiles


@dataclass(frozen=True)
class WeightedStack:
    """One stack of one run: the path (comm first), its weight and the sampled events behind
    it (samples, blocks, allocations: what a binomial noise model counts)."""

    path: tuple[str, ...]
    weight: float
    events: int


def stack_views(snapshot: Snapshot) -> dict[str, tuple[StackProfile, list[WeightedStack]]]:
    """Every flame-able profile of a snapshot, keyed by profile name."""
    views: dict[str, tuple[StackProfile, list[WeightedStack]]] = {}
    for profile in snapshot.stack_profiles():
        events = _event_counts(snapshot, profile)
        stacks = [
            WeightedStack((s.comm or f"[pid {s.pid}]", *s.frames), float(profile.weight(s)), n)
            for s, n in zip(profile.stacks, events, strict=True)
        ]
        views[profile.name] = (profile, stacks)
    return views


def _event_counts(snapshot: Snapshot, profile: StackProfile) -> list[int]:
    # The bytes view of a mem snapshot puts bytes in `count`; the allocations are the events.
    if isinstance(snapshot, MemSnapshot) and profile.name == "outstanding_bytes":
        return [a.count for a in snapshot.outstanding]
    return [s.count for s in profile.stacks]


@dataclass(frozen=True)
class RunShares:
    """One run of one profile, reduced to weight per key."""

    total: float
    events: int
    main: Mapping[str, float]
    other: Mapping[str, float]

    def share(self, key: str, *, other: bool = False) -> float:
        table = self.other if other else self.main
        return table.get(key, 0.0) / self.total if self.total else 0.0


def reduce_stacks(stacks: Iterable[WeightedStack], by: DiffBy, metric: str) -> RunShares:
    """Weights per function (self and inclusive) or per whole stack."""
    self_w: dict[str, float] = {}
    incl_w: dict[str, float] = {}
    total = 0.0
    events = 0
    for stack in stacks:
        total += stack.weight
        events += stack.events
        if by == "stack":
            key = ";".join(stack.path)
            self_w[key] = self_w.get(key, 0.0) + stack.weight
            continue
        leaf = stack.path[-1] if stack.path else UNKNOWN_FRAME
        self_w[leaf] = self_w.get(leaf, 0.0) + stack.weight
        # Recursion must not count a stack twice toward one function's inclusive share.
        for name in set(stack.path[1:]) or {leaf}:
            incl_w[name] = incl_w.get(name, 0.0) + stack.weight
    if by == "function" and metric == "total":
        return RunShares(total, events, incl_w, self_w)
    return RunShares(total, events, self_w, incl_w)


def compare_shares(
    key: str,
    before: Sequence[RunShares],
    after: Sequence[RunShares],
    options: DiffOptions,
    with_other: bool,
) -> DiffRow:
    """One row: mean per-run share on each side and the noise-aware test of its change."""
    xs = [r.share(key) for r in before]
    ys = [r.share(key) for r in after]
    test = share_test(xs, ys, before, after, options)
    other = None
    if with_other:
        other = (
            100.0 * fmean(r.share(key, other=True) for r in before),
            100.0 * fmean(r.share(key, other=True) for r in after),
        )
    return DiffRow(
        key=key,
        before=100.0 * fmean(xs),
        after=100.0 * fmean(ys),
        delta=100.0 * test.delta,
        ci_low=100.0 * test.ci_low,
        ci_high=100.0 * test.ci_high,
        p_change=test.p_change,
        p_beyond=test.p_beyond,
        regression=options.threshold is not None
        and test.delta > options.margin / 100.0
        and test.beyond(options.confidence),
        events_before=sum(r.events for r in before),
        events_after=sum(r.events for r in after),
        other=other,
    )


def share_test(
    xs: Sequence[float],
    ys: Sequence[float],
    before: Sequence[RunShares],
    after: Sequence[RunShares],
    options: DiffOptions,
) -> stats.ShiftTest:
    """Sampling noise always; run-to-run noise too when both sides were repeated."""
    margin = options.margin / 100.0
    n_before = sum(r.events for r in before)
    n_after = sum(r.events for r in after)
    sampling = stats.share_shift(
        fmean(xs), n_before, fmean(ys), n_after, margin=margin, confidence=options.confidence
    )
    if len(xs) < 2 or len(ys) < 2:
        return sampling
    runs = stats.runs_shift(xs, ys, margin=margin, confidence=options.confidence)
    return stats.most_conservative(runs, sampling)


def stack_sections(
    base: RunSet, new: RunSet, options: DiffOptions
) -> tuple[list[DiffSection], list[str]]:
    """Sections for every flame-able profile both sides have (cpu, off_cpu, mem views)."""
    base_views = [stack_views(s) for s in base.snapshots]
    new_views = [stack_views(s) for s in new.snapshots]
    names = profile_names(base_views, new_views, options.profiles)
    notes = missing_profile_notes(base_views, new_views, options.profiles)
    sections = []
    for name in names:
        # By default both self and inclusive (total) shares are gated: a function that grows
        # by calling a shared helper more keeps its self share, and the helper's self share
        # is spread over all its callers, so only the caller's total share shows the change.
        for metric in gated_stack_metrics(options):
            before = [reduce_stacks(_stacks_of(v, name), options.by, metric) for v in base_views]
            after = [reduce_stacks(_stacks_of(v, name), options.by, metric) for v in new_views]
            profile = _profile_of(base_views + new_views, name)
            sections.append(_stack_section(name, profile, before, after, options, metric))
    return sections, notes


def gated_stack_metrics(options: DiffOptions) -> tuple[str, ...]:
    """The metrics that get a section each: `--metric` narrows to one."""
    metric = stack_metric(options)
    return STACK_METRICS if metric == DEFAULT_STACK_METRIC else (metric,)


def _stack_section(
    name: str,
    profile: StackProfile,
    before: list[RunShares],
    after: list[RunShares],
    options: DiffOptions,
    metric: str,
) -> DiffSection:
    keys = sorted({k for r in (*before, *after) for k in r.main})
    with_other = options.by == "function"
    rows = [compare_shares(k, before, after, options, with_other) for k in keys]
    rows = [r for r in rows if max(r.before, r.after) >= options.min_share]
    what = "stack" if options.by == "stack" else f"{metric} share per function"
    repeated = len(before) > 1 and len(after) > 1
    return DiffSection(
        name=name,
        title=f"{name} ({profile.unit}): {what}",
        metric=metric,
        relative=False,
        rows=tuple(rows),
        method=(
            f"{stats.runs_method(len(before), len(after), options.confidence)}+binomial"
            if repeated
            else "binomial"
        ),
        other_label=("total" if metric == "self" else "self") if with_other else "",
        key_label=options.by,
    )


def stack_metric(options: DiffOptions) -> str:
    if options.by == "stack":
        if options.metric not in ("", "stack"):
            raise UsageError(f"--metric {options.metric} does not apply with --by stack")
        return "stack"
    metric = options.metric or DEFAULT_STACK_METRIC
    if metric not in (*STACK_METRICS, DEFAULT_STACK_METRIC):
        raise UsageError(
            f"--metric {metric} does not apply to stack profiles; use one of: "
            + ", ".join(STACK_METRICS)
        )
    return metric


def _stacks_of(
    views: Mapping[str, tuple[StackProfile, list[WeightedStack]]], name: str
) -> list[WeightedStack]:
    return views[name][1] if name in views else []


def _profile_of(
    views: Sequence[Mapping[str, tuple[StackProfile, list[WeightedStack]]]], name: str
) -> StackProfile:
    return next(v[name][0] for v in views if name in v)


def _present(views: Sequence[Mapping[str, object]]) -> list[str]:
    names: list[str] = []
    for view in views:
        names.extend(n for n in view if n not in names)
    return names


def profile_names(
    base_views: Sequence[Mapping[str, object]],
    new_views: Sequence[Mapping[str, object]],
    wanted: Sequence[str],
) -> list[str]:
    """Profiles present on both sides, in snapshot order, optionally narrowed to `wanted`."""
    in_new = set(_present(new_views))
    names = [n for n in _present(base_views) if n in in_new]
    if not wanted:
        return names
    unknown = [w for w in wanted if w not in names]
    if unknown:
        available = ", ".join(names) or "none"
        raise UsageError(f"no profile {', '.join(unknown)} on both sides; available: {available}")
    return [n for n in names if n in wanted]


def missing_profile_notes(
    base_views: Sequence[Mapping[str, object]],
    new_views: Sequence[Mapping[str, object]],
    wanted: Sequence[str],
) -> list[str]:
    """Say which profiles one side lacks, so a silent skip does not hide a change."""
    in_base, in_new = _present(base_views), _present(new_views)
    notes = [f"profile {n} only in BASE: not compared" for n in in_base if n not in in_new]
    notes += [f"profile {n} only in NEW: not compared" for n in in_new if n not in in_base]
    return [n for n in notes if not wanted or any(w in n for w in wanted)]


# ---------------------------------------------------------------- whole diff


def diff_runs(base: RunSet, new: RunSet, options: DiffOptions) -> DiffReport:
    """Compare two run sets of one kind; the entry point for the CLI and tests."""
    check_same_kind(base, new)
    if base.kind in ("syscalls", "net"):
        sections, notes = summary_diff.summary_sections(base, new, options)
        metric = summary_diff.summary_metric(base.kind, options.metric)
    else:
        sections, notes = stack_sections(base, new, options)
        metric = stack_metric(options)
    if not sections:
        raise UsageError(f"BASE and NEW share no {base.kind} profile to compare")
    if options.threshold is not None:
        sections = correct_for_many_rows(sections, options)
        if base.kind not in ("syscalls", "net"):
            sections = [trace_total_regressions(s, base, new) for s in sections]
    return DiffReport(
        kind=base.kind,
        by=options.by,
        metric=metric,
        base=base.paths,
        new=new.paths,
        confidence=options.confidence,
        threshold=options.threshold,
        sections=tuple(sections),
        notes=tuple(notes),
        repeated=base.repeated and new.repeated,
    )


def correct_for_many_rows(sections: list[DiffSection], options: DiffOptions) -> list[DiffSection]:
    """Keep the gate's false-alarm rate at 1 - confidence for the whole diff, not per row.

    A profile has many functions; testing each at 95 % would fail one clean run in several.
    Holm's step-down runs over every gated row that could be a regression at all: one that
    grew by more than the threshold (a share that ends below the threshold, or grew less,
    cannot be one). Rows that could not fail must not dilute the test of those that can:
    with self and inclusive shares both gated, most inclusive rows (main's is always 100 %)
    would otherwise halve the gate's power."""
    candidates = [
        (index, row)
        for index, section in enumerate(sections)
        if section.gated
        for row in section.rows
        if row.p_beyond is not None
        and (section.relative or row.after > options.margin)
        and row.delta > options.margin
    ]
    keep = stats.holm_rejects([row.p_beyond or 0.0 for _, row in candidates], options.confidence)
    demoted = {id(row) for (_, row), passed in zip(candidates, keep, strict=True) if not passed}
    if not demoted:
        return sections
    return [
        dataclasses.replace(
            section,
            rows=tuple(
                dataclasses.replace(r, regression=False) if id(r) in demoted else r
                for r in section.rows
            ),
        )
        for section in sections
    ]


def trace_total_regressions(section: DiffSection, base: RunSet, new: RunSet) -> DiffSection:
    """Give each function whose inclusive share regressed the callee path its growth came
    through (`DiffRow.via`), so the verdict can name where to look."""
    if section.metric != "total" or not any(r.regression for r in section.rows):
        return section
    before, after = pooled_stacks(base, section.name), pooled_stacks(new, section.name)
    rows = tuple(
        dataclasses.replace(r, via=growth_path(before, after, r.key)) if r.regression else r
        for r in section.rows
    )
    return dataclasses.replace(section, rows=rows)


def growth_path(
    before: Mapping[tuple[str, ...], float],
    after: Mapping[tuple[str, ...], float],
    function: str,
) -> tuple[str, ...]:
    """From `function` down, follow the callee whose inclusive share grew most, for as long
    as it grew more than the current frame's own self share did.

    Shares are of the whole profile, paths taken below the first (outermost) occurrence of
    `function` on each stack, so recursion does not count a stack twice."""
    below_before, below_after = _below(before, function), _below(after, function)
    path: tuple[str, ...] = ()
    while True:
        self_growth, child_growth = _growth_under(path, below_before, below_after)
        if not child_growth:
            return path
        child, growth = max(child_growth.items(), key=lambda item: (item[1], item[0]))
        if growth <= 0 or growth <= self_growth:
            return path
        path = (*path, child)


def _below(stacks: Mapping[tuple[str, ...], float], function: str) -> dict[tuple[str, ...], float]:
    """Callee paths below `function` (the comm at index 0 is not a frame) -> share."""
    suffixes: dict[tuple[str, ...], float] = {}
    for path, share in stacks.items():
        frames = path[1:]
        if function in frames:
            suffix = frames[frames.index(function) + 1 :]
            suffixes[suffix] = suffixes.get(suffix, 0.0) + share
    return suffixes


def _growth_under(
    prefix: tuple[str, ...],
    before: Mapping[tuple[str, ...], float],
    after: Mapping[tuple[str, ...], float],
) -> tuple[float, dict[str, float]]:
    """Growth of `prefix`'s own self share, and of each direct callee's inclusive share."""
    self_growth = 0.0
    children: dict[str, float] = {}
    for side, sign in ((after, 1.0), (before, -1.0)):
        for suffix, share in side.items():
            if suffix[: len(prefix)] != prefix:
                continue
            if len(suffix) == len(prefix):
                self_growth += sign * share
            else:
                child = suffix[len(prefix)]
                children[child] = children.get(child, 0.0) + sign * share
    return self_growth, children


def pooled_stacks(runs: RunSet, profile: str) -> dict[tuple[str, ...], float]:
    """Stack path -> share of the side's weight (0..1), runs pooled with equal weight each."""
    shares: dict[tuple[str, ...], float] = {}
    for snapshot in runs.snapshots:
        stacks = _stacks_of(stack_views(snapshot), profile)
        total = sum(s.weight for s in stacks)
        if not total:
            continue
        for s in stacks:
            shares[s.path] = shares.get(s.path, 0.0) + s.weight / total / len(runs.snapshots)
    return shares


def summed_stacks(runs: RunSet, profile: str) -> dict[tuple[str, ...], float]:
    """Stack path -> weight summed over the side's runs (for count-based outputs)."""
    weights: dict[tuple[str, ...], float] = {}
    for snapshot in runs.snapshots:
        for s in _stacks_of(stack_views(snapshot), profile):
            weights[s.path] = weights.get(s.path, 0.0) + s.weight
    return weights


def profile_units(runs: RunSet) -> dict[str, str]:
    """Profile name -> unit ("count", "nanoseconds", "bytes") over every run of a side."""
    units: dict[str, str] = {}
    for snapshot in runs.snapshots:
        for profile in snapshot.stack_profiles():
            units.setdefault(profile.name, profile.unit)
    return units
