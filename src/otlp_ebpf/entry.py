"""The process entry point (`otlp-ebpf`, `python -m otlp_ebpf`): signal handlers first, before
the CLI's imports, so a signal in the first moments is neither lost nor a traceback."""

from __future__ import annotations


def main() -> None:
    from otlp_ebpf import stopping

    stopping.install()
    from otlp_ebpf.runtime import heap

    heap.return_large_blocks()
    from otlp_ebpf.cli.app import main as cli_main

    cli_main()
