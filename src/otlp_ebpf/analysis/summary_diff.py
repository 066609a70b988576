"""Diffs of the table-only kinds: syscalls (calls, errors, latency) and net (bytes, retransmits).

These numbers come from in-kernel counters of every call, not from sampling, so a single run
per side has no noise estimate: the change is reported as measured, and the gate trusts it.
With several runs per side the per-run values give the run-to-run noise (Mann-Whitney +
bootstrap).

Share metrics (`calls`, `bytes`) and rates (`errors`) change in points; latencies (`p50`, `p99`)
and retransmits per MiB change in percent of BASE.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import fmean

from otlp_ebpf.analysis import stats
from otlp_ebpf.analysis.diff_model import DiffOptions, DiffRow, DiffSection, RunSet
from otlp_ebpf.errors import UsageError
from otlp_ebpf.latency import percentile_ns
from otlp_ebpf.model import Connection, NetSnapshot, Snapshot, SyscallsSnapshot, SyscallStat

SYSCALL_METRICS = ("calls", "errors", "p50", "p99")
NET_METRICS = ("bytes", "retransmits")
ALL = "(all)"
MIB = 1024.0 * 1024.0
# Ports at or above this are ephemeral: the other end is the service that names the group.
EPHEMERAL_PORT = 32768


@dataclass(frozen=True)
class MetricSpec:
    """How to read one metric from a run: key -> value, plus its presentation."""

    name: str
    title: str
    relative: bool
    value_unit: str
    values: Callable[[Snapshot], dict[str, float]]


def summary_metric(kind: str, metric: str) -> str:
    """The gated metric for a table-only kind (default: the first one listed)."""
    choices = SYSCALL_METRICS if kind == "syscalls" else NET_METRICS
    if not metric:
        return choices[0]
    if metric not in choices:
        raise UsageError(
            f"--metric {metric} does not apply to {kind}; use one of: " + ", ".join(choices)
        )
    return metric


def summary_sections(
    base: RunSet, new: RunSet, options: DiffOptions
) -> tuple[list[DiffSection], list[str]]:
    """One section per metric; only the chosen metric's section feeds the gate."""
    gated = summary_metric(base.kind, options.metric)
    specs = SYSCALL_SPECS if base.kind == "syscalls" else NET_SPECS
    sections = [_section(spec, base, new, options, gated=spec.name == gated) for spec in specs]
    return sections, []


def _section(
    spec: MetricSpec, base: RunSet, new: RunSet, options: DiffOptions, *, gated: bool
) -> DiffSection:
    before = [spec.values(s) for s in base.snapshots]
    after = [spec.values(s) for s in new.snapshots]
    keys = sorted({k for run in (*before, *after) for k in run})
    rows = [_row(key, before, after, spec, options, gated=gated) for key in keys]
    if not spec.relative:
        rows = [r for r in rows if max(r.before, r.after) >= options.min_share]
    repeated = len(before) > 1 and len(after) > 1
    return DiffSection(
        name=f"{base.kind}.{spec.name}",
        title=f"{base.kind}: {spec.title}",
        metric=spec.name,
        relative=spec.relative,
        rows=tuple(rows),
        gated=gated,
        method=(
            stats.runs_method(len(before), len(after), options.confidence)
            if repeated
            else "single run"
        ),
        value_unit=spec.value_unit,
        key_label="syscall" if base.kind == "syscalls" else "connection group",
    )


def _row(
    key: str,
    before: Sequence[dict[str, float]],
    after: Sequence[dict[str, float]],
    spec: MetricSpec,
    options: DiffOptions,
    *,
    gated: bool,
) -> DiffRow:
    xs = [run.get(key, 0.0) for run in before]
    ys = [run.get(key, 0.0) for run in after]
    test = _test(xs, ys, spec.relative, options)
    if spec.relative and not (any(key in r for r in before) and any(key in r for r in after)):
        # A latency (or rate) with no calls on one side has no baseline to grow from: the row
        # is shown as new or gone, never gated.
        gated = False
    return DiffRow(
        key=key,
        before=fmean(xs),
        after=fmean(ys),
        delta=test.delta,
        ci_low=test.ci_low,
        ci_high=test.ci_high,
        p_change=test.p_change,
        p_beyond=test.p_beyond,
        regression=gated and _grew(test, options),
    )


def _test(
    xs: Sequence[float], ys: Sequence[float], relative: bool, options: DiffOptions
) -> stats.ShiftTest:
    if len(xs) > 1 and len(ys) > 1:
        test = stats.runs_ratio if relative else stats.runs_shift
        return test(xs, ys, margin=options.margin, confidence=options.confidence)
    if relative:
        return stats.exact_shift(stats.relative_change(fmean(xs), fmean(ys)))
    return stats.exact_shift(fmean(ys) - fmean(xs))


def _grew(test: stats.ShiftTest, options: DiffOptions) -> bool:
    if options.threshold is None or test.delta <= options.margin:
        return False
    # Exact counters from one run each: the measured change is all there is to judge.
    return test.p_beyond is None or test.beyond(options.confidence)


# ---------------------------------------------------------------- syscalls


def _syscalls_by_name(snapshot: Snapshot) -> dict[str, list[SyscallStat]]:
    grouped: dict[str, list[SyscallStat]] = {}
    if isinstance(snapshot, SyscallsSnapshot):
        for stat in snapshot.syscalls:
            grouped.setdefault(stat.name, []).append(stat)
    return grouped


def call_shares(snapshot: Snapshot) -> dict[str, float]:
    """Percent of all traced calls made to each syscall."""
    counts = {n: float(sum(s.count for s in g)) for n, g in _syscalls_by_name(snapshot).items()}
    total = sum(counts.values())
    return {n: 100.0 * c / total for n, c in counts.items()} if total else {}


def error_rates(snapshot: Snapshot) -> dict[str, float]:
    """Percent of calls that failed, per syscall and overall."""
    rates: dict[str, float] = {}
    calls = errors = 0
    for name, group in _syscalls_by_name(snapshot).items():
        n, e = sum(s.count for s in group), sum(s.errors for s in group)
        calls, errors = calls + n, errors + e
        if n:
            rates[name] = 100.0 * e / n
    if calls:
        rates[ALL] = 100.0 * errors / calls
    return rates


def latency_quantile(group: Sequence[SyscallStat], q: float) -> float:
    """A quantile (ns) of one syscall's latency across processes: from the merged log2
    histograms with the collector's own estimator (so one process or many, the same calls give
    the same figure), else the call-weighted mean of the recorded quantiles."""
    if all(s.hist for s in group):
        width = max(len(s.hist) for s in group)
        merged = [sum(s.hist[i] for s in group if i < len(s.hist)) for i in range(width)]
        lo = min((s.min_ns for s in group if s.min_ns), default=0)
        hi = max(s.max_ns for s in group)
        return float(percentile_ns(merged, q, lo, hi))
    calls = sum(s.count for s in group)
    if not calls:
        return 0.0
    return sum((s.p50_ns if q == 0.5 else s.p99_ns) * s.count for s in group) / calls


def _latencies(q: float) -> Callable[[Snapshot], dict[str, float]]:
    def values(snapshot: Snapshot) -> dict[str, float]:
        return {
            name: latency_quantile(group, q)
            for name, group in _syscalls_by_name(snapshot).items()
            if sum(s.count for s in group)
        }

    return values


# ---------------------------------------------------------------- net


def connection_group(conn: Connection) -> str:
    """Connections to one service: the remote endpoint, or the local one for a listener."""
    if conn.rport >= EPHEMERAL_PORT > conn.lport:
        return f"{conn.comm} :{conn.lport} (serving)"
    host = f"[{conn.raddr}]" if ":" in conn.raddr else conn.raddr
    return f"{conn.comm} -> {host}:{conn.rport}"


def _connections(snapshot: Snapshot) -> tuple[Connection, ...]:
    return snapshot.connections if isinstance(snapshot, NetSnapshot) else ()


def byte_shares(snapshot: Snapshot) -> dict[str, float]:
    """Percent of all bytes (sent + received) carried by each connection group."""
    totals: dict[str, float] = {}
    for conn in _connections(snapshot):
        group = connection_group(conn)
        totals[group] = totals.get(group, 0.0) + conn.tx_bytes + conn.rx_bytes
    whole = sum(totals.values())
    return {g: 100.0 * b / whole for g, b in totals.items()} if whole else {}


def retransmit_rates(snapshot: Snapshot) -> dict[str, float]:
    """Retransmits per MiB transferred, per connection group and overall."""
    retx: dict[str, float] = {}
    volume: dict[str, float] = {}
    for conn in _connections(snapshot):
        group = connection_group(conn)
        retx[group] = retx.get(group, 0.0) + conn.retransmits
        volume[group] = volume.get(group, 0.0) + conn.tx_bytes + conn.rx_bytes
    rates = {g: retx[g] / (volume[g] / MIB) for g in retx if volume[g]}
    whole = sum(volume.values())
    if whole:
        rates[ALL] = sum(retx.values()) / (whole / MIB)
    return rates


SYSCALL_SPECS = (
    MetricSpec("calls", "share of calls per syscall", False, "%", call_shares),
    MetricSpec("errors", "error rate per syscall", False, "%", error_rates),
    MetricSpec("p50", "median latency per syscall", True, "ns", _latencies(0.5)),
    MetricSpec("p99", "p99 latency per syscall", True, "ns", _latencies(0.99)),
)
NET_SPECS = (
    MetricSpec("bytes", "share of bytes per connection group", False, "%", byte_shares),
    MetricSpec("retransmits", "retransmits per MiB", True, "/MiB", retransmit_rates),
)
