"""A share of CPU for work that no sampling rate lowers: loading a new binary's symbols.

On a host that keeps starting new binaries (builds, test runs, short-lived tools), the work
done once per binary is a cost of its own, paid whatever the sampling rate. An allowance
holds it to `pct` percent of one core on average: the work runs while there is credit (it
accrues with wall time, at most `ahead_s` of it in advance, so a first large table loads at
once) and waits otherwise; the caller queues what waits and counts it. Credit may also be
`deposit`ed: what a budget left unspent (the unwind-table decoder's, in the agent).
"""

from __future__ import annotations

import time

AHEAD_S = 0.25  # CPU seconds of credit at most (libc's debug symbols take ~0.2 s)


class CpuAllowance:
    """Credit of CPU seconds for one kind of work; `pct` 0 means no limit."""

    def __init__(self, pct: float = 0.0, ahead_s: float = AHEAD_S) -> None:
        self.pct = pct
        self.ahead_s = ahead_s
        self.spent_s = 0.0
        self.deposited_s = 0.0
        self._credit = ahead_s
        self._at = time.monotonic()

    def available(self) -> bool:
        """Whether the work may run now (its credit is not spent ahead)."""
        if not self.pct:
            return True
        now = time.monotonic()
        self._credit = min(self.ahead_s, self._credit + (now - self._at) * self.pct / 100)
        self._at = now
        return self._credit > 0

    def deposit(self, cpu_s: float) -> None:
        """Add `cpu_s` of credit on top of what `pct` earns (still at most `ahead_s`)."""
        self.available()  # what was earned until now first, then the deposit on top
        self.deposited_s += cpu_s
        self._credit = min(self.ahead_s, self._credit + cpu_s)

    @property
    def credit_s(self) -> float:
        """CPU seconds the work may use now (below zero: owed)."""
        self.available()
        return self._credit

    def lapse(self) -> None:
        """Give up the credit not spent so far (what is owed stays owed)."""
        self._credit = min(self.credit_s, 0.0)

    def spend(self, cpu_s: float) -> None:
        """Charge `cpu_s` of CPU the work took (credit may go below zero: the work waits
        until it has been earned back)."""
        self.spent_s += cpu_s
        if self.pct:
            self._credit -= cpu_s
