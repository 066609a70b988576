"""Who a process belongs to: container and pod from its cgroup, service from its environment.

Every byte read here comes from a process that may be hostile: /proc/PID/cgroup and
/proc/PID/environ are read with a size bound, decoded with undecodable bytes kept as `\\xNN`,
and only well-formed identifiers (64 hex digits, a UUID) and bounded, control-free values are
kept. Nothing else of the environment is kept or logged (it holds secrets).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable

from otlp_ebpf import hosttext
from otlp_ebpf.errors import UsageError
from otlp_ebpf.otlp_settings import parse_key_values

CGROUP_ROOT = "/sys/fs/cgroup"
UNIFIED_ROOT = "/sys/fs/cgroup/unified"  # the v2 hierarchy of a hybrid (v1 + v2) host
MAX_CGROUP_BYTES = 16 * 1024
MAX_ENVIRON_BYTES = 256 * 1024  # the kernel's ARG_MAX-like bound is larger; we stop here
MAX_VALUE_CHARS = 256
MAX_KEY_CHARS = 128
MAX_ATTRIBUTES = 32
MAX_CACHED = 4096
# docker-<id>.scope, cri-containerd-<id>.scope, crio-<id>.scope, .../docker/<id>, libpod-<id>
CONTAINER_ID = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?(?=/|$)")
# kubepods-burstable-pod<uid with _>.slice (systemd driver) or kubepods/burstable/pod<uid>
POD_UID = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?(?=/|$)"
)
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _read_bounded(path: str, limit: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(limit)


def cgroup_paths(pid: int) -> list[str]:
    """The process's cgroup paths, the v2 one first (`0::/kubepods.slice/...`), then those of
    the v1 hierarchies of a hybrid host; [] when the process is gone."""
    try:
        raw = _read_bounded(f"/proc/{pid}/cgroup", MAX_CGROUP_BYTES)
    except OSError:
        return []
    paths = []
    for line in raw.split(b"\n"):
        parts = line.split(b":", 2)
        if len(parts) == 3:
            paths.append((parts[0] != b"0", hosttext.decode(parts[2])))
    return [path for _, path in sorted(paths, key=lambda p: p[0])]


def cgroup_of(pid: int) -> str:
    """The path that tells most about the process: the first showing a container, else a
    pod, else the v2 path."""
    paths = cgroup_paths(pid)
    for wanted in ("container.id", "k8s.pod.uid"):
        for path in paths:
            if wanted in cgroup_attributes(path):
                return path
    return paths[0] if paths else ""


def cgroup_attributes(path: str) -> dict[str, str]:
    """`container.id` and `k8s.pod.uid` where the cgroup path shows them (innermost wins)."""
    attrs = {}
    containers = CONTAINER_ID.findall(path)
    if containers:
        attrs["container.id"] = containers[-1]
    pods = POD_UID.findall(path)
    if pods:
        attrs["k8s.pod.uid"] = pods[-1].replace("_", "-")
    return attrs


def _clean(value: str, limit: int) -> str | None:
    """A value fit to send: bounded, no control characters (else None: left out)."""
    value = value.strip()
    if not value or len(value) > limit or CONTROL.search(value):
        return None
    return value


def environ_attributes(raw: bytes) -> dict[str, str]:
    """`OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SERVICE_NAME` from a raw environ block (NUL
    separated), the service name winning as the specification says; malformed entries and
    oversized or control-laden values are left out, never an error."""
    found: dict[str, str] = {}
    for entry in raw.split(b"\0"):
        for name in (b"OTEL_SERVICE_NAME=", b"OTEL_RESOURCE_ATTRIBUTES="):
            if entry.startswith(name):
                found[name[:-1].decode()] = hosttext.decode(entry[len(name) :])
    attrs: dict[str, str] = {}
    text = found.get("OTEL_RESOURCE_ATTRIBUTES", "")
    for item in text.split(",")[: MAX_ATTRIBUTES * 2]:
        try:
            pairs = parse_key_values(item, "OTEL_RESOURCE_ATTRIBUTES")
        except UsageError:
            continue
        for key, value in pairs.items():
            clean_key, clean_value = _clean(key, MAX_KEY_CHARS), _clean(value, MAX_VALUE_CHARS)
            if clean_key and clean_value and len(attrs) < MAX_ATTRIBUTES:
                attrs[clean_key] = clean_value
    service = _clean(found.get("OTEL_SERVICE_NAME", ""), MAX_VALUE_CHARS)
    if service:
        attrs["service.name"] = service
    return attrs


def process_attributes(pid: int) -> dict[str, str]:
    """Resource attributes of a live process from its cgroup and environment ({} once gone)."""
    attrs = cgroup_attributes(cgroup_of(pid))
    with contextlib.suppress(OSError):
        attrs.update(environ_attributes(_read_bounded(f"/proc/{pid}/environ", MAX_ENVIRON_BYTES)))
    return attrs


class ProcessAttributes:
    """Per-pid attributes, read once per process and forgotten when it is no longer seen
    (so a reused pid is read again, and the cache stays bounded)."""

    def __init__(self) -> None:
        self._cache: dict[int, dict[str, str]] = {}

    def of(self, pids: Iterable[int]) -> dict[int, dict[str, str]]:
        wanted = list(dict.fromkeys(pids))[:MAX_CACHED]
        fresh = {pid: self._cache.get(pid) or process_attributes(pid) for pid in wanted}
        self._cache = fresh
        return {pid: attrs for pid, attrs in fresh.items() if attrs}


def resolve_cgroup(path: str) -> str:
    """A cgroup directory given absolute or relative to /sys/fs/cgroup; UsageError if it is
    not one."""
    if len(path) > 4096 or "\0" in path:
        raise UsageError("--cgroup: not a cgroup path")
    if path.startswith(CGROUP_ROOT + "/") or path == CGROUP_ROOT:
        candidates = [path]
    else:  # relative to the v2 hierarchy: /sys/fs/cgroup, or .../unified on a hybrid host
        candidates = [os.path.join(r, path.lstrip("/")) for r in (UNIFIED_ROOT, CGROUP_ROOT)]
    full = os.path.realpath(
        next(
            (c for c in candidates if os.path.isfile(os.path.join(c, "cgroup.procs"))),
            candidates[-1],
        )
    )
    if not (full == CGROUP_ROOT or full.startswith(CGROUP_ROOT + "/")):
        raise UsageError(f"--cgroup {hosttext.escape_controls(path)}: not under {CGROUP_ROOT}")
    if not os.path.isfile(os.path.join(full, "cgroup.procs")):
        raise UsageError(
            f"--cgroup {hosttext.escape_controls(path)}: no such cgroup (no cgroup.procs in {full})"
        )
    return full


def pids_in_cgroup(directory: str) -> tuple[int, ...]:
    """Every process in the cgroup subtree at `directory` (cgroup v2), sorted."""
    pids: set[int] = set()
    for root, _dirs, files in os.walk(directory):
        if "cgroup.procs" not in files:
            continue
        try:
            raw = _read_bounded(os.path.join(root, "cgroup.procs"), 4 * 1024 * 1024)
        except OSError:
            continue
        pids.update(int(line) for line in raw.split() if line.isdigit())
    return tuple(sorted(pids))


def cgroup_target_pids(path: str, own_pid: int | None = None) -> tuple[int, ...]:
    """The processes `--cgroup PATH` collects from (this process excluded); UsageError when
    the cgroup holds none."""
    directory = resolve_cgroup(path)
    me = os.getpid() if own_pid is None else own_pid
    pids = tuple(p for p in pids_in_cgroup(directory) if p != me)
    if not pids:
        raise UsageError(f"--cgroup {hosttext.escape_controls(path)}: the cgroup has no process")
    return pids
