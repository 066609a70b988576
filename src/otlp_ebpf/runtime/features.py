"""Probe what this machine offers: privileges, BTF, tracefs, tracepoints, program and map types,
perf events, uprobes. Used by `doctor` and by collectors to degrade per program."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from otlp_ebpf.runtime import libbpf

BTF_PATH = Path("/sys/kernel/btf/vmlinux")
TRACEFS_DIRS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
PROG_TYPES = {"kprobe/uprobe": 2, "tracepoint": 5, "perf_event": 7, "raw_tracepoint": 17}
MAP_TYPES = {
    "hash": 1,
    "array": 2,
    "percpu_hash": 5,
    "percpu_array": 6,
    "ringbuf": 27,
    "task_storage": 29,
}


@dataclass(frozen=True)
class Check:
    """One line of `doctor`: what, whether it works, detail, and the fix when it does not."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def btf_available() -> bool:
    return BTF_PATH.exists()


@cache
def tp_btf_supported() -> bool:
    """tp_btf programs need the kernel's BTF (collectors fall back to classic tracepoints)."""
    return btf_available()


def tracefs() -> Path | None:
    """The mounted tracefs, mounting it at /sys/kernel/tracing when it is missing (root)."""
    for path in TRACEFS_DIRS:
        if _is_dir(path / "events"):
            return path
    if os.geteuid() == 0 and _is_dir(TRACEFS_DIRS[0]):
        subprocess.run(
            ["mount", "-t", "tracefs", "nodev", str(TRACEFS_DIRS[0])],
            check=False,
            capture_output=True,
        )
        if _is_dir(TRACEFS_DIRS[0] / "events"):
            return TRACEFS_DIRS[0]
    return None


def tracepoint_exists(category: str, name: str) -> bool:
    root = tracefs()
    return root is not None and _is_dir(root / "events" / category / name)


def _is_dir(path: Path) -> bool:
    """is_dir that says False where we may not look (tracefs is root-only)."""
    try:
        return path.is_dir()
    except OSError:
        return False


def prog_type_supported(prog_type: int) -> bool:
    try:
        return bool(libbpf.lib().libbpf_probe_bpf_prog_type(prog_type, None) == 1)
    except OSError:
        return False


def map_type_supported(map_type: int) -> bool:
    try:
        return bool(libbpf.lib().libbpf_probe_bpf_map_type(map_type, None) == 1)
    except OSError:
        return False


def perf_events_ok() -> tuple[bool, str]:
    import ctypes

    from otlp_ebpf.runtime.probes import (
        PERF_COUNT_SW_CPU_CLOCK,
        PERF_TYPE_SOFTWARE,
        PerfEventAttr,
        perf_event_open,
    )

    attr = PerfEventAttr(
        type=PERF_TYPE_SOFTWARE,
        size=ctypes.sizeof(PerfEventAttr),
        config=PERF_COUNT_SW_CPU_CLOCK,
        sample_period_or_freq=99,
        flags=1 << 10 | 1,
    )
    try:
        fd = perf_event_open(attr, -1, 0)
    except OSError as exc:
        return False, exc.strerror or str(exc)
    os.close(fd)
    return True, "software cpu-clock"


def uprobes_available() -> bool:
    return Path("/sys/bus/event_source/devices/uprobe/type").exists()


def kernel_release() -> str:
    return os.uname().release
