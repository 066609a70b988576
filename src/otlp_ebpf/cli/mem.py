"""`otlp-ebpf mem`: outstanding allocations by stack (leaks), page faults, kernel allocations."""

from __future__ import annotations

from typing import Annotated

import typer

from otlp_ebpf import console
from otlp_ebpf.cli import common
from otlp_ebpf.errors import UsageError
from otlp_ebpf.model import MemSnapshot, Snapshot


def register(app: typer.Typer) -> None:
    @app.command(context_settings={"allow_interspersed_args": False})
    def mem(
        command: common.CommandArg = None,
        pid: common.PidOpt = None,
        duration: common.DurationOpt = None,
        min_age: Annotated[
            int,
            typer.Option(
                "--min-age", metavar="MS", help="Ignore allocations younger than MS milliseconds."
            ),
        ] = 0,
        budget: common.BudgetOpt = None,
        top: common.TopOpt = 10,
        page_faults: Annotated[
            bool, typer.Option("--page-faults", help="Also count user page faults by stack.")
        ] = False,
        no_mmap: Annotated[
            bool, typer.Option("--no-mmap", help="Do not count anonymous mmap regions.")
        ] = False,
        table_size: Annotated[
            int,
            typer.Option("--table-size", help="Live blocks the kernel can track at once."),
        ] = 262_144,
        no_python: Annotated[
            bool,
            typer.Option(
                "--no-python",
                help="Keep CPython's own C frames instead of the Python functions it runs.",
            ),
        ] = False,
        output: common.OutputOpt = None,
        fmt: common.FormatOpt = None,
        otlp: common.OtlpOpt = None,
        otlp_file: common.OtlpFileOpt = None,
        as_json: common.JsonOpt = False,
        cmdline: common.CmdlineOpt = common.CmdlinePolicy.REDACT,
    ) -> int:
        """Outstanding (not freed) memory by allocation stack: find leaks.

        With `-- CMD` every allocation of the command is seen from its first instruction;
        with `--pid` only those made after attaching. Without a target: kernel allocations
        (kmalloc, kmem_cache_alloc) by kernel stack.

        Examples: `otlp-ebpf mem -- ./server --once`, `otlp-ebpf mem -p 1234 -d 30 -o leaks.html`.
        """
        from otlp_ebpf.collectors.mem import MAX_TABLE_SIZE, MIN_TABLE_SIZE, MemConfig, collect

        if min_age < 0:
            raise UsageError(f"--min-age must be >= 0 ms, got {min_age}")
        if not MIN_TABLE_SIZE <= table_size <= MAX_TABLE_SIZE:
            raise UsageError(
                f"--table-size must be from {MIN_TABLE_SIZE} to {MAX_TABLE_SIZE} (~1.4 GB of "
                f"kernel memory), got {table_size}"
            )
        for target in pid or ():
            common.refuse_kernel_thread(target, "it has no user-space allocations to trace")
        outputs = common.plan_outputs(output, fmt, "mem")
        common.validate_otlp(otlp, otlp_file)
        config = MemConfig(
            targets=common.target_spec(pid, 0, command),
            duration_s=duration,
            min_age_ms=min_age,
            page_faults=page_faults,
            track_mmap=not no_mmap,
            table_size=table_size,
            budget_pct=budget,
            python=not no_python,
        )
        if config.kernel_mode:
            what = "kernel allocations"
        else:
            what = f"allocations ({common.targets_text(config.targets.describe())})"
        console.status(f"tracing {what}; Ctrl-C to stop")
        snapshot = collect(config)

        def show(snap: Snapshot) -> None:
            from otlp_ebpf.formatters import mem_table

            assert isinstance(snap, MemSnapshot)
            mem_table.render_table(snap, console.out, top=top or None)

        return common.finish(
            snapshot,
            outputs,
            as_json=as_json,
            otlp_url=otlp,
            otlp_file=otlp_file,
            show=show,
            cmdline=cmdline,
        )
