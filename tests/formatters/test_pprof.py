from __future__ import annotations

import gzip
import importlib.util
import io
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from otlp_ebpf.formatters import pprof
from otlp_ebpf.model import CpuSnapshot, Snapshot, StackCount
from tests.formatters.formatter_fixtures import COMMON, cpu_snapshot, mem_snapshot

PROTO_DIR = Path(__file__).resolve().parents[1] / "data" / "pprof"


@pytest.fixture(scope="module")
def profile_pb2(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """pprof's published profile.proto compiled by protoc: a decoder independent of ours."""
    out = tmp_path_factory.mktemp("pprof_proto")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={out}",
            "profile.proto",
        ],
        check=True,
        timeout=60,
    )
    spec = importlib.util.spec_from_file_location("pprof_profile_pb2", out / "profile_pb2.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def decode_parts(snapshot: Snapshot, profile_pb2: ModuleType) -> dict[str, Any]:
    decoded = {}
    for name, write in pprof.render_parts(snapshot):
        stream = io.BytesIO()
        write(stream)
        data = stream.getvalue()
        assert data[:2] == b"\x1f\x8b"  # gzip
        profile = profile_pb2.Profile()
        profile.ParseFromString(gzip.decompress(data))
        decoded[name] = profile
    return decoded


def check_tables(profile: Any) -> None:
    """String table starts empty, ids are 1-based and dense, every reference resolves."""
    assert profile.string_table[0] == ""
    for table in (profile.mapping, profile.location, profile.function):
        assert [entry.id for entry in table] == list(range(1, len(table) + 1))
    names = [profile.string_table[f.name] for f in profile.function]
    assert len(names) == len(set(names))  # functions deduplicated
    for location in profile.location:
        assert location.mapping_id <= len(profile.mapping)
        assert all(1 <= line.function_id <= len(profile.function) for line in location.line)
    for sample in profile.sample:
        assert all(1 <= i <= len(profile.location) for i in sample.location_id)
        assert len(sample.value) == len(profile.sample_type)


def value_types(profile: Any) -> list[tuple[str, str]]:
    s = profile.string_table
    return [(s[t.type], s[t.unit]) for t in profile.sample_type]


def stacks(profile: Any) -> Counter[tuple[tuple[str, ...], tuple[int, ...]]]:
    """Samples as (frames root first, values)."""
    s = profile.string_table
    function_names = {f.id: s[f.name] for f in profile.function}
    location_names = {loc.id: function_names[loc.line[0].function_id] for loc in profile.location}
    result: Counter[tuple[tuple[str, ...], tuple[int, ...]]] = Counter()
    for sample in profile.sample:
        frames = tuple(location_names[i] for i in reversed(sample.location_id))
        result[(frames, tuple(sample.value))] += 1
    return result


def labels(profile: Any, sample: Any) -> dict[str, object]:
    s = profile.string_table
    return {s[label.key]: s[label.str] if label.str else label.num for label in sample.label}


def test_cpu_profile_has_samples_and_cpu_time_with_period(profile_pb2: ModuleType) -> None:
    profile = decode_parts(cpu_snapshot(), profile_pb2)[""]

    check_tables(profile)
    assert value_types(profile) == [("samples", "count"), ("cpu", "nanoseconds")]
    s = profile.string_table
    assert (s[profile.period_type.type], s[profile.period_type.unit]) == ("cpu", "nanoseconds")
    assert profile.period == 10_000_000
    assert stacks(profile)[(("_start", "main", "compute", "inner"), (15, 150_000_000))] == 1
    assert sum(sample.value[0] for sample in profile.sample) == 100
    assert profile.duration_nanos == 10_000_000_000
    expected_start = datetime.fromisoformat(COMMON["started_at"]).timestamp() * 1e9
    assert profile.time_nanos == int(expected_start)
    assert s[profile.default_sample_type] == "samples"


def test_samples_carry_pid_tid_and_comm_labels(profile_pb2: ModuleType) -> None:
    profile = decode_parts(cpu_snapshot(), profile_pb2)[""]

    found = [labels(profile, sample) for sample in profile.sample]

    assert {"pid": 10, "tid": 11, "comm": "app"} in found
    assert {"pid": 20, "tid": 20, "comm": "db"} in found


def test_awkward_names_survive_and_locations_are_leaf_first(profile_pb2: ModuleType) -> None:
    profile = decode_parts(cpu_snapshot(), profile_pb2)[""]
    frames = {f for (names, _), _ in stacks(profile).items() for f in names}

    assert {"[unknown]", "<lambda>", "operator<", "a;b", "naïve_λ", "vfs_write_[k]"} <= frames
    leaf_first = profile.sample[0].location_id
    s = profile.string_table
    leaf = profile.location[leaf_first[0] - 1].line[0].function_id
    assert s[profile.function[leaf - 1].name] == "compute"


def test_off_cpu_goes_to_a_sibling_file_in_nanoseconds(profile_pb2: ModuleType) -> None:
    parts = decode_parts(cpu_snapshot(), profile_pb2)

    assert list(parts) == ["", "off_cpu"]
    off_cpu = parts["off_cpu"]
    check_tables(off_cpu)
    assert value_types(off_cpu) == [("off_cpu", "nanoseconds")]
    assert stacks(off_cpu)[(("run", "poll"), (1_000_000,))] == 1
    assert off_cpu.period == 0


def test_memory_bytes_and_objects_share_one_profile_with_mappings(
    profile_pb2: ModuleType,
) -> None:
    parts = decode_parts(mem_snapshot(page_faults=True), profile_pb2)

    assert list(parts) == ["", "page_faults"]
    profile = parts[""]
    check_tables(profile)
    assert value_types(profile) == [("inuse_space", "bytes"), ("inuse_objects", "count")]
    assert stacks(profile)[(("main", "load", "malloc"), (4096, 4))] == 1
    s = profile.string_table
    assert sorted(s[m.filename] for m in profile.mapping) == ["libc.so.6", "srv"]
    assert all(m.has_functions for m in profile.mapping)
    by_function = {
        s[profile.function[loc.line[0].function_id - 1].name]: loc.mapping_id
        for loc in profile.location
    }
    assert s[profile.mapping[by_function["malloc"] - 1].filename] == "libc.so.6"
    assert s[profile.mapping[by_function["load"] - 1].filename] == "srv"
    assert value_types(parts["page_faults"]) == [("page_faults", "count")]


def test_duplicate_stacks_merge_and_empty_stacks_get_a_placeholder(
    profile_pb2: ModuleType,
) -> None:
    same = StackCount(1, 1, "a", ("f", "g"), 2)
    snapshot = CpuSnapshot(
        **COMMON,
        stacks=(same, same, StackCount(1, 1, "a", (), 1), StackCount(2, 2, "b", ("x",), 0)),
    )
    profile = decode_parts(snapshot, profile_pb2)[""]

    assert stacks(profile) == Counter(
        {(("f", "g"), (4, 40_404_040)): 1, (("[unknown]",), (1, 10_101_010)): 1}
    )


def test_same_snapshot_gives_the_same_bytes() -> None:
    first, second = io.BytesIO(), io.BytesIO()
    pprof.render(cpu_snapshot(), first)
    pprof.render(cpu_snapshot(), second)
    assert first.getvalue() == second.getvalue()


def test_varints_match_protobuf_for_large_and_negative_numbers(profile_pb2: ModuleType) -> None:
    writer = pprof.ProtoWriter()
    writer.uint(1, 2**40 + 5)
    writer.uint(2, -3)
    value_type = profile_pb2.ValueType()
    value_type.ParseFromString(bytes(writer.buffer))
    assert (value_type.type, value_type.unit) == (2**40 + 5, -3)
