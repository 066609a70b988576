"""Nothing a host name holds reaches the terminal as a control sequence."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.text import Text

from otlp_ebpf import console
from otlp_ebpf.cli.app import run
from otlp_ebpf.formatters import cpu_table
from otlp_ebpf.model import CpuSnapshot, StackCount
from tests.formatters.formatter_fixtures import COMMON

HOSTILE = "evil\x1b]0;OWNED\x07\x1b[2J\u202egnp.exe\x9b31m"


def terminal(color: bool = True) -> console.SafeConsole:
    return console.SafeConsole(
        file=io.StringIO(),
        width=200,
        force_terminal=color,
        color_system="standard" if color else None,
        highlight=False,
    )


def test_symbol_and_process_names_in_tables_are_escaped() -> None:
    snap = CpuSnapshot(
        **COMMON, samples_total=3, stacks=(StackCount(1, 1, HOSTILE, ("main", HOSTILE), 3),)
    )
    term = terminal()

    cpu_table.render_table(snap, term, top=5)

    text = term.file.getvalue()  # type: ignore[attr-defined]
    assert "evil\\x1b]0;OWNED\\x07\\x1b[2J\\u202egnp.exe\\x9b31m" in text
    assert "\x07" not in text and "\u202e" not in text and "\x9b" not in text
    # The only escape sequences left are the console's own colours.
    assert "\x1b]" not in text and "\x1b[2J" not in text


def test_every_way_to_print_is_covered() -> None:
    term = terminal(color=False)
    term.print(Text(HOSTILE))
    term.print(HOSTILE, markup=False)
    term.print(console.escape(HOSTILE))
    text = term.file.getvalue()  # type: ignore[attr-defined]
    assert "\x1b" not in text and text.count("\\x1b]0;OWNED") == 3


def test_bytes_of_argv_that_are_not_utf8_print_as_escapes() -> None:
    term = terminal(color=False)
    term.print("./prog\udcff")
    assert term.file.getvalue() == "./prog\\xff\n"  # type: ignore[attr-defined]


def test_json_on_stdout_stays_exact_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snap = CpuSnapshot(
        **COMMON, samples_total=3, stacks=(StackCount(1, 1, HOSTILE, ("main", HOSTILE), 3),)
    )
    path = tmp_path / "s.json"
    path.write_text(json.dumps(snap.to_dict()))

    assert run(["report", "--json", str(path)]) == 0

    out = capsys.readouterr().out
    assert json.loads(out)["stacks"][0]["comm"] == HOSTILE
    assert "\x1b" not in out and "\x9b" not in out and "\u202e" not in out
