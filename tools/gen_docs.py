#!/usr/bin/env python3
"""Generate docs/cli.md and completions/ from the CLI parser itself, so neither drifts.

`make docs` runs it; a unit test fails when the committed files differ from what it writes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer

ROOT = Path(__file__).resolve().parent.parent
SHELLS = {"bash": "otlp-ebpf.bash", "zsh": "_otlp-ebpf", "fish": "otlp-ebpf.fish"}


def _command() -> Any:
    from otlp_ebpf.cli.app import app

    return typer.main.get_command(app)


def cli_markdown() -> str:
    """One section per command: its help text and options, as the parser knows them."""
    root = _command()
    lines = [
        "# Command-line reference",
        "",
        "Generated from the parser by `tools/gen_docs.py`; do not edit by hand.",
        "",
    ]
    ctx = typer.Context(root, info_name="otlp-ebpf")
    lines += _section(root, ctx, "otlp-ebpf")
    for name in sorted(root.list_commands(ctx)):
        cmd = root.get_command(ctx, name)
        assert cmd is not None
        lines += _section(cmd, typer.Context(cmd, info_name=name, parent=ctx), f"otlp-ebpf {name}")
    return "\n".join(lines).rstrip() + "\n"


def _section(cmd: Any, ctx: typer.Context, title: str) -> list[str]:
    out = [f"## `{title}`", ""]
    usage = " ".join(cmd.collect_usage_pieces(ctx))
    out += ["```", f"{title} {usage}".rstrip(), "```", ""]
    if cmd.help:
        out += [cmd.help.strip(), ""]
    rows = [p.get_help_record(ctx) for p in cmd.get_params(ctx)]
    rows = [r for r in rows if r]
    if rows:
        out += ["| option | description |", "|---|---|"]
        for opts, text in rows:
            text = " ".join(text.split()).replace("|", "\\|")
            out.append(f"| `{opts}` | {text} |")
        out.append("")
    return out


def completion(shell: str) -> str:
    env = dict(os.environ, _OTLP_EBPF_COMPLETE=f"source_{shell}")
    proc = subprocess.run(
        [sys.executable, "-c", "from otlp_ebpf.cli.app import app; app(prog_name='otlp-ebpf')"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout


def main() -> int:
    (ROOT / "docs" / "cli.md").write_text(cli_markdown())
    folder = ROOT / "completions"
    folder.mkdir(exist_ok=True)
    for shell, name in SHELLS.items():
        (folder / name).write_text(completion(shell))
    return 0


if __name__ == "__main__":
    sys.exit(main())
