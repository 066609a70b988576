"""The package builds and sends OTLP with opentelemetry-proto alone: no module of it may import
the OpenTelemetry SDK or its exporters (no longer dependencies, though a development
environment may still have them installed, where an import would go unnoticed)."""

from __future__ import annotations

import subprocess
import sys

IMPORT_EVERY_MODULE = """
import importlib, pkgutil, sys, otlp_ebpf
for module in pkgutil.walk_packages(otlp_ebpf.__path__, "otlp_ebpf."):
    if module.name != "otlp_ebpf.__main__":  # runs the CLI
        importlib.import_module(module.name)
prefixes = ("opentelemetry.sdk", "opentelemetry.exporter", "requests")
print("\\n".join(sorted(n for n in sys.modules if n.startswith(prefixes))))
"""


def test_no_module_imports_the_sdk_or_its_exporters() -> None:
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERY_MODULE], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == []
