"""`otlp-ebpf doctor`: can this machine run every collector? A table with a fix per failure."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from otlp_ebpf import console
from otlp_ebpf.errors import EXIT_ENVIRONMENT
from otlp_ebpf.runtime.features import Check

# (category, name, what needs it, required for the tool as a whole)
TRACEPOINTS = [
    ("raw_syscalls", "sys_enter", "syscalls", True),
    ("raw_syscalls", "sys_exit", "syscalls", True),
    ("sched", "sched_process_fork", "-- CMD / --pid (follow children)", True),
    ("sched", "sched_process_exit", "cpu, mem", False),
    ("sched", "sched_process_exec", "cpu, mem", False),
    ("sched", "sched_switch", "cpu --off-cpu", False),
    ("sock", "inet_sock_set_state", "net", False),
    ("sock", "sock_send_length", "net (exact bytes)", False),
    ("sock", "sock_recv_length", "net (exact bytes)", False),
    ("tcp", "tcp_retransmit_skb", "net", False),
    ("tcp", "tcp_send_reset", "net", False),
    ("tcp", "tcp_receive_reset", "net", False),
    ("skb", "kfree_skb", "net (drops)", False),
    ("exceptions", "page_fault_user", "mem --page-faults", False),
    ("kmem", "kmalloc", "mem (kernel)", False),
    ("kmem", "kfree", "mem (kernel)", False),
]


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
    checks.append(
        Check(
            "tracefs",
            root is not None,
            str(root) if root else "not mounted",
            "mount -t tracefs nodev /sys/kernel/tracing",
        )
    )
    for category, name, who, required in TRACEPOINTS:
        ok = features.tracepoint_exists(category, name)
        checks.append(
            Check(
                f"tracepoint {category}/{name}",
                ok,
                f"used by {who}",
                "a kernel with this tracepoint (that collector degrades without it)",
                required=required,
            )
        )
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
            "mem collector",
            "a kernel with CONFIG_UPROBE_EVENTS",
            required=False,
        )
    )
    checks.extend(_object_checks())
    checks.append(_load_check())
    return checks


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
        failed = [c for c in checks if not c.ok and c.required]
        if as_json:
            doc = {
                "ok": not failed,
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
