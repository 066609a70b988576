"""The packaged BPF objects: present, and not older than their sources."""

from __future__ import annotations

from pathlib import Path

from otlp_ebpf.bpf.deps import is_stale
from otlp_ebpf.runtime.loader import object_path


def bpf_dir() -> Path:
    return object_path("x").parent


def object_status() -> list[tuple[str, bool, str]]:
    """(object name, ok, detail) for every NAME.bpf.c shipped with the package."""
    directory = bpf_dir()
    out = []
    for source in sorted(directory.glob("*.bpf.c")):
        obj = source.with_suffix(".o")
        name = obj.name
        if not obj.exists():
            out.append((name, False, "missing"))
        elif is_stale(source):
            out.append((name, False, "older than its source"))
        else:
            out.append((name, True, f"{obj.stat().st_size} bytes"))
    return out
