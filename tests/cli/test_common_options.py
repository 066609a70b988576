"""Options several commands share follow one rule: the same bad value gets the same message
and exit 2 from every command, before anything is collected or read."""

from __future__ import annotations

from pathlib import Path

import pytest

from otlp_ebpf.cli.app import run
from otlp_ebpf.model import CpuSnapshot, StackCount, write_snapshot


@pytest.fixture
def snapshot_file(tmp_path: Path) -> str:
    stacks = tuple(StackCount(1, 1, "w", ("main", f"f{i}"), 10 + i) for i in range(25))
    snapshot = CpuSnapshot(
        started_at="t",
        duration_s=1.0,
        host="h",
        samples_total=sum(10 + i for i in range(25)),
        stacks=stacks,
    )
    path = tmp_path / "s.json"
    with path.open("w", encoding="utf-8") as fh:
        write_snapshot(snapshot, fh)
    return str(path)


def every_table_command(snapshot: str) -> list[list[str]]:
    return [
        ["cpu", "-d", "1"],
        ["syscalls", "-d", "1"],
        ["net", "-d", "1"],
        ["mem", "-d", "1"],
        ["record", "-d", "1"],
        ["report", snapshot],
        ["diff", snapshot, snapshot],
    ]


def refusal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert run(argv) == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip()


@pytest.mark.parametrize("value", ["-1", "-20"])
def test_negative_top_gets_one_message_from_every_command(
    snapshot_file: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    messages = {
        refusal([*argv, "--top", value], capsys) for argv in every_table_command(snapshot_file)
    }
    assert messages == {
        f"error: --top must be 0 (every row) or a positive number of rows, got {value}"
    }


def test_top_zero_shows_every_row(snapshot_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["report", snapshot_file, "--top", "0"]) == 0
    out = capsys.readouterr().out
    assert all(f" f{i} " in out for i in range(25))
    assert run(["diff", snapshot_file, snapshot_file, "--top", "0"]) == 0


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1"])
def test_bad_durations_get_one_message_from_every_collector(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    messages = {
        refusal([command, "-d", value], capsys)
        for command in ("cpu", "syscalls", "net", "mem", "record")
    }
    assert len(messages) == 1
    assert messages.pop().startswith("error: --duration must be a positive number of seconds")


@pytest.mark.parametrize("value", ["nan", "inf", "0"])
def test_bad_intervals_are_refused(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    messages = {refusal([c, "--interval", value], capsys) for c in ("syscalls", "net", "record")}
    assert messages == {f"error: --interval must be a positive number of seconds, got {value}"}


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--fail-on-regression", "nan"),
        ("--fail-on-regression", "inf"),
        ("--fail-on-regression", "-5"),
        ("--min-share", "nan"),
        ("--min-share", "-1"),
        ("--min-share", "101"),
        ("--confidence", "nan"),
        ("--confidence", "inf"),
        ("--confidence", "1"),
        ("--confidence", "0.2"),
    ],
)
def test_non_finite_or_negative_thresholds_are_bad_input(
    snapshot_file: str, option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    message = refusal(["diff", snapshot_file, snapshot_file, option, value], capsys)
    assert message.startswith(f"error: {option} must be") and message.endswith(f"got {value}")
