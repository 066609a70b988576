"""One description per signal (cpu, syscalls, net, mem): what it loads, records and shows.

`doctor` (which BPF objects, and so which attach points, each signal needs) and `report`
(which table, which event count) are built from these, and so is anything that runs every
signal at once. A descriptor names the signal's BPF objects, its snapshot type (whose `kind`
is also the signal's section in a combined snapshot), the OTLP signals its mapping produces,
its terminal table, its event count and its collector. Collectors and formatters are imported
only when a descriptor's function is called: reading the descriptors costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from otlp_ebpf.errors import UsageError
from otlp_ebpf.model import CpuSnapshot, MemSnapshot, NetSnapshot, Snapshot, SyscallsSnapshot
from otlp_ebpf.otlp_settings import Signal
from otlp_ebpf.targets import TargetSpec

if TYPE_CHECKING:
    from rich.console import Console


class CollectorConfig(Protocol):
    """What every collector's config has: who to record, and for how long (None: until
    Ctrl-C/SIGTERM or until the launched command exits)."""

    @property
    def targets(self) -> TargetSpec: ...

    @property
    def duration_s(self) -> float | None: ...


@dataclass(frozen=True)
class SignalSpec:
    """Everything the rest of the tool needs to know about one signal."""

    name: str  # the command, the snapshot's kind, its section in a combined snapshot
    summary: str
    snapshot_type: type[Snapshot]
    bpf_objects: tuple[str, ...]  # NAME of each bpf/NAME.bpf.o the collector may load
    otlp_signals: tuple[Signal, ...]  # what formatters/otlp_request.py makes of a snapshot
    event_name: str  # what the one-line account counts
    count_events: Callable[[Snapshot], int]
    render_table: Callable[[Snapshot, Console, int | None], None]  # top: None for all rows
    default_config: Callable[[TargetSpec, float | None], CollectorConfig]
    collect: Callable[[CollectorConfig], Snapshot]


# -- cpu ------------------------------------------------------------------------------------------


def _cpu_events(snapshot: Snapshot) -> int:
    assert isinstance(snapshot, CpuSnapshot)
    return snapshot.samples_total + sum(s.count for s in snapshot.off_cpu)


def _cpu_table(snapshot: Snapshot, console: Console, top: int | None) -> None:
    from otlp_ebpf.formatters import cpu_table

    cpu_table.render_table(snapshot, console, top=top)


def _cpu_config(targets: TargetSpec, duration_s: float | None) -> CollectorConfig:
    from otlp_ebpf.collectors.cpu_sampling import CpuConfig

    return CpuConfig(targets=targets, duration_s=duration_s)


def _cpu_collect(config: CollectorConfig) -> Snapshot:
    from otlp_ebpf.collectors import cpu

    assert isinstance(config, cpu.CpuConfig)
    return cpu.collect(config)


# -- syscalls -------------------------------------------------------------------------------------


def _syscalls_events(snapshot: Snapshot) -> int:
    assert isinstance(snapshot, SyscallsSnapshot)
    return sum(s.count for s in snapshot.syscalls)


def _syscalls_table(snapshot: Snapshot, console: Console, top: int | None) -> None:
    from otlp_ebpf.formatters import syscalls_table

    assert isinstance(snapshot, SyscallsSnapshot)
    syscalls_table.render_table(snapshot, console, by_process=False, top=top)


def _syscalls_config(targets: TargetSpec, duration_s: float | None) -> CollectorConfig:
    from otlp_ebpf.collectors.syscalls import SyscallsConfig

    return SyscallsConfig(targets=targets, duration_s=duration_s)


def _syscalls_collect(config: CollectorConfig) -> Snapshot:
    from otlp_ebpf.collectors import syscalls

    assert isinstance(config, syscalls.SyscallsConfig)
    return syscalls.collect(config)


# -- net ------------------------------------------------------------------------------------------


def _net_events(snapshot: Snapshot) -> int:
    assert isinstance(snapshot, NetSnapshot)
    return len(snapshot.connections)


def _net_table(snapshot: Snapshot, console: Console, top: int | None) -> None:
    from otlp_ebpf.formatters import net_table

    assert isinstance(snapshot, NetSnapshot)
    net_table.render_table(snapshot, console, top=top)


def _net_config(targets: TargetSpec, duration_s: float | None) -> CollectorConfig:
    from otlp_ebpf.collectors.net import NetConfig

    return NetConfig(targets=targets, duration_s=duration_s)


def _net_collect(config: CollectorConfig) -> Snapshot:
    from otlp_ebpf.collectors import net

    assert isinstance(config, net.NetConfig)
    return net.collect(config)


# -- mem ------------------------------------------------------------------------------------------


def _mem_events(snapshot: Snapshot) -> int:
    assert isinstance(snapshot, MemSnapshot)
    return snapshot.allocations_total + snapshot.frees_total


def _mem_table(snapshot: Snapshot, console: Console, top: int | None) -> None:
    from otlp_ebpf.formatters import mem_table

    assert isinstance(snapshot, MemSnapshot)
    mem_table.render_table(snapshot, console, top=top)


def _mem_config(targets: TargetSpec, duration_s: float | None) -> CollectorConfig:
    from otlp_ebpf.collectors.mem import MemConfig

    return MemConfig(targets=targets, duration_s=duration_s)


def _mem_collect(config: CollectorConfig) -> Snapshot:
    from otlp_ebpf.collectors import mem

    assert isinstance(config, mem.MemConfig)
    return mem.collect(config)


CPU = SignalSpec(
    name="cpu",
    summary="on-CPU samples and off-CPU blocked time by stack",
    snapshot_type=CpuSnapshot,
    bpf_objects=("cpu", "cpu_dwarf"),
    otlp_signals=("profiles", "metrics"),
    event_name="samples",
    count_events=_cpu_events,
    render_table=_cpu_table,
    default_config=_cpu_config,
    collect=_cpu_collect,
)
SYSCALLS = SignalSpec(
    name="syscalls",
    summary="syscall counts, errors by errno and latency per process",
    snapshot_type=SyscallsSnapshot,
    bpf_objects=("syscalls",),
    otlp_signals=("metrics",),
    event_name="syscalls",
    count_events=_syscalls_events,
    render_table=_syscalls_table,
    default_config=_syscalls_config,
    collect=_syscalls_collect,
)
NET = SignalSpec(
    name="net",
    summary="TCP connections: bytes, retransmits, resets, RTT, drops by reason",
    snapshot_type=NetSnapshot,
    bpf_objects=("net",),
    otlp_signals=("metrics",),
    event_name="connections",
    count_events=_net_events,
    render_table=_net_table,
    default_config=_net_config,
    collect=_net_collect,
)
MEM = SignalSpec(
    name="mem",
    summary="outstanding allocations by stack, page faults, kernel allocations",
    snapshot_type=MemSnapshot,
    bpf_objects=("mem",),
    otlp_signals=("profiles", "metrics"),
    event_name="allocations and frees",
    count_events=_mem_events,
    render_table=_mem_table,
    default_config=_mem_config,
    collect=_mem_collect,
)

SIGNALS: tuple[SignalSpec, ...] = (CPU, SYSCALLS, NET, MEM)


def signal_named(name: str) -> SignalSpec:
    """The descriptor of signal `name`; UsageError naming the known ones otherwise."""
    for spec in SIGNALS:
        if spec.name == name:
            return spec
    known = ", ".join(spec.name for spec in SIGNALS)
    raise UsageError(f"unknown signal {name!r}; known signals: {known}")


def signal_of(snapshot: Snapshot) -> SignalSpec:
    """The descriptor of the signal `snapshot` was recorded by."""
    return signal_named(snapshot.kind)


def users_of(bpf_object: str) -> tuple[str, ...]:
    """Names of the signals that load bpf/`bpf_object`.bpf.o."""
    return tuple(spec.name for spec in SIGNALS if bpf_object in spec.bpf_objects)
