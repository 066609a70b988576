"""The overhead budget's controller and cost meter, without BPF."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from otlp_ebpf.cli.app import run
from otlp_ebpf.collectors import budget as budget_mod
from otlp_ebpf.collectors.budget import (
    BudgetController,
    CostMeter,
    Governor,
    Interval,
    PeriodController,
    UnwindFallback,
    cpu_budget_note,
    cpu_knob,
)


def test_a_tick_over_budget_lowers_the_rate_in_proportion():
    c = BudgetController(budget_pct=1.0, requested_hz=999)
    assert c.next_hz(10.0) == int(999 * 0.85 * 1.0 / 10.0)
    assert c.next_hz(10.0) == 84  # the tick after a change mixes two rates: not judged
    assert c.next_hz(2.0) == int(84 * 0.85 / 2.0)
    assert c.lowest_hz == 35


def test_room_under_the_budget_raises_the_rate_up_to_the_request():
    c = BudgetController(budget_pct=1.0, requested_hz=100)
    c.next_hz(4.0)  # -> 21
    c.next_hz(0.0)  # settling
    rates = [c.next_hz(0.1) for _ in range(30)]
    assert max(rates) == 100 and rates[-1] == 100
    assert all(b >= a for a, b in itertools.pairwise(rates))
    assert c.next_hz(0.8) == 100  # between 60% and 100% of the budget: left alone


def test_the_rate_never_drops_below_one_hertz():
    c = BudgetController(budget_pct=0.5, requested_hz=99)
    assert c.next_hz(1000.0) == 1


def dwarf_controller(allowed: bool = True) -> tuple[BudgetController, list[tuple[int, str]]]:
    switches: list[tuple[int, str]] = []
    fallback = UnwindFallback(lambda hz, why: switches.append((hz, why)), allowed=allowed)
    fallback.floor_hz, fallback.after = 19, 4
    return BudgetController(budget_pct=0.5, requested_hz=999, fallback=fallback), switches


def test_dwarf_sampling_stops_at_its_floor_then_falls_back_to_frame_pointers():
    c, switches = dwarf_controller()
    assert c.unwind == "dwarf"
    assert c.next_hz(50.0) == 19  # not below the lowest useful DWARF rate
    assert c.next_hz(50.0) == 19  # settling
    for _ in range(3):  # over the budget at the floor, not yet long enough
        assert c.next_hz(5.0) == 19 and c.unwind == "dwarf"
    assert c.next_hz(5.0) == 19 and c.unwind == "fp"  # the 4th decision in a row
    assert len(switches) == 1 and switches[0][0] == 19
    assert "stayed over the 0.5% budget at 19 Hz with DWARF unwinding for 1 s" in switches[0][1]
    assert c.next_hz(5.0) == 19  # the stretch across the switch mixes both: not judged
    assert c.next_hz(5.0) == 1  # frame pointers may go down to 1 Hz
    c.next_hz(5.0)
    c.next_hz(5.0)
    assert len(switches) == 1  # once


def test_a_decision_under_budget_at_the_floor_starts_the_count_again():
    c, switches = dwarf_controller()
    c.next_hz(50.0)
    c.next_hz(50.0)
    for cost in (5.0, 5.0, 5.0, 0.4, 5.0, 5.0, 5.0):
        c.next_hz(cost)
    assert not switches and c.unwind == "dwarf"
    c.next_hz(5.0)
    assert switches and c.unwind == "fp"


def test_over_budget_above_the_floor_lowers_the_rate_without_falling_back():
    c, switches = dwarf_controller()
    for _ in range(10):
        c.next_hz(0.6)  # just over: lowered a little each time, never near the floor
    assert not switches and c.hz > 19


def test_dwarf_asked_for_is_kept_below_the_floor_and_warned_about():
    c, switches = dwarf_controller(allowed=False)
    assert c.next_hz(50.0) == 8  # no floor but 1 Hz: the budget still counts
    c.next_hz(50.0)
    for _ in range(6):  # down to 1 Hz (and its settling stretch), still over the budget
        c.next_hz(5.0)
    assert not switches and c.unwind == "dwarf" and c.hz == 1
    assert c.fallback is not None and c.fallback.held_over_pct == 5.0
    note = cpu_budget_note(c)
    assert "DWARF unwinding kept as --unwind dwarf asked" in note
    assert "--unwind auto would fall back to frame pointers" in note


def test_each_tick_states_how_cpu_stacks_were_unwound(monkeypatch):
    c, _ = dwarf_controller()
    meter = CostMeter(lambda: 0, lambda: [])
    governor = Governor(0.5, meter, [cpu_knob(c, lambda hz: None)])
    governor.begin()
    governor.measure(1.0)
    c.unwind = "fp"
    governor.measure(2.0)
    assert [t.unwind for t in governor.ticks] == ["dwarf", "fp"]
    plain = Governor(0.5, meter, [cpu_knob(BudgetController(0.5, 99), lambda hz: None)])
    plain.begin()
    plain.measure(1.0)
    assert plain.ticks[0].unwind == ""  # one way of unwinding: nothing to state


# Run in a process of its own: the test runner's other children (workloads of earlier tests
# still being reaped) would count as helpers of the meter.
METER_CHECK = """
import os, subprocess, sys, time
from otlp_ebpf.collectors.budget import CostMeter, child_cpu_seconds

spin = "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.3: pass\\n"
helper = subprocess.Popen([sys.executable, "-c", spin + "time.sleep(30)"])
target = subprocess.Popen([sys.executable, "-c", spin + "time.sleep(30)"])
try:
    while child_cpu_seconds(helper.pid) < 0.3 or child_cpu_seconds(target.pid) < 0.3:
        time.sleep(0.05)
    meter = CostMeter(lambda: 2_000_000_000, lambda: [target.pid])
    own = meter.cpu_s() - child_cpu_seconds(helper.pid)
    times = os.times()
    assert abs(own - (times.user + times.system)) <= 0.05, (own, times)
    assert meter.total_s() >= own + 0.3 + 2.0  # helper CPU and BPF seconds count
    assert meter.total_s() < own + 0.3 + 2.0 + child_cpu_seconds(target.pid)
finally:
    helper.kill()
    target.kill()
    helper.wait()
    target.wait()
print("ok")
"""


def test_meter_counts_helper_processes_but_not_the_launched_command():
    result = subprocess.run(
        [sys.executable, "-c", METER_CHECK], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr


def test_interval_cost_is_core_seconds_over_wall_seconds():
    assert Interval(10.0, 1.0).pct(12.0, 1.05) == pytest.approx(2.5)


@pytest.mark.parametrize("command", ["record", "syscalls", "mem", "cpu"])
@pytest.mark.parametrize("budget", ["0", "-1", "101", "nan"])
def test_budget_out_of_range_is_one_line_exit_2(capsys, command, budget):
    assert run([command, "-d", "1", "--budget", budget]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--budget must be" in err[0]


def drive(c: PeriodController, cost: Callable[[int], float], decisions: int) -> list[int]:
    """The periods a controller picks when a stretch at period N costs cost(N)."""
    return [c.next_period(cost(c.period)) for _ in range(decisions)]


def test_a_period_rises_in_proportion_to_the_excess_and_is_capped():
    c = PeriodController(budget_pct=1.0, max_period=1024)
    periods = drive(c, lambda n: 10.0 / n, 6)  # every bit of the cost is per sampled event
    assert periods[0] == 12  # 10% of a core / (85% of 1%)
    assert periods[-1] == 12 and c.useful_period == 0  # 0.83%: within the budget, kept
    c = PeriodController(budget_pct=1.0, max_period=1024)
    assert c.next_period(1e6) == 1024 and c.highest == 1024


def test_a_cost_no_period_removes_stops_the_period_where_it_stops_helping():
    c = PeriodController(budget_pct=1.0, max_period=1024)
    # 5% of a core whatever the period (a program on every event), 10% in sampled events
    periods = drive(c, lambda n: 5.0 + 10.0 / n, 12)
    assert periods[0] == 18
    assert c.floor_pct == pytest.approx(5.0) and c.useful_period == 20
    assert periods[-1] == 20 and c.highest == 20  # not 1024: precision kept for no gain


def test_a_floor_fitted_while_idle_is_dropped_when_the_events_come():
    c = PeriodController(budget_pct=1.0, max_period=1024)
    drive(c, lambda n: 2.0, 4)  # the target idle: the cost is the tool's own
    assert c.useful_period == 1 and c.period == 1
    periods = drive(c, lambda n: 2.0 + 40.0 / n, 8)  # then a burst of events
    assert max(periods) > 20 and c.highest > 20


def test_a_raise_that_bought_nothing_is_undone_and_tried_again_later():
    c = PeriodController(budget_pct=1.0, max_period=1024)
    periods = drive(c, lambda n: 8.0, 30)
    assert periods[:4] == [10, 10, 1, 1] and c.useful_period in (0, 1)
    assert periods.count(10) >= 4  # a new fit after REFIT_AFTER decisions


def test_a_period_falls_back_to_every_event_when_there_is_room():
    c = PeriodController(budget_pct=1.0, max_period=1024)
    c.next_period(100.0)  # -> 118
    periods = [c.next_period(0.1) for _ in range(60)]
    assert periods[-1] == 1 and c.highest == 118
    assert all(b <= a for a, b in itertools.pairwise(periods))
    assert c.next_period(0.8) == 1  # between 60% and 100% of the budget: left alone


def test_the_governor_turns_every_knob_by_the_cost_since_the_last_decision(monkeypatch):
    clock = [100.0]
    cost = [0.0]
    monkeypatch.setattr(budget_mod.time, "monotonic", lambda: clock[0])
    meter = CostMeter(lambda: 0, list)
    monkeypatch.setattr(meter, "total_s", lambda: cost[0])
    applied: dict[str, list[int]] = {"cpu": [], "syscalls": []}
    hz = BudgetController(budget_pct=1.0, requested_hz=999)
    period = PeriodController(budget_pct=1.0, max_period=1024)
    governor = Governor(
        1.0,
        meter,
        [
            budget_mod.cpu_knob(hz, applied["cpu"].append),
            budget_mod.period_knob("syscalls_1_in", period, applied["syscalls"].append),
        ],
    )
    governor.begin()
    clock[0] += 0.1
    cost[0] = 0.01
    governor.control()  # sooner than CONTROL_S: nothing decided
    assert applied == {"cpu": [], "syscalls": []}
    clock[0] += 0.15
    cost[0] = 0.025  # 10% of a core over the 0.25 s since begin
    governor.control()
    assert applied == {"cpu": [int(999 * 0.85 / 10)], "syscalls": [12]}
    governor.measure(1.0)
    assert governor.ticks[-1].rates == {"cpu_hz": 84.0, "syscalls_1_in": 12.0}


def test_each_decision_hands_on_what_all_but_the_helpers_left_of_the_budget(monkeypatch):
    clock = [100.0]
    cost = [0.0]
    helpers = [0.0]
    monkeypatch.setattr(budget_mod.time, "monotonic", lambda: clock[0])
    meter = CostMeter(lambda: 0, list)
    monkeypatch.setattr(meter, "total_s", lambda: cost[0])
    monkeypatch.setattr(meter, "helpers_s", lambda: helpers[0])
    slack: list[tuple[float, float]] = []
    governor = Governor(1.0, meter, [], control_s=1.0, on_slack=lambda s, w: slack.append((s, w)))
    governor.begin()
    # 2 s at 1%: 20 ms of budget; the agent used 12 ms, its decoder 30 ms more
    clock[0] += 2.0
    cost[0], helpers[0] = 0.042, 0.030
    governor.control()
    # then 1 s in which the agent alone used 15 ms: 5 ms over
    clock[0] += 1.0
    cost[0] = 0.057
    governor.control()
    assert [(round(s, 6), w) for s, w in slack] == [(0.008, 2.0), (-0.005, 1.0)]


def test_work_done_once_an_interval_keeps_the_rate_down_between_its_stretches(monkeypatch):
    """1% budget, decisions once a second, 10 s intervals: each interval costs 0.95% of a
    core in all, 86 ms in its last second (the export) and 1 ms in each of the 9 before.
    Judged a stretch at a time, the cheap stretches raise the rate and the dear one lowers
    it; judged on the cost since the rate last changed, it stays where it is."""

    def run(window_s: float, dear_s: float = 0.086, cheap_s: float = 0.001) -> list[int]:
        clock = [100.0]
        cost = [0.0]
        monkeypatch.setattr(budget_mod.time, "monotonic", lambda: clock[0])
        meter = CostMeter(lambda: 0, list)
        monkeypatch.setattr(meter, "total_s", lambda: cost[0])
        hz = BudgetController(budget_pct=1.0, requested_hz=99)
        hz.hz = 2
        governor = Governor(1.0, meter, [cpu_knob(hz, lambda _: None)], control_s=1.0)
        governor.window_s = window_s
        governor.begin()
        rates = []
        for second in range(1, 61):
            clock[0] += 1.0
            cost[0] += dear_s if second % 10 == 0 else cheap_s
            governor.control()
            rates.append(hz.hz)
        return rates

    assert set(run(10.0)) == {2}
    alone = run(0.0)
    assert max(alone) > 2 and min(alone) < 2  # up, then down below where it began
    # room in the budget: raised once the rate has held a whole window, then every window
    roomy = run(10.0, dear_s=0.01)
    assert roomy[:9] == [2] * 9 and roomy[9] == roomy[18] == 3 and roomy[-1] >= 11
    # over it: lowered before a window is over
    assert run(10.0, cheap_s=0.03)[:3] == [1, 1, 1]


def test_a_slower_governor_still_decides_first_after_control_s(monkeypatch):
    # The agent decides once a second; its first decision comes after record's CONTROL_S
    # all the same, so the knobs' full starting rates last a quarter of a second, not one.
    clock = [100.0]
    monkeypatch.setattr(budget_mod.time, "monotonic", lambda: clock[0])
    meter = CostMeter(lambda: 0, list)
    monkeypatch.setattr(meter, "total_s", lambda: 0.0)
    governor = Governor(1.0, meter, [], control_s=1.0)
    governor.begin()
    moments = [budget_mod.CONTROL_S, 0.5, 0.5, 0.25]  # seconds between two looks
    decided = []
    for step in moments:
        clock[0] += step
        governor.control()
        decided.append(governor.decisions)
    assert decided == [1, 1, 2, 2]


def test_a_duty_cycle_alternates_windows_each_told_its_weight_and_generation():
    calls: list[tuple] = []

    def attach() -> float:
        calls.append(("attach",))
        return time.monotonic()

    def detach() -> float:
        calls.append(("detach",))
        return time.monotonic()

    cycle = budget_mod.DutyCycle(
        attach, detach, lambda w, g, until: calls.append(("window", w, g)), cycle_s=0.02
    )
    cycle.set_period(4)
    # Until three windows have opened, however long a loaded machine takes to get there
    # (a poll of a fixed 0.3 s held one window when the process was stalled that long).
    for _ in range(10_000):
        if cycle.windows >= 3:
            break
        budget_mod.poll_between_edges(time.sleep, 0.02, [cycle])
    budget_mod.finish_cycles(time.sleep, [cycle])
    assert calls[0] == ("detach",)  # attached throughout until the budget asked for less
    windows = [c for c in calls if c[0] == "window"]
    assert len(windows) == cycle.windows > 1
    assert [w for _, w, _ in windows] == [4] * len(windows)
    assert [g for _, _, g in windows] == list(range(1, len(windows) + 1))
    kinds = [c[0] for c in calls[1:]]
    assert kinds == ["window", "attach", "detach"] * len(windows)  # never attached twice
    assert not cycle.attached  # the last cycle ran to its end, detached
    cycle.ending = False
    cycle.set_period(1)
    cycle.step(time.monotonic())
    assert calls[-2:] == [("window", 1, len(windows) + 1), ("attach",)] and cycle.attached


def test_a_window_closed_late_weighs_what_was_planned_and_leaves_nothing_to_pay_back():
    """The programs count nothing past a window's planned end (`until`): a late close adds
    no coverage, so the next window is not shortened or skipped to pay it back."""
    ends: list[float] = []
    late = 0.5  # the loop came back to close it half a second late
    clock = [time.monotonic()]  # the moments the loop steps the cycle at
    cycle = budget_mod.DutyCycle(
        lambda: clock[0],
        lambda: clock[0] + late,
        lambda w, g, until: ends.append(until),
        cycle_s=0.1,
    )
    cycle.set_period(4)
    cycle.step(clock[0])  # detached: cycling from here
    cycle.step(clock[0])  # plans the first window
    clock[0] = cycle._open_at  # type: ignore[assignment]
    cycle.step(clock[0])
    planned = cycle._window_s
    assert ends == [cycle._close_at]  # the programs were told the planned end
    clock[0] = cycle._close_at  # type: ignore[assignment]
    cycle.step(clock[0])
    assert cycle.covered == pytest.approx(planned * 4)  # not the half second it stayed on
    # nothing to pay back: the next cycle owes its whole share, so it has its whole window
    assert cycle._owed_at(cycle._cycle_end + cycle.cycle_s) == pytest.approx(cycle.cycle_s)


def test_a_duty_cycle_makes_up_in_later_windows_for_time_a_late_window_missed():
    cycle = budget_mod.DutyCycle(
        time.monotonic, time.monotonic, lambda w, g, until: None, cycle_s=0.1
    )
    cycle.set_period(2)
    start = time.monotonic()
    cycle.step(start)  # detached: cycling from here
    cycle.covered = -0.05  # as if the windows so far had been short by 50 ms of weighted time
    cycle.step(start)
    # this cycle's window holds its own 50 ms and what is owed: (0.1 + 0.05) / 2
    assert cycle._window_s == pytest.approx(0.075, abs=0.01)


def test_a_raise_that_bought_nothing_is_kept_where_raises_are_kept():
    # mem: sparser sampling only costs precision, so a fit from a noisy stretch saying the
    # last raise bought nothing stops the period rising but does not lower it
    c = PeriodController(budget_pct=1.0, max_period=1024, keep_raises=True)
    periods = drive(c, lambda n: 8.0, 30)
    assert periods[0] == 10 and min(periods) == 10


def test_a_swinging_event_rate_is_not_taken_for_a_floor(monkeypatch):
    """The target's event rate swings between quarter seconds on a loaded machine (30 and 15
    events a unit of time here), and every part of the cost but the tool's follows it. Fitted
    from raw costs, the stretch after a raise at the lower rate reads as a floor over the
    budget and the period stops rising with the cost still over it; fitted per event (with
    `activity`), the floor is seen under the budget and the period rises until the cost meets
    it at the higher rate."""
    clock, events = [0.0], [0.0]
    monkeypatch.setattr(budget_mod.time, "monotonic", lambda: clock[0])
    rates = [30, 30, 15, 15, 30, 15]

    def drive_swinging(c: PeriodController, decisions: int) -> list[float]:
        costs = []
        for k in range(decisions):
            rate = rates[k % len(rates)]
            clock[0] += 0.25
            events[0] += rate * 0.25
            cost = 0.3 + rate * (0.02 + 4.0 / c.period)  # the tool's 0.3% and per event
            costs.append(cost)
            c.next_period(cost)
        return costs

    raw = PeriodController(1.0, 8192, keep_raises=True)
    costs = drive_swinging(raw, 24)
    assert raw.useful_period and raw.floor_pct > 1.0  # the swing read as a floor
    assert max(costs[-6:]) > 1.5  # and left over the budget
    per_event = PeriodController(1.0, 8192, keep_raises=True, activity=lambda: events[0])
    costs = drive_swinging(per_event, 24)
    assert per_event.floor_pct < 0.85  # at most 0.3 + 30 x 0.02 = 0.9 at the higher rate
    assert max(costs[-6:]) < 1.05 and per_event.period > 5 * raw.period


def test_raises_below_fit_from_are_not_fitted_when_the_cost_saturates():
    """Byte sampling with a mean gap below the blocks' size tracks nearly every block: raising
    the period there hardly moves the cost, and a fit of it finds a floor that is not one.
    With `fit_from`, raises below it are made in proportion and never fitted."""

    def byte_sampled(n: int) -> float:  # blocks of 600 bytes, a gap of 64 x n bytes
        return 0.3 + 3.0 * (1 - math.exp(-600 / (64 * n)))

    stuck = PeriodController(1.0, 8192, keep_raises=True)
    periods = drive(stuck, byte_sampled, 24)
    assert periods.count(4) >= 20  # 3% of a core for 5 s: a raise "bought nothing"
    fitted_late = PeriodController(1.0, 8192, keep_raises=True, fit_from=256)
    periods = drive(fitted_late, byte_sampled, 24)
    assert all(byte_sampled(n) <= 1.0 for n in periods[8:])
