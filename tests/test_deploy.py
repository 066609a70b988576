"""The deployment files of deploy/ are checked by the tools that read them: systemd-analyze
for the unit, promtool for the Prometheus files, and the fields a BPF agent needs in the
DaemonSet and the Collector configuration."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from otlp_ebpf.cli.agent import check
from otlp_ebpf.cli.agent_settings import parse_config, resolve

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} missing (make setup installs it)"
    return path


def verify_unit(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # verify wants ExecStart to exist: point it at the otlp-ebpf of this environment.
    entry = Path(sys.executable).with_name("otlp-ebpf")
    unit = tmp_path / "otlp-ebpf-agent.service"
    unit.write_text(text.replace("/usr/local/bin/otlp-ebpf", str(entry)))
    return subprocess.run(
        [tool("systemd-analyze"), "verify", str(unit)], capture_output=True, text=True
    )


def test_systemd_unit_verifies(tmp_path: Path):
    text = (DEPLOY / "otlp-ebpf-agent.service").read_text()
    done = verify_unit(text, tmp_path)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text  # systemctl reload = SIGHUP
    assert "RestartPreventExitStatus=2 3" in text


def test_systemd_verify_catches_a_broken_unit(tmp_path: Path):
    text = (DEPLOY / "otlp-ebpf-agent.service").read_text()
    done = verify_unit(text.replace("Type=exec", "Type=exec\nRestartt=always"), tmp_path)
    assert "Restartt" in done.stderr


def test_sample_agent_config_is_accepted():
    values = parse_config((DEPLOY / "agent.yaml").read_text(), "agent.yaml")
    assert values["serve"] == "127.0.0.1:9464"
    config = check(resolve(values, None))
    assert config.signals == ("cpu", "syscalls")


def daemonset() -> tuple[dict[str, Any], dict[str, Any]]:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "daemonset.yaml").read_text()))
    by_kind = {d["kind"]: d for d in docs}
    return by_kind["DaemonSet"], by_kind["ConfigMap"]


def test_daemonset_has_what_a_bpf_agent_needs_without_privileged():
    ds, config_map = daemonset()
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostPID"] is True
    (container,) = spec["containers"]
    security = container["securityContext"]
    assert security["privileged"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"BPF", "PERFMON", "SYS_RESOURCE"} <= set(security["capabilities"]["add"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for path in ("/sys/kernel/btf", "/sys/kernel/tracing", "/sys/fs/cgroup"):
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path
        assert mounts[path]["readOnly"] is True
    assert volumes[mounts["/host/proc"]["name"]]["hostPath"]["path"] == "/proc"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
    limits = container["resources"]["limits"]
    assert limits["memory"] and limits["cpu"]
    # SIGTERM flushes and detaches within 5 s: the grace period leaves room for it.
    assert spec["terminationGracePeriodSeconds"] >= 5
    # The agent's own config listens where the probes look, and is valid.
    values = parse_config(config_map["data"]["agent.yaml"], "configmap")
    assert values["serve"] == f":{port}"
    assert container["args"] == ["--config", "/etc/otlp-ebpf/agent.yaml"]


def test_collector_config_sends_metrics_to_prometheus_and_profiles_on():
    config = yaml.safe_load((DEPLOY / "otel-collector.yaml").read_text())
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    pipelines = config["service"]["pipelines"]
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    assert pipelines["profiles"]["receivers"] == ["otlp"]
    exporters = config["exporters"]
    for pipeline in pipelines.values():
        for name in pipeline["exporters"]:
            assert name in exporters
        for name in pipeline.get("processors", []):
            assert name in config["processors"]
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    scraped = [
        t for job in prom["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    ]
    assert any(t.endswith(exporters["prometheus"]["endpoint"].rsplit(":", 1)[1]) for t in scraped)


@pytest.mark.parametrize(
    ("args", "file"),
    [(["check", "config"], "prometheus.yml"), (["check", "rules"], "prometheus-agent-rules.yaml")],
)
def test_prometheus_files_pass_promtool(args, file):
    done = subprocess.run(
        [tool("promtool"), *args, str(DEPLOY / file)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_agent_rules_use_the_names_the_agent_serves():
    from otlp_ebpf.export.self_metrics import FIGURES

    served = {f.prom + ("_total" if f.counter else "") for f in FIGURES.values()}
    rules = yaml.safe_load((DEPLOY / "prometheus-agent-rules.yaml").read_text())
    import re

    for rule in rules["groups"][0]["rules"]:
        for name in re.findall(r"otlp_ebpf_\w+", rule["expr"]):
            assert name in served, (rule["alert"], name)


def test_container_image_builds_the_bpf_objects_and_runs_the_agent():
    text = (DEPLOY / "Containerfile").read_text()
    assert "tools/build_bpf.py" in text
    assert 'ENTRYPOINT ["otlp-ebpf", "agent"]' in text
    assert "EXPOSE 9464" in text
