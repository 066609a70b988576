"""The query tools of `ask`: small, exact questions over snapshots, each answered with rows.

Both ways of asking use these and only these: the offline interpreter maps a question to one
call, and an LLM is offered the same tools (their JSON schemas) and sees only what they return.
Every number in a row is read from the snapshot (or summed, or counted from its rows); a tool
never estimates. A tool that cannot run on the snapshot it was given (no such signal, no
timeline, no second run) raises `ToolError` with a sentence saying why.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from otlp_ebpf.latency import percentile_ns
from otlp_ebpf.model import (
    OTHER_KEY,
    Connection,
    CpuSnapshot,
    MemSnapshot,
    NetSnapshot,
    RecordSnapshot,
    Snapshot,
    StackCount,
    SyscallsSnapshot,
    connection_label,
)

MAX_ROWS = 50
DEFAULT_ROWS = 10


class ToolError(ValueError):
    """A tool cannot answer on these snapshots (or was called with bad arguments)."""


@dataclass(frozen=True)
class Sources:
    """What the question is asked about: one snapshot, or two for a comparison."""

    first: Snapshot
    second: Snapshot | None = None
    paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class ToolResult:
    """The rows one tool call returned, with the columns in display order."""

    tool: str
    arguments: Mapping[str, Any]
    title: str
    columns: tuple[str, ...]
    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "arguments": dict(self.arguments),
            "title": self.title,
            "columns": list(self.columns),
            "rows": self.rows,
            "notes": self.notes,
        }


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    run: Callable[[Sources, Mapping[str, Any]], ToolResult]

    def schema(self) -> dict[str, Any]:
        """The OpenAI-style function description offered to a model."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


# ---------------------------------------------------------------- arguments


def _limit(args: Mapping[str, Any]) -> int:
    value = args.get("limit", DEFAULT_ROWS)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_ROWS:
        raise ToolError(f"limit must be a whole number from 1 to {MAX_ROWS}")
    return value


def _choice(args: Mapping[str, Any], name: str, allowed: Sequence[str], default: str) -> str:
    value = args.get(name, default)
    if value not in allowed:
        raise ToolError(f"{name} must be one of {', '.join(allowed)}; got {str(value)[:40]!r}")
    return str(value)


def _optional_int(args: Mapping[str, Any], name: str) -> int | None:
    value = args.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ToolError(f"{name} must be a whole number of 0 or more")
    return value


def _optional_text(args: Mapping[str, Any], name: str) -> str | None:
    value = args.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ToolError(f"{name} must be text")
    return value[:200]


def _seconds(args: Mapping[str, Any], name: str) -> float:
    value = args.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ToolError(f"{name} must be a number of seconds")
    if value < 0:
        raise ToolError(f"{name} must be 0 or more seconds")
    return float(value)


def _unknown_args(args: Mapping[str, Any], known: Iterable[str]) -> None:
    extra = sorted(set(args) - set(known))
    if extra:
        raise ToolError(f"unknown argument(s): {', '.join(str(e)[:40] for e in extra)}")


def _schema(properties: dict[str, Any], required: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


LIMIT = {"type": "integer", "minimum": 1, "maximum": MAX_ROWS, "description": "rows to return"}
ORDER = {"type": "string", "enum": ["desc", "asc"], "description": "desc: most first"}
PID = {"type": "integer", "minimum": 0, "description": "only this process id"}


# ---------------------------------------------------------------- sections


def section(snapshot: Snapshot, kind: str) -> Snapshot | None:
    """The part of `snapshot` holding one signal: itself, or a recording's section."""
    if snapshot.kind == kind:
        return snapshot
    if isinstance(snapshot, RecordSnapshot):
        return snapshot.signals.get(kind)
    return None


def _need(snapshot: Snapshot, kind: str) -> Any:
    found = section(snapshot, kind)
    if found is None:
        raise ToolError(f"this {snapshot.kind} snapshot holds no {kind} data")
    return found


def _ranked(
    rows: list[dict[str, Any]], key: str, order: str, limit: int, name: str
) -> list[dict[str, Any]]:
    """Rows sorted by `key` (ties by name, so answers are stable), cut to `limit`."""
    sign = -1 if order == "desc" else 1
    rows.sort(key=lambda r: (sign * (r[key] or 0), str(r[name])))
    return rows[:limit]


def _pct(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


# ---------------------------------------------------------------- syscalls

SYSCALL_ORDER = ("calls", "errors", "error_pct", "p99_ns", "max_ns", "total_ns", "p50_ns")


def top_syscalls(sources: Sources, args: Mapping[str, Any]) -> ToolResult:
    _unknown_args(args, ("by", "order", "limit", "pid", "syscall"))
    snap: SyscallsSnapshot = _need(sources.first, "syscalls")
    by = _choice(args, "by", SYSCALL_ORDER, "calls")
    order = _choice(args, "order", ("desc", "asc"), "desc")
    pid = _optional_int(args, "pid")
    wanted = _optional_text(args, "syscall")
    merged: dict[str, dict[str, Any]] = {}
    for stat in snap.syscalls:
        if pid is not None and stat.pid != pid:
            continue
        if wanted is not None and stat.name != wanted:
            continue
        row = merged.setdefault(
            stat.name,
            {
                "calls": 0,
                "errors": 0,
                "total_ns": 0,
                "max_ns": 0,
                "min_ns": 0,
                "hist": [],
                "p99s": [],
                "p50s": [],
            },
        )
        row["calls"] += stat.count
        row["errors"] += stat.errors
        row["total_ns"] += stat.total_ns
        row["max_ns"] = max(row["max_ns"], stat.max_ns)
        row["min_ns"] = min(row["min_ns"] or stat.min_ns, stat.min_ns)
        row["hist"] = _add_hist(row["hist"], stat.hist)
        row["p99s"].append(stat.p99_ns)
        row["p50s"].append(stat.p50_ns)
    rows = [_syscall_row(name, r) for name, r in merged.items()]
    if by in ("p99_ns", "p50_ns", "max_ns"):
        rows = [r for r in rows if r["calls"]]
    rows = _ranked(rows, by, order, _limit(args), "syscall")
    scope = f" of pid {pid}" if pid is not None else ""
    title = f"syscalls{scope} by {by} ({'most' if order == 'desc' else 'least'} first)"
    notes = [] if rows else ["no syscall matched"]
    return ToolResult("top_syscalls", dict(args), title, SYSCALL_COLUMNS, rows, notes)


SYSCALL_COLUMNS = (
    "syscall",
    "calls",
    "errors",
    "error_pct",
    "p50_ns",
    "p99_ns",
    "max_ns",
    "total_ns",
)


def _add_hist(a: Sequence[int], b: Sequence[int]) -> list[int]:
    out = list(a) + [0] * max(0, len(b) - len(a))
    for i, n in enumerate(b):
        out[i] += n
    return out


def _syscall_row(name: str, r: Mapping[str, Any]) -> dict[str, Any]:
    hist = r["hist"]
    # One pid: its own percentiles. Several: from their summed histograms (the same rule the
    # collector used for each), or the largest when a histogram is missing.
    if len(r["p99s"]) == 1 or sum(hist) != r["calls"]:
        p50, p99 = max(r["p50s"]), max(r["p99s"])
    else:
        p50 = percentile_ns(hist, 0.50, r["min_ns"], r["max_ns"])
        p99 = percentile_ns(hist, 0.99, r["min_ns"], r["max_ns"])
    return {
        "syscall": name,
        "calls": r["calls"],
        "errors": r["errors"],
        "error_pct": _pct(r["errors"], r["calls"]),
        "p50_ns": p50,
        "p99_ns": p99,
        "max_ns": r["max_ns"],
        "total_ns": r["total_ns"],
    }


def syscall_errors(sources: Sources, args: Mapping[str, Any]) -> ToolResult:
    _unknown_args(args, ("syscall", "errno", "pid", "limit"))
    snap: SyscallsSnapshot = _need(sources.first, "syscalls")
    pid = _optional_int(args, "pid")
    wanted = _optional_text(args, "syscall")
    errno_wanted = _optional_text(args, "errno")
    counts: dict[tuple[str, str], int] = {}
    for stat in snap.syscalls:
        if (pid is not None and stat.pid != pid) or (wanted is not None and stat.name != wanted):
            continue
        for errno, n in stat.errno.items():
            if errno_wanted is not None and errno.upper() != errno_wanted.upper():
                continue
            counts[(errno, stat.name)] = counts.get((errno, stat.name), 0) + n
    rows: list[dict[str, Any]] = [
        {"errno": e, "syscall": s, "errors": n} for (e, s), n in counts.items()
    ]
    rows.sort(key=lambda r: (-int(r["errors"]), str(r["errno"]), str(r["syscall"])))
    title = "failed syscalls by errno" + (f" ({wanted})" if wanted else "")
    notes = [] if rows else ["no failed call matched"]
    return ToolResult(
        "syscall_errors",
        dict(args),
        title,
        ("errno", "syscall", "errors"),
        rows[: _limit(args)],
        notes,
    )


# ---------------------------------------------------------------- cpu and functions


def _stacks(snap: CpuSnapshot, profile: str) -> tuple[StackCount, ...]:
    return snap.off_cpu if profile == "off_cpu" else snap.stacks


def top_functions(sources: Sources, args: Mapping[str, Any]) -> ToolResult:
    _unknown_args(args, ("metric", "profile", "pid", "process", "limit", "order"))
    snap: CpuSnapshot = _need(sources.first, "cpu")
    metric = _choice(args, "metric", ("self", "total"), "self")
    profile = _choice(args, "profile", ("cpu", "off_cpu"), "cpu")
    order = _choice(args, "order", ("desc", "asc"), "desc")
    pid = _optional_int(args, "pid")
    process = _optional_text(args, "process")
    weight_name = "blocked_ns" if profile == "off_cpu" else "samples"
    stacks = [
        s
        for s in _stacks(snap, profile)
        if (pid is None or s.pid == pid) and (process is None or s.comm == process)
    ]
    whole = sum(_weight(s, profile) for s in stacks)
    weights: dict[str, int] = {}
    for stack in stacks:
        names = stack.frames[-1:] if metric == "self" else tuple(dict.fromkeys(stack.frames))
        for name in names:
            weights[name] = weights.get(name, 0) + _weight(stack, profile)
    rows = [
        {"function": name, weight_name: w, "share_pct": _pct(w, whole)}
        for name, w in weights.items()
    ]
    rows = _ranked(rows, weight_name, order, _limit(args), "function")
    scope = f" of pid {pid}" if pid is not None else f" of {process}" if process else ""
    title = f"{'off-CPU' if profile == 'off_cpu' else 'on-CPU'} {metric} time per function{scope}"
    notes = [f"{whole} {weight_name.replace('_', ' ')} in all"]
    return ToolResult(
        "top_functions", dict(args), title, ("function", weight_name, "share_pct"), rows, notes
    )


def _weight(stack: StackCount, profile: str) -> int:
    return stack.total_ns if profile == "off_cpu" else stack.count


PROCESS_METRICS = ("cpu_samples", "syscalls", "syscall_errors", "bytes", "outstanding_bytes")


def top_processes(sources: Sources, args: Mapping[str, Any]) -> ToolResult:
    _unknown_args(args, ("by", "order", "limit"))
    by = _choice(args, "by", PROCESS_METRICS, _default_process_metric(sources.first))
    order = _choice(args, "order", ("desc", "asc"), "desc")
    rows_by_pid: dict[int, dict[str, Any]] = {}

    def row(pid: int, comm: str) -> dict[str, Any]:
        found = rows_by_pid.setdefault(
            pid, {"pid": pid, "process": comm} | dict.fromkeys(PROCESS_METRICS, 0)
        )
        found["process"] = found["process"] or comm
        return found

    first = sources.first
    for info in first.processes:
        row(info.pid, info.comm)
    if (cpu := section(first, "cpu")) is not None:
        for s in cpu.stacks:  # type: ignore[attr-defined]
            row(s.pid, s.comm)["cpu_samples"] += s.count
    if (sysc := section(first, "syscalls")) is not None:
        for stat in sysc.syscalls:  # type: ignore[attr-defined]
            r = row(stat.pid, stat.comm)
            r["syscalls"] += stat.count
            r["syscall_errors"] += stat.errors
    if (net := section(first, "net")) is not None:
        for conn in net.connections:  # type: ignore[attr-defined]
            row(conn.pid, conn.comm)["bytes"] += conn.tx_bytes + conn.rx_bytes
    if (mem := section(first, "mem")) is not None:
        for alloc in mem.outstanding:  # type: ignore[attr-defined]
            row(alloc.pid, alloc.comm)["outstanding_bytes"] += alloc.bytes
    rows = [r for r in rows_by_pid.values() if r[by] or order == "asc"]
    rows = _ranked(rows, by, order, _limit(args), "pid")
    columns = ("pid", "process", by, *[m for m in PROCESS_METRICS if m != by])
    return ToolResult("top_processes", dict(args), f"processes by {by}", columns, rows)


def _default_process_metric(snapshot: Snapshot) -> str:
    for kind, metric in (("cpu", "cpu_samples"), ("syscalls", "syscalls"), ("net", "bytes")):
        if section(snapshot, kind) is not None:
            return metric
    return "outstanding_bytes"


# ---------------------------------------------------------------- net

CONNECTION_ORDER = (
    "bytes",
    "tx_bytes",
    "rx_bytes",
    "retransmits",
    "resets",
    "srtt_us",
    "connect_latency_us",
    "duration_ms",
)


def top_connections(sources: Sources, args: Mapping[str, Any]) -> ToolResult:
    _unknown_args(args, ("by", "order", "port", "address", "pid", "limit"))
    snap: NetSnapshot = _need(sources.first, "net")
    by = _choice(args, "by", CONNECTION_ORDER, "bytes")
    order = _choice(args, "order", ("desc", "asc"), "desc")
    port = _optional_int(args, "port")
    address = _optional_text(args, "address")
    pid = _optional_int(args, "pid")
    rows = [
        _connection_row(c)
        for c in snap.connections
        if (port is None or port in (c.lport, c.rport))
        and (address is None or address in (c.laddr, c.raddr))
        and (pid is None or c.pid == pid)
    ]
    rows = _ranked(rows, by, order, _limit(args), "connection")
    notes = [
        f"{snap.retransmits} retransmits, {snap.resets.get('sent', 0)} resets sent and "
        f"{snap.resets.get('received', 0)} received in the whole run"
    ]
    columns = (
        "connection",
        "bytes",
        "tx_bytes",
        "rx_bytes",
        "retransmits",
        "resets",
        "srtt_us",
        "connect_latency_us",
        "duration_ms",
    )
    return ToolResult("top_connections", dict(args), f"connections by {by}", columns, rows, notes)


def _connection_row(conn: Connection) -> dict[str, Any]:
    return {
        "connection": connection_label(conn),
        "pid": conn.pid,
        "process": conn.comm,
        "remote_address": conn.raddr,
        "remote_port": conn.rport,
        "local_port": conn.lport,
        "bytes": conn.tx_bytes + conn.rx_bytes,
        "tx_bytes": conn.tx_bytes,
        "rx_bytes": conn.rx_bytes,
        "retransmits": conn.retransmits,
        "resets": conn.resets_sent + conn.resets_received,
        "srtt_us": conn.srtt_us,
        "connect_latency_us": conn.connect_latency_us,
        "duration_ms": conn.duration_ms,
    }


def net_drops(sources: Sources, args: Mapping[str, Any]) -> ToolResult:
    _unknown_args(args, ("limit",))
    snap: NetSnapshot = _need(sources.first, "net")
    rows = [{"reason": reason, "drops": n} for reason, n in snap.drops.items()]
    rows = _ranked(rows, "drops", "desc", _limit(args), "reason")
    return ToolResult("net_drops", dict(args), "packet drops by reason", ("reason", "drops"), rows)


# ---------------------------------------------------------------- memory


def memory_outstanding(sources: Sources, args: Mapping[str, Any]) -> ToolResult:
    _unknown_args(args, ("pid", "limit"))
    snap: MemSnapshot = _need(sources.first, "mem")
    pid = _optional_int(args, "pid")
    allocs = [a for a in snap.outstanding if pid is None or a.pid == pid]
    whole = sum(a.bytes for a in allocs)
    rows = [
        {
            "stack": " <- ".join(reversed(a.frames[-4:])) or "[unknown]",
            "function": a.frames[-1] if a.frames else "[unknown]",
            "pid": a.pid,
            "process": a.comm,
            "bytes": a.bytes,
            "allocations": a.count,
            "share_pct": _pct(a.bytes, whole),
        }
        for a in allocs
    ]
    rows = _ranked(rows, "bytes", "desc", _limit(args), "stack")
    notes = [
        f"{snap.outstanding_bytes} bytes outstanding at the end, {snap.allocations_total} "
        f"allocations and {snap.frees_total} frees in the run"
    ]
    columns = ("stack", "bytes", "allocations", "share_pct", "pid", "process")
    return ToolResult(
        "memory_outstanding", dict(args), "outstanding memory by stack", columns, rows, notes
    )


# ---------------------------------------------------------------- timeline


def timeline_window(sources: Sources, args: Mapping[str, Any]) -> ToolResult:
    """Each series' value inside [start_s, end_s] against the rest of the run."""
    from otlp_ebpf.analysis.series import timeline_of

    _unknown_args(args, ("start_s", "end_s", "signal", "measure", "limit"))
    start, end = _seconds(args, "start_s"), _seconds(args, "end_s")
    if end <= start:
        raise ToolError("end_s must be after start_s")
    signal = _optional_text(args, "signal")
    measure = _optional_text(args, "measure")
    timeline = timeline_of(sources.first)
    if timeline is None:
        raise ToolError("this snapshot has no timeline (take it with `record` or with --interval)")
    inside = (timeline.ends > start) & (timeline.starts < end)
    if not inside.any():
        last = float(timeline.ends[-1]) if len(timeline.ends) else 0.0
        raise ToolError(
            f"no timeline row between {start:g} and {end:g} s (the run ends at {last:g} s)"
        )
    lengths = timeline.ends - timeline.starts
    rows = []
    for series in timeline.series:
        if signal is not None and series.signal != signal:
            continue
        if measure is not None and series.name != measure:
            continue
        if any(v == OTHER_KEY for v in series.labels.values()):
            continue
        rows.append(_window_row(series, inside, lengths))
    rows = [r for r in rows if r["window"] or r["rest"]]
    rows.sort(key=lambda r: (-abs(r["change"]), r["series"]))
    window_start = float(timeline.starts[inside][0])
    window_end = float(timeline.ends[inside][-1])
    title = (
        f"what changed between {window_start:g} and {window_end:g} s "
        f"(rows overlapping {start:g}-{end:g} s)"
    )
    notes = [
        "window/rest: mean per second for counts (max for latency, mean for levels) inside "
        "the window and over the other rows; window_total: events in the window"
    ]
    columns = ("series", "unit", "window", "rest", "change", "change_pct", "window_total")
    return ToolResult("timeline_window", dict(args), title, columns, rows[: _limit(args)], notes)


def _window_row(series: Any, inside: np.ndarray, lengths: np.ndarray) -> dict[str, Any]:
    values = series.values
    window_values, rest_values = values[inside], values[~inside]

    def summary(part: np.ndarray) -> float:
        part = part[~np.isnan(part)]
        if part.size == 0:
            return 0.0
        return float(part.max() if series.nature == "latency" else part.mean())

    window, rest = summary(window_values), summary(rest_values)
    total = None
    if series.nature == "rate":
        total = round(float(np.nansum(values[inside] * lengths[inside])))
    return {
        "series": series.key,
        "signal": series.signal,
        "measure": series.name,
        "labels": dict(series.labels),
        "unit": series.unit,
        "window": _round(window),
        "rest": _round(rest),
        "change": _round(window - rest),
        "change_pct": _pct(window - rest, rest) if rest else None,
        "window_total": total,
    }


def _round(value: float) -> float | int:
    if float(value).is_integer():
        return int(value)
    return round(value, 3 if abs(value) < 100 else 1)


# ---------------------------------------------------------------- findings and diff


def findings(sources: Sources, args: Mapping[str, Any]) -> ToolResult:
    from otlp_ebpf.analysis.analyze import analyze

    _unknown_args(args, ("limit",))
    analysis = analyze(sources.first)
    rows = [
        {
            "rank": f.rank,
            "kind": f.kind,
            "summary": f.summary,
            "start_s": round(f.start_s, 3),
            "end_s": round(f.end_s, 3),
            "cause": f.cause.phrase if f.cause else None,
            "confidence": round(f.confidence, 3),
        }
        for f in analysis.findings
    ]
    columns = ("rank", "kind", "summary", "start_s", "end_s", "cause", "confidence")
    return ToolResult(
        "findings",
        dict(args),
        "findings of analyze",
        columns,
        rows[: _limit(args)],
        list(analysis.notes),
    )


COMPARE_METRICS = ("self", "total", "calls", "errors", "p50", "p99", "bytes", "retransmits")


def compare_runs(sources: Sources, args: Mapping[str, Any]) -> ToolResult:
    """The diff of two snapshots: what grew (or shrank) from the first to the second."""
    from otlp_ebpf.analysis.diff import diff_runs
    from otlp_ebpf.analysis.diff_model import DiffOptions, RunSet
    from otlp_ebpf.errors import UsageError

    _unknown_args(args, ("signal", "metric", "direction", "limit"))
    if sources.second is None:
        raise ToolError("comparing needs two snapshots: ask with BASE and NEW files")
    signal = _optional_text(args, "signal") or _comparable_signal(sources)
    metric = _choice(args, "metric", ("", *COMPARE_METRICS), "")
    direction = _choice(args, "direction", ("grew", "shrank", "all"), "grew")
    base, new = section(sources.first, signal), section(sources.second, signal)
    if base is None or new is None:
        raise ToolError(f"both snapshots need {signal} data to compare it")
    paths = (*sources.paths, "", "")
    try:
        report = diff_runs(
            RunSet("BASE", (paths[0],), (base,)),
            RunSet("NEW", (paths[1],), (new,)),
            DiffOptions(metric=metric),
        )
    except UsageError as exc:
        raise ToolError(exc.message) from exc
    rows = []
    for sec in report.sections:
        for r in sec.rows:
            if (direction == "grew" and r.delta <= 0) or (direction == "shrank" and r.delta >= 0):
                continue
            rows.append(
                {
                    "section": sec.title,
                    "key": r.key,
                    "before": _round(r.before),
                    "after": _round(r.after),
                    "delta": _round(r.delta),
                    "unit": sec.value_unit,
                    "delta_unit": sec.delta_unit,
                    "beyond_noise": r.p_change is not None and r.p_change < 0.05,
                }
            )
    # Largest change first: growth for "grew", the deepest drop for "shrank".
    rows.sort(key=lambda r: (-abs(float(r["delta"])), str(r["key"])))
    columns = ("section", "key", "before", "after", "unit", "delta", "delta_unit", "beyond_noise")
    title = f"{signal} {report.metric}: {direction} from the first snapshot to the second"
    return ToolResult(
        "compare_runs", dict(args), title, columns, rows[: _limit(args)], list(report.notes)
    )


def _comparable_signal(sources: Sources) -> str:
    assert sources.second is not None
    for kind in ("cpu", "syscalls", "net", "mem"):
        if section(sources.first, kind) is not None and section(sources.second, kind) is not None:
            return kind
    raise ToolError("the two snapshots share no signal to compare")


# ---------------------------------------------------------------- overview


def overview(sources: Sources, args: Mapping[str, Any]) -> ToolResult:
    _unknown_args(args, ())
    rows = [_overview_row(sources.first, "first")]
    if sources.second is not None:
        rows.append(_overview_row(sources.second, "second"))
    columns = ("snapshot", "kind", "signals", "duration_s", "processes", "timeline_rows")
    return ToolResult("overview", {}, "what the snapshots hold", columns, rows)


def _overview_row(snapshot: Snapshot, which: str) -> dict[str, Any]:
    signals = [k for k in ("cpu", "syscalls", "net", "mem") if section(snapshot, k) is not None]
    rows = (
        len(snapshot.timeline)
        if isinstance(snapshot, RecordSnapshot)
        else len(getattr(snapshot, "series", ()))
    )
    return {
        "snapshot": which,
        "kind": snapshot.kind,
        "signals": signals,
        "duration_s": round(snapshot.duration_s, 3),
        "processes": [f"{p.pid} {p.comm}" for p in snapshot.processes[:20]],
        "timeline_rows": rows,
    }


# ---------------------------------------------------------------- the registry

TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool(
            "overview",
            "What the snapshot(s) hold: kind, signals, duration, processes, timeline rows.",
            _schema({}),
            overview,
        ),
        Tool(
            "top_syscalls",
            "Syscalls (summed over processes) ranked by calls, errors, error_pct, latency "
            "(p50_ns, p99_ns, max_ns) or total_ns time in the call.",
            _schema(
                {
                    "by": {"type": "string", "enum": list(SYSCALL_ORDER)},
                    "order": ORDER,
                    "limit": LIMIT,
                    "pid": PID,
                    "syscall": {"type": "string", "description": "only this syscall"},
                }
            ),
            top_syscalls,
        ),
        Tool(
            "syscall_errors",
            "Failed syscalls counted per errno (ENOENT, EAGAIN, ...) and syscall.",
            _schema(
                {
                    "syscall": {"type": "string"},
                    "errno": {"type": "string", "description": "e.g. ENOENT"},
                    "pid": PID,
                    "limit": LIMIT,
                }
            ),
            syscall_errors,
        ),
        Tool(
            "top_functions",
            "Functions by sampled CPU time: self (the function itself) or total (with what "
            "it calls); profile off_cpu ranks by time blocked. Optionally one pid or process.",
            _schema(
                {
                    "metric": {"type": "string", "enum": ["self", "total"]},
                    "profile": {"type": "string", "enum": ["cpu", "off_cpu"]},
                    "order": ORDER,
                    "pid": PID,
                    "process": {"type": "string", "description": "process name (comm)"},
                    "limit": LIMIT,
                }
            ),
            top_functions,
        ),
        Tool(
            "top_processes",
            "Processes by CPU samples, syscalls, syscall errors, network bytes or "
            "outstanding memory.",
            _schema(
                {
                    "by": {"type": "string", "enum": list(PROCESS_METRICS)},
                    "order": ORDER,
                    "limit": LIMIT,
                }
            ),
            top_processes,
        ),
        Tool(
            "top_connections",
            "TCP connections by bytes, retransmits, resets, smoothed RTT, connect latency "
            "or duration; optionally only a port, an address or a pid.",
            _schema(
                {
                    "by": {"type": "string", "enum": list(CONNECTION_ORDER)},
                    "order": ORDER,
                    "port": {"type": "integer", "minimum": 0, "maximum": 65535},
                    "address": {"type": "string"},
                    "pid": PID,
                    "limit": LIMIT,
                }
            ),
            top_connections,
        ),
        Tool(
            "net_drops",
            "Packets dropped, per kernel drop reason.",
            _schema({"limit": LIMIT}),
            net_drops,
        ),
        Tool(
            "memory_outstanding",
            "Memory allocated and not freed at the end of the run, per allocating stack.",
            _schema({"pid": PID, "limit": LIMIT}),
            memory_outstanding,
        ),
        Tool(
            "timeline_window",
            "Recordings: every series (calls, errors, p99 per syscall; CPU per process and "
            "function; bytes, retransmits per connection; memory) inside a time window "
            "against the rest of the run, largest change first.",
            _schema(
                {
                    "start_s": {"type": "number", "minimum": 0},
                    "end_s": {"type": "number", "minimum": 0},
                    "signal": {"type": "string", "enum": ["cpu", "syscalls", "net", "mem"]},
                    "measure": {
                        "type": "string",
                        "description": "calls, errors, p99_ns, samples, bytes, retransmits, ...",
                    },
                    "limit": LIMIT,
                },
                ["start_s", "end_s"],
            ),
            timeline_window,
        ),
        Tool(
            "findings",
            "The ranked findings of `analyze`: what went wrong, when, and the likely cause.",
            _schema({"limit": LIMIT}),
            findings,
        ),
        Tool(
            "compare_runs",
            "The diff of two snapshots (first = before, second = after): what grew or shrank "
            "(functions' self/total share, syscalls' calls/errors/p50/p99, bytes, retransmits).",
            _schema(
                {
                    "signal": {"type": "string", "enum": ["cpu", "syscalls", "net", "mem"]},
                    "metric": {"type": "string", "enum": list(COMPARE_METRICS)},
                    "direction": {"type": "string", "enum": ["grew", "shrank", "all"]},
                    "limit": LIMIT,
                }
            ),
            compare_runs,
        ),
    )
}


def tool_schemas() -> list[dict[str, Any]]:
    return [t.schema() for t in TOOLS.values()]


def run_tool(sources: Sources, name: str, arguments: Mapping[str, Any]) -> ToolResult:
    """Run one tool by name; ToolError for an unknown name or arguments it refuses."""
    tool = TOOLS.get(name)
    if tool is None:
        raise ToolError(f"unknown tool {name[:60]!r}; tools: {', '.join(TOOLS)}")
    if not isinstance(arguments, Mapping):
        raise ToolError("arguments must be a JSON object")
    return tool.run(sources, arguments)
