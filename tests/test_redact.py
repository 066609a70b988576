"""Secrets in command lines and URLs stay out of outputs and messages."""

from __future__ import annotations

import json

import pytest

from otlp_ebpf.cli.app import run
from otlp_ebpf.cli.common import CmdlinePolicy, with_cmdlines
from otlp_ebpf.model import ProcessInfo, RecordSnapshot
from otlp_ebpf.redact import mask_userinfo, redact_cmdline
from tests.formatters.formatter_fixtures import cpu_snapshot

SECRET = "S3cretPass"


@pytest.mark.parametrize(
    ("args", "kept"),
    [
        (("db", "--password=S3cretPass", "-v"), ("db", "--password=***", "-v")),
        (("db", "--token", "S3cretPass", "x"), ("db", "--token", "***", "x")),
        (("java", "-Dapi.key=S3cretPass"), ("java", "-Dapi.key=***")),
        (("env", "AWS_SECRET_ACCESS_KEY=S3cretPass"), ("env", "AWS_SECRET_ACCESS_KEY=***")),
        (("x", "--credentials", "/etc/S3cretPass"), ("x", "--credentials", "***")),
        (("psql", "postgres://bob:S3cretPass@db/app"), ("psql", "postgres://***@db/app")),
        (
            ("sh", "-c", "curl --token=S3cretPass http://h"),
            ("sh", "-c", "curl --token=*** http://h"),
        ),
        (
            ("make", "--keyboard=us", "monkey=1", "-j4"),
            ("make", "--keyboard=us", "monkey=1", "-j4"),
        ),
    ],
)
def test_secret_looking_values_are_masked(args: tuple[str, ...], kept: tuple[str, ...]) -> None:
    assert redact_cmdline(args, "redact") == kept


def test_full_keeps_and_omit_drops() -> None:
    args = ("db", "--password=S3cretPass")
    assert redact_cmdline(args, "full") == args
    assert redact_cmdline(args, "omit") == ()


def test_url_credentials_are_masked_wherever_they_are() -> None:
    text = "send to http://alice:S3cretPass@host:4318/v1 and https://tok@h"
    assert mask_userinfo(text) == "send to http://***@host:4318/v1 and https://***@h"


def test_snapshots_get_the_policy_everywhere_they_hold_command_lines() -> None:
    info = ProcessInfo(7, "db", "/usr/bin/db", ("db", "--password", SECRET))
    snap = cpu_snapshot().__class__(
        **{**_common(), "processes": (info,), "targets": (f"command: db --token={SECRET}",)}
    )
    record = RecordSnapshot(**_common(), signals={"cpu": snap}, processes=(info,))

    redacted = with_cmdlines(record, CmdlinePolicy.REDACT)
    assert SECRET not in json.dumps(redacted.to_dict())
    assert redacted.signals["cpu"].targets == ("command: db --token=***",)
    omitted = with_cmdlines(snap, CmdlinePolicy.OMIT)
    assert omitted.processes[0].cmdline == () and omitted.targets == ("command",)
    assert with_cmdlines(snap, CmdlinePolicy.FULL) is snap


def _common() -> dict[str, object]:
    return {"started_at": "t", "duration_s": 1.0, "host": "h"}


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["syscalls", "-d", "1", "--otlp", f"http://alice:{SECRET}@host:4318"], {}),
        (["--debug", "net", "-d", "1", "--otlp", f"http://alice:{SECRET}@host:99999"], {}),
        (["cpu", "-d", "1", "--otlp", f"alice:{SECRET}@host:4317"], {}),
        (
            ["syscalls", "-d", "1", "--otlp"],
            {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://a:{SECRET}@h"},
        ),
        (["push", "--otlp", f"http://alice:{SECRET}@host:4318", "x.otlp.pb"], {}),
    ],
)
def test_endpoint_credentials_never_reach_a_message(
    args: list[str],
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    assert run(args) == 2

    captured = capsys.readouterr()
    assert "OTLP endpoint" in captured.err and "***@" in captured.err
    assert SECRET not in captured.out + captured.err


def test_cmdline_choice_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["syscalls", "--cmdline", "some", "-d", "1"]) == 2
    assert "--cmdline" in capsys.readouterr().err


def test_a_command_line_seen_again_is_redacted_alike() -> None:
    from otlp_ebpf import redact

    redact._redacted.cache_clear()
    first = redact_cmdline(("curl", "--token", SECRET, "http://h"), "redact")
    again = redact_cmdline(("curl", "--token", SECRET, "http://h"), "redact")
    other = redact_cmdline(("curl", "--token", "x", "--verbose", "http://h"), "redact")
    assert first == again == ("curl", "--token", "***", "http://h")
    assert other == ("curl", "--token", "***", "--verbose", "http://h")
    assert redact_cmdline(["curl", "--token", SECRET], "redact") == ("curl", "--token", "***")
    assert redact_cmdline(("curl", "--token", SECRET), "full") == ("curl", "--token", SECRET)
    assert redact._redacted.cache_info().hits == 1
    for n in range(redact.REDACTED_KEPT + 10):
        redact_cmdline(("sleep", str(n)), "redact")
    assert redact._redacted.cache_info().currsize == redact.REDACTED_KEPT
