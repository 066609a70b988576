"""docs/cli.md and completions/ are generated from the parser: they must match it."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "tools" / "gen_docs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_current():
    gen = _generator()
    assert (ROOT / "docs" / "cli.md").read_text() == gen.cli_markdown(), "run `make docs`"


def test_cli_reference_names_every_command():
    text = (ROOT / "docs" / "cli.md").read_text()
    for command in ("cpu", "syscalls", "net", "mem", "report", "diff", "push", "doctor"):
        assert f"## `otlp-ebpf {command}`" in text


def test_completions_exist_for_each_shell():
    gen = _generator()
    for shell, name in gen.SHELLS.items():
        assert (ROOT / "completions" / name).read_text() == gen.completion(shell)
