"""SIGINT and SIGTERM, handled from the process's first instruction to its last.

The handlers are installed before anything else is imported (`otlp_ebpf.entry`), and replace
whatever was inherited: a script's background job starts with SIGINT ignored, and Ctrl-C or
`kill` must still end its run. A handler never prints a traceback and never leaves a
temporary file:

- Until the command is known (start-up), a signal is only noted.
- A collecting command (`graceful()`) ends its run at the first signal, then writes every
  output and exits 0. A second signal only says what is going on; a third abandons the run
  (exit 128 + signal number), removing the file being written.
- Any other command stops at once (`Interrupted`), except that a file being written is
  finished first (`writing()`), so an output is whole or absent.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)

# A collecting run abandons its outputs only at the third signal: two quick Ctrl-C (one of
# them repeated by a terminal or a wrapper script) still get the outputs written.
_ABANDON_AT = 3


class Interrupted(BaseException):
    """The user stopped a command that has nothing to finish. A BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way swallows it; every `finally`
    (BPF cleanup, temporary files) still runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@dataclass
class _State:
    signum: int | None = None  # the first signal received
    count: int = 0
    graceful: bool | None = None  # None while the command is not known yet
    writing: int = 0  # depth of writing() sections
    deferred: int | None = None  # a signal to raise when the current file is complete
    done: bool = False  # the command is over: nothing is left to stop
    previous: dict[int, Any] = field(default_factory=dict)


_state = _State()


def install() -> bool:
    """Install the handlers (False, nothing done, when they already are)."""
    if _state.previous:
        return False
    _state.previous = {sig: signal.signal(sig, _handle) for sig in SIGNALS}
    return True


def uninstall() -> None:
    """Put the previous handlers back and forget every signal (for in-process callers)."""
    global _state
    for sig, handler in _state.previous.items():
        signal.signal(sig, handler)
    _state = _State()


def received() -> int | None:
    """The first SIGINT/SIGTERM received, or None."""
    return _state.signum


def graceful(on: bool) -> None:
    """Say what kind of command runs: `on` for one that collects (a signal ends the run and
    the outputs get written), off for the rest (a signal stops it). A signal noted during
    start-up takes effect now."""
    _state.graceful = on
    if not on and _state.signum is not None:
        raise Interrupted(_state.signum)


def done() -> None:
    """The command is over (only its exit code is left to report): signals are ignored."""
    _state.done = True


@contextmanager
def writing() -> Iterator[None]:
    """A file is being written: a signal that would stop the command waits until it is whole
    (or, if another comes, stops it now and the file is removed by its writer)."""
    _state.writing += 1
    try:
        yield
    finally:
        _state.writing -= 1
    if _state.writing == 0 and _state.deferred is not None and not _state.done:
        signum, _state.deferred = _state.deferred, None
        raise Interrupted(signum)


def _handle(signum: int, _frame: FrameType | None) -> None:
    _state.count += 1
    if _state.signum is None:
        _state.signum = signum
    if _state.done or _state.graceful is None:
        return  # over, or start-up: the command decides when it knows what it is
    if _state.graceful:
        _graceful_signal(signum)
    elif _state.writing and _state.deferred is None:
        _state.deferred = signum
    else:
        raise Interrupted(signum)


def _graceful_signal(signum: int) -> None:
    if _state.count == 1:
        return  # the run loop sees it and ends the run
    if _state.count < _ABANDON_AT:
        _say("stopping: finishing the run and writing its outputs (signal again to abandon them)")
        return
    raise Interrupted(signum)


def _say(message: str) -> None:
    # A plain write: a signal handler must not re-enter rich's console in the middle of a print.
    try:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
