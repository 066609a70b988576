"""Small helpers shared by the bench scripts: build a C workload, run it, take medians."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "otlp_ebpf", "-q"]


def build(source: str, name: str, *flags: str) -> Path:
    work = Path(tempfile.mkdtemp(prefix="otlp-ebpf-bench-"))
    src = work / f"{name}.c"
    src.write_text(source)
    out = work / name
    cc = shutil.which("gcc") or "cc"
    subprocess.run([cc, "-O2", *flags, "-o", str(out), str(src)], check=True)
    return out


def median_of(runs: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(runs))


def run_quiet(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=True,
        **kwargs,  # type: ignore[arg-type]
    )


def env_with_src() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src")
    return env
