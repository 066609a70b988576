"""pprof: a gzipped perftools.profiles.Profile, encoded here by hand.

Read by `go tool pprof`, Pyroscope and Parca. One Profile holds several sample types only when
they share stacks (memory: bytes and objects); other stack profiles (off-CPU, page faults) go to
sibling files. On-CPU samples carry two values, samples/count and cpu/nanoseconds (count x
period). Locations are leaf first; each sample is labelled with pid, tid and comm.
"""

from __future__ import annotations

import functools
import gzip
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO

from otlp_ebpf.formatters.registry import Part
from otlp_ebpf.model import Snapshot, StackCount, StackProfile

# Field numbers of perftools.profiles (github.com/google/pprof/proto/profile.proto).
PROFILE_SAMPLE_TYPE, PROFILE_SAMPLE, PROFILE_MAPPING, PROFILE_LOCATION = 1, 2, 3, 4
PROFILE_FUNCTION, PROFILE_STRING_TABLE = 5, 6
PROFILE_TIME_NANOS, PROFILE_DURATION_NANOS, PROFILE_PERIOD_TYPE, PROFILE_PERIOD = 9, 10, 11, 12
PROFILE_COMMENT, PROFILE_DEFAULT_SAMPLE_TYPE = 13, 14

_UINT64 = (1 << 64) - 1


class ProtoWriter:
    """Just enough of the protobuf wire format: varints and length-delimited fields."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def _varint(self, value: int) -> None:
        value &= _UINT64  # negative int64 travels as its two's complement
        while value > 0x7F:
            self.buffer.append((value & 0x7F) | 0x80)
            value >>= 7
        self.buffer.append(value)

    def _key(self, number: int, wire_type: int) -> None:
        self._varint((number << 3) | wire_type)

    def uint(self, number: int, value: int) -> ProtoWriter:
        """A varint field; zero is the default and is left out, as protobuf does."""
        if value:
            self._key(number, 0)
            self._varint(value)
        return self

    def bytes_field(self, number: int, data: bytes) -> ProtoWriter:
        self._key(number, 2)
        self._varint(len(data))
        self.buffer += data
        return self

    def message(self, number: int, inner: ProtoWriter) -> ProtoWriter:
        return self.bytes_field(number, bytes(inner.buffer))

    def packed(self, number: int, values: Iterable[int]) -> ProtoWriter:
        inner = ProtoWriter()
        for value in values:
            inner._varint(value)
        if inner.buffer:
            self.bytes_field(number, bytes(inner.buffer))
        return self


class _Strings:
    def __init__(self) -> None:
        self.ids: dict[str, int] = {"": 0}

    def __call__(self, text: str) -> int:
        return self.ids.setdefault(text, len(self.ids))


@dataclass
class _Tables:
    """Deduplicated functions, mappings and locations, ids 1-based in order of first use."""

    strings: _Strings = field(default_factory=_Strings)
    functions: dict[str, int] = field(default_factory=dict)
    mappings: dict[str, int] = field(default_factory=dict)
    locations: dict[tuple[str, str], tuple[int, int, int]] = field(default_factory=dict)

    def location(self, frame: str, module: str) -> int:
        found = self.locations.get((frame, module))
        if found is not None:
            return found[0]
        function_id = self.functions.setdefault(frame, len(self.functions) + 1)
        mapping_id = self.mappings.setdefault(module, len(self.mappings) + 1) if module else 0
        location_id = len(self.locations) + 1
        self.locations[(frame, module)] = (location_id, function_id, mapping_id)
        return location_id


@dataclass(frozen=True)
class _SampleType:
    type: str
    unit: str
    scale: int = 1  # value = weight x scale (cpu nanoseconds = samples x period)


def _sample_types(profile: StackProfile) -> list[_SampleType]:
    """pprof's customary names for our profiles; anything else keeps its own name."""
    if profile.sample_type == "samples" and profile.period_ns:
        return [
            _SampleType("samples", "count"),
            _SampleType("cpu", "nanoseconds", profile.period_ns),
        ]
    names = {
        "allocated_space": "inuse_space",
        "allocated_objects": "inuse_objects",
    }
    return [_SampleType(names.get(profile.sample_type, profile.sample_type), profile.unit)]


def _stack_key(stack: StackCount) -> tuple[int, int, str, tuple[str, ...], tuple[str, ...]]:
    return (stack.pid, stack.tid, stack.comm, stack.frames, stack.modules)


def profile_groups(profiles: Sequence[StackProfile]) -> list[list[StackProfile]]:
    """Profiles grouped so that each group lists the same stacks in the same order."""
    groups: list[list[StackProfile]] = []
    for profile in profiles:
        keys = [_stack_key(s) for s in profile.stacks]
        for group in groups:
            if [_stack_key(s) for s in group[0].stacks] == keys:
                group.append(profile)
                break
        else:
            groups.append([profile])
    return groups


def _location_ids(stack: StackCount, tables: _Tables) -> list[int]:
    frames = stack.frames or ("[unknown]",)
    modules = stack.modules if len(stack.modules) == len(frames) else ("",) * len(frames)
    # pprof lists the leaf first.
    return [tables.location(f, m) for f, m in zip(reversed(frames), reversed(modules), strict=True)]


def _label(tables: _Tables, key: str, *, text: str = "", number: int = 0) -> ProtoWriter:
    label = ProtoWriter().uint(1, tables.strings(key))
    if text:
        label.uint(2, tables.strings(text))
    return label.uint(3, number)


def _samples(
    group: list[StackProfile], types: list[list[_SampleType]], tables: _Tables
) -> ProtoWriter:
    out = ProtoWriter()
    merged: dict[tuple[int, int, str, tuple[int, ...]], list[int]] = {}
    for row, stack in enumerate(group[0].stacks):
        values = [
            profile.weight(profile.stacks[row]) * t.scale
            for profile, profile_types in zip(group, types, strict=True)
            for t in profile_types
        ]
        if not any(values):
            continue
        key = (stack.pid, stack.tid, stack.comm, tuple(_location_ids(stack, tables)))
        total = merged.setdefault(key, [0] * len(values))
        merged[key] = [a + b for a, b in zip(total, values, strict=True)]
    for (pid, tid, comm, location_ids), values in merged.items():
        sample = ProtoWriter().packed(1, location_ids).packed(2, values)
        sample.message(3, _label(tables, "pid", number=pid))
        sample.message(3, _label(tables, "tid", number=tid))
        if comm:
            sample.message(3, _label(tables, "comm", text=comm))
        out.message(PROFILE_SAMPLE, sample)
    return out


def _tables_fields(tables: _Tables) -> ProtoWriter:
    out = ProtoWriter()
    for module, mapping_id in tables.mappings.items():
        mapping = ProtoWriter().uint(1, mapping_id).uint(5, tables.strings(module)).uint(7, 1)
        out.message(PROFILE_MAPPING, mapping)
    for (_frame, _module), (location_id, function_id, mapping_id) in tables.locations.items():
        line = ProtoWriter().uint(1, function_id)
        location = ProtoWriter().uint(1, location_id).uint(2, mapping_id).message(4, line)
        out.message(PROFILE_LOCATION, location)
    for name, function_id in tables.functions.items():
        name_id = tables.strings(name)
        function = ProtoWriter().uint(1, function_id).uint(2, name_id).uint(3, name_id)
        out.message(PROFILE_FUNCTION, function)
    return out


def _time_nanos(started_at: str) -> int:
    try:
        return int(datetime.fromisoformat(started_at).timestamp() * 1e9)
    except ValueError:
        return 0


def encode_profile(snapshot: Snapshot, group: list[StackProfile]) -> bytes:
    """One uncompressed pprof Profile holding every sample type of `group`."""
    tables = _Tables()
    types = [_sample_types(p) for p in group]
    out = ProtoWriter()
    for sample_type in (t for profile_types in types for t in profile_types):
        value_type = ProtoWriter().uint(1, tables.strings(sample_type.type))
        out.message(PROFILE_SAMPLE_TYPE, value_type.uint(2, tables.strings(sample_type.unit)))
    samples = _samples(group, types, tables)
    out.buffer += samples.buffer
    out.buffer += _tables_fields(tables).buffer
    out.uint(PROFILE_TIME_NANOS, _time_nanos(snapshot.started_at))
    out.uint(PROFILE_DURATION_NANOS, int(snapshot.duration_s * 1e9))
    cpu = next((p for p in group if p.sample_type == "samples" and p.period_ns), None)
    if cpu is not None:
        period_type = ProtoWriter().uint(1, tables.strings("cpu"))
        out.message(PROFILE_PERIOD_TYPE, period_type.uint(2, tables.strings("nanoseconds")))
        out.uint(PROFILE_PERIOD, cpu.period_ns)
    out.packed(PROFILE_COMMENT, [tables.strings(f"otlp-ebpf {snapshot.kind} on {snapshot.host}")])
    out.uint(PROFILE_DEFAULT_SAMPLE_TYPE, tables.strings(types[0][0].type))
    # The string table goes last: every other field has added its strings by now.
    for text in tables.strings.ids:
        out.bytes_field(PROFILE_STRING_TABLE, text.encode("utf-8"))
    return bytes(out.buffer)


def _compressed(snapshot: Snapshot, group: list[StackProfile]) -> bytes:
    # mtime=0: the same snapshot gives the same bytes.
    return gzip.compress(encode_profile(snapshot, group), compresslevel=6, mtime=0)


def _file_name(group: list[StackProfile]) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", group[0].name)


def render_parts(snapshot: Snapshot) -> list[Part]:
    """The main pprof file for the first group of profiles, a sibling for each other group."""
    groups = profile_groups(snapshot.stack_profiles())
    result: list[Part] = []
    for index, group in enumerate(groups):
        data = _compressed(snapshot, group)
        name = "" if index == 0 else _file_name(group)
        result.append((name, functools.partial(_write_bytes, data)))
    return result


def _write_bytes(data: bytes, stream: BinaryIO) -> None:
    stream.write(data)


def render(snapshot: Snapshot, stream: BinaryIO) -> None:
    """Write the main pprof file (the first group of profiles that share stacks)."""
    groups = profile_groups(snapshot.stack_profiles())
    if groups:
        stream.write(_compressed(snapshot, groups[0]))
