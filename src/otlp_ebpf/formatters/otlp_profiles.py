"""OTLP profiles (`profiles/v1development`) export requests built from stack snapshots.

One ProfilesDictionary serves the whole request. Every dictionary table starts with its zero
value, entries are interned on first use (so there are neither duplicates nor orphans), and
samples that share a stack and attributes are merged. Each process becomes one
ResourceProfiles; each StackProfile of a snapshot becomes one Profile with a single
sample_type.
"""

from __future__ import annotations

import functools
import os
import re
import uuid
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.profiles.v1development import profiles_pb2 as pb
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from otlp_ebpf import __version__
from otlp_ebpf.model import KERNEL_SUFFIX, ProcessInfo, Snapshot, StackCount, StackProfile

SCOPE_NAME = "otlp-ebpf"
KERNEL_MAPPING = "[kernel.kallsyms]"
FRAME_TYPE_KEY = "profile.frame.type"

AttributeValue = str | int | Sequence[str]

# Memory profiles come from per-process allocation tables: a thread id there would be made up.
_THREADLESS_SAMPLE_TYPES = frozenset({"allocated_space", "allocated_objects"})
# The period says how many events one sample stands for; only sampled profiles have one.
_PERIOD_TYPES = {"samples": ("cpu", "nanoseconds")}
_UNRESOLVED = re.compile(r"^(?P<module>.+)\+0x(?P<offset>[0-9a-fA-F]+)$")


def build_profiles_request(
    snapshots: Snapshot | Sequence[Snapshot],
    resource_attrs: Mapping[str, str] | None = None,
) -> ExportProfilesServiceRequest:
    """The OTLP profiles request for the stack profiles of `snapshots`.

    `resource_attrs` (OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME) are added to every process
    resource and win over what we derive, so `service.name` set by the user is kept.
    """
    group = [snapshots] if isinstance(snapshots, Snapshot) else list(snapshots)
    builder = _RequestBuilder(resource_attrs or {})
    for snapshot in group:
        builder.add_snapshot(snapshot)
    return builder.finish()


def process_resource_attributes(
    snapshot: Snapshot,
    pid: int,
    comm: str,
    resource_attrs: Mapping[str, str],
    processes: Mapping[int, ProcessInfo],
) -> dict[str, AttributeValue]:
    """Resource attributes for one process: semantic-convention `process.*`, host and service.

    Shared with the metrics formatter so both signals describe a process the same way.
    `processes`: the snapshot's, from `processes_by_pid` (made once per snapshot).
    """
    info = processes.get(pid)
    exe = info.exe if info else ""
    name = os.path.basename(exe) if exe else (info.comm if info else comm) or comm
    attrs: dict[str, AttributeValue] = {"process.pid": pid}
    if name:
        attrs["process.executable.name"] = name
    if exe:
        attrs["process.executable.path"] = exe
    if info and info.cmdline:
        attrs["process.command_args"] = list(info.cmdline)
    if snapshot.host:
        attrs["host.name"] = snapshot.host
    attrs["service.name"] = name or f"pid-{pid}"
    attrs.update(resource_attrs)
    return attrs


def to_key_values(attrs: Mapping[str, AttributeValue]) -> list[KeyValue]:
    """Plain attributes as OTLP KeyValues (strings, integers, string arrays)."""
    return [KeyValue(key=key, value=any_value(value)) for key, value in attrs.items()]


def any_value(value: AttributeValue) -> AnyValue:
    out = AnyValue()
    set_any_value(out, value)
    return out


def set_any_value(out: AnyValue, value: bool | int | float | str | Sequence[Any]) -> None:
    """`value` into `out` as the OTLP encoders map it: bool, int, float and str to their own
    field (bool before int: a bool is an int), a sequence to an array of those."""
    if isinstance(value, str):
        out.string_value = value
    elif isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    else:
        values = out.array_value.values
        for item in value:
            set_any_value(values.add(), item)


def snapshot_time_unix_nano(snapshot: Snapshot) -> int:
    """`started_at` (ISO 8601) in Unix nanoseconds; 0 when it cannot be read."""
    try:
        started = datetime.fromisoformat(snapshot.started_at)
    except (TypeError, ValueError):
        return 0
    return int(started.timestamp() * 1_000_000_000)


def processes_by_pid(snapshot: Snapshot) -> dict[int, ProcessInfo]:
    """The snapshot's processes by pid (the first entry of a pid)."""
    by_pid: dict[int, ProcessInfo] = {}
    for process in snapshot.processes:
        by_pid.setdefault(process.pid, process)
    return by_pid


class _Table:
    """A dictionary table: the zero value at index 0, each further value once, in use order."""

    def __init__(self, zero: Hashable) -> None:
        self._index: dict[Hashable, int] = {zero: 0}
        self.items: list[Hashable] = [zero]

    def intern(self, key: Hashable) -> int:
        index = self._index.get(key)
        if index is None:
            index = len(self.items)
            self._index[key] = index
            self.items.append(key)
        return index


@dataclass(frozen=True)
class _Frame:
    """What one frame string tells: function name, file it came from, address, kind."""

    function: str
    filename: str
    address: int
    kind: str


# The frames parsed lately: the same frames come back in every interval the agent exports.
PARSED_FRAMES_KEPT = 16384


@functools.lru_cache(maxsize=PARSED_FRAMES_KEPT)
def parse_frame(name: str, module: str) -> _Frame:
    """Split a snapshot frame (`vfs_read_[k]`, `main`, `libc.so.6+0x1a2b`) into its parts."""
    if name.endswith(KERNEL_SUFFIX):
        return _Frame(name[: -len(KERNEL_SUFFIX)], KERNEL_MAPPING, 0, "kernel")
    match = _UNRESOLVED.match(name)
    if match and (not module or os.path.basename(module) == os.path.basename(match["module"])):
        return _Frame("", module or match["module"], int(match["offset"], 16), "native")
    return _Frame(name, module, 0, "native")


class _RequestBuilder:
    def __init__(self, resource_attrs: Mapping[str, str]) -> None:
        self._resource_attrs = resource_attrs
        self._strings = _Table("")
        self._attributes = _Table(None)
        self._functions = _Table(None)
        self._mappings = _Table(None)
        self._locations = _Table(None)
        self._stacks = _Table(())
        self._attribute_values: dict[int, AnyValue] = {}
        # pid -> (resource attributes, profiles), in first-seen order
        self._resources: dict[int, tuple[dict[str, AttributeValue], list[pb.Profile]]] = {}

    def add_snapshot(self, snapshot: Snapshot) -> None:
        processes = processes_by_pid(snapshot)
        for stack_profile in snapshot.stack_profiles():
            for pid, stacks in _by_pid(stack_profile.stacks).items():
                resource = self._resources.get(pid)
                if resource is None:
                    attrs = process_resource_attributes(
                        snapshot, pid, stacks[0].comm, self._resource_attrs, processes
                    )
                    resource = (attrs, [])
                    self._resources[pid] = resource
                resource[1].append(self._profile(snapshot, stack_profile, stacks))

    def _profile(
        self, snapshot: Snapshot, stack_profile: StackProfile, stacks: list[StackCount]
    ) -> pb.Profile:
        profile = pb.Profile(
            sample_type=self._value_type(stack_profile.sample_type, stack_profile.unit),
            time_unix_nano=snapshot_time_unix_nano(snapshot),
            duration_nano=int(snapshot.duration_s * 1_000_000_000),
            profile_id=uuid.uuid4().bytes,
        )
        period_type = _PERIOD_TYPES.get(stack_profile.sample_type)
        if period_type and stack_profile.period_ns:
            profile.period_type.CopyFrom(self._value_type(*period_type))
            profile.period = stack_profile.period_ns
        with_thread = stack_profile.sample_type not in _THREADLESS_SAMPLE_TYPES
        merged: dict[tuple[int, tuple[int, ...]], int] = {}
        for stack in stacks:
            weight = stack_profile.weight(stack)
            if weight <= 0:
                continue
            key = (self._stack(stack), self._sample_attributes(stack, with_thread))
            merged[key] = merged.get(key, 0) + weight
        profile.samples.extend(
            pb.Sample(stack_index=stack_index, attribute_indices=attrs, values=[value])
            for (stack_index, attrs), value in merged.items()
        )
        return profile

    def _value_type(self, type_: str, unit: str) -> pb.ValueType:
        return pb.ValueType(
            type_strindex=self._strings.intern(type_), unit_strindex=self._strings.intern(unit)
        )

    def _sample_attributes(self, stack: StackCount, with_thread: bool) -> tuple[int, ...]:
        if not with_thread:
            return ()
        indices = [self._attribute("thread.id", stack.tid)]
        if stack.comm:
            indices.append(self._attribute("thread.name", stack.comm))
        return tuple(sorted(indices))

    def _attribute(self, key: str, value: str | int) -> int:
        key_index = self._strings.intern(key)
        index = self._attributes.intern((key_index, type(value).__name__, value))
        if index not in self._attribute_values:  # once per distinct attribute, not per use
            self._attribute_values[index] = any_value(value)
        return index

    def _stack(self, stack: StackCount) -> int:
        modules = (
            stack.modules if len(stack.modules) == len(stack.frames) else ("",) * len(stack.frames)
        )
        # Snapshot frames are root first; OTLP stacks are leaf first.
        locations = tuple(
            self._location(parse_frame(name, module))
            for name, module in zip(reversed(stack.frames), reversed(modules), strict=True)
        )
        return self._stacks.intern(locations)

    def _location(self, frame: _Frame) -> int:
        mapping = (
            self._mappings.intern((self._strings.intern(frame.filename),))
            if (frame.filename)
            else 0
        )
        function = 0
        if frame.function:
            function = self._functions.intern(
                (self._strings.intern(frame.function), self._strings.intern(""))
            )
        frame_type = self._attribute(FRAME_TYPE_KEY, frame.kind)
        return self._locations.intern((mapping, frame.address, function, frame_type))

    def finish(self) -> ExportProfilesServiceRequest:
        request = ExportProfilesServiceRequest()
        for attrs, profiles in self._resources.values():
            scope_profiles = pb.ScopeProfiles(
                scope=InstrumentationScope(name=SCOPE_NAME, version=__version__),
                profiles=profiles,
            )
            request.resource_profiles.append(
                pb.ResourceProfiles(
                    resource=Resource(attributes=to_key_values(attrs)),
                    scope_profiles=[scope_profiles],
                )
            )
        self._fill_dictionary(request.dictionary)
        return request

    def _fill_dictionary(self, dictionary: pb.ProfilesDictionary) -> None:
        dictionary.mapping_table.append(pb.Mapping())
        for (filename,) in _entries(self._mappings):
            dictionary.mapping_table.append(pb.Mapping(filename_strindex=filename))
        dictionary.function_table.append(pb.Function())
        for name, _system_name in _entries(self._functions):
            dictionary.function_table.append(pb.Function(name_strindex=name))
        dictionary.location_table.append(pb.Location())
        for mapping, address, function, frame_type in _entries(self._locations):
            location = pb.Location(
                mapping_index=mapping, address=address, attribute_indices=[frame_type]
            )
            if function:
                location.lines.append(pb.Line(function_index=function))
            dictionary.location_table.append(location)
        dictionary.stack_table.append(pb.Stack())
        for locations in _entries(self._stacks):
            dictionary.stack_table.append(pb.Stack(location_indices=locations))
        dictionary.attribute_table.append(pb.KeyValueAndUnit())
        for index, (key_index, _type, _value) in enumerate(_entries(self._attributes), start=1):
            dictionary.attribute_table.append(
                pb.KeyValueAndUnit(key_strindex=key_index, value=self._attribute_values[index])
            )
        dictionary.link_table.append(pb.Link())
        # Strings last: every other table interns into it while being filled above.
        dictionary.string_table.extend(str(s) for s in self._strings.items)


def _entries(table: _Table) -> Iterable[tuple[int, ...]]:
    """The non-zero entries of an interned table (their keys are index tuples)."""
    return table.items[1:]  # type: ignore[return-value]


def _by_pid(stacks: Iterable[StackCount]) -> dict[int, list[StackCount]]:
    grouped: dict[int, list[StackCount]] = {}
    for stack in stacks:
        grouped.setdefault(stack.pid, []).append(stack)
    return grouped
