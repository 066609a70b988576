"""Whether this process may use BPF: root, CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON.

The loader asks it to tell a privilege problem from a verifier rejection, doctor to report it.
"""

from __future__ import annotations

import os
from pathlib import Path

from otlp_ebpf.errors import EnvironmentLacks

CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39


def effective_caps() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def privileged() -> bool:
    caps = effective_caps()
    has = lambda cap: bool(caps >> cap & 1)  # noqa: E731
    return os.geteuid() == 0 or has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON))


HINT = (
    "run as root (sudo), or grant CAP_BPF and CAP_PERFMON "
    "(setcap cap_bpf,cap_perfmon+ep); `otlp-ebpf doctor` checks"
)


def require(what: str) -> None:
    """Refuse, before any kernel feature is probed, a process that may not use BPF.

    Without privileges tracefs cannot be read, so every tracepoint looks absent and a
    kernel feature check would blame the kernel ("needs Linux 6.3"): say the real cause."""
    if not privileged():
        raise EnvironmentLacks(
            f"{what} needs root, or CAP_BPF and CAP_PERFMON (running as uid {os.geteuid()} "
            "without them)",
            hint=HINT,
        )
