"""One place every command prints through: results on stdout, status on stderr.

Names printed come from the host (process and symbol names, paths, command lines), and any
user chooses them: a name holding `\\e]0;...\\a\\e[2J` must not retitle or clear root's
terminal. Every control character in printed text is shown as an escape (`\\x1b`), whatever
path the text took to the console (a table cell, a message, a rich Text).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.segment import Segment
from rich.text import Text

from otlp_ebpf.hosttext import escape_controls
from otlp_ebpf.redact import mask_userinfo

__all__ = ["debug", "err", "error", "escape", "escape_controls", "out", "status", "warn"]

_state = {"quiet": False, "debug": False}


def _no_color() -> bool:
    return bool(os.environ.get("NO_COLOR"))


def _width(stream: object) -> int | None:
    """Wide tables when piped (a log or CI output), the terminal's width otherwise."""
    isatty = getattr(stream, "isatty", None)
    if os.environ.get("COLUMNS") or (isatty is not None and isatty()):
        return None
    return 160


class SafeConsole(Console):
    """A rich Console that never writes a control character it did not make itself: strings
    are escaped before layout (so tables stay aligned), and every text segment again just
    before output (rich Text objects built elsewhere take that path). With `mask_urls`, the
    credentials of any URL are masked too (the status and error stream: messages, logs and
    `--debug` tracebacks)."""

    def __init__(self, *args: Any, mask_urls: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._mask_urls = mask_urls

    def print_json(self, json: str | None = None, **kwargs: Any) -> None:
        # Every character outside ASCII as a \\u escape: JSON stays valid and exact for
        # `| jq`, and nothing is left for the control-character escaping to change.
        super().print_json(json, **{**kwargs, "ensure_ascii": True})

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(escape_controls(text), **kwargs)

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        rendered = super()._render_buffer(
            segment if segment.control else Segment(escape_controls(segment.text), segment.style)
            for segment in buffer
        )
        return mask_userinfo(rendered) if self._mask_urls else rendered


# No file= argument: rich then writes to whatever sys.stdout/sys.stderr is at print time, which
# keeps output capturable by test runners that swap the streams.
out = SafeConsole(no_color=_no_color(), highlight=False, soft_wrap=True, width=_width(sys.stdout))
err = SafeConsole(
    stderr=True,
    mask_urls=True,
    no_color=_no_color(),
    highlight=False,
    soft_wrap=True,
    width=_width(sys.stderr),
)


def configure(*, quiet: bool = False, debug: bool = False) -> None:
    """Apply the global --quiet/--debug flags for the rest of the process."""
    _state["quiet"] = quiet
    _state["debug"] = debug


def is_debug() -> bool:
    return _state["debug"]


def status(message: str) -> None:
    """A progress or status line on stderr, silenced by --quiet. `message` is plain text."""
    if not _state["quiet"]:
        err.print(escape(message))


def warn(message: str) -> None:
    """A warning on stderr; never silenced, a user must see what was lost."""
    err.print(f"[yellow]warning:[/] {escape(message)}")


def error(message: str) -> None:
    """An error on stderr (the run may go on to do what it still can)."""
    err.print(f"[red]error:[/] {escape(message)}")


def debug(message: str) -> None:
    if _state["debug"]:
        err.print(f"[dim]debug: {escape(message)}[/]")
