"""The agent's watch without BPF: the ring's bounds, the debounce of findings, the burst's
rates and the recording of a finding's window, on interval batches built as the agent
builds them."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from otlp_ebpf.analysis.analyze import analyze
from otlp_ebpf.analysis.watch import Episodes, finding_key
from otlp_ebpf.collectors.agent import IntervalBatch
from otlp_ebpf.collectors.agent_burst import Burst
from otlp_ebpf.collectors.agent_recordings import RecordingsDir
from otlp_ebpf.collectors.agent_watch import (
    IntervalRing,
    RingEntry,
    Watch,
    WatchConfig,
    entry_of,
    stat_delta,
)
from otlp_ebpf.collectors.budget import (
    BudgetController,
    CostMeter,
    Governor,
    PeriodController,
    cpu_knob,
    period_knob,
)
from otlp_ebpf.errors import UsageError
from otlp_ebpf.model import (
    CpuSnapshot,
    ProcessInfo,
    RecordSnapshot,
    StackCount,
    SyscallsSnapshot,
    SyscallStat,
    SyscallTick,
    read_snapshot,
)

INTERVAL = 0.5
PID = 4242
STARTED = datetime(2026, 12, 5, 2, 0, 0, tzinfo=UTC)


class Workload:
    """A target's syscalls and cpu, interval by interval, with an errno storm between two
    intervals: what the agent hands the watch (cumulative syscall rows, this interval's
    ticks and cpu stacks)."""

    def __init__(
        self,
        storm: tuple[int, int] | None = None,
        seed: int = 3,
        quiet: tuple[int, int] | None = None,
    ) -> None:
        self.storm = storm
        self.quiet = quiet  # intervals where getppid is not counted (a duty cycle's gap)
        self.rng = np.random.default_rng(seed)
        self.totals: dict[str, tuple[int, int]] = {}
        self.seq = 0

    def next(self, hz: int = 99) -> tuple[IntervalBatch, list[SyscallTick]]:
        self.seq += 1
        on = self.storm is not None and self.storm[0] <= self.seq < self.storm[1]
        calls = {"read": int(self.rng.poisson(400)), "getppid": int(self.rng.poisson(900))}
        if self.quiet is not None and self.quiet[0] <= self.seq < self.quiet[1]:
            calls["getppid"] = 0
        errors = {"read": 0, "getppid": 0}
        if on:
            calls["openat"] = errors["openat"] = int(self.rng.poisson(5000))
        ticks, stats = [], []
        for name, n in calls.items():
            count, errs = self.totals.get(name, (0, 0))
            self.totals[name] = (count + n, errs + errors.get(name, 0))
            ticks.append(SyscallTick(name, n, errors.get(name, 0), 800, 3000))
            count, errs = self.totals[name]
            hist = tuple([0] * 9 + [count] + [0] * 22)
            errno = {"ENOENT": errs} if errs else {}
            stats.append(SyscallStat(PID, "worker", name, count, errs, errno, 0, 0, 0, 0, 0, hist))
        samples = int(self.rng.poisson(40 * hz / 99))
        cpu = CpuSnapshot(
            "", INTERVAL, "host", processes=(ProcessInfo(PID, "worker"),),
            frequency_hz=hz, samples_total=samples,
            stacks=(StackCount(PID, PID, "worker", ("main", "work"), samples),),
        )  # fmt: skip
        sys_section = SyscallsSnapshot("", 0.0, "host", syscalls=tuple(stats))
        batch = IntervalBatch(
            seq=self.seq, t_s=round(self.seq * INTERVAL, 3), duration_s=INTERVAL,
            sections={"cpu": cpu, "syscalls": sys_section}, events={}, lost={}, bpf_ns=0,
            cpu_s=0.0, rss_kb=0, cost_pct=0.0, rates={},
        )  # fmt: skip
        return batch, ticks


def run_watch(watch: Watch, workload: Workload, intervals: int, governor=None) -> list:
    events = []
    for _ in range(intervals):
        batch, ticks = workload.next()
        found = watch.observe(batch, ticks, governor, 99, STARTED)
        events.extend(found)
    return events


def observe_until_told(watch: Watch, workload: Workload) -> list:
    """Intervals go to the watch until one brings a finding; its events."""
    events: list = []
    while not events:
        batch, ticks = workload.next()
        events = watch.observe(batch, ticks, None, 99, STARTED)
    return events


def test_an_errno_storm_is_told_once_and_recorded_with_its_window(tmp_path: Path) -> None:
    config = WatchConfig(window=20, record_after=3, recordings_dir=str(tmp_path / "rec"))
    watch = Watch(config, INTERVAL)
    events = run_watch(watch, Workload(storm=(16, 26)), 40)
    kinds = [e.kind for e in events]
    assert kinds.count("syscall_errors") == 1, kinds  # found at every interval, told once
    storm = next(e for e in events if e.kind == "syscall_errors")
    assert storm.severity == "critical"
    assert 7.0 <= storm.start_s <= 8.0, storm  # the storm starts at interval 16: 7.5 s
    assert watch.counts.repeats > 0
    assert storm.recording and os.path.exists(storm.recording)
    assert stat.S_IMODE(os.stat(storm.recording).st_mode) == 0o600
    assert len(os.listdir(tmp_path / "rec")) == 1  # one recording for the whole episode
    recorded = read_snapshot(storm.recording)
    assert isinstance(recorded, RecordSnapshot)
    origin = storm.seq + 3 - len(recorded.timeline)  # intervals before the first row
    again = [f for f in analyze(recorded).findings if f.kind == "syscall_errors"]
    assert again, [f.summary for f in analyze(recorded).findings]
    assert again[0].start_s + origin * INTERVAL == pytest.approx(storm.start_s)
    assert "ENOENT" in again[0].summary  # the window's errno breakdown went with it
    section = recorded.signals["syscalls"]
    assert isinstance(section, SyscallsSnapshot)
    openat = next(s for s in section.syscalls if s.name == "openat")
    assert openat.errors == sum(
        t.errors for row in recorded.timeline for t in row.syscalls or () if t.name == "openat"
    )


def test_a_steady_workload_gives_no_finding_and_no_recording(tmp_path: Path) -> None:
    config = WatchConfig(window=20, record_after=3, recordings_dir=str(tmp_path / "rec"))
    watch = Watch(config, INTERVAL)
    assert run_watch(watch, Workload(), 40) == []
    assert os.listdir(tmp_path / "rec") == []
    assert watch.counts.analysis_s > 0


def test_a_rate_change_is_not_taken_for_a_change_of_the_workload() -> None:
    """A budget lowering the cpu rate to a third mid-run: the ring keeps counts at the
    requested rate, so no cpu finding comes of it."""
    watch = Watch(WatchConfig(window=20), INTERVAL)
    workload = Workload()
    events = []
    for i in range(40):
        batch, ticks = workload.next(hz=33 if i >= 20 else 99)
        events += watch.observe(batch, ticks, None, 99, STARTED)
    assert events == []


def test_the_ring_is_bounded_by_count_and_by_bytes() -> None:
    ring = IntervalRing(5, max_bytes=10**9)
    workload = Workload()
    pushed = []
    for _ in range(12):
        batch, ticks = workload.next()
        pushed.append(entry_of(batch, ticks, 99))
        ring.push(pushed[-1])
    assert [e.seq for e in ring.entries] == [8, 9, 10, 11, 12]
    assert ring.dropped == 7
    # the rows of the dropped intervals are the base the window's differences start from
    read = next(s for s in pushed[6].stats if s.name == "read")
    assert ring.base[(PID, "worker", "read")] is read
    one = ring.entries[-1].size
    small = IntervalRing(100, max_bytes=3 * one)
    for entry in list(ring.entries):
        small.push(entry)
    assert len(small) == 3 and small.bytes <= 3 * one
    entries, before = small.last(2)
    assert [e.seq for e in entries] == [11, 12] and before is not None and before.seq == 10


def test_the_base_keeps_no_row_of_a_process_that_is_gone() -> None:
    """On a churning host every interval brings rows of processes that exited: none of them
    has a later row to take a difference from, so none stays in the base (a live process's
    rows and the rows folded by name do)."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    churned = []
    for _ in range(40):
        child = subprocess.Popen(["true"])
        child.wait()
        churned.append(child.pid)
    live = os.getpid()
    ring = IntervalRing(3, max_bytes=10**9)
    for seq in range(1, 40):
        stats = [
            SyscallStat(pid, comm, "read", seq, 0, {}, 0, 0, 0, 0, 0, (seq,))
            for pid, comm in ((live, "me"), (0, "ls"), (churned[seq], "ls"))
        ]
        if seq == 30:  # a process that is gone, with a later row still in the ring
            stats.append(SyscallStat(gone.pid, "true", "read", 1, 0, {}, 0, 0, 0, 0, 0, (1,)))
        if seq == 31:
            stats.append(SyscallStat(gone.pid, "true", "read", 2, 0, {}, 0, 0, 0, 0, 0, (2,)))
        section = SyscallsSnapshot("", 0.0, "host", syscalls=tuple(stats))
        batch = IntervalBatch(
            seq=seq, t_s=float(seq), duration_s=1.0, sections={"syscalls": section}, events={},
            lost={}, bpf_ns=0, cpu_s=0.0, rss_kb=0, cost_pct=0.0, rates={},
        )  # fmt: skip
        ring.push(entry_of(batch, [], 99))
        if seq == 33:  # the row of interval 30 left the ring; the one of 31 is still in it
            assert (gone.pid, "true", "read") in ring.base
    assert set(ring.base) == {(live, "me", "read"), (0, "ls", "read")}


def test_the_newest_interval_is_kept_even_over_the_byte_cap() -> None:
    ring = IntervalRing(10, max_bytes=1)
    workload = Workload()
    for _ in range(3):
        batch, ticks = workload.next()
        ring.push(entry_of(batch, ticks, 99))
    assert len(ring) == 1 and ring.entries[0].seq == 3


def test_stat_delta_takes_the_window_out_of_cumulative_rows() -> None:
    before = SyscallStat(1, "c", "openat", 10, 4, {"ENOENT": 4}, 100, 0, 0, 50, 1, (0, 10, 0))
    now = SyscallStat(1, "c", "openat", 25, 9, {"ENOENT": 6, "EACCES": 3}, 400, 0, 0, 90, 1,
                      (0, 10, 15))  # fmt: skip
    delta = stat_delta(now, before)
    assert (delta.count, delta.errors, delta.total_ns) == (15, 5, 300)
    assert delta.errno == {"ENOENT": 2, "EACCES": 3}
    assert delta.hist == (0, 0, 15)
    assert 4 <= delta.p50_ns <= 7 and delta.max_ns <= 7
    assert stat_delta(now, None) is now


class _Finding:
    """What Episodes reads of a finding (its key's parts)."""

    def __init__(self, kind: str, series: str = "") -> None:
        self.kind, self.summary, self.effects = kind, series, ()


def test_episodes_debounce_a_finding_that_keeps_firing_or_flaps() -> None:
    episodes = Episodes(quiet_intervals=4)
    storm, hog = _Finding("syscall_errors", "a"), _Finding("cpu_hog", "b")
    assert episodes.see([storm], 1) == [storm]
    assert episodes.see([storm], 2) == []  # keeps firing
    assert episodes.see([], 3) == []
    assert episodes.see([storm, hog], 5) == [hog]  # flapped back within the quiet time
    assert episodes.repeats == 2
    for seq in range(6, 10):
        assert episodes.see([hog], seq) == []
    # the storm was last seen at 5: quiet for more than 4 intervals by 10, a new episode
    assert episodes.see([storm], 10) == [storm]
    assert finding_key(storm) == "syscall_errors a"  # type: ignore[arg-type]


def _governor(budget: float = 1.0) -> tuple[Governor, BudgetController, PeriodController, dict]:
    applied: dict[str, int] = {}
    cpu = BudgetController(budget, 99)
    cpu.hz = 20
    period = PeriodController(budget, max_period=1024, period=64)
    knobs = [
        cpu_knob(cpu, lambda hz: applied.__setitem__("cpu_hz", hz)),
        period_knob("syscalls_period", period, lambda n: applied.__setitem__("period", n)),
    ]
    return Governor(budget, CostMeter(lambda: 0, lambda: []), knobs), cpu, period, applied


def test_a_burst_samples_at_full_rate_under_its_own_budget_then_gives_it_back() -> None:
    governor, cpu, period, applied = _governor()
    burst = Burst(budget_pct=5.0, intervals=3)
    assert burst.start(governor)
    assert applied == {"cpu_hz": 99, "period": 1}
    assert cpu.budget_pct == period.budget_pct == governor.budget_pct == 5.0
    # the controllers now judge against the burst's budget: 3% is under it, the rate holds
    cpu.settle = False
    assert cpu.next_hz(3.0) == 99
    assert not burst.tick(governor) and not burst.tick(governor)
    assert burst.start(governor)  # a finding during the burst extends it
    assert burst.bursts == 1
    assert [burst.tick(governor) for _ in range(3)] == [False, False, True]
    assert cpu.budget_pct == period.budget_pct == governor.budget_pct == 1.0
    cpu.settle = False
    assert cpu.next_hz(3.0) < 99  # over the normal budget again: the rate comes down


def test_a_budget_changed_during_a_burst_is_kept_when_it_ends() -> None:
    governor, cpu, _, _ = _governor()
    burst = Burst(budget_pct=5.0, intervals=1)
    burst.start(governor)
    cpu.budget_pct = 2.0  # SIGHUP with a new --budget
    assert burst.tick(governor)
    assert cpu.budget_pct == 2.0


def test_without_a_budget_a_burst_has_nothing_to_raise() -> None:
    burst = Burst()
    assert not burst.start(None)
    assert not burst.start(Governor(0.0, CostMeter(lambda: 0, lambda: []), []))
    assert not burst.active


def test_the_recordings_directory_keeps_under_its_cap(tmp_path: Path) -> None:
    directory = RecordingsDir(str(tmp_path / "rec"), cap_bytes=5000)
    assert stat.S_IMODE(os.stat(tmp_path / "rec").st_mode) == 0o700
    snapshot = RecordSnapshot("2026-12-05T02:00:00", 1.0, "h", notes=("x" * 1500,))
    paths = []
    for seq in range(1, 6):
        path = directory.path_for(STARTED.replace(second=seq), seq)
        directory.write(path, snapshot)
        paths.append(path)
    left = sorted(os.listdir(tmp_path / "rec"))
    assert left == [os.path.basename(p) for p in paths[-len(left) :]]
    assert 1 <= len(left) < 5 and directory.removed == 5 - len(left)
    assert sum(os.path.getsize(p) for p in paths if os.path.exists(p)) <= 5000


def test_an_unwritable_recordings_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="--recordings-dir"):
        RecordingsDir(str(tmp_path / "file"), 1000)


def test_ring_entries_scale_cpu_counts_to_the_requested_rate() -> None:
    batch, ticks = Workload().next(hz=33)
    entry: RingEntry = entry_of(batch, ticks, 99)
    assert entry.cpu_scale == pytest.approx(3.0)
    raw = batch.sections["cpu"].stacks[0].count  # type: ignore[attr-defined]
    assert entry.samples == {str(PID): round(raw * 3.0)}


def test_report_analyze_and_ask_read_a_recording(tmp_path: Path, capsys) -> None:
    from otlp_ebpf.cli.app import run

    config = WatchConfig(window=20, record_after=3, recordings_dir=str(tmp_path / "rec"))
    events = run_watch(Watch(config, INTERVAL), Workload(storm=(16, 26)), 30)
    path = next(e.recording for e in events if e.recording)
    capsys.readouterr()
    assert run(["report", path]) == 0
    assert "openat" in capsys.readouterr().out
    assert run(["analyze", path, "--json"]) == 0
    kinds = [f["kind"] for f in json.loads(capsys.readouterr().out)["findings"]]
    assert "syscall_errors" in kinds
    assert run(["ask", "which syscalls failed?", path]) == 0
    assert "openat" in capsys.readouterr().out


def test_an_inspection_that_fails_costs_the_watch_its_word_not_the_agent(
    monkeypatch, capsys
) -> None:
    import otlp_ebpf.collectors.agent_watch as agent_watch

    def broken(*args: object, **kwargs: object) -> object:
        raise ValueError("a bug in a rule")

    monkeypatch.setattr(agent_watch, "analyze", broken)
    watch = Watch(WatchConfig(window=20), INTERVAL)
    assert run_watch(watch, Workload(storm=(12, 20)), 24) == []
    assert watch.counts.analysis_errors > 1
    err = capsys.readouterr().err
    assert err.count("the watch could not inspect") == 1 and "a bug in a rule" in err


def test_calls_falling_while_syscalls_are_duty_cycled_is_no_finding() -> None:
    """Under a budget the syscall probes are attached for a share of the time and a row can
    miss a loop: "calls fell to nothing" then comes from the sampling, not the target."""

    def quiet_run(period: int) -> list:
        governor, _, duty, _ = _governor()
        duty.period = period
        watch = Watch(WatchConfig(window=20), INTERVAL)
        return run_watch(watch, Workload(quiet=(16, 22)), 30, governor)

    told = [e.kind for e in quiet_run(period=1)]
    assert "fewer_calls" in told  # probes attached throughout: a real fall, told
    assert "fewer_calls" not in [e.kind for e in quiet_run(period=16)]


def test_a_recording_due_when_the_agent_stops_is_written_with_what_there_is(
    tmp_path: Path,
) -> None:
    import dataclasses

    config = WatchConfig(window=20, record_after=5, recordings_dir=str(tmp_path / "rec"))
    watch = Watch(config, INTERVAL)
    workload = Workload(storm=(16, 40))
    events = observe_until_told(watch, workload)
    assert os.listdir(tmp_path / "rec") == []  # due 5 intervals later
    batch, ticks = workload.next()
    watch.observe(dataclasses.replace(batch, final=True), ticks, None, 99, STARTED)
    recorded = read_snapshot(events[0].recording)
    assert isinstance(recorded, RecordSnapshot)
    assert any("stopped before" in note for note in recorded.notes)
    assert any("told once, recorded once" in note for note in recorded.notes)


def test_new_burst_options_apply_to_a_burst_under_way() -> None:
    governor, cpu, period, _ = _governor()
    burst = Burst(budget_pct=5.0, intervals=6)
    burst.start(governor)
    burst.reconfigure(8.0, 6, governor)  # SIGHUP: a larger burst budget
    assert cpu.budget_pct == period.budget_pct == governor.budget_pct == 8.0
    burst.reconfigure(8.0, 2, governor)  # a shorter burst: at most 2 more intervals
    assert [burst.tick(governor) for _ in range(2)] == [False, True]
    assert cpu.budget_pct == period.budget_pct == governor.budget_pct == 1.0
    burst.start(governor)
    burst.reconfigure(8.0, 0, governor)  # bursts turned off: the one under way ends now
    assert not burst.active and cpu.budget_pct == governor.budget_pct == 1.0


def test_a_reconfigured_watch_keeps_its_ring_and_writes_an_announced_recording_where_told(
    tmp_path: Path,
) -> None:
    config = WatchConfig(window=20, record_after=5, recordings_dir=str(tmp_path / "old"))
    watch = Watch(config, INTERVAL)
    workload = Workload(storm=(16, 40))
    events = observe_until_told(watch, workload)
    assert len(watch.ring) > 12
    new = RecordingsDir(str(tmp_path / "new"), cap_bytes=1 << 20)
    watch.reconfigure(WatchConfig(window=10, record_after=1), new, None)
    assert len(watch.ring) == 12 and watch.ring.max_intervals == 12  # the oldest dropped
    run_watch(watch, workload, 6)
    assert os.listdir(tmp_path / "old") == [os.path.basename(events[0].recording)]
    assert os.listdir(tmp_path / "new") == []  # the storm is one episode: nothing new


def test_the_inspections_keep_to_a_share_of_the_budget() -> None:
    from otlp_ebpf.collectors.agent_watch import inspection_stride

    governor = Governor(1.0, CostMeter(lambda: 0, lambda: []), [])
    # 1% of a core over 10 s intervals, a tenth of it for the watch: 10 ms an interval
    assert inspection_stride(0.008, governor, 10.0, 30) == 1
    assert inspection_stride(0.030, governor, 10.0, 30) == 3
    assert inspection_stride(5.0, governor, 10.0, 30) == 10  # a third of the window at most
    assert inspection_stride(5.0, None, 10.0, 30) == 1  # no budget: every interval
    # A short window: a fault can begin in 4 of its 12 rows (after 5 of baseline, with 3 of
    # its own to follow): inspected every 2 intervals at most, so it is seen twice.
    assert inspection_stride(5.0, governor, 10.0, 12) == 2
    assert inspection_stride(5.0, governor, 10.0, 9) == 1
    # A tight budget: inspected every few intervals, and a storm is still found, once.
    watch = Watch(WatchConfig(window=20), INTERVAL)
    events = run_watch(watch, Workload(storm=(16, 26)), 40, governor)
    assert watch.stride > 1 and watch.skipped > 0
    assert [e.kind for e in events].count("syscall_errors") == 1
    every = Watch(WatchConfig(window=20), INTERVAL)
    run_watch(every, Workload(storm=(16, 26)), 40)
    assert every.skipped == 0 and every.counts.analysis_s > watch.counts.analysis_s


def test_findings_at_every_interval_do_not_keep_the_agent_bursting() -> None:
    governor, cpu, _, applied = _governor()
    burst = Burst(budget_pct=5.0, intervals=2)
    assert burst.start(governor) and applied["cpu_hz"] == 99
    cpu.hz = 40  # the controller fit the rate to the burst's budget
    held = []
    for _ in range(12):  # a finding at every interval, as on a churning host
        extending = burst.active
        burst.start(governor)
        held.append(burst.active)
        if extending:
            assert cpu.hz == 40  # an extension leaves the fitted rate alone
        cpu.hz = 40
        burst.tick(governor)
    # bursting 2 intervals, extended to 4 at most, then 2 under the normal budget, ...
    assert held == [True] * 4 + [False] * 2 + [True] * 4 + [False] * 2
    assert burst.bursts == 2


def test_a_period_raised_just_before_a_burst_is_not_fitted_against_itself() -> None:
    governor, _, period, _ = _governor()
    period.period = 1
    period.next_period(3.0)  # over the 1% budget: raised, the stretch before kept for a fit
    assert period.period > 1
    Burst(budget_pct=5.0, intervals=2).start(governor)  # back to every event
    period.next_period(0.5)  # the stretch after the change: not judged
    assert period.next_period(0.5) == 1  # no fit of period 1 against period 1 (was 1/0)
