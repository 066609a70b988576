"""Raised fidelity after a finding: full-rate sampling for the next intervals, under a budget
of its own.

Under `--budget` the governor (collectors/budget.py) keeps the agent's cost low by sampling
less: fewer cpu samples per second, 1 syscall in N. When a finding fires, the intervals after
it are the ones worth seeing in full, so for `--burst-intervals` intervals every knob of the
governor goes back to its full rate (the requested cpu frequency, every syscall) and answers
to `--burst-budget` instead of `--budget`: the same controllers lower the rates again only if
the burst costs more than its own budget. When the burst ends the normal budget is back and
the controllers bring the rates down to it within a few quarter seconds. With no budget the
agent samples at full rate already and a burst changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from otlp_ebpf.collectors.budget import BudgetController, Governor, PeriodController

DEFAULT_BURST_BUDGET_PCT = 5.0
DEFAULT_BURST_INTERVALS = 6


@dataclass
class Burst:
    """`start` when a finding fires (again during a burst: it is extended), `tick` at every
    interval's end."""

    budget_pct: float = DEFAULT_BURST_BUDGET_PCT
    intervals: int = DEFAULT_BURST_INTERVALS
    remaining: int = 0
    bursts: int = 0  # how many started (extensions not counted)
    cooling: int = 0  # intervals before another burst may start
    _left_to_extend: int = 0  # intervals a finding may still add to the burst under way
    _normal: dict[int, float] = field(default_factory=dict)  # id(owner) -> its budget
    _normal_governor: float = 0.0

    @property
    def active(self) -> bool:
        return self.remaining > 0

    def start(self, governor: Governor | None) -> bool:
        """Full rate from now on for `intervals` intervals; False when there is nothing to
        raise (no budget: the agent samples at full rate already) or the last burst ended
        less than `intervals` intervals ago. A finding during a burst extends it, at most to
        twice its length, without raising the rates again: the controllers have already fit
        them to the burst's budget. So on a host where something is found at every interval
        (a churning one), bursts take at most two thirds of the time, not all of it."""
        if governor is None or not governor.knobs or self.intervals <= 0:
            return False
        if self.active:
            added = min(self.intervals - self.remaining, self._left_to_extend)
            self.remaining += added
            self._left_to_extend -= added
            return True
        if self.cooling > 0:
            return False
        self.bursts += 1
        self._normal = {id(k.owner): k.owner.budget_pct for k in governor.knobs if k.owner}
        self._normal_governor = governor.budget_pct
        self.remaining = self.intervals
        self._left_to_extend = self.intervals
        governor.budget_pct = self.budget_pct
        for knob in governor.knobs:
            owner = knob.owner
            if owner is None:
                continue
            owner.budget_pct = self.budget_pct
            before = knob.current()
            full = _full_rate(owner)
            if before != full:
                knob.apply(full)
        return True

    def tick(self, governor: Governor | None) -> bool:
        """One interval of the burst has passed; True when that ended it."""
        if not self.active:
            self.cooling = max(0, self.cooling - 1)
            return False
        self.remaining -= 1
        if self.remaining > 0:
            return False
        self.cooling = self.intervals
        if governor is not None:
            self._restore(governor)
        return True

    def reconfigure(self, budget_pct: float, intervals: int, governor: Governor | None) -> None:
        """New burst options (SIGHUP). A burst under way answers to the new budget from now
        on and lasts at most `intervals` more; none left ends it now."""
        if self.active and governor is not None:
            if governor.budget_pct == self.budget_pct:
                governor.budget_pct = budget_pct
            for knob in governor.knobs:
                if knob.owner is not None and knob.owner.budget_pct == self.budget_pct:
                    knob.owner.budget_pct = budget_pct
        self.budget_pct = budget_pct
        self.intervals = intervals
        if self.active and intervals < self.remaining:
            self.remaining = intervals
            if not self.remaining and governor is not None:
                self._restore(governor)

    def _restore(self, governor: Governor) -> None:
        """The budgets of before the burst; one changed meanwhile (a reload) is kept."""
        if governor.budget_pct == self.budget_pct:
            governor.budget_pct = self._normal_governor
        for knob in governor.knobs:
            owner = knob.owner
            if owner is not None and owner.budget_pct == self.budget_pct:
                owner.budget_pct = self._normal.get(id(owner), self._normal_governor)


def _full_rate(owner: BudgetController | PeriodController) -> int:
    """Set the controller to its full rate (judging from the next stretch on) and return it."""
    if isinstance(owner, BudgetController):
        owner.hz = owner.requested_hz
        owner.settle = True  # the stretch in progress mixes two rates
        return owner.hz
    owner.period = 1
    owner.settle = True
    return 1
