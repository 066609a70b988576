"""The packaged BPF objects: present, and not older than their sources."""

from __future__ import annotations

from pathlib import Path

from otlp_ebpf.bpf.deps import is_stale
from otlp_ebpf.runtime.loader import object_path


def bpf_dir() -> Path:
    return object_path("x").parent


def source_checkout() -> bool:
    """Running from a source tree (editable install), where sources can change under the
    objects. An installed wheel's file times say nothing: pip writes files in archive order."""
    return (bpf_dir().parents[2] / "tools" / "build_bpf.py").exists()


def object_status() -> list[tuple[str, bool, str]]:
    """(object name, ok, detail) for every NAME.bpf.c shipped with the package."""
    directory = bpf_dir()
    check_age = source_checkout()
    out = []
    for source in sorted(directory.glob("*.bpf.c")):
        obj = source.with_suffix(".o")
        name = obj.name
        if not obj.exists():
            out.append((name, False, "missing"))
        elif check_age and is_stale(source):
            out.append((name, False, "older than its source"))
        else:
            out.append((name, True, f"{obj.stat().st_size} bytes"))
    return out
