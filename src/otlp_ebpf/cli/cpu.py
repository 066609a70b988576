"""`otlp-ebpf cpu`: on-CPU sampling and off-CPU blocked time by stack, with real symbols."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer

from otlp_ebpf import console
from otlp_ebpf.cli import common
from otlp_ebpf.errors import UsageError
from otlp_ebpf.model import CpuSnapshot, Snapshot

if TYPE_CHECKING:
    from otlp_ebpf.collectors.cpu import CpuConfig

FrequencyOpt = Annotated[
    int, typer.Option("-F", "--frequency", help="Samples per second on each CPU.")
]


def register(app: typer.Typer) -> None:
    @app.command(context_settings={"allow_interspersed_args": False})
    def cpu(
        command: common.CommandArg = None,
        pid: common.PidOpt = None,
        tid: common.TidOpt = 0,
        duration: common.DurationOpt = None,
        frequency: FrequencyOpt = 99,
        off_cpu: Annotated[
            bool,
            typer.Option("--off-cpu", help="Also record blocked time by stack (sched_switch)."),
        ] = False,
        off_cpu_only: Annotated[
            bool, typer.Option("--off-cpu-only", help="Record blocked time only, no sampling.")
        ] = False,
        min_block_us: Annotated[
            int, typer.Option("--min-block-us", help="Ignore blocks shorter than this (us).")
        ] = 1,
        user_only: Annotated[bool, typer.Option("--user-only", help="User stacks only.")] = False,
        kernel_only: Annotated[
            bool, typer.Option("--kernel-only", help="Kernel stacks only.")
        ] = False,
        unwind: Annotated[
            str, typer.Option("--unwind", help="User stack unwinding: fp, dwarf or auto.")
        ] = "auto",
        no_python: Annotated[
            bool,
            typer.Option(
                "--no-python",
                help="Keep CPython's own C frames instead of the Python functions it runs.",
            ),
        ] = False,
        repeat: Annotated[
            int,
            typer.Option(
                "--repeat",
                help="With -- CMD: run it N times, one snapshot each (-o x.json -> x.1.json ...).",
            ),
        ] = 1,
        budget: common.BudgetOpt = None,
        top: common.TopOpt = 20,
        output: common.OutputOpt = None,
        fmt: common.FormatOpt = None,
        otlp: common.OtlpOpt = None,
        otlp_file: common.OtlpFileOpt = None,
        as_json: common.JsonOpt = False,
        cmdline: common.CmdlineOpt = common.CmdlinePolicy.REDACT,
    ) -> int:
        """Sample stacks on every CPU (and, with --off-cpu, where threads block).

        Examples: `otlp-ebpf cpu -p 1234 -d 30 -o flame.html`,
        `otlp-ebpf cpu --off-cpu -o prof.pb.gz -- ./server --once`.
        """
        from otlp_ebpf.collectors.cpu import CpuConfig, check_config

        config = CpuConfig(
            targets=common.target_spec(pid, tid, command),
            duration_s=duration,
            frequency_hz=frequency,
            on_cpu=not off_cpu_only,
            off_cpu=off_cpu or off_cpu_only,
            min_block_us=min_block_us,
            user_stacks=not kernel_only,
            kernel_stacks=not user_only,
            unwind=unwind,
            python=not no_python,
            budget_pct=budget,
        )
        check_config(config)
        check_repeat(repeat, config)
        runs = repeated_outputs(output, fmt, repeat)
        common.validate_otlp(otlp, otlp_file)
        exit_code = 0
        for index, outputs in enumerate(runs, start=1):
            if repeat > 1:
                console.status(f"run {index} of {repeat}")
            snapshot = _profile_once(config, outputs, as_json, otlp, otlp_file, top, cmdline)
            # The first run whose command failed decides, as a CI step expects.
            exit_code = exit_code or common.command_exit_code(snapshot)
            if index < repeat and was_interrupted(snapshot):
                console.status(f"interrupted: runs {index + 1} to {repeat} not started")
                break
        return exit_code


def was_interrupted(snapshot: Snapshot) -> bool:
    """True when Ctrl-C or SIGTERM ended the run (not its duration or its command)."""
    return "ended: interrupted" in snapshot.notes


def check_repeat(repeat: int, config: CpuConfig) -> None:
    if repeat < 1:
        raise UsageError(f"--repeat must be at least 1, got {repeat}")
    if repeat > 1 and not config.targets.command:
        raise UsageError("--repeat needs a command to run again: -- CMD ARGS")


def repeated_outputs(
    paths: Sequence[str] | None, forced: str | None, repeat: int
) -> list[list[common.PlannedOutput]]:
    """Outputs of each run, all checked before the first: `x.json` -> `x.1.json` ... when
    repeating."""
    planned = common.plan_outputs(paths, forced, "cpu")
    if repeat == 1:
        return [planned]
    from otlp_ebpf.formatters import registry

    runs = []
    for index in range(1, repeat + 1):
        run = []
        for out in planned:
            fmt = registry.format_for_path(out.path, out.format_name)
            path = registry.sibling_path(out.path, fmt, str(index))
            common.check_output_path(path)
            run.append(common.PlannedOutput(path, out.format_name))
        runs.append(run)
    return runs


def _profile_once(
    config: CpuConfig,
    outputs: Sequence[common.PlannedOutput],
    as_json: bool,
    otlp: str | None,
    otlp_file: str | None,
    top: int,
    cmdline: common.CmdlinePolicy,
) -> CpuSnapshot:
    from otlp_ebpf.collectors.cpu import collect

    what = "profiling" if config.on_cpu else "recording blocked time"
    console.status(f"{what} ({common.targets_text(config.targets.describe())}); Ctrl-C to stop")
    snapshot = collect(config)

    def show(snap: Snapshot) -> None:
        from otlp_ebpf.formatters import cpu_table

        cpu_table.render_table(snap, console.out, top=top or None)

    assert isinstance(snapshot, CpuSnapshot)
    blocks = sum(s.count for s in snapshot.off_cpu)
    common.finish(
        snapshot,
        outputs,
        as_json=as_json,
        otlp_url=otlp,
        otlp_file=otlp_file,
        show=show,
        events=snapshot.samples_total + blocks,
        what=events_name(config),
        cmdline=cmdline,
    )
    return snapshot


def events_name(config: CpuConfig) -> str:
    """What the summary line counts for this kind of run."""
    if not config.on_cpu:
        return "blocks"
    return "samples and blocks" if config.off_cpu else "samples"
