"""What every collector shares: targets, the held command, the run loop, signals, self-cost.

A collector opens its BPF object, passes `Targets.rodata()` to it before load, calls
`Targets.seed()` after load, attaches, then hands a poll function to `run_loop`, which returns
when the duration is over, the launched command (or every --pid target) has exited, or
SIGINT/SIGTERM arrived. Outputs are written after it returns, so Ctrl-C still writes them.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from otlp_ebpf import console, hosttext, stopping
from otlp_ebpf.errors import UsageError
from otlp_ebpf.model import ProcessInfo, SelfCost
from otlp_ebpf.runtime import features, privileges, probes, stats
from otlp_ebpf.runtime.launch import HeldCommand
from otlp_ebpf.runtime.loader import BpfObject, close_all
from otlp_ebpf.runtime.maps import BpfMap
from otlp_ebpf.targets import TargetSpec


def require_privileges(command: str) -> None:
    """The first check of every collector: missing privileges, not a missing kernel feature,
    is what an unprivileged user must hear about (runtime.privileges.require)."""
    privileges.require(command)


def check_pid(pid: int) -> None:
    if pid <= 0 or not Path(f"/proc/{pid}").is_dir():
        raise UsageError(f"no such process: {pid}")


def tgid_of(tid: int) -> int:
    try:
        for line in hosttext.read(f"/proc/{tid}/status").splitlines():
            if line.startswith("Tgid:"):
                return int(line.split()[1])
    except OSError:
        pass
    raise UsageError(f"no such thread: {tid}")


def read_process_info(pid: int) -> ProcessInfo | None:
    """comm, executable and command line of a live process (None once it is gone), bytes
    that are not UTF-8 kept as `\\xNN` (any user names their processes as they like)."""
    base = f"/proc/{pid}"
    try:
        comm = hosttext.read(f"{base}/comm").removesuffix("\n")
    except OSError:
        return None
    try:
        exe = hosttext.decode(os.readlink(f"{base}/exe".encode()))
    except OSError:
        exe = ""
    try:
        with open(f"{base}/cmdline", "rb") as fh:
            raw = fh.read()
        cmdline = tuple(hosttext.decode(a) for a in raw.split(b"\0") if a)
    except OSError:
        cmdline = ()
    return ProcessInfo(pid, comm, exe, cmdline)


# Programs every object gets from bpf/target.h.
TARGET_PROGRAMS = ("follow_fork", "follow_fork_tp", "forget_exited")


class Targets:
    """Resolved targets for one run, including the held child of `-- CMD`."""

    def __init__(self, spec: TargetSpec) -> None:
        self.spec = spec
        for pid in spec.pids:
            check_pid(pid)
        self.tgids: list[int] = list(spec.pids)
        if spec.tid:
            tgid = tgid_of(spec.tid)
            if tgid not in self.tgids:
                self.tgids.append(tgid)
        self.held: HeldCommand | None = None
        self.stopped_by_run = False
        self._drops: BpfMap | None = None
        self._followed: BpfMap | None = None
        self._outlived_note = ""
        if spec.command:
            self.held = HeldCommand(spec.command)
            self.tgids.append(self.held.pid)

    @property
    def filtered(self) -> bool:
        return bool(self.tgids)

    def rodata(self) -> dict[str, int]:
        return {
            "targ_mode": 1 if self.filtered else 0,
            "targ_tid": self.spec.tid,
            "self_tgid": os.getpid(),
        }

    def unused_programs(self, use_btf: bool | None = None) -> list[str]:
        """target.h programs this run does not load: none of them system-wide, and the
        classic fork tracepoint where tp_btf works."""
        if not self.filtered:
            return list(TARGET_PROGRAMS)
        if use_btf is None:
            use_btf = features.tp_btf_supported()
        return ["follow_fork_tp"] if use_btf else ["follow_fork"]

    def attach(self, obj: BpfObject, *, seed: bool = True) -> None:
        """After load: follow forks and exits first, then seed the targets, then add the
        descendants that already exist, so a fork racing the attach is not missed.
        `seed=False` leaves the seeding to the caller (`seed()`), for collectors whose probes
        must all be live before a target's first event counts."""
        for prog in TARGET_PROGRAMS:
            if obj.enabled(prog):
                probes.attach_auto(obj, prog)
        if seed:
            self.seed(obj)
        if self.filtered:
            self._drops = obj.map("target_drops")
            self._followed = obj.map("targets")

    def seed(self, obj: BpfObject, map_name: str = "targets") -> None:
        targets = obj.map(map_name)
        for tgid in self.tgids:
            targets.update(tgid.to_bytes(4, "little"), b"\x01")
            for child in descendants_of(tgid):
                targets.update(child.to_bytes(4, "little"), b"\x01")

    def losses(self) -> dict[str, int]:
        """Children that could not be followed because the targets table was full (read it
        before the object closes)."""
        full = self._drops.lookup_u64(0) if self._drops is not None else 0
        return {"targets table full": full} if full else {}

    def release(self) -> None:
        if self.held is not None:
            self.held.release()

    def finished(self) -> bool:
        """True once the launched command and every descendant it left running, or every
        --pid target, has exited. A descendant that outlives the command's first process
        (`sh -c 'server & exit 0'`) is followed until it exits or the run ends."""
        if self.held is not None:
            if self.held.poll() is None:
                return False
            survivors = self.live_descendants()
            if survivors and not self._outlived_note:
                self._announce_survivors(survivors)
            return not survivors
        if self.spec.pids:
            return not any(process_alive(p) for p in self.spec.pids)
        return False

    def abandon(self) -> None:
        """End the launched command's part in the run. Never released: it exits without
        running. Still running when the run ended (--duration, Ctrl-C, SIGTERM): it is
        terminated, so the run ends on time and its outputs are written."""
        held = self.held
        if held is None or held.returncode is not None:
            return
        if not held.released:
            held.abandon()
        elif held.stop():
            self.stopped_by_run = True
            console.status(f"stopped {held.argv[0]} (pid {held.pid}): the run is over")

    def live_descendants(self) -> list[int]:
        """Followed processes still alive (the kernel side adds every child of a target
        and removes each when it exits)."""
        if self._followed is None:
            return []
        tgids = {int.from_bytes(raw, "little") for raw in self._followed}
        if self.held is not None:
            tgids.discard(self.held.pid)
        return sorted(t for t in tgids if t != os.getpid() and process_alive(t))

    def _announce_survivors(self, survivors: list[int]) -> None:
        held = self.held
        assert held is not None
        shown = ", ".join(str(p) for p in survivors[:5]) + (" ..." if len(survivors) > 5 else "")
        self._outlived_note = (
            f"followed {len(survivors)} descendant(s) that outlived {held.argv[0]} until they "
            "exited or the run ended"
        )
        console.status(
            f"{held.argv[0]} exited; following {len(survivors)} descendant(s) still running "
            f"(pid {shown}) until they exit or the run ends"
        )

    def command_exit(self) -> int | None:
        """The launched command's status once it ended by itself: its exit code, or -N when
        signal N killed it. None without a command, while it runs, or when the run stopped it."""
        held = self.held
        if held is None or not held.released or self.stopped_by_run:
            return None
        return held.poll()

    def command_notes(self) -> tuple[str, ...]:
        """What became of the launched command, for the snapshot's notes."""
        held = self.held
        if held is None or not held.released:
            return ()
        status = self.command_exit()
        outlived = (self._outlived_note,) if self._outlived_note else ()
        if status is None:
            return ("command: still running when the run ended (stopped)", *outlived)
        return (f"command: {describe_exit(status)}", *outlived)


def describe_exit(status: int) -> str:
    """`exited with status 3` / `killed by signal SIGKILL` (status as waitstatus_to_exitcode)."""
    if status >= 0:
        return f"exited with status {status}"
    try:
        return f"killed by {signal.Signals(-status).name}"
    except ValueError:
        return f"killed by signal {-status}"


def process_state(pid: int) -> str:
    """The one-letter state in /proc/PID/stat ("" once the process is gone)."""
    try:
        stat = hosttext.read(f"/proc/{pid}/stat")
    except OSError:
        return ""
    fields = stat.rpartition(")")[2].split()
    return fields[0] if fields else ""


def process_alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent to reap it."""
    return process_state(pid) not in ("", "Z", "X")


def descendants_of(pid: int) -> list[int]:
    """Every live descendant process of `pid` (children of all its threads, recursively)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                text = Path(f"/proc/{parent}/task/{task}/children").read_text()
            except OSError:
                continue
            children = [int(c) for c in text.split()]
            found.extend(children)
            todo.extend(children)
    return found


class StopFlag:
    """True once SIGINT or SIGTERM arrived. The handlers are installed at the process's first
    instruction (otlp_ebpf.stopping) and replace an inherited SIG_IGN: a script's background
    job must still end its run cleanly; a signal that came during start-up counts too."""

    def __bool__(self) -> bool:
        return stopping.received() is not None

    @property
    def signal(self) -> int | None:
        return stopping.received()


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """The stop flag; handlers installed for the collection when no one did it before (a
    collector used as a library), and then removed after it."""
    installed_here = stopping.install()
    try:
        yield StopFlag()
    finally:
        if installed_here:
            stopping.uninstall()


@dataclass
class RunClock:
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    t0: float = field(default_factory=time.monotonic)
    cpu0: float = field(default_factory=stats.process_cpu_seconds)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0


@dataclass(frozen=True)
class Session:
    """A collection in progress: its clock (from the moment the target was released), the
    stop flag signals set, and how long attaching took."""

    clock: RunClock
    stop: StopFlag
    attach_ms: float


@contextmanager
def session(targets: Targets, attach: Callable[[], None]) -> Iterator[Session]:
    """Run statistics on, signal handlers in, probes attached by `attach`, the held command
    released (unless SIGINT/SIGTERM came first). On the way out, whatever happened, the
    command is reaped and every link and object of this process is closed: the one cleanup
    path."""
    cpu0 = stats.process_cpu_seconds()  # the tool's cost includes loading and attaching
    try:
        with stats.StatsSession(), stop_on_signals() as stop:
            t0 = time.monotonic()
            attach()
            attach_ms = (time.monotonic() - t0) * 1000
            if not stop:  # stopped during start-up: the held command is never started
                targets.release()
            yield Session(RunClock(cpu0=cpu0), stop, attach_ms)
    finally:
        targets.abandon()
        cleanup()


def run_loop(
    targets: Targets,
    poll: Callable[[float], None],
    *,
    duration_s: float | None,
    interval_s: float | None = None,
    on_interval: Callable[[float], None] | None = None,
    clock: RunClock,
    stop: StopFlag,
    poll_s: float = 0.1,
) -> str:
    """Call `poll(timeout_s)` until the run ends; returns why it ended (for the summary)."""
    next_tick = interval_s if interval_s else None
    while True:
        elapsed = clock.elapsed()
        if stop:
            return "interrupted"
        if duration_s is not None and elapsed >= duration_s:
            return "duration"
        if targets.finished():
            return "target exited"
        if next_tick is not None and elapsed >= next_tick and on_interval is not None:
            on_interval(elapsed)
            next_tick += interval_s or 0.0
        wait = poll_s
        if duration_s is not None:
            wait = max(0.0, min(wait, duration_s - elapsed))
        poll(wait)


def program_cost(obj: BpfObject, programs: Sequence[str]) -> tuple[int, int]:
    """Total run time (ns) and runs of the given loaded programs (needs an active StatsSession)."""
    total_ns = runs = 0
    for name in programs:
        if obj.enabled(name):
            ps = stats.program_stats(obj.program_fd(name))
            total_ns += ps.run_time_ns
            runs += ps.run_cnt
    return total_ns, runs


def self_cost(clock: RunClock, bpf_ns: int, bpf_runs: int) -> SelfCost:
    return SelfCost(
        cpu_s=round(stats.process_cpu_seconds() - clock.cpu0, 4),
        bpf_ns=bpf_ns,
        bpf_runs=bpf_runs,
        peak_rss_kb=stats.peak_rss_kb(),
    )


def hostname() -> str:
    return socket.gethostname()


def cleanup() -> None:
    """The one cleanup path: every link and object of this process goes."""
    close_all()


def sleep_poll(timeout_s: float) -> None:
    """A poll function for collectors that only read maps at the end."""
    if timeout_s > 0:
        time.sleep(timeout_s)
