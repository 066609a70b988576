"""`agent --cgroup PATH`: the targets are whoever is in the cgroup subtree now.

The kernel side follows the children of a target by itself, but a process moved into the
cgroup later (a container's new exec, `echo PID > cgroup.procs`) is nobody's child there: the
subtree's `cgroup.procs` files are read again every second and every process found there for
the first time is added to the targets table of each BPF object of the run.
"""

from __future__ import annotations

import os
import time

from otlp_ebpf.collectors import base
from otlp_ebpf.collectors.containers import pids_in_cgroup
from otlp_ebpf.runtime.loader import BpfObject
from otlp_ebpf.runtime.maps import BpfMap
from otlp_ebpf.targets import TargetSpec

REFRESH_S = 1.0


class CgroupTargets(base.Targets):
    """Targets that follow a cgroup subtree's membership for the whole run."""

    def __init__(self, spec: TargetSpec, directory: str) -> None:
        super().__init__(spec)
        self.directory = directory
        self.tables: list[BpfMap] = []
        self.known: set[int] = set(spec.pids)
        self.joined = 0  # processes added after the start
        self._next_refresh = 0.0

    def seed(self, obj: BpfObject, map_name: str = "targets") -> None:
        super().seed(obj, map_name)
        self.tables.append(obj.map(map_name))

    def finished(self) -> bool:
        """Never by itself: the cgroup may be empty for a while and filled again."""
        return False

    def refresh(self) -> int:
        """Add the processes that joined the cgroup since the last look (at most once a
        second); how many were added."""
        now = time.monotonic()
        if now < self._next_refresh or not self.tables:
            return 0
        self._next_refresh = now + REFRESH_S
        me = os.getpid()
        present = {p for p in pids_in_cgroup(self.directory) if p != me}
        new, left = present - self.known, self.known - present
        for table in self.tables:
            for pid in new:
                table.update(pid.to_bytes(4, "little"), b"\x01")
            for pid in left:  # moved out (or exited: the kernel side has forgotten it)
                table.delete(pid.to_bytes(4, "little"))
        # Only the present ones are remembered: a pid that leaves and comes back (or is
        # reused) is added again, and the set stays as small as the cgroup.
        self.known = present
        self.joined += len(new)
        return len(new)
