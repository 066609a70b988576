#!/usr/bin/env python3
"""Compile src/otlp_ebpf/bpf/*.bpf.c into CO-RE objects shipped inside the package.

Used by `make bpf` and by the package build hook, so wheels, sdists and editable installs all
carry objects and nothing needs clang at run time. Rebuilds an object only when it is older
than its source or a header it includes.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

BPF_DIR = Path(__file__).resolve().parent.parent / "src" / "otlp_ebpf" / "bpf"
ARCH = {"x86_64": "x86", "aarch64": "arm64"}.get(platform.machine(), "x86")


def _load_deps() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bpf_deps", BPF_DIR / "deps.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stale = _load_deps().is_stale


def compile_one(source: Path, clang: str, strip: str | None) -> None:
    obj = source.with_suffix(".o")
    tmp = obj.with_suffix(".o.tmp")
    cmd = [
        clang,
        "-O2",
        "-g",
        "-Wall",
        "-Werror",
        "-target",
        "bpf",
        "-mcpu=v3",  # atomic fetch-and-add (kernel 5.12+) and 32-bit jumps
        f"-D__TARGET_ARCH_{ARCH}",
        "-I",
        str(BPF_DIR),
        "-c",
        str(source),
        "-o",
        str(tmp),
    ]
    subprocess.run(cmd, check=True)
    if strip:
        # Drop DWARF but keep .BTF/.BTF.ext, which CO-RE relocation needs.
        subprocess.run([strip, "-g", str(tmp)], check=True)
    os.replace(tmp, obj)


def main() -> int:
    sources = sorted(BPF_DIR.glob("*.bpf.c"))
    todo = [s for s in sources if stale(s)]
    if not todo:
        return 0
    clang = shutil.which("clang") or shutil.which("clang-14")
    if clang is None:
        print("build_bpf: clang not found; run `make setup` (installs clang)", file=sys.stderr)
        return 3
    strip = shutil.which("llvm-strip") or shutil.which("llvm-strip-14")
    for source in todo:
        print(f"build_bpf: {source.name}", file=sys.stderr)
        compile_one(source, clang, strip)
    return 0


if __name__ == "__main__":
    sys.exit(main())
