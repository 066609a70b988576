"""OTLP profiles requests: dictionary rules, stacks, samples, resources."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from otlp_ebpf.formatters.otlp_profiles import build_profiles_request, parse_frame
from otlp_ebpf.model import CpuSnapshot, StackCount
from tests.otlp_conformance import check_profiles_request
from tests.otlp_samples import STARTED_NS, cpu_snapshot, mem_snapshot


def strings(request: Any) -> list[str]:
    return list(request.dictionary.string_table)


def resource(request: Any, pid: int) -> tuple[dict[str, Any], Any]:
    for rp in request.resource_profiles:
        attrs = {kv.key: _value(kv.value) for kv in rp.resource.attributes}
        if attrs["process.pid"] == pid:
            return attrs, rp.scope_profiles[0]
    raise AssertionError(f"no resource for pid {pid}")


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [v.string_value for v in value.array_value.values]
    return getattr(value, kind)


def sample_type(request: Any, profile: Any) -> tuple[str, str]:
    s = strings(request)
    return s[profile.sample_type.type_strindex], s[profile.sample_type.unit_strindex]


def frame_names(request: Any, stack_index: int) -> list[str]:
    d = request.dictionary
    names = []
    for loc_index in d.stack_table[stack_index].location_indices:
        loc = d.location_table[loc_index]
        if loc.lines:
            names.append(
                d.string_table[d.function_table[loc.lines[0].function_index].name_strindex]
            )
        else:
            names.append(hex(loc.address))
    return names


def sample_attrs(request: Any, sample: Any) -> dict[str, Any]:
    d = request.dictionary
    return {
        d.string_table[d.attribute_table[i].key_strindex]: _value(d.attribute_table[i].value)
        for i in sample.attribute_indices
    }


def test_cpu_request_is_conformant_and_describes_each_process() -> None:
    request = build_profiles_request(cpu_snapshot())
    assert check_profiles_request(request) == []
    assert strings(request)[0] == ""
    attrs, scope = resource(request, 4242)
    assert attrs == {
        "process.pid": 4242,
        "process.executable.name": "app",
        "process.executable.path": "/usr/local/bin/app",
        "process.command_args": ["/usr/local/bin/app", "--serve"],
        "host.name": "box",
        "service.name": "app",
    }
    assert scope.scope.name == "otlp-ebpf"
    on_cpu, off_cpu = scope.profiles
    assert sample_type(request, on_cpu) == ("samples", "count")
    s = strings(request)
    assert (s[on_cpu.period_type.type_strindex], s[on_cpu.period_type.unit_strindex]) == (
        "cpu",
        "nanoseconds",
    )
    assert on_cpu.period == 1_000_000_000 // 99
    assert on_cpu.time_unix_nano == STARTED_NS
    assert on_cpu.duration_nano == 2_500_000_000
    assert sample_type(request, off_cpu) == ("off_cpu", "nanoseconds")
    assert [s.values[0] for s in off_cpu.samples] == [9_000_000]
    other, _ = resource(request, 77)
    assert other["service.name"] == "sleeper"


def test_equal_samples_merge_and_stacks_are_leaf_first() -> None:
    request = build_profiles_request(cpu_snapshot())
    on_cpu = resource(request, 4242)[1].profiles[0]
    by_thread = {sample_attrs(request, s)["thread.id"]: s for s in on_cpu.samples}
    worker = by_thread[4243]
    assert worker.values == [10]  # 7 + 3 merged
    assert sample_attrs(request, worker) == {"thread.id": 4243, "thread.name": "app-worker"}
    assert frame_names(request, worker.stack_index) == ["vfs_read", "read", "handle", "main"]
    assert frame_names(request, by_thread[4244].stack_index) == ["0x1a2b", "main"]


def test_frames_carry_mappings_and_frame_types() -> None:
    request = build_profiles_request(cpu_snapshot())
    d = request.dictionary
    s = strings(request)
    kinds = {}
    for loc in d.location_table[1:]:
        (attr,) = loc.attribute_indices
        mapping = s[d.mapping_table[loc.mapping_index].filename_strindex]
        kinds[mapping] = d.attribute_table[attr].value.string_value
    assert kinds == {
        "[kernel.kallsyms]": "kernel",
        "/usr/local/bin/app": "native",
        "/usr/lib/libc.so.6": "native",
        "libc.so.6": "native",
        "": "native",  # pid 77's frames come without a module: the null mapping
    }


def test_mem_gives_two_profiles_without_thread_attributes() -> None:
    request = build_profiles_request(mem_snapshot())
    assert check_profiles_request(request) == []
    space, objects = resource(request, 4242)[1].profiles
    assert sample_type(request, space) == ("allocated_space", "bytes")
    assert sample_type(request, objects) == ("allocated_objects", "count")
    assert sorted(s.values[0] for s in space.samples) == [1024, 65536]
    assert sorted(s.values[0] for s in objects.samples) == [4, 16]
    assert all(not s.attribute_indices for s in space.samples)
    assert not space.HasField("period_type")


def test_several_snapshots_share_one_dictionary_and_user_attributes_win() -> None:
    request = build_profiles_request(
        [cpu_snapshot(), mem_snapshot()], {"service.name": "shop", "k8s.pod.name": "p"}
    )
    assert check_profiles_request(request) == []
    attrs, scope = resource(request, 4242)
    assert attrs["service.name"] == "shop"
    assert attrs["k8s.pod.name"] == "p"
    assert len(scope.profiles) == 4
    # "main" is shared by cpu and mem stacks: interned once
    assert strings(request).count("main") == 1


def test_empty_snapshot_gives_an_empty_request() -> None:
    request = build_profiles_request(CpuSnapshot(started_at="bad", duration_s=0, host=""))
    assert list(request.resource_profiles) == []
    assert check_profiles_request(request) == []


def test_parse_frame_kinds() -> None:
    assert parse_frame("tcp_sendmsg_[k]", "").kind == "kernel"
    unresolved = parse_frame("libc.so.6+0xff", "/lib/x86_64-linux-gnu/libc.so.6")
    assert (unresolved.function, unresolved.address) == ("", 0xFF)
    assert unresolved.filename == "/lib/x86_64-linux-gnu/libc.so.6"
    # a symbol that merely contains "+0x" but names another module is a function
    assert parse_frame("f+0x10", "/usr/bin/app").function == "f+0x10"


frames = st.lists(
    st.sampled_from(
        ["main", "a", "b", "vfs_read_[k]", "schedule_[k]", "libc.so.6+0x10", "[unknown]"]
    ),
    max_size=6,
)
stacks = st.builds(
    StackCount,
    pid=st.sampled_from([1, 2]),
    tid=st.sampled_from([1, 2, 3]),
    comm=st.sampled_from(["x", "y", ""]),
    frames=frames.map(tuple),
    count=st.integers(0, 50),
    total_ns=st.integers(0, 10**9),
)


@settings(max_examples=60, deadline=None)
@given(on_cpu=st.lists(stacks, max_size=12), off_cpu=st.lists(stacks, max_size=6))
def test_any_cpu_snapshot_gives_a_conformant_request(
    on_cpu: list[StackCount], off_cpu: list[StackCount]
) -> None:
    snapshot = CpuSnapshot(
        started_at="2026-01-01T00:00:00",
        duration_s=1,
        host="h",
        stacks=tuple(on_cpu),
        off_cpu=tuple(off_cpu),
    )
    request = build_profiles_request(snapshot)
    assert check_profiles_request(request) == []
    total = sum(
        s.values[0]
        for rp in request.resource_profiles
        for p in rp.scope_profiles[0].profiles
        for s in p.samples
        if sample_type(request, p)[0] == "samples"
    )
    assert total == sum(s.count for s in on_cpu)


def test_each_attribute_is_in_the_table_once_with_its_value() -> None:
    """Frame types and thread attributes used by many samples: one entry each, its value the
    one it was first given, and a second encoding of the same snapshot (frames parsed then
    from what was kept) gives the same request but for the profiles' random ids."""
    stacks = tuple(
        StackCount(pid, pid + k, f"comm{k % 2}", ("main", f"f{k % 3}", "read_[k]"), 1 + k)
        for pid in (10, 11)
        for k in range(6)
    )
    snapshot = CpuSnapshot("2024-01-01T00:00:00+00:00", 1.0, "h", frequency_hz=99, stacks=stacks)
    first, second = (build_profiles_request([snapshot]) for _ in range(2))
    table = first.dictionary.attribute_table
    strings = first.dictionary.string_table
    entries = [(strings[kv.key_strindex], kv.value.WhichOneof("value")) for kv in table[1:]]
    values = [str(getattr(kv.value, kv.value.WhichOneof("value"))) for kv in table[1:]]
    assert len(set(zip([e[0] for e in entries], values, strict=True))) == len(entries)
    tids = {str(pid + k) for pid in (10, 11) for k in range(6)}
    assert sorted(values) == sorted({"kernel", "native", "comm0", "comm1", *tids})
    for request in (first, second):
        for resource in request.resource_profiles:
            for profile in resource.scope_profiles[0].profiles:
                profile.profile_id = b""
    assert first.SerializeToString() == second.SerializeToString()
