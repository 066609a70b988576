"""An overhead budget: measure the tool's own cost every tick and lower the sampling rate
until the steady state costs at most the budget.

The cost counted is what the machine pays for the tool: this process's CPU, that of its helper
processes (the unwind-table decoder), and the run time of its BPF programs (which the traced
processes pay), in percent of one core. Every quarter second each knob of the run adapts to
the cost of the last one: on-CPU sampling's frequency goes down in proportion (aiming at 85% of
the budget) when it cost more than the budget, and back up (a quarter at a time, never above the
requested rate) when it cost under 60% of it; per-event signals raise a period the same way
(mem: one sample point per N x 64 bytes allocated; syscalls and mem: their per-event programs
attached 1/N of the time, `DutyCycle`). Every knob scales by the same factor, so when each
signal's cost follows its rate the total lands at the aim whichever signal dominates. DWARF
on-CPU sampling stops at a floor rate and, when that is still too costly, falls back to frame
pointers (`UnwindFallback`; with `--unwind dwarf` it only warns). Sampling
keeps cpu shares unbiased and the sampled counts are weighted to unbiased estimates; only their
precision drops.

Why duty cycling: a program attached to a tracepoint or a uprobe costs the traced process
something on every event however little it does (the probe's trap, the program's entry), so
recording 1 event in N inside the program leaves a floor that a small budget cannot hold on a
busy machine. Detached, the event costs nothing.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from otlp_ebpf.model import CostTick, SelfCost
from otlp_ebpf.runtime import stats

AIM = 0.85  # of the budget, when lowering: headroom for the cost's tick-to-tick noise
RAISE_BELOW = 0.6  # of the budget: room to sample faster again
RAISE_FACTOR = 1.25
MIN_HZ = 1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


CONTROL_S = 0.25  # how often a budget looks at the cost and may change the rates
# How often the helper processes are looked for (each thread's children in /proc: a dozen
# reads in a process with export threads); their CPU is read at every look at the cost.
CHILDREN_EVERY_S = 2.0

# DWARF sampling copies 16 KB of stack per sample and unwinds it here: under a budget it is
# lowered no further than FALLBACK_FLOOR_HZ (fewer samples than that make a poor profile),
# and when the cost stays over the budget there for FALLBACK_AFTER decisions (a second) the
# run falls back to frame pointers, whose samples cost a fraction of that.
FALLBACK_FLOOR_HZ = 19
FALLBACK_AFTER = 4


def check_budget(pct: float | None) -> None:
    """--budget PCT where a caller checks it itself (the CLI's shared rule is
    cli/common.check_budget, with the same message)."""
    from otlp_ebpf.errors import UsageError

    if pct is not None and not (math.isfinite(pct) and 0 < pct <= 100):
        raise UsageError(f"--budget must be a percentage of one core in (0, 100], got {pct:g}")


def child_cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process from /proc (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children_of(pid: int) -> set[int]:
    """Direct children of every thread of `pid`."""
    out: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            out.update(
                int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()
            )
        except (OSError, ValueError):
            continue
    return out


@dataclass
class CostMeter:
    """The tool's cumulative cost: own CPU, helper processes' CPU (its children other than the
    launched command), BPF run time of `bpf_ns` (a callable summing every signal's programs)."""

    bpf_ns: Callable[[], int]
    not_helpers: Callable[[], Iterable[int]]
    _helpers: dict[int, float] = field(default_factory=dict)
    _children: set[int] = field(default_factory=set)
    _children_at: float = -CHILDREN_EVERY_S

    def cpu_s(self) -> float:
        """This process's and its helpers' CPU seconds so far (a helper that ended keeps
        what it was last seen using)."""
        now = time.monotonic()
        if now - self._children_at >= CHILDREN_EVERY_S:
            self._children_at = now
            self._children = children_of(os.getpid())
        skip = set(self.not_helpers())
        for pid in self._children - skip:
            self._helpers[pid] = max(self._helpers.get(pid, 0.0), child_cpu_seconds(pid))
        return stats.process_cpu_seconds() + sum(self._helpers.values())

    def helpers_s(self) -> float:
        """The helpers' CPU seconds at the last `cpu_s` (their share of it)."""
        return sum(self._helpers.values())

    def total_s(self) -> float:
        """CPU and BPF seconds so far: the cost in core-seconds."""
        return self.cpu_s() + self.bpf_ns() / 1e9


@dataclass
class Interval:
    """Cost over one stretch of wall time."""

    start_wall: float
    start_cost: float

    def pct(self, now_wall: float, now_cost: float) -> float:
        wall = now_wall - self.start_wall
        return 100.0 * (now_cost - self.start_cost) / wall if wall > 0 else 0.0


@dataclass
class UnwindFallback:
    """When DWARF sampling cannot hold the budget even at its floor rate: `switch(hz)` puts
    the run on frame pointers at that rate. `allowed` False (`--unwind dwarf` asked for
    DWARF): the run keeps DWARF and goes below the floor; `held_over_pct` says what it cost
    there, for a warning."""

    switch: Callable[[int, str], None]  # (hz, why)
    allowed: bool = True
    floor_hz: int = field(default_factory=lambda: FALLBACK_FLOOR_HZ)
    after: int = field(default_factory=lambda: FALLBACK_AFTER)
    over: int = 0  # decisions in a row over the budget at the floor
    switched_pct: float = 0.0  # the cost that made the switch (0: none made)
    held_over_pct: float = 0.0  # the cost over budget at the floor, DWARF kept (0: none)

    def due(self, hz: int, cost_pct: float, budget_pct: float) -> bool:
        """Whether this decision falls back: the cost over the budget at the floor (or below
        it) for `after` decisions in a row."""
        if hz > self.floor_hz or cost_pct <= budget_pct:
            self.over = 0
            return False
        self.over += 1
        if self.over < self.after:
            return False
        if not self.allowed:
            self.held_over_pct = self.held_over_pct or cost_pct
            return False
        self.switched_pct = cost_pct
        return True


@dataclass
class BudgetController:
    """Picks the on-CPU sampling frequency for the next tick from the cost of the last one.
    With a `fallback`, `unwind` says how stacks are taken now ("dwarf", then "fp" once it
    fell back)."""

    budget_pct: float
    requested_hz: int
    hz: int = 0
    lowest_hz: int = 0
    settle: bool = False  # the tick after a change mixes two rates: not judged
    fallback: UnwindFallback | None = None
    unwind: str = ""  # "" when the run has one way of unwinding only

    def __post_init__(self) -> None:
        self.hz = self.lowest_hz = self.requested_hz
        if self.fallback is not None and not self.unwind:
            self.unwind = "dwarf"

    def _floor_hz(self) -> int:
        """DWARF sampling that may fall back stops at the fallback's floor; else 1 Hz."""
        fallback = self.fallback
        if fallback is not None and fallback.allowed and self.unwind == "dwarf":
            return max(MIN_HZ, min(fallback.floor_hz, self.requested_hz))
        return MIN_HZ

    def _falls_back(self, cost_pct: float) -> bool:
        fallback = self.fallback
        if fallback is None or self.unwind != "dwarf":
            return False
        if not fallback.due(self.hz, cost_pct, self.budget_pct):
            return False
        fallback.switch(
            self.hz,
            f"the cost ({fallback.switched_pct:.2f}% of a core) stayed over the "
            f"{self.budget_pct:g}% budget at {self.hz} Hz with DWARF unwinding for "
            f"{fallback.after * CONTROL_S:g} s",
        )
        self.unwind = "fp"
        self.settle = True  # the next stretch mixes the two ways of unwinding
        return True

    def next_hz(self, cost_pct: float) -> int:
        """The frequency to sample at after a tick that cost `cost_pct` (unchanged: same)."""
        if self.settle:
            self.settle = False
            return self.hz
        if self._falls_back(cost_pct):
            return self.hz
        if cost_pct > self.budget_pct:
            # cost roughly in proportion to the rate when sampling dominates
            wanted = int(self.hz * AIM * self.budget_pct / cost_pct)
        elif cost_pct < RAISE_BELOW * self.budget_pct and self.hz < self.requested_hz:
            wanted = int(self.hz * RAISE_FACTOR) + 1
        else:
            return self.hz
        wanted = max(self._floor_hz(), min(self.requested_hz, wanted))
        if wanted != self.hz:
            self.hz = wanted
            self.lowest_hz = min(self.lowest_hz, wanted)
            self.settle = True
        return self.hz


USEFUL_SHARE = 0.1  # when the budget is out of reach: the sampled part kept at 10% of the rest
REFIT_AFTER = 20  # decisions (5 s) before a fitted floor is measured again
OFF_FIT = 0.5  # a cost this far from the fit's prediction (share of it) means a new fit


@dataclass
class PeriodController:
    """Picks N for per-event 1-in-N sampling (N = 1: every event) from the cost of the last
        stretch: the cost of the recorded events goes roughly as 1/N.

        Part of the cost stays whatever N is (an attached program runs for every event, the
        tool polls): after each raise the cost is fitted as floor + variable / N from the two
        stretches. When the floor alone is over the budget no period meets it, and N goes only
        as high as keeps the sampled part at a tenth of the floor: precision is not given up for
        nothing. The fit is made again every REFIT_AFTER decisions, or sooner when the cost moves
    far from what it predicts (the workload changed).

    With `activity` (the events so far, sampled or not: what the floor is paid on), the two
    stretches are compared per event: on a loaded machine the target's event rate swings by a
    third from one quarter second to the next, and a fit of raw costs then reads that swing as
    a floor (or its absence). Per event, floor and variable part are what the period changes."""

    budget_pct: float
    max_period: int
    period: int = 1
    highest: int = 1
    settle: bool = False  # the stretch after a change mixes two periods: not judged
    floor_pct: float = 0.0  # the fitted cost that no period removes (0: not known)
    useful_period: int = 0  # the highest period worth its precision (0: no limit known)
    variable_pct: float = 0.0  # the fitted cost at period 1 that sampling divides
    # A fit that puts the useful period below the current one is not acted on while the cost
    # is over the budget (mem: sampling sparser only costs precision, and a fit from two
    # quarter-seconds of a loaded machine is noisy); the period then stops rising there.
    keep_raises: bool = False
    activity: Callable[[], float] | None = None  # events so far (the fit goes per event)
    # Raises from a period below this are not fitted: mem's byte sampling tracks nearly every
    # block while the mean gap is below the blocks' size, so the cost hardly moves there
    # (floor + variable / N holds only once the gap is well past them).
    fit_from: int = 1
    _before: tuple[int, float] | None = None  # (period, cost) before the last raise
    _age: int = 0
    _mark: tuple[float, float] | None = None  # (time, events) when the last stretch began
    _rate: float = 0.0  # events a second in the last stretch (0: not known)
    _before_rate: float = 0.0  # events a second in the stretch before the last raise
    _fit_rate: float = 0.0  # the event rate the fit's figures hold at

    def _stretch_rate(self) -> float:
        """Events a second since the last decision (0 without `activity`)."""
        if self.activity is None:
            return 0.0
        mark = (time.monotonic(), self.activity())
        before, self._mark = self._mark, mark
        if before is None or mark[0] <= before[0]:
            return 0.0
        return max(0.0, (mark[1] - before[1]) / (mark[0] - before[0]))

    def _per_event(self, cost_pct: float, rate: float) -> float:
        """A stretch's cost at the fit's event rate (as it is without rates to compare)."""
        if rate <= 0 or self._fit_rate <= 0:
            return cost_pct
        return cost_pct * self._fit_rate / rate

    def next_period(self, cost_pct: float) -> int:
        """The period to sample at after a stretch that cost `cost_pct` (unchanged: same)."""
        self._rate = self._stretch_rate()
        if self.settle:
            self.settle = False
            return self.period
        self._age += 1
        if self._before is not None:
            self._fit(cost_pct)
        elif self.useful_period and (self._age > REFIT_AFTER or self._off_fit(cost_pct)):
            self.useful_period, self.floor_pct = 0, 0.0
        if cost_pct > self.budget_pct:
            wanted = math.ceil(self.period * cost_pct / (AIM * self.budget_pct))
            if self.useful_period:
                cap = self.useful_period
                wanted = min(wanted, max(cap, self.period) if self.keep_raises else cap)
        elif cost_pct < RAISE_BELOW * self.budget_pct and self.period > 1:
            wanted = int(self.period / RAISE_FACTOR)
        else:
            return self.period
        wanted = max(1, min(self.max_period, wanted))
        if wanted != self.period:
            raised = wanted > self.period and self.period >= self.fit_from
            self._before = (self.period, cost_pct) if raised else None
            self._before_rate = self._rate
            self.period = wanted
            self.highest = max(self.highest, wanted)
            self.settle = True
        return self.period

    def _off_fit(self, cost_pct: float) -> bool:
        """The workload changed: the cost is far from what the fit predicts (a floor fitted
        while the target was idle says nothing once it is busy)."""
        predicted = self.floor_pct + self.variable_pct / self.period
        cost_pct = self._per_event(cost_pct, self._rate)
        return abs(cost_pct - predicted) > OFF_FIT * predicted + OFF_FIT * self.budget_pct

    def _fit(self, cost_pct: float) -> None:
        """cost = floor + variable / period, from the stretches before and after a raise."""
        assert self._before is not None
        p0, c0 = self._before
        p1 = self.period
        self._before = None
        if p1 <= p0:  # the period was set back meanwhile (an agent's burst): nothing to fit
            return
        if self._before_rate > 0 and self._rate > 0:
            # both stretches at this one's event rate: what is left differs by the period
            c0 = c0 * self._rate / self._before_rate
            self._fit_rate = self._rate
        else:
            self._fit_rate = 0.0
        variable = max(0.0, (c0 - cost_pct) / (1 / p0 - 1 / p1))
        floor = cost_pct - variable / p1
        self.floor_pct = max(0.0, floor)
        self.variable_pct = variable
        self._age = 0
        if floor <= AIM * self.budget_pct:
            self.useful_period = 0
        elif variable <= 0:
            self.useful_period = p0  # raising bought nothing
        else:
            self.useful_period = max(1, math.ceil(variable / (USEFUL_SHARE * floor)))


def floor_note(controller: PeriodController) -> str:
    """`; 5.1% of a core stays whatever the period ...` when the budget was out of reach."""
    if controller.floor_pct <= AIM * controller.budget_pct:
        return ""
    return (
        f"; about {controller.floor_pct:.1f}% of a core stays whatever the period (the "
        "programs run on every event), so sampling went no sparser than that helped"
    )


# A duty cycle: 8 windows a second. Each costs the tool ~0.5 ms of CPU; fewer made the
# estimates twice as noisy (bench/budget.py).
CYCLE_S = 0.125
MIN_WINDOW_S = 0.0002  # shorter than this, a window is not worth its attach: its time is owed
MAX_WINDOW_SHARE = 0.9  # of a cycle, when a window makes up for time owed
MAX_DUTY_PERIOD = 256
POLL_GRAIN_S = 0.001  # attached 1/256 of the time at the least: a 0.2 ms window a cycle


@dataclass
class DutyCycle:
    """Per-event programs attached for 1/N of the time: in every cycle of CYCLE_S, one window
    of CYCLE_S/N at a random place in it (so no periodic workload aliases with the windows),
    each event seen weighing N. `open_window(weight, generation, until)` tells the programs,
    before `attach`, what an event of the new window weighs, which window it is and when it
    ends (they count nothing after that); `detach` closes the window.
    Both return when they took effect (`attached_at`, `detached_at`). N = 1: attached
    throughout, weight 1 (exact).

    The windows open late on a loaded machine (and close late, but the programs stop counting at
    the planned end): the time each one was really attached is measured, and what the estimate
    is owed (weight x seconds attached, against the cycles' length) is made up in the next
    windows, so the counts scaled by N stay unbiased. The generation lets the programs tell a
    start of this window from one left by an earlier window whose exit they missed."""

    attach: Callable[[], float]
    detach: Callable[[], float]
    open_window: Callable[[int, int, float], None]
    cycle_s: float = field(default_factory=lambda: CYCLE_S)
    period: int = 1  # the window open now (or the last one) weighs this
    wanted: int = 1  # the budget's choice, in force from the next cycle
    attached: bool = True
    generation: int = 0
    windows: int = 0
    covered: float = 0.0  # weight x seconds attached while cycling
    rng: random.Random = field(default_factory=random.Random)
    ending: bool = False  # the run is over: the cycle under way ends, no other begins
    _cycling_since: float | None = None
    _cycled_s: float = 0.0  # earlier stretches of cycling, ended
    _on_at: float = 0.0
    _window_s: float = 0.0
    _open_at: float | None = None
    _close_at: float | None = None
    _cycle_end: float = 0.0

    def set_period(self, period: int) -> None:
        self.wanted = max(1, period)

    def step(self, now: float) -> None:
        """Open or close a window when its time has come (called from the poll loop)."""
        if self.attached and self._close_at is not None and now >= self._close_at:
            self._close(self._close_at)
        if self.attached and self._close_at is None:  # attached throughout
            if self.wanted > 1:
                self._start_cycling(now)
            return
        if self.wanted == 1 and not self.ending:
            self._stop_cycling()
            return
        if self.attached:
            return
        if self._open_at is None and now >= self._cycle_end and not self.ending:
            self._plan(now)
        if self._open_at is not None and now >= self._open_at:
            self._open(now)

    def until_edge(self, now: float) -> float:
        """Seconds to the next window edge or cycle (inf when attached throughout)."""
        if self.attached:
            edge = self._close_at
        else:
            edge = self._open_at if self._open_at is not None else self._cycle_end
        return max(0.0, edge - now) if edge is not None else math.inf

    def _start_cycling(self, now: float) -> None:
        self.detach()
        self.attached = False
        self._cycling_since = now
        self._cycle_end = now
        self._open_at = None

    def _stop_cycling(self) -> None:
        self.period = 1
        self.generation += 1
        self.open_window(1, self.generation, 0.0)
        self.attach()
        self.attached = True
        self._open_at = self._close_at = None
        if self._cycling_since is not None:
            self._cycled_s += time.monotonic() - self._cycling_since
            self._cycling_since = None

    def _owed_at(self, moment: float) -> float:
        """Weight x seconds the windows owe the time cycled up to `moment`."""
        since = self._cycling_since if self._cycling_since is not None else moment
        return self._cycled_s + (moment - since) - self.covered

    def _plan(self, now: float) -> None:
        """A cycle from now: its window makes up what is owed by the cycle's end, at a random
        place in it (none when that is too short to be worth an attach)."""
        self._cycle_end = now + self.cycle_s
        self.period = self.wanted
        window = min(self._owed_at(self._cycle_end) / self.period, MAX_WINDOW_SHARE * self.cycle_s)
        if window < MIN_WINDOW_S:
            return
        self._window_s = window
        self._open_at = now + self.rng.random() * (self.cycle_s - window)

    def _open(self, now: float) -> None:
        self.generation += 1
        self._close_at = now + self._window_s
        # The programs stop counting at the planned end themselves: a window closed late
        # (the loop busy, the machine loaded) would otherwise weigh more than planned, and
        # the later windows paying that back left whole intervals without one.
        self.open_window(self.period, self.generation, self._close_at)
        self._on_at = self.attach()
        self.attached = True
        self.windows += 1
        self._open_at = None

    def _close(self, planned_end: float) -> None:
        off_at = self.detach()
        self.attached = False
        self._close_at = None
        # the programs counted nothing after the planned end, however late the detach
        self.covered += max(0.0, min(off_at, planned_end) - self._on_at) * self.period

    def cycle_left(self, now: float) -> float:
        """Seconds to the end of the cycle under way (0 when not cycling)."""
        if self._cycling_since is None or (self.attached and self._close_at is None):
            return 0.0
        return max(0.0, self._cycle_end - now, (self._close_at or now) - now)

    def coverage(self) -> float:
        """Weight x seconds attached over the time cycled (1: the scaling was exact)."""
        cycled = self._cycled_s + (
            time.monotonic() - self._cycling_since if self._cycling_since is not None else 0.0
        )
        return self.covered / cycled if cycled > 0 else 1.0


def attached_at(attach: Callable[[], object]) -> float:
    """Attach the program whose events are counted; the moment it took effect: when the call
    returned (the program is hooked in as the call ends)."""
    attach()
    return time.monotonic()


def detached_at(detach: Callable[[], object]) -> float:
    """Detach the program whose events are counted; the moment it took effect: when the call
    began (the probe is unhooked first; the call then waits out a grace period, ~65 ms for a
    perf-event tracepoint, during which no new event reaches it)."""
    before = time.monotonic()
    detach()
    return before


def finish_cycles(poll: Callable[[float], object], cycles: Iterable[DutyCycle]) -> None:
    """At the end of the loop, let the cycles under way run to their end (at most a cycle):
    a cycle cut short holds its window or not depending on where it fell, and the counts scaled
    by N are unbiased over whole cycles only."""
    cycles = list(cycles)
    for cycle in cycles:
        cycle.ending = True
    left = max((c.cycle_left(time.monotonic()) for c in cycles), default=0.0)
    if left > 0:
        poll_between_edges(poll, left, cycles)


def poll_between_edges(
    poll: Callable[[float], object], timeout_s: float, cycles: Iterable[DutyCycle]
) -> None:
    """`poll(timeout_s)`, cut short at every duty-cycle window edge to open or close it."""
    cycles = list(cycles)
    if not cycles:
        poll(timeout_s)
        return
    deadline = time.monotonic() + timeout_s
    while True:
        now = time.monotonic()
        for cycle in cycles:
            cycle.step(now)
        left = deadline - now
        if left <= 0:
            return
        # at least a millisecond: the ring buffer's poll waits whole milliseconds, and a
        # wait rounded down to none would spin until the edge
        poll(max(POLL_GRAIN_S, min(left, *(c.until_edge(now) for c in cycles))))


@dataclass
class Knob:
    """One rate a budget turns: `decide` maps the last stretch's cost to the new setting,
    `apply` puts it in force; `rate_key` names it in each tick's rates, as `show` puts it
    (the setting itself by default)."""

    rate_key: str
    decide: Callable[[float], int]
    current: Callable[[], int]
    apply: Callable[[int], None]
    owner: BudgetController | PeriodController | None = None  # the controller deciding
    show: Callable[[int], float] = float
    cycle: DutyCycle | None = None  # the duty cycle it turns, stepped by the poll loop
    unwind: Callable[[], str] | None = None  # how cpu stacks are taken now, per tick


def cpu_knob(controller: BudgetController, apply: Callable[[int], None]) -> Knob:
    return Knob(
        "cpu_hz",
        controller.next_hz,
        lambda: controller.hz,
        apply,
        controller,
        unwind=lambda: controller.unwind,
    )


def period_knob(rate_key: str, controller: PeriodController, apply: Callable[[int], None]) -> Knob:
    return Knob(rate_key, controller.next_period, lambda: controller.period, apply, controller)


def duty_knob(rate_key: str, controller: PeriodController, cycle: DutyCycle) -> Knob:
    """A duty cycle's period under a budget, stated per tick as the share of the time
    attached (`rate_key`, 1: throughout)."""
    return Knob(
        rate_key,
        controller.next_period,
        lambda: controller.period,
        cycle.set_period,
        controller,
        show=lambda period: round(1.0 / period, 5),
        cycle=cycle,
    )


def duty_note(what: str, controller: PeriodController, cycle: DutyCycle) -> str:
    """What duty cycling did to a signal's counts (the summary line says it shorter)."""
    head = f"budget {controller.budget_pct:g}%"
    if controller.highest == 1:
        return f"{head}: {what} traced throughout, counts exact"
    return (
        f"{head}: {what} traced in windows, as little as {100 / controller.highest:.3g}% of "
        f"the time (1 in {controller.highest}; ended at 1 in {controller.period}; per tick in "
        f"self_cost.ticks); each event seen weighs N, so counts are unbiased estimates "
        f"(windows covered {100 * cycle.coverage():.1f}% of the time they stood for, "
        f"{cycle.windows:,} windows)"
    )


@dataclass
class Governor:
    """The budget of one run: every CONTROL_S (from `control`, called by the poll loop) the
    cost since the last decision goes to every knob; `measure` closes a tick (its cost and
    the rates at its end); the steady state runs from the end of the first tick."""

    budget_pct: float
    meter: CostMeter
    knobs: list[Knob]
    ticks: list[CostTick] = field(default_factory=list)
    control_s: float = CONTROL_S  # how often the cost is read and the knobs decide
    decisions: int = 0
    # At each decision: the CPU seconds of the budget that all but the helper processes left
    # unspent since the last one (below zero: over it), and the wall seconds it covers. The
    # agent's unwind-table decoder, a helper, is given them: its decodes fit in the budget.
    on_slack: Callable[[float, float], None] | None = None
    # Decide on the cost since the rates last changed, up to `window_s` back (0: the last
    # stretch alone), and raise no rate before they have held for `window_s`. Work done
    # once an interval (the agent's export and inspections) lands in one stretch of several:
    # judged alone, the stretches between look cheap and raise the rates, and the dear one
    # brings them down again, on average over the budget.
    window_s: float = 0.0
    _tick: Interval | None = None
    _control: Interval | None = None
    _control_helpers_s: float = 0.0
    _since_change: deque[Interval] = field(default_factory=deque)  # readings at decisions
    settled: Interval | None = None
    first: Interval | None = None

    def begin(self) -> float:
        """The collection loop starts: what the run cost so far is startup."""
        cost = self.meter.total_s()
        self._tick = self._control = self.first = Interval(time.monotonic(), cost)
        self._since_change = deque([self._control])
        self._control_helpers_s = self.meter.helpers_s()
        return cost

    def control(self) -> None:
        if self._control is None:
            return
        wall = time.monotonic()
        # The first decision comes at record's pace whatever the period after it: until
        # then every knob runs at its full starting rate.
        period = self.control_s if self.decisions else min(self.control_s, CONTROL_S)
        if wall - self._control.start_wall < period:
            return
        self.decisions += 1
        cost = self.meter.total_s()
        pct = self._decision_pct(wall, cost)
        changed = False
        for knob in self.knobs:
            before = knob.current()
            after = knob.decide(pct)
            if after != before:
                knob.apply(after)
                changed = True
        if self.window_s:
            if changed:  # what came before was paid at other rates
                self._since_change.clear()
            self._since_change.append(Interval(wall, cost))
        self._give_slack(wall, cost)
        # one reading ends this stretch and begins the next (each costs the tool a system
        # call per program): what the knobs' changes cost falls into the next stretch
        self._control = Interval(wall, cost)

    def _decision_pct(self, wall: float, cost: float) -> float:
        """The cost the knobs decide on (see `window_s`)."""
        assert self._control is not None
        readings = self._since_change
        if not self.window_s or not readings:
            return self._control.pct(wall, cost)
        while len(readings) > 1 and readings[1].start_wall <= wall - self.window_s:
            readings.popleft()
        pct = readings[0].pct(wall, cost)
        if wall - readings[0].start_wall < self.window_s:
            # not yet a whole window at these rates: lowered if dear, not raised yet
            pct = max(pct, RAISE_BELOW * self.budget_pct)
        return pct

    def _give_slack(self, wall: float, cost: float) -> None:
        """Tell `on_slack` what the stretch ending at (`wall`, `cost`) left of the budget."""
        helpers, helpers_before = self.meter.helpers_s(), self._control_helpers_s
        self._control_helpers_s = helpers
        stretch = self._control
        if self.on_slack is None or stretch is None:
            return
        wall_s = wall - stretch.start_wall
        others = (cost - stretch.start_cost) - (helpers - helpers_before)
        self.on_slack(self.budget_pct / 100 * wall_s - others, wall_s)

    def rates(self) -> dict[str, float]:
        return {k.rate_key: k.show(k.current()) for k in self.knobs}

    def unwind(self) -> str:
        """How cpu stacks are taken now ("" when the run has one way only)."""
        return next((mode for k in self.knobs if k.unwind and (mode := k.unwind())), "")

    def cycles(self) -> list[DutyCycle]:
        """The duty cycles the poll loop opens and closes windows of."""
        return [k.cycle for k in self.knobs if k.cycle is not None]

    def poll(self, poll: Callable[[float], object], timeout_s: float) -> None:
        """`poll(timeout_s)` with every duty cycle's windows opened and closed in time."""
        poll_between_edges(poll, timeout_s, self.cycles())

    def finish(self, poll: Callable[[float], object]) -> None:
        """The loop ended: duty cycles complete the cycle under way."""
        finish_cycles(poll, self.cycles())

    def measure(self, elapsed: float) -> None:
        """Close one tick: its cost, and the rates at its end."""
        if self._tick is None:
            return
        wall, cost = time.monotonic(), self.meter.total_s()
        self.ticks.append(
            CostTick(
                round(elapsed, 3),
                round(self._tick.pct(wall, cost), 3),
                self.rates(),
                self.unwind(),
            )
        )
        self._tick = Interval(wall, cost)
        if self.settled is None:
            self.settled = Interval(wall, cost)

    def steady_pct(self) -> float:
        """From the end of the first tick (where the rates are found) when there was more
        than one, else from the start of the loop."""
        loop = self.settled if len(self.ticks) > 1 else self.first
        return loop.pct(time.monotonic(), self.meter.total_s()) if loop else 0.0


TICK_S = 1.0  # a single-signal command's budget ticks (record ticks with its timeline)


@dataclass
class BudgetedRun:
    """A single-signal command under a budget: its governor, ticked every TICK_S by `poll`
    (wrapping the collector's own), and the cost of startup and of the final reading."""

    governor: Governor
    poll_events: Callable[[float], object]
    startup_cpu_s: float = 0.0
    _t0: float = 0.0
    _next_tick: float = TICK_S
    _loop_end_cpu: float | None = None

    def begin(self, cpu0: float) -> None:
        """The loop starts: `cpu0`, the tool's CPU when the run began."""
        self.startup_cpu_s = self.governor.meter.cpu_s() - cpu0
        self.governor.begin()
        self._t0 = time.monotonic()

    def poll(self, timeout_s: float) -> None:
        self.governor.poll(self.poll_events, timeout_s)
        self.governor.control()
        elapsed = time.monotonic() - self._t0
        if elapsed >= self._next_tick:
            self.governor.measure(elapsed)
            self._next_tick += TICK_S

    def end_loop(self) -> float:
        """The steady state's cost (% of one core); from here on it is the final reading."""
        self.governor.finish(self.poll_events)
        self._loop_end_cpu = self.governor.meter.cpu_s()
        return self.governor.steady_pct()

    def self_cost(self, cost: SelfCost, steady_pct: float) -> SelfCost:
        """`cost` with the budget, the steady state and the rates per tick filled in."""
        end = self._loop_end_cpu if self._loop_end_cpu is not None else self.governor.meter.cpu_s()
        return dataclasses.replace(
            cost,
            budget_pct=self.governor.budget_pct,
            steady_pct=round(steady_pct, 3),
            startup_cpu_s=round(self.startup_cpu_s, 4),
            final_cpu_s=round(self.governor.meter.cpu_s() - end, 4),
            ticks=tuple(self.governor.ticks),
        )


def start_budgeted_run(
    budget_pct: float,
    cpu0: float,
    bpf_run_ns: Callable[[], int],
    launched_pid: int | None,
    knob: Knob,
    poll_events: Callable[[float], object],
) -> BudgetedRun:
    """A single-signal command's budget: the tool's CPU (a launched command's own excluded)
    and its programs' run time, governed through the collector's sampling knob."""
    meter = CostMeter(bpf_run_ns, lambda: [launched_pid] if launched_pid is not None else [])
    budgeted = BudgetedRun(Governor(budget_pct, meter, [knob]), poll_events)
    budgeted.begin(cpu0)
    return budgeted


def cpu_budget_note(controller: BudgetController) -> str:
    """What the budget did to the cpu sampling rate (the summary line repeats it)."""
    head = f"budget {controller.budget_pct:g}%"
    if controller.lowest_hz == controller.requested_hz:
        text = f"{head}: cpu sampled at the requested {controller.requested_hz} Hz throughout"
    else:
        text = (
            f"{head}: cpu sampling lowered from {controller.requested_hz} Hz to as low as "
            f"{controller.lowest_hz} Hz (ended at {controller.hz} Hz; rates per tick in "
            "self_cost.ticks)"
        )
    fallback = controller.fallback
    if fallback is not None and fallback.held_over_pct:
        text += (
            f"; DWARF unwinding kept as --unwind dwarf asked, though the cost "
            f"({fallback.held_over_pct:.2f}% of a core) stayed over the budget at "
            f"{fallback.floor_hz} Hz and below: --unwind auto would fall back to frame pointers"
        )
    return text
