"""`report`, `diff` and `push` read what they are given with a bound, and say which one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from otlp_ebpf.cli.app import run
from tests.formatters.formatter_fixtures import cpu_snapshot


@pytest.fixture
def one_mib_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTLP_EBPF_MAX_INPUT_MB", "1")


@pytest.mark.parametrize(
    ("command", "what"),
    [
        (["report"], "a snapshot"),
        (["diff", "/dev/zero"], "a snapshot"),
        (["push", "--otlp", "http://127.0.0.1:9"], "an .otlp.pb file"),
    ],
)
def test_an_endless_input_is_refused_at_the_limit(
    command: list[str], what: str, one_mib_limit: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([*command, "/dev/zero"]) == 2

    err = capsys.readouterr().err
    assert f"/dev/zero: more than 1 MiB, the size limit for {what}" in err
    assert "OTLP_EBPF_MAX_INPUT_MB" in err


def test_a_large_file_is_refused_from_its_size(
    tmp_path: Path, one_mib_limit: None, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "big.json"
    with big.open("wb") as fh:
        fh.truncate(2 << 20)  # sparse: refusing it must not need reading it

    assert run(["report", str(big)]) == 2
    assert "big.json: more than 1 MiB" in capsys.readouterr().err


def test_a_snapshot_under_the_limit_is_read(
    tmp_path: Path, one_mib_limit: None, capsys: pytest.CaptureFixture[str]
) -> None:
    snap = tmp_path / "s.json"
    snap.write_text(json.dumps(cpu_snapshot().to_dict()))
    assert run(["report", str(snap), "--top", "1"]) == 0


def test_deeply_nested_json_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)

    assert run(["report", str(deep)]) == 2
    assert "nested too deeply" in capsys.readouterr().err


def test_a_bad_limit_is_bad_usage(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OTLP_EBPF_MAX_INPUT_MB", "lots")
    assert run(["report", "/dev/null"]) == 2
    assert "OTLP_EBPF_MAX_INPUT_MB must be a positive number" in capsys.readouterr().err
