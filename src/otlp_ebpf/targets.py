"""Who a run records: the target specification shared by the CLI and the collectors."""

from __future__ import annotations

from dataclasses import dataclass

from otlp_ebpf import hosttext


@dataclass(frozen=True)
class TargetSpec:
    """Nothing set means the whole system (minus this tool)."""

    pids: tuple[int, ...] = ()
    tid: int = 0
    command: tuple[str, ...] = ()

    def describe(self) -> tuple[str, ...]:
        if self.command:
            return ("command: " + " ".join(hosttext.from_fs(a) for a in self.command),)
        parts = tuple(f"pid {p}" for p in self.pids)
        if self.tid:
            parts += (f"tid {self.tid}",)
        return parts or ("system-wide",)
