"""Typed, immutable snapshots: the one contract between collectors and everything after them.

A collector builds a snapshot; formatters, exporters and analysis read it. A snapshot round-trips
through JSON (`to_dict` / `snapshot_from_dict`) so `report`, `diff` and `analyze` can work on
files written by an earlier run. The JSON layout is documented in docs/snapshot.md.

Frames are plain strings, root first. Kernel frames end in `_[k]` (the folded-format
convention); an unresolved user frame is `module+0xoffset`. `modules`, when present, runs
parallel to `frames` and names the file each frame came from ("" when unknown).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar, Literal

from otlp_ebpf.bounded import read_bounded
from otlp_ebpf.errors import UsageError

SNAPSHOT_VERSION = 1
KERNEL_SUFFIX = "_[k]"

Kind = Literal["cpu", "syscalls", "net", "mem", "record"]


def is_kernel_frame(name: str) -> bool:
    return name.endswith(KERNEL_SUFFIX)


@dataclass(frozen=True)
class ProcessInfo:
    """What we knew of a target process while it lived (for OTLP resources and tables)."""

    pid: int
    comm: str
    exe: str = ""
    cmdline: tuple[str, ...] = ()


@dataclass(frozen=True)
class CostTick:
    """The tool's cost in one interval of a run under an overhead budget, in percent of one
    core (its CPU, its helper processes' and its BPF programs' run time), and the rates it
    ran at then (`cpu_hz`: on-CPU samples per second on each CPU), and `unwind`, how on-CPU
    user stacks were taken at the end of it when the budget may change that ("dwarf", or "fp"
    once it fell back to frame pointers; "" when it cannot change)."""

    t_s: float
    cost_pct: float
    rates: Mapping[str, float] = field(default_factory=dict)
    unwind: str = ""


@dataclass(frozen=True)
class SelfCost:
    """The tool's own cost over the run: user+system CPU, BPF program time, peak RSS.

    With an overhead budget (`budget_pct` > 0) it also says what the steady state cost (the
    collection loop, in percent of one core), what loading and attaching (`startup_cpu_s`) and
    the final reading and symbolization (`final_cpu_s`) cost, and each interval's cost and
    rates."""

    cpu_s: float = 0.0
    bpf_ns: int = 0
    bpf_runs: int = 0
    peak_rss_kb: int = 0
    budget_pct: float = 0.0
    steady_pct: float = 0.0
    startup_cpu_s: float = 0.0
    final_cpu_s: float = 0.0
    ticks: tuple[CostTick, ...] = ()


@dataclass(frozen=True)
class StackCount:
    """One distinct stack of one thread and how often (or how long) it was seen.

    `count` is samples (on-CPU), blocks (off-CPU) or allocations (mem); `total_ns` carries
    blocked time for off-CPU stacks and is 0 elsewhere.
    """

    pid: int
    tid: int
    comm: str
    frames: tuple[str, ...]
    count: int
    total_ns: int = 0
    modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class Allocation:
    """Outstanding (allocated, not freed) memory for one user stack."""

    pid: int
    frames: tuple[str, ...]
    bytes: int
    count: int
    comm: str = ""
    modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class SyscallStat:
    """Aggregates for one (pid, syscall). `hist` holds log2 latency slots: slot i counts
    calls with latency in [2**i, 2**(i+1)) ns (slot 0 also takes 0 and 1 ns)."""

    pid: int
    comm: str
    name: str
    count: int
    errors: int
    errno: Mapping[str, int]
    total_ns: int
    p50_ns: int
    p99_ns: int
    max_ns: int
    min_ns: int = 0
    hist: tuple[int, ...] = ()


@dataclass(frozen=True)
class IntervalPoint:
    """Counts per syscall (or bytes per connection) for one `--interval` tick."""

    t_s: float
    values: Mapping[str, int]


@dataclass(frozen=True)
class CpuTick:
    """On-CPU samples in one timeline interval: per process (pid as text) and per leaf
    function (the top ones; the rest under OTHER_KEY, so each row sums to its samples).

    With off-CPU recording (`record --off-cpu`), the nanoseconds threads spent blocked in
    blocks that ended in the interval: per process, and per blocking site (`blocked_site`:
    where user code waited and the system call it waited in; the top ones, the rest under
    OTHER_KEY)."""

    samples: Mapping[str, int] = field(default_factory=dict)
    functions: Mapping[str, int] = field(default_factory=dict)
    off_cpu_ns: Mapping[str, int] = field(default_factory=dict)
    blocked_ns: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SyscallTick:
    """One syscall (all target processes together) in one timeline interval. Latency
    percentiles come from the interval's own log2 histogram, kept in `hist`."""

    name: str
    count: int
    errors: int
    p50_ns: int
    p99_ns: int
    # The interval's log2 latency histogram, sparse: slot (as text) -> calls, slot i
    # holding [2**i, 2**(i+1)) ns as in SyscallStat.hist.
    hist: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ConnTick:
    """One connection (`label` as in net's series) in one timeline interval: what it moved
    and what happened to it then; `srtt_us` is its smoothed RTT at the end of the interval."""

    label: str
    tx_bytes: int
    rx_bytes: int
    retransmits: int = 0
    resets: int = 0
    srtt_us: float = 0.0


@dataclass(frozen=True)
class NetTick:
    connections: tuple[ConnTick, ...] = ()
    drops: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class MemTick:
    """Outstanding bytes at the end of the interval (a level); the rest are counts in it."""

    outstanding_bytes: int = 0
    allocations: int = 0
    frees: int = 0
    page_faults: int = 0


@dataclass(frozen=True)
class TimelineRow:
    """One interval of a recording, ending `t_s` seconds after the run started. A signal
    not recorded has no entry."""

    t_s: float
    cpu: CpuTick | None = None
    syscalls: tuple[SyscallTick, ...] | None = None
    net: NetTick | None = None
    mem: MemTick | None = None


@dataclass(frozen=True)
class Connection:
    """One TCP connection's life. Open connections have `state` != "CLOSE" and `open` set."""

    pid: int
    comm: str
    family: int
    laddr: str
    lport: int
    raddr: str
    rport: int
    tx_bytes: int
    rx_bytes: int
    duration_ms: float
    retransmits: int
    connect_latency_us: float = 0.0
    srtt_us: float = 0.0
    resets_sent: int = 0
    resets_received: int = 0
    state: str = "CLOSE"
    open: bool = False
    started_at_ns: int = 0
    # Opened before the run: duration and bytes count from when it was first seen.
    started_before_run: bool = False


def connection_label(conn: Connection) -> str:
    """One connection as a series key: `pid comm laddr:lport > raddr:rport`."""
    local, remote = _endpoint(conn.laddr, conn.lport), _endpoint(conn.raddr, conn.rport)
    return f"{conn.pid} {conn.comm} {local} > {remote}"


def _endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


@dataclass(frozen=True)
class StackProfile:
    """A weighted stack list ready for any flame-style format (folded, speedscope, html, pprof,
    OTLP profiles). `stacks` carries (frames root-first including a leading comm frame when
    `with_comm`, weight). Built from a snapshot by `Snapshot.stack_profiles()`."""

    name: str
    sample_type: str
    unit: Literal["count", "nanoseconds", "bytes"]
    stacks: tuple[StackCount, ...]
    period_ns: int = 0

    def weight(self, stack: StackCount) -> int:
        if self.unit == "nanoseconds":
            return stack.total_ns
        return stack.count

    @property
    def total(self) -> int:
        return sum(self.weight(s) for s in self.stacks)


@dataclass(frozen=True)
class Snapshot:
    """Fields common to every kind of snapshot."""

    kind: ClassVar[Kind]
    started_at: str
    duration_s: float
    host: str
    targets: tuple[str, ...] = ()
    lost_events: Mapping[str, int] = field(default_factory=dict)
    processes: tuple[ProcessInfo, ...] = ()
    self_cost: SelfCost = field(default_factory=SelfCost)
    notes: tuple[str, ...] = ()
    # The launched command's status when it ended by itself: exit code, or -N for signal N.
    command_exit: int | None = None

    @property
    def lost_total(self) -> int:
        return sum(self.lost_events.values())

    def stack_profiles(self) -> list[StackProfile]:
        """The flame-able views of this snapshot; empty for table-only kinds."""
        return []

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "version": SNAPSHOT_VERSION}
        data.update(_plain(dataclasses.asdict(self)))
        return data


@dataclass(frozen=True)
class CpuSnapshot(Snapshot):
    kind: ClassVar[Kind] = "cpu"
    frequency_hz: int = 99
    samples_total: int = 0
    stacks: tuple[StackCount, ...] = ()
    off_cpu: tuple[StackCount, ...] = ()
    off_cpu_min_block_us: int = 0

    def stack_profiles(self) -> list[StackProfile]:
        profiles = []
        if self.stacks or not self.off_cpu:
            period = 1_000_000_000 // self.frequency_hz if self.frequency_hz else 0
            profiles.append(StackProfile("cpu", "samples", "count", self.stacks, period))
        if self.off_cpu:
            profiles.append(StackProfile("off_cpu", "off_cpu", "nanoseconds", self.off_cpu))
        return profiles


@dataclass(frozen=True)
class SyscallsSnapshot(Snapshot):
    kind: ClassVar[Kind] = "syscalls"
    syscalls: tuple[SyscallStat, ...] = ()
    series: tuple[IntervalPoint, ...] = ()
    interval_s: float = 0.0


@dataclass(frozen=True)
class NetSnapshot(Snapshot):
    kind: ClassVar[Kind] = "net"
    connections: tuple[Connection, ...] = ()
    retransmits: int = 0
    resets: Mapping[str, int] = field(default_factory=lambda: {"sent": 0, "received": 0})
    drops: Mapping[str, int] = field(default_factory=dict)
    series: tuple[IntervalPoint, ...] = ()
    interval_s: float = 0.0


@dataclass(frozen=True)
class MemSnapshot(Snapshot):
    kind: ClassVar[Kind] = "mem"
    outstanding: tuple[Allocation, ...] = ()
    outstanding_bytes: int = 0
    allocations_total: int = 0
    frees_total: int = 0
    page_faults: tuple[StackCount, ...] = ()
    mode: Literal["user", "kernel"] = "user"
    min_age_ms: int = 0

    def stack_profiles(self) -> list[StackProfile]:
        as_stacks = tuple(
            StackCount(a.pid, a.pid, a.comm, a.frames, a.bytes, modules=a.modules)
            for a in self.outstanding
        )
        as_objects = tuple(
            StackCount(a.pid, a.pid, a.comm, a.frames, a.count, modules=a.modules)
            for a in self.outstanding
        )
        profiles = [
            StackProfile("outstanding_bytes", "allocated_space", "bytes", as_stacks),
            StackProfile("outstanding_objects", "allocated_objects", "count", as_objects),
        ]
        if self.page_faults:
            profiles.append(StackProfile("page_faults", "page_faults", "count", self.page_faults))
        return profiles


SIGNALS: tuple[Kind, ...] = ("cpu", "syscalls", "net", "mem")
# A timeline row keeps the busiest functions and connections by name; the rest are summed
# under this key, so every row still adds up to its interval's total.
OTHER_KEY = "[other]"


@dataclass(frozen=True)
class RecordSnapshot(Snapshot):
    """Every signal of one run, each in exactly its own snapshot's schema, plus a timeline.

    `self_cost` is the whole run's (one process serves every signal); each section's
    `self_cost.bpf_ns` is that signal's programs only.
    """

    kind: ClassVar[Kind] = "record"
    signals: Mapping[str, Snapshot] = field(default_factory=dict)
    interval_s: float = 1.0
    timeline: tuple[TimelineRow, ...] = ()

    def stack_profiles(self) -> list[StackProfile]:
        """The flame-able views of every section (cpu's then mem's; their names differ)."""
        return [p for section in self.signals.values() for p in section.stack_profiles()]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "version": SNAPSHOT_VERSION}
        # asdict would turn the sections into plain field dicts without kind and version.
        data.update(_plain(dataclasses.asdict(dataclasses.replace(self, signals={}, timeline=()))))
        data["signals"] = {name: s.to_dict() for name, s in self.signals.items()}
        data["timeline"] = [_row_to_dict(row) for row in self.timeline]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RecordSnapshot:
        common = {k: v for k, v in data.items() if k not in ("signals", "timeline")}
        record: RecordSnapshot = _build(cls, common)
        signals: dict[str, Snapshot] = {}
        for name, section in _expect(data.get("signals", {}), dict, "signals").items():
            if name not in SIGNALS:
                raise ValueError(f"unknown signal {name!r}")
            snapshot = snapshot_from_dict(_expect(section, dict, f"signals.{name}"))
            if snapshot.kind != name:
                raise ValueError(f"signals.{name} holds a {snapshot.kind} snapshot")
            signals[name] = snapshot
        rows = tuple(
            _row_from_dict(_expect(r, dict, "timeline row"))
            for r in _expect(data.get("timeline", []), list, "timeline")
        )
        return dataclasses.replace(record, signals=signals, timeline=rows)


def _row_to_dict(row: TimelineRow) -> dict[str, Any]:
    out: dict[str, Any] = {"t_s": row.t_s}
    for name in SIGNALS:
        value = getattr(row, name)
        if value is None:
            continue
        if isinstance(value, tuple):
            out[name] = [_plain(dataclasses.asdict(v)) for v in value]
        else:
            out[name] = _plain(dataclasses.asdict(value))
    return out


def _row_from_dict(data: Mapping[str, Any]) -> TimelineRow:
    t_s = _scalar("float", data.get("t_s"))
    cpu = _cpu_tick(data["cpu"]) if "cpu" in data else None
    syscalls = (
        tuple([_syscall_tick(v) for v in data["syscalls"]])
        if isinstance(data.get("syscalls"), list)
        else None
    )
    if "syscalls" in data and syscalls is None:
        raise ValueError("expected a list of syscall ticks")
    net = _net_tick(data["net"]) if "net" in data else None
    mem = _build(MemTick, _expect(data["mem"], dict, "mem tick")) if "mem" in data else None
    return TimelineRow(t_s, cpu, syscalls, net, mem)


# Timeline entries are most of a long recording (a 1-hour one at 1 s holds some 150,000
# syscall ticks): the common, well-formed entry is checked inline and built positionally.
# Anything else (a missing field, a bad value) goes through `_build`, which names the
# problem exactly as for every other part of a snapshot.


def _u64(value: Any) -> bool:
    return type(value) is int and 0 <= value < _LARGEST


def _counts(value: Any) -> bool:
    """A JSON object of counts: text keys, integers from 0 to 2**64."""
    if type(value) is not dict:
        return False
    for key, n in value.items():
        if type(key) is not str or type(n) is not int or not 0 <= n < _LARGEST:
            return False
    return True


def _syscall_tick(data: Any) -> SyscallTick:
    if type(data) is dict:
        fields: list[Any] = [data.get(k) for k in ("name", "count", "errors", "p50_ns", "p99_ns")]
        name, count, errors, p50, p99 = fields
        hist: Any = data.get("hist", {})
        if (
            type(name) is str
            and _u64(count)
            and _u64(errors)
            and _u64(p50)
            and _u64(p99)
            and _counts(hist)
        ):
            return SyscallTick(name, count, errors, p50, p99, hist)
    return _build(SyscallTick, _expect(data, dict, "syscall tick"))


def _cpu_tick(data: Any) -> CpuTick:
    if type(data) is dict:
        parts = [data.get(k, {}) for k in ("samples", "functions", "off_cpu_ns", "blocked_ns")]
        if all(_counts(p) for p in parts):
            return CpuTick(*parts)
    return _build(CpuTick, _expect(data, dict, "cpu tick"))


def _conn_tick(data: Any) -> ConnTick:
    if type(data) is dict:
        fields: list[Any] = [data.get(k) for k in ("label", "tx_bytes", "rx_bytes")]
        label, tx, rx = fields
        retransmits: Any = data.get("retransmits", 0)
        resets: Any = data.get("resets", 0)
        srtt: Any = data.get("srtt_us", 0.0)
        if (
            type(label) is str
            and _u64(tx)
            and _u64(rx)
            and _u64(retransmits)
            and _u64(resets)
            and (type(srtt) is float or type(srtt) is int)
            and 0 <= srtt < _LARGEST
        ):
            return ConnTick(label, tx, rx, retransmits, resets, float(srtt))
    raise ValueError("slow path")


def _net_tick(data: Any) -> NetTick:
    if type(data) is dict:
        connections, drops = data.get("connections", []), data.get("drops", {})
        if type(connections) is list and _counts(drops):
            try:
                return NetTick(tuple([_conn_tick(c) for c in connections]), drops)
            except ValueError:
                pass  # one is unusual: the slow path names it
    return _build(NetTick, _expect(data, dict, "net tick"))


SNAPSHOT_TYPES: dict[str, type[Snapshot]] = {
    "cpu": CpuSnapshot,
    "syscalls": SyscallsSnapshot,
    "net": NetSnapshot,
    "mem": MemSnapshot,
    "record": RecordSnapshot,
}


def _plain(value: Any) -> Any:
    """Tuples to lists and mappings to dicts, so json.dumps writes them as users expect."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class FieldError(ValueError):
    """A bad value in a snapshot, with the path of the field that holds it."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


Converter = Callable[[Any], Any]


def _build(cls: type, data: Mapping[str, Any]) -> Any:
    """Construct dataclass `cls` from a JSON mapping, recursing into nested dataclasses.
    A bad value raises FieldError naming its field (`stacks[3].count`)."""
    try:
        kwargs = {name: convert(data[name]) for name, convert in _plan(cls) if name in data}
    except (FieldError, ValueError):
        _name_bad_field(cls, data)
        raise
    return cls(**kwargs)


def _name_bad_field(cls: type, data: Mapping[str, Any]) -> None:
    """Convert field by field, raising FieldError with the path of the first bad one."""
    for name, convert in _plan(cls):
        if name not in data:
            continue
        try:
            convert(data[name])
        except FieldError as exc:
            raise FieldError(_prefix(name, exc.path), exc.problem) from None
        except ValueError as exc:
            raise FieldError(name, str(exc)) from None


@functools.cache
def _plan(cls: type) -> tuple[tuple[str, Converter], ...]:
    """Each init field of `cls` with the converter of its annotation, worked out once per
    class: a 1-hour recording builds hundreds of thousands of timeline entries."""
    return tuple((f.name, _converter(str(f.type))) for f in dataclasses.fields(cls) if f.init)


def _prefix(head: str, inner: str) -> str:
    """`stacks` + `[3].count`, or `self_cost` + `cpu_s` -> `self_cost.cpu_s`."""
    return f"{head}{inner}" if inner.startswith("[") else f"{head}.{inner}"


def _each(items: list[Any], convert: Converter) -> tuple[Any, ...]:
    """Convert list items, naming the index of a bad one."""
    try:
        return tuple([convert(item) for item in items])
    except (FieldError, ValueError):
        pass  # the slow path below names the item
    out = []
    for index, item in enumerate(items):
        try:
            out.append(convert(item))
        except FieldError as exc:
            raise FieldError(_prefix(f"[{index}]", exc.path), exc.problem) from None
        except ValueError as exc:
            raise FieldError(f"[{index}]", str(exc)) from None
    return tuple(out)


_NESTED: dict[str, type] = {
    "ProcessInfo": ProcessInfo,
    "SelfCost": SelfCost,
    "CostTick": CostTick,
    "StackCount": StackCount,
    "Allocation": Allocation,
    "SyscallStat": SyscallStat,
    "IntervalPoint": IntervalPoint,
    "Connection": Connection,
    "ConnTick": ConnTick,
}


def _convert(annotation: Any, value: Any) -> Any:
    """A JSON value as the field's type, checked: a snapshot edited by hand or written by
    something else must fail here with a clear message, not later inside a renderer."""
    return _converter(str(annotation))(value)


@functools.cache
def _converter(text: str) -> Converter:
    """The checking conversion for an annotation (as text), built once per annotation."""
    for name, cls in _NESTED.items():
        if text == name:
            return functools.partial(_build_nested, cls, name)
        if text.startswith("tuple[") and name in text:
            return functools.partial(_each_of, text, _converter(name))
    if text.startswith("tuple["):
        item = _scalar_converter(text[len("tuple[") :].split(",")[0].strip())
        return functools.partial(_each_of, text, item)
    if text.startswith("Mapping["):
        value_of = _scalar_converter(text[len("Mapping[") : -1].split(",")[1].strip())
        return functools.partial(_mapping_of, text, value_of)
    if text == "int | None":
        return _optional_signed
    return _scalar_converter(text)


def _build_nested(cls: type, name: str, value: Any) -> Any:
    return _build(cls, _expect(value, dict, name))


def _each_of(text: str, convert: Converter, value: Any) -> tuple[Any, ...]:
    return _each(_expect(value, list, text), convert)


def _mapping_of(text: str, convert: Converter, value: Any) -> dict[str, Any]:
    return _mapping(_expect(value, dict, text), convert)


def _optional_signed(value: Any) -> Any:
    return None if value is None else _scalar("signed int", value)


def _mapping(value: dict[Any, Any], convert: Converter) -> dict[str, Any]:
    converted = {}
    for key, v in value.items():
        try:
            converted[str(key)] = convert(v)
        except ValueError as exc:
            raise FieldError(f"[{str(key)[:40]!r}]", str(exc)) from None
    return converted


_SCALARS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "signed int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
}
# Every count, size, duration and time in a snapshot is at least 0 and fits the kernel's u64
# counters (the one signed number, a command's exit status, is "signed int"). A negative
# histogram bucket, a duration of -1 or 1e308, NaN: bad input, refused when the file is read,
# not an internal error in a renderer later.
_LARGEST = float(2**64)


def _scalar_converter(type_name: str) -> Converter:
    """`_scalar` for one type, with the common case (a value of exactly that type, in
    range) checked inline; anything else goes through `_scalar`, which names the problem."""
    if type_name == "int":
        return lambda v: v if type(v) is int and 0 <= v < _LARGEST else _scalar("int", v)
    if type_name == "float":
        return lambda v: (
            float(v)
            if (type(v) is float or type(v) is int) and 0 <= v < _LARGEST
            else _scalar("float", v)
        )
    if type_name == "str":
        return lambda v: v if type(v) is str else _scalar("str", v)
    return lambda v: _scalar(type_name, v)


def _scalar(type_name: str, value: Any) -> Any:
    allowed = _SCALARS.get(type_name)
    if allowed is None:  # Literal[...] and other rare annotations: checked by their users
        return value
    fits = isinstance(value, allowed) and (type_name == "bool" or not isinstance(value, bool))
    if not fits:
        raise ValueError(f"expected {type_name}, got {type(value).__name__} {value!r:.40}")
    if type_name in ("int", "float") and not (0 <= value < _LARGEST):
        raise ValueError(f"expected a number from 0 to 2**64, got {value!r:.40}")
    if type_name == "signed int" and not (-_LARGEST < value < _LARGEST):
        raise ValueError(f"expected a number within +-2**64, got {value!r:.40}")
    return float(value) if type_name == "float" else value


def _expect(value: Any, kind: type, what: str) -> Any:
    if not isinstance(value, kind):
        raise ValueError(f"expected {what}, got {type(value).__name__}")
    return value


def snapshot_from_dict(data: Mapping[str, Any]) -> Snapshot:
    """Rebuild a snapshot from its JSON form; UsageError when it is not one we can read."""
    if not isinstance(data, Mapping):
        raise UsageError("not an otlp-ebpf snapshot: top level is not an object")
    kind = data.get("kind")
    cls = SNAPSHOT_TYPES.get(str(kind))
    if cls is None:
        raise UsageError(f"not an otlp-ebpf snapshot: unknown kind {kind!r}")
    version = data.get("version")
    if version != SNAPSHOT_VERSION:
        raise UsageError(
            f"snapshot version {version!r} is not supported (this build reads {SNAPSHOT_VERSION})"
        )
    try:
        if cls is RecordSnapshot:
            return RecordSnapshot.from_dict(data)
        return _build(cls, data)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise UsageError(f"malformed {kind} snapshot: {exc}") from exc


def write_snapshot(snapshot: Snapshot, stream: IO[str]) -> None:
    json.dump(snapshot.to_dict(), stream, indent=1)
    stream.write("\n")


def read_snapshot(path: str) -> Snapshot:
    """Load a snapshot file, turning every expected failure into a UsageError (exit 2)."""
    raw = read_bounded(path, "a snapshot")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not a JSON snapshot ({exc})") from exc
    except RecursionError as exc:  # arrays nested thousands deep
        raise UsageError(f"{path}: not a JSON snapshot (nested too deeply)") from exc
    try:
        return snapshot_from_dict(data)
    except UsageError as exc:
        raise UsageError(f"{path}: {exc.message}") from exc


def total_weight(stacks: Iterable[StackCount]) -> int:
    return sum(s.count for s in stacks)
