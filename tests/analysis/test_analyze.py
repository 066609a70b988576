"""`analyze` on synthetic recordings: each injected fault is the top finding with its window
and cause; a steady run with hundreds of series gives nothing; bad files exit 2, one line."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from otlp_ebpf.analysis.analyze import NO_TIMELINE_NOTE, analyze
from otlp_ebpf.analysis.inspections import is_lock_site
from otlp_ebpf.cli.app import run
from otlp_ebpf.model import (
    CpuTick,
    NetTick,
    RecordSnapshot,
    Snapshot,
    SyscallsSnapshot,
    SyscallStat,
    write_snapshot,
)
from tests.analysis.analyze_fixtures import CONN, Fault, recording


def save(snapshot: Snapshot, path: Path) -> str:
    with path.open("w", encoding="utf-8") as fh:
        write_snapshot(snapshot, fh)
    return str(path)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_steady_run_with_hundreds_of_series_has_no_anomaly_and_no_finding(seed):
    analysis = analyze(recording(rows=60, seed=seed, extra_syscalls=300))
    assert analysis.timeline is not None and len(analysis.timeline.series) > 300
    assert analysis.anomalies == [] and analysis.findings == []


def top(fault: Fault, interval: float = 1.0):
    analysis = analyze(recording(rows=60, interval=interval, fault=fault, extra_syscalls=50))
    assert analysis.findings, [a.series.key for a in analysis.anomalies]
    return analysis.findings[0]


def test_an_errno_storm_is_the_top_finding_with_its_window_and_errno():
    finding = top(Fault("errors", 30, 45))
    assert finding.kind == "syscall_errors"
    assert (finding.start_s, finding.end_s) == (30.0, 45.0)
    assert finding.effects[0].series.labels == {"syscall": "openat"}
    assert finding.evidence.numbers["errno"] == {"ENOENT": pytest.approx(4500, rel=0.1)}
    assert finding.summary.startswith("openat errors rose from 0/s to ")
    assert "ENOENT: 100%" in finding.summary


def test_a_cpu_hog_is_the_process_with_its_hot_function():
    finding = top(Fault("cpu_hog", 20, 60), interval=0.5)
    assert finding.kind == "cpu_hog"
    assert finding.cause is not None and finding.cause.anomaly.series.labels == {"pid": "77"}
    assert (finding.start_s, finding.end_s) == (10.0, 30.0)
    assert "pid 77 (hog)" in finding.summary and "spin grew" in finding.summary
    assert [c.kind for c in finding.causes[:2]] == ["cpu_hog", "hot_function"]


def test_a_late_leak_is_memory_growth_from_its_first_row():
    finding = top(Fault("leak", 45, 60))
    assert finding.kind == "memory_growth"
    assert (finding.start_s, finding.end_s) == (45.0, 60.0)
    assert "(3.0 MB/s)" in finding.summary


def test_a_leak_that_keeps_its_process_busy_faulting_pages_in_is_memory_growth():
    # Zeroing the new pages costs the leaking process CPU time: the busy process is the
    # leak's effect, so the leak leads and the process's CPU is listed with it.
    finding = top(Fault("busy_leak", 45, 60))
    assert finding.kind == "memory_growth"
    assert finding.cause is not None and finding.cause.anomaly.series.key == "mem.outstanding_bytes"
    assert {"cpu_hog", "page_faults"} <= {c.kind for c in finding.causes}


def test_lower_throughput_is_explained_by_the_retransmits_of_its_connection():
    finding = top(Fault("retransmits", 25, 35))
    assert finding.kind == "throughput_down"
    assert finding.cause is not None and finding.cause.kind == "retransmits"
    assert finding.cause.anomaly.series.labels == {"connection": CONN}
    assert (finding.start_s, finding.end_s) == (25.0, 35.0)
    total = finding.cause.total
    assert total == pytest.approx(400, rel=0.2)
    assert f"{total:,.0f} segments were retransmitted" in finding.summary
    # The evidence is the rows themselves: retransmits per second of each row.
    columns = ("t_s", *finding.evidence.columns)
    retrans = columns.index(f"net.retransmits{{connection={CONN}}}")
    assert [row[retrans] for row in finding.evidence.rows[:3]] == [0.0, 0.0, 0.0]
    assert all(row[retrans] > 10 for row in finding.evidence.rows[3:])


# A connection stalled by dropped packets, as a 6 s recording at 0.25 s rows shows it: TCP
# backs off, so a few segments are retransmitted while it is silent and most when it comes
# back. 17 segments, none in the 1.75 s outside the stall.
STALL_ROWS = range(8, 21)  # 2.0-5.25 s
RETRANSMITS_BY_ROW = {8: 4, 9: 1, 11: 1, 14: 1, 21: 10}


def stalled_by_drops(drops_reason: str | None = None) -> RecordSnapshot:
    """The stall, with its connection's retransmits, or with the same counts under a host
    drop reason and none on the connection."""
    base = recording(rows=24, interval=0.25)
    rows = []
    for i, row in enumerate(base.timeline):
        assert row.net is not None
        conn = row.net.connections[0]
        tx = 0 if i in STALL_ROWS else conn.tx_bytes
        count = RETRANSMITS_BY_ROW.get(i, 0)
        on_conn = 0 if drops_reason else count
        drops = {drops_reason: count} if drops_reason and count else {}
        net = NetTick((dataclasses.replace(conn, tx_bytes=tx, retransmits=on_conn),), drops)
        rows.append(dataclasses.replace(row, net=net))
    return dataclasses.replace(base, timeline=tuple(rows))


def test_a_few_retransmits_on_a_stalled_connection_are_its_cause():
    finding = analyze(stalled_by_drops()).findings[0]
    assert finding.kind == "throughput_down"
    assert (finding.start_s, finding.end_s) == (2.0, 5.25)
    assert finding.cause is not None and finding.cause.kind == "retransmits"
    assert finding.cause.anomaly.series.labels == {"connection": CONN}
    assert finding.cause.total == sum(RETRANSMITS_BY_ROW.values())


def test_the_host_drops_of_one_reason_need_stronger_evidence_than_the_connections_own():
    # The same counts under a host-wide drop reason: one of several reasons searched, so the
    # bar is higher, and 17 drops within 4.25 of 6 s do not pass it.
    finding = analyze(stalled_by_drops("NETFILTER_DROP")).findings[0]
    assert finding.kind == "throughput_down"
    assert finding.cause is None


def test_slower_calls_are_a_latency_finding():
    finding = top(Fault("latency", 25, 35))
    assert finding.kind == "syscall_latency"
    assert (finding.start_s, finding.end_s) == (25.0, 35.0)
    assert "read p99 latency rose" in finding.summary and "8.39 ms" in finding.summary


def test_a_process_that_stops_and_resumes_is_stalled():
    analysis = analyze(recording(rows=60, fault=Fault("stall", 25, 35)))
    kinds = {f.kind: f for f in analysis.findings}
    assert kinds["process_stalled"].effects[0].series.labels == {"pid": "41"}
    assert (kinds["process_stalled"].start_s, kinds["process_stalled"].end_s) == (25.0, 35.0)


def test_fewer_calls_are_explained_by_threads_blocked_on_a_lock():
    analysis = analyze(recording(fault=Fault("lock", 30, 45)))
    top = analysis.findings[0]
    assert top.kind == "fewer_calls" and top.effects[0].series.labels == {"syscall": "read"}
    assert top.cause is not None and top.cause.kind == "lock_wait"
    assert top.cause.anomaly.series.labels == {"site": "__lll_lock_wait (futex)"}
    assert (top.start_s, top.end_s) == (30.0, 45.0)
    assert "while threads blocked on a lock in __lll_lock_wait (futex) for" in top.summary
    # the evidence holds the blocked time per second of each row
    column = top.evidence.columns.index("cpu.blocked{site=__lll_lock_wait (futex)}") + 1
    assert [row[column] for row in top.evidence.rows][:3] == [0.0, 0.0, 0.0]
    assert min(row[column] for row in top.evidence.rows[3:]) > 6.0


def test_blocked_time_elsewhere_than_on_a_lock_is_a_cause_but_no_finding_alone():
    snapshot = recording(fault=Fault("lock", 30, 45))
    # the same rows, with the threads waiting in read() instead of on the mutex, and the
    # request rate untouched: more blocked time and nothing a user feels
    rows = []
    for row in snapshot.timeline:
        assert row.cpu is not None and row.syscalls is not None
        blocked = {("read (read)" if "futex" in k else k): n for k, n in row.cpu.blocked_ns.items()}
        steady = tuple(
            dataclasses.replace(t, count=200) if t.name == "read" else t for t in row.syscalls
        )
        rows.append(
            dataclasses.replace(
                row, cpu=dataclasses.replace(row.cpu, blocked_ns=blocked), syscalls=steady
            )
        )
    analysis = analyze(dataclasses.replace(snapshot, timeline=tuple(rows)))
    assert any(a.series.labels.get("site") == "read (read)" for a in analysis.anomalies)
    assert analysis.findings == []


def test_lock_sites_are_told_from_other_waits():
    assert is_lock_site("__lll_lock_wait (futex)") and is_lock_site("mutex_lock_[k]")
    assert is_lock_site("pthread_rwlock_rdlock (futex)") and is_lock_site("flock (flock)")
    assert not is_lock_site("clock_nanosleep (clock_nanosleep)")
    assert not is_lock_site("read (read)") and not is_lock_site("epoll_wait (epoll_wait)")


def test_a_window_outside_the_fault_finds_nothing():
    rec = recording(rows=60, fault=Fault("errors", 40, 55))
    assert analyze(rec, until=38.0).findings == []
    assert analyze(rec, since=30.0).findings[0].start_s == 40.0


def test_a_snapshot_without_a_timeline_gets_the_whole_run_inspections_and_a_note():
    stat = SyscallStat(5, "app", "connect", 5000, 4900, {"ECONNREFUSED": 4900}, 1, 1, 1, 1)
    snapshot = SyscallsSnapshot(started_at="x", duration_s=5.0, host="h", syscalls=(stat,))
    analysis = analyze(snapshot)
    assert analysis.notes == [NO_TIMELINE_NOTE]
    [finding] = analysis.findings
    assert finding.summary == (
        "connect failed 4,900 of 5,000 times (98%) over the run, mostly ECONNREFUSED (4,900)."
    )
    healthy = dataclasses.replace(snapshot, syscalls=(dataclasses.replace(stat, errors=10),))
    assert analyze(healthy).findings == []


def test_json_output_has_anomalies_and_findings(tmp_path, capsys):
    path = save(recording(rows=60, fault=Fault("errors", 30, 45)), tmp_path / "rec.json")
    assert run(["analyze", path, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document) >= {"anomalies", "findings"}
    anomaly = document["anomalies"][0]
    assert set(anomaly) >= {
        "signal",
        "series",
        "labels",
        "start_s",
        "end_s",
        "baseline",
        "observed",
        "score",
        "method",
    }
    finding = document["findings"][0]
    assert set(finding) >= {
        "rank",
        "summary",
        "start_s",
        "end_s",
        "cause",
        "effects",
        "evidence",
        "confidence",
    }
    assert finding["rank"] == 1 and finding["start_s"] == 30.0


def test_human_output_lists_findings_with_their_evidence(tmp_path, capsys):
    rec = recording(rows=60, fault=Fault("leak", 40, 60))
    path = save(rec, tmp_path / "rec.json")
    assert run(["analyze", path]) == 0
    out = capsys.readouterr().out
    assert re.match(
        r"1\. outstanding memory grew from \d\.\d MB to 6\d\.\d MB during 40\.0-60\.0 s", out
    )
    last = rec.timeline[-1].mem
    assert last is not None
    assert "mem.outstanding_bytes" in out and f"60.00  {last.outstanding_bytes:>19,} B" in out


def test_reports_escape_what_the_host_named(tmp_path):
    rec = recording(rows=60, fault=Fault("cpu_hog", 20, 60))
    rows = tuple(
        dataclasses.replace(
            r,
            cpu=CpuTick(
                r.cpu.samples,
                {
                    ("<img src=x onerror=alert(1)>" if k == "spin" else k): v
                    for k, v in r.cpu.functions.items()
                },
            ),
        )
        for r in rec.timeline
        if r.cpu is not None
    )
    path = save(dataclasses.replace(rec, timeline=rows), tmp_path / "rec.json")
    html_out, md_out = tmp_path / "r.html", tmp_path / "r.md"
    assert run(["analyze", path, "-o", str(html_out), "-o", str(md_out)]) == 0
    page = html_out.read_text()
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert 'class="mark"' in page
    markdown = md_out.read_text()
    assert re.search(r"(?<!\\)<", markdown) is None and "\\<img" in markdown


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"\x00\x01garbage", "not a JSON snapshot"),
        (b'{"kind": "record", "version": 1, "timeline": [{"t_s": 1', "not a JSON snapshot"),
        (b'{"kind": "record", "version": 7}', "version 7 is not supported"),
        (
            b'{"kind": "record", "version": 1, "started_at": "x", "duration_s": 1, "host": "h",'
            b' "timeline": [{"t_s": -1}]}',
            "malformed record snapshot",
        ),
    ],
)
def test_bad_files_exit_2_with_one_line(tmp_path, capsys, content, expected):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    assert run(["analyze", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--since", "5", "--until", "2"], "--until (2) must be after --since (5)"),
        (["--since", "-1"], "--since/--until must be 0 or more seconds"),
        (["-o", "x.svg"], "analyze writes .md, .html, .json"),
    ],
)
def test_bad_options_exit_2_before_reading(tmp_path, capsys, args, expected):
    assert run(["analyze", str(tmp_path / "missing.json"), *args]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1


def test_record_round_trip_keeps_the_findings(tmp_path):
    rec = recording(rows=60, fault=Fault("errors", 30, 45))
    back = analyze(RecordSnapshot.from_dict(json.loads(json.dumps(rec.to_dict()))))
    assert [f.summary for f in back.findings] == [f.summary for f in analyze(rec).findings]


def test_the_record_report_lists_the_findings_and_marks_them_on_every_chart(tmp_path):
    from otlp_ebpf.formatters import registry
    from tests.browser import dump_dom

    rec = recording(rows=60, fault=Fault("errors", 30, 45))
    page = tmp_path / "rec.html"
    registry.write_output(rec, str(page), registry.format_for_path(str(page)))
    dom = dump_dom(page)
    [summary] = [f.summary for f in analyze(rec).findings]
    items = re.findall(r'<li><button type="button">([^<]*)</button> ([^<]*)</li>', dom)
    assert items == [("30.00-45.00 s", summary)]
    charts = dom.count('data-chart="')
    assert charts >= 4 and dom.count('class="finding" data-rank="1"') == charts


def test_the_record_report_of_a_steady_run_has_no_findings_section(tmp_path):
    from otlp_ebpf.formatters import registry
    from tests.browser import dump_dom

    page = tmp_path / "rec.html"
    registry.write_output(recording(rows=60), str(page), registry.format_for_path(str(page)))
    dom = dump_dom(page)
    assert 'id="findings-list"' not in dom and 'class="finding"' not in dom


def test_a_syscalls_snapshot_with_interval_series_gets_timeline_inspections():
    from otlp_ebpf.model import IntervalPoint

    points = tuple(
        IntervalPoint(float(i + 1), {"read": 100 if i < 20 else 2, "getppid": 50})
        for i in range(40)
    )
    snapshot = SyscallsSnapshot(
        started_at="x", duration_s=40.0, host="h", series=points, interval_s=1.0
    )
    analysis = analyze(snapshot)
    assert analysis.notes == []
    [finding] = analysis.findings
    assert (finding.kind, finding.start_s, finding.end_s) == ("fewer_calls", 20.0, 40.0)
    assert finding.summary == "read calls fell from 100/s to 2/s during 20.0-40.0 s."


def test_alert_rules_need_a_timeline(tmp_path, capsys):
    stat = SyscallStat(5, "app", "connect", 5, 0, {}, 1, 1, 1, 1)
    path = save(
        SyscallsSnapshot(started_at="x", duration_s=5.0, host="h", syscalls=(stat,)),
        tmp_path / "s.json",
    )
    assert run(["analyze", path, "--alerts-out", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err
    assert "alert thresholds come from a timeline" in err and not (tmp_path / "r.yaml").exists()
