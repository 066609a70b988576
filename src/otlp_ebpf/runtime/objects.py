"""The packaged BPF objects: present, not older than their sources, and what they attach to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from otlp_ebpf.bpf.deps import is_stale
from otlp_ebpf.runtime.loader import BpfObject, object_path

# libbpf's section prefixes (SEC("...")) -> the kind of attach point they name.
_SECTION_KINDS = {
    "tp": "tracepoint",
    "tracepoint": "tracepoint",
    "tp_btf": "tp_btf",
    "raw_tp": "raw_tracepoint",
    "raw_tracepoint": "raw_tracepoint",
    "perf_event": "perf_event",
    "uprobe": "uprobe",
    "uretprobe": "uprobe",
    "kprobe": "kprobe",
    "kretprobe": "kprobe",
    "fentry": "fentry",
    "fexit": "fentry",
}


@dataclass(frozen=True)
class AttachPoint:
    """One program of a BPF object and the section name libbpf attaches it by."""

    object: str  # file name, e.g. net.bpf.o
    program: str
    section: str  # e.g. tp/tcp/tcp_destroy_sock, tp_btf/sched_switch, perf_event, uprobe

    @property
    def kind(self) -> str:
        """tracepoint, tp_btf, raw_tracepoint, perf_event, uprobe, kprobe, fentry, or the
        section's own prefix for a kind not listed here."""
        prefix = self.section.split("/", 1)[0]
        return _SECTION_KINDS.get(prefix, prefix)

    @property
    def target(self) -> str:
        """What it attaches to: `tcp/tcp_destroy_sock` for a tracepoint, `sched_switch` for a
        BTF or raw tracepoint, "" where the section names none (perf_event, uprobe)."""
        return self.section.partition("/")[2]


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


def object_names() -> list[str]:
    """NAME of every bpf/NAME.bpf.c shipped with the package."""
    return [source.name.removesuffix(".bpf.c") for source in sorted(bpf_dir().glob("*.bpf.c"))]


def attach_points(name: str) -> list[AttachPoint]:
    """Every program of bpf/NAME.bpf.o, in the object's order, as libbpf reads it (opened,
    not loaded: no privileges needed)."""
    with BpfObject.open(name) as obj:
        return [AttachPoint(obj.path.name, p, obj.section_of(p)) for p in obj.program_names()]
