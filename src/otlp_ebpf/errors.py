"""The one error type the CLI turns into a message and an exit code."""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3


class OtlpEbpfError(Exception):
    """An expected failure: shown as one line on stderr, then exit with `exit_code`.

    `hint` says what the user can do about it; it is printed after the message.
    """

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, *, hint: str = "", exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(OtlpEbpfError):
    """Bad usage or input: unknown pid, bad duration, unreadable file (exit 2)."""

    exit_code = EXIT_USAGE


class EnvironmentLacks(OtlpEbpfError):
    """The machine lacks something we need: privileges, BTF, a tracepoint (exit 3)."""

    exit_code = EXIT_ENVIRONMENT


class RuntimeFailure(OtlpEbpfError):
    """Something failed while running: export failed after retries, BPF load failed (exit 1)."""

    exit_code = EXIT_RUNTIME
