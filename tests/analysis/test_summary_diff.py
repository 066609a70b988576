"""Diffs of syscalls and net snapshots: shares, error rates, latencies, retransmit rates."""

from __future__ import annotations

import math

import pytest

from otlp_ebpf.analysis.diff import DiffOptions, DiffReport, DiffSection, RunSet, diff_runs
from otlp_ebpf.analysis.gate import evaluate
from otlp_ebpf.analysis.summary_diff import (
    connection_group,
    latency_quantile,
    retransmit_rates,
)
from otlp_ebpf.errors import UsageError
from otlp_ebpf.model import Connection, NetSnapshot, Snapshot, SyscallsSnapshot, SyscallStat


def stat(
    name: str,
    count: int,
    errors: int = 0,
    p50: int = 1000,
    p99: int = 5000,
    pid: int = 1,
    hist: tuple[int, ...] = (),
) -> SyscallStat:
    return SyscallStat(
        pid, "app", name, count, errors, {}, count * p50, p50, p99, p99 * 2, hist=hist
    )


def syscalls_run(*stats: SyscallStat) -> SyscallsSnapshot:
    return SyscallsSnapshot(started_at="t", duration_s=1, host="h", syscalls=stats)


def sides(base: list[Snapshot], new: list[Snapshot]) -> tuple[RunSet, RunSet]:
    return (
        RunSet("BASE", tuple(f"b{i}" for i in range(len(base))), tuple(base)),
        RunSet("NEW", tuple(f"n{i}" for i in range(len(new))), tuple(new)),
    )


def section(report: DiffReport, name: str) -> DiffSection:
    return next(s for s in report.sections if s.name == name)


def test_syscall_sections_cover_calls_errors_and_latency() -> None:
    base = syscalls_run(stat("read", 900, errors=9), stat("openat", 100))
    new = syscalls_run(stat("read", 700, errors=70, p99=10_000), stat("openat", 300))
    report = diff_runs(*sides([base], [new]), DiffOptions(threshold=5.0))
    calls = section(report, "syscalls.calls")
    assert calls.gated and calls.method == "single run"
    assert [(r.key, r.before, r.after) for r in calls.regressions()] == [("openat", 10.0, 30.0)]
    errors = section(report, "syscalls.errors")
    assert not errors.gated
    read_errors = next(r for r in errors.rows if r.key == "read")
    assert (read_errors.before, read_errors.after) == (pytest.approx(1.0), pytest.approx(10.0))
    overall = next(r for r in errors.rows if r.key == "(all)")
    assert overall.after == pytest.approx(7.0)
    p99 = section(report, "syscalls.p99")
    read_p99 = next(r for r in p99.rows if r.key == "read")
    assert read_p99.delta == pytest.approx(100.0)
    assert p99.delta_unit == "%"
    verdict = evaluate(report)
    assert verdict.failed
    assert "openat calls" in verdict.reason and "single runs: no noise estimate" in verdict.reason


def test_metric_chooses_the_gated_section() -> None:
    base = syscalls_run(stat("read", 900, p99=5000))
    new = syscalls_run(stat("read", 900, p99=7000))
    report = diff_runs(*sides([base], [new]), DiffOptions(metric="p99", threshold=30.0))
    assert [s.name for s in report.sections if s.gated] == ["syscalls.p99"]
    assert evaluate(report).failed
    assert not evaluate(
        diff_runs(*sides([base], [new]), DiffOptions(metric="p99", threshold=50.0))
    ).failed
    with pytest.raises(UsageError, match="calls, errors, p50, p99"):
        diff_runs(*sides([base], [new]), DiffOptions(metric="bytes"))


def test_repeated_syscall_runs_need_growth_beyond_their_spread() -> None:
    base = [syscalls_run(stat("read", 1000, p99=p)) for p in (5000, 5200, 4900, 5100, 5050)]
    steady = [syscalls_run(stat("read", 1000, p99=p)) for p in (5150, 4950, 5000, 5080, 5120)]
    slower = [syscalls_run(stat("read", 1000, p99=p)) for p in (8000, 8200, 7900, 8100, 8050)]
    options = DiffOptions(metric="p99", threshold=20.0)
    assert not evaluate(diff_runs(*sides(base, steady), options)).failed
    report = diff_runs(*sides(base, slower), options)
    assert section(report, "syscalls.p99").method == "mann-whitney"
    assert evaluate(report).failed


def test_latency_of_several_processes_comes_from_merged_histograms() -> None:
    # 100 calls in slot 10 ([1024, 2048) ns) and 100 in slot 12: the median is at the
    # top of slot 10.
    group = [
        stat("read", 100, pid=1, hist=(0,) * 10 + (100,)),
        stat("read", 100, pid=2, hist=(0,) * 12 + (100,)),
    ]
    assert latency_quantile(group, 0.5) == pytest.approx(2048.0)
    assert 4096 <= latency_quantile(group, 0.99) < 8192
    without_hist = [stat("read", 100, p50=1000, pid=1), stat("read", 300, p50=2000, pid=2)]
    assert latency_quantile(without_hist, 0.5) == pytest.approx(1750.0)


def conn(
    comm: str, raddr: str, rport: int, tx: int, retx: int = 0, lport: int = 40000
) -> Connection:
    return Connection(1, comm, 2, "10.0.0.1", lport, raddr, rport, tx, 0, 1.0, retx)


def net_run(*conns: Connection) -> NetSnapshot:
    return NetSnapshot(started_at="t", duration_s=1, host="h", connections=conns)


def test_connection_groups_name_the_service_side() -> None:
    assert connection_group(conn("curl", "10.0.0.2", 443, 1)) == "curl -> 10.0.0.2:443"
    assert connection_group(conn("curl", "::1", 8080, 1)) == "curl -> [::1]:8080"
    served = conn("nginx", "10.0.0.9", 51000, 1, lport=80)
    assert connection_group(served) == "nginx :80 (serving)"


def test_net_bytes_and_retransmit_rates() -> None:
    mib = 1024 * 1024
    base = net_run(conn("app", "10.0.0.2", 443, 3 * mib, 3), conn("app", "10.0.0.3", 5432, mib))
    new = net_run(conn("app", "10.0.0.2", 443, mib, 6), conn("app", "10.0.0.3", 5432, mib, 1))
    assert retransmit_rates(base) == {
        "app -> 10.0.0.2:443": 1.0,
        "app -> 10.0.0.3:5432": 0.0,
        "(all)": 0.75,
    }
    report = diff_runs(*sides([base], [new]), DiffOptions(threshold=10.0))
    bytes_ = section(report, "net.bytes")
    assert [(r.key, r.delta) for r in bytes_.regressions()] == [("app -> 10.0.0.3:5432", 25.0)]
    retx = section(report, "net.retransmits")
    db = next(r for r in retx.rows if r.key == "app -> 10.0.0.3:5432")
    assert math.isinf(db.delta)
    assert evaluate(report).failed
    by_retx = diff_runs(*sides([base], [new]), DiffOptions(metric="retransmits", threshold=400.0))
    assert by_retx.metric == "retransmits"
    flagged = evaluate(by_retx).regressions
    # 0 -> 1 per MiB has no finite relative change; 1 -> 6 per MiB is +500 %.
    assert [r.key for _, r in flagged] == ["app -> 10.0.0.3:5432", "app -> 10.0.0.2:443"]


def test_only_the_gated_section_marks_regressions() -> None:
    base = syscalls_run(stat("read", 900, p99=5000), stat("write", 100))
    new = syscalls_run(stat("read", 900, p99=9000), stat("write", 300))
    report = diff_runs(*sides([base], [new]), DiffOptions(threshold=5.0))
    assert [r.key for r in section(report, "syscalls.calls").rows if r.regression] == ["write"]
    assert not any(r.regression for r in section(report, "syscalls.p99").rows)


def test_latency_quantiles_do_not_depend_on_how_calls_split_across_processes():
    from otlp_ebpf.analysis.summary_diff import latency_quantile
    from otlp_ebpf.model import SyscallStat

    hist = [0] * 12
    hist[9] = 100  # 100 calls between 512 and 1023 ns

    def stat(pid: int, n: int) -> SyscallStat:
        h = [0] * 12
        h[9] = n
        return SyscallStat(
            pid, "x", "read", n, 0, {}, n * 1005, 0, 0, 1010, min_ns=1000, hist=tuple(h)
        )

    one = [stat(1, 100)]
    split = [stat(1, 50), stat(2, 50)]
    for q in (0.5, 0.99):
        assert latency_quantile(one, q) == latency_quantile(split, q)
        assert 1000 <= latency_quantile(split, q) <= 1010
