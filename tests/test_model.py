import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otlp_ebpf.errors import UsageError
from otlp_ebpf.model import (
    Allocation,
    Connection,
    CpuSnapshot,
    IntervalPoint,
    MemSnapshot,
    NetSnapshot,
    ProcessInfo,
    SelfCost,
    StackCount,
    SyscallsSnapshot,
    SyscallStat,
    read_snapshot,
    snapshot_from_dict,
    write_snapshot,
)

COMMON = {"started_at": "2026-01-01T00:00:00+00:00", "duration_s": 2.5, "host": "h"}


def roundtrip(snap):
    return snapshot_from_dict(json.loads(json.dumps(snap.to_dict())))


def test_cpu_snapshot_round_trips_with_nested_records():
    snap = CpuSnapshot(
        **COMMON,
        targets=("pid 1",),
        lost_events={"stack table full": 3},
        processes=(ProcessInfo(1, "init", "/sbin/init", ("init",)),),
        self_cost=SelfCost(0.5, 1000, 10, 4096),
        stacks=(StackCount(1, 2, "a", ("main", "work", "vfs_read_[k]"), 7),),
        off_cpu=(StackCount(1, 2, "a", ("main", "sleep"), 2, total_ns=5_000),),
        frequency_hz=99,
        samples_total=7,
    )
    back = roundtrip(snap)
    assert back == snap
    assert [p.name for p in back.stack_profiles()] == ["cpu", "off_cpu"]
    assert back.stack_profiles()[1].total == 5_000
    assert back.lost_total == 3


def test_json_layout_matches_the_documented_fields():
    snap = SyscallsSnapshot(
        **COMMON,
        syscalls=(SyscallStat(1, "a", "read", 3, 1, {"EBADF": 1}, 30, 8, 16, 20, hist=(0, 3)),),
        series=(IntervalPoint(1.0, {"read": 3}),),
    )
    data = snap.to_dict()
    assert data["kind"] == "syscalls" and data["version"] == 1
    row = data["syscalls"][0]
    assert set(row) >= {
        "pid",
        "comm",
        "name",
        "count",
        "errors",
        "errno",
        "total_ns",
        "p50_ns",
        "p99_ns",
        "max_ns",
    }
    assert roundtrip(snap) == snap


def test_net_and_mem_round_trip():
    net = NetSnapshot(
        **COMMON,
        connections=(Connection(1, "c", 4, "10.0.0.1", 1, "10.0.0.2", 2, 10, 20, 1.5, 0),),
        retransmits=4,
        resets={"sent": 1, "received": 2},
        drops={"TCP_CSUM": 1},
    )
    mem = MemSnapshot(
        **COMMON,
        outstanding=(Allocation(1, ("main", "leak"), 4096, 2, "c"),),
        outstanding_bytes=4096,
    )
    assert roundtrip(net) == net
    assert roundtrip(mem) == mem
    assert [p.unit for p in mem.stack_profiles()] == ["bytes", "count"]


@pytest.mark.parametrize(
    "data, message",
    [
        ([], "top level"),
        ({"kind": "gpu", "version": 1}, "unknown kind"),
        ({"kind": "cpu", "version": 99}, "version 99"),
        ({"kind": "cpu", "version": 1, "stacks": [{"pid": 1}]}, "malformed"),
    ],
)
def test_bad_snapshots_are_usage_errors(data, message):
    with pytest.raises(UsageError, match=message):
        snapshot_from_dict(data)


def test_read_snapshot_errors_name_the_file(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        read_snapshot(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UsageError, match=r"bad\.json: not a JSON snapshot"):
        read_snapshot(str(bad))
    good = tmp_path / "good.json"
    snap = CpuSnapshot(**COMMON)
    with good.open("w") as fh:
        write_snapshot(snap, fh)
    assert read_snapshot(str(good)) == snap


frames = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=6).map(tuple)


@given(st.lists(st.tuples(frames, st.integers(1, 10**9)), max_size=20))
def test_any_cpu_snapshot_round_trips(stacks):
    snap = CpuSnapshot(**COMMON, stacks=tuple(StackCount(1, 1, "x", f, n) for f, n in stacks))
    assert roundtrip(snap) == snap


@pytest.mark.parametrize(
    "patch",
    [
        {"stacks": [{"pid": 1, "tid": 1, "comm": "a", "frames": ["x"], "count": "5"}]},
        {"lost_events": [1]},
        {"duration_s": "long"},
        {"stacks": [{"pid": 1, "tid": 1, "comm": "a", "frames": [3], "count": 5}]},
        {"processes": "nope"},
        {"frequency_hz": True},
    ],
)
def test_wrong_types_are_usage_errors_not_crashes(patch):
    data = CpuSnapshot(**COMMON).to_dict()
    data.update(patch)
    with pytest.raises(UsageError, match="malformed cpu snapshot"):
        snapshot_from_dict(data)


def test_integers_are_accepted_where_floats_are_expected():
    data = CpuSnapshot(**COMMON).to_dict()
    data["duration_s"] = 3
    assert snapshot_from_dict(data).duration_s == 3.0


def _syscalls_file(tmp_path, patch_stat=None, **patch):
    import json

    data = {
        "kind": "syscalls",
        "version": 1,
        **COMMON,
        "syscalls": [
            {
                "pid": 1,
                "comm": "x",
                "name": "read",
                "count": 3,
                "errors": 0,
                "errno": {},
                "total_ns": 10,
                "p50_ns": 1,
                "p99_ns": 2,
                "max_ns": 3,
                "hist": [1, 2],
            }
        ],
    }
    data.update(patch)
    data["syscalls"][0].update(patch_stat or {})
    path = tmp_path / "s.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize(
    ("patch", "stat_patch", "field"),
    [
        ({"duration_s": -1}, None, "duration_s"),
        ({"duration_s": 1e308}, None, "duration_s"),
        ({"duration_s": float("nan")}, None, "duration_s"),
        ({"lost_events": {"ring buffer full": -3}}, None, "lost_events['ring buffer full']"),
        ({}, {"hist": [1, -2]}, "syscalls[0].hist[1]"),
        ({}, {"count": -3}, "syscalls[0].count"),
        ({}, {"errno": {"ENOENT": -1}}, "syscalls[0].errno['ENOENT']"),
    ],
)
def test_impossible_numbers_are_refused_on_load_naming_the_field(
    tmp_path, capsys, patch, stat_patch, field
):
    from otlp_ebpf.cli.app import run

    path = _syscalls_file(tmp_path, stat_patch, **patch)
    assert run(["report", path]) == 2
    err = capsys.readouterr().err
    assert f"malformed syscalls snapshot: {field}: expected a number from 0" in err, err
    assert "internal error" not in err


def test_a_command_exit_status_may_be_negative():
    data = CpuSnapshot(**COMMON, command_exit=-9).to_dict()
    assert snapshot_from_dict(data).command_exit == -9
    data["command_exit"] = "9"
    with pytest.raises(UsageError, match="command_exit"):
        snapshot_from_dict(data)


def _record_with_row(row: dict) -> dict:
    from tests.analysis.analyze_fixtures import recording

    data = recording(rows=2).to_dict()
    data["timeline"][1] = {**data["timeline"][1], **row}
    return data


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"syscalls": [{"name": "read", "count": -1, "errors": 0, "p50_ns": 1, "p99_ns": 1}]},
         "count"),
        ({"syscalls": [{"name": "read", "count": 1, "errors": 0, "p50_ns": 1, "p99_ns": 1,
                        "hist": {"3": -1}}]}, "hist['3']"),
        ({"syscalls": [{"name": 3, "count": 1, "errors": 0, "p50_ns": 1, "p99_ns": 1}]}, "name"),
        ({"cpu": {"samples": {"1": 2.5}}}, "samples['1']"),
        ({"cpu": {"off_cpu_ns": {"1": -5}}}, "off_cpu_ns['1']"),
        ({"net": {"connections": [{"label": "x", "tx_bytes": 1, "rx_bytes": -1}]}},
         "connections[0].rx_bytes"),
        ({"net": {"connections": [], "drops": {"NO_SOCKET": True}}}, "drops['NO_SOCKET']"),
    ],
)  # fmt: skip
def test_bad_timeline_entries_are_refused_naming_the_field(patch, field):
    with pytest.raises(UsageError, match=re.escape(field)):
        snapshot_from_dict(_record_with_row(patch))


def test_timeline_entries_round_trip_with_their_defaults():
    data = _record_with_row(
        {
            "syscalls": [{"name": "read", "count": 1, "errors": 0, "p50_ns": 1, "p99_ns": 1}],
            "net": {"connections": [{"label": "x", "tx_bytes": 1, "rx_bytes": 2}]},
            "cpu": {"samples": {"1": 2}},
        }
    )
    row = snapshot_from_dict(data).timeline[1]  # type: ignore[attr-defined]
    assert row.syscalls[0].hist == {} and row.cpu.blocked_ns == {}
    assert row.net.connections[0].srtt_us == 0.0 and row.net.drops == {}
    rec = snapshot_from_dict(data)
    assert snapshot_from_dict(rec.to_dict()) == rec
