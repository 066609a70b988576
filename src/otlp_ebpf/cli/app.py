"""The `otlp-ebpf` typer app: global flags, command registration, and the one place where
errors become exit codes."""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import typer
from typer.exceptions import TyperException

from otlp_ebpf import __version__, console, stopping
from otlp_ebpf.errors import EXIT_RUNTIME, OtlpEbpfError, UsageError

# One module per command; each exposes `register(app)`. Heavy imports stay inside the
# command bodies so `otlp-ebpf --help` is instant. `--help` lists the commands in this order:
# what collects, then what reads snapshots, then what runs the tool as a service or checks
# the machine. A new command goes into its group (analyze and ask after diff, agent before
# doctor).
COLLECTORS = ["cpu", "syscalls", "net", "mem", "record"]
SNAPSHOT_READERS = ["report", "diff", "analyze", "ask", "push"]
OPERATIONS = ["agent", "doctor"]
COMMAND_MODULES = [*COLLECTORS, *SNAPSHOT_READERS, *OPERATIONS]
# Options of the app itself that users also type after the command name (`cpu -q ...`).
GLOBAL_FLAGS = frozenset({"-q", "--quiet", "--debug"})

app = typer.Typer(
    name="otlp-ebpf",
    help="eBPF profiling for the command line: cpu, syscalls, net and mem collectors with "
    "flamegraphs, standard files and OTLP export.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        console.out.print(f"otlp-ebpf {__version__}")
        raise typer.Exit()


# Commands whose first SIGINT/SIGTERM ends the collection and still writes every output
# (otlp_ebpf.stopping); any other command just stops.
COLLECTING_COMMANDS = frozenset({"cpu", "syscalls", "net", "mem", "record", "agent"})


@app.callback()
def _global(
    ctx: typer.Context,
    debug: Annotated[
        bool,
        typer.Option("--debug", envvar="OTLP_EBPF_DEBUG", help="Show tracebacks and libbpf logs."),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option("-q", "--quiet", envvar="OTLP_EBPF_QUIET", help="Only results and warnings."),
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    console.configure(quiet=quiet, debug=debug)
    stopping.graceful(ctx.invoked_subcommand in COLLECTING_COMMANDS)


for _name in COMMAND_MODULES:
    importlib.import_module(f"otlp_ebpf.cli.{_name}").register(app)


def report_error(exc: OtlpEbpfError) -> int:
    """Print an expected failure as one line (plus a hint) and return its exit code."""
    console.err.print(f"[red]error:[/] {console.escape(exc.message)}")
    if exc.hint:
        console.err.print(f"  {console.escape(exc.hint)}")
    if console.is_debug():
        console.err.print_exception()
    return exc.exit_code


def optional_otlp_value(args: list[str]) -> list[str]:
    """`--otlp` takes an optional URL (DESIGN: `--otlp [URL]`), which click cannot express:
    a bare `--otlp` becomes `--otlp=@env` (endpoint from OTEL_EXPORTER_OTLP_ENDPOINT)."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        nxt = args[i + 1] if i + 1 < len(args) else None
        if arg == "--otlp" and (nxt is None or nxt.startswith("-")):
            out.append("--otlp=@env")
        else:
            out.append(arg)
    return out


def global_flags_first(args: list[str]) -> list[str]:
    """`otlp-ebpf cpu -q -d 5` as `otlp-ebpf -q cpu -d 5`: click only takes the app's own
    flags before the command name. Nothing after `--` moves: it belongs to the launched
    command."""
    command_at = next((i for i, a in enumerate(args) if a in COMMAND_MODULES), None)
    if command_at is None:
        return args
    end = args.index("--") if "--" in args else len(args)
    moved = [a for a in args[command_at + 1 : end] if a in GLOBAL_FLAGS]
    if not moved:
        return args
    kept = [a for a in args[command_at + 1 : end] if a not in GLOBAL_FLAGS]
    return [*args[:command_at], *moved, args[command_at], *kept, *args[end:]]


def run(args: list[str] | None = None) -> int:
    """Run the CLI and return the exit code instead of exiting (used by main and tests)."""
    args = optional_otlp_value(sys.argv[1:] if args is None else list(args))
    args = global_flags_first(args)
    installed_here = stopping.install()  # main() installed them already; tests call run()
    try:
        return _run(args)
    finally:
        if installed_here:
            stopping.uninstall()


def check_separator(args: list[str]) -> None:
    """`syscalls --` with nothing after it would silently become an endless system-wide run."""
    if args and args[-1] == "--" and any(a in COLLECTORS for a in args):
        raise UsageError("-- needs a command after it: -- CMD ARGS (or leave out the --)")


def _run(args: list[str]) -> int:
    try:
        check_separator(args)
        try:
            # Without standalone mode, click returns the code of a typer.Exit instead of raising.
            result = app(args=args, prog_name="otlp-ebpf", standalone_mode=False)
        finally:
            stopping.done()  # nothing left to stop: a late signal must not become a traceback
    except OtlpEbpfError as exc:
        return report_error(exc)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        console.err.print("aborted")
        return EXIT_RUNTIME
    except stopping.Interrupted as exc:
        console.err.print(f"interrupted by {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except TyperException as exc:  # usage errors: typer prints them, exit code 2
        show = getattr(exc, "show", None)
        if show is not None:
            show(file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except Exception as exc:
        if console.is_debug():
            raise
        # One line: an exception may carry a whole rendered page or a host string.
        shown = repr(exc)
        shown = shown if len(shown) <= 300 else shown[:300] + "... (cut)"
        console.err.print(f"[red]internal error:[/] {console.escape(shown)} (rerun with --debug)")
        return EXIT_RUNTIME
    return result if isinstance(result, int) else 0


def main() -> None:
    stopping.install()  # already done by otlp_ebpf.entry, before the imports
    sys.exit(run())
