"""The layer contract (pyproject.toml [tool.importlinter], docs/architecture.md) holds for the
package, and `lint-imports` fails the build when a change breaks it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "otlp_ebpf"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
LAYERS = "layers: data flows one way, nothing imports the cli"
READ_ONLY = "formatters and analysis read snapshots only: never the runtime or the collectors"
NO_EXPORT = "formatters never import export (what both need lives in otlp_settings)"
ACYCLIC = "no import cycle anywhere in the package"


def lint_imports(source_root: Path) -> tuple[int, str]:
    """Run the project's contracts over the package found under `source_root`."""
    env = {**os.environ, "PYTHONPATH": str(source_root)}
    proc = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=source_root,
        timeout=120,
    )
    return proc.returncode, proc.stdout + proc.stderr


def verdicts(output: str) -> dict[str, str]:
    """Contract name -> KEPT or BROKEN, from lint-imports' summary lines."""
    found = {}
    for line in output.splitlines():
        for verdict in ("KEPT", "BROKEN"):
            if line.rstrip().endswith(verdict):
                found[line.rstrip()[: -len(verdict)].strip()] = verdict
    return found


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """A copy of the package's Python sources to break on purpose; returns its source root."""
    shutil.copytree(
        PACKAGE,
        tmp_path / "otlp_ebpf",
        ignore=shutil.ignore_patterns("__pycache__", "*.o", "*.c", "*.h"),
    )
    return tmp_path


def add_import(module: Path, statement: str) -> None:
    module.write_text(module.read_text() + f"\n{statement}  # noqa\n")


def test_the_package_keeps_every_contract() -> None:
    code, output = lint_imports(ROOT / "src")
    assert code == 0, output
    assert set(verdicts(output).values()) == {"KEPT"}
    assert set(verdicts(output)) == {LAYERS, READ_ONLY, NO_EXPORT, ACYCLIC}


def test_a_formatter_importing_the_runtime_breaks_the_build(package_copy: Path) -> None:
    add_import(package_copy / "otlp_ebpf/formatters/folded.py", "import otlp_ebpf.runtime.loader")
    code, output = lint_imports(package_copy)
    assert code != 0
    assert verdicts(output)[READ_ONLY] == "BROKEN"
    assert "otlp_ebpf.formatters.folded -> otlp_ebpf.runtime.loader" in output


def test_a_formatter_importing_export_breaks_the_build(package_copy: Path) -> None:
    add_import(package_copy / "otlp_ebpf/formatters/otlp_request.py", "import otlp_ebpf.export")
    code, output = lint_imports(package_copy)
    assert code != 0
    assert verdicts(output)[NO_EXPORT] == "BROKEN"


def test_importing_the_cli_from_below_breaks_the_build(package_copy: Path) -> None:
    add_import(package_copy / "otlp_ebpf/collectors/base.py", "import otlp_ebpf.cli.common")
    code, output = lint_imports(package_copy)
    assert code != 0
    assert verdicts(output)[LAYERS] == "BROKEN"


def test_an_import_cycle_inside_one_layer_breaks_the_build(package_copy: Path) -> None:
    # kernel -> perfmap -> kernel: allowed by the layers (one package), caught as a cycle.
    add_import(package_copy / "otlp_ebpf/symbolize/kernel.py", "import otlp_ebpf.symbolize.perfmap")
    add_import(package_copy / "otlp_ebpf/symbolize/perfmap.py", "import otlp_ebpf.symbolize.kernel")
    code, output = lint_imports(package_copy)
    assert code != 0
    assert verdicts(output) == {
        LAYERS: "KEPT",
        READ_ONLY: "KEPT",
        NO_EXPORT: "KEPT",
        ACYCLIC: "BROKEN",
    }
