"""Prometheus alerting rules derived from a recording: thresholds from its own baseline,
`for:` durations from the anomalies it showed.

The expressions use the names our OTLP metrics take in Prometheus after an OpenTelemetry
Collector's translation (docs/otlp.md): dots become underscores, the unit is appended
(`ns` -> `nanoseconds`, `By` -> `bytes`; annotations in braces such as `{call}` are dropped),
and counters end in `_total`. Attribute names translate the same way
(`otlp_ebpf.syscall.name` -> `otlp_ebpf_syscall_name`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from otlp_ebpf.analysis.analyze import Analysis
from otlp_ebpf.analysis.anomalies import MAD_TO_SIGMA, Anomaly
from otlp_ebpf.analysis.series import Series, Timeline

# OTLP metric (docs/otlp.md) -> its Prometheus name after the Collector's translation.
PROMETHEUS_NAMES = {
    "otlp_ebpf.syscall.calls": "otlp_ebpf_syscall_calls_total",
    "otlp_ebpf.syscall.errors": "otlp_ebpf_syscall_errors_total",
    "otlp_ebpf.syscall.duration": "otlp_ebpf_syscall_duration_nanoseconds",
    "otlp_ebpf.tcp.io": "otlp_ebpf_tcp_io_bytes_total",
    "otlp_ebpf.tcp.retransmits": "otlp_ebpf_tcp_retransmits_total",
    "otlp_ebpf.network.drops": "otlp_ebpf_network_drops_total",
    "otlp_ebpf.memory.outstanding": "otlp_ebpf_memory_outstanding_bytes",
    "otlp_ebpf.cpu.time": "otlp_ebpf_cpu_time_seconds_total",
    "otlp_ebpf.cpu.function.time": "otlp_ebpf_cpu_function_time_seconds_total",
}
SYSCALL_LABEL = "otlp_ebpf_syscall_name"
DROP_LABEL = "otlp_ebpf_drop_reason"
FUNCTION_LABEL = "code_function_name"
# A resource attribute: a label once the Collector's Prometheus exporter turns resource
# attributes into labels (`resource_to_telemetry_conversion`, as in deploy/otel-collector.yaml).
PROCESS_LABEL = "process_executable_name"
# Rates over at least a minute: four scrapes at the common 15 s interval.
MIN_RATE_WINDOW_S = 60.0
MAX_FOR_S = 600.0


@dataclass(frozen=True)
class AlertRule:
    name: str
    expr: str
    for_s: float
    severity: str
    summary: str
    description: str
    labels: dict[str, str] = field(default_factory=dict)


def rate_window(interval_s: float) -> float:
    """The range of `rate()`: a minute, or four rows of a coarser recording."""
    return max(MIN_RATE_WINDOW_S, 4.0 * interval_s)


def duration_text(seconds: float) -> str:
    """Prometheus duration: whole seconds, as `90s` or `2m`."""
    whole = max(1, round(seconds))
    return f"{whole // 60}m" if whole % 60 == 0 else f"{whole}s"


def alert_rules(analysis: Analysis) -> list[AlertRule]:
    """Key-series rules (from the baseline of the whole recording) and one rule per finding
    kind and series the recording showed (from its anomaly)."""
    timeline = analysis.timeline
    if timeline is None:
        return []
    window = rate_window(timeline.interval_s)
    rules = _key_rules(timeline.series, timeline.interval_s, window, analysis.anomalies)
    rules.extend(_cpu_key_rules(timeline, window, analysis.anomalies))
    rules.extend(_finding_rules(analysis, window))
    unique: dict[str, AlertRule] = {}
    for rule in rules:
        unique.setdefault(rule.expr, rule)
    return list(unique.values())


def _for(anomalies: Sequence[Anomaly], interval_s: float, window: float) -> float:
    """Half the shortest anomaly of this kind the recording showed (so it would have fired
    in its first half), at least three rows and a rate window, at most 10 minutes; with no
    anomaly, the rate window twice."""
    floor = max(3.0 * interval_s, window)
    if not anomalies:
        return min(2.0 * window, MAX_FOR_S)
    shortest = min(_active_s(a) for a in anomalies)
    return min(max(shortest / 2.0, floor / 2.0), MAX_FOR_S)


def _active_s(anomaly: Anomaly) -> float:
    """How long the anomaly was changing: a level (outstanding memory) stays up after a
    leak stops, so its time runs to the row where it neared its peak, not to the window's
    end."""
    if anomaly.series.nature != "level":
        return anomaly.end_s - anomaly.start_s
    rows = anomaly.series.values[anomaly.first_row : anomaly.last_row + 1]
    # The first row within 5% of the peak's distance from the baseline (a level wanders a
    # little once the leak stopped; its very highest row may come much later).
    distance = np.abs(rows - anomaly.baseline)
    near_peak = int(np.flatnonzero(distance >= 0.95 * distance.max())[0])
    return float(anomaly.series.ends[anomaly.first_row + near_peak]) - anomaly.start_s


def _total(series: Sequence[Series], signal: str, name: str) -> np.ndarray | None:
    columns = [s.values for s in series if (s.signal, s.name) == (signal, name) and s.labels]
    if not columns:
        return None
    return np.nansum(np.vstack(columns), axis=0)


def _baseline_threshold(values: np.ndarray, floor: float, share: float) -> tuple[float, float]:
    """(baseline median, threshold): above the median by 3 robust sigmas, by `share` of the
    median and by `floor`, whichever is most (the detector's minimum effect)."""
    finite = values[~np.isnan(values)]
    median = float(np.median(finite)) if len(finite) else 0.0
    mad = float(np.median(np.abs(finite - median))) if len(finite) else 0.0
    step = max(3.0 * MAD_TO_SIGMA * mad, share * median, floor)
    return median, median + step


def _number(value: float) -> str:
    if value >= 100 or float(value).is_integer():
        return f"{value:.0f}"
    return f"{value:.3g}"


def _key_rules(
    series: Sequence[Series], interval: float, window: float, anomalies: Sequence[Anomaly]
) -> list[AlertRule]:
    w = duration_text(window)
    rules = []

    def anomalies_of(signal: str, name: str) -> list[Anomaly]:
        return [a for a in anomalies if (a.signal, a.series.name) == (signal, name)]

    errors = _total(series, "syscalls", "errors")
    if errors is not None:
        base, limit = _baseline_threshold(errors, 5.0, 0.5)
        rules.append(
            AlertRule(
                "OtlpEbpfSyscallErrorRate",
                f"sum(rate({PROMETHEUS_NAMES['otlp_ebpf.syscall.errors']}[{w}])) > "
                f"{_number(limit)}",
                _for(anomalies_of("syscalls", "errors"), interval, window),
                "warning",
                "System call errors above the recorded baseline",
                f"Failing system calls per second exceed {_number(limit)} (the recording's "
                f"baseline was {_number(base)}/s). Look at the errno breakdown: "
                "otlp-ebpf syscalls, or the error_type label.",
            )
        )
    retrans = _total(series, "net", "retransmits")
    if retrans is not None:
        base, limit = _baseline_threshold(retrans, 1.0, 0.5)
        rules.append(
            AlertRule(
                "OtlpEbpfTcpRetransmits",
                f"sum by (network_peer_address, network_peer_port) (rate("
                f"{PROMETHEUS_NAMES['otlp_ebpf.tcp.retransmits']}[{w}])) > {_number(limit)}",
                _for(anomalies_of("net", "retransmits"), interval, window),
                "warning",
                "TCP retransmits above the recorded baseline",
                f"Retransmitted segments per second to one peer exceed {_number(limit)} "
                f"(baseline {_number(base)}/s): loss or congestion on the path; check drops "
                "and the peer's health.",
            )
        )
    outstanding = [s for s in series if (s.signal, s.name) == ("mem", "outstanding_bytes")]
    if outstanding:
        growth = np.diff(outstanding[0].values) / max(interval, 1e-9)
        base, limit = _baseline_threshold(growth, 64 * 1024.0, 0.5)
        rules.append(
            AlertRule(
                "OtlpEbpfMemoryGrowth",
                f"deriv({PROMETHEUS_NAMES['otlp_ebpf.memory.outstanding']}[{w}]) > "
                f"{_number(limit)}",
                _for(anomalies_of("mem", "outstanding_bytes"), interval, window),
                "warning",
                "Outstanding memory growing faster than recorded",
                f"Memory allocated and not freed grows by more than {_number(limit)} bytes/s "
                f"(baseline {_number(base)} B/s): a leak; otlp-ebpf mem shows the stacks.",
            )
        )
    return rules


def _finding_rules(analysis: Analysis, window: float) -> list[AlertRule]:
    """One rule per finding's main series, at the detector's minimum effect above (or
    below) the baseline the recording showed."""
    assert analysis.timeline is not None
    interval = analysis.timeline.interval_s
    w = duration_text(window)
    rules = []
    for finding in analysis.findings:
        anomaly = (
            finding.effects[0]
            if finding.effects
            else (finding.cause.anomaly if finding.cause else None)
        )
        if anomaly is None:
            continue
        rule = _rule_for(finding.kind, anomaly, w, interval, window, finding.summary)
        if rule is None:
            rule = _cpu_rule_for(finding.kind, anomaly, analysis, w, window, finding.summary)
        if rule is not None:
            rules.append(rule)
        # A CPU finding's process and function come together (a hog spends its time in a
        # function): each gets its rule, so either alone would still be caught.
        for cause in finding.causes:
            if cause.anomaly is not anomaly and cause.kind in ("cpu_hog", "hot_function"):
                extra = _cpu_rule_for(
                    cause.kind, cause.anomaly, analysis, w, window, finding.summary
                )
                if extra is not None:
                    rules.append(extra)
    return rules


def _cpu_key_rules(
    timeline: Timeline, window: float, anomalies: Sequence[Anomaly]
) -> list[AlertRule]:
    """The targets' CPU, in CPUs (CPU seconds per second), above the recorded baseline."""
    hz = timeline.cpu_hz
    total = next(
        (s for s in timeline.series if (s.signal, s.name) == ("cpu", "samples") and not s.labels),
        None,
    )
    if total is None or not hz:
        return []
    base, limit = _baseline_threshold(total.values / hz, 0.1, 0.5)
    w = duration_text(window)
    seen = [a for a in anomalies if a.series is total]
    return [
        AlertRule(
            "OtlpEbpfCpuSaturation",
            f"sum(rate({PROMETHEUS_NAMES['otlp_ebpf.cpu.time']}[{w}])) > {_cpus(limit)}",
            _for(seen, timeline.interval_s, window),
            "warning",
            "The targets use more CPU than recorded",
            f"The traced processes together use more than {_cpus(limit)} CPUs (the "
            f"recording's baseline was {_cpus(base)}). Look at which process and function "
            "grew: otlp-ebpf cpu, or the profiles of the same time.",
        )
    ]


def _cpus(value: float) -> str:
    return f"{value:.3g}"


def _cpu_rule_for(
    kind: str, a: Anomaly, analysis: Analysis, w: str, window: float, summary: str
) -> AlertRule | None:
    """A CPU hog (per executable name) or a hot function (per leaf function), in CPUs,
    halfway between the baseline and what the anomaly showed."""
    timeline = analysis.timeline
    assert timeline is not None
    hz = timeline.cpu_hz
    if kind not in ("cpu_hog", "hot_function") or not hz:
        return None
    for_s = _for([a], timeline.interval_s, window)
    seen = f"The recording showed: {summary}"
    if kind == "hot_function":
        name = a.series.labels["function"]
        metric = PROMETHEUS_NAMES["otlp_ebpf.cpu.function.time"]
        return AlertRule(
            f"OtlpEbpfHotFunction_{_identifier(name)}",
            f"sum by ({FUNCTION_LABEL}) (rate({metric}"
            f'{{{FUNCTION_LABEL}="{_quoted(name)}"}}[{w}])) > {_cpus(_midpoint(a) / hz)}',
            for_s,
            "warning",
            f"{name} takes CPU as in the recorded incident",
            seen,
            {"finding": kind},
        )
    exe = _executable(analysis, a.series.labels["pid"])
    if not exe:
        return None
    # Every process of that executable counts (the metric's label is its name): the
    # threshold is halfway between their baseline and their total during the anomaly.
    before, during = _executable_cpu(timeline, analysis, exe, a)
    metric = PROMETHEUS_NAMES["otlp_ebpf.cpu.time"]
    return AlertRule(
        f"OtlpEbpfCpuHog_{_identifier(exe)}",
        f"sum by ({PROCESS_LABEL}) (rate({metric}"
        f'{{{PROCESS_LABEL}="{_quoted(exe)}"}}[{w}])) > {_cpus((before + during) / 2 / hz)}',
        for_s,
        "warning",
        f"{exe} uses CPU as in the recorded incident",
        seen,
        {"finding": kind},
    )


def _executable(analysis: Analysis, pid: str) -> str:
    """The executable name our OTLP resources give a process (`process.executable.name`)."""
    info = next((p for p in analysis.snapshot.processes if str(p.pid) == pid), None)
    if info is None:
        return ""
    return info.exe.rsplit("/", 1)[-1] if info.exe else info.comm


def _executable_cpu(
    timeline: Timeline, analysis: Analysis, exe: str, a: Anomaly
) -> tuple[float, float]:
    """Samples per second of every process of `exe`: median before the anomaly, median
    during it."""
    pids = {
        str(p.pid) for p in analysis.snapshot.processes if _executable(analysis, str(p.pid)) == exe
    }
    columns = [
        s.values
        for s in timeline.series
        if (s.signal, s.name) == ("cpu", "samples") and s.labels.get("pid") in pids
    ]
    total = np.sum(np.vstack(columns), axis=0)
    before = total[: a.first_row] if a.first_row else total[:1]
    return float(np.median(before)), float(np.median(total[a.first_row : a.last_row + 1]))


def _midpoint(anomaly: Anomaly) -> float:
    """Between the baseline and what the anomaly showed: fires on a repeat, not on noise."""
    if anomaly.series.nature == "latency":
        return math.sqrt(max(anomaly.baseline, 1.0) * max(anomaly.observed, 1.0))
    return (anomaly.baseline + anomaly.observed) / 2.0


def _rule_for(
    kind: str, a: Anomaly, w: str, interval: float, window: float, summary: str
) -> AlertRule | None:
    labels = a.series.labels
    limit = _number(_midpoint(a))
    for_s = _for([a], interval, window)
    seen = f"The recording showed: {summary}"
    if kind == "syscall_errors":
        name = labels["syscall"]
        return AlertRule(
            f"OtlpEbpfSyscallErrors_{_identifier(name)}",
            f"sum by ({SYSCALL_LABEL}) (rate({PROMETHEUS_NAMES['otlp_ebpf.syscall.errors']}"
            f'{{{SYSCALL_LABEL}="{_quoted(name)}"}}[{w}])) > {limit}',
            for_s,
            "critical",
            f"{name} errors as in the recorded incident",
            seen,
            {"finding": kind},
        )
    if kind == "syscall_latency":
        name = labels["syscall"]
        bucket = PROMETHEUS_NAMES["otlp_ebpf.syscall.duration"] + "_bucket"
        return AlertRule(
            f"OtlpEbpfSyscallLatency_{_identifier(name)}",
            f"histogram_quantile(0.99, sum by (le, {SYSCALL_LABEL}) (rate({bucket}"
            f'{{{SYSCALL_LABEL}="{_quoted(name)}"}}[{w}]))) > {limit}',
            for_s,
            "warning",
            f"{name} p99 latency as in the recorded incident",
            seen,
            {"finding": kind},
        )
    if kind == "fewer_calls":
        name = labels["syscall"]
        return AlertRule(
            f"OtlpEbpfFewerCalls_{_identifier(name)}",
            f"sum by ({SYSCALL_LABEL}) (rate({PROMETHEUS_NAMES['otlp_ebpf.syscall.calls']}"
            f'{{{SYSCALL_LABEL}="{_quoted(name)}"}}[{w}])) < {limit}',
            for_s,
            "warning",
            f"Fewer {name} calls, as in the recorded incident",
            seen,
            {"finding": kind},
        )
    if kind == "drops":
        reason = labels.get("reason", "")
        return AlertRule(
            f"OtlpEbpfDrops_{_identifier(reason)}",
            f"sum by ({DROP_LABEL}) (rate({PROMETHEUS_NAMES['otlp_ebpf.network.drops']}"
            f'{{{DROP_LABEL}="{_quoted(reason)}"}}[{w}])) > {limit}',
            for_s,
            "warning",
            f"Packets dropped ({reason}) as in the recorded incident",
            seen,
            {"finding": kind},
        )
    return None


def _identifier(text: str) -> str:
    """An alert name part: letters, digits and underscores only."""
    cleaned = "".join(c if c.isalnum() and c.isascii() else "_" for c in text)
    return cleaned.strip("_")[:60] or "x"


def _quoted(text: str) -> str:
    """A PromQL string literal's content (double-quoted, Go escapes)."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
