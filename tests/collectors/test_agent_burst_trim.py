"""The agent trims the cpu sampler's caches when a burst ends, however it ends.

A real agent loop (collectors/agent.py `run`, the watch and the reloads of cli/agent.py)
follows a real target: steady syscalls, then an errno storm that the watch finds, which starts
a burst under the budget. Once the burst is under way the target starts spinning in functions
it never ran before, so the sampler's shared frame tuples grow past the sizes noted at the
burst's start. The burst then ends by running out (`observe`), by a reload that turns bursts
off (`burst_intervals: 0`) or by the agent stopping; each time the caches are trimmed back to
those sizes, once. A finding without a budget starts no burst and trims nothing.

`trim_caches` of the real cpu signal is wrapped to record what each trim left: the sizes right
after it, before the next samples are named.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from otlp_ebpf.cli.agent import _Run
from otlp_ebpf.cli.agent_settings import resolve
from otlp_ebpf.collectors.agent import Agent, IntervalBatch, run
from otlp_ebpf.collectors.agent_signals import AgentCpuSignal
from tests.conftest import SPIN_CPU_C, build_c

pytestmark = pytest.mark.bpf

# Every 5 ms 20 getppid() and a nap. SIGUSR1: for STORM_S seconds also 200 openat() of a path
# that does not exist (ENOENT), a finding. SIGUSR2: from then on also a few ms in grow_a() ...
# grow_d(), stacks the sampler has not met before the burst.
WORKLOAD = (
    r"""
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
"""
    + SPIN_CPU_C
    + r"""
static volatile sig_atomic_t storm, grow;
static void on_usr1(int s) { (void)s; storm = 1; }
static void on_usr2(int s) { (void)s; grow = 1; }
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}
__attribute__((noinline)) void grow_a(void) { SPIN_CPU_MS(1); }
__attribute__((noinline)) void grow_b(void) { SPIN_CPU_MS(1); }
__attribute__((noinline)) void grow_c(void) { SPIN_CPU_MS(1); }
__attribute__((noinline)) void grow_d(void) { SPIN_CPU_MS(1); }
int main(int argc, char **argv) {
    double storm_s = atof(argv[1]), until = 0;
    struct timespec nap = {0, 5000000};
    signal(SIGUSR1, on_usr1);
    signal(SIGUSR2, on_usr2);
    printf("ready\n"); fflush(stdout);
    for (;;) {
        if (storm == 1) { storm = 2; until = now() + storm_s; }
        for (int i = 0; i < 20; i++) getppid();
        if (storm == 2 && now() < until)
            for (int i = 0; i < 200; i++) open("/nonexistent-otlp-ebpf/x", O_RDONLY);
        if (grow) { grow_a(); grow_b(); grow_c(); grow_d(); }
        nanosleep(&nap, NULL);
    }
}
"""
)
STORM_S = 2.0
INTERVAL_S = 0.3
WINDOW = 12
BASELINE = 10  # intervals before the storm: the detector needs 8 rows of baseline and more
LIMIT = 80  # intervals: a run that never got where the test leads it ends here (and fails)


@pytest.fixture
def workload(tmp_path: Path, cc: str) -> Iterator[subprocess.Popen[str]]:
    binary = build_c(cc, WORKLOAD, tmp_path / "storm", "-O2")
    proc = subprocess.Popen([str(binary), str(STORM_S)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield proc
    proc.kill()
    proc.wait()


@dataclass
class Trim:
    marks: dict[str, int]  # what the agent asked the caches back to
    dropped: int
    after: dict[str, int]  # the caches' sizes right after


@dataclass
class Drive:
    """Leads the run from its callbacks: the storm after the baseline, the growth once the
    burst is under way, then the burst's end the way the test asks for."""

    workload: subprocess.Popen[str]
    running: _Run
    config: Path
    end_by: str  # "observe", "reload", "stop" or "" (no burst expected)
    agent: Agent | None = None
    at_start: dict[str, int] | None = None  # the caches' sizes when the burst started
    grown: bool = False
    burst_ended: bool = False
    reload_due: bool = False
    findings: int = 0
    trims: list[Trim] = field(default_factory=list)

    def on_poll(self, agent: Agent) -> None:
        if self.agent is None:
            self.agent = agent
            self._watch_trims(agent)
        if self.reload_due:  # what SIGHUP does, between two polls
            self.reload_due = False
            self.config.write_text(settings_text(self.config.read_text(), burst_intervals=0))
            self.running.reload(agent)

    def deliver(self, batch: IntervalBatch) -> None:
        agent = self.agent
        assert agent is not None and agent.watch is not None
        self.findings += len(batch.findings)
        cpu = agent.recording.cpu_signal()
        assert isinstance(cpu, AgentCpuSignal)
        if batch.seq == BASELINE:
            self.workload.send_signal(signal.SIGUSR1)
        bursting = agent.watch.burst.active
        if bursting and self.at_start is None:
            self.at_start = cpu.cache_marks()
            self.workload.send_signal(signal.SIGUSR2)
        elif self.at_start is not None and not self.grown:
            self.grown = cpu.cache_marks()["shared_stacks"] > self.at_start["shared_stacks"]
            if self.grown and self.end_by == "reload":
                self.reload_due = True
            elif self.grown and self.end_by == "stop":
                self.stop()
        if self.at_start is not None and not bursting:
            self.burst_ended = True
        done = self.burst_ended or (not self.end_by and self.findings and batch.seq > 20)
        if done or batch.seq >= LIMIT:
            self.stop()

    def stop(self) -> None:
        """The target exits: the agent's loop ends and reads the last interval."""
        if self.workload.poll() is None:
            self.workload.terminate()
            self.workload.wait()

    def _watch_trims(self, agent: Agent) -> None:
        cpu = agent.recording.cpu_signal()
        assert isinstance(cpu, AgentCpuSignal)
        trim = cpu.trim_caches

        def recorded(marks: dict[str, int]) -> int:
            dropped = trim(marks)
            self.trims.append(Trim(dict(marks), dropped, cpu.cache_marks()))
            return dropped

        cpu.trim_caches = recorded


def settings_text(text: str, **changed: object) -> str:
    """The agent's YAML with some keys given new values."""
    lines = [line for line in text.splitlines() if line.split(":")[0] not in changed]
    return "\n".join([*lines, *(f"{key}: {value}" for key, value in changed.items())]) + "\n"


def run_agent(
    tmp_path: Path, workload: subprocess.Popen[str], end_by: str, budget: int, intervals: int
) -> tuple[Drive, Agent]:
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"interval: {INTERVAL_S}\nsignals: cpu,syscalls\nfrequency: 199\npid: [{workload.pid}]\n"
        f"budget: {budget}\nburst_budget: 30\nwatch_window: {WINDOW}\nrecord_after: 1\n"
        f"spill_dir: {tmp_path / 'spill'}\nburst_intervals: {intervals}\n"
    )
    running = _Run(resolve({}, str(config)), {}, str(config))
    drive = Drive(workload, running, config, end_by)
    try:
        run(running.config, drive.deliver, on_poll=drive.on_poll, watch=running.watch)
    finally:
        running.stream.close(0)
    assert drive.agent is not None
    return drive, drive.agent


# A budget the agent stays under at full rate: the governor has knobs, so a finding raises
# them (a burst) while the syscall counts stay exact.
BUDGET = 25


@pytest.mark.parametrize(
    ("end_by", "intervals"),
    [("observe", 3), ("reload", 40), ("stop", 40)],
    ids=["its-last-interval", "a-reload-turning-bursts-off", "the-agent-stopping"],
)
def test_the_caches_a_burst_filled_are_trimmed_when_it_ends(
    tmp_path: Path, workload: subprocess.Popen[str], end_by: str, intervals: int
) -> None:
    drive, agent = run_agent(tmp_path, workload, end_by, BUDGET, intervals)
    assert drive.at_start is not None, "no burst started (the storm was not found)"
    assert drive.grown, "the burst met no new stack before it ended"
    if end_by != "stop":
        assert drive.burst_ended
    # once, back to the sizes the caches had when the burst started
    assert len(drive.trims) == 1, f"{len(drive.trims)} trims: {drive.trims}"
    (trim,) = drive.trims
    assert trim.marks == drive.at_start
    assert trim.dropped > 0 and agent.caches_trimmed == trim.dropped
    for name, size in trim.marks.items():
        assert trim.after[name] <= size, (name, trim.after[name], size)


def test_a_finding_that_raises_nothing_trims_nothing(
    tmp_path: Path, workload: subprocess.Popen[str]
) -> None:
    # No budget: the agent samples at full rate already, a finding starts no burst.
    drive, agent = run_agent(tmp_path, workload, "", budget=0, intervals=3)
    assert drive.findings > 0, "the storm was not found"
    assert drive.at_start is None and agent.watch is not None and agent.watch.counts.bursts == 0
    assert drive.trims == [] and agent.caches_trimmed == 0
