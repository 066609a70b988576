"""The signal descriptors (collectors/signals.py) agree with the code they describe."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from otlp_ebpf.cli.app import run
from otlp_ebpf.collectors import signals
from otlp_ebpf.errors import UsageError
from otlp_ebpf.formatters.otlp_request import encode_requests
from otlp_ebpf.model import SIGNALS as SIGNAL_NAMES
from otlp_ebpf.model import SNAPSHOT_TYPES, Snapshot
from otlp_ebpf.runtime.objects import object_names
from otlp_ebpf.targets import TargetSpec
from tests.collectors.test_net_records import _snapshot as net_snapshot
from tests.formatters.formatter_fixtures import cpu_snapshot, mem_snapshot, syscalls_snapshot

SAMPLES = {
    "cpu": cpu_snapshot,
    "syscalls": syscalls_snapshot,
    "net": net_snapshot,
    "mem": mem_snapshot,
}


def test_one_descriptor_per_snapshot_kind() -> None:
    # every kind but `record`, which holds one section per signal
    assert [s.name for s in signals.SIGNALS] == list(SIGNAL_NAMES)
    assert list(SNAPSHOT_TYPES) == [*SIGNAL_NAMES, "record"]
    for spec in signals.SIGNALS:
        assert spec.snapshot_type is SNAPSHOT_TYPES[spec.name]
        assert spec.snapshot_type.kind == spec.name


def test_every_bpf_object_belongs_to_a_signal_or_the_self_test() -> None:
    named = {obj for spec in signals.SIGNALS for obj in spec.bpf_objects}
    assert named | {"selftest"} == set(object_names())
    assert signals.users_of("cpu_dwarf") == ("cpu",)
    assert signals.users_of("selftest") == ()


@pytest.mark.parametrize("spec", signals.SIGNALS, ids=lambda s: s.name)
def test_otlp_signals_are_what_the_otlp_mapping_produces(spec: signals.SignalSpec) -> None:
    snapshot = SAMPLES[spec.name]()
    produced = tuple(r.signal for r in encode_requests(snapshot, {}))
    assert produced == spec.otlp_signals


@pytest.mark.parametrize("spec", signals.SIGNALS, ids=lambda s: s.name)
def test_each_signal_renders_its_own_table(spec: signals.SignalSpec) -> None:
    stream = io.StringIO()
    spec.render_table(SAMPLES[spec.name](), Console(file=stream, width=200), None)
    assert stream.getvalue().strip()
    other = next(s for s in signals.SIGNALS if s is not spec)
    with pytest.raises((AssertionError, TypeError)):
        spec.render_table(SAMPLES[other.name](), Console(file=io.StringIO()), None)


def test_default_configs_record_the_given_targets_for_the_given_time() -> None:
    targets = TargetSpec(pids=(1,))
    for spec in signals.SIGNALS:
        config = spec.default_config(targets, 2.5)
        assert config.targets == targets and config.duration_s == 2.5


def test_lookup_by_name_and_by_snapshot() -> None:
    assert signals.signal_named("net") is signals.NET
    assert signals.signal_of(mem_snapshot()) is signals.MEM
    with pytest.raises(UsageError, match="known signals: cpu, syscalls, net, mem"):
        signals.signal_named("gpu")


@pytest.mark.parametrize("kind", list(SAMPLES))
def test_report_counts_what_the_descriptor_counts(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snapshot: Snapshot = SAMPLES[kind]()
    path = tmp_path / "s.json"
    path.write_text(json.dumps(snapshot.to_dict()))
    assert run(["report", str(path)]) == 0
    spec = signals.signal_of(snapshot)
    assert f"{spec.count_events(snapshot):,} {spec.event_name}," in capsys.readouterr().err
