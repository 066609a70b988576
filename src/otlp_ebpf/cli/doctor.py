"""`otlp-ebpf doctor`: can this machine run every collector? A table with a fix per failure."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from otlp_ebpf import console
from otlp_ebpf.errors import EXIT_ENVIRONMENT
from otlp_ebpf.runtime.features import Check

if TYPE_CHECKING:
    from otlp_ebpf.runtime.objects import AttachPoint

# The attach points checked are read from the BPF objects themselves (their programs' section
# names), so a program added to an object is checked without editing this file. These
# tracepoints are needed by the tool as a whole (the self-test and syscalls attach to
# raw_syscalls; every collector follows children through fork); without any other, one
# collector degrades or refuses its option.
REQUIRED_TRACEPOINTS = frozenset(
    {"raw_syscalls/sys_enter", "raw_syscalls/sys_exit", "sched/sched_process_fork"}
)
SELFTEST_OBJECT = "selftest"
UNREADABLE = "not readable without privileges (tracefs is root-only)"
TRACEPOINT_FIX = "a kernel with this tracepoint (that collector degrades without it)"
BTF_TRACEPOINT_FIX = "a kernel with BTF for this tracepoint (the collector falls back to tp/)"


def run_checks() -> list[Check]:
    from otlp_ebpf.runtime import features, libbpf, privileges

    checks: list[Check] = []
    root_fix = "run as root, or grant CAP_BPF and CAP_PERFMON (setcap cap_bpf,cap_perfmon+ep)"
    checks.append(
        Check(
            "privileges",
            privileges.privileged(),
            _whoami(),
            "" if privileges.privileged() else root_fix,
        )
    )
    checks.append(Check("kernel", True, features.kernel_release()))
    checks.append(
        Check(
            "BTF",
            features.btf_available(),
            str(features.BTF_PATH),
            "boot a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        )
    )
    try:
        version = libbpf.version()
        checks.append(Check("libbpf", True, version))
    except Exception as exc:  # the library itself is missing
        checks.append(Check("libbpf", False, str(exc), "apt-get install libbpf1"))
        return checks
    root = features.tracefs()
    privileged = privileges.privileged()
    # Unprivileged, tracefs cannot be read and every tracepoint looks absent: say so, rather
    # than "not mounted" and a kernel that lacks them.
    checks.append(
        Check(
            "tracefs",
            root is not None,
            str(root) if root else "not mounted" if privileged else UNREADABLE,
            "mount -t tracefs nodev /sys/kernel/tracing" if privileged else root_fix,
        )
    )
    points = all_attach_points()
    checks.extend(_tracepoint_checks(points, root_fix if not privileged else ""))
    for label, prog_type in features.PROG_TYPES.items():
        checks.append(
            Check(f"program type {label}", features.prog_type_supported(prog_type), "", root_fix)
        )
    for label, map_type in features.MAP_TYPES.items():
        checks.append(
            Check(f"map type {label}", features.map_type_supported(map_type), "", root_fix)
        )
    ok, detail = features.perf_events_ok()
    checks.append(
        Check("perf events", ok, detail, "set kernel.perf_event_paranoid <= 2, or run as root")
    )
    checks.append(
        Check(
            "uprobes",
            features.uprobes_available(),
            _users(points, "uprobes"),
            "a kernel with CONFIG_UPROBE_EVENTS",
            required=False,
        )
    )
    checks.extend(_unknown_attach_checks(points))
    checks.extend(_object_checks())
    checks.append(_load_check())
    return checks


def all_attach_points() -> list[AttachPoint]:
    """Every program of every packaged BPF object (an object that cannot be opened has none
    here: its own check says why)."""
    from otlp_ebpf.errors import OtlpEbpfError
    from otlp_ebpf.runtime.objects import attach_points, object_names

    points: list[AttachPoint] = []
    for name in object_names():
        try:
            points.extend(attach_points(name))
        except (OtlpEbpfError, OSError):
            continue
    return points


def check_name(point: AttachPoint) -> str:
    """The doctor check that covers `point`."""
    if point.kind == "tracepoint":
        return f"tracepoint {point.target}"
    if point.kind in ("tp_btf", "raw_tracepoint"):
        return f"tp_btf {point.target}"
    if point.kind == "perf_event":
        return "perf events"
    if point.kind == "uprobe":
        return "uprobes"
    return f"attach {point.section}"


def _users(points: list[AttachPoint], name: str) -> str:
    """Who needs the attach points checked as `name`: signals, or doctor's own self-test."""
    from otlp_ebpf.collectors.signals import users_of

    users: list[str] = []
    for point in points:
        if check_name(point) != name:
            continue
        obj = point.object.removesuffix(".bpf.o")
        for user in users_of(obj) or (("self-test",) if obj == SELFTEST_OBJECT else (obj,)):
            if user not in users:
                users.append(user)
    return "used by " + ", ".join(users)


def _tracepoint_checks(points: list[AttachPoint], privileges_fix: str = "") -> list[Check]:
    """One check per tracepoint any object attaches to: classic ones in tracefs, BTF ones in
    the kernel's BTF. `privileges_fix`, when set, is why tracefs could not be looked at."""
    from otlp_ebpf.runtime import btf, features

    names = list(dict.fromkeys(check_name(p) for p in points if p.kind == "tracepoint"))
    btf_names = list(
        dict.fromkeys(check_name(p) for p in points if p.kind in ("tp_btf", "raw_tracepoint"))
    )
    checks = []
    for name in names:
        category, _, event = name.removeprefix("tracepoint ").partition("/")
        required = f"{category}/{event}" in REQUIRED_TRACEPOINTS
        if privileges_fix:
            checks.append(Check(name, False, UNREADABLE, privileges_fix, required=required))
            continue
        checks.append(
            Check(
                name,
                features.tracepoint_exists(category, event),
                _users(points, name),
                TRACEPOINT_FIX,
                required=required,
            )
        )
    offered = btf.kernel_btf_tracepoints(n.removeprefix("tp_btf ") for n in btf_names)
    for name in btf_names:
        ok = name.removeprefix("tp_btf ") in offered
        checks.append(Check(name, ok, _users(points, name), BTF_TRACEPOINT_FIX, required=False))
    return checks


def _unknown_attach_checks(points: list[AttachPoint]) -> list[Check]:
    """Attach points of a kind doctor has no check for: shown as not verified, never skipped."""
    unknown = dict.fromkeys(check_name(p) for p in points if check_name(p).startswith("attach "))
    return [
        Check(
            name,
            False,
            _users(points, name),
            "doctor cannot check this kind of attach point; try the collector",
            required=False,
        )
        for name in unknown
    ]


def _whoami() -> str:
    import os

    return "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"


def _object_checks() -> list[Check]:
    from otlp_ebpf.runtime.objects import object_status

    out = []
    for name, ok, detail in object_status():
        out.append(Check(f"object {name}", ok, detail, "rebuild: make setup"))
    return out


def _load_check() -> Check:
    """Load the self-test object, attach it, make a syscall and read it back through both a
    map and the ring buffer: the whole path, end to end."""
    from otlp_ebpf.errors import OtlpEbpfError
    from otlp_ebpf.runtime.selftest import round_trip

    try:
        events = round_trip(calls=3)
    except (OtlpEbpfError, OSError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        return Check("load + attach + read", False, message, "see the failures above")
    ok = events == 3
    return Check(
        "load + attach + read",
        ok,
        f"selftest.bpf.o: {events}/3 events through map and ring buffer",
        "" if ok else "run with --debug for libbpf's log",
    )


def register(app: typer.Typer) -> None:
    @app.command()
    def doctor(
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    ) -> None:
        """Check privileges, BTF, tracefs, tracepoints, program types and BPF objects."""
        checks = run_checks()
        results = {c.name: c.ok for c in checks}
        failed = [c for c in checks if not c.ok and c.required]
        if as_json:
            doc = {
                "ok": not failed,
                "attach_points": [
                    {
                        "object": p.object,
                        "program": p.program,
                        "section": p.section,
                        "check": check_name(p),
                        "ok": results.get(check_name(p), False),
                    }
                    for p in all_attach_points()
                ],
                "checks": [
                    {
                        "name": c.name,
                        "ok": c.ok,
                        "detail": c.detail,
                        "fix": "" if c.ok else c.fix,
                        "required": c.required,
                    }
                    for c in checks
                ],
            }
            console.out.print_json(json.dumps(doc))
        else:
            _print_table(checks)
        if failed:
            console.err.print(
                f"[red]{len(failed)} required check(s) failed[/]: "
                + ", ".join(console.escape(c.name) for c in failed)
            )
            raise typer.Exit(EXIT_ENVIRONMENT)
        console.status("everything needed works")


def _status_cell(check: Check) -> str:
    if check.ok:
        return "[green]ok[/]"
    if check.detail == UNREADABLE:
        return "[red]FAIL[/]" if check.required else "[yellow]unknown[/]"
    return "[red]FAIL[/]" if check.required else "[yellow]missing[/]"


def _print_table(checks: list[Check]) -> None:
    from rich.table import Table

    table = Table(title="otlp-ebpf doctor", title_justify="left")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail")
    table.add_column("fix")
    for c in checks:
        status = _status_cell(c)
        table.add_row(
            console.escape(c.name),
            status,
            console.escape(c.detail),
            "" if c.ok else console.escape(c.fix),
        )
    console.out.print(table)
