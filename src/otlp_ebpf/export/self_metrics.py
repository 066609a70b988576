"""The agent's own figures: Prometheus text for `/metrics` and the same as OTLP metrics.

One `AgentFigures` holds the latest values (updated once per interval by the agent and live
by the export stream); a prometheus-client collector renders them as `otlp_ebpf_*` families,
and `otlp_request` turns them into one OTLP metrics request sent with each interval's batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AGGREGATION_TEMPORALITY_CUMULATIVE,
    ScopeMetrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.core import Metric as PromMetric
from prometheus_client.registry import CollectorRegistry

from otlp_ebpf.analysis.watch import WatchCounts
from otlp_ebpf.export.stream import StreamCounts
from otlp_ebpf.formatters.otlp_metrics import add_resource_scope, fill_attributes, set_number
from otlp_ebpf.formatters.otlp_request import EncodedRequest


@dataclass(frozen=True)
class Figure:
    """One self-metric: its Prometheus name (without `_total`), OTLP name, unit, help."""

    prom: str
    otlp: str
    unit: str
    help: str
    counter: bool


_C, _G = True, False  # counter, gauge
FIGURES = {
    "events": Figure(
        "otlp_ebpf_events",
        "otlp_ebpf.agent.events",
        "{event}",
        "Events collected per signal.",
        _C,
    ),
    "lost": Figure(
        "otlp_ebpf_lost_events",
        "otlp_ebpf.agent.lost_events",
        "{event}",
        "Events lost per signal (ring buffer or map full, stack collisions).",
        _C,
    ),
    "bpf": Figure(
        "otlp_ebpf_bpf_run_seconds",
        "otlp_ebpf.agent.bpf.run_time",
        "s",
        "Run time of the agent's BPF programs (paid by the traced processes).",
        _C,
    ),
    "cpu": Figure(
        "otlp_ebpf_cpu_seconds",
        "otlp_ebpf.agent.cpu.time",
        "s",
        "CPU time of the agent and its helper processes.",
        _C,
    ),
    "rss": Figure(
        "otlp_ebpf_resident_memory_bytes",
        "otlp_ebpf.agent.memory.rss",
        "By",
        "Resident memory of the agent.",
        _G,
    ),
    "helpers_rss": Figure(
        "otlp_ebpf_helpers_resident_memory_bytes",
        "otlp_ebpf.agent.helpers.memory.rss",
        "By",
        "Resident memory of the agent's helper processes (the unwind-table decoder), apart "
        "from the agent's own.",
        _G,
    ),
    "intervals": Figure(
        "otlp_ebpf_intervals",
        "otlp_ebpf.agent.intervals",
        "{interval}",
        "Intervals collected and handed to export.",
        _C,
    ),
    "interval_duration": Figure(
        "otlp_ebpf_interval_duration_seconds",
        "otlp_ebpf.agent.interval.duration",
        "s",
        "Length of the last interval.",
        _G,
    ),
    "cost": Figure(
        "otlp_ebpf_cost_percent",
        "otlp_ebpf.agent.cost",
        "%",
        "Cost of the last interval in percent of one core (CPU and BPF run time).",
        _G,
    ),
    "budget": Figure(
        "otlp_ebpf_budget_percent",
        "otlp_ebpf.agent.budget",
        "%",
        "Overhead budget in percent of one core (0: none).",
        _G,
    ),
    "rate": Figure(
        "otlp_ebpf_sampling_rate_hertz",
        "otlp_ebpf.agent.sampling.rate",
        "Hz",
        "Effective sampling rate per signal.",
        _G,
    ),
    "traced": Figure(
        "otlp_ebpf_traced_ratio",
        "otlp_ebpf.agent.traced.ratio",
        "1",
        "Share of the time a per-event signal's programs are attached (1: throughout; "
        "below 1 the budget duty-cycles them and its counts are unbiased estimates).",
        _G,
    ),
    "attempts": Figure(
        "otlp_ebpf_export_attempts",
        "otlp_ebpf.agent.export.attempts",
        "{request}",
        "OTLP requests tried (each with its retries).",
        _C,
    ),
    "failures": Figure(
        "otlp_ebpf_export_failures",
        "otlp_ebpf.agent.export.failures",
        "{request}",
        "OTLP requests that failed after their retries.",
        _C,
    ),
    "spilled": Figure(
        "otlp_ebpf_spilled_batches",
        "otlp_ebpf.agent.spill.spilled",
        "{batch}",
        "Interval batches written to the spill directory.",
        _C,
    ),
    "resent": Figure(
        "otlp_ebpf_resent_batches",
        "otlp_ebpf.agent.spill.resent",
        "{batch}",
        "Spilled batches delivered later.",
        _C,
    ),
    "dropped": Figure(
        "otlp_ebpf_dropped_batches",
        "otlp_ebpf.agent.spill.dropped",
        "{batch}",
        "Spilled batches removed unsent to keep the spill directory under its cap.",
        _C,
    ),
    "findings": Figure(
        "otlp_ebpf_findings",
        "otlp_ebpf.agent.findings",
        "{finding}",
        "Findings of the agent's watch, counted once when they first fire, by kind and severity.",
        _C,
    ),
    "watch": Figure(
        "otlp_ebpf_watch_seconds",
        "otlp_ebpf.agent.watch.time",
        "s",
        "CPU time the watch spent running the inspections over its window.",
        _C,
    ),
    "bursts": Figure(
        "otlp_ebpf_bursts",
        "otlp_ebpf.agent.bursts",
        "{burst}",
        "Bursts of full-rate sampling started after a finding.",
        _C,
    ),
    "recordings": Figure(
        "otlp_ebpf_recordings",
        "otlp_ebpf.agent.recordings",
        "{recording}",
        "Recordings of a finding's window written to the recordings directory.",
        _C,
    ),
    "deferred": Figure(
        "otlp_ebpf_deferred",
        "otlp_ebpf.agent.deferred",
        "{item}",
        "Work queued to hold the budget, by kind (symbols: new binaries whose symbols waited; "
        "their frames are named module+offset meanwhile).",
        _C,
    ),
    "deferred_dropped": Figure(
        "otlp_ebpf_deferred_dropped",
        "otlp_ebpf.agent.deferred.dropped",
        "{item}",
        "Queued work that left the queue for room before it was done, by kind.",
        _C,
    ),
    "spill_bytes": Figure(
        "otlp_ebpf_spill_bytes",
        "otlp_ebpf.agent.spill.size",
        "By",
        "Bytes waiting in the spill directory.",
        _G,
    ),
}


@dataclass
class AgentFigures:
    """Latest values; `update_interval` from the collection loop, stream counts read live."""

    budget_pct: float = 0.0
    events: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    bpf_s: float = 0.0
    cpu_s: float = 0.0
    rss_bytes: int = 0
    helpers_rss_bytes: int = 0
    intervals: int = 0
    interval_s: float = 0.0
    cost_pct: float = 0.0
    rates: dict[str, float] = field(default_factory=dict)
    deferred: dict[str, int] = field(default_factory=dict)
    deferred_dropped: dict[str, int] = field(default_factory=dict)
    stream: StreamCounts = field(default_factory=StreamCounts)
    dropped: int = 0
    spill_bytes: int = 0
    findings: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, severity)
    watch_s: float | None = None  # None: no watch
    bursts: int = 0
    recordings: int = 0
    start_ns: int = field(default_factory=time.time_ns)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def update_interval(
        self,
        *,
        events: Mapping[str, int],
        lost: Mapping[str, int],
        bpf_ns: int,
        cpu_s: float,
        rss_kb: int,
        duration_s: float,
        cost_pct: float,
        rates: Mapping[str, float],
        helpers_rss_kb: int = 0,
        deferred: Mapping[str, int] | None = None,
        deferred_dropped: Mapping[str, int] | None = None,
    ) -> None:
        with self.lock:
            self.deferred = dict(deferred or {})
            self.deferred_dropped = dict(deferred_dropped or {})
            for name, n in events.items():
                self.events[name] = self.events.get(name, 0) + n
            self.lost = dict(lost)
            self.bpf_s = bpf_ns / 1e9
            self.cpu_s = cpu_s
            self.rss_bytes = rss_kb * 1024
            self.helpers_rss_bytes = helpers_rss_kb * 1024
            self.intervals += 1
            self.interval_s = duration_s
            self.cost_pct = cost_pct
            self.rates = dict(rates)

    def update_watch(self, counts: WatchCounts) -> None:
        with self.lock:
            self.findings = dict(counts.findings)
            self.watch_s = counts.analysis_s
            self.bursts = counts.bursts
            self.recordings = counts.recordings

    def values(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """(figure key, labels, value) for every point."""
        with self.lock:
            for signal, n in sorted(self.events.items()):
                yield "events", {"signal": signal}, n
            for signal in sorted(self.events):
                yield "lost", {"signal": signal}, self.lost.get(signal, 0)
            yield "bpf", {}, self.bpf_s
            yield "cpu", {}, self.cpu_s
            yield "rss", {}, self.rss_bytes
            yield "helpers_rss", {}, self.helpers_rss_bytes
            yield "intervals", {}, self.intervals
            yield "interval_duration", {}, self.interval_s
            yield "cost", {}, self.cost_pct
            yield "budget", {}, self.budget_pct
            for name, value in sorted(self.rates.items()):
                if name.endswith("_duty"):
                    yield "traced", {"signal": name.removesuffix("_duty")}, value
                else:
                    yield "rate", {"signal": name.removesuffix("_hz")}, value
            for work, n in sorted(self.deferred.items()):
                yield "deferred", {"work": work}, n
                yield "deferred_dropped", {"work": work}, self.deferred_dropped.get(work, 0)
            s = self.stream
            yield "attempts", {}, s.attempts
            yield "failures", {}, s.failures
            yield "spilled", {}, s.spilled_batches
            yield "resent", {}, s.resent_batches
            yield "dropped", {}, self.dropped
            yield "spill_bytes", {}, self.spill_bytes
            if self.watch_s is not None:
                for (kind, severity), n in sorted(self.findings.items()):
                    yield "findings", {"kind": kind, "severity": severity}, n
                yield "watch", {}, self.watch_s
                yield "bursts", {}, self.bursts
                yield "recordings", {}, self.recordings


class FiguresCollector:
    """A prometheus-client collector over `AgentFigures` (read at every scrape)."""

    def __init__(self, figures: AgentFigures) -> None:
        self.figures = figures

    def collect(self) -> Iterator[PromMetric]:
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for key, labels, value in self.figures.values():
            family = families.get(key)
            if family is None:
                f = FIGURES[key]
                kind = CounterMetricFamily if f.counter else GaugeMetricFamily
                family = families[key] = kind(f.prom, f.help, labels=sorted(labels))
            family.add_metric([labels[k] for k in sorted(labels)], value)
        yield from families.values()


def registry_of(figures: AgentFigures) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FiguresCollector(figures))
    return registry


def otlp_request(figures: AgentFigures, resource: Mapping[str, str]) -> EncodedRequest:
    """The self-metrics as one OTLP metrics request (cumulative counters from the agent's
    start, gauges now)."""
    now = time.time_ns()
    request = ExportMetricsServiceRequest()
    scope = add_resource_scope(request, resource)
    points: dict[str, Any] = {}  # figure key -> the data points of its metric
    for key, labels, value in figures.values():
        f = FIGURES[key]
        if key not in points:
            points[key] = _new_metric(scope, f)
        dp = points[key].add()
        if f.counter:
            dp.start_time_unix_nano = figures.start_ns
        dp.time_unix_nano = now  # a gauge is a value at an instant: no start time
        set_number(dp, value)
        fill_attributes(dp.attributes, ((f"otlp_ebpf.{k}", v) for k, v in labels.items()))
    return EncodedRequest("metrics", request.SerializeToString())


def _new_metric(scope: ScopeMetrics, f: Figure) -> Any:
    """The metric of figure `f` in `scope`; its data points, to add to."""
    metric = scope.metrics.add()
    metric.name = f.otlp
    metric.description = f.help
    metric.unit = f.unit
    if not f.counter:
        return metric.gauge.data_points
    metric.sum.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
    metric.sum.is_monotonic = True
    return metric.sum.data_points
