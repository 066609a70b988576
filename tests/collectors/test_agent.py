"""`otlp-ebpf agent` for real: batches every interval to a local OTLP receiver, an outage of
the receiver bridged by the spill directory, /metrics, /healthz and /readyz, SIGTERM leaving
nothing loaded, and the documented exit codes."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from otlp_ebpf.cli.app import run
from tests.conftest import build_c
from tests.export.otlp_servers import HttpReceiver

CLI = [sys.executable, "-m", "otlp_ebpf"]
INTERVAL_S = "0.5"

# Waits on a FIFO, makes exactly N getppid() calls, then stays until killed: a target whose
# syscall count the agent must report exactly.
CALLER = r"""
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char go;
    int fd = open(argv[2], O_RDONLY);
    if (fd < 0 || read(fd, &go, 1) != 1) return 2;
    for (int i = 0; i < atoi(argv[1]); i++) getppid();
    pause();
    return 0;
}
"""
CALLS = 4321


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], bool], limit_s: float = 180.0) -> None:
    """Poll `check` until true; the limit only keeps a broken agent from hanging the suite."""
    end = time.monotonic() + limit_s
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else -1.0


def intervals_received(receiver: HttpReceiver) -> list[int]:
    """The interval number of every self-metrics request received, in arrival order."""
    out = []
    for received in receiver.of("metrics"):
        for rm in received.request.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == "otlp_ebpf.agent.intervals":
                        out.append(
                            int(m.sum.data_points[0].as_int or m.sum.data_points[0].as_double)
                        )
    return out


def metric_points(receiver: HttpReceiver, pid: int, name: str) -> list[tuple[dict, float]]:
    """(point attributes, value) of metric `name` for process `pid`, in arrival order."""
    out = []
    for received in receiver.of("metrics"):
        for rm in received.request.resource_metrics:
            attrs = {a.key: a.value for a in rm.resource.attributes}
            if "process.pid" not in attrs or attrs["process.pid"].int_value != pid:
                continue
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == name:
                        data = m.sum if m.HasField("sum") else m.gauge
                        for p in data.data_points:
                            point = {a.key: a.value.string_value for a in p.attributes}
                            out.append((point, p.as_int or p.as_double))
    return out


def syscall_points(receiver: HttpReceiver, pid: int, name: str) -> list[int]:
    """Every cumulative count of syscall `name` for process `pid` received, in order."""
    return [
        int(value)
        for attrs, value in metric_points(receiver, pid, "otlp_ebpf.syscall.calls")
        if attrs.get("otlp_ebpf.syscall.name") == name
    ]


def syscall_count(receiver: HttpReceiver, pid: int, name: str) -> int:
    """The newest cumulative count of syscall `name` for process `pid` (-1: none)."""
    return (syscall_points(receiver, pid, name) or [-1])[-1]


def program_ids(pid: int) -> set[int]:
    """BPF program ids held by the fds of process `pid` (never the machine's: others load too)."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        ids.update(int(m) for m in re.findall(r"^prog_id:\s+(\d+)", text, re.M))
    return ids


def program_loaded(prog_id: int) -> bool:
    done = subprocess.run(
        ["bpftool", "prog", "show", "id", str(prog_id)], capture_output=True, text=True
    )
    return done.returncode == 0


@pytest.fixture
def caller(tmp_path: Path, cc) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    binary = build_c(cc, CALLER, tmp_path / "caller")
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    proc = subprocess.Popen([str(binary), str(CALLS), str(fifo)])
    yield proc, fifo
    proc.kill()
    proc.wait()


@pytest.mark.bpf
def test_every_interval_arrives_across_a_receiver_outage(tmp_path: Path, caller) -> None:
    proc, fifo = caller
    port = free_port()
    receiver = HttpReceiver().start(port=port)
    serve = f"127.0.0.1:{free_port()}"
    spill = tmp_path / "spill"
    env = dict(
        os.environ,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_TIMEOUT="400",  # ms, retries included: an outage shows fast
    )
    agent = subprocess.Popen(
        [*CLI, "agent", "-p", str(proc.pid), "--interval", INTERVAL_S, "--otlp", receiver.url,
         "--serve", serve, "--spill-dir", str(spill), "--budget", "0"],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    base = f"http://{serve}"
    try:
        wait_for("readiness", lambda: get(f"{base}/readyz")[0] == 200)
        assert get(f"{base}/healthz")[0] == 200
        loaded = program_ids(agent.pid)
        assert loaded, "the agent holds no BPF program while running"
        with open(fifo, "w") as go:
            go.write("x")
        wait_for("2 batches", lambda: len(intervals_received(receiver)) >= 2)
        receiver.stop()
        wait_for(
            "3 spilled batches",
            lambda: metric(get(f"{base}/metrics")[1], "otlp_ebpf_spilled_batches_total") >= 3,
        )
        assert len(list(spill.glob("batch-*.otlp.pb"))) >= 3
        assert get(f"{base}/readyz")[0] == 200  # exports are being spilled: still ready
        receiver.start(port=port)
        wait_for(
            "the spill re-sent",
            lambda: metric(get(f"{base}/metrics")[1], "otlp_ebpf_resent_batches_total") >= 3,
        )
        _, text = get(f"{base}/metrics")
        check_with_promtool(text, tmp_path)
        agent.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        code = agent.wait(timeout=30)
        stopped_in = time.monotonic() - t0
        err = agent.stderr.read() if agent.stderr else ""
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        receiver.stop()
    assert code == 0, err
    assert stopped_in < 5, err
    numbers = intervals_received(receiver)
    # Every interval arrived, the ones of the outage re-sent from the spill, in order.
    assert numbers == list(range(1, max(numbers) + 1)), numbers
    assert "batches delivered, 0 waiting" in err
    assert not list(spill.glob("batch-*"))
    assert syscall_count(receiver, proc.pid, "getppid") == CALLS
    # The target went quiet after its calls: its series is sent when it moves, not at every
    # interval after (the calls may straddle two intervals).
    assert len(syscall_points(receiver, proc.pid, "getppid")) <= 2 < len(numbers) - 2
    assert not [p for p in loaded if program_loaded(p)], "programs still loaded after exit"
    assert all(not r.violations() for r in receiver.received)


def check_with_promtool(text: str, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: apt-get install prometheus (make setup does)"
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for name in (
        'otlp_ebpf_events_total{signal="syscalls"}',
        'otlp_ebpf_lost_events_total{signal="cpu"}',
        "otlp_ebpf_bpf_run_seconds_total",
        "otlp_ebpf_cpu_seconds_total",
        "otlp_ebpf_resident_memory_bytes",
        "otlp_ebpf_export_attempts_total",
        "otlp_ebpf_export_failures_total",
        "otlp_ebpf_spilled_batches_total",
        "otlp_ebpf_resent_batches_total",
        "otlp_ebpf_interval_duration_seconds",
        'otlp_ebpf_sampling_rate_hertz{signal="cpu"}',
    ):
        assert f"\n{name} " in text, name


@pytest.mark.bpf
def test_sigint_flushes_the_interval_in_progress(tmp_path: Path) -> None:
    """A stop a moment after start, before the first interval ends: that interval still
    arrives."""
    receiver = HttpReceiver().start()
    env = dict(os.environ, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
    agent = subprocess.Popen(
        [*CLI, "agent", "--interval", "600", "--otlp", receiver.url, "--signals", "syscalls",
         "--spill-dir", str(tmp_path / "spill")],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for("attached", lambda: bool(program_ids(agent.pid)))
        time.sleep(0.5)
        agent.send_signal(signal.SIGINT)
        code = agent.wait(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
        receiver.stop()
    assert code == 0
    assert intervals_received(receiver) == [1]
    assert receiver.of("metrics")


def test_port_in_use_is_refused_with_exit_2(tmp_path: Path, capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = run(["agent", "--serve", f"127.0.0.1:{port}", "--spill-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"127.0.0.1:{port}: the port is in use" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interval", "0"], "--interval"),
        (["--signals", "cpu,gpu"], "the agent cannot run 'gpu'"),
        (["--serve", "localhost"], "--serve: give HOST:PORT"),
        (["--budget", "-1"], "--budget"),
        (["--spill-max-mb", "0"], "--spill-max-mb"),
    ],
)
def test_bad_options_are_refused_with_exit_2(tmp_path: Path, capsys, args, message) -> None:
    code = run(["agent", "--spill-dir", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert len(err.strip().splitlines()) <= 2, err  # the error and its hint, no traceback


def test_bad_config_at_start_is_refused_with_exit_2(tmp_path: Path, capsys) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("interval: 1\nspill_dir: [\n")
    code = run(["agent", "--config", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{path}: not valid YAML (line" in err
    assert "Traceback" not in err


def resource_of(receiver: HttpReceiver, pid: int) -> dict[str, str]:
    """The string attributes of process `pid`'s resource in the newest request naming it."""
    found: dict[str, str] = {}
    for received in receiver.received:
        request = received.request
        resources = getattr(request, "resource_profiles", None) or request.resource_metrics
        for rp in resources:
            attrs = {a.key: a.value for a in rp.resource.attributes}
            if "process.pid" in attrs and attrs["process.pid"].int_value == pid:
                found = {k: v.string_value for k, v in attrs.items() if v.string_value}
    return found


def v2_root() -> Path:
    unified = Path("/sys/fs/cgroup/unified")
    return unified if (unified / "cgroup.procs").exists() else Path("/sys/fs/cgroup")


POD = "0a1b2c3d-4e5f-6789-abcd-ef0123456789"
CONTAINER = "5e" * 32


@pytest.fixture
def pod_cgroup() -> Iterator[Path]:
    """A Kubernetes-shaped cgroup subtree (pod slice, container scope), removed afterwards."""
    top = v2_root() / f"otlp-ebpf-test-{os.getpid()}.slice"
    leaf = top / f"kubepods-pod{POD.replace('-', '_')}.slice" / f"cri-containerd-{CONTAINER}.scope"
    leaf.mkdir(parents=True)
    yield top
    for directory in (leaf, leaf.parent, top):
        procs = directory / "cgroup.procs"
        for line in procs.read_text().split() if procs.exists() else []:
            with contextlib.suppress(OSError):
                os.kill(int(line), signal.SIGKILL)
        for _ in range(50):
            try:
                directory.rmdir()
                break
            except OSError:
                time.sleep(0.05)


@pytest.mark.bpf
def test_cgroup_limits_collection_and_names_container_pod_and_service(
    tmp_path: Path, cc, pod_cgroup: Path
) -> None:
    binary = build_c(cc, CALLER, tmp_path / "caller")
    fifos = [tmp_path / "in", tmp_path / "out"]
    for fifo in fifos:
        os.mkfifo(fifo)
    env = dict(os.environ, OTEL_SERVICE_NAME="checkout")
    inside = subprocess.Popen([str(binary), str(CALLS), str(fifos[0])], env=env)
    outside = subprocess.Popen([str(binary), str(CALLS), str(fifos[1])], env=env)
    leaf = next(pod_cgroup.glob("*/*.scope"))
    (leaf / "cgroup.procs").write_text(str(inside.pid))
    receiver = HttpReceiver().start()
    serve = f"127.0.0.1:{free_port()}"
    agent = subprocess.Popen(
        [*CLI, "agent", "--cgroup", str(pod_cgroup), "--interval", INTERVAL_S, "--otlp",
         receiver.url, "--signals", "syscalls", "--spill-dir", str(tmp_path / "spill"),
         "--serve", serve],
        env=dict(os.environ, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf"),
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # Ready means the cgroup's processes are targets, not only that programs are loaded:
        # a call made between the two would be missed and the exact count never reached.
        wait_for("readiness", lambda: get(f"http://{serve}/readyz")[0] == 200)
        for fifo in fifos:
            with open(fifo, "w") as go:
                go.write("x")
        wait_for("the calls", lambda: syscall_count(receiver, inside.pid, "getppid") == CALLS)
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=30)
    finally:
        for proc in (agent, inside, outside):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        receiver.stop()
    assert code == 0
    attrs = resource_of(receiver, inside.pid)
    assert attrs["container.id"] == CONTAINER
    assert attrs["k8s.pod.uid"] == POD
    assert attrs["service.name"] == "checkout"
    assert resource_of(receiver, outside.pid) == {}  # outside the cgroup: not collected


@pytest.mark.bpf
def test_sighup_reloads_the_config_without_losing_an_interval(tmp_path: Path) -> None:
    first, second = HttpReceiver().start(), HttpReceiver().start()
    path = tmp_path / "agent.yaml"
    common = f"interval: {INTERVAL_S}\nsignals: syscalls\nspill_dir: {tmp_path / 'spill'}\n"
    path.write_text(common + f"otlp: {first.url}\n")
    agent = subprocess.Popen(
        [*CLI, "agent", "--config", str(path)],
        env=dict(os.environ, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf"),
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for("2 batches", lambda: len(intervals_received(first)) >= 2)
        path.write_text(common + f"otlp: {second.url}\ninterval: 5\n")
        agent.send_signal(signal.SIGHUP)
        wait_for("the new receiver", lambda: len(intervals_received(second)) >= 2)
        path.write_text("interval: [\n")
        agent.send_signal(signal.SIGHUP)
        count = len(intervals_received(second))
        wait_for("more batches", lambda: len(intervals_received(second)) >= count + 2)
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=30)
        err = agent.stderr.read() if agent.stderr else ""
    finally:
        if agent.poll() is None:
            agent.kill()
        first.stop()
        second.stop()
    assert code == 0, err
    numbers = sorted(intervals_received(first) + intervals_received(second))
    assert numbers == list(range(1, numbers[-1] + 1)), numbers  # none lost, none twice
    assert "configuration reloaded (otlp); interval change at restart only" in err
    assert "configuration not reloaded, the running one is kept:" in err
    assert "not valid YAML" in err


@pytest.mark.bpf
def test_in_process_run_spills_resends_reloads_and_serves(tmp_path: Path, monkeypatch, capsys):
    """The same run inside this process (so coverage sees it): the receiver refuses the first
    requests, SIGHUP changes the budget, the endpoints answer, SIGTERM ends it with exit 0."""
    import threading

    from tests.export.otlp_servers import Failure

    receiver = HttpReceiver(failures=[Failure(503)] * 3).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "300")  # ms: a 503 is given up fast
    config = tmp_path / "agent.yaml"
    serve = f"127.0.0.1:{free_port()}"
    settings = f"interval: {INTERVAL_S}\notlp: {receiver.url}\nserve: '{serve}'\n"
    config.write_text(settings + "budget: 0\n")
    seen: dict[str, object] = {}

    def drive() -> None:
        try:
            wait_for("2 intervals", lambda: len(intervals_received(receiver)) >= 2)
            seen["healthz"] = get(f"http://{serve}/healthz")[0]
            seen["readyz"] = get(f"http://{serve}/readyz")[0]
            seen["missing"] = get(f"http://{serve}/nothing")[0]
            config.write_text(settings + "budget: 5\n")
            os.kill(os.getpid(), signal.SIGHUP)
            # The reload takes effect at the next interval's start; batches re-sent from the spill
            # may arrive before it, so the test waits on the gauge itself.
            wait_for(
                "the reloaded budget",
                lambda: "otlp_ebpf_budget_percent 5.0" in get(f"http://{serve}/metrics")[1],
            )
            seen["metrics"] = 1
        except AssertionError as exc:  # said in the test's failure
            seen["failed"] = str(exc)
        finally:  # a failed wait still ends the run
            os.kill(os.getpid(), signal.SIGTERM)

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    try:
        code = run(["agent", "--config", str(config), "--spill-dir", str(tmp_path / "spill")])
    finally:
        driver.join(5)
        receiver.stop()
    err = capsys.readouterr().err
    assert code == 0, err
    assert seen == {"healthz": 200, "readyz": 200, "missing": 404, "metrics": 1}
    assert "batch kept in" in err  # the refused first batch was spilled ...
    numbers = intervals_received(receiver)
    assert numbers == list(range(1, max(numbers) + 1))  # ... and re-sent before the next
    assert "configuration reloaded (budget)" in err
