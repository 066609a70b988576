"""Conformance checks for the OTLP requests we send, in the spirit of the profiling SIG's
profcheck: each check returns human-readable violations, an empty list means conformant.

Profiles rules follow the comments of opentelemetry-proto `profiles/v1development` (proto
v1.10.0); metric rules follow the OTLP metrics data model for explicit-bucket histograms.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
)

FRAME_TYPES = {"native", "kernel", "jvm", "cpython", "php", "perl", "ruby", "v8js", "dotnet", "go"}
REQUIRED_RESOURCE_KEYS = ("process.pid", "service.name")
_TABLES = (
    "mapping_table",
    "location_table",
    "function_table",
    "link_table",
    "attribute_table",
    "stack_table",
)


def check_profiles_request(request: ExportProfilesServiceRequest) -> list[str]:
    """Every rule violation found in `request`, as one line each."""
    d = request.dictionary
    problems = _check_zero_values(request)
    problems += _check_duplicates(request)
    problems += _check_indices_and_orphans(request)
    problems += _check_locations(request)
    problems += _check_resources(request)
    for r, rp in enumerate(request.resource_profiles):
        for s, sp in enumerate(rp.scope_profiles):
            for p, profile in enumerate(sp.profiles):
                where = f"resource_profiles[{r}].scope_profiles[{s}].profiles[{p}]"
                problems += _check_profile(profile, d, where)
    return problems


def _check_zero_values(request: ExportProfilesServiceRequest) -> list[str]:
    d = request.dictionary
    problems = []
    if not d.string_table or d.string_table[0] != "":
        problems.append('string_table[0] must be ""')
    for name in _TABLES:
        table = getattr(d, name)
        if not table:
            problems.append(f"{name} lacks its zero value at index 0")
        elif table[0].ByteSize() != 0:
            problems.append(f"{name}[0] is not the zero value")
    return problems


def _check_duplicates(request: ExportProfilesServiceRequest) -> list[str]:
    d = request.dictionary
    problems = []
    for name in ("string_table", *_TABLES):
        seen: dict[Any, int] = {}
        for index, item in enumerate(getattr(d, name)):
            key = item if isinstance(item, str) else item.SerializeToString(deterministic=True)
            if key in seen:
                problems.append(f"{name}[{index}] duplicates {name}[{seen[key]}]")
            seen.setdefault(key, index)
    return problems


def _check_indices_and_orphans(request: ExportProfilesServiceRequest) -> list[str]:
    d = request.dictionary
    refs: dict[str, list[tuple[int, str]]] = {name: [] for name in ("string_table", *_TABLES)}

    def ref(table: str, index: int, where: str) -> None:
        refs[table].append((index, where))

    for i, m in enumerate(d.mapping_table):
        ref("string_table", m.filename_strindex, f"mapping_table[{i}]")
        for a in m.attribute_indices:
            ref("attribute_table", a, f"mapping_table[{i}]")
    for i, loc in enumerate(d.location_table):
        ref("mapping_table", loc.mapping_index, f"location_table[{i}]")
        for line in loc.lines:
            ref("function_table", line.function_index, f"location_table[{i}].lines")
        for a in loc.attribute_indices:
            ref("attribute_table", a, f"location_table[{i}]")
    for i, f in enumerate(d.function_table):
        for field in ("name_strindex", "system_name_strindex", "filename_strindex"):
            ref("string_table", getattr(f, field), f"function_table[{i}].{field}")
    for i, kv in enumerate(d.attribute_table):
        ref("string_table", kv.key_strindex, f"attribute_table[{i}]")
        ref("string_table", kv.unit_strindex, f"attribute_table[{i}]")
    for i, stack in enumerate(d.stack_table):
        for loc_index in stack.location_indices:
            ref("location_table", loc_index, f"stack_table[{i}]")
    for profile in _profiles(request):
        for vt in (profile.sample_type, profile.period_type):
            ref("string_table", vt.type_strindex, "profile value type")
            ref("string_table", vt.unit_strindex, "profile value type")
        for a in profile.attribute_indices:
            ref("attribute_table", a, "profile")
        for sample in profile.samples:
            ref("stack_table", sample.stack_index, "sample")
            ref("link_table", sample.link_index, "sample")
            for a in sample.attribute_indices:
                ref("attribute_table", a, "sample")

    problems = []
    for table, uses in refs.items():
        size = len(getattr(d, table))
        for index, where in uses:
            if not 0 <= index < size:
                problems.append(f"{where} points past {table} ({index} >= {size})")
        used = {index for index, _ in uses}
        problems += [f"{table}[{i}] is never referenced" for i in range(1, size) if i not in used]
    return problems


def _check_locations(request: ExportProfilesServiceRequest) -> list[str]:
    d = request.dictionary
    problems = []
    for i, stack in enumerate(d.stack_table[1:], start=1):
        if not stack.location_indices:
            problems.append(f"stack_table[{i}] is empty")
        if 0 in stack.location_indices:
            problems.append(f"stack_table[{i}] uses the null location")
    for i, loc in enumerate(d.location_table[1:], start=1):
        types = _attribute_values(d, loc.attribute_indices, "profile.frame.type")
        if len(types) != 1 or types[0] not in FRAME_TYPES:
            problems.append(f"location_table[{i}] has profile.frame.type {types}")
        problems += _duplicate_keys(d, loc.attribute_indices, f"location_table[{i}]")
        for line in loc.lines:
            if line.function_index == 0:
                problems.append(f"location_table[{i}] has a line without a function")
        if not loc.lines and not loc.address:
            problems.append(f"location_table[{i}] has neither lines nor an address")
    return problems


def _check_resources(request: ExportProfilesServiceRequest) -> list[str]:
    problems = []
    for r, rp in enumerate(request.resource_profiles):
        keys = [kv.key for kv in rp.resource.attributes]
        problems += [
            f"resource_profiles[{r}] lacks {k}" for k in REQUIRED_RESOURCE_KEYS if k not in keys
        ]
        if len(keys) != len(set(keys)):
            problems.append(f"resource_profiles[{r}] repeats a resource attribute key")
        if not rp.scope_profiles:
            problems.append(f"resource_profiles[{r}] has no scope_profiles")
    return problems


def _check_profile(profile: Any, d: Any, where: str) -> list[str]:
    problems = []
    st = profile.sample_type
    if not d.string_table[st.type_strindex] or not d.string_table[st.unit_strindex]:
        problems.append(f"{where} has no sample_type")
    if profile.period and not profile.HasField("period_type"):
        problems.append(f"{where} has a period without period_type")
    if profile.profile_id and (len(profile.profile_id) != 16 or not any(profile.profile_id)):
        problems.append(f"{where} has an invalid profile_id")
    identities: set[tuple[int, frozenset[int], int]] = set()
    for i, sample in enumerate(profile.samples):
        if len(sample.values) != 1 and not sample.timestamps_unix_nano:
            problems.append(
                f"{where}.samples[{i}] has {len(sample.values)} values for 1 sample_type"
            )
        identity = (sample.stack_index, frozenset(sample.attribute_indices), sample.link_index)
        if identity in identities:
            problems.append(f"{where}.samples[{i}] was not merged with an equal sample")
        identities.add(identity)
        problems += _duplicate_keys(d, sample.attribute_indices, f"{where}.samples[{i}]")
    return problems


def _profiles(request: ExportProfilesServiceRequest) -> Iterable[Any]:
    for rp in request.resource_profiles:
        for sp in rp.scope_profiles:
            yield from sp.profiles


def _attribute_values(d: Any, indices: Sequence[int], key: str) -> list[str]:
    values = []
    for index in indices:
        if 0 <= index < len(d.attribute_table):
            kv = d.attribute_table[index]
            if (
                0 <= kv.key_strindex < len(d.string_table)
                and d.string_table[kv.key_strindex] == key
            ):
                values.append(kv.value.string_value)
    return values


def _duplicate_keys(d: Any, indices: Sequence[int], where: str) -> list[str]:
    keys = [d.attribute_table[i].key_strindex for i in indices if 0 <= i < len(d.attribute_table)]
    return [f"{where} repeats an attribute key"] if len(keys) != len(set(keys)) else []


def check_metrics_request(request: ExportMetricsServiceRequest) -> list[str]:
    """Violations of the OTLP metrics data model in `request` (histograms and sums)."""
    problems = []
    for r, rm in enumerate(request.resource_metrics):
        keys = [kv.key for kv in rm.resource.attributes]
        if "service.name" not in keys:
            problems.append(f"resource_metrics[{r}] lacks service.name")
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                problems += _check_metric(metric)
    return problems


def _check_metric(metric: Message) -> list[str]:
    name = getattr(metric, "name", "")
    problems = [] if name else ["a metric has no name"]
    kind = metric.WhichOneof("data")
    if kind is None:
        return [*problems, f"{name} has no data"]
    data = getattr(metric, kind)
    if kind in ("sum", "histogram") and data.aggregation_temporality == 0:
        problems.append(f"{name} has no aggregation temporality")
    for i, point in enumerate(data.data_points):
        if not point.time_unix_nano:
            problems.append(f"{name}[{i}] has no time")
        if kind == "histogram":
            problems += _check_histogram_point(point, f"{name}[{i}]")
    return problems


def _check_histogram_point(point: Any, where: str) -> list[str]:
    problems = []
    bounds = list(point.explicit_bounds)
    if bounds != sorted(set(bounds)):
        problems.append(f"{where} bounds are not strictly increasing")
    if len(point.bucket_counts) != len(bounds) + 1:
        problems.append(f"{where} has {len(point.bucket_counts)} buckets for {len(bounds)} bounds")
    if sum(point.bucket_counts) != point.count:
        problems.append(f"{where} count {point.count} != sum of buckets {sum(point.bucket_counts)}")
    if point.HasField("min") and point.HasField("max") and point.min > point.max:
        problems.append(f"{where} min > max")
    return problems
