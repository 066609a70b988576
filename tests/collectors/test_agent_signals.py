"""`otlp-ebpf agent` beyond cpu and syscalls, and over time: net and mem exported every
interval, a process moved into the `--cgroup` mid-run collected, what the agent keeps between
intervals staying bounded under process churn, and `/healthz` while the loop is frozen."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.collectors.test_agent import (
    CLI,
    INTERVAL_S,
    free_port,
    get,
    intervals_received,
    metric_points,
    pod_cgroup,  # noqa: F401 (a fixture)
    resource_of,
    syscall_count,
    wait_for,
)
from tests.conftest import build_c
from tests.export.otlp_servers import HttpReceiver

SENT = 123_457
LEAKED = 5 * 1_048_576

# Waits on a FIFO, then sends exactly SENT bytes over TCP to argv[2]:argv[3] and closes, leaks
# LEAKED bytes in 5 blocks (never freed), and stays until killed.
NET_AND_MEM = r"""
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char go, buf[4096];
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0 || read(fd, &go, 1) != 1) return 2;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
    inet_pton(AF_INET, argv[2], &to.sin_addr);
    if (connect(s, (struct sockaddr *)&to, sizeof to)) return 3;
    memset(buf, 'x', sizeof buf);
    for (long left = atol(argv[4]); left > 0;) {
        ssize_t n = send(s, buf, left < (long)sizeof buf ? left : (long)sizeof buf, 0);
        if (n <= 0) return 4;
        left -= n;
    }
    close(s);
    for (int i = 0; i < 5; i++) memset(malloc(1048576), 1, 1048576);
    pause();
    return 0;
}
"""

# getppid() every millisecond until killed: a process whose calls show wherever it is watched.
TICKER = r"""
#include <unistd.h>
int main(void) { for (;;) { getppid(); usleep(1000); } }
"""


def transmitted(receiver: HttpReceiver, pid: int) -> float:
    sent = [
        v
        for attrs, v in metric_points(receiver, pid, "process.network.io")
        if attrs.get("network.io.direction") == "transmit"
    ]
    return sent[-1] if sent else -1


def outstanding(receiver: HttpReceiver, pid: int) -> float:
    points = metric_points(receiver, pid, "otlp_ebpf.memory.outstanding")
    return points[-1][1] if points else -1


@pytest.fixture
def sink() -> Iterator[tuple[int, list[int]]]:
    """A local TCP server reading everything sent to it; (port, bytes per connection)."""
    server = socket.create_server(("127.0.0.1", 0))
    got: list[int] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                with conn:
                    total = 0
                    while chunk := conn.recv(65536):
                        total += len(chunk)
                    got.append(total)

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1], got
    server.close()


def agent_env() -> dict[str, str]:
    return dict(os.environ, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")


def stop(agent: subprocess.Popen[str]) -> tuple[int, str]:
    agent.send_signal(signal.SIGTERM)
    code = agent.wait(timeout=30)
    return code, agent.stderr.read() if agent.stderr else ""


@pytest.mark.bpf
def test_net_and_mem_are_exported_every_interval(tmp_path: Path, cc, sink) -> None:
    port, got = sink
    binary = build_c(cc, NET_AND_MEM, tmp_path / "netmem")
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    target = subprocess.Popen([str(binary), str(fifo), "127.0.0.1", str(port), str(SENT)])
    receiver = HttpReceiver().start()
    serve = f"127.0.0.1:{free_port()}"
    agent = subprocess.Popen(
        [*CLI, "agent", "-p", str(target.pid), "--signals", "net,mem", "--interval",
         INTERVAL_S, "--otlp", receiver.url, "--serve", serve, "--budget", "0",
         "--spill-dir", str(tmp_path / "spill")],
        env=agent_env(), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for("readiness", lambda: get(f"http://{serve}/readyz")[0] == 200)
        with open(fifo, "w") as go:
            go.write("x")
        wait_for("the bytes sent", lambda: transmitted(receiver, target.pid) == SENT)
        wait_for("the leak", lambda: outstanding(receiver, target.pid) >= LEAKED)
        seen = len(intervals_received(receiver))
        wait_for("2 more intervals", lambda: len(intervals_received(receiver)) >= seen + 2)
        code, err = stop(agent)
    finally:
        for proc in (agent, target):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        receiver.stop()
    assert code == 0, err
    assert got == [SENT]
    # The closed connection's bytes stay in the cumulative series (the folded row of a live
    # process), the leak stays outstanding, and no interval is missing.
    assert transmitted(receiver, target.pid) == SENT
    assert outstanding(receiver, target.pid) >= LEAKED
    numbers = intervals_received(receiver)
    assert numbers == list(range(1, max(numbers) + 1))
    assert receiver.of("profiles"), "mem's outstanding allocations go out as a profile"
    assert all(not r.violations() for r in receiver.received)


@pytest.mark.bpf
def test_a_process_moved_into_the_cgroup_mid_run_is_collected(
    tmp_path: Path,
    cc,
    pod_cgroup: Path,  # noqa: F811 (the fixture)
) -> None:
    binary = build_c(cc, TICKER, tmp_path / "ticker")
    leaf = next(pod_cgroup.glob("*/*.scope"))
    first = subprocess.Popen([str(binary)])
    (leaf / "cgroup.procs").write_text(str(first.pid))
    late = subprocess.Popen([str(binary)])
    outside = subprocess.Popen([str(binary)])
    receiver = HttpReceiver().start()
    serve = f"127.0.0.1:{free_port()}"
    agent = subprocess.Popen(
        [*CLI, "agent", "--cgroup", str(pod_cgroup), "--interval", INTERVAL_S, "--otlp",
         receiver.url, "--signals", "syscalls", "--spill-dir", str(tmp_path / "spill"),
         "--serve", serve],
        env=agent_env(), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for("readiness", lambda: get(f"http://{serve}/readyz")[0] == 200)
        wait_for("the first member", lambda: syscall_count(receiver, first.pid, "getppid") > 0)
        (leaf / "cgroup.procs").write_text(str(late.pid))
        wait_for("the late member", lambda: syscall_count(receiver, late.pid, "getppid") > 0)
        seen = len(intervals_received(receiver))
        wait_for("2 more intervals", lambda: len(intervals_received(receiver)) >= seen + 2)
        code, err = stop(agent)
    finally:
        for proc in (agent, first, late, outside):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        receiver.stop()
    assert code == 0, err
    assert resource_of(receiver, late.pid)["container.id"] == "5e" * 32
    assert syscall_count(receiver, outside.pid, "getppid") == -1  # never in the cgroup


@pytest.mark.bpf
def test_what_the_agent_keeps_between_intervals_stays_bounded_under_churn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """In process, so the sampler's tables can be read: after each interval no stack of the
    interval is kept, and process details only for the processes still being unwound. With
    no unwind table cached, the decoding child runs: its memory is counted apart."""
    from otlp_ebpf.collectors.agent import Agent, AgentConfig, IntervalBatch, run
    from otlp_ebpf.collectors.agent_signals import AgentCpuSignal

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    churn = subprocess.Popen(["sh", "-c", "while :; do /bin/true; ls / >/dev/null; done"])
    spin = subprocess.Popen(["sh", "-c", "while :; do :; done"])
    batches: list[IntervalBatch] = []
    held: list[dict[str, int]] = []
    samplers: list[AgentCpuSignal] = []
    policies: set[int] = set()
    waiting: list[int] = []

    def on_poll(agent: Agent) -> None:
        if not samplers:
            samplers.extend(s for s in agent.recording.signals if isinstance(s, AgentCpuSignal))
        if len(batches) >= 4:
            os.kill(os.getpid(), signal.SIGINT)

    def deliver(batch: IntervalBatch) -> None:
        batches.append(batch)
        dwarf = samplers[0].dwarf.sampler
        worker = dwarf.cfi.worker
        if worker is not None and worker.rss_kb():
            policies.add(os.sched_getscheduler(worker.pid))
        held.append({**dwarf.held(), "infos": len(dwarf._infos), "live": len(dwarf._processes)})
        waiting.append(dwarf._waiting_bytes)

    config = AgentConfig(interval_s=1.0, signals=("cpu",), frequency_hz=199, budget_pct=None)
    try:
        run(config, deliver, on_poll=on_poll)
    finally:
        for proc in (churn, spin):
            proc.kill()
            proc.wait()
    samples = sum(b.events["cpu"] for b in batches)
    assert samples > 0
    assert len({s.pid for b in batches for s in b.sections["cpu"].stacks}) > 10  # churned
    for figures in held:
        assert figures["raw_stacks"] == 0, held
        assert figures["named_stacks"] == 0, held
        assert figures["processes_with_rows"] == 0, held  # their rows were handed over
        assert figures["infos"] <= figures["live"], held
    assert any(b.helpers_rss_kb > 0 for b in batches)  # the decoder, counted apart
    assert policies == {os.SCHED_IDLE}  # decoding with CPU the workload does not want
    assert max(waiting) <= 2 * 1024 * 1024  # samples waiting for its tables: a small queue
    assert all(b.cpu_s > 0 for b in batches)


@pytest.mark.bpf
def test_the_budget_the_agent_leaves_unspent_goes_to_its_unwind_table_decoder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Under a budget with room in it, the decoder is given the room the rest of the agent
    leaves (beyond its floor share), and never more than the budget holds; the credit it
    starts with for the binaries met at start lapses when the first interval ends."""
    from otlp_ebpf.collectors.agent import Agent, AgentConfig, IntervalBatch, run
    from otlp_ebpf.collectors.agent_signals import DECODER_FLOOR_SHARE, AgentCpuSignal
    from otlp_ebpf.symbolize.cfi import DecodeWorker

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # every table decoded
    # not a child: the budget counts its children as its helpers
    spin = int(
        subprocess.run(
            ["sh", "-c", "(while :; do :; done) >/dev/null 2>&1 & echo $!"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    workers: list[DecodeWorker] = []
    batches: list[IntervalBatch] = []
    credits: list[float] = []

    def deliver(batch: IntervalBatch) -> None:
        batches.append(batch)
        credits.append(workers[0].allowance.credit_s)

    def on_poll(agent: Agent) -> None:
        if not workers:
            for s in agent.recording.signals:
                if isinstance(s, AgentCpuSignal) and s.dwarf.sampler.cfi.worker is not None:
                    workers.append(s.dwarf.sampler.cfi.worker)
        if len(batches) >= 3:
            os.kill(os.getpid(), signal.SIGINT)

    config = AgentConfig(interval_s=1.0, signals=("cpu",), frequency_hz=49, budget_pct=20.0)
    t0 = time.monotonic()
    try:
        run(config, deliver, on_poll=on_poll)
    finally:
        os.kill(spin, signal.SIGKILL)
    wall = time.monotonic() - t0
    allowance = workers[0].allowance
    assert allowance.pct == DECODER_FLOOR_SHARE * 20.0
    assert 0 < allowance.deposited_s <= 0.20 * wall
    assert credits[0] < 0.05  # the 2 s it started with lapsed at the first interval's end


def test_what_the_rest_spends_over_the_budget_is_taken_from_the_decoders_next_room() -> None:
    """1% budget, decisions once a second: a dear second (an interval's export, 5%) and
    nine cheap ones (0.5% each) cost 0.95% in all. The decoder gets the 0.05% left over the
    ten seconds, which its floor share already earns, not the cheap seconds' 0.5% each."""
    from otlp_ebpf.collectors import base
    from otlp_ebpf.collectors.agent import TargetSpec
    from otlp_ebpf.collectors.agent_signals import AgentCpuSignal
    from otlp_ebpf.collectors.record import RecordConfig
    from otlp_ebpf.symbolize.allowance import CpuAllowance

    config = RecordConfig(
        targets=TargetSpec(),
        duration_s=None,
        interval_s=10.0,
        signals=("cpu",),
        signals_given=True,
        frequency_hz=49,
        budget_pct=1.0,
    )
    targets = base.Targets(config.targets)
    try:
        cpu = AgentCpuSignal(config, targets)
        worker = cpu.dwarf.sampler.cfi.worker
        assert worker is not None and worker.allowance.pct == 0.05
        worker.allowance = CpuAllowance(worker.allowance.pct, 2.0)

        def interval(dear_s: float) -> float:
            before = worker.allowance.deposited_s
            cpu.fund_decoder(0.010 - dear_s, 1.0)  # the dear second first: owed
            for _ in range(9):
                cpu.fund_decoder(0.010 - 0.005, 1.0)
            return worker.allowance.deposited_s - before

        given = [interval(0.050) for _ in range(3)]
        given.append(interval(0.030))  # 0.75% in all: 20 ms of room over the floor's 5
        given.append(interval(0.200))  # 2.45%: 150 ms over (at most 100 ms of it owed)
        given.append(interval(0.050))  # 0.95% again: no room
        given.append(interval(0.010))  # 0.55%: 40 ms of room, all of it to what is owed
    finally:
        targets.abandon()
    assert given == pytest.approx([0.0, 0.0, 0.0, 0.020, 0.0, 0.0, 0.0], abs=1e-9)
    assert worker.allowance.deposited_s == pytest.approx(0.020, abs=1e-9)


PTRACE_SEIZE, PTRACE_INTERRUPT, PTRACE_DETACH = 0x4206, 0x4207, 17
WALL = 0x40000000


def ptrace(request: int, tid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    if libc.ptrace(request, tid, None, None) != 0:
        raise OSError(ctypes.get_errno(), f"ptrace {request:#x} of {tid}")


@contextlib.contextmanager
def loop_frozen(agent_pid: int, serve: str) -> Iterator[None]:
    """The agent's collection loop (its main thread) stopped where it is, as a read that never
    returns would stop it, while its HTTP thread answers on. A stop that caught the loop
    holding the interpreter lock would silence the server too: then it is let go and tried
    again."""
    for _ in range(50):
        ptrace(PTRACE_SEIZE, agent_pid)
        ptrace(PTRACE_INTERRUPT, agent_pid)
        os.waitpid(agent_pid, WALL)
        if get(f"http://{serve}/readyz")[0]:
            break
        ptrace(PTRACE_DETACH, agent_pid)
        time.sleep(0.05)
    else:
        raise AssertionError("the loop never stopped outside the interpreter lock")
    try:
        yield
    finally:
        ptrace(PTRACE_DETACH, agent_pid)


@pytest.mark.bpf
def test_healthz_is_503_while_the_loop_is_stuck_and_200_once_it_comes_round(tmp_path: Path, cc):
    ticker = subprocess.Popen([str(build_c(cc, TICKER, tmp_path / "ticker"))])
    receiver = HttpReceiver().start()
    serve = f"127.0.0.1:{free_port()}"
    agent = subprocess.Popen(
        [*CLI, "agent", "-p", str(ticker.pid), "--signals", "syscalls", "--interval",
         INTERVAL_S, "--otlp", receiver.url, "--serve", serve, "--budget", "0",
         "--spill-dir", str(tmp_path / "spill")],
        env=agent_env(), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    healthz = f"http://{serve}/healthz"
    try:
        wait_for("2 intervals", lambda: len(intervals_received(receiver)) >= 2)
        assert get(healthz)[0] == 200
        with loop_frozen(agent.pid, serve):
            wait_for("/healthz 503", lambda: get(healthz)[0] == 503)
            stuck = get(healthz)
            frozen_at = len(intervals_received(receiver))
            # Still stuck a moment later: no interval went out meanwhile (one handed to the
            # export thread just before the stop may still arrive).
            wait_for("/healthz 503 again", lambda: get(healthz)[0] == 503)
            assert len(intervals_received(receiver)) <= frozen_at + 1
        wait_for("/healthz 200", lambda: get(healthz)[0] == 200)
        wait_for("2 intervals after", lambda: len(intervals_received(receiver)) >= frozen_at + 3)
        code, err = stop(agent)
    finally:
        for proc in (agent, ticker):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        receiver.stop()
    assert code == 0, err
    assert stuck == (503, "collection loop stuck\n")
    numbers = intervals_received(receiver)
    assert numbers == list(range(1, max(numbers) + 1))  # the stall lost no interval


@pytest.mark.bpf
def test_the_agent_duty_cycles_in_long_windows_decides_once_a_second_and_freezes_startup():
    """Under a budget the syscall programs are attached in one window a second (each window's
    attach and detach cost the tool ~0.5 ms: at `record`'s 8 a second that is 0.4% of a core,
    of the agent's 1%), the share traced is reported with the rates, and what was alive
    when the loop began is out of the cycle collector's way."""
    import gc

    from otlp_ebpf.collectors.agent import AGENT_CONTROL_S, Agent, AgentConfig, IntervalBatch, run
    from otlp_ebpf.collectors.agent_signals import AgentSyscallsSignal, duty_cycle_s

    # calls that cost the traced process several times more traced than not: duty cycling
    # buys the budget something, so it goes on
    busy = subprocess.Popen([sys.executable, "-c", "import os\nwhile True: os.getppid()"])
    churn = subprocess.Popen(["sh", "-c", "while :; do /bin/true; done"])
    batches: list[IntervalBatch] = []
    frozen: list[int] = []
    cycles: list[object] = []
    governors: list[object] = []
    started = time.monotonic()

    def on_poll(agent: Agent) -> None:
        if not cycles:
            frozen.append(gc.get_freeze_count())
            governors.append(agent.recording.governor)
            for s in agent.recording.signals:
                if isinstance(s, AgentSyscallsSignal):
                    cycles.append(s.collector.cycle)
        if len(batches) >= 2:
            os.kill(os.getpid(), signal.SIGINT)

    config = AgentConfig(interval_s=4.0, signals=("syscalls",), budget_pct=1.0)
    try:
        run(config, batches.append, on_poll=on_poll)
    finally:
        gc.unfreeze()
        for proc in (busy, churn):
            proc.kill()
            proc.wait()
    elapsed = time.monotonic() - started
    cycle = cycles[0]
    cycle_s = duty_cycle_s(config.interval_s)
    assert cycle_s > 0.125 and cycle.cycle_s == cycle_s  # type: ignore[attr-defined]
    windows = cycle.windows  # type: ignore[attr-defined]
    assert 0 < windows <= elapsed / cycle_s + 1, (windows, elapsed)
    duty = [b.rates["syscalls_duty"] for b in batches if "syscalls_duty" in b.rates]
    assert duty and min(duty) < 1, [b.rates for b in batches]
    assert "cpu_hz" not in batches[-1].rates  # no cpu signal, no cpu rate
    assert frozen and frozen[0] > 10_000, frozen
    # the budget looks at the cost once a second, not record's four times (the first look
    # comes at record's pace)
    decisions = governors[0].decisions  # type: ignore[attr-defined]
    assert 0 < decisions <= elapsed / AGENT_CONTROL_S + 2, (decisions, elapsed)


def test_the_duty_cycle_is_a_second_long_at_the_default_interval_and_shorter_below():
    from otlp_ebpf.collectors.agent import control_period_s
    from otlp_ebpf.collectors.agent_signals import duty_cycle_s

    assert duty_cycle_s(10.0) == 1.0  # one window a second: ten an interval
    assert duty_cycle_s(4.0) == 0.4
    assert duty_cycle_s(0.3) == 0.125  # record's, at the shortest
    assert control_period_s(10.0) == 1.0
    assert control_period_s(0.3) == 0.25
