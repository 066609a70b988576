"""Options and steps every collector command shares: targets, duration, outputs, OTLP, summary.

Output paths are checked before collecting (a bad path must not cost a 30 s profile), and
outputs are written before anything that can fail late (OTLP delivery), so nothing collected
is lost.
"""

from __future__ import annotations

import dataclasses
import math
import os
import stat
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Protocol, TypeVar

import typer

from otlp_ebpf import console, hosttext
from otlp_ebpf.errors import OtlpEbpfError, UsageError
from otlp_ebpf.model import Snapshot
from otlp_ebpf.targets import TargetSpec

if TYPE_CHECKING:
    from otlp_ebpf.export.interval import IntervalExporter
    from otlp_ebpf.formatters.registry import OutputFormat

# ---------------------------------------------------------------- option rules
# One rule per option that several commands share: the same bad value gets the same message
# and exit 2 from every command, checked while the command line is parsed (before any file
# is read or probe attached).


def check_number(
    value: float | None,
    option: str,
    *,
    minimum: float,
    maximum: float | None = None,
    above_minimum: bool = False,
    below_maximum: bool = False,
    what: str,
) -> None:
    """Refuse NaN, infinities and values outside [minimum, maximum] (or open bounds)."""
    if value is None:
        return
    too_low = value <= minimum if above_minimum else value < minimum
    too_high = maximum is not None and (value >= maximum if below_maximum else value > maximum)
    if not math.isfinite(value) or too_low or too_high:
        raise UsageError(f"{option} must be {what}, got {value:g}")


def check_duration(duration: float | None, name: str = "duration") -> None:
    check_number(
        duration,
        f"--{name}",
        minimum=0.0,
        above_minimum=True,
        what="a positive number of seconds",
    )


def _duration_rule(value: float | None) -> float | None:
    check_duration(value)
    return value


def interval_rule(value: float | None) -> float | None:
    check_duration(value, "interval")
    return value


def check_top(top: int) -> None:
    """--top N: rows shown by a table; 0 means every row (a negative value would silently
    drop the last rows through slicing)."""
    if top < 0:
        raise UsageError(f"--top must be 0 (every row) or a positive number of rows, got {top}")


def _top_rule(value: int) -> int:
    check_top(value)
    return value


def check_percent(value: float | None, option: str) -> None:
    """Thresholds and shares in percent (points): finite, 0 to 100."""
    check_number(value, option, minimum=0.0, maximum=100.0, what="a percentage from 0 to 100")


def check_budget(value: float | None) -> None:
    """--budget PCT: a share of one core the tool may cost, above 0 and at most 100."""
    check_number(
        value,
        "--budget",
        minimum=0.0,
        maximum=100.0,
        above_minimum=True,
        what="a percentage of one core in (0, 100]",
    )


def _budget_rule(value: float | None) -> float | None:
    check_budget(value)
    return value


def check_confidence(value: float) -> None:
    check_number(
        value,
        "--confidence",
        minimum=0.5,
        maximum=1.0,
        below_maximum=True,
        what="at least 0.5 and below 1 (e.g. 0.95)",
    )


def _confidence_rule(value: float) -> float:
    check_confidence(value)
    return value


PidOpt = Annotated[
    list[int] | None,
    typer.Option(
        "-p", "--pid", help="Process to record (repeatable; all its threads and children)."
    ),
]
TidOpt = Annotated[int, typer.Option("--tid", help="Only this thread.")]
BudgetOpt = Annotated[
    float | None,
    typer.Option(
        "--budget",
        metavar="PCT",
        callback=_budget_rule,
        help="Keep the tool's steady cost (its CPU, its helpers', its BPF programs' run time) "
        "at or under PCT% of one core by sampling less; the rates are in the snapshot.",
    ),
]
DurationOpt = Annotated[
    float | None,
    typer.Option(
        "-d",
        "--duration",
        callback=_duration_rule,
        help="Seconds to record (default: until Ctrl-C or the command exits).",
    ),
]
OutputOpt = Annotated[
    list[str] | None,
    typer.Option(
        "-o",
        "--output",
        help="Write a file; format from the extension (.html .svg .folded .speedscope.json "
        ".json .pb.gz .otlp.pb). Repeatable.",
    ),
]
FormatOpt = Annotated[
    str | None, typer.Option("--format", help="Force the format of every -o file.")
]
OtlpOpt = Annotated[
    str | None,
    typer.Option(
        "--otlp",
        metavar="[URL]",
        help="Push the results to an OTLP endpoint (default from OTEL_EXPORTER_OTLP_ENDPOINT).",
    ),
]
OtlpFileOpt = Annotated[
    str | None,
    typer.Option("--otlp-file", help="Also write the OTLP request to a file (for `push`)."),
]
IntervalOpt = Annotated[
    float | None,
    typer.Option(
        "--interval", callback=interval_rule, help="Refresh a live view every SEC seconds."
    ),
]
TopOpt = Annotated[
    int, typer.Option("--top", metavar="N", callback=_top_rule, help="Rows to show (0: all).")
]
ConfidenceOpt = Annotated[
    float,
    typer.Option(
        "--confidence",
        metavar="LEVEL",
        callback=_confidence_rule,
        help="Confidence level of the noise test (0.5 to below 1).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


class CmdlinePolicy(StrEnum):
    """What outputs keep of the command lines of the processes a run sees (any user's)."""

    REDACT = "redact"
    FULL = "full"
    OMIT = "omit"


CmdlineOpt = Annotated[
    CmdlinePolicy,
    typer.Option(
        "--cmdline",
        help="Command lines of the processes seen, in outputs and OTLP: values of secret-looking "
        "arguments (password, token, secret, key, credentials, URL userinfo) masked, kept "
        "whole, or left out.",
    ),
]
CommandArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="-- CMD ARGS: run CMD, held until probes are attached, and follow it and its "
        "descendants until all have exited (or the run ends)."
    ),
]

OTLP_DEFAULT = "@env"


def targets_text(targets: Sequence[str]) -> str:
    """Targets as a status line shows them: a 100 KB command line is cut (the snapshot keeps
    it whole)."""
    return hosttext.shorten(", ".join(targets))


def target_spec(pids: Sequence[int] | None, tid: int, command: Sequence[str] | None) -> TargetSpec:
    """Options -> TargetSpec, refusing combinations that make no sense."""
    if command and pids:
        raise UsageError("give either --pid or -- CMD, not both")
    unique = tuple(dict.fromkeys(pids or ()))  # `-p 1 -p 1`: one target, checked once
    for pid in unique:
        check_process_id(pid)
    if tid < 0 or (tid and not os.path.isdir(f"/proc/{tid}")):
        raise UsageError(f"no such thread: {tid}")
    return TargetSpec(pids=unique, tid=tid, command=tuple(command or ()))


PF_KTHREAD = 0x00200000  # task flag of kernel threads (include/linux/sched.h)


def kernel_thread_name(pid: int) -> str | None:
    """The name of `pid` when it is a kernel thread (kthreadd and its children), else None."""
    try:
        stat_line = hosttext.read(f"/proc/{pid}/stat")
    except OSError:
        return None
    name = stat_line[stat_line.find("(") + 1 : stat_line.rfind(")")]
    fields = stat_line[stat_line.rfind(")") + 2 :].split()
    # After the name: state, ppid, pgrp, session, tty_nr, tpgid, flags.
    if len(fields) > 6 and int(fields[6]) & PF_KTHREAD:
        return name
    return None


def refuse_kernel_thread(pid: int, why: str) -> None:
    """Refuse a kernel thread as a target before tracing begins, saying why."""
    name = kernel_thread_name(pid)
    if name is not None:
        raise UsageError(f"process {pid} ({name}) is a kernel thread: {why}")


def check_process_id(pid: int) -> None:
    """A live process id; a thread id gets pointed at its process (or at --tid)."""
    try:
        status = hosttext.read(f"/proc/{pid}/status") if pid > 0 else ""
    except OSError:
        status = ""
    tgid = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("Tgid:")), None)
    if tgid is None:
        raise UsageError(f"no such process: {pid}")
    if int(tgid) != pid:
        raise UsageError(f"{pid} is a thread of process {tgid}: use -p {tgid}, or --tid {pid}")


@dataclass(frozen=True)
class PlannedOutput:
    path: str
    format_name: str


def check_output_path(path: str) -> None:
    """Refuse, before collecting, a path we could not or should not write (the symlink rule
    is checked again when writing: another user may create one meanwhile)."""
    from otlp_ebpf.formatters.registry import final_target

    parent = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(parent):
        raise UsageError(f"{path}: directory {parent} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a directory")
    target = final_target(path)
    if os.path.exists(target) and not os.access(target, os.W_OK):
        raise UsageError(f"{path}: not writable")
    if os.path.exists(target) and not stat.S_ISREG(os.stat(target).st_mode):
        return  # a device, pipe or FIFO (/dev/stdout): written in place
    _probe_directory(path, os.path.dirname(os.path.abspath(target)))


def _probe_directory(path: str, parent: str) -> None:
    """Create and remove a file where the output will be written (outputs are written to a
    temporary file beside the target, then renamed): permission bits alone do not tell about
    read-only mounts or pseudo filesystems, and root passes every access() check."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".otlp-ebpf-", dir=parent)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write in {parent}: {exc.strerror}") from exc
    os.close(fd)
    os.unlink(probe)


def plan_outputs(paths: Sequence[str] | None, forced: str | None, kind: str) -> list[PlannedOutput]:
    planned: list[PlannedOutput] = []
    if not paths:
        return planned
    from otlp_ebpf.formatters import registry

    for path in paths:
        fmt = registry.format_for_path(path, forced)
        registry.check_supported(fmt, kind)
        check_output_path(path)
        planned.append(PlannedOutput(path, fmt.name))
    return planned


def write_outputs(snapshot: Snapshot, outputs: Sequence[PlannedOutput]) -> list[OtlpEbpfError]:
    """Write every output that can be written; a failure is reported (one line) and returned,
    never stops the others: one full disk must not cost the files on another."""
    from otlp_ebpf.formatters import registry

    failures: list[OtlpEbpfError] = []
    for out in outputs:
        fmt = registry.format_for_path(out.path, out.format_name)
        failures.extend(_write_one(snapshot, out.path, fmt))
    return failures


def _write_one(snapshot: Snapshot, path: str, fmt: OutputFormat) -> list[OtlpEbpfError]:
    from otlp_ebpf.formatters import registry

    failures: list[OtlpEbpfError] = []
    for name, write in registry.parts(snapshot, fmt):
        target = registry.sibling_path(path, fmt, name)
        try:
            registry.write_atomically(target, write)
        except OtlpEbpfError as exc:
            console.error(exc.message)
            failures.append(exc)
            continue
        console.status(f"wrote {target}")
    return failures


def raise_failures(failures: Sequence[OtlpEbpfError], what: str = "outputs") -> None:
    """After everything else is done: exit with the worst code of the failures, naming them
    (each was already reported on its own line)."""
    if not failures:
        return
    code = max(f.exit_code for f in failures)
    if len(failures) == 1:
        raise OtlpEbpfError(failures[0].message, hint=failures[0].hint, exit_code=code)
    raise OtlpEbpfError(
        f"{len(failures)} {what} failed: " + "; ".join(f.message for f in failures),
        exit_code=code,
    )


def deliver_otlp(snapshot: Snapshot, url: str | None, otlp_file: str | None) -> list[OtlpEbpfError]:
    """Write and/or push the OTLP form; a failed push spills a file. Failures are reported
    and returned, as for `write_outputs`."""
    failures: list[OtlpEbpfError] = []
    if otlp_file:
        from otlp_ebpf.formatters import registry

        fmt = registry.format_for_path(otlp_file, "otlp")
        failures.extend(_write_one(snapshot, otlp_file, fmt))
    if url:
        from otlp_ebpf.export.config import OtlpConfig
        from otlp_ebpf.export.deliver import deliver

        try:
            deliver(snapshot, OtlpConfig.from_cli(None if url == OTLP_DEFAULT else url))
        except OtlpEbpfError as exc:
            console.error(exc.message)
            failures.append(exc)
    return failures


@dataclass(frozen=True)
class Results:
    """Where a command's result goes: output files, stdout (a table, or JSON with --json),
    OTLP (--otlp URL, --otlp-file), with command lines as --cmdline says."""

    outputs: Sequence[PlannedOutput]
    as_json: bool
    otlp_url: str | None
    otlp_file: str | None
    cmdline: CmdlinePolicy


class IntervalConfig(Protocol):
    """The part of a collector's config that reporting by interval reads."""

    @property
    def targets(self) -> TargetSpec: ...

    @property
    def duration_s(self) -> float | None: ...

    @property
    def interval_s(self) -> float | None: ...


Config = TypeVar("Config", bound=IntervalConfig)
Row = TypeVar("Row")
LiveView = Callable[[list[Row], float], None]


def collect_by_interval(
    what: str,
    collect: Callable[[Config, LiveView[Row] | None, Callable[[Snapshot], None] | None], Snapshot],
    config: Config,
    live_view: Callable[[], LiveView[Row]],
    show: Callable[[Snapshot], None],
    results: Results,
) -> int:
    """Trace `what` with `collect`, then `finish` with `results`. With --interval the rows of
    each interval go to `live_view()` on stderr (not with --json: stdout is for the result)."""
    live = live_view() if config.interval_s and not results.as_json else None
    console.status(f"tracing {what} ({targets_text(config.targets.describe())}); Ctrl-C to stop")
    exporter = _interval_exporter(
        results.otlp_url, config.duration_s, config.interval_s, results.cmdline
    )
    snapshot = collect(config, live, exporter)
    return _finish_exporting_intervals(snapshot, exporter, results, show)


def _interval_exporter(
    url: str | None,
    duration: float | None,
    interval: float | None,
    cmdline: CmdlinePolicy = CmdlinePolicy.REDACT,
) -> IntervalExporter | None:
    """With --otlp, --interval and no --duration, push the cumulative snapshot every interval,
    off the collection loop (export/interval.py): an unreachable collector costs one spill
    file per outage and never holds up the run or Ctrl-C. The command hands the final
    snapshot to its `finish`."""
    if not (url and interval and duration is None):
        return None
    from otlp_ebpf.export.config import OtlpConfig
    from otlp_ebpf.export.interval import IntervalExporter

    config = OtlpConfig.from_cli(None if url == OTLP_DEFAULT else url)
    return IntervalExporter(config, prepare=lambda snapshot: with_cmdlines(snapshot, cmdline))


def _finish_exporting_intervals(
    snapshot: Snapshot,
    exporter: IntervalExporter | None,
    results: Results,
    show: Callable[[Snapshot], None],
) -> int:
    """`finish` for a command that may push every interval: the periodic exporter then makes
    the final push (so `finish` gets no URL), even when writing an output failed."""
    try:
        return finish(
            snapshot,
            results.outputs,
            as_json=results.as_json,
            otlp_url=None if exporter else results.otlp_url,
            otlp_file=results.otlp_file,
            show=show,
            cmdline=results.cmdline,
        )
    finally:
        if exporter is not None:
            exporter.finish(snapshot)


def validate_otlp(url: str | None, otlp_file: str | None) -> None:
    if otlp_file:
        check_output_path(otlp_file)
    if url:
        from otlp_ebpf.export.config import OtlpConfig

        OtlpConfig.from_cli(None if url == OTLP_DEFAULT else url)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def summary_line(snapshot: Snapshot, events: int, what: str = "events") -> str:
    """The one-line account every run ends with."""
    cost = snapshot.self_cost
    # Set-up and symbolization dominate very short runs: a percentage of them says nothing.
    share = (
        f" ({100.0 * cost.cpu_s / snapshot.duration_s:.1f}%)" if snapshot.duration_s >= 1 else ""
    )
    lost = snapshot.lost_total
    lost_text = f"{lost:,} lost" + (
        " (" + ", ".join(f"{k}: {v:,}" for k, v in snapshot.lost_events.items() if v) + ")"
        if lost
        else ""
    )
    command = next((n for n in snapshot.notes if n.startswith("command: ")), "")
    return (
        f"{_seconds(snapshot.duration_s)}, {events:,} {what}, {lost_text}; "
        f"cost {cost.cpu_s:.2f} s CPU{share}, BPF {cost.bpf_ns / 1e6:.1f} ms "
        f"in {cost.bpf_runs:,} runs, peak RSS {human_bytes(cost.peak_rss_kb * 1024)}"
        + budget_text(snapshot)
        + (f"; {command}" if command else "")
    )


def budget_text(snapshot: Snapshot) -> str:
    """`; budget 1%: steady 0.9%, sampled 1 in 8 syscalls` when a budget was set: what it
    cost and where it lowered the fidelity (the sparsest rate of the run)."""
    cost = snapshot.self_cost
    if not cost.budget_pct:
        return ""
    text = f"; budget {cost.budget_pct:g}%: steady {cost.steady_pct:.2f}%"
    lowered = fidelity_lowered(snapshot)
    if lowered:
        text += ", " + ", ".join(lowered)
    if cost.steady_pct > cost.budget_pct:
        text += ", over budget" + not_held_reason(snapshot)
    return text


def not_held_reason(snapshot: Snapshot) -> str:
    """`: 1.20% of a core went to ...` from a `budget 1% not held ...: <why>; ...` note."""
    for note in snapshot.notes:
        if note.startswith("budget ") and " not held" in note and ": " in note:
            why = note.split(": ", 1)[1].split(" (", 1)[0].split(";", 1)[0]
            return f": {why}"
    return ""


def fidelity_lowered(snapshot: Snapshot) -> list[str]:
    from otlp_ebpf.model import CpuSnapshot, RecordSnapshot

    ticks = snapshot.self_cost.ticks
    out = []
    cpu = snapshot.signals.get("cpu") if isinstance(snapshot, RecordSnapshot) else snapshot
    hz = [t.rates["cpu_hz"] for t in ticks if "cpu_hz" in t.rates]
    if hz and isinstance(cpu, CpuSnapshot) and min(hz) < cpu.frequency_hz:
        out.append(f"cpu sampling lowered to {min(hz):.0f} Hz (asked {cpu.frequency_hz})")
    fell_back = next((t.t_s for t in ticks if t.unwind == "fp"), None)
    if fell_back is not None:
        out.append(f"fell back from DWARF to frame pointers by {fell_back:g} s")
    periods = [t.rates["syscalls_1_in"] for t in ticks if "syscalls_1_in" in t.rates]
    if periods and max(periods) > 1:
        out.append(f"sampled 1 in {max(periods):.0f} syscalls")
    for key, what in (("syscalls_duty", "syscalls"), ("mem_duty", "allocations")):
        duty = [t.rates[key] for t in ticks if key in t.rates]
        if duty and min(duty) < 1:
            out.append(f"{what} traced {100 * min(duty):.3g}% of the time (counts scaled)")
    gaps = [t.rates["mem_sample_bytes"] for t in ticks if "mem_sample_bytes" in t.rates]
    if gaps and max(gaps) > 0:
        out.append(f"allocations sampled every {human_bytes(max(gaps))} allocated")
    return out


def command_exit_code(snapshot: Snapshot) -> int:
    """The process exit code a successful run ends with: the launched command's own status
    (128+N when signal N killed it), as strace and time do, so a CI step fails with its
    tests; 0 without a command or when the run stopped it."""
    status = snapshot.command_exit
    if status is None:
        return 0
    return status if status >= 0 else 128 - status


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value >= 1 else f"{value * 1000:.0f} ms"


def finish(
    snapshot: Snapshot,
    outputs: Sequence[PlannedOutput],
    *,
    as_json: bool,
    otlp_url: str | None,
    otlp_file: str | None,
    show: Callable[[Snapshot], None],
    events: int | None = None,
    what: str | None = None,
    cmdline: CmdlinePolicy = CmdlinePolicy.REDACT,
) -> int:
    """Write every output that can be written, print the result (table or JSON) and the
    summary, push OTLP, and only then fail (exit 1, or 2 for a refused path) naming what
    could not be written or sent. Returns the exit code of the run (`command_exit_code`).

    The summary counts what the signal's descriptor counts, unless `events`/`what` say
    otherwise (cpu names blocks or samples by what the run recorded)."""
    snapshot = with_cmdlines(snapshot, cmdline)
    failures = write_outputs(snapshot, outputs)
    if as_json:
        import json

        console.out.print_json(json.dumps(snapshot.to_dict()))
    else:
        show(snapshot)
    if snapshot.lost_total:
        console.warn(
            f"{snapshot.lost_total:,} events lost: "
            + ", ".join(f"{k} {v:,}" for k, v in snapshot.lost_events.items() if v)
        )
    if events is None or what is None:
        from otlp_ebpf.collectors.signals import signal_of

        signal = signal_of(snapshot)
        events = signal.count_events(snapshot) if events is None else events
        what = what or signal.event_name
    console.status(summary_line(snapshot, events, what))
    failures.extend(deliver_otlp(snapshot, otlp_url, otlp_file))
    raise_failures(failures)
    return command_exit_code(snapshot)


AnySnapshot = TypeVar("AnySnapshot", bound=Snapshot)


def with_cmdlines(snapshot: AnySnapshot, policy: CmdlinePolicy) -> AnySnapshot:
    """`snapshot` with the command lines it holds (its processes', a launched command in its
    targets) as `policy` wants them, before anything leaves the process."""
    from otlp_ebpf.model import RecordSnapshot
    from otlp_ebpf.redact import redact_cmdline

    if policy is CmdlinePolicy.FULL:
        return snapshot
    processes = tuple(
        dataclasses.replace(p, cmdline=redact_cmdline(p.cmdline, policy.value))
        for p in snapshot.processes
    )
    targets = tuple(_target_text(t, policy) for t in snapshot.targets)
    changed = dataclasses.replace(snapshot, processes=processes, targets=targets)
    if isinstance(changed, RecordSnapshot):
        signals = {k: with_cmdlines(v, policy) for k, v in changed.signals.items()}
        changed = dataclasses.replace(changed, signals=signals)
    return changed


_COMMAND_TARGET = "command: "


def _target_text(target: str, policy: CmdlinePolicy) -> str:
    """A launched command's target ("command: ARGV joined by spaces") as `policy` wants it."""
    from otlp_ebpf.redact import redact_cmdline

    if not target.startswith(_COMMAND_TARGET):
        return target
    if policy is CmdlinePolicy.OMIT:
        return "command"
    args = tuple(target.removeprefix(_COMMAND_TARGET).split(" "))
    return _COMMAND_TARGET + " ".join(redact_cmdline(args, policy.value))
