"""The agent's configuration file and the container attributes of a process: the bytes from
the host are hostile, a bad file is one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from otlp_ebpf.cli.agent_settings import AgentSettings, changes, parse_config, resolve
from otlp_ebpf.cli.common import CmdlinePolicy
from otlp_ebpf.collectors.containers import (
    MAX_ATTRIBUTES,
    cgroup_attributes,
    environ_attributes,
    process_attributes,
    resolve_cgroup,
)
from otlp_ebpf.errors import UsageError

CONTAINER = "3f" * 32
POD = "0a1b2c3d-4e5f-6789-abcd-ef0123456789"


def test_config_keys_are_the_options():
    values = parse_config(
        "interval: 2.5\nsignals: [cpu, syscalls]\nspill-dir: /var/spill\npid: 42\n"
        "cmdline: omit\nbudget: 0\n",
        "agent.yaml",
    )
    assert values == {
        "interval": 2.5,
        "signals": "cpu,syscalls",
        "spill_dir": "/var/spill",
        "pid": (42,),
        "cmdline": CmdlinePolicy.OMIT,
        "budget": 0.0,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("interval: [", "not valid YAML (line"),
        ("- a\n- b\n", "the top level must be a mapping"),
        ("intervall: 3\n", "unknown key 'intervall'"),
        ("interval: soon\n", "interval must be a number"),
        ("interval: .nan\n", "interval must be a finite number"),
        ("frequency: 9.5\n", "frequency must be a finite whole number"),
        ("cmdline: all\n", "cmdline must be one of"),
        ("otlp: ''\n", "otlp must be a non-empty string"),
        ("budget: true\n", "budget must be a number"),
    ],
)
def test_bad_config_names_the_problem(text, message):
    with pytest.raises(UsageError) as caught:
        parse_config(text, "agent.yaml")
    assert caught.value.message.startswith("agent.yaml: ")
    assert message in caught.value.message


def test_flags_win_over_the_file(tmp_path: Path):
    path = tmp_path / "agent.yaml"
    path.write_text("interval: 5\notlp: http://a:4317\nbudget: 2\n")
    settings = resolve({"interval": 1.0, "otlp": None, "budget": None}, str(path))
    assert (settings.interval, settings.otlp, settings.budget) == (1.0, "http://a:4317", 2.0)
    assert settings.spill_dir == AgentSettings().spill_dir


def test_config_file_bounds(tmp_path: Path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (2 * 1024 * 1024))
    with pytest.raises(UsageError, match="not a configuration"):
        resolve({}, str(big))
    with pytest.raises(UsageError, match="cannot read it"):
        resolve({}, str(tmp_path / "missing.yaml"))
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"interval: \xff\n")
    with pytest.raises(UsageError, match="not UTF-8"):
        resolve({}, str(binary))


def test_changes_split_live_from_restart():
    old = AgentSettings()
    new = AgentSettings(otlp="http://b:4317", budget=2.0, interval=3.0)
    assert changes(old, new) == (["otlp", "budget"], ["interval"])


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
            f"{POD.replace('-', '_')}.slice/cri-containerd-{CONTAINER}.scope",
            {"container.id": CONTAINER, "k8s.pod.uid": POD},
        ),
        (
            f"/kubepods/besteffort/pod{POD}/{CONTAINER}",
            {"container.id": CONTAINER, "k8s.pod.uid": POD},
        ),
        (f"/system.slice/docker-{CONTAINER}.scope", {"container.id": CONTAINER}),
        ("/user.slice/user-0.slice/session-1.scope", {}),
        (f"/x/not-a-pod{POD}z/{CONTAINER}0", {}),  # neither matches whole
    ],
)
def test_cgroup_paths_show_container_and_pod(path, expected):
    assert cgroup_attributes(path) == expected


def test_environment_gives_service_name_and_resource_attributes():
    raw = b"\0".join(
        [
            b"PATH=/bin",
            b"OTEL_RESOURCE_ATTRIBUTES=deployment.environment=prod,service.name=ignored,bad,team=a%20b",
            b"OTEL_SERVICE_NAME=checkout",
            b"API_TOKEN=secret",
        ]
    )
    assert environ_attributes(raw) == {
        "deployment.environment": "prod",
        "service.name": "checkout",
        "team": "a b",
    }


def test_hostile_environment_is_bounded_and_escaped():
    many = ",".join(f"k{i}=v" for i in range(500))
    raw = b"\0".join(
        [
            b"OTEL_SERVICE_NAME=evil\x1b]0;owned\x07",
            b"OTEL_RESOURCE_ATTRIBUTES=" + many.encode() + b",long=" + b"x" * 5000,
        ]
    )
    attrs = environ_attributes(raw)
    assert "service.name" not in attrs  # control characters: left out, not sent
    assert len(attrs) == MAX_ATTRIBUTES
    assert "long" not in attrs
    assert environ_attributes(b"OTEL_SERVICE_NAME=caf\xff\xfe") == {"service.name": "caf\\xff\\xfe"}
    assert environ_attributes(b"\xff" * 1000) == {}


def test_a_live_process_is_read_from_proc():
    env = dict(os.environ, OTEL_SERVICE_NAME="payments")
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; print(flush=True); time.sleep(30)"],
        env=env,
        stdout=subprocess.PIPE,
    )
    try:
        # Until the child has run its first line, /proc shows the environment it was forked with.
        assert child.stdout is not None and child.stdout.readline() == b"\n"
        assert process_attributes(child.pid)["service.name"] == "payments"
    finally:
        child.kill()
        child.wait()
    assert process_attributes(child.pid) == {}  # gone: nothing, no error


@pytest.mark.parametrize(
    "path", ["/etc", "../../etc", "/sys/fs/cgroup/../../etc", "no-such-cgroup-x"]
)
def test_cgroup_option_must_name_a_cgroup(path):
    with pytest.raises(UsageError, match="--cgroup"):
        resolve_cgroup(path)
