"""`otlp-ebpf syscalls`: exact syscall counts, errors by errno and latency per process."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Annotated

import typer

from otlp_ebpf import console
from otlp_ebpf.cli import common
from otlp_ebpf.model import Snapshot, SyscallsSnapshot, SyscallStat

TASK_COMM_CHARS = 15  # TASK_COMM_LEN (16) less the terminating zero


def register(app: typer.Typer) -> None:
    @app.command(context_settings={"allow_interspersed_args": False})
    def syscalls(
        command: common.CommandArg = None,
        pid: common.PidOpt = None,
        tid: common.TidOpt = 0,
        comm: Annotated[str, typer.Option("--comm", help="Only processes with this name.")] = "",
        duration: common.DurationOpt = None,
        interval: common.IntervalOpt = None,
        syscall: Annotated[
            list[str] | None,
            typer.Option("--syscall", "-s", help="Only this syscall (repeatable)."),
        ] = None,
        errors_only: Annotated[
            bool, typer.Option("--errors-only", help="Only calls that failed.")
        ] = False,
        by_process: Annotated[
            bool, typer.Option("--by-process", "-P", help="One row per process and syscall.")
        ] = False,
        latency: Annotated[
            str | None, typer.Option("--latency", "-L", help="Show NAME's latency histogram.")
        ] = None,
        budget: common.BudgetOpt = None,
        top: common.TopOpt = 30,
        output: common.OutputOpt = None,
        fmt: common.FormatOpt = None,
        otlp: common.OtlpOpt = None,
        otlp_file: common.OtlpFileOpt = None,
        as_json: common.JsonOpt = False,
        cmdline: common.CmdlineOpt = common.CmdlinePolicy.REDACT,
    ) -> int:
        """Count syscalls, errors by errno and latency, aggregated in the kernel.

        Examples: `otlp-ebpf syscalls -- ./integration-test`,
        `otlp-ebpf syscalls -p 1234 -d 10 --by-process`.
        """
        from otlp_ebpf.collectors.syscalls import (
            SyscallsConfig,
            collect,
            resolve_names,
            syscall_table,
        )

        resolve_names(syscall or [], syscall_table())
        if latency:
            resolve_names([latency], syscall_table())
        if len(os.fsencode(comm)) > TASK_COMM_CHARS:
            shown = os.fsencode(comm)[:TASK_COMM_CHARS].decode(errors="replace")
            console.warn(
                f"--comm: the kernel keeps the first {TASK_COMM_CHARS} bytes of a process "
                f"name; matching {shown!r}"
            )
        outputs = common.plan_outputs(output, fmt, "syscalls")
        common.validate_otlp(otlp, otlp_file)
        config = SyscallsConfig(
            targets=common.target_spec(pid, tid, command),
            duration_s=duration,
            interval_s=interval,
            syscalls=tuple(syscall or ()),
            errors_only=errors_only,
            comm=comm,
            budget_pct=budget,
        )

        def show(snap: Snapshot) -> None:
            from otlp_ebpf.formatters import syscalls_table

            assert isinstance(snap, SyscallsSnapshot)
            syscalls_table.render_table(snap, console.out, by_process=by_process, top=top or None)
            if latency:
                syscalls_table.render_latency(snap, latency, console.out)

        results = common.Results(outputs, as_json, otlp, otlp_file, cmdline)
        return common.collect_by_interval(
            "syscalls", collect, config, lambda: _live_view(by_process, top), show, results
        )


def _live_view(by_process: bool, top: int) -> Callable[[list[SyscallStat], float], None]:
    """A refreshing top table on stderr, like `syscount -i`."""
    from otlp_ebpf.formatters import syscalls_table

    def tick(rows: list[SyscallStat], elapsed: float) -> None:
        shown = rows if by_process else syscalls_table.merge_by_name(rows)
        table = syscalls_table.syscalls_table(
            shown, by_process=by_process, top=top or None, title=f"after {elapsed:.1f} s"
        )
        console.err.print(table)

    return tick
