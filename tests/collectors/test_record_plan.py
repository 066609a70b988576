"""`record` without BPF: its validation, signal planning, the record snapshot's JSON round
trip, and `report`/`diff` reading recordings."""

from __future__ import annotations

import json

import pytest

from otlp_ebpf.cli.app import run
from otlp_ebpf.collectors.record import blocked_site, parse_signals, plan_signals, top_with_other
from otlp_ebpf.errors import EnvironmentLacks, UsageError
from otlp_ebpf.model import (
    OTHER_KEY,
    ConnTick,
    CpuTick,
    MemTick,
    NetSnapshot,
    NetTick,
    RecordSnapshot,
    SyscallsSnapshot,
    SyscallStat,
    SyscallTick,
    TimelineRow,
    read_snapshot,
    snapshot_from_dict,
)


def one_line_error(capsys, args: list[str], expected: str) -> None:
    assert run(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert "Traceback" not in err[0]


def test_unknown_signal_is_one_line_exit_2(capsys):
    one_line_error(capsys, ["record", "--signals", "cpu,disk", "-d", "1"], "unknown signal 'disk'")


def test_interval_must_be_positive_and_within_the_duration(capsys):
    one_line_error(capsys, ["record", "--interval", "0", "-d", "1"], "--interval must be")
    one_line_error(capsys, ["record", "--interval", "-1"], "--interval must be")
    one_line_error(capsys, ["record", "--interval", "5", "-d", "2"], "longer than --duration")


def test_output_directory_is_refused_before_recording(capsys, tmp_path):
    (tmp_path / "rec.json").mkdir()
    one_line_error(
        capsys, ["record", "-d", "1", "-o", str(tmp_path / "rec.json")], "is a directory"
    )


def test_signals_are_parsed_in_canonical_order():
    assert parse_signals("mem, cpu") == ("cpu", "mem")
    with pytest.raises(UsageError):
        parse_signals(",")


def test_missing_tracepoints_skip_a_default_signal_but_fail_a_named_one():
    missing = {"net": ["sock/sock_send_length"]}
    run_now, skipped = plan_signals(("cpu", "syscalls", "net", "mem"), False, missing)
    assert run_now == ("cpu", "syscalls", "mem")
    assert skipped == {"net": "no sock/sock_send_length tracepoint"}
    with pytest.raises(EnvironmentLacks, match="sock/sock_send_length") as exc:
        plan_signals(("cpu", "net"), True, missing)
    assert exc.value.exit_code == 3
    with pytest.raises(EnvironmentLacks, match="no signal can be recorded"):
        plan_signals(("net",), False, missing)


def test_top_with_other_keeps_the_sum():
    assert top_with_other({"a": 5, "b": 3, "c": 2}, ["a"]) == {"a": 5, OTHER_KEY: 5}


def syscalls_section(getppid: int, read: int) -> SyscallsSnapshot:
    def stat(name: str, n: int) -> SyscallStat:
        return SyscallStat(1, "w", name, n, 0, {}, n * 100, 100, 200, 300, 50, (0,) * 40)

    return SyscallsSnapshot(
        started_at="t",
        duration_s=2.0,
        host="h",
        syscalls=(stat("getppid", getppid), stat("read", read)),
    )


def recording(getppid: int, read: int) -> RecordSnapshot:
    rows = (
        TimelineRow(
            1.0,
            cpu=CpuTick({"1": 3}, {"spin": 2, OTHER_KEY: 1}),
            syscalls=(SyscallTick("getppid", getppid, 0, 100, 200),),
            net=NetTick((ConnTick("1 w 127.0.0.1:1 > 127.0.0.1:2", 10, 20, srtt_us=5.0),), {}),
            mem=MemTick(100, 2, 1, 0),
        ),
        TimelineRow(2.0, syscalls=(SyscallTick("read", read, 0, 100, 200),)),
    )
    return RecordSnapshot(
        started_at="t",
        duration_s=2.0,
        host="h",
        signals={
            "syscalls": syscalls_section(getppid, read),
            "net": NetSnapshot(started_at="t", duration_s=2.0, host="h"),
        },
        interval_s=1.0,
        timeline=rows,
    )


def test_record_snapshot_round_trips_through_json():
    rec = recording(1000, 500)
    doc = json.loads(json.dumps(rec.to_dict()))
    assert doc["kind"] == "record"
    assert doc["signals"]["syscalls"]["kind"] == "syscalls"
    assert "cpu" not in doc["timeline"][1]  # a signal with no entry in a row is left out
    assert snapshot_from_dict(doc) == rec


def test_malformed_recordings_are_usage_errors():
    doc = recording(1, 1).to_dict()
    doc["signals"]["net"]["kind"] = "mem"
    with pytest.raises(UsageError, match="holds a mem snapshot"):
        snapshot_from_dict(doc)
    doc = recording(1, 1).to_dict()
    doc["timeline"][0]["syscalls"][0]["count"] = "many"
    with pytest.raises(UsageError, match="expected int"):
        snapshot_from_dict(doc)


def write(tmp_path, name: str, snapshot: RecordSnapshot) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(snapshot.to_dict()))
    return str(path)


def test_report_signal_gives_the_single_signal_snapshot(tmp_path, capsys):
    rec = write(tmp_path, "rec.json", recording(1000, 500))
    out = tmp_path / "sys.json"
    assert run(["report", rec, "--signal", "syscalls", "-o", str(out)]) == 0
    section = read_snapshot(str(out))
    assert isinstance(section, SyscallsSnapshot)
    assert {s.name: s.count for s in section.syscalls} == {"getppid": 1000, "read": 500}
    capsys.readouterr()
    one_line_error(capsys, ["report", rec, "--signal", "mem"], "no mem section")
    one_line_error(capsys, ["report", str(out), "--signal", "cpu"], "needs a recording")


def test_diff_of_recordings_gates_on_each_signal(tmp_path, capsys):
    base = write(tmp_path, "base.json", recording(1000, 1000))
    same = write(tmp_path, "same.json", recording(1000, 1000))
    worse = write(tmp_path, "worse.json", recording(3000, 1000))
    assert run(["diff", base, same, "--fail-on-regression", "5"]) == 0
    capsys.readouterr()
    assert run(["diff", base, worse, "--fail-on-regression", "5"]) == 1
    assert "getppid" in capsys.readouterr().out
    assert run(["diff", base, worse, "--signal", "syscalls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sections"]
    assert run(["diff", base, worse, "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["signals"]) == {"syscalls", "net"}


@pytest.mark.parametrize(
    ("frames", "site"),
    [
        (
            ("main", "worker", "__lll_lock_wait", "entry_SYSCALL_64_[k]", "do_syscall_64_[k]",
             "__x64_sys_futex_[k]", "futex_wait_[k]", "schedule_[k]", "__schedule_[k]"),
            "__lll_lock_wait (futex)",
        ),
        (("main", "clock_nanosleep", "__x64_sys_clock_nanosleep_[k]", "schedule_[k]"),
         "clock_nanosleep (clock_nanosleep)"),
        (("main", "spin"), "spin"),  # preempted in user code: no system call
        (("ret_from_fork_[k]", "kthread_[k]", "worker_thread_[k]", "schedule_[k]",
          "__schedule_[k]"), "worker_thread_[k]"),
        ((), OTHER_KEY),
    ],
)  # fmt: skip
def test_a_blocked_stack_is_named_by_where_user_code_waited_and_the_call(frames, site):
    assert blocked_site(frames) == site
