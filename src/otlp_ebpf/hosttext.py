"""Text that comes from the host: process names, command lines, paths, symbol names.

Any user can name a process or a file with bytes that are not UTF-8. Such bytes are kept,
not dropped or replaced: each one that is not part of valid UTF-8 becomes the four characters
`\\xNN` (Python's "backslashreplace"), so `evil\\xff\\xfe` reads the same in every output and
the original bytes can be told from it. The result is always valid Unicode, which every output
format can hold; each format then escapes what it must (docs/security.md).
"""

from __future__ import annotations

import os
import re

__all__ = ["decode", "escape_controls", "from_fs", "read", "shorten", "valid"]


def decode(raw: bytes) -> str:
    """Host bytes -> text, undecodable bytes kept as `\\xNN`."""
    return raw.decode("utf-8", "backslashreplace")


def from_fs(text: str) -> str:
    """A string from the os module or sys.argv (undecodable bytes held as lone surrogates,
    which no output can encode) -> text as `decode` gives it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return decode(os.fsencode(text))
    return text


def valid(text: str) -> str:
    """Any str made encodable: a lone surrogate becomes the text `\\udcxx`."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def read(path: str) -> str:
    """A whole /proc or /sys file as text (OSError as for any read)."""
    with open(path, "rb") as fh:
        return decode(fh.read())


# C0 and C1 controls but the newline, DEL, bidirectional overrides (which reorder what a reader
# sees), and lone surrogates (bytes of argv or a path that are not UTF-8).
_CONTROLS = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, held by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """`text` with every control character written as a visible escape (`\\x1b`): for a
    terminal or a document, where a control character would act instead of being read."""
    return _CONTROLS.sub(_visible, text)


# How much of a command line or target list a status line or a title shows: enough to
# recognise it. The snapshot keeps it whole.
SHORT_TEXT = 160


def shorten(text: str, limit: int = SHORT_TEXT) -> str:
    """`text`, or its beginning and how long it was when it is longer than `limit`."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"
