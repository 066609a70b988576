"""`ask` offline: questions in many phrasings (typos, casing) over snapshots with known
figures, answered with those exact figures; what it cannot answer it says so."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from otlp_ebpf.analysis.ask_offline import UNDERSTOOD, ask_offline
from otlp_ebpf.analysis.query_tools import Sources, ToolError, run_tool
from otlp_ebpf.cli.app import run
from otlp_ebpf.model import Snapshot
from tests.analysis import ask_fixtures as fx

# (snapshot, question, tool, the answer's exact sentence)
TABLE: list[tuple[Callable[[], Snapshot], str, str, str]] = [
    (fx.syscalls_snapshot, "which syscall failed the most?", "top_syscalls",
     "`openat` failed the most: 30 of 40 calls (75%)."),
    (fx.syscalls_snapshot, "Which SYSCALL faild the MOST", "top_syscalls",
     "`openat` failed the most: 30 of 40 calls (75%)."),
    (fx.syscalls_snapshot, "what syscall had the most errors", "top_syscalls",
     "`openat` failed the most: 30 of 40 calls (75%)."),
    (fx.syscalls_snapshot, "which syscall was called the most?", "top_syscalls",
     "`read` was called the most: 1,234 calls, 2 failed."),
    (fx.syscalls_snapshot, "least called syscall", "top_syscalls",
     "`close` was called the least: 3 calls, 3 failed."),
    (fx.syscalls_snapshot, "which syscall was the slowest?", "top_syscalls",
     "`futex` was the slowest by p99 latency: p99 2,000,000 ns (p50 500,000 ns, "
     "max 4,000,000 ns) over 50 calls."),
    (fx.syscalls_snapshot, "slowst syscal", "top_syscalls",
     "`futex` was the slowest by p99 latency: p99 2,000,000 ns (p50 500,000 ns, "
     "max 4,000,000 ns) over 50 calls."),
    (fx.syscalls_snapshot, "how often did opneat fail?", "syscall_errors",
     "`openat` failed 30 times: ENOENT 25, EACCES 5."),
    (fx.syscalls_snapshot, "how many ENOENT?", "syscall_errors",
     "ENOENT was returned 25 times (openat 25)."),
    (fx.syscalls_snapshot, "how many enoent errors", "syscall_errors",
     "ENOENT was returned 25 times (openat 25)."),
    (fx.syscalls_snapshot, "which errno happened most?", "syscall_errors",
     "The most frequent error is ENOENT from `openat`: 25 times (35 failed calls in the rows "
     "shown)."),
    (fx.syscalls_snapshot, "how many times was read called by pid 200?", "top_syscalls",
     "`read` was called 234 times and failed 2 times (0.85%); p50 1,000 ns, p99 4,000 ns, "
     "max 8,000 ns."),
    (fx.syscalls_snapshot, "READ?", "top_syscalls",
     "`read` was called 1,234 times and failed 2 times (0.16%); p50 1,000 ns, p99 4,000 ns, "
     "max 8,000 ns."),
    (fx.syscalls_snapshot, "which process made the most syscalls?", "top_processes",
     "server (pid 100) had the most syscalls: 1,040."),
    (fx.syscalls_snapshot, "which pid failed the most", "top_processes",
     "server (pid 100) had the most syscall errors: 30."),
    (fx.cpu_snapshot, "what is the hottest function?", "top_functions",
     "`parse_json` took the most CPU: 600 samples (60% self)."),
    (fx.cpu_snapshot, "hotest functon", "top_functions",
     "`parse_json` took the most CPU: 600 samples (60% self)."),
    (fx.cpu_snapshot, "which function took the most time including callees?", "top_functions",
     "`main` took the most CPU: 1,000 samples (100% including its callees)."),
    (fx.cpu_snapshot, "how much cpu did compres use?", "top_functions",
     "`compress`: 300 samples (30%, self)."),
    (fx.cpu_snapshot, "hottest function of pid 200", "top_functions",
     "`idle_loop` took the most CPU: 100 samples (100% self)."),
    (fx.cpu_snapshot, "where were threads blocked the most?", "top_functions",
     "`wait_io` was blocked the most time: 5,000,000 ns blocked (83.33% self)."),
    (fx.cpu_snapshot, "which process used the most cpu?", "top_processes",
     "server (pid 100) had the most cpu samples: 900."),
    (fx.net_snapshot, "which connection moved the most bytes?", "top_connections",
     "100 server 10.0.0.1:8080 > 10.0.0.2:51000 moved the most bytes: 1,020,000 (1,000,000 "
     "sent, 20,000 received)."),
    (fx.net_snapshot, "Which connection had the most retransmits?", "top_connections",
     "100 server 10.0.0.1:8080 > 10.0.0.2:51000 had the most retransmits: 12 (13 "
     "retransmits, 2 resets sent and 0 received in the whole run)."),
    (fx.net_snapshot, "resets?", "top_connections",
     "100 server 10.0.0.1:8080 > 10.0.0.3:52000 had the most resets: 2 (13 retransmits, 2 "
     "resets sent and 0 received in the whole run)."),
    (fx.net_snapshot, "traffic on port 5432", "top_connections",
     "200 worker 10.0.0.1:40000 > 10.0.0.9:5432 moved the most bytes: 9,700 (700 sent, "
     "9,000 received)."),
    (fx.net_snapshot, "what about 10.0.0.3", "top_connections",
     "100 server 10.0.0.1:8080 > 10.0.0.3:52000 moved the most bytes: 5,500 (5,000 sent, "
     "500 received)."),
    (fx.net_snapshot, "how many packets were dropped?", "net_drops",
     "12 packets were dropped; the most for NO_SOCKET: 9."),
    (fx.mem_snapshot, "where is memory leaking?", "memory_outstanding",
     "The most outstanding memory was allocated at malloc <- load_cache <- main: 4,194,304 "
     "bytes in 64 allocations (99.98%); 4195328 bytes outstanding at the end, 500 "
     "allocations and 434 frees in the run."),
    (fx.recording, "what was slow at second 4?", "timeline_window",
     "Slowest between 3 and 4 s: syscalls.p99_ns{syscall=read} reached 1,048,576 ns (p99), "
     "against 4,096 ns over the rest of the run."),
    (fx.recording, "what failed between 11 and 15 s?", "timeline_window",
     "The largest change between 11 and 15 s: syscalls.errors{syscall=openat} at 50 1/s "
     "against 0 1/s over the rest of the run, 200 in all."),
    (fx.recording, "why did errors rise?", "findings",
     "Finding 1 (syscall_errors, 11-15 s): openat errors rose from 0/s to 50/s during "
     "11.0-15.0 s (ENOENT: 100% of the run's 200 errors)."),
    (fx.recording, "What went wrong?", "findings",
     "Finding 1 (syscall_errors, 11-15 s): openat errors rose from 0/s to 50/s during "
     "11.0-15.0 s (ENOENT: 100% of the run's 200 errors)."),
    (fx.recording, "which syscall failed the most?", "top_syscalls",
     "`openat` failed the most: 200 of 400 calls (50%)."),
]  # fmt: skip


@pytest.mark.parametrize(("make", "question", "tool", "expected"), TABLE)
def test_question_table(make, question, tool, expected):
    answer = ask_offline(question, Sources(make()))
    assert answer.understood
    assert answer.plan is not None and answer.plan.tool == tool
    assert answer.text == expected


def test_what_got_slower_between_two_runs():
    answer = ask_offline(
        "which function got slower between these two runs?",
        Sources(fx.cpu_snapshot(600), fx.cpu_snapshot(900)),
    )
    assert answer.plan is not None and answer.plan.tool == "compare_runs"
    # parse_json: 600 of 1,000 samples (60%) -> 900 of 1,300 (69.231%)
    assert answer.text == (
        "`parse_json` grew the most (cpu (count): self share per function): 60 -> 69.231 % "
        "(9.231 pts, beyond noise)."
    )


@pytest.mark.parametrize(
    "question", ["what is the weather like?", "hello", "tell me a joke about kernels"]
)
def test_unanswerable_lists_what_is_understood(question):
    answer = ask_offline(question, Sources(fx.syscalls_snapshot()))
    assert not answer.understood
    assert answer.text.startswith("Cannot answer this question offline.")
    assert all(q in answer.text for q in UNDERSTOOD)


def test_a_tool_the_snapshot_cannot_serve_says_why():
    answer = ask_offline("what changed between 2 and 4 s?", Sources(fx.syscalls_snapshot()))
    assert not answer.understood
    assert "no timeline" in answer.text


def test_cli_answer_with_its_table(capsys, tmp_path):
    path = fx.write(tmp_path / "s.json", fx.syscalls_snapshot())
    assert run(["ask", "which syscall failed the most?", path]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "`openat` failed the most: 30 of 40 calls (75%)."
    assert "syscalls by errors (most first)" in out
    table = [line.split() for line in lines if line.startswith(("openat", "close", "read"))]
    assert table[0][:3] == ["openat", "40", "30"] and table[2][:3] == ["read", "1,234", "2"]


def test_cli_json(capsys, tmp_path):
    path = fx.write(tmp_path / "s.json", fx.syscalls_snapshot())
    assert run(["ask", "how many ENOENT?", path, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["mode"] == "offline" and doc["understood"] is True
    assert doc["tool"] == "syscall_errors" and doc["arguments"] == {"errno": "ENOENT"}
    assert doc["result"]["rows"] == [{"errno": "ENOENT", "syscall": "openat", "errors": 25}]


def test_cli_cannot_answer_is_exit_0_with_json(capsys, tmp_path):
    path = fx.write(tmp_path / "s.json", fx.syscalls_snapshot())
    assert run(["ask", "what is love", path, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["understood"] is False
    assert doc["understood_questions"] == list(UNDERSTOOD)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not a JSON snapshot"),
        (b'{"kind": "cpu", "version": 99}', "version 99 is not supported"),
        (b'{"kind": "nope", "version": 1}', "unknown kind"),
    ],
)
def test_bad_snapshot_is_exit_2_one_line(capsys, tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    assert run(["ask", "which syscall failed the most?", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_empty_question_is_exit_2(capsys, tmp_path):
    path = fx.write(tmp_path / "s.json", fx.syscalls_snapshot())
    assert run(["ask", "  ", path]) == 2
    assert "QUESTION is empty" in capsys.readouterr().err


# ---------------------------------------------------------------- the tools themselves


def test_top_syscalls_merges_processes_through_their_histograms():
    from otlp_ebpf.model import SyscallsSnapshot, SyscallStat

    hist_a = (0,) * 10 + (99, 1)  # 99 calls in [1024, 2048), 1 in [2048, 4096)
    hist_b = (0,) * 20 + (100,)  # 100 calls in [1 Mi, 2 Mi)
    snap = SyscallsSnapshot(
        **fx.COMMON,
        syscalls=(
            SyscallStat(1, "a", "read", 100, 0, {}, 0, 1100, 2100, 3000, 1024, hist_a),
            SyscallStat(2, "b", "read", 100, 0, {}, 0, 1_500_000, 2_000_000, 2_000_000,
                        1_048_576, hist_b),
        ),
    )  # fmt: skip
    row = run_tool(Sources(snap), "top_syscalls", {}).rows[0]
    assert row["calls"] == 200 and row["max_ns"] == 2_000_000
    # The merged p99 lies in b's slot, not the larger of the two p99s nor a's.
    assert 1_048_576 <= row["p99_ns"] <= 2_000_000
    assert row["p50_ns"] <= 4096  # rank 100 of 200 is a's last call


def test_timeline_window_counts_events_exactly():
    result = run_tool(
        Sources(fx.recording()),
        "timeline_window",
        {"start_s": 11, "end_s": 15, "signal": "syscalls", "measure": "errors"},
    )
    assert result.rows[0]["series"] == "syscalls.errors{syscall=openat}"
    assert result.rows[0]["window_total"] == 200


@pytest.mark.parametrize(
    ("tool", "args", "message"),
    [
        ("no_such_tool", {}, "unknown tool"),
        ("top_syscalls", {"by": "banana"}, "by must be one of"),
        ("top_syscalls", {"limit": 0}, "limit must be"),
        ("top_syscalls", {"limit": True}, "limit must be"),
        ("top_syscalls", {"pid": -1}, "pid must be"),
        ("top_syscalls", {"colour": "red"}, "unknown argument(s): colour"),
        ("top_functions", {}, "holds no cpu data"),
        ("timeline_window", {"start_s": 5, "end_s": 1}, "end_s must be after start_s"),
        ("timeline_window", {"start_s": "x", "end_s": 1}, "start_s must be a number"),
        ("compare_runs", {}, "needs two snapshots"),
    ],
)
def test_tools_refuse_what_they_cannot_do(tool, args, message):
    with pytest.raises(ToolError, match=None) as caught:
        run_tool(Sources(fx.syscalls_snapshot()), tool, args)
    assert message in str(caught.value)


def test_every_tool_schema_is_a_json_schema_object():
    import jsonschema

    from otlp_ebpf.analysis.query_tools import tool_schemas

    for schema in tool_schemas():
        params = schema["function"]["parameters"]
        jsonschema.Draft202012Validator.check_schema(params)
        assert params["type"] == "object" and params["additionalProperties"] is False


def test_function_table_of_a_recording_reads_its_cpu_section(tmp_path: Path):
    result = run_tool(Sources(fx.recording()), "top_functions", {"limit": 1})
    assert result.rows == [{"function": "parse_json", "samples": 600, "share_pct": 60.0}]


def test_which_syscall_got_slower_between_two_runs():
    import dataclasses

    before = fx.syscalls_snapshot()
    slower = tuple(
        dataclasses.replace(s, p99_ns=s.p99_ns * 8) if s.name == "openat" else s
        for s in before.syscalls
    )
    after = dataclasses.replace(before, syscalls=slower)
    answer = ask_offline("Which syscall got slower?", Sources(before, after))
    assert answer.plan is not None
    assert answer.plan.arguments == {"signal": "syscalls", "metric": "p99"}
    assert answer.result is not None and answer.result.rows[0]["key"] == "openat"
    assert "`openat` grew the most" in answer.text
    assert "8,000 -> 64,000" in answer.text


def test_a_question_about_two_runs_with_one_snapshot_is_not_guessed():
    answer = ask_offline(
        "which function got slower between these runs?", Sources(fx.cpu_snapshot())
    )
    assert not answer.understood


def test_window_question_on_a_syscalls_snapshot_taken_with_interval():
    import dataclasses

    from otlp_ebpf.model import IntervalPoint

    series = tuple(IntervalPoint(float(t), {"read": 500 if t == 3 else 100}) for t in range(1, 11))
    snap = dataclasses.replace(fx.syscalls_snapshot(), series=series, interval_s=1.0)
    answer = ask_offline("what changed at second 3?", Sources(snap))
    assert answer.plan is not None and answer.plan.tool == "timeline_window"
    assert answer.text == (
        "The largest change between 2 and 3 s: syscalls.calls{syscall=read} at 500 1/s "
        "against 100 1/s over the rest of the run, 500 in all."
    )
