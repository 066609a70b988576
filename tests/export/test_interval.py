"""`--interval --otlp` against a collector that cannot be reached: the run is not held up,
and the whole outage costs one spill file that holds everything."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from otlp_ebpf.cli.app import run
from otlp_ebpf.formatters.otlp_request import read_request_file

pytestmark = pytest.mark.bpf


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_outage_costs_one_spill_file(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "300")  # ms, retries included
    url = f"http://127.0.0.1:{closed_port()}"
    code = run(
        ["syscalls", "--interval", "0.1", "--otlp", url, "-o", "run.json", "--", "sleep", "1.5"]
    )
    err = capsys.readouterr().err
    assert code == 1  # the data did not reach the collector
    spills = sorted(tmp_path.glob("*.otlp.pb"))
    assert len(spills) == 1, err
    assert "final batch saved to" in err
    # The one file holds the final, cumulative batch: pushing it later sends everything.
    requests = read_request_file(str(spills[0]))
    assert [r.signal for r in requests] == ["metrics"]
    assert (tmp_path / "run.json").exists()  # outputs were written first
